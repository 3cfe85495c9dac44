//! The engine's side of learning from clicks: the active query adapter (hot-swapped from the
//! catalog), training runs when enough clicks came in, and choosing a version by hand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use glimpse_core::CachedTextEmbedder;
use glimpse_core::learning::{self, AdapterVersion, LearningSettings, TrainingOutcome};
use glimpse_core::ports::{LearningStore, VectorIndex};

use super::{Engine, EngineError};
use crate::adapters::sqlite::now_seconds;

/// The outcome name of a training run that failed with an error.
const FAILED_RUN: &str = "failed";

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

    /// Tells the learning loop a click came in.
    pub fn notice_click(&self) {
        self.clicked.notify_one();
    }

    /// Waits for a click or for `timeout`, whichever comes first.
    pub async fn wait_for_click(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.clicked.notified()).await;
    }

    /// Runs a training run when learning is on and enough clicks came in since the last run
    /// started; `None` when none was due.
    pub async fn learn_if_due(&self) -> Result<Option<TrainingOutcome>, EngineError> {
        let Some(settings) = &self.learning else {
            return Ok(None);
        };
        let before = self.catalog.clicks_at_last_training().await?.unwrap_or(0);
        let clicks = self.catalog.click_count().await?;
        if clicks.saturating_sub(before) < settings.every_clicks.max(1) {
            return Ok(None);
        }
        self.retrain(settings).await.map(Some)
    }

    /// One training run now (single-flight with every other process on this catalog), then the
    /// adapter it may have activated is loaded.
    pub async fn retrain(
        &self,
        settings: &LearningSettings,
    ) -> Result<TrainingOutcome, EngineError> {
        let text = CachedTextEmbedder::new(&self.encoder, &self.query_cache);
        let holder = format!("glimpse-{}", std::process::id());
        let outcome = learning::retrain(
            &self.catalog,
            &text,
            &self.index,
            settings,
            &holder,
            now_seconds(),
        )
        .await;
        if let Ok(mut runs) = self.training_runs.lock() {
            let name = outcome.as_ref().map_or(FAILED_RUN, TrainingOutcome::name);
            *runs.entry(name).or_default() += 1;
        }
        let outcome = outcome?;
        self.refresh_adapter().await?;
        Ok(outcome)
    }

    /// Training runs since start by outcome ([`TrainingOutcome::NAMES`] and `"failed"`, each
    /// present).
    pub fn training_runs(&self) -> BTreeMap<&'static str, u64> {
        let mut runs: BTreeMap<&'static str, u64> = TrainingOutcome::NAMES
            .iter()
            .chain([&FAILED_RUN])
            .map(|name| (*name, 0))
            .collect();
        if let Ok(counted) = self.training_runs.lock() {
            runs.extend(counted.iter().map(|(name, count)| (*name, *count)));
        }
        runs
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
