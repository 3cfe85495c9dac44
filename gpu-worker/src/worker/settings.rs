//! The settings of `glimpse worker`: typed, with documented defaults, read from a TOML file and
//! overridden by `GLIMPSE__SECTION__KEY` environment variables (`GLIMPSE__DATABASE__URL`,
//! `GLIMPSE__S3__BUCKET`, …), validated before anything starts. Secrets (the internal token, the
//! database URL, the S3 secret key, the Qdrant API key) have no defaults and print as
//! `<redacted>`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use glimpse_core::flows::{LogRetention, RetryPolicy};
use glimpse_core::learning::LearningSettings;
use serde::Deserialize;

use crate::adapters::{QdrantSettings, S3Settings};
use crate::encoder::Precision;
use crate::hub;
use crate::reranker::VlmSettings;
use crate::worker::consumer::Housekeeping;

/// The top-level keys the worker reads; other `GLIMPSE__…` variables (those of `glimpse serve`)
/// are left alone.
const SECTIONS: [&str; 7] = [
    "model",
    "precision",
    "worker",
    "database",
    "s3",
    "qdrant",
    "reranker",
];

/// A value that must never be printed or logged.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Why the settings cannot be used: the message names the setting and how to set it.
#[derive(Debug, thiserror::Error)]
#[error("worker settings: {0}")]
pub struct SettingsError(String);

/// Everything `glimpse worker` is configured with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// The model: a directory (Hugging Face layout) or a Hub repository id, optionally
    /// `@revision` (default `openai/clip-vit-base-patch32`, pinned).
    #[serde(default = "default_model")]
    pub model: String,
    /// How precisely the CPU runs the model: `auto` (bf16 weights where the CPU has AVX2 and FMA
    /// or AVX-512 BF16, else f32; a GPU runs bf16), `f32` (f32 on the CPU or GPU) or `bf16`.
    #[serde(default)]
    pub precision: Precision,
    /// The pool member itself.
    pub worker: PoolSettings,
    /// The shared catalog and job queue; with `s3` and `qdrant`, turns the job consumer on.
    #[serde(default)]
    pub database: Option<DatabaseSettings>,
    /// The object store holding the originals.
    #[serde(default)]
    pub s3: Option<S3Section>,
    /// The vector index.
    #[serde(default)]
    pub qdrant: Option<QdrantSection>,
    /// The vision-language reranker behind `POST /v1/rerank`; without it the pool keeps
    /// retrieval order.
    #[serde(default)]
    pub reranker: Option<RerankerSection>,
}

/// `[reranker]`: Qwen2-VL scoring each candidate photo (read from `[s3]`) against the query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankerSection {
    /// A Qwen2-VL checkpoint: a directory or a Hub repository id, optionally `@revision`
    /// (default `Qwen/Qwen2-VL-2B-Instruct`).
    #[serde(default = "default_reranker_model")]
    pub model: String,
    /// A LoRA adapter of the model in the PEFT layout (a directory), if any.
    #[serde(default)]
    pub adapter: Option<std::path::PathBuf>,
    /// The most candidates scored per query (default 10); the rest keep retrieval order.
    #[serde(default = "default_max_candidates")]
    pub max_candidates: usize,
    /// Pixels per candidate, in 28 × 28 tokens (default 144: a 336-pixel square).
    #[serde(default = "default_image_tokens")]
    pub image_tokens: usize,
    /// `[reranker.learning]`: this worker trains the reranker's LoRA adapters from the clicks
    /// in `[database]` (every `every_clicks` new clicks, one run across the pool), storing them
    /// in `[s3]`. Without it, a worker with `[database]` still follows the active adapter.
    #[serde(default)]
    pub learning: Option<LearningSettings>,
}

fn default_reranker_model() -> String {
    hub::DEFAULT_RERANKER.to_owned()
}

fn default_max_candidates() -> usize {
    VlmSettings::default().max_candidates
}

fn default_image_tokens() -> usize {
    VlmSettings::default().image_tokens
}

impl RerankerSection {
    /// How the reranker runs.
    pub fn vlm_settings(&self) -> VlmSettings {
        VlmSettings {
            max_candidates: self.max_candidates,
            image_tokens: self.image_tokens,
        }
    }
}

