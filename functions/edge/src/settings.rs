//! The components' settings: Spin variables, read when a request needs them. Secrets (tokens,
//! keys, the database password) are declared `required` in spin.toml without defaults; the others
//! have defaults there.

use std::time::Duration;

use glimpse_core::ports::PortError;

/// A variable's value; a missing one is a deployment mistake the message names.
pub async fn variable(name: &str) -> Result<String, PortError> {
    spin_sdk::variables::get(name).await.map_err(|error| {
        PortError::Internal(format!(
            "the Spin variable `{name}` cannot be read ({error:?}): set it for this component in \
             spin.toml, or as SPIN_VARIABLE_{} when running `spin up`",
            name.to_uppercase()
        ))
    })
}

async fn number(name: &str) -> Result<u64, PortError> {
    let text = variable(name).await?;
    text.trim().parse().map_err(|_| {
        PortError::Internal(format!(
            "the Spin variable `{name}` must be a whole number, not `{text}`"
        ))
    })
}

/// The bearer token every write of the public API needs (`api_token`).
pub async fn api_token() -> Result<String, PortError> {
    variable("api_token").await
}

/// Whether reads of the public API need the token too (`protect_reads`, `true` or `false`).
pub async fn protect_reads() -> Result<bool, PortError> {
    Ok(variable("protect_reads").await?.trim() == "true")
}

/// The largest upload passed through a request (`max_upload_mb`); larger ones go straight to
/// storage through `POST /api/uploads`.
pub async fn max_upload_bytes() -> Result<usize, PortError> {
    Ok(number("max_upload_mb").await? as usize * 1024 * 1024)
}

/// The largest original taken straight to storage through `POST /api/uploads`
/// (`max_staged_upload_mb`).
pub async fn max_staged_upload_bytes() -> Result<u64, PortError> {
    Ok(number("max_staged_upload_mb").await? * 1024 * 1024)
}

/// The catalog database's address, from `database_host` (`host:port`, also what the manifest
/// allows the component to reach), `database_name`, `database_user`, `database_password`
/// (empty for none) and `database_sslmode` (`require`: TLS, which Spin verifies; `disable`).
pub async fn database_address() -> Result<String, PortError> {
    let host = variable("database_host").await?;
    let name = variable("database_name").await?;
    let user = variable("database_user").await?;
    let password = variable("database_password").await?;
    let sslmode = variable("database_sslmode").await?;
    if !matches!(sslmode.as_str(), "require" | "disable") {
        return Err(PortError::Rejected(format!(
            "database_sslmode is `{sslmode}`: use require (TLS, verified by Spin) or disable"
        )));
    }
    let credentials = if password.is_empty() {
        percent_encoded(&user)
    } else {
        format!("{}:{}", percent_encoded(&user), percent_encoded(&password))
    };
    Ok(format!(
        "postgres://{credentials}@{host}/{}?sslmode={sslmode}",
        percent_encoded(&name)
    ))
}

/// `text` with everything but unreserved URL characters percent-encoded.
pub(crate) fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Where the worker pool's internal API is, and its token.
pub struct PoolSettings {
    /// Base URL for embedding (`worker_url`).
    pub url: String,
    /// Base URL for reranking (`rerank_url`; the worker pool unless a reranking service is set).
    pub rerank_url: String,
    /// The internal token (`worker_token`).
    pub token: String,
    /// How long the search waits for the reranker before keeping retrieval order
    /// (`rerank_budget_ms`).
    pub rerank_budget: Duration,
}

impl PoolSettings {
    /// Reads the variables.
    pub async fn load() -> Result<Self, PortError> {
        Ok(Self {
            url: variable("worker_url").await?,
            rerank_url: variable("rerank_url").await?,
            token: variable("worker_token").await?,
            rerank_budget: Duration::from_millis(number("rerank_budget_ms").await?),
        })
    }
}

/// Where Qdrant's REST API is.
pub struct QdrantSettings {
    /// Base URL (`qdrant_url`, the REST port, 6333 by default).
    pub url: String,
    /// The API key (`qdrant_api_key`, empty for none).
    pub api_key: String,
    /// Collection names start with this (`qdrant_collection_prefix`), as the workers'.
    pub collection_prefix: String,
}

impl QdrantSettings {
    /// Reads the variables.
    pub async fn load() -> Result<Self, PortError> {
        Ok(Self {
            url: variable("qdrant_url").await?,
            api_key: variable("qdrant_api_key").await?,
            collection_prefix: variable("qdrant_collection_prefix").await?,
        })
    }
}

/// The object storage: an S3-protocol endpoint, addressed path-style.
pub struct S3Settings {
    /// `s3_endpoint`, e.g. `https://s3.eu-west-1.amazonaws.com`.
    pub endpoint: String,
    /// `s3_bucket`.
    pub bucket: String,
    /// `s3_region`.
    pub region: String,
    /// `s3_access_key_id`.
    pub access_key_id: String,
    /// `s3_secret_access_key`.
    pub secret_access_key: String,
}

impl S3Settings {
    /// Reads the variables.
    pub async fn load() -> Result<Self, PortError> {
        Ok(Self {
            endpoint: variable("s3_endpoint").await?,
            bucket: variable("s3_bucket").await?,
            region: variable("s3_region").await?,
            access_key_id: variable("s3_access_key_id").await?,
            secret_access_key: variable("s3_secret_access_key").await?,
        })
    }
}
