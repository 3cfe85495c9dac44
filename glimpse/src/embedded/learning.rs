//! The engine's side of learning from clicks: the active query adapter and, with the
//! vision-language reranker, its active LoRA adapter (both hot-swapped from the catalog), training
//! runs when enough clicks came in, and choosing a version by hand.

use std::collections::BTreeMap;
use std::sync::Arc;

use glimpse_core::CachedTextEmbedder;
use glimpse_core::flows::FlowError;
use glimpse_core::learning::{
    self, AdapterVersion, Learner, LearningSettings, RerankerAdapterVersion, RerankerLoop,
    TrainingOutcome, TrainingRuns,
};
use glimpse_core::ports::{LearningStore, RerankerLearner, VectorIndex};

use super::{Engine, EngineError};
use crate::adapters::sqlite::now_seconds;
use glimpse_http::metrics::Learning;

/// What asking for the reranker's adapters answers when the reranker does not learn.
fn no_learning_reranker() -> EngineError {
    EngineError::Flow(FlowError::Conflict(
        "the vision-language reranker does not learn here: start glimpse serve with --reranker \
         vlm (and without --reranker-adapter, which pins an adapter by hand)"
            .into(),
    ))
}

impl Engine {
    /// Turns learning from clicks on (`Some`) or off: with it on, a share of searches explores
    /// (see [`ExplorationSettings`](glimpse_core::learning::ExplorationSettings)) and the
    /// learning loop trains adapters.
    pub fn with_learning(mut self, learning: Option<LearningSettings>) -> Self {
        self.learning = learning;
        self
    }

    /// The query adapter searches use now.
    pub fn active_adapter(&self) -> Option<Arc<AdapterVersion>> {
        self.adapter.read().ok().and_then(|a| a.clone())
    }

    /// Loads the catalog's active adapter for this engine's encoder when it is not the one in use
    /// (another version was activated or trained): searches use it from then on, without a
    /// restart. Returns the version in use.
    pub async fn refresh_adapter(&self) -> Result<Option<u32>, EngineError> {
        let encoder = self.index.encoder();
        let held = self.active_adapter().map(|a| a.version);
        let stored = self.catalog.active_adapter(encoder).await?;
        let version = stored.as_ref().map(|a| a.version);
        if version != held
            && let Ok(mut adapter) = self.adapter.write()
        {
            *adapter = stored.map(Arc::new);
        }
        Ok(version)
    }

    /// Tells the learning loops a click came in.
    pub fn notice_click(&self) {
        self.clicked.send_modify(|clicks| *clicks += 1);
    }

