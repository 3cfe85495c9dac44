//! Learning from clicks in Postgres: [`SqlCatalog`] as core's [`LearningStore`] — clicked
//! searches and swap counts from the search log, adapter versions in `query_adapters` and
//! `reranker_adapters` (the active ones in `pool_state`), and one training lease per learner in
//! `training_leases`, taken by a single statement so that any number of workers race for it and
//! one wins.

use std::time::Duration;

use glimpse_core::EncoderId;
use glimpse_core::learning::{
    AdapterVersion, Evaluation, Learner, QueryAdapter, RerankerAdapterVersion, SwapCounts,
};
use glimpse_core::ports::{Catalog, LearningStore, PortError};
use glimpse_core::search::{QueryId, SearchLogEntry};

use crate::adapter_tables::{AdapterTable, QUERY_ADAPTERS, RERANKER_ADAPTERS, StoredAdapter};
use crate::catalog_sql::{Cells, Param, SqlCatalog, SqlConnection, Statement, corrupt, text};

fn stored(row: &[crate::catalog_sql::Cell]) -> Result<StoredAdapter, PortError> {
    let cells = Cells(row);
    let version = u32::try_from(cells.i32(0)?).map_err(|_| corrupt("adapter version"))?;
    StoredAdapter::parse(version, cells.text(1)?, &cells.text(2)?, cells.i64(3)?)
}

impl AdapterTable {
    /// Stores the next version for `owner` and makes it the active one, in one statement.
    async fn store<C: SqlConnection>(
        &self,
        catalog: &SqlCatalog<C>,
        owner: &str,
        payload: String,
        evaluation: &Evaluation,
        trained_at: i64,
    ) -> Result<u32, PortError> {
        let measured = serde_json::to_string(evaluation)
            .map_err(|e| PortError::Internal(format!("adapter evaluation: {e}")))?;
        let AdapterTable {
            table,
            owner: column,
            payload: contents,
            ..
        } = self;
        let rows = catalog
            .connection()
            .query(&Statement::new(
                format!(
                    "WITH stored AS (\
                         INSERT INTO {table} ({column}, version, {contents}, evaluation, trained_at) \
                         SELECT $1::TEXT, COALESCE(MAX(version), 0) + 1, $2::TEXT, $3::TEXT, \
                             $4::BIGINT FROM {table} WHERE {column} = $1::TEXT \
                         RETURNING version), \
                     activated AS (\
                         INSERT INTO pool_state (key, value) \
                         SELECT $5::TEXT, version::TEXT FROM stored \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value) \
                     SELECT version FROM stored"
                ),
                vec![
                    text(owner),
                    text(payload),
                    text(measured),
                    Param::I64(Some(trained_at)),
                    text(self.active_key(owner)),
                ],
            ))
            .await?;
        let row = rows.first().ok_or_else(|| corrupt("adapter insert"))?;
        u32::try_from(Cells(row).i32(0)?).map_err(|_| corrupt("adapter version"))
    }

    async fn versions<C: SqlConnection>(
        &self,
        catalog: &SqlCatalog<C>,
        owner: &str,
    ) -> Result<Vec<StoredAdapter>, PortError> {
        let AdapterTable {
            table,
            owner: column,
            payload,
            ..
        } = self;
        catalog
            .connection()
            .query(&Statement::new(
                format!(
                    "SELECT version, {payload}, evaluation, trained_at FROM {table} \
                     WHERE {column} = $1::TEXT ORDER BY version DESC"
                ),
                vec![text(owner)],
            ))
            .await?
            .iter()
            .map(|row| stored(row))
            .collect()
    }

    async fn active<C: SqlConnection>(
        &self,
        catalog: &SqlCatalog<C>,
        owner: &str,
    ) -> Result<Option<StoredAdapter>, PortError> {
        let AdapterTable {
            table,
            owner: column,
            payload,
            ..
        } = self;
        catalog
            .connection()
            .query(&Statement::new(
                format!(
                    "SELECT a.version, a.{payload}, a.evaluation, a.trained_at FROM {table} a \
                     JOIN pool_state s ON s.key = $2::TEXT AND s.value = a.version::TEXT \
                     WHERE a.{column} = $1::TEXT"
                ),
                vec![text(owner), text(self.active_key(owner))],
            ))
            .await?
            .first()
            .map(|row| stored(row))
            .transpose()
    }

