//! The embedded [`LearningStore`]: clicked searches and swap counts from the search log, adapter
//! versions in `query_adapters` and `reranker_adapters` (the active ones in `engine_state`), and the
//! training leases (one per learner) in `training_leases`.

use std::time::Duration;

use async_trait::async_trait;
use glimpse_core::EncoderId;
use glimpse_core::learning::{
    AdapterVersion, Evaluation, Learner, QueryAdapter, RerankerAdapterVersion, SwapCounts,
};
use glimpse_core::ports::{Catalog, LearningStore, PortError};
use glimpse_core::search::{QueryId, SearchLogEntry};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{SqliteCatalog, internal, now_seconds};

/// The engine-state key of a reranker model's active adapter version.
fn active_reranker_key(model: &str) -> String {
    format!("active_reranker_adapter:{model}")
}

fn reranker_adapter_version(
    model: &str,
    (version, blobs, evaluation, trained_at): StoredRow,
) -> Result<RerankerAdapterVersion, PortError> {
    Ok(RerankerAdapterVersion {
        version,
        model: model.to_owned(),
        blobs,
        evaluation: serde_json::from_str(&evaluation)
            .map_err(|e| internal(format!("reranker adapter {version}'s evaluation: {e}")))?,
        trained_at,
    })
}

/// The engine-state key of an encoder's active adapter version.
fn active_key(encoder: &EncoderId) -> String {
    format!("active_adapter:{encoder}")
}

type StoredRow = (u32, String, String, i64);

fn adapter_version(
    encoder: &EncoderId,
    (version, adapter, evaluation, trained_at): StoredRow,
) -> Result<AdapterVersion, PortError> {
    Ok(AdapterVersion {
        version,
        encoder: encoder.clone(),
        adapter: serde_json::from_str(&adapter)
            .map_err(|e| internal(format!("query adapter {version}: {e}")))?,
        evaluation: serde_json::from_str(&evaluation)
            .map_err(|e| internal(format!("query adapter {version}'s evaluation: {e}")))?,
        trained_at,
    })
}

fn stored_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

