//! Learning from clicks on two cores: a [`QueryAdapter`] (a low-rank residual correction of query
//! embeddings) trained on (query, image, clicked) triples from the search log, each click weighted
//! by the inverse of its rank's examination [`Propensities`], and evaluated on held-out searches.
//!
//! The click model: a clicked result is relevant; a result shown above a click of the same search
//! and not clicked was looked at and passed over (a negative, weight 1); results below the last
//! click may never have been looked at and teach nothing. A click at rank `k` weighs `1/p_k`.

mod adapter;
mod evaluation;
mod propensity;
mod reranker;
mod retraining;
pub mod simulation;

use std::cmp::Ordering;

pub use adapter::{QueryAdapter, TrainingSettings};
pub use evaluation::{RankingScores, evaluate, score_rankings};
pub use propensity::{ExplorationSettings, Propensities, PropensitySettings, SwapCounts};
pub use reranker::{
    AdapterFiles, RerankerAdapterVersion, RerankerExample, RerankerLoop, RerankerTraining,
    TrainedAdapter, follow_active_reranker_adapter, reranker_adapter_files, reranker_image,
    retrain_reranker,
};
pub use retraining::{LearningSettings, TrainingOutcome, TrainingRuns, retrain};

use serde::{Deserialize, Serialize};

use crate::photo::PhotoId;
use crate::search::SearchLogEntry;
use crate::{Embedding, EncoderId};

/// A learning loop: each trains on its own lease, from its own click count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Learner {
    /// The query adapter (the CPU learner).
    QueryAdapter,
    /// The vision-language reranker's LoRA adapter.
    Reranker,
}

impl Learner {
    /// Its name in stores and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::QueryAdapter => "query_adapter",
            Self::Reranker => "reranker",
        }
    }
}

/// Splits `(search id, item)` pairs into (training, held out): the share `held_out_share` (at
/// least one when there is any) with the lowest search ids is held out. Search ids are random, so
/// that is a random share, and the same searches every time.
pub(crate) fn split_held_out<T>(found: Vec<(String, T)>, held_out_share: f64) -> (Vec<T>, Vec<T>) {
    let mut by_id: Vec<(String, usize, T)> = found
        .into_iter()
        .enumerate()
        .map(|(position, (id, item))| (id, position, item))
        .collect();
    by_id.sort_by(|a, b| a.0.cmp(&b.0));
    let held = ((by_id.len() as f64 * held_out_share).ceil() as usize).min(by_id.len());
    let mut training = by_id.split_off(held);
    // Training keeps the order it came in (newest first).
    training.sort_by_key(|(_, position, _)| *position);
    (
        training.into_iter().map(|(_, _, item)| item).collect(),
        by_id.into_iter().map(|(_, _, item)| item).collect(),
    )
}

/// A stored, evaluated query adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterVersion {
    /// Its version: 1 for the first one trained, counting up.
    pub version: u32,
    /// The encoder whose query embeddings it adapts.
    pub encoder: EncoderId,
    /// The adapter.
    pub adapter: QueryAdapter,
    /// How it ranked the held-out searches when it was trained.
    pub evaluation: Evaluation,
    /// When it was trained, seconds since 1970.
    pub trained_at: i64,
}

/// A stored adapter of either learner, as listed: its version, when it was trained and how it
/// scored.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct AdapterSummary {
    /// Its version.
    pub version: u32,
    /// When it was trained, seconds since 1970.
    pub trained_at: i64,
    /// How it and what ranked before it scored on held-out clicked searches.
    pub evaluation: Evaluation,
}

impl From<AdapterVersion> for AdapterSummary {
    fn from(stored: AdapterVersion) -> Self {
        Self {
            version: stored.version,
            trained_at: stored.trained_at,
            evaluation: stored.evaluation,
        }
    }
}

impl From<RerankerAdapterVersion> for AdapterSummary {
    fn from(stored: RerankerAdapterVersion) -> Self {
        Self {
            version: stored.version,
            trained_at: stored.trained_at,
            evaluation: stored.evaluation,
        }
    }
}

/// Each version's summary, in order.
pub fn summaries<T: Into<AdapterSummary>>(versions: Vec<T>) -> Vec<AdapterSummary> {
    versions.into_iter().map(Into::into).collect()
}

/// What a training run measured on held-out searches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Evaluation {
    /// The trained adapter's scores.
    pub trained: RankingScores,
    /// The scores of what ranked searches before it (the active adapter, or the encoder alone).
    pub previous: RankingScores,
    /// The searches with clicks it was trained on.
    pub training_searches: usize,
}

