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
mod retraining;

use std::cmp::Ordering;

pub use adapter::{QueryAdapter, TrainingSettings};
pub use evaluation::{RankingScores, evaluate};
pub use propensity::{ExplorationSettings, Propensities, PropensitySettings, SwapCounts};
pub use retraining::{LearningSettings, TrainingOutcome, retrain};

use serde::{Deserialize, Serialize};

use crate::{Embedding, EncoderId};

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

/// What a training run measured on held-out searches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
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
        let Some(last_click) = self
            .shown
            .iter()
            .filter(|r| r.clicked)
            .map(|r| r.rank)
            .max()
        else {
            return Vec::new();
        };
        let share = 1.0 / self.queries.len().max(1) as f64;
        let examples: Vec<(&ShownResult, f64)> = self
            .shown
            .iter()
            .filter(|r| r.clicked || r.rank < last_click)
            .map(|r| {
                let weight = if r.clicked {
                    1.0 / propensities.at(r.rank)
                } else {
                    1.0
                };
                (r, weight * share)
            })
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
pub(crate) mod tests {
    use super::*;

    /// A random unit vector (coordinates uniform in ±1, normalised).
    pub(crate) fn random_unit(random: &mut SplitMix, dimension: usize) -> Embedding {
        Embedding::normalized((0..dimension).map(|_| random.unit() * 2.0 - 1.0).collect()).unwrap()
    }

    /// Counts of (swapped with, would-be first result clicked) observations.
    pub(crate) fn tally(observations: &[(Option<u32>, bool)]) -> Vec<SwapCounts> {
        let mut counts: Vec<SwapCounts> = Vec::new();
        for (swapped_with, clicked) in observations {
            let position = counts.iter().position(|c| c.swapped_with == *swapped_with);
            let count = match position {
                Some(i) => &mut counts[i],
                None => {
                    counts.push(SwapCounts {
                        swapped_with: *swapped_with,
                        searches: 0,
                        clicked: 0,
                    });
                    counts.last_mut().unwrap()
                }
            };
            count.searches += 1;
            count.clicked += u64::from(*clicked);
        }
        counts
    }

    /// A world where what people want differs from what the base embedding says: queries lean
    /// towards one of a few directions `b`, and for those people want images towards `a` instead
    /// (`intent = q + 1.5·a·(b·q)`, a low-rank twist an adapter can learn).
    struct World {
        dimension: usize,
        twist: Vec<(Vec<f32>, Vec<f32>)>,
        images: Vec<Embedding>,
    }

    impl World {
        fn new(random: &mut SplitMix, dimension: usize, images: usize) -> Self {
            let twist = (0..2)
                .map(|_| {
                    let a = random_unit(random, dimension).into_vec();
                    let b = random_unit(random, dimension).into_vec();
                    (a, b)
                })
                .collect();
            let images = (0..images)
                .map(|_| random_unit(random, dimension))
                .collect();
            Self {
                dimension,
                twist,
                images,
            }
        }

        fn intent(&self, query: &Embedding) -> Embedding {
            let mut target = query.as_slice().to_vec();
            for (a, b) in &self.twist {
                let along: f32 = b.iter().zip(query.as_slice()).map(|(x, y)| x * y).sum();
                target
                    .iter_mut()
                    .zip(a)
                    .for_each(|(t, x)| *t += 1.5 * x * along);
            }
            Embedding::normalized(target).unwrap()
        }

        /// The 10 images the base embedding ranks first for `query`, with whether each is
        /// relevant (among the 3 best by intent of the 30 best by the base).
        fn results(&self, query: &Embedding) -> Vec<(Embedding, bool)> {
            let intent = self.intent(query);
            let mut base: Vec<&Embedding> = self.images.iter().collect();
            base.sort_by(|a, b| b.cosine(query).total_cmp(&a.cosine(query)));
            base.truncate(30);
            let mut by_intent = base.clone();
            by_intent.sort_by(|a, b| b.cosine(&intent).total_cmp(&a.cosine(&intent)));
            let relevant: Vec<&Embedding> = by_intent.into_iter().take(3).collect();
            base.into_iter()
                .take(10)
                .map(|image| (image.clone(), relevant.contains(&image)))
                .collect()
        }

