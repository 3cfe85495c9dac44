//! How a catalog keeps adapter versions, the same in the embedded SQLite catalog and in the
//! pool's Postgres one: a table per kind of adapter, keyed by what it adapts and its version, and
//! the active version under a key of the catalog's state table.

use glimpse_core::EncoderId;
use glimpse_core::learning::{AdapterVersion, Evaluation, RerankerAdapterVersion};
use glimpse_core::ports::PortError;

/// Where one kind of adapter is kept: its table, the column naming what it adapts (an encoder or
/// a reranker model), the column of its contents, and the state key prefix of the active version.
pub struct AdapterTable {
    /// The table.
    pub table: &'static str,
    /// The column naming what an adapter adapts.
    pub owner: &'static str,
    /// The column of its contents.
    pub payload: &'static str,
    /// The state key of the active version is this prefix and the owner.
    pub active_prefix: &'static str,
}

impl AdapterTable {
    /// The state key of `owner`'s active version.
    pub fn active_key(&self, owner: &str) -> String {
        format!("{}{owner}", self.active_prefix)
    }
}

/// Query adapters: by encoder, the adapter as JSON.
pub const QUERY_ADAPTERS: AdapterTable = AdapterTable {
    table: "query_adapters",
    owner: "encoder",
    payload: "adapter",
    active_prefix: "active_adapter:",
};

/// The reranker's adapters: by model, the blob-store prefix of their files.
pub const RERANKER_ADAPTERS: AdapterTable = AdapterTable {
    table: "reranker_adapters",
    owner: "model",
    payload: "blobs",
    active_prefix: "active_reranker_adapter:",
};

/// A stored version as read from its row.
pub struct StoredAdapter {
    /// Its version.
    pub version: u32,
    /// Its contents.
    pub payload: String,
    /// How it scored when it was trained.
    pub evaluation: Evaluation,
    /// When it was trained, seconds since 1970.
    pub trained_at: i64,
}

impl StoredAdapter {
    /// A row's values, the evaluation as stored (JSON).
    pub fn parse(
        version: u32,
        payload: String,
        evaluation: &str,
        trained_at: i64,
    ) -> Result<Self, PortError> {
        Ok(Self {
            version,
            payload,
            evaluation: serde_json::from_str(evaluation)
                .map_err(|e| PortError::Internal(format!("adapter {version}'s evaluation: {e}")))?,
            trained_at,
        })
    }

    /// The query adapter of `encoder` this row holds.
    pub fn into_query_adapter(self, encoder: &EncoderId) -> Result<AdapterVersion, PortError> {
        Ok(AdapterVersion {
            version: self.version,
            encoder: encoder.clone(),
            adapter: serde_json::from_str(&self.payload)
                .map_err(|e| PortError::Internal(format!("query adapter {}: {e}", self.version)))?,
            evaluation: self.evaluation,
            trained_at: self.trained_at,
        })
    }

    /// The reranker adapter of `model` this row records.
    pub fn into_reranker_adapter(self, model: &str) -> RerankerAdapterVersion {
        RerankerAdapterVersion {
            version: self.version,
            model: model.to_owned(),
            blobs: self.payload,
            evaluation: self.evaluation,
            trained_at: self.trained_at,
        }
    }
}