    /// A receiver that changes with every click, for a learning loop to wait on (each loop holds
    /// its own, so a click wakes every loop, and one that came while a loop was training wakes
    /// it as soon as it waits again).
    pub fn clicks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.clicked.subscribe()
    }

    /// Has the vision-language reranker learn from clicks too: its adapters are trained by the
    /// same loop (when learning is on) and the catalog's active one is put on it.
    pub fn with_reranker_learning(mut self, learner: Arc<dyn RerankerLearner>) -> Self {
        self.reranker_learner = Some(learner);
        self
    }

    /// The reranker adapter searches are reranked with now (`None`: none, or no learning
    /// reranker).
    pub fn reranker_adapter(&self) -> Option<RerankerAdapterVersion> {
        self.reranker_adapter
            .lock()
            .ok()
            .and_then(|held| held.clone())
    }

    /// Puts the catalog's active reranker adapter on the reranker when it is not the one in use
    /// (activated by hand, or trained): searches use it from then on, without a restart.
    pub async fn refresh_reranker_adapter(&self) -> Result<Option<u32>, EngineError> {
        let Some(learner) = &self.reranker_learner else {
            return Ok(None);
        };
        let held = self.reranker_adapter().map(|a| a.version);
        let version =
            learning::follow_active_reranker_adapter(&self.catalog, &*self.blobs, &**learner, held)
                .await?;
        let in_use = version.as_ref().map(|a| a.version);
        if let Ok(mut current) = self.reranker_adapter.lock() {
            *current = version;
        }
        Ok(in_use)
    }

    /// The learning loops this engine runs: the query adapter's, and the reranker's when it
    /// learns.
    pub fn learners(&self) -> Vec<Learner> {
        let mut learners = vec![Learner::QueryAdapter];
        if self.reranker_learner.is_some() {
            learners.push(Learner::Reranker);
        }
        learners
    }

    /// Runs a training run of `learner` when learning is on and enough clicks came in since its
    /// last run started; the run's outcome, or `None` when none was due.
    pub async fn learn_if_due(
        &self,
        learner: Learner,
    ) -> Result<Option<TrainingOutcome>, EngineError> {
        let Some(settings) = &self.learning else {
            return Ok(None);
        };
        let clicks = self.catalog.click_count().await?;
        let before = self
            .catalog
            .clicks_at_last_training(learner)
            .await?
            .unwrap_or(0);
        if clicks.saturating_sub(before) < settings.every_clicks.max(1) {
            return Ok(None);
        }
        self.train(learner, settings).await.map(Some)
    }

    /// Puts `learner`'s active adapter in use when it is not already (hot swap); the version in
    /// use.
    pub async fn refresh(&self, learner: Learner) -> Result<Option<u32>, EngineError> {
        match learner {
            Learner::QueryAdapter => self.refresh_adapter().await,
            Learner::Reranker => self.refresh_reranker_adapter().await,
        }
    }

    /// One training run of `learner` now (single-flight with every other process on this
    /// catalog), then the adapter it may have activated is put in use.
    pub async fn train(
        &self,
        learner: Learner,
        settings: &LearningSettings,
    ) -> Result<TrainingOutcome, EngineError> {
        let holder = format!("glimpse-{}", std::process::id());
        let outcome = match learner {
            Learner::QueryAdapter => {
                let text = CachedTextEmbedder::new(&self.encoder, &self.query_cache);
                learning::retrain(
                    &self.catalog,
                    &text,
                    &self.index,
                    settings,
                    &holder,
                    now_seconds(),
                )
                .await
            }
            Learner::Reranker => {
                let Some(reranker) = &self.reranker_learner else {
                    return Err(no_learning_reranker());
                };
                let ports = RerankerLoop {
                    store: &self.catalog,
                    catalog: &self.catalog,
                    blobs: &*self.blobs,
                    learner: &**reranker,
                    encoder: self.index.encoder(),
                };
                learning::retrain_reranker(&ports, settings, &holder, now_seconds()).await
            }
        };
        self.runs_of(learner).record(&outcome);
        let outcome = outcome?;
        self.refresh(learner).await?;
        Ok(outcome)
    }

    fn runs_of(&self, learner: Learner) -> &TrainingRuns {
        match learner {
            Learner::QueryAdapter => &self.query_training_runs,
            Learner::Reranker => &self.reranker_training_runs,
        }
    }

    /// `learner`'s training runs since start by outcome (every outcome present).
    pub fn training_runs(&self, learner: Learner) -> BTreeMap<&'static str, u64> {
        self.runs_of(learner).counts()
    }

    /// What `/metrics` says about each learning loop.
    pub fn learning_metrics(&self) -> Vec<Learning> {
        self.learners()
            .into_iter()
            .map(|learner| Learning {
                learner,
                active: match learner {
                    Learner::QueryAdapter => {
                        self.active_adapter().map(|a| (a.version, a.evaluation))
                    }
                    Learner::Reranker => self.reranker_adapter().map(|a| (a.version, a.evaluation)),
                },
                training_runs: self.training_runs(learner),
            })
            .collect()
    }

    /// Whether learning from clicks is on.
    pub fn learning(&self) -> bool {
        self.learning.is_some()
    }

    /// The learning settings: the configured ones, or the defaults when learning is off (for a
    /// training run asked for by hand).
    pub fn learning_settings(&self) -> LearningSettings {
        self.learning.clone().unwrap_or_default()
    }

    /// Every stored query adapter version for this engine's encoder, newest first.
    pub async fn adapter_versions(&self) -> Result<Vec<AdapterVersion>, EngineError> {
        Ok(self.catalog.adapter_versions(self.index.encoder()).await?)
    }

    /// Every recorded reranker adapter version for the reranker's model, newest first (none
    /// without a learning reranker).
    pub async fn reranker_adapter_versions(
        &self,
    ) -> Result<Vec<RerankerAdapterVersion>, EngineError> {
        match &self.reranker_learner {
            Some(learner) => Ok(self
                .catalog
                .reranker_adapter_versions(learner.model())
                .await?),
            None => Ok(Vec::new()),
        }
    }

    /// Makes a recorded reranker adapter the active one (`None`: the model alone) and reranks
    /// with it from the next search on. Returns `false`, changing nothing, for a version that is
    /// not recorded.
    pub async fn activate_reranker_adapter(
        &self,
        version: Option<u32>,
    ) -> Result<bool, EngineError> {
        let Some(learner) = &self.reranker_learner else {
            return Err(no_learning_reranker());
        };
        let activated = self
            .catalog
            .activate_reranker_adapter(learner.model(), version)
            .await?;
        self.refresh_reranker_adapter().await?;
        Ok(activated)
    }

    /// Makes a stored version the active one (`None`: no adapter) and uses it from the next
    /// search on. Returns `false`, changing nothing, for a version that is not stored.
    pub async fn activate_adapter(&self, version: Option<u32>) -> Result<bool, EngineError> {
        let activated = self
            .catalog
            .activate_adapter(self.index.encoder(), version)
            .await?;
        self.refresh_adapter().await?;
        Ok(activated)
    }
}
