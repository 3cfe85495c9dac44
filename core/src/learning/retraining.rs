//! The loop's one step: train a new adapter from the search log, evaluate it on held-out clicked
//! searches against what ranks searches now, and store and activate it only if it is at least as
//! good.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    AdapterVersion, ClickedSearch, Evaluation, ExplorationSettings, Learner, Propensities,
    PropensitySettings, QueryAdapter, RerankerTraining, ShownResult, TrainingSettings, evaluate,
    split_held_out, triples,
};
use crate::flows::FlowError;
use crate::photo::PhotoId;
use crate::ports::{LearningStore, TextEmbedder, VectorIndex};
use crate::search::SearchLogEntry;
use crate::{Embedding, query};

/// How the learning loop runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearningSettings {
    /// A training run starts once this many new clicks came in since the last one (100).
    pub every_clicks: u64,
    /// The share of clicked searches held out for evaluation (0.2, at least one), chosen by
    /// search id.
    pub held_out_share: f64,
    /// Clicked searches needed, held out ones included, before training starts (20).
    pub min_searches: usize,
    /// The newest clicked searches read (20,000).
    pub max_searches: usize,
    /// How long a run may hold the training lease before another process may take over (10 min).
    pub lease_seconds: u64,
    /// The query adapter's training.
    pub training: TrainingSettings,
    /// The vision-language reranker adapter's training (when that reranker is on).
    pub reranker: RerankerTraining,
    /// Propensity estimation.
    pub propensity: PropensitySettings,
    /// Exploration (its `max_rank` bounds the ranks estimated).
    pub exploration: ExplorationSettings,
}

impl Default for LearningSettings {
    fn default() -> Self {
        Self {
            every_clicks: 100,
            held_out_share: 0.2,
            min_searches: 20,
            max_searches: 20_000,
            lease_seconds: 600,
            training: TrainingSettings::default(),
            reranker: RerankerTraining::default(),
            propensity: PropensitySettings::default(),
            exploration: ExplorationSettings::default(),
        }
    }
}

/// How a training run ended.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TrainingOutcome {
    /// Another run holds the lease; this one did nothing.
    AlreadyRunning,
    /// Too few clicked searches to train and evaluate.
    NotEnoughClicks {
        /// Clicked searches found (with embeddings).
        searches: usize,
        /// Clicked searches needed.
        needed: usize,
    },
    /// The new adapter ranked held-out searches worse than the active one: it was not stored.
    Rejected {
        /// The measurements.
        evaluation: Evaluation,
    },
    /// The new adapter was stored and is active.
    Shipped {
        /// Its version and measurements.
        version: u32,
        /// The measurements.
        evaluation: Evaluation,
    },
}

impl TrainingOutcome {
    /// Every outcome's [`name`](Self::name).
    pub const NAMES: [&'static str; 4] = [
        "already_running",
        "not_enough_clicks",
        "rejected",
        "shipped",
    ];

    /// The outcome's name, for metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AlreadyRunning => Self::NAMES[0],
            Self::NotEnoughClicks { .. } => Self::NAMES[1],
            Self::Rejected { .. } => Self::NAMES[2],
            Self::Shipped { .. } => Self::NAMES[3],
        }
    }

    /// One line for a log.
    pub fn summary(&self) -> String {
        let scores = |e: &Evaluation| {
            format!(
                "held-out NDCG@10 {:.3} (was {:.3}), MRR {:.3} (was {:.3}), {} training searches",
                e.trained.ndcg_at_10,
                e.previous.ndcg_at_10,
                e.trained.mrr,
                e.previous.mrr,
                e.training_searches
            )
        };
        match self {
            Self::AlreadyRunning => "another training run is under way".to_owned(),
            Self::NotEnoughClicks { searches, needed } => {
                format!("{searches} searches with clicks so far; training starts at {needed}")
            }
            Self::Rejected { evaluation } => format!(
                "the new adapter ranked worse and was not kept: {}",
                scores(evaluation)
            ),
            Self::Shipped {
                version,
                evaluation,
            } => format!("adapter {version} is active: {}", scores(evaluation)),
        }
    }
}

/// Training runs counted by outcome ([`TrainingOutcome::NAMES`], and [`Self::FAILED`] for runs
/// that ended in an error), for metrics.
#[derive(Debug, Default)]
pub struct TrainingRuns(Mutex<BTreeMap<&'static str, u64>>);

impl TrainingRuns {
    /// The outcome name of a run that ended in an error.
    pub const FAILED: &'static str = "failed";

    /// Counts a run.
    pub fn record<E>(&self, outcome: &Result<TrainingOutcome, E>) {
        let name = outcome.as_ref().map_or(Self::FAILED, TrainingOutcome::name);
        if let Ok(mut runs) = self.0.lock() {
            *runs.entry(name).or_default() += 1;
        }
    }

    /// The runs by outcome, every outcome present.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        let mut counts: BTreeMap<&'static str, u64> = TrainingOutcome::NAMES
            .iter()
            .chain([&Self::FAILED])
            .map(|name| (*name, 0))
            .collect();
        if let Ok(runs) = self.0.lock() {
            counts.extend(runs.iter().map(|(name, count)| (*name, *count)));
        }
        counts
    }
}