    async fn activate<C: SqlConnection>(
        &self,
        catalog: &SqlCatalog<C>,
        owner: &str,
        version: Option<u32>,
    ) -> Result<bool, PortError> {
        let AdapterTable {
            table,
            owner: column,
            ..
        } = self;
        let key = text(self.active_key(owner));
        let Some(version) = version else {
            catalog
                .connection()
                .query(&Statement::new(
                    "DELETE FROM pool_state WHERE key = $1::TEXT",
                    vec![key],
                ))
                .await?;
            return Ok(true);
        };
        let version = i32::try_from(version)
            .map_err(|_| PortError::Rejected(format!("there is no adapter version {version}")))?;
        let rows = catalog
            .connection()
            .query(&Statement::new(
                format!(
                    "INSERT INTO pool_state (key, value) \
                     SELECT $1::TEXT, version::TEXT FROM {table} \
                     WHERE {column} = $2::TEXT AND version = $3::INTEGER \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value RETURNING key"
                ),
                vec![key, text(owner), Param::I32(Some(version))],
            ))
            .await?;
        Ok(!rows.is_empty())
    }
}

fn count(rows: &[Vec<crate::catalog_sql::Cell>]) -> Result<u64, PortError> {
    let row = rows.first().ok_or_else(|| corrupt("count"))?;
    u64::try_from(Cells(row).i64(0)?).map_err(|_| corrupt("count"))
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl<C: SqlConnection> LearningStore for SqlCatalog<C> {
    async fn click_count(&self) -> Result<u64, PortError> {
        count(
            &self
                .connection()
                .query(&Statement::new(
                    "SELECT COUNT(*) FROM search_results WHERE clicked",
                    Vec::new(),
                ))
                .await?,
        )
    }

    async fn clicked_searches(
        &self,
        encoder: &EncoderId,
        limit: usize,
    ) -> Result<Vec<SearchLogEntry>, PortError> {
        let rows = self
            .connection()
            .query(&Statement::new(
                "SELECT s.id FROM searches s WHERE s.encoder = $1::TEXT AND EXISTS \
                 (SELECT 1 FROM search_results r WHERE r.query_id = s.id AND r.clicked) \
                 ORDER BY s.created_at DESC, s.id LIMIT $2::BIGINT",
                vec![
                    text(encoder.to_string()),
                    Param::I64(Some(i64::try_from(limit).unwrap_or(i64::MAX))),
                ],
            ))
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let id: QueryId = Cells(&row)
                .text(0)?
                .parse()
                .map_err(|_| corrupt("search id"))?;
            if let Some(entry) = self.search_log(&id).await? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    async fn swap_counts(&self, encoder: &EncoderId) -> Result<Vec<SwapCounts>, PortError> {
        self.connection()
            .query(&Statement::new(
                "SELECT s.swapped_with, COUNT(*), \
                     COALESCE(SUM(CASE WHEN probe.clicked THEN 1 ELSE 0 END), 0)::BIGINT \
                 FROM searches s \
                 JOIN search_results first ON first.query_id = s.id AND first.rank = 1 \
                 JOIN search_results probe ON probe.query_id = s.id \
                     AND probe.rank = COALESCE(s.swapped_with, 1) \
                 WHERE s.encoder = $1::TEXT GROUP BY s.swapped_with",
                vec![text(encoder.to_string())],
            ))
            .await?
            .iter()
            .map(|row| {
                let cells = Cells(row);
                Ok(SwapCounts {
                    swapped_with: cells
                        .opt_i64(0)?
                        .map(|rank| u32::try_from(rank).map_err(|_| corrupt("swapped rank")))
                        .transpose()?,
                    searches: u64::try_from(cells.i64(1)?).map_err(|_| corrupt("count"))?,
                    clicked: u64::try_from(cells.i64(2)?).map_err(|_| corrupt("count"))?,
                })
            })
            .collect()
    }

    async fn claim_training(
        &self,
        learner: Learner,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, PortError> {
        let seconds = i64::try_from(lease.as_secs()).unwrap_or(i64::MAX / 2);
        let rows = self
            .connection()
            .query(&Statement::new(
                "INSERT INTO training_leases AS l (learner, holder, lease_until, started_at, clicks) \
                 VALUES ($1::TEXT, $2::TEXT, EXTRACT(EPOCH FROM now())::BIGINT + $3::BIGINT, \
                     EXTRACT(EPOCH FROM now())::BIGINT, \
                     (SELECT COUNT(*) FROM search_results WHERE clicked)) \
                 ON CONFLICT (learner) DO UPDATE SET holder = excluded.holder, \
                     lease_until = excluded.lease_until, started_at = excluded.started_at, \
                     clicks = excluded.clicks \
                 WHERE l.holder IS NULL OR l.lease_until <= excluded.started_at \
                 RETURNING learner",
                vec![
                    text(learner.name()),
                    text(holder),
                    Param::I64(Some(seconds)),
                ],
            ))
            .await?;
        Ok(!rows.is_empty())
    }

    async fn release_training(&self, learner: Learner, holder: &str) -> Result<(), PortError> {
        self.connection()
            .query(&Statement::new(
                "UPDATE training_leases SET holder = NULL \
                 WHERE learner = $1::TEXT AND holder = $2::TEXT",
                vec![text(learner.name()), text(holder)],
            ))
            .await
            .map(drop)
    }

    async fn clicks_at_last_training(&self, learner: Learner) -> Result<Option<u64>, PortError> {
        let rows = self
            .connection()
            .query(&Statement::new(
                "SELECT clicks FROM training_leases WHERE learner = $1::TEXT",
                vec![text(learner.name())],
            ))
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        count(&rows).map(Some)
    }

    async fn store_adapter(
        &self,
        encoder: &EncoderId,
        adapter: &QueryAdapter,
        evaluation: &Evaluation,
        trained_at: i64,
    ) -> Result<AdapterVersion, PortError> {
        let payload = serde_json::to_string(adapter)
            .map_err(|e| PortError::Internal(format!("query adapter: {e}")))?;
        let version = QUERY_ADAPTERS
            .store(self, &encoder.to_string(), payload, evaluation, trained_at)
            .await?;
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
        QUERY_ADAPTERS
            .versions(self, &encoder.to_string())
            .await?
            .into_iter()
            .map(|row| row.into_query_adapter(encoder))
            .collect()
    }

    async fn active_adapter(
        &self,
        encoder: &EncoderId,
    ) -> Result<Option<AdapterVersion>, PortError> {
        QUERY_ADAPTERS
            .active(self, &encoder.to_string())
            .await?
            .map(|row| row.into_query_adapter(encoder))
            .transpose()
    }

    async fn activate_adapter(
        &self,
        encoder: &EncoderId,
        version: Option<u32>,
    ) -> Result<bool, PortError> {
        QUERY_ADAPTERS
            .activate(self, &encoder.to_string(), version)
            .await
    }

    async fn store_reranker_adapter(
        &self,
        model: &str,
        blobs: &str,
        evaluation: &Evaluation,
        trained_at: i64,
    ) -> Result<RerankerAdapterVersion, PortError> {
        let version = RERANKER_ADAPTERS
            .store(self, model, blobs.to_owned(), evaluation, trained_at)
            .await?;
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
        Ok(RERANKER_ADAPTERS
            .versions(self, model)
            .await?
            .into_iter()
            .map(|row| row.into_reranker_adapter(model))
            .collect())
    }

    async fn active_reranker_adapter(
        &self,
        model: &str,
    ) -> Result<Option<RerankerAdapterVersion>, PortError> {
        Ok(RERANKER_ADAPTERS
            .active(self, model)
            .await?
            .map(|row| row.into_reranker_adapter(model)))
    }

    async fn activate_reranker_adapter(
        &self,
        model: &str,
        version: Option<u32>,
    ) -> Result<bool, PortError> {
        RERANKER_ADAPTERS.activate(self, model, version).await
    }
}