        fn query(&self, random: &mut SplitMix) -> Embedding {
            let noise = random_unit(random, self.dimension);
            let (_, lean) = &self.twist[(random.next_u64() % self.twist.len() as u64) as usize];
            let mixed = noise
                .as_slice()
                .iter()
                .zip(lean)
                .map(|(n, b)| n + b)
                .collect();
            Embedding::normalized(mixed).unwrap()
        }
    }

    /// Ground truth as a search whose "clicks" are the relevant results, with no bias.
    fn truth(world: &World, query: &Embedding) -> ClickedSearch {
        ClickedSearch {
            queries: vec![query.clone()],
            shown: world
                .results(query)
                .into_iter()
                .enumerate()
                .map(|(i, (image, relevant))| ShownResult {
                    rank: i as u32 + 1,
                    image,
                    clicked: relevant,
                })
                .collect(),
        }
    }

    #[test]
    fn fifty_steps_halve_the_loss_and_move_clicked_images_up() {
        let mut random = SplitMix::new(21);
        let world = World::new(&mut random, 32, 300);
        let searches: Vec<ClickedSearch> = (0..200)
            .map(|_| truth(&world, &world.query(&mut random)))
            .filter(|s| s.shown.iter().any(|r| r.clicked))
            .collect();
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
        let mut random = SplitMix::new(33);
        let world = World::new(&mut random, 32, 400);
        let examination = |rank: u32| 1.0 / f64::from(rank).powf(1.5);
        let exploration = ExplorationSettings {
            swap_share: 0.1,
            max_rank: 10,
        };
        let queries: Vec<Embedding> = (0..300).map(|_| world.query(&mut random)).collect();
        let mut searches = Vec::new();
        let mut observations = Vec::new();
        for query in &queries {
            let results = world.results(query);
            for _ in 0..20 {
                let mut shown = results.clone();
                let swapped_with = exploration.swap(shown.len(), random.next_u64());
                if let Some(k) = swapped_with {
                    shown.swap(0, k as usize - 1);
                }
                let shown: Vec<ShownResult> = shown
                    .into_iter()
                    .enumerate()
                    .map(|(i, (image, relevant))| {
                        let rank = i as u32 + 1;
                        // Looked at by rank; then clicked when relevant, and now and then when not.
                        let seen = f64::from(random.unit()) < examination(rank);
                        let wanted = relevant || random.unit() < 0.1;
                        ShownResult {
                            rank,
                            image,
                            clicked: seen && wanted,
                        }
                    })
                    .collect();
                let probe = swapped_with.unwrap_or(1) as usize - 1;
                observations.push((swapped_with, shown[probe].clicked));
                if shown.iter().any(|r| r.clicked) {
                    searches.push(ClickedSearch {
                        queries: vec![query.clone()],
                        shown,
                    });
                }
            }
        }
        let estimated =
            Propensities::estimate(&tally(&observations), 10, &PropensitySettings::default());
        let held_out: Vec<ClickedSearch> = (0..200)
            .map(|_| truth(&world, &world.query(&mut random)))
            .filter(|s| s.shown.iter().any(|r| r.clicked))
            .collect();
        let settings = TrainingSettings {
            learning_rate: 0.02,
            ..TrainingSettings::default()
        };
        let trained = |propensities: &Propensities| {
            let mut adapter = QueryAdapter::new(32, 8, 1.0, 2);
            adapter.train(&triples(&searches, propensities), &settings);
            evaluate(Some(&adapter), &held_out, &Propensities::uniform())
        };
        let base = evaluate(None, &held_out, &Propensities::uniform());
        let uncorrected = trained(&Propensities::uniform());
        let corrected = trained(&estimated);
        eprintln!("base {base:?}\nuncorrected {uncorrected:?}\ncorrected {corrected:?}");
        assert!(
            corrected.ndcg_at_10 > uncorrected.ndcg_at_10 + 0.01,
            "corrected {corrected:?}, uncorrected {uncorrected:?}"
        );
        assert!(uncorrected.ndcg_at_10 > base.ndcg_at_10);
    }
}