/// One training example.
#[derive(Clone, Debug, PartialEq)]
pub struct Triple {
    /// A query's text embedding.
    pub query: Embedding,
    /// A shown result's image embedding.
    pub image: Embedding,
    /// Whether it was clicked.
    pub clicked: bool,
    /// How much it counts (the inverse propensity of a click's rank; 1 for a passed-over result).
    pub weight: f32,
}

/// A logged search with at least one click, as learning sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClickedSearch {
    /// The embeddings of its positive text terms.
    pub queries: Vec<Embedding>,
    /// Its results as shown (with their image embeddings), in rank order.
    pub shown: Vec<ShownResult>,
}

/// A result as it was shown.
#[derive(Clone, Debug, PartialEq)]
pub struct ShownResult {
    /// The rank it was shown at, from 1.
    pub rank: u32,
    /// Its image embedding.
    pub image: Embedding,
    /// Whether it was clicked.
    pub clicked: bool,
}

impl ClickedSearch {
    /// Its training triples under the click model (see the module), for each of its query
    /// terms (a search of several terms counts once in all).
    pub fn triples(&self, propensities: &Propensities) -> Vec<Triple> {
        let share = 1.0 / self.queries.len().max(1) as f64;
        let shown: Vec<(u32, bool)> = self.shown.iter().map(|r| (r.rank, r.clicked)).collect();
        let examples: Vec<(&ShownResult, f64)> = click_labels(&shown, propensities)
            .into_iter()
            .map(|(index, weight)| (&self.shown[index], weight * share))
            .collect();
        self.queries
            .iter()
            .flat_map(|query| {
                examples.iter().map(|(result, weight)| Triple {
                    query: query.clone(),
                    image: result.image.clone(),
                    clicked: result.clicked,
                    weight: *weight as f32,
                })
            })
            .collect()
    }

    /// Its shown results ranked by the mean cosine of the (adapted) query terms with each image,
    /// best first; ties keep the shown order.
    pub fn ranked_by(&self, adapter: Option<&QueryAdapter>) -> Vec<&ShownResult> {
        let queries: Vec<Embedding> = self
            .queries
            .iter()
            .map(|q| adapter.map_or_else(|| q.clone(), |a| a.adapt(q)))
            .collect();
        let mut scored: Vec<(f32, &ShownResult)> = self
            .shown
            .iter()
            .map(|result| {
                let total: f32 = queries.iter().map(|q| q.cosine(&result.image)).sum();
                (total / queries.len().max(1) as f32, result)
            })
            .collect();
        scored.sort_by(|a, b| {
            b.0.partial_cmp(&a.0)
                .unwrap_or(Ordering::Equal)
                .then(a.1.rank.cmp(&b.1.rank))
        });
        scored.into_iter().map(|(_, result)| result).collect()
    }
}

/// The click model (see the module) over one search's shown results, given as (rank, clicked):
/// the index of each result that teaches something and its weight, `1/p_rank` for a click and 1
/// for a result passed over above the last click. Results below the last click are left out.
pub fn click_labels(shown: &[(u32, bool)], propensities: &Propensities) -> Vec<(usize, f64)> {
    let Some(last_click) = shown
        .iter()
        .filter(|(_, clicked)| *clicked)
        .map(|(rank, _)| *rank)
        .max()
    else {
        return Vec::new();
    };
    shown
        .iter()
        .enumerate()
        .filter(|(_, (rank, clicked))| *clicked || *rank < last_click)
        .map(|(index, &(rank, clicked))| {
            let weight = if clicked {
                1.0 / propensities.at(rank)
            } else {
                1.0
            };
            (index, weight)
        })
        .collect()
}

/// A logged search as pairs for a reranker that reads the query's text and looks at the photo:
/// the text it would have been asked about ([`crate::query::ParsedQuery::rerank_text`]), and
/// each result the click model labels, with whether it was clicked and its weight. Nothing for a
/// search that does not parse or has no text.
pub fn reranker_pairs(
    entry: &SearchLogEntry,
    propensities: &Propensities,
) -> Option<(String, Vec<LabelledPhoto>)> {
    let text = crate::query::parse(&entry.search.text).ok()?.rerank_text();
    if text.is_empty() {
        return None;
    }
    let shown: Vec<(u32, bool)> = entry
        .results
        .iter()
        .map(|r| (r.result.rank, r.clicked))
        .collect();
    let pairs = click_labels(&shown, propensities)
        .into_iter()
        .map(|(index, weight)| {
            let result = &entry.results[index];
            LabelledPhoto {
                photo: result.result.photo_id,
                clicked: result.clicked,
                weight: weight as f32,
            }
        })
        .collect();
    Some((text, pairs))
}

