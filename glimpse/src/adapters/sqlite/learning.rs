//! The embedded [`LearningStore`]: clicked searches and swap counts from the search log, adapter
//! versions in `query_adapters` and `reranker_adapters` (the active ones in `engine_state`), and the
//! training leases (one per learner) in `training_leases`.

use std::time::Duration;

use async_trait::async_trait;
use glimpse_contracts::adapter_tables::{
    AdapterTable, QUERY_ADAPTERS, RERANKER_ADAPTERS, StoredAdapter,
};
use glimpse_core::EncoderId;
use glimpse_core::learning::{
    AdapterVersion, Evaluation, Learner, QueryAdapter, RerankerAdapterVersion, SwapCounts,
};
use glimpse_core::ports::{Catalog, LearningStore, PortError};
use glimpse_core::search::{QueryId, SearchLogEntry};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{SqliteCatalog, internal, now_seconds};

/// Rows of an [`AdapterTable`] as read.
fn parsed(rows: Vec<(u32, String, String, i64)>) -> Result<Vec<StoredAdapter>, PortError> {
    rows.into_iter()
        .map(|(version, payload, evaluation, trained_at)| {
            StoredAdapter::parse(version, payload, &evaluation, trained_at)
        })
        .collect()
}

/// Stores the next version of `adapters` for `owner` and makes it the active one, in one transaction.
fn store(
    adapters: &AdapterTable,
    catalog: &SqliteCatalog,
    owner: &str,
    payload: &str,
    evaluation: &Evaluation,
    trained_at: i64,
) -> Result<u32, PortError> {
    let measured = serde_json::to_string(evaluation).map_err(internal)?;
    let AdapterTable {
        table,
        owner: column,
        payload: contents,
        ..
    } = adapters;
    catalog.with(|c| {
        let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: u32 = transaction.query_row(
            &format!(
                "INSERT INTO {table} ({column}, version, {contents}, evaluation, trained_at) \
                 SELECT ?1, COALESCE(MAX(version), 0) + 1, ?2, ?3, ?4 FROM {table} \
                 WHERE {column} = ?1 RETURNING version"
            ),
            params![owner, payload, measured, trained_at],
            |row| row.get(0),
        )?;
        transaction.execute(
            "INSERT INTO engine_state (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![adapters.active_key(owner), version.to_string()],
        )?;
        transaction.commit()?;
        Ok(version)
    })
}

fn versions(
    adapters: &AdapterTable,
    catalog: &SqliteCatalog,
    owner: &str,
) -> Result<Vec<StoredAdapter>, PortError> {
    let AdapterTable {
        table,
        owner: column,
        payload,
        ..
    } = adapters;
    parsed(catalog.with(|c| {
        let mut statement = c.prepare_cached(&format!(
            "SELECT version, {payload}, evaluation, trained_at FROM {table} \
             WHERE {column} = ?1 ORDER BY version DESC"
        ))?;
        statement.query_map(params![owner], stored_row)?.collect()
    })?)
}

fn active(
    adapters: &AdapterTable,
    catalog: &SqliteCatalog,
    owner: &str,
) -> Result<Option<StoredAdapter>, PortError> {
    let AdapterTable {
        table,
        owner: column,
        payload,
        ..
    } = adapters;
    let row = catalog.with(|c| {
        c.query_row(
            &format!(
                "SELECT a.version, a.{payload}, a.evaluation, a.trained_at FROM {table} a \
                 JOIN engine_state s ON s.key = ?2 AND a.version = CAST(s.value AS INTEGER) \
                 WHERE a.{column} = ?1"
            ),
            params![owner, adapters.active_key(owner)],
            stored_row,
        )
        .optional()
    })?;
    Ok(parsed(row.into_iter().collect())?.pop())
}

fn activate(
    adapters: &AdapterTable,
    catalog: &SqliteCatalog,
    owner: &str,
    version: Option<u32>,
) -> Result<bool, PortError> {
    let AdapterTable {
        table,
        owner: column,
        ..
    } = adapters;
    let state = adapters.active_key(owner);
    catalog.with(|c| match version {
        None => c
            .execute("DELETE FROM engine_state WHERE key = ?1", params![state])
            .map(|_| true),
        Some(version) => c
            .execute(
                &format!(
                    "INSERT INTO engine_state (key, value) \
                     SELECT ?1, version FROM {table} WHERE {column} = ?2 AND version = ?3 \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ),
                params![state, owner, version],
            )
            .map(|changed| changed == 1),
    })
}

fn stored_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(u32, String, String, i64)> {
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
        let payload = serde_json::to_string(adapter).map_err(internal)?;
        let version = store(
            &QUERY_ADAPTERS,
            self,
            &encoder.to_string(),
            &payload,
            evaluation,
            trained_at,
        )?;
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
        versions(&QUERY_ADAPTERS, self, &encoder.to_string())?
            .into_iter()
            .map(|row| row.into_query_adapter(encoder))
            .collect()
    }

    async fn active_adapter(
        &self,
        encoder: &EncoderId,
    ) -> Result<Option<AdapterVersion>, PortError> {
        active(&QUERY_ADAPTERS, self, &encoder.to_string())?
            .map(|row| row.into_query_adapter(encoder))
            .transpose()
    }

    async fn activate_adapter(
        &self,
        encoder: &EncoderId,
        version: Option<u32>,
    ) -> Result<bool, PortError> {
        activate(&QUERY_ADAPTERS, self, &encoder.to_string(), version)
    }

    async fn store_reranker_adapter(
        &self,
        model: &str,
        blobs: &str,
        evaluation: &Evaluation,
        trained_at: i64,
    ) -> Result<RerankerAdapterVersion, PortError> {
        let version = store(
            &RERANKER_ADAPTERS,
            self,
            model,
            blobs,
            evaluation,
            trained_at,
        )?;
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
        Ok(versions(&RERANKER_ADAPTERS, self, model)?
            .into_iter()
            .map(|row| row.into_reranker_adapter(model))
            .collect())
    }

    async fn active_reranker_adapter(
        &self,
        model: &str,
    ) -> Result<Option<RerankerAdapterVersion>, PortError> {
        Ok(active(&RERANKER_ADAPTERS, self, model)?.map(|row| row.into_reranker_adapter(model)))
    }

    async fn activate_reranker_adapter(
        &self,
        model: &str,
        version: Option<u32>,
    ) -> Result<bool, PortError> {
        activate(&RERANKER_ADAPTERS, self, model, version)
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
