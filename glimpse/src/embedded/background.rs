//! The embedded engine's background work: the indexing loop, the library watcher and the periodic
//! rescan that backs the watcher up.

use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use glimpse_core::flows::{self, LogRetention};
use glimpse_core::learning::Learner;

use super::Engine;

/// How often the indexing loop looks for jobs whose back-off ended, when nothing wakes it.
const IDLE_POLL: Duration = Duration::from_secs(2);
/// How long the watcher waits for a burst of file events to settle before rescanning.
const SETTLE: Duration = Duration::from_millis(750);

/// Handles of the background tasks; dropping it stops the file watcher.
pub struct Background {
    /// Wakes the indexing loop (after an upload or a scan).
    pub wake_indexer: Arc<Notify>,
    stop_indexer: watch::Sender<bool>,
    indexer: JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Background {
    /// Stops the indexing loop once the round it is in ends, waiting at most `grace` for it: the
    /// jobs of a round cut short would count as claims that never ended (as after a crash), and
    /// a photo stopped in the middle of often enough would be failed for it.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop_indexer.send(true);
        if tokio::time::timeout(grace, self.indexer).await.is_err() {
            eprintln!(
                "glimpse: the indexing round in progress did not end within {} s; its photos are \
                 indexed again at the next start",
                grace.as_secs()
            );
        }
    }
}

/// Starts the indexing loop, the hourly pruning of the search log, the learning loop and, with a
/// library, the
/// initial scan, the watcher and the periodic rescan.
pub fn start(engine: Arc<Engine>, rescan_every: Duration, retention: LogRetention) -> Background {
    let wake_indexer = Arc::new(Notify::new());
    let (stop_indexer, stopped) = watch::channel(false);
    let indexer = tokio::spawn(index_loop(
        Arc::clone(&engine),
        Arc::clone(&wake_indexer),
        stopped,
    ));
    tokio::spawn(prune_loop(Arc::clone(&engine), retention));
    for learner in engine.learners() {
        tokio::spawn(learn_loop(Arc::clone(&engine), learner));
    }
    tokio::spawn(memory_loop(Arc::clone(&engine)));
    let Some(library) = engine.library().map(|p| p.to_path_buf()) else {
        return Background {
            wake_indexer,
            stop_indexer,
            indexer,
            _watcher: None,
        };
    };
    let (events, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = events.send(());
        }
    })
    .and_then(|mut watcher| {
        watcher.watch(&library, notify::RecursiveMode::Recursive)?;
        Ok(watcher)
    });
    let watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            eprintln!(
                "glimpse: cannot watch {} ({error}); changes are picked up by the rescan every {} s",
                library.display(),
                rescan_every.as_secs()
            );
            None
        }
    };
    let wake = Arc::clone(&wake_indexer);
    tokio::spawn(async move {
        let mut rescan = tokio::time::interval(rescan_every);
        loop {
            tokio::select! {
                _ = rescan.tick() => {}
                Some(()) = changed.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while changed.try_recv().is_ok() {}
                }
            }
            match engine.scan_library(false).await {
                Ok(_) => wake.notify_one(),
                Err(error) => eprintln!("glimpse: library scan failed: {error}"),
            }
        }
    });
    Background {
        wake_indexer,
        stop_indexer,
        indexer,
        _watcher: watcher,
    }
}

/// How often a learning loop looks for another active adapter (activated by hand, or trained by
/// another process) and for enough new clicks, when no click wakes it.
const LEARN_POLL: Duration = Duration::from_secs(2);

