//! The vision-language reranker's learning loop: one training run trains a new adapter from the
//! search log's clicks (the same click model and propensities as the query adapter), scores the
//! held-out clicked searches with it and with the active adapter, and stores (blob store) and
//! records (catalog) it as the active version only if it ranks them at least as well. Serving
//! processes follow the catalog's active version ([`follow_active_reranker_adapter`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Evaluation, Learner, LearningSettings, Propensities, TrainingOutcome, reranker_pairs,
    score_rankings, split_held_out,
};
use crate::EncoderId;
use crate::flows::FlowError;
use crate::photo::{Photo, PhotoId};
use crate::ports::{BlobStore, Catalog, LearningStore, PortError, RerankerLearner};

/// An adapter's files by name (the PEFT layout: `adapter_config.json`,
/// `adapter_model.safetensors`), as stored and as loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdapterFiles(pub BTreeMap<String, Vec<u8>>);

/// One labelled (query, photo) pair for the reranker.
#[derive(Clone, Debug, PartialEq)]
pub struct RerankerExample {
    /// The text the reranker is asked about.
    pub query: String,
    /// The photo's bytes (its thumbnail, else the original), shared by every pair showing it.
    pub image: Arc<[u8]>,
    /// Whether the photo was clicked (else it was passed over).
    pub relevant: bool,
    /// How much the pair counts: `1/p_rank` for a click, 1 for a photo passed over.
    pub weight: f32,
}

/// How a reranker adapter is trained in the loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RerankerTraining {
    /// Optimiser steps (100).
    pub steps: usize,
    /// Pairs per step (8).
    pub batch: usize,
    /// AdamW's learning rate (1e-4).
    pub learning_rate: f64,
    /// The LoRA rank (8).
    pub rank: usize,
    /// The update is scaled by alpha / rank (16).
    pub alpha: f64,
    /// Probability of dropping an input of the update while training (0.05).
    pub dropout: f64,
    /// Pixels per photo while training, in 28 × 28 tokens (256; more than at inference).
    pub image_tokens: usize,
    /// The newest pairs trained on, at most (2,000): bounds a run's time and memory.
    pub max_pairs: usize,
    /// Seeds the adapter's initialisation and the order pairs are drawn in.
    pub seed: u64,
}

impl Default for RerankerTraining {
    fn default() -> Self {
        Self {
            steps: 100,
            batch: 8,
            learning_rate: 1e-4,
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            image_tokens: 256,
            max_pairs: 2_000,
            seed: 0,
        }
    }
}

/// What [`RerankerLearner::train`] made.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainedAdapter {
    /// The new adapter.
    pub files: AdapterFiles,
    /// `P(yes)` of each held-out pair with the new adapter, in order.
    pub held_out: Vec<f32>,
    /// `P(yes)` of each held-out pair with the active adapter (or the model alone), in order.
    pub held_out_before: Vec<f32>,
}

/// A recorded reranker adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RerankerAdapterVersion {
    /// Its version: 1 for the first one trained for the model, counting up.
    pub version: u32,
    /// The reranker model it adapts.
    pub model: String,
    /// The blob-store prefix its files are under (`<prefix>/<file name>`).
    pub blobs: String,
    /// How it ranked the held-out searches when it was trained.
    pub evaluation: Evaluation,
    /// When it was trained, seconds since 1970.
    pub trained_at: i64,
}

/// The files of a PEFT adapter.
const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// Where the adapters of `model` are stored: one folder per model, named for it.
fn model_prefix(model: &str) -> String {
    let name: String = model
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("reranker-adapters/{}", name.trim_matches('-'))
}

/// The files of a recorded version, read from `blobs`.
pub async fn reranker_adapter_files(
    blobs: &dyn BlobStore,
    version: &RerankerAdapterVersion,
) -> Result<AdapterFiles, FlowError> {
    let mut files = BTreeMap::new();
    for name in ADAPTER_FILES {
        let key = format!("{}/{name}", version.blobs);
        let bytes = blobs.get(&key).await?.ok_or_else(|| {
            FlowError::Internal(format!(
                "reranker adapter {} of {}: {key} is missing from storage",
                version.version, version.model
            ))
        })?;
        files.insert(name.to_owned(), bytes);
    }
    Ok(AdapterFiles(files))
}