fn default_model() -> String {
    hub::DEFAULT_MODEL.to_owned()
}

/// `[worker]`: the internal API and the job consumer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// Address of the internal API (default `127.0.0.1:8090`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The pool's internal bearer token, shared with the edge functions; at least 16 characters.
    pub token: Secret,
    /// Largest request accepted, in MB (default 256).
    #[serde(default = "default_max_request_mb")]
    pub max_request_mb: usize,
    /// Jobs claimed per indexing round (default 32).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// How long a claim holds a job before another worker may take it, in seconds (default 300).
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// Claims of a job before it fails for good, for errors that are not an outage (default 5).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How often an idle worker looks for jobs, in milliseconds (default 1000).
    #[serde(default = "default_idle_poll_ms")]
    pub idle_poll_ms: u64,
    /// Memory image decoding may use at once, in MB (default 1024): decodes wait their turn
    /// within it, and an image that needs more fails with the reason.
    #[serde(default = "default_decode_memory_mb")]
    pub decode_memory_mb: u64,
    /// Days the search log keeps searches nobody clicked in (default 90).
    #[serde(default = "default_search_log_days")]
    pub search_log_days: u64,
    /// The most searches the search log keeps, the newest (default 1,000,000).
    #[serde(default = "default_search_log_searches")]
    pub search_log_searches: u64,
    /// Seconds an upload started straight to storage (`POST /api/uploads` at the edge) may stay
    /// uncompleted before its staged original is removed (default 86,400: a day).
    #[serde(default = "default_staged_upload_expiry_seconds")]
    pub staged_upload_expiry_seconds: u64,
}

fn default_decode_memory_mb() -> u64 {
    1024
}
fn default_search_log_days() -> u64 {
    90
}
fn default_search_log_searches() -> u64 {
    1_000_000
}
fn default_staged_upload_expiry_seconds() -> u64 {
    86_400
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8090))
}
fn default_max_request_mb() -> usize {
    256
}
fn default_batch() -> usize {
    32
}
fn default_lease_seconds() -> u64 {
    300
}
fn default_max_attempts() -> u32 {
    5
}
fn default_idle_poll_ms() -> u64 {
    1000
}

/// `[database]`: Postgres.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:5432/glimpse` or key=value form (a secret: it may hold the
    /// password).
    pub url: Secret,
    /// Pooled connections (default 8).
    #[serde(default = "default_connections")]
    pub connections: usize,
}

fn default_connections() -> usize {
    8
}

/// `[s3]`: the bucket of originals.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    /// A custom endpoint for S3-compatible servers (`http://127.0.0.1:9000`); AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// The region (default `us-east-1`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Path-style addressing (`endpoint/bucket/key`); default: on with a custom endpoint.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// How long presigned URLs stay valid, in seconds (default 300).
    #[serde(default = "default_presign_expiry_seconds")]
    pub presign_expiry_seconds: u64,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}
fn default_presign_expiry_seconds() -> u64 {
    300
}

/// `[qdrant]`: the vector index.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QdrantSection {
    /// The gRPC URL (`http://127.0.0.1:6334`).
    pub url: String,
    /// The API key, if the server wants one.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Collection names start with this (default `glimpse`).
    #[serde(default = "default_collection_prefix")]
    pub collection_prefix: String,
    /// HNSW graph degree of new collections (default 16).
    #[serde(default = "default_m")]
    pub m: u64,
    /// HNSW build candidate list of new collections (default 200).
    #[serde(default = "default_ef_construct")]
    pub ef_construct: u64,
    /// HNSW search candidate list (default 128).
    #[serde(default = "default_search_ef")]
    pub search_ef: u64,
    /// int8 scalar quantisation in RAM with rescoring (default on).
    #[serde(default = "default_quantized")]
    pub quantized: bool,
    /// Request timeout in seconds (default 10).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_collection_prefix() -> String {
    QdrantSettings::default().collection_prefix
}
fn default_m() -> u64 {
    QdrantSettings::default().m
}
fn default_ef_construct() -> u64 {
    QdrantSettings::default().ef_construct
}
fn default_search_ef() -> u64 {
    QdrantSettings::default().search_ef
}
fn default_quantized() -> bool {
    QdrantSettings::default().quantized
}
fn default_timeout_seconds() -> u64 {
    QdrantSettings::default().timeout.as_secs()
}