/// One training run (see the module), single-flight across every process sharing `store`:
/// returns [`TrainingOutcome::AlreadyRunning`] at once when another run holds the lease.
pub async fn retrain(
    store: &dyn LearningStore,
    text: &dyn TextEmbedder,
    index: &dyn VectorIndex,
    settings: &LearningSettings,
    holder: &str,
    now: i64,
) -> Result<TrainingOutcome, FlowError> {
    let lease = Duration::from_secs(settings.lease_seconds);
    if !store
        .claim_training(Learner::QueryAdapter, holder, lease)
        .await?
    {
        return Ok(TrainingOutcome::AlreadyRunning);
    }
    let outcome = train_and_evaluate(store, text, index, settings, now).await;
    store
        .release_training(Learner::QueryAdapter, holder)
        .await?;
    outcome
}

async fn train_and_evaluate(
    store: &dyn LearningStore,
    text: &dyn TextEmbedder,
    index: &dyn VectorIndex,
    settings: &LearningSettings,
    now: i64,
) -> Result<TrainingOutcome, FlowError> {
    let encoder = index.encoder().clone();
    let logged = store
        .clicked_searches(&encoder, settings.max_searches)
        .await?;
    let (training, held_out) = clicked_searches(text, index, &logged, settings).await?;
    let found = training.len() + held_out.len();
    if found < settings.min_searches.max(2) || held_out.is_empty() || training.is_empty() {
        return Ok(TrainingOutcome::NotEnoughClicks {
            searches: found,
            needed: settings.min_searches.max(2),
        });
    }
    let counts = store.swap_counts(&encoder).await?;
    let propensities =
        Propensities::estimate(&counts, settings.exploration.max_rank, &settings.propensity);
    let mut adapter = QueryAdapter::new(
        index.dimension(),
        settings.training.rank,
        settings.training.alpha,
        settings.training.seed,
    );
    adapter.train(&triples(&training, &propensities), &settings.training);
    let active = store.active_adapter(&encoder).await?;
    let evaluation = Evaluation {
        trained: evaluate(Some(&adapter), &held_out, &propensities),
        previous: evaluate(
            active.as_ref().map(|a| &a.adapter),
            &held_out,
            &propensities,
        ),
        training_searches: training.len(),
    };
    if !evaluation.trained.at_least(&evaluation.previous) {
        return Ok(TrainingOutcome::Rejected { evaluation });
    }
    let AdapterVersion { version, .. } = store
        .store_adapter(&encoder, &adapter, &evaluation, now)
        .await?;
    Ok(TrainingOutcome::Shipped {
        version,
        evaluation,
    })
}

/// Embeddings per batch when reading the log.
const BATCH: usize = 64;

/// The logged searches as learning sees them, split into (training, held out) by search id;
/// searches whose query or clicked photos have no embedding any more are left out.
async fn clicked_searches(
    text: &dyn TextEmbedder,
    index: &dyn VectorIndex,
    logged: &[SearchLogEntry],
    settings: &LearningSettings,
) -> Result<(Vec<ClickedSearch>, Vec<ClickedSearch>), FlowError> {
    let texts_of = |entry: &SearchLogEntry| -> Vec<String> {
        query::parse_search(&entry.search.text)
            .map(|parsed| parsed.positive.into_iter().map(|t| t.text).collect())
            .unwrap_or_default()
    };
    let unique_texts: Vec<String> = logged
        .iter()
        .flat_map(texts_of)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut queries: HashMap<String, Embedding> = HashMap::new();
    for chunk in unique_texts.chunks(BATCH) {
        let vectors = text.embed_texts(chunk).await?;
        queries.extend(chunk.iter().cloned().zip(vectors));
    }
    let photo_ids: Vec<PhotoId> = logged
        .iter()
        .flat_map(|entry| entry.results.iter().map(|r| r.result.photo_id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut images: HashMap<PhotoId, Embedding> = HashMap::new();
    for chunk in photo_ids.chunks(BATCH) {
        images.extend(
            index
                .vectors(chunk)
                .await?
                .into_iter()
                .map(|n| (n.id, n.vector)),
        );
    }
    let mut found: Vec<(String, ClickedSearch)> = Vec::new();
    for entry in logged {
        let search = ClickedSearch {
            queries: texts_of(entry)
                .iter()
                .filter_map(|t| queries.get(t).cloned())
                .collect(),
            shown: entry
                .results
                .iter()
                .filter_map(|r| {
                    images.get(&r.result.photo_id).map(|image| ShownResult {
                        rank: r.result.rank,
                        image: image.clone(),
                        clicked: r.clicked,
                    })
                })
                .collect(),
        };
        if !search.queries.is_empty() && search.shown.iter().any(|r| r.clicked) {
            found.push((entry.search.query_id.to_string(), search));
        }
    }
    Ok(split_held_out(found, settings.held_out_share))
}