/// The bytes the reranker looks at for `photo`: the thumbnail the indexer made (small and already
/// oriented), else the original.
pub async fn reranker_image(blobs: &dyn BlobStore, photo: &Photo) -> Result<Vec<u8>, PortError> {
    if let Some(thumbnail) = blobs.get(&photo.id.thumbnail_key()).await? {
        return Ok(thumbnail);
    }
    let key = photo.origin.blob_key();
    blobs.get(&key).await?.ok_or_else(|| {
        PortError::Rejected(format!(
            "photo {} has no original in storage ({key})",
            photo.id
        ))
    })
}

/// What a reranker training run works with.
pub struct RerankerLoop<'a> {
    /// The search log, the lease and the adapter versions.
    pub store: &'a dyn LearningStore,
    /// The photos shown.
    pub catalog: &'a dyn Catalog,
    /// Their bytes, and the adapters' files.
    pub blobs: &'a dyn BlobStore,
    /// Trains and serves the adapters.
    pub learner: &'a dyn RerankerLearner,
    /// The encoder whose searches are learned from.
    pub encoder: &'a EncoderId,
}

/// One training run of the reranker (see the module), single-flight across every process sharing
/// the store: [`TrainingOutcome::AlreadyRunning`] at once when another run holds the lease. A
/// shipped adapter is recorded as active; serving processes pick it up by following the catalog.
pub async fn retrain_reranker(
    ports: &RerankerLoop<'_>,
    settings: &LearningSettings,
    holder: &str,
    now: i64,
) -> Result<TrainingOutcome, FlowError> {
    let lease = Duration::from_secs(settings.lease_seconds);
    if !ports
        .store
        .claim_training(Learner::Reranker, holder, lease)
        .await?
    {
        return Ok(TrainingOutcome::AlreadyRunning);
    }
    let outcome = train_and_evaluate(ports, settings, holder, now).await;
    ports
        .store
        .release_training(Learner::Reranker, holder)
        .await?;
    outcome
}

/// A clicked search as the reranker learns from it.
struct LabelledSearch {
    query: String,
    pairs: Vec<(PhotoId, bool, f32)>,
}

async fn train_and_evaluate(
    ports: &RerankerLoop<'_>,
    settings: &LearningSettings,
    holder: &str,
    now: i64,
) -> Result<TrainingOutcome, FlowError> {
    let logged = ports
        .store
        .clicked_searches(ports.encoder, settings.max_searches)
        .await?;
    let counts = ports.store.swap_counts(ports.encoder).await?;
    let propensities =
        Propensities::estimate(&counts, settings.exploration.max_rank, &settings.propensity);
    let found: Vec<(String, LabelledSearch)> = logged
        .iter()
        .filter_map(|entry| {
            let (query, labelled) = reranker_pairs(entry, &propensities)?;
            let pairs = labelled
                .iter()
                .map(|p| (p.photo, p.clicked, p.weight))
                .collect();
            Some((
                entry.search.query_id.to_string(),
                LabelledSearch { query, pairs },
            ))
        })
        .collect();
    let needed = settings.min_searches.max(2);
    let searches = found.len();
    let (mut training, held_out) = split_held_out(found, settings.held_out_share);
    if searches < needed || training.is_empty() || held_out.is_empty() {
        return Ok(TrainingOutcome::NotEnoughClicks { searches, needed });
    }
    // The newest searches come first: the oldest beyond the bound are left out.
    let mut kept = 0;
    training.retain(|search| {
        kept += search.pairs.len();
        kept - search.pairs.len() < settings.reranker.max_pairs.max(1)
    });
    let images = photo_bytes(ports, training.iter().chain(&held_out)).await?;
    let training_pairs = examples(&training, &images);
    let held_out_pairs = examples(&held_out, &images);
    // Photos deleted since they were clicked teach nothing.
    if training_pairs.is_empty() || held_out_pairs.is_empty() {
        return Ok(TrainingOutcome::NotEnoughClicks { searches, needed });
    }
    let model = ports.learner.model();
    let active = ports.store.active_reranker_adapter(model).await?;
    let active_files = match &active {
        Some(version) => Some(reranker_adapter_files(ports.blobs, version).await?),
        None => None,
    };
    let trained = ports
        .learner
        .train(
            &training_pairs
                .iter()
                .map(|(_, e)| e.clone())
                .collect::<Vec<_>>(),
            &held_out_pairs
                .iter()
                .map(|(_, e)| e.clone())
                .collect::<Vec<_>>(),
            active_files.as_ref(),
            &settings.reranker,
        )
        .await?;
    if trained.held_out.len() != held_out_pairs.len()
        || trained.held_out_before.len() != held_out_pairs.len()
    {
        return Err(FlowError::Internal(format!(
            "the reranker scored {} and {} of {} held-out pairs",
            trained.held_out.len(),
            trained.held_out_before.len(),
            held_out_pairs.len()
        )));
    }
    let evaluation = Evaluation {
        trained: held_out_scores(&held_out_pairs, &trained.held_out),
        previous: held_out_scores(&held_out_pairs, &trained.held_out_before),
        training_searches: training.len(),
    };
    if !evaluation.trained.at_least(&evaluation.previous) {
        return Ok(TrainingOutcome::Rejected { evaluation });
    }
    // Files first, under a name of this run's own: a crash before the record leaves unused files,
    // never a record without its files.
    let prefix = format!("{}/{now}-{}", model_prefix(model), sanitise(holder));
    for (name, bytes) in &trained.files.0 {
        ports
            .blobs
            .put(&format!("{prefix}/{name}"), bytes.clone())
            .await?;
    }
    let stored = ports
        .store
        .store_reranker_adapter(model, &prefix, &evaluation, now)
        .await?;
    Ok(TrainingOutcome::Shipped {
        version: stored.version,
        evaluation,
    })
}

