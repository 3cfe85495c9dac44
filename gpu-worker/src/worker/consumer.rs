//! The feature-job consumer of a pool member: claims jobs from the shared catalog under a lease,
//! reads the originals from the blob store, embeds them and stores the vectors, through core's
//! [`flows::index_round`]. Any number of consumers share one queue: claims are exclusive, a
//! crashed consumer's jobs come back when its lease runs out, and a consumer whose lease ran out
//! cannot end a job another one holds now.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use glimpse_core::flows::{self, IndexRound, LogRetention, RetryPolicy};
use glimpse_core::ports::{BlobStore, Catalog, ImageEmbedder, VectorIndex};
use tokio::sync::watch;

/// The longest pause after rounds that failed (the catalog unreachable, say).
const MAX_ERROR_PAUSE: Duration = Duration::from_secs(30);

/// What the consumer has done since it started, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Jobs claimed.
    pub claimed: AtomicU64,
    /// Jobs done: the photo's vector is in the index.
    pub indexed: AtomicU64,
    /// Jobs put back for a later attempt.
    pub retried: AtomicU64,
    /// Jobs failed for good.
    pub failed: AtomicU64,
    /// Jobs whose lease ran out before they finished (another claimer has them).
    pub lost: AtomicU64,
    /// Rounds that failed as a whole (the catalog unreachable, say).
    pub round_errors: AtomicU64,
}

impl ConsumerStats {
    fn record(&self, round: &IndexRound) {
        let add = |counter: &AtomicU64, n: usize| counter.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.claimed, round.claimed);
        add(&self.indexed, round.indexed);
        add(&self.retried, round.retried);
        add(&self.failed, round.failed);
        add(&self.lost, round.lost);
    }
}

/// The ports a consumer works with.
#[derive(Clone)]
pub struct ConsumerPorts {
    /// The shared catalog and job queue.
    pub catalog: Arc<dyn Catalog>,
    /// Where the originals are.
    pub blobs: Arc<dyn BlobStore>,
    /// The image encoder.
    pub embedder: Arc<dyn ImageEmbedder>,
    /// Where the vectors go.
    pub index: Arc<dyn VectorIndex>,
}

/// How a consumer paces itself.
#[derive(Clone, Copy, Debug)]
pub struct ConsumerPacing {
    /// Jobs claimed per round.
    pub batch: usize,
    /// Retries, back-off and the lease.
    pub policy: RetryPolicy,
    /// How long an idle consumer waits before looking for jobs again.
    pub idle_poll: Duration,
    /// What each consumer keeps tidy, hourly; `None` leaves it alone.
    pub housekeeping: Option<Housekeeping>,
}

/// What a consumer keeps tidy, hourly (every consumer of a pool does: each step is idempotent).
#[derive(Clone, Copy, Debug)]
pub struct Housekeeping {
    /// How long the search log keeps searches.
    pub search_log: LogRetention,
    /// How long an upload straight to storage may stay uncompleted before its staged original
    /// is removed.
    pub staged_uploads_expire_after: Duration,
}

/// One consumer.
pub struct Consumer {
    ports: ConsumerPorts,
    pacing: ConsumerPacing,
    stats: Arc<ConsumerStats>,
    /// Whether the encoder is registered with the catalog (the first round does it).
    registered: AtomicBool,
}

impl Consumer {
    /// A consumer of `ports`' queue.
    pub fn new(ports: ConsumerPorts, pacing: ConsumerPacing) -> Self {
        Self {
            ports,
            pacing,
            stats: Arc::new(ConsumerStats::default()),
            registered: AtomicBool::new(false),
        }
    }

    /// Its counters (shared with the metrics endpoint).
    pub fn stats(&self) -> Arc<ConsumerStats> {
        Arc::clone(&self.stats)
    }

    /// One round (see [`flows::index_round`]). The first registers the encoder with the catalog:
    /// the first encoder a pool ever sees becomes its active one; another claims no jobs until
    /// an operator activates it.
    pub async fn round(&self) -> Result<IndexRound, flows::FlowError> {
        let ports = &self.ports;
        if !self.registered.load(Ordering::Relaxed) {
            ports
                .catalog
                .register_encoder(ports.index.encoder(), ports.index.dimension())
                .await?;
            self.registered.store(true, Ordering::Relaxed);
        }
        let round = flows::index_round(
            ports.catalog.as_ref(),
            ports.blobs.as_ref(),
            ports.embedder.as_ref(),
            ports.index.as_ref(),
            self.pacing.batch,
            &self.pacing.policy,
        )
        .await?;
        self.stats.record(&round);
        if let Some(error) = &round.thumbnail_refused {
            eprintln!(
                "glimpse worker: a thumbnail made while indexing could not be stored: {error}"
            );
        }
        Ok(round)
    }

    /// Prunes the search log and expires uploads never completed; a failure is logged, and the
    /// next hour tries again.
    async fn keep_house(&self, housekeeping: Housekeeping) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let catalog = self.ports.catalog.as_ref();
        if let Err(error) = flows::prune_search_log(catalog, housekeeping.search_log, now).await {
            eprintln!("glimpse worker: cannot prune the search log: {error}");
        }
        match flows::expire_staged_uploads(
            catalog,
            self.ports.blobs.as_ref(),
            now,
            housekeeping.staged_uploads_expire_after,
        )
        .await
        {
            Ok(0) => {}
            Ok(expired) => eprintln!(
                "glimpse worker: removed {expired} upload(s) started straight to storage and \
                 never completed"
            ),
            Err(error) => eprintln!("glimpse worker: cannot expire staged uploads: {error}"),
        }
    }

    /// Runs rounds back to back while there is work, polls when idle, and backs off while rounds
    /// fail (the catalog restarting, say), until `stop` turns `true`. A round in progress is
    /// finished first, so its jobs end properly.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        let mut said_inactive = false;
        let mut tidied_at: Option<Instant> = None;
        while !*stop.borrow() {
            if let Some(housekeeping) = self.pacing.housekeeping
                && tidied_at.is_none_or(|at| at.elapsed() >= LogRetention::PRUNE_EVERY)
            {
                tidied_at = Some(Instant::now());
                self.keep_house(housekeeping).await;
            }
            let pause = match self.round().await {
                Ok(round) => {
                    failures = 0;
                    if round.inactive_encoder != said_inactive {
                        said_inactive = round.inactive_encoder;
                        eprintln!(
                            "glimpse worker: {}",
                            if said_inactive {
                                "this worker's encoder is not the pool's active one: it claims \
                                 no feature jobs (`glimpse encoders --activate` switches the pool)"
                            } else {
                                "this worker's encoder is the pool's active one: claiming jobs"
                            }
                        );
                    }
                    if round.claimed > 0 {
                        continue;
                    }
                    self.pacing.idle_poll
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    self.stats.round_errors.fetch_add(1, Ordering::Relaxed);
                    let pause = self
                        .pacing
                        .idle_poll
                        .saturating_mul(2u32.saturating_pow(failures.min(8)))
                        .min(MAX_ERROR_PAUSE);
                    eprintln!(
                        "glimpse worker: an indexing round failed ({error}); trying again in {} ms",
                        pause.as_millis()
                    );
                    pause
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
