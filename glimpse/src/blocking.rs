//! Blocking work — SQLite, file reads and writes, the embedded vector index — called from async
//! code without stalling the runtime: on tokio's multi-threaded runtime the calling worker thread
//! hands its other tasks to a fresh worker and becomes one of the bounded pool of blocking
//! threads for the duration (`block_in_place`), so searches keep being answered while a scan or
//! an indexing round waits on the disk.

/// Runs `work`, telling a multi-threaded tokio runtime (if any) that it blocks.
pub fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