fn sanitise(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The bytes of every photo the searches show that is still there (a photo deleted or unreadable
/// since the search teaches nothing and is left out).
async fn photo_bytes<'s>(
    ports: &RerankerLoop<'_>,
    searches: impl Iterator<Item = &'s LabelledSearch>,
) -> Result<HashMap<PhotoId, Arc<[u8]>>, FlowError> {
    let mut ids: Vec<PhotoId> = searches
        .flat_map(|s| s.pairs.iter().map(|(id, _, _)| *id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut images = HashMap::new();
    for chunk in ids.chunks(BATCH) {
        for photo in ports.catalog.photos(chunk).await? {
            match reranker_image(ports.blobs, &photo).await {
                Ok(bytes) => {
                    images.insert(photo.id, Arc::from(bytes));
                }
                Err(PortError::Rejected(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(images)
}

/// Photos read per catalog call.
const BATCH: usize = 64;

/// Each search's pairs whose photo is there, with the index of their search.
fn examples(
    searches: &[LabelledSearch],
    images: &HashMap<PhotoId, Arc<[u8]>>,
) -> Vec<(usize, RerankerExample)> {
    searches
        .iter()
        .enumerate()
        .flat_map(|(index, search)| {
            search
                .pairs
                .iter()
                .filter_map(move |(photo, clicked, weight)| {
                    images.get(photo).map(|image| {
                        (
                            index,
                            RerankerExample {
                                query: search.query.clone(),
                                image: Arc::clone(image),
                                relevant: *clicked,
                                weight: *weight,
                            },
                        )
                    })
                })
        })
        .collect()
}

/// NDCG@10 and MRR of the held-out searches, each search's pairs ranked by `scores` (ties keep
/// the shown order), each click weighing its `1/p_rank`.
fn held_out_scores(pairs: &[(usize, RerankerExample)], scores: &[f32]) -> super::RankingScores {
    let mut by_search: BTreeMap<usize, Vec<(f32, f64)>> = BTreeMap::new();
    for ((search, example), score) in pairs.iter().zip(scores) {
        let gain = if example.relevant {
            f64::from(example.weight)
        } else {
            0.0
        };
        by_search.entry(*search).or_default().push((*score, gain));
    }
    let rankings: Vec<Vec<f64>> = by_search
        .into_values()
        .map(|mut ranked| {
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            ranked.into_iter().map(|(_, gain)| gain).collect()
        })
        .collect();
    score_rankings(&rankings)
}

/// Puts the catalog's active adapter for the learner's model on it when it is not `held` (the
/// version in use): activated by hand or trained by another process, it reranks searches from
/// then on, without a restart. Returns the version in use afterwards.
pub async fn follow_active_reranker_adapter(
    store: &dyn LearningStore,
    blobs: &dyn BlobStore,
    learner: &dyn RerankerLearner,
    held: Option<u32>,
) -> Result<Option<RerankerAdapterVersion>, FlowError> {
    let active = store.active_reranker_adapter(learner.model()).await?;
    if active.as_ref().map(|a| a.version) == held {
        return Ok(active);
    }
    match &active {
        Some(version) => {
            let files = reranker_adapter_files(blobs, version).await?;
            learner.use_adapter(Some((version.version, &files))).await?;
        }
        None => learner.use_adapter(None).await?,
    }
    Ok(active)
}
