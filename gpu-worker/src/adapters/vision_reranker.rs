//! The vision-language reranker behind core's `Reranker` port: each candidate photo is read from
//! the blob store (its thumbnail where one was made, else the original), and the model scores them
//! on tokio's blocking pool, one query's candidates as one batch. It is also core's
//! `RerankerLearner`: it trains LoRA adapters on a copy of the model of its own (searches go on
//! meanwhile) and swaps the chosen adapter in. An adapter directory given by hand is followed on
//! disk instead.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use candle_core::DType;
use futures_util::future::try_join_all;
use glimpse_core::learning::{
    AdapterFiles, RerankerExample, RerankerTraining, TrainedAdapter, reranker_image,
};
use glimpse_core::ports::{
    BlobStore, PortError, Relevance, RerankCandidate, Reranker, RerankerLearner,
};

use super::local_encoder::{join_error, port_error};
use crate::encoder::EncoderError;
use crate::models::qwen2_vl::ImageTokens;
use crate::reranker::lora::{LoraAdapter, LoraConfig, detach};
use crate::reranker::training::{self, Example, TrainingSettings, probabilities};
use crate::reranker::{VlmReranker, VlmSettings};

/// Qwen2-VL over the photos of a blob store.
pub struct VisionReranker {
    model: Arc<RwLock<VlmReranker>>,
    max_candidates: usize,
    blobs: Arc<dyn BlobStore>,
    /// `qwen2-vl`, with the adapter in use: `+lora:<directory name>` for one given by hand,
    /// `+adapter:<version>` for the catalog's. Changed only while `model` is locked for
    /// writing, so a scoring that holds `model` reads the name of the adapter it scores with.
    name: Arc<RwLock<String>>,
    /// The model as the user named it (a Hub id or a directory): what its adapters belong to.
    model_name: String,
}

/// The reranker's name without an adapter.
const BASE_NAME: &str = "qwen2-vl";

/// How often a followed adapter directory is looked at.
const ADAPTER_POLL: Duration = Duration::from_secs(2);

impl VisionReranker {
    /// Scores photos read from `blobs` with `model`, which the user named `model_name`.
    pub fn new(model: VlmReranker, blobs: Arc<dyn BlobStore>, model_name: &str) -> Self {
        Self {
            max_candidates: model.settings().max_candidates,
            model: Arc::new(RwLock::new(model)),
            blobs,
            name: Arc::new(RwLock::new(BASE_NAME.to_owned())),
            model_name: model_name.to_owned(),
        }
    }

