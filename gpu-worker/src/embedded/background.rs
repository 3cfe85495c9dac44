//! The embedded engine's background work: the indexing loop, the library watcher and the periodic
//! rescan that backs the watcher up.

use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::Notify;

use glimpse_core::flows::{self, LogRetention};

use super::Engine;

/// How often the indexing loop looks for jobs whose back-off ended, when nothing wakes it.
const IDLE_POLL: Duration = Duration::from_secs(2);
/// How long the watcher waits for a burst of file events to settle before rescanning.
const SETTLE: Duration = Duration::from_millis(750);

/// Handles of the background tasks; dropping it stops the file watcher.
pub struct Background {
    /// Wakes the indexing loop (after an upload or a scan).
    pub wake_indexer: Arc<Notify>,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Starts the indexing loop, the hourly pruning of the search log and, with a library, the
/// initial scan, the watcher and the periodic rescan.
pub fn start(engine: Arc<Engine>, rescan_every: Duration, retention: LogRetention) -> Background {
    let wake_indexer = Arc::new(Notify::new());
    tokio::spawn(index_loop(Arc::clone(&engine), Arc::clone(&wake_indexer)));
    tokio::spawn(prune_loop(Arc::clone(&engine), retention));
    let Some(library) = engine.library().map(|p| p.to_path_buf()) else {
        return Background {
            wake_indexer,
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
        _watcher: watcher,
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
/// is queued, for as long as the engine runs.
async fn index_loop(engine: Arc<Engine>, wake: Arc<Notify>) {
    match engine.check(true).await {
        Ok(check) if !check.consistent() => eprintln!(
            "glimpse: catalog and index disagreed: {} indexed photos had no vector (queued \
             again), {} vectors had no photo (removed)",
            check.missing_vectors, check.orphan_vectors
        ),
        Ok(_) => {}
        Err(error) => eprintln!("glimpse: cannot compare the catalog with the index: {error}"),
    }
    let mut changed_since_optimize = false;
    loop {
        match engine.index_round().await {
            Ok(round) if round.claimed > 0 => {
                changed_since_optimize |= round.indexed > 0;
                continue;
            }
            Ok(_) => {}
            Err(error) => eprintln!("glimpse: indexing round failed: {error}"),
        }
        if changed_since_optimize {
            let engine = Arc::clone(&engine);
            match tokio::task::spawn_blocking(move || engine.index.optimize()).await {
                Ok(Ok(_)) => changed_since_optimize = false,
                Ok(Err(error)) => eprintln!("glimpse: index optimisation failed: {error}"),
                Err(error) => eprintln!("glimpse: index optimisation panicked: {error}"),
            }
        }
        let _ = tokio::time::timeout(IDLE_POLL, wake.notified()).await;
    }
}
