//! Bounded work per kind of request: at most so many searches, or thumbnail decodes, at once.
//! A request waits a little for its turn, then gets a 503 with `Retry-After`, so a burst of
//! requests (or a client that never stops) cannot pile up work the machine cannot do.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::Semaphore;

use super::ApiError;

/// How long a request waits for its turn before it is told to come back later.
const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// How long one request may work before it is given up with a 503.
const WORK_LIMIT: Duration = Duration::from_secs(60);

/// At most `limit` requests of one kind at work at once.
pub struct Gate {
    what: &'static str,
    permits: Semaphore,
    limit: usize,
    peak: AtomicUsize,
}

impl Gate {
    /// A gate for `what` (a plural noun, for messages), letting `limit` (at least 1) through.
    pub fn new(what: &'static str, limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            what,
            permits: Semaphore::new(limit),
            limit,
            peak: AtomicUsize::new(0),
        }
    }

    /// The most requests that were at work at once since start.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Runs `work` once a place is free, within the time limits.
    pub async fn run<T>(
        &self,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let busy = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "too many {} at once ({} at most); try again in a moment",
                    self.what, self.limit
                ),
            )
        };
        let _permit = match tokio::time::timeout(QUEUE_WAIT, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => return Err(busy()),
        };
        let at_work = self.limit - self.permits.available_permits();
        self.peak.fetch_max(at_work, Ordering::Relaxed);
        tokio::time::timeout(WORK_LIMIT, work).await.map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_slow",
                format!(
                    "this took longer than {} s and was given up; try again later",
                    WORK_LIMIT.as_secs()
                ),
            )
        })?
    }
}