    /// Puts the LoRA adapter in `directory` (PEFT layout) on the model, names it in
    /// [`Reranker::name`] (`qwen2-vl+lora:<directory name>`), and follows the directory: when its
    /// files change (a newer adapter written there), the next searches use the new adapter,
    /// without a restart. A change that does not load (half written, of another model) keeps
    /// the adapter in use, and is logged.
    pub fn with_adapter(mut self, directory: &Path) -> Result<Self, EncoderError> {
        let stamp = adapter_stamp(directory);
        attach_from(&self.model, directory)?;
        let name = directory.file_name().map_or_else(
            || directory.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        self.name = Arc::new(RwLock::new(format!("{BASE_NAME}+lora:{name}")));
        let model = Arc::downgrade(&self.model);
        let directory = directory.to_path_buf();
        std::thread::spawn(move || follow_adapter(&model, &directory, stamp));
        Ok(self)
    }
}

/// The modification times of an adapter's two files: a change means a new adapter.
fn adapter_stamp(directory: &Path) -> Vec<Option<SystemTime>> {
    ["adapter_config.json", "adapter_model.safetensors"]
        .iter()
        .map(|file| {
            std::fs::metadata(directory.join(file))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect()
}

fn attach_from(model: &RwLock<VlmReranker>, directory: &Path) -> Result<(), EncoderError> {
    let mut model = model.write().map_err(|_| poisoned())?;
    let (device, dtype) = (model.model().device().clone(), model.model().dtype());
    LoraAdapter::load(directory, &device, dtype)?.attach(model.model_mut(), false)
}

/// Reloads the adapter in `directory` whenever its files change, until the reranker is gone.
fn follow_adapter(
    model: &Weak<RwLock<VlmReranker>>,
    directory: &Path,
    mut stamp: Vec<Option<SystemTime>>,
) {
    loop {
        std::thread::sleep(ADAPTER_POLL);
        let Some(model) = model.upgrade() else {
            return;
        };
        let now = adapter_stamp(directory);
        if now == stamp {
            continue;
        }
        match attach_from(&model, directory) {
            Ok(()) => {
                eprintln!(
                    "glimpse: the reranker now uses the adapter written to {}",
                    directory.display()
                );
                stamp = now;
            }
            // Perhaps still being written: tried again at the next look.
            Err(error) => eprintln!(
                "glimpse: the adapter in {} does not load ({error}); the reranker keeps the one it had",
                directory.display()
            ),
        }
    }
}

#[async_trait]
impl Reranker for VisionReranker {
    fn name(&self) -> String {
        self.name
            .read()
            .map_or_else(|_| BASE_NAME.to_owned(), |name| name.clone())
    }

    /// `P(yes)` of the first `max_candidates` candidates (see [`VlmReranker`]); a photo that cannot
    /// be read or decoded fails the call, and the search keeps its retrieval order.
    async fn rerank(
        &self,
        query: &str,
        candidates: &[RerankCandidate],
    ) -> Result<Relevance, PortError> {
        let head = &candidates[..candidates.len().min(self.max_candidates)];
        let images =
            try_join_all(head.iter().map(|c| reranker_image(&*self.blobs, &c.photo))).await?;
        let (model, name) = (Arc::clone(&self.model), Arc::clone(&self.name));
        let query = query.to_owned();
        tokio::task::spawn_blocking(move || {
            let model = model.read().map_err(|_| poisoned())?;
            let prepared = images
                .iter()
                .map(|bytes| model.prepare(bytes))
                .collect::<Result<Vec<_>, _>>()?;
            let mut relevance = model.score(&query, &prepared)?;
            relevance.reranker = name.read().map_err(|_| poisoned())?.clone();
            Ok(relevance)
        })
        .await
        .map_err(join_error)?
        .map_err(port_error)
    }
}

/// The error of a poisoned lock on the served model.
fn poisoned() -> EncoderError {
    EncoderError::Internal("the reranker's lock is poisoned".into())
}

#[async_trait]
impl RerankerLearner for VisionReranker {
    fn model(&self) -> &str {
        &self.model_name
    }

    /// Loads a copy of the model (f32, on the served model's device) for the run: searches keep
    /// their reranker meanwhile. Photos go through the vision tower once for training, at the
    /// training pixel budget, and the held-out pairs are scored as searches are, at the serving
    /// budget.
    async fn train(
        &self,
        training: &[RerankerExample],
        held_out: &[RerankerExample],
        active: Option<&AdapterFiles>,
        settings: &RerankerTraining,
    ) -> Result<TrainedAdapter, PortError> {
        let (directory, device, serving_tokens) = {
            let served = self.model.read().map_err(|_| port_error(poisoned()))?;
            (
                served.directory().to_path_buf(),
                served.placement().0,
                served.settings().image_tokens,
            )
        };
        let run = TrainingRun {
            directory,
            base_model: self.model_name.clone(),
            training: training.to_vec(),
            held_out: held_out.to_vec(),
            active: active.cloned(),
            settings: settings.clone(),
            serving_tokens,
        };
        tokio::task::spawn_blocking(move || run.run(device))
            .await
            .map_err(join_error)?
            .map_err(port_error)
    }

    async fn use_adapter(&self, adapter: Option<(u32, &AdapterFiles)>) -> Result<(), PortError> {
        let model = Arc::clone(&self.model);
        let name = adapter.map_or_else(
            || BASE_NAME.to_owned(),
            |(version, _)| format!("{BASE_NAME}+adapter:{version}"),
        );
        let adapter = adapter.map(|(_, files)| files.clone());
        let held = Arc::clone(&self.name);
        tokio::task::spawn_blocking(move || -> Result<(), EncoderError> {
            let mut model = model.write().map_err(|_| poisoned())?;
            match adapter {
                Some(files) => {
                    let (device, dtype) = model.placement();
                    let loaded = LoraAdapter::from_files(&files, &device, dtype)?;
                    loaded.attach(model.model_mut(), false)?;
                }
                None => detach(model.model_mut()),
            }
            // Renamed before the model is let go: no scoring sees the new adapter under the
            // old name.
            *held.write().map_err(|_| poisoned())? = name;
            Ok(())
        })
        .await
        .map_err(join_error)?
        .map_err(|error| match error {
            EncoderError::BadModel(message) => {
                PortError::Rejected(format!("the adapter does not load: {message}"))
            }
            other => port_error(other),
        })
    }
}

/// One training run's inputs, moved to a blocking thread.
struct TrainingRun {
    directory: PathBuf,
    base_model: String,
    training: Vec<RerankerExample>,
    held_out: Vec<RerankerExample>,
    active: Option<AdapterFiles>,
    settings: RerankerTraining,
    /// The pixel budget searches are reranked at: the held-out pairs are scored at it.
    serving_tokens: usize,
}

impl TrainingRun {
    fn run(self, device: candle_core::Device) -> Result<TrainedAdapter, EncoderError> {
        let settings = &self.settings;
        let mut reranker = VlmReranker::load_on(
            &self.directory,
            VlmSettings {
                max_candidates: 1,
                image_tokens: settings.image_tokens.max(1),
            },
            device.clone(),
            DType::F32,
        )?;
        // Each photo goes through the (frozen) vision tower once per pixel budget, however many
        // pairs show it: training at the training budget, the held-out pairs at the serving one.
        let mut tokens: HashMap<(*const u8, usize), ImageTokens> = HashMap::new();
        let mut examples =
            |pairs: &[RerankerExample], budget: usize| -> Result<Vec<Example>, EncoderError> {
                pairs
                    .iter()
                    .map(|pair| {
                        let image = match tokens.entry((pair.image.as_ptr(), budget)) {
                            Entry::Occupied(known) => known.get().clone(),
                            Entry::Vacant(new) => {
                                let prepared = reranker.prepare_at(&pair.image, budget)?;
                                new.insert(reranker.image_tokens(&[prepared])?.remove(0))
                                    .clone()
                            }
                        };
                        Ok(Example {
                            query: pair.query.clone(),
                            image,
                            relevant: pair.relevant,
                            weight: pair.weight,
                        })
                    })
                    .collect()
            };
        let training_set = examples(&self.training, settings.image_tokens.max(1))?;
        let held_out = examples(&self.held_out, self.serving_tokens.max(1))?;
        let held_out_before = match &self.active {
            Some(files) => {
                LoraAdapter::from_files(files, &device, DType::F32)?
                    .attach(reranker.model_mut(), false)?;
                let scored = probabilities(&reranker, &held_out)?;
                detach(reranker.model_mut());
                scored
            }
            None => probabilities(&reranker, &held_out)?,
        };
        let config = LoraConfig {
            r: settings.rank,
            lora_alpha: settings.alpha,
            lora_dropout: settings.dropout,
            ..LoraConfig::default()
        };
        let adapter = LoraAdapter::new(reranker.model(), config, settings.seed)?;
        let steps = TrainingSettings {
            steps: settings.steps.max(1),
            batch: settings.batch.max(1),
            learning_rate: settings.learning_rate,
            seed: settings.seed,
            ..TrainingSettings::default()
        };
        training::train(&mut reranker, &adapter, &training_set, &steps)?;
        Ok(TrainedAdapter {
            held_out: probabilities(&reranker, &held_out)?,
            held_out_before,
            files: adapter.to_files(&self.base_model)?,
        })
    }
}
