//! Latency percentiles per search stage over a rolling window, and counters, for `/api/stats` and
//! `/metrics`.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use glimpse_core::ports::CatalogCounts;
use glimpse_core::search::{SearchResponse, StageTimings};
use glimpse_http::metrics::{Learning, write_learning};
use serde_json::{Value, json};

use crate::adapters::MemoryQueryCache;
use crate::memory::{MemoryBudget, ProcessMemory};

/// Searches the percentiles are computed over.
pub const WINDOW: usize = 10_000;

/// Counters and latency windows, shared by the handlers.
#[derive(Default)]
pub struct Stats {
    windows: Mutex<[VecDeque<f64>; 6]>,
    searches: AtomicU64,
    search_errors: AtomicU64,
    rerank_fallbacks: AtomicU64,
    uploads: AtomicU64,
    duplicate_uploads: AtomicU64,
    rejected_uploads: AtomicU64,
    clicks: AtomicU64,
    thumbnail_decodes: AtomicU64,
}

/// Nearest-rank p50, p95 and p99 of samples.
pub fn percentiles(mut samples: Vec<f64>) -> [f64; 3] {
    samples.sort_by(f64::total_cmp);
    [50.0, 95.0, 99.0].map(|p| {
        if samples.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    })
}

impl Stats {
    /// Records a completed search.
    pub fn record_search(&self, response: &SearchResponse) {
        self.searches.fetch_add(1, Ordering::Relaxed);
        if response.rerank_fallback.is_some() {
            self.rerank_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut windows) = self.windows.lock() {
            for (window, value) in windows.iter_mut().zip(response.timings.values()) {
                if window.len() == WINDOW {
                    window.pop_front();
                }
                window.push_back(value);
            }
        }
    }