/// The managed backends the job consumer needs, all configured.
#[derive(Debug)]
pub struct Backends<'a> {
    /// Postgres.
    pub database: &'a DatabaseSettings,
    /// The object store.
    pub s3: S3Settings,
    /// The vector index.
    pub qdrant: QdrantSettings,
}

impl WorkerSettings {
    /// Reads `file` (TOML; optional) and the `GLIMPSE__…` variables among `environment`, and
    /// validates the result.
    pub fn load(
        file: Option<&Path>,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(SettingsError(format!(
                    "the config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let ours: HashMap<String, String> = environment
            .into_iter()
            .filter(|(key, _)| {
                key.strip_prefix("GLIMPSE__")
                    .and_then(|rest| rest.split("__").next())
                    .is_some_and(|section| SECTIONS.contains(&section.to_lowercase().as_str()))
            })
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("GLIMPSE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(ours)),
        );
        let settings: Self = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| match e.to_string().as_str() {
                r#"missing configuration field "worker""#
                | r#"missing configuration field "worker.token""# => SettingsError(
                    "worker.token is not set: set GLIMPSE__WORKER__TOKEN (or `token` under \
                     [worker] in the config file) to a long random string shared by the pool \
                     and the edge functions"
                        .to_owned(),
                ),
                other => SettingsError(format!(
                    "{other} (settings come from the config file and GLIMPSE__SECTION__KEY \
                     variables, e.g. GLIMPSE__S3__BUCKET)"
                )),
            })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        if self.worker.token.expose().trim().len() < 16 {
            return Err(SettingsError(
                "worker.token must be at least 16 characters: set GLIMPSE__WORKER__TOKEN to a \
                 long random string shared by the pool and the edge functions"
                    .to_owned(),
            ));
        }
        if self.worker.batch == 0 || self.worker.lease_seconds == 0 {
            return Err(SettingsError(
                "worker.batch and worker.lease_seconds must be at least 1".to_owned(),
            ));
        }
        let configured = [
            ("database", self.database.is_some()),
            ("s3", self.s3.is_some()),
            ("qdrant", self.qdrant.is_some()),
        ];
        let missing: Vec<&str> = configured
            .iter()
            .filter(|(_, present)| !present)
            .map(|(name, _)| *name)
            .collect();
        if let Some(reranker) = &self.reranker {
            if self.s3.is_none() {
                return Err(SettingsError(
                    "[reranker] reads the candidate photos from storage: configure [s3] too \
                     (e.g. GLIMPSE__S3__BUCKET)"
                        .to_owned(),
                ));
            }
            if reranker.max_candidates == 0 || reranker.image_tokens == 0 {
                return Err(SettingsError(
                    "reranker.max_candidates and reranker.image_tokens must be at least 1"
                        .to_owned(),
                ));
            }
            if reranker.learning.is_some() && self.database.is_none() {
                return Err(SettingsError(
                    "[reranker.learning] trains from the clicks in the catalog: configure \
                     [database] too (e.g. GLIMPSE__DATABASE__URL)"
                        .to_owned(),
                ));
            }
            if reranker.learning.is_some() && reranker.adapter.is_some() {
                return Err(SettingsError(
                    "reranker.adapter pins an adapter by hand, and [reranker.learning] trains \
                     and activates new ones: keep one of the two"
                        .to_owned(),
                ));
            }
        }
        // [s3] alone serves the reranker's photos, and with [database] it learns; the job
        // consumer needs all three.
        let reranker_only = self.reranker.is_some() && missing.contains(&"qdrant");
        if !missing.is_empty() && missing.len() < configured.len() && !reranker_only {
            return Err(SettingsError(format!(
                "the job consumer needs [database], [s3] and [qdrant]; [{}] is missing (e.g. \
                 GLIMPSE__{}__…)",
                missing.join("], ["),
                missing[0].to_uppercase()
            )));
        }
        Ok(())
    }

    /// The internal token.
    pub fn token(&self) -> &str {
        self.worker.token.expose().trim()
    }

    /// How the consumer retries.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.worker.max_attempts.max(1),
            lease: Duration::from_secs(self.worker.lease_seconds),
            ..RetryPolicy::default()
        }
    }

    /// What the consumers keep tidy.
    pub fn housekeeping(&self) -> Housekeeping {
        Housekeeping {
            search_log: LogRetention {
                days: self.worker.search_log_days,
                searches: self.worker.search_log_searches,
            },
            staged_uploads_expire_after: Duration::from_secs(
                self.worker.staged_upload_expiry_seconds,
            ),
        }
    }

    /// The object store holding the originals, where configured.
    pub fn storage(&self) -> Option<S3Settings> {
        self.s3.as_ref().map(|s3| S3Settings {
            endpoint: s3.endpoint.clone(),
            bucket: s3.bucket.clone(),
            region: s3.region.clone(),
            access_key_id: s3.access_key_id.clone(),
            secret_access_key: s3.secret_access_key.expose().to_owned(),
            path_style: s3.path_style.unwrap_or(s3.endpoint.is_some()),
            presign_expiry: Duration::from_secs(s3.presign_expiry_seconds.max(1)),
        })
    }

    /// The backends of the job consumer, or `None` when none is configured (the worker then
    /// serves its internal API only).
    pub fn backends(&self) -> Option<Backends<'_>> {
        let (database, s3, qdrant) = match (&self.database, self.storage(), &self.qdrant) {
            (Some(database), Some(s3), Some(qdrant)) => (database, s3, qdrant),
            _ => return None,
        };
        Some(Backends {
            database,
            s3,
            qdrant: QdrantSettings {
                url: qdrant.url.clone(),
                api_key: qdrant.api_key.as_ref().map(|k| k.expose().to_owned()),
                collection_prefix: qdrant.collection_prefix.clone(),
                m: qdrant.m,
                ef_construct: qdrant.ef_construct,
                search_ef: qdrant.search_ef,
                quantized: qdrant.quantized,
                timeout: Duration::from_secs(qdrant.timeout_seconds.max(1)),
                ..QdrantSettings::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const TOKEN: (&str, &str) = ("GLIMPSE__WORKER__TOKEN", "0123456789abcdef0123");

    #[test]
    fn the_defaults_parse_and_only_the_api_runs_without_backends() {
        let settings = WorkerSettings::load(None, env(&[TOKEN])).expect("defaults");
        assert_eq!(settings.model, hub::DEFAULT_MODEL);
        assert_eq!(settings.worker.listen, default_listen());
        assert_eq!(settings.worker.batch, 32);
        assert_eq!(settings.retry_policy().lease, Duration::from_secs(300));
        assert!(settings.backends().is_none());
    }

    #[test]
    fn the_file_is_overridden_by_the_environment_and_secrets_stay_hidden() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let file = directory.path().join("worker.toml");
        std::fs::write(
            &file,
            r#"
            model = "/models/clip"
            [worker]
            token = "from-the-file-0123456789"
            batch = 8
            [database]
            url = "postgres://glimpse:db-pa55word@db/glimpse"
            [s3]
            endpoint = "http://127.0.0.1:9000"
            bucket = "photos"
            access_key_id = "AKIA"
            secret_access_key = "s3-s3cr3t"
            [qdrant]
            url = "http://127.0.0.1:6334"
            api_key = "qdrant-k3y"
            "#,
        )
        .expect("write");
        let settings = WorkerSettings::load(
            Some(&file),
            env(&[
                TOKEN,
                ("GLIMPSE__WORKER__BATCH", "4"),
                ("GLIMPSE__S3__BUCKET", "12345"),
                ("GLIMPSE__DATA_DIR", "/belongs/to/serve"),
            ]),
        )
        .expect("settings");
        assert_eq!(settings.model, "/models/clip");
        assert_eq!(settings.token(), TOKEN.1);
        assert_eq!(settings.worker.batch, 4);
        let backends = settings.backends().expect("all three configured");
        assert_eq!(
            backends.s3.bucket, "12345",
            "a numeric-looking name stays text"
        );
        assert!(backends.s3.path_style);
        assert_eq!(backends.qdrant.api_key.as_deref(), Some("qdrant-k3y"));
        let printed = format!("{settings:?} {backends:?}");
        for secret in ["db-pa55word", "s3-s3cr3t", "qdrant-k3y", TOKEN.1] {
            assert!(!printed.contains(secret), "{secret} printed");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let short = WorkerSettings::load(None, env(&[("GLIMPSE__WORKER__TOKEN", "short")]));
        assert!(short.unwrap_err().to_string().contains("16 characters"));
        let missing = WorkerSettings::load(None, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("token"), "{missing}");
        let typo =
            WorkerSettings::load(None, env(&[TOKEN, ("GLIMPSE__WORKER__BATHC", "4")])).unwrap_err();
        assert!(typo.to_string().contains("bathc"), "{typo}");
        let partial = WorkerSettings::load(
            None,
            env(&[
                TOKEN,
                ("GLIMPSE__QDRANT__URL", "http://127.0.0.1:6334"),
                (
                    "GLIMPSE__DATABASE__URL",
                    "postgres://db-pa55word@db/glimpse",
                ),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(partial.contains("[s3] is missing"), "{partial}");
        assert!(!partial.contains("db-pa55word"));
        let no_file = WorkerSettings::load(Some(Path::new("/nonexistent/worker.toml")), env(&[]));
        assert!(no_file.unwrap_err().to_string().contains("does not exist"));
    }

    #[test]
    fn the_reranker_needs_storage_and_nothing_else() {
        let s3 = [
            ("GLIMPSE__S3__BUCKET", "photos"),
            ("GLIMPSE__S3__ACCESS_KEY_ID", "id"),
            ("GLIMPSE__S3__SECRET_ACCESS_KEY", "secret"),
        ];
        let reranker = ("GLIMPSE__RERANKER__MAX_CANDIDATES", "5");
        let with_storage = WorkerSettings::load(None, env(&[TOKEN, reranker, s3[0], s3[1], s3[2]]))
            .expect("the reranker over storage alone");
        let section = with_storage.reranker.as_ref().unwrap();
        assert_eq!(section.model, hub::DEFAULT_RERANKER);
        assert_eq!(section.vlm_settings().max_candidates, 5);
        assert_eq!(section.vlm_settings().image_tokens, 144);
        assert!(with_storage.backends().is_none());
        let without = WorkerSettings::load(None, env(&[TOKEN, reranker]))
            .unwrap_err()
            .to_string();
        assert!(without.contains("[s3]"), "{without}");
        let storage_only = WorkerSettings::load(None, env(&[TOKEN, s3[0], s3[1], s3[2]]))
            .unwrap_err()
            .to_string();
        assert!(
            storage_only.contains("[database], [qdrant] is missing"),
            "{storage_only}"
        );
    }

    #[test]
    fn a_learning_reranker_needs_the_catalog_and_no_pinned_adapter() {
        let backends = [
            ("GLIMPSE__S3__BUCKET", "photos"),
            ("GLIMPSE__S3__ACCESS_KEY_ID", "id"),
            ("GLIMPSE__S3__SECRET_ACCESS_KEY", "secret"),
            ("GLIMPSE__DATABASE__URL", "postgres://localhost/glimpse"),
            ("GLIMPSE__QDRANT__URL", "http://localhost:6334"),
        ];
        let learning = ("GLIMPSE__RERANKER__LEARNING__EVERY_CLICKS", "25");
        let steps = ("GLIMPSE__RERANKER__LEARNING__RERANKER__STEPS", "40");
        let mut vars = vec![TOKEN, learning, steps];
        vars.extend(backends);
        let settings = WorkerSettings::load(None, env(&vars)).expect("a learning reranker");
        let section = settings.reranker.as_ref().unwrap();
        let learning_settings = section.learning.as_ref().unwrap();
        assert_eq!(learning_settings.every_clicks, 25);
        assert_eq!(learning_settings.reranker.steps, 40);
        assert_eq!(
            learning_settings.held_out_share,
            LearningSettings::default().held_out_share
        );
        let without_catalog = WorkerSettings::load(
            None,
            env(&[TOKEN, learning, backends[0], backends[1], backends[2]]),
        )
        .unwrap_err()
        .to_string();
        assert!(without_catalog.contains("[database]"), "{without_catalog}");
        let mut pinned = vars.clone();
        pinned.push(("GLIMPSE__RERANKER__ADAPTER", "/adapters/mine"));
        let pinned = WorkerSettings::load(None, env(&pinned))
            .unwrap_err()
            .to_string();
        assert!(pinned.contains("keep one of the two"), "{pinned}");
    }
}