/// A shown photo as the click model labels it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LabelledPhoto {
    /// The photo.
    pub photo: PhotoId,
    /// Whether it was clicked (else it was passed over).
    pub clicked: bool,
    /// How much it counts: `1/p_rank` for a click, 1 for a photo passed over.
    pub weight: f32,
}

/// Every search's training triples (see [`ClickedSearch::triples`]).
pub fn triples(searches: &[ClickedSearch], propensities: &Propensities) -> Vec<Triple> {
    searches
        .iter()
        .flat_map(|s| s.triples(propensities))
        .collect()
}

/// A small deterministic generator (SplitMix64): reproducible initialisation, batch order and
/// exploration draws without a dependency.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Fisher–Yates.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::simulation::World;
    use super::*;

    #[test]
    fn a_logged_search_becomes_reranker_pairs_under_the_click_model() {
        use crate::search::{LoggedResult, LoggedResultWithClick, LoggedSearch, QueryId};
        let photo = |n: u8| format!("{n:016x}").parse::<PhotoId>().unwrap();
        let result = |rank: u32, clicked: bool| LoggedResultWithClick {
            result: LoggedResult {
                rank,
                photo_id: photo(rank as u8),
                score: 1.0,
                rerank_probability: None,
            },
            clicked,
            clicked_at: clicked.then_some(1),
        };
        let entry = SearchLogEntry {
            search: LoggedSearch {
                query_id: QueryId::random(),
                text: "kids on a red sled -snow album:Winter".to_owned(),
                parsed: String::new(),
                encoder: "clip:test/pairs@1".parse().unwrap(),
                timings: Default::default(),
                rerank_fallback: None,
                adapter_version: None,
                swapped_with: None,
            },
            created_at: 0,
            results: vec![result(1, false), result(2, true), result(3, false)],
        };
        let propensities = Propensities::uniform();
        let (text, pairs) = reranker_pairs(&entry, &propensities).unwrap();
        // What the reranker was asked: the positive text, without the negation or the filter.
        assert_eq!(text, "kids on a red sled");
        // Rank 1 was passed over (a negative), rank 2 clicked, rank 3 below the last click.
        assert_eq!(pairs.len(), 2);
        assert_eq!((pairs[0].photo, pairs[0].clicked), (photo(1), false));
        assert_eq!((pairs[1].photo, pairs[1].clicked), (photo(2), true));
        assert!((pairs[1].weight - 1.0 / propensities.at(2) as f32).abs() < 1e-6);
    }

    #[test]
    fn fifty_steps_halve_the_loss_and_move_clicked_images_up() {
        let mut world = World::new(21, 32, 300);
        let searches = world.truths(200);
        // Separable: every result is labelled, relevant or not.
        let labelled: Vec<Triple> = searches
            .iter()
            .flat_map(|s| {
                s.shown.iter().map(|r| Triple {
                    query: s.queries[0].clone(),
                    image: r.image.clone(),
                    clicked: r.clicked,
                    weight: 1.0,
                })
            })
            .collect();
        let mut adapter = QueryAdapter::new(32, 8, 1.0, 1);
        let settings = TrainingSettings {
            steps: 50,
            learning_rate: 0.05,
            ..TrainingSettings::default()
        };
        let before = adapter.loss(&labelled);
        let uniform = Propensities::uniform();
        let ranked_before = evaluate(None, &searches, &uniform);
        adapter.train(&labelled, &settings);
        let after = adapter.loss(&labelled);
        let ranked_after = evaluate(Some(&adapter), &searches, &uniform);
        assert!(after <= before / 2.0, "loss {before} -> {after}");
        assert!(
            ranked_after.mrr > ranked_before.mrr + 0.1,
            "{ranked_before:?} -> {ranked_after:?}"
        );
    }

    #[test]
    fn correcting_for_position_bias_ranks_by_true_relevance_better() {
        let outcome = simulation::position_bias_experiment(
            33,
            &TrainingSettings {
                learning_rate: 0.02,
                ..TrainingSettings::default()
            },
        );
        assert!(
            outcome.corrected.ndcg_at_10 > outcome.uncorrected.ndcg_at_10 + 0.01,
            "{outcome:?}"
        );
        assert!(
            outcome.uncorrected.ndcg_at_10 > outcome.base.ndcg_at_10,
            "{outcome:?}"
        );
    }
}
