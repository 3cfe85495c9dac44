//! The pool's side of the vision-language reranker's learning loop: every worker with a reranker
//! follows the catalog's active adapter (hot swap, within seconds of a training run or an
//! activation by hand), and workers configured to learn start a training run whenever enough new
//! clicks came in — one across the pool, by the catalog's training lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use glimpse_core::learning::{self, Learner, LearningSettings, RerankerLoop, TrainingRuns};
use glimpse_core::ports::{BlobStore, Catalog, LearningStore, RerankerLearner};
use tokio::sync::watch;

/// How often the loop looks at the catalog.
const POLL: Duration = Duration::from_secs(2);

/// What the loop did, for `/metrics`.
#[derive(Debug, Default)]
pub struct LearningStats {
    /// Training runs by outcome.
    pub runs: TrainingRuns,
    active: Mutex<Option<(u32, learning::Evaluation)>>,
}

impl LearningStats {
    /// The adapter in use: its version and held-out evaluation.
    pub fn active(&self) -> Option<(u32, learning::Evaluation)> {
        self.active.lock().ok().and_then(|active| *active)
    }
}

/// The ports and settings of the loop.
pub struct RerankerLearning<S> {
    /// The catalog: the search log, the lease and the adapter versions.
    pub catalog: Arc<S>,
    /// Photos and the adapters' files.
    pub blobs: Arc<dyn BlobStore>,
    /// The reranker that serves `/v1/rerank`.
    pub learner: Arc<dyn RerankerLearner>,
    /// Learning settings: `None` follows the active adapter without training.
    pub settings: Option<LearningSettings>,
    /// Names this worker in the lease.
    pub holder: String,
    /// What it did.
    pub stats: Arc<LearningStats>,
}

impl<S: Catalog + LearningStore + 'static> RerankerLearning<S> {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut held: Option<u32> = None;
        loop {
            match learning::follow_active_reranker_adapter(
                &*self.catalog,
                &*self.blobs,
                &*self.learner,
                held,
            )
            .await
            {
                Ok(active) => {
                    let now = active.as_ref().map(|a| a.version);
                    if now != held {
                        println!(
                            "glimpse worker: the reranker uses {}",
                            now.map_or_else(|| "no adapter".to_owned(), |v| format!("adapter {v}"))
                        );
                    }
                    held = now;
                    if let Ok(mut in_use) = self.stats.active.lock() {
                        *in_use = active.map(|a| (a.version, a.evaluation));
                    }
                }
                Err(error) => {
                    eprintln!("glimpse worker: cannot put the active reranker adapter on: {error}")
                }
            }
            if let Some(settings) = &self.settings {
                self.train_if_due(settings).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    async fn train_if_due(&self, settings: &LearningSettings) {
        let due = async {
            let before = self
                .catalog
                .clicks_at_last_training(Learner::Reranker)
                .await?
                .unwrap_or(0);
            let clicks = self.catalog.click_count().await?;
            Ok::<bool, glimpse_core::ports::PortError>(
                clicks.saturating_sub(before) >= settings.every_clicks.max(1),
            )
        };
        match due.await {
            Ok(false) => return,
            Ok(true) => {}
            Err(error) => {
                eprintln!("glimpse worker: cannot read the click count: {error}");
                return;
            }
        }
        let encoder = match self.catalog.active_encoder().await {
            Ok(Some(encoder)) => encoder,
            Ok(None) => return,
            Err(error) => {
                eprintln!("glimpse worker: cannot read the pool's encoder: {error}");
                return;
            }
        };
        let ports = RerankerLoop {
            store: &*self.catalog,
            catalog: &*self.catalog,
            blobs: &*self.blobs,
            learner: &*self.learner,
            encoder: &encoder,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let outcome = learning::retrain_reranker(&ports, settings, &self.holder, now).await;
        self.stats.runs.record(&outcome);
        match outcome {
            Ok(outcome) => println!(
                "glimpse worker: reranker learning from clicks: {}",
                outcome.summary()
            ),
            Err(error) => eprintln!("glimpse worker: reranker training failed: {error}"),
        }
    }
}