#[async_trait]
impl LearningStore for SqliteCatalog {
    async fn click_count(&self) -> Result<u64, PortError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM search_results WHERE clicked",
                [],
                |row| row.get(0),
            )
        })
    }

    async fn clicked_searches(
        &self,
        encoder: &EncoderId,
        limit: usize,
    ) -> Result<Vec<SearchLogEntry>, PortError> {
        let encoder = encoder.to_string();
        let ids: Vec<String> = self.with(|c| {
            let mut statement = c.prepare_cached(
                "SELECT s.id FROM searches s WHERE s.encoder = ?1 AND EXISTS \
                 (SELECT 1 FROM search_results r WHERE r.query_id = s.id AND r.clicked) \
                 ORDER BY s.created_at DESC, s.id LIMIT ?2",
            )?;
            statement
                .query_map(params![encoder, limit as i64], |row| row.get(0))?
                .collect()
        })?;
        let mut entries = Vec::with_capacity(ids.len());
        for id in ids {
            let query_id: QueryId = id.parse().map_err(internal)?;
            if let Some(entry) = self.search_log(&query_id).await? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    async fn swap_counts(&self, encoder: &EncoderId) -> Result<Vec<SwapCounts>, PortError> {
        let encoder = encoder.to_string();
        self.with(|c| {
            let mut statement = c.prepare_cached(
                "SELECT s.swapped_with, COUNT(*), COALESCE(SUM(probe.clicked), 0) \
                 FROM searches s \
                 JOIN search_results first ON first.query_id = s.id AND first.rank = 1 \
                 JOIN search_results probe ON probe.query_id = s.id \
                     AND probe.rank = COALESCE(s.swapped_with, 1) \
                 WHERE s.encoder = ?1 GROUP BY s.swapped_with",
            )?;
            statement
                .query_map(params![encoder], |row| {
                    Ok(SwapCounts {
                        swapped_with: row.get(0)?,
                        searches: row.get(1)?,
                        clicked: row.get(2)?,
                    })
                })?
                .collect()
        })
    }

    async fn claim_training(
        &self,
        learner: Learner,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, PortError> {
        let now = now_seconds();
        let until = now.saturating_add(i64::try_from(lease.as_secs()).unwrap_or(i64::MAX));
        self.with(|c| {
            let changed = c.execute(
                "INSERT INTO training_leases (learner, holder, lease_until, started_at, clicks) \
                 VALUES (?4, ?1, ?2, ?3, (SELECT COUNT(*) FROM search_results WHERE clicked)) \
                 ON CONFLICT (learner) DO UPDATE SET holder = ?1, lease_until = ?2, \
                     started_at = ?3, clicks = excluded.clicks \
                 WHERE training_leases.holder IS NULL OR training_leases.lease_until <= ?3",
                params![holder, until, now, learner.name()],
            )?;
            Ok(changed == 1)
        })
    }

    async fn release_training(&self, learner: Learner, holder: &str) -> Result<(), PortError> {
        self.with(|c| {
            c.execute(
                "UPDATE training_leases SET holder = NULL WHERE learner = ?1 AND holder = ?2",
                params![learner.name(), holder],
            )
            .map(drop)
        })
    }

    async fn clicks_at_last_training(&self, learner: Learner) -> Result<Option<u64>, PortError> {
        self.with(|c| {
            c.query_row(
                "SELECT clicks FROM training_leases WHERE learner = ?1",
                params![learner.name()],
                |row| row.get(0),
            )
            .optional()
        })
    }

    async fn store_adapter(
        &self,
        encoder: &EncoderId,
        adapter: &QueryAdapter,
        evaluation: &Evaluation,
        trained_at: i64,
    ) -> Result<AdapterVersion, PortError> {
        let stored = serde_json::to_string(adapter).map_err(internal)?;
        let measured = serde_json::to_string(evaluation).map_err(internal)?;
        let key = encoder.to_string();
        let version: u32 = self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: u32 = transaction.query_row(
                "INSERT INTO query_adapters (encoder, version, adapter, evaluation, trained_at) \
                 SELECT ?1, COALESCE(MAX(version), 0) + 1, ?2, ?3, ?4 FROM query_adapters \
                 WHERE encoder = ?1 RETURNING version",
                params![key, stored, measured, trained_at],
                |row| row.get(0),
            )?;
            transaction.execute(
                "INSERT INTO engine_state (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![active_key(encoder), version.to_string()],
            )?;
            transaction.commit()?;
            Ok(version)
        })?;
        Ok(AdapterVersion {
            version,
            encoder: encoder.clone(),
            adapter: adapter.clone(),
            evaluation: *evaluation,
            trained_at,
        })
    }

    async fn adapter_versions(
        &self,
        encoder: &EncoderId,
    ) -> Result<Vec<AdapterVersion>, PortError> {
        let key = encoder.to_string();
        let rows: Vec<StoredRow> = self.with(|c| {
            let mut statement = c.prepare_cached(
                "SELECT version, adapter, evaluation, trained_at FROM query_adapters \
                 WHERE encoder = ?1 ORDER BY version DESC",
            )?;
            statement.query_map(params![key], stored_row)?.collect()
        })?;
        rows.into_iter()
            .map(|row| adapter_version(encoder, row))
            .collect()
    }

    async fn active_adapter(
        &self,
        encoder: &EncoderId,
    ) -> Result<Option<AdapterVersion>, PortError> {
        let key = encoder.to_string();
        let row: Option<StoredRow> = self.with(|c| {
            c.query_row(
                "SELECT a.version, a.adapter, a.evaluation, a.trained_at FROM query_adapters a \
                 JOIN engine_state s ON s.key = ?2 AND a.version = CAST(s.value AS INTEGER) \
                 WHERE a.encoder = ?1",
                params![key, active_key(encoder)],
                stored_row,
            )
            .optional()
        })?;
        row.map(|row| adapter_version(encoder, row)).transpose()
    }

    async fn activate_adapter(
        &self,
        encoder: &EncoderId,
        version: Option<u32>,
    ) -> Result<bool, PortError> {
        let (key, state) = (encoder.to_string(), active_key(encoder));
        self.with(|c| match version {
            None => c
                .execute("DELETE FROM engine_state WHERE key = ?1", params![state])
                .map(|_| true),
            Some(version) => c
                .execute(
                    "INSERT INTO engine_state (key, value) \
                     SELECT ?1, version FROM query_adapters WHERE encoder = ?2 AND version = ?3 \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![state, key, version],
                )
                .map(|changed| changed == 1),
        })
    }

    async fn store_reranker_adapter(
        &self,
        model: &str,
        blobs: &str,
        evaluation: &Evaluation,
        trained_at: i64,
    ) -> Result<RerankerAdapterVersion, PortError> {
        let measured = serde_json::to_string(evaluation).map_err(internal)?;
        let version: u32 = self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: u32 = transaction.query_row(
                "INSERT INTO reranker_adapters (model, version, blobs, evaluation, trained_at) \
                 SELECT ?1, COALESCE(MAX(version), 0) + 1, ?2, ?3, ?4 FROM reranker_adapters \
                 WHERE model = ?1 RETURNING version",
                params![model, blobs, measured, trained_at],
                |row| row.get(0),
            )?;
            transaction.execute(
                "INSERT INTO engine_state (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![active_reranker_key(model), version.to_string()],
            )?;
            transaction.commit()?;
            Ok(version)
        })?;
        Ok(RerankerAdapterVersion {
            version,
            model: model.to_owned(),
            blobs: blobs.to_owned(),
            evaluation: *evaluation,
            trained_at,
        })
    }

    async fn reranker_adapter_versions(
        &self,
        model: &str,
    ) -> Result<Vec<RerankerAdapterVersion>, PortError> {
        let rows: Vec<StoredRow> = self.with(|c| {
            let mut statement = c.prepare_cached(
                "SELECT version, blobs, evaluation, trained_at FROM reranker_adapters \
                 WHERE model = ?1 ORDER BY version DESC",
            )?;
            statement.query_map(params![model], stored_row)?.collect()
        })?;
        rows.into_iter()
            .map(|row| reranker_adapter_version(model, row))
            .collect()
    }

    async fn active_reranker_adapter(
        &self,
        model: &str,
    ) -> Result<Option<RerankerAdapterVersion>, PortError> {
        let row: Option<StoredRow> = self.with(|c| {
            c.query_row(
                "SELECT a.version, a.blobs, a.evaluation, a.trained_at FROM reranker_adapters a \
                 JOIN engine_state s ON s.key = ?2 AND a.version = CAST(s.value AS INTEGER) \
                 WHERE a.model = ?1",
                params![model, active_reranker_key(model)],
                stored_row,
            )
            .optional()
        })?;
        row.map(|row| reranker_adapter_version(model, row))
            .transpose()
    }

    async fn activate_reranker_adapter(
        &self,
        model: &str,
        version: Option<u32>,
    ) -> Result<bool, PortError> {
        let state = active_reranker_key(model);
        self.with(|c| match version {
            None => c
                .execute("DELETE FROM engine_state WHERE key = ?1", params![state])
                .map(|_| true),
            Some(version) => c
                .execute(
                    "INSERT INTO engine_state (key, value) \
                     SELECT ?1, version FROM reranker_adapters WHERE model = ?2 AND version = ?3 \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![state, model, version],
                )
                .map(|changed| changed == 1),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_a_hundred_concurrent_triggers_one_trains() {
        let directory = tempfile::tempdir().unwrap();
        let catalog = Arc::new(SqliteCatalog::open(&directory.path().join("c.sqlite3")).unwrap());
        let triggers: Vec<_> = (0..100)
            .map(|i| {
                let catalog = Arc::clone(&catalog);
                tokio::spawn(async move {
                    catalog
                        .claim_training(
                            Learner::QueryAdapter,
                            &format!("trigger-{i}"),
                            Duration::from_secs(60),
                        )
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut claimed = 0;
        for trigger in triggers {
            claimed += usize::from(trigger.await.unwrap());
        }
        assert_eq!(claimed, 1);
    }
}