/// Keeps `learner`'s active adapter current (hot swap) and trains a new one whenever enough new
/// clicks came in (one run at a time: clicks during a run count for the next round). Each learner
/// has a loop of its own, so a long run of one (the reranker's) never holds up the other's swaps.
async fn learn_loop(engine: Arc<Engine>, learner: Learner) {
    let mut clicks = engine.clicks();
    loop {
        let _ = tokio::time::timeout(LEARN_POLL, clicks.changed()).await;
        if let Err(error) = engine.refresh(learner).await {
            eprintln!(
                "glimpse: learning from clicks ({}): cannot put the active adapter in use: {error}",
                learner.name()
            );
        }
        match engine.learn_if_due(learner).await {
            Ok(Some(outcome)) => eprintln!(
                "glimpse: learning from clicks ({}): {}",
                learner.name(),
                outcome.summary()
            ),
            Ok(None) => {}
            Err(error) => eprintln!(
                "glimpse: learning from clicks ({}) failed: {error}",
                learner.name()
            ),
        }
    }
}

/// How often `glimpse serve` records what it holds for `glimpse status`.
const MEMORY_RECORD_EVERY: Duration = Duration::from_secs(30);

/// Records the server's memory every half minute, and says so in the log when it holds more
/// than its budget (once each time it goes over).
async fn memory_loop(engine: Arc<Engine>) {
    let mut every = tokio::time::interval(MEMORY_RECORD_EVERY);
    let mut over = false;
    loop {
        every.tick().await;
        match engine.record_memory("glimpse serve") {
            Ok(record) => {
                let now_over = record.memory.resident > record.budget.bytes();
                if now_over && !over {
                    eprintln!(
                        "glimpse: over the memory budget: {}; pass a larger --memory-budget if \
                         this machine has the room",
                        record.summary()
                    );
                }
                over = now_over;
            }
            Err(error) => eprintln!("glimpse: cannot record memory use: {error}"),
        }
    }
}

async fn prune_loop(engine: Arc<Engine>, retention: LogRetention) {
    let mut every = tokio::time::interval(LogRetention::PRUNE_EVERY);
    loop {
        every.tick().await;
        let now = crate::adapters::sqlite::now_seconds();
        if let Err(error) = flows::prune_search_log(&engine.catalog, retention, now).await {
            eprintln!("glimpse: cannot prune the search log: {error}");
        }
    }
}

/// Brings catalog and index in line (a crash, a deleted or damaged index), then indexes whatever
/// is queued, until `stop` turns `true` (between rounds).
async fn index_loop(engine: Arc<Engine>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    match engine.check_at_start().await {
        Ok(check) if !check.consistent() => eprintln!(
            "glimpse: catalog and index disagreed: {} indexed photos had no vector (queued \
             again), {} vectors had no photo (removed)",
            check.missing_vectors, check.orphan_vectors
        ),
        Ok(_) => {}
        Err(error) => eprintln!("glimpse: cannot compare the catalog with the index: {error}"),
    }
    let mut changed_since_optimize = false;
    while !*stop.borrow() {
        match engine.index_round().await {
            Ok(round) if round.claimed > 0 => {
                changed_since_optimize |= round.indexed > 0;
                if let Some(error) = round.thumbnail_refused {
                    eprintln!(
                        "glimpse: a thumbnail made while indexing could not be stored \
                         ({error}); it is made when the photo is first shown"
                    );
                }
                continue;
            }
            Ok(_) => {}
            Err(error) => eprintln!("glimpse: indexing round failed: {error}"),
        }
        if changed_since_optimize {
            let optimizing = Arc::clone(&engine);
            match tokio::task::spawn_blocking(move || optimizing.index.optimize()).await {
                Ok(Ok(_)) => {
                    changed_since_optimize = false;
                    // Nothing left to index: searches need only the text tower.
                    engine.encoder.release_image_tower();
                }
                Ok(Err(error)) => eprintln!("glimpse: index optimisation failed: {error}"),
                Err(error) => eprintln!("glimpse: index optimisation panicked: {error}"),
            }
        }
        tokio::select! {
            _ = tokio::time::timeout(IDLE_POLL, wake.notified()) => {}
            _ = stop.changed() => {}
        }
    }
}