    /// Counts a search that failed.
    pub fn count_search_error(&self) {
        self.search_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted upload (`created == false` for duplicates).
    pub fn count_upload(&self, created: bool) {
        let counter = if created {
            &self.uploads
        } else {
            &self.duplicate_uploads
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused upload.
    pub fn count_rejected_upload(&self) {
        self.rejected_uploads.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a recorded click.
    pub fn count_click(&self) {
        self.clicks.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a thumbnail made on request, by decoding its original.
    pub fn count_thumbnail_decode(&self) {
        self.thumbnail_decodes.fetch_add(1, Ordering::Relaxed);
    }

    fn percentiles(&self) -> Vec<(&'static str, usize, [f64; 3])> {
        let Ok(windows) = self.windows.lock() else {
            return Vec::new();
        };
        StageTimings::STAGES
            .iter()
            .zip(windows.iter())
            .map(|(stage, window)| {
                (
                    *stage,
                    window.len(),
                    percentiles(window.iter().copied().collect()),
                )
            })
            .collect()
    }

    /// The `/api/stats` document.
    pub fn report(&self) -> Value {
        let stages: serde_json::Map<String, Value> = self
            .percentiles()
            .into_iter()
            .map(|(stage, samples, [p50, p95, p99])| {
                (
                    stage.to_owned(),
                    json!({"samples": samples, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99}),
                )
            })
            .collect();
        json!({
            "window": WINDOW,
            "stages": stages,
            "searches": self.searches.load(Ordering::Relaxed),
            "search_errors": self.search_errors.load(Ordering::Relaxed),
            "rerank_fallbacks": self.rerank_fallbacks.load(Ordering::Relaxed),
            "uploads": self.uploads.load(Ordering::Relaxed),
            "duplicate_uploads": self.duplicate_uploads.load(Ordering::Relaxed),
            "rejected_uploads": self.rejected_uploads.load(Ordering::Relaxed),
            "clicks": self.clicks.load(Ordering::Relaxed),
            "thumbnail_decodes": self.thumbnail_decodes.load(Ordering::Relaxed),
        })
    }

    /// The `/metrics` page (Prometheus text format 0.0.4).
    pub fn prometheus(
        &self,
        counts: &CatalogCounts,
        vectors: u64,
        library_available: Option<bool>,
        query_cache: &MemoryQueryCache,
        learning: &[Learning],
    ) -> String {
        let mut out = String::new();
        let counters = [
            (
                "glimpse_searches_total",
                "Searches answered.",
                self.searches.load(Ordering::Relaxed),
            ),
            (
                "glimpse_search_errors_total",
                "Searches refused or failed.",
                self.search_errors.load(Ordering::Relaxed),
            ),
            (
                "glimpse_rerank_fallbacks_total",
                "Searches answered in retrieval order because the reranker failed.",
                self.rerank_fallbacks.load(Ordering::Relaxed),
            ),
            (
                "glimpse_uploads_total",
                "Photos uploaded (new).",
                self.uploads.load(Ordering::Relaxed),
            ),
            (
                "glimpse_duplicate_uploads_total",
                "Uploads of bytes already in the catalog.",
                self.duplicate_uploads.load(Ordering::Relaxed),
            ),
            (
                "glimpse_rejected_uploads_total",
                "Uploads refused.",
                self.rejected_uploads.load(Ordering::Relaxed),
            ),
            (
                "glimpse_clicks_total",
                "Clicks recorded on results.",
                self.clicks.load(Ordering::Relaxed),
            ),
            (
                "glimpse_thumbnail_decodes_total",
                "Thumbnails made on request by decoding the original (indexing makes the others \
                 from the decode it needs).",
                self.thumbnail_decodes.load(Ordering::Relaxed),
            ),
            (
                "glimpse_query_cache_hits_total",
                "Query texts whose embedding came from the query cache.",
                query_cache.hits(),
            ),
            (
                "glimpse_query_cache_misses_total",
                "Query texts embedded by the text tower (then cached).",
                query_cache.misses(),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP glimpse_photos Photos in the catalog by indexing status.\n\
             # TYPE glimpse_photos gauge"
        );
        for (status, value) in [
            ("pending", counts.pending),
            ("indexed", counts.indexed),
            ("failed", counts.failed),
        ] {
            let _ = writeln!(out, "glimpse_photos{{status=\"{status}\"}} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP glimpse_index_vectors Vectors in the index.\n\
             # TYPE glimpse_index_vectors gauge\nglimpse_index_vectors {vectors}"
        );
        if let Some(available) = library_available {
            let _ = writeln!(
                out,
                "# HELP glimpse_library_available Whether the last scan could read the library \
                 folder (0: missing, unreadable or empty, nothing removed).\n\
                 # TYPE glimpse_library_available gauge\nglimpse_library_available {}",
                u8::from(available)
            );
        }
        write_learning(&mut out, learning);
        let _ = writeln!(
            out,
            "# HELP glimpse_search_stage_seconds Search stage latency over the last {WINDOW} \
             searches.\n# TYPE glimpse_search_stage_seconds summary"
        );
        for (stage, _samples, quantiles) in self.percentiles() {
            for (q, value) in ["0.5", "0.95", "0.99"].iter().zip(quantiles) {
                let _ = writeln!(
                    out,
                    "glimpse_search_stage_seconds{{stage=\"{stage}\",quantile=\"{q}\"}} {}",
                    value / 1000.0
                );
            }
        }
        out
    }
}

/// What `/metrics` says about the process's memory and its budget.
pub fn write_memory(out: &mut String, budget: MemoryBudget) {
    let memory = ProcessMemory::now().unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
         # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n\
         # HELP glimpse_peak_resident_memory_bytes The most that was resident at once since start.\n\
         # TYPE glimpse_peak_resident_memory_bytes gauge\nglimpse_peak_resident_memory_bytes {}\n\
         # HELP glimpse_memory_budget_bytes The memory budget (--memory-budget).\n\
         # TYPE glimpse_memory_budget_bytes gauge\nglimpse_memory_budget_bytes {}",
        memory.resident,
        memory.peak,
        budget.bytes()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentiles(values), [50.0, 95.0, 99.0]);
        assert_eq!(percentiles(vec![7.0]), [7.0; 3]);
        assert_eq!(percentiles(Vec::new()), [0.0; 3]);
    }
}
