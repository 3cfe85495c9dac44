//! `glimpse serve`: index a photo folder and serve search over HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use glimpse::embedded;
use glimpse::server::{self, ServerConfig, Stats};
use glimpse_core::flows;
use glimpse_core::learning::{LearningSettings, RerankerTraining};
use glimpse_core::ports::BlobStore;
use glimpse_worker::adapters::VisionReranker;
use glimpse_worker::reranker::VlmSettings;

use super::{
    DataDirArgs, MemoryArgs, ModelArgs, load_vision_reranker, open_engine, shutdown_signal,
};

/// How long a stopping server waits for the indexing round in progress to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The shortest token accepted: shorter ones can be guessed.
const MIN_TOKEN_CHARS: usize = 16;

#[derive(Args)]
pub struct ServeArgs {
    /// The photo folder to index (read in place, never modified); remembered in the data
    /// directory, so later runs may leave it out.
    #[arg(long, env = "GLIMPSE__LIBRARY")]
    pub library: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, env = "GLIMPSE__LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The bearer token for writes (default: generated on first start and kept in the data
    /// directory's `token` file).
    #[arg(long, env = "GLIMPSE__TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Require the token for reads (search, photos, status) too.
    #[arg(long, env = "GLIMPSE__PROTECT_READS")]
    pub protect_reads: bool,
    /// Host names this server is reached under besides localhost and its IP addresses (a LAN
    /// name, a reverse proxy's name), comma-separated; requests naming any other host are
    /// refused, so no web page can reach it through a DNS name of its own.
    #[arg(long, env = "GLIMPSE__ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Searches at work at once; more wait their turn for a few seconds, then get a 503.
    #[arg(long, env = "GLIMPSE__MAX_CONCURRENT_SEARCHES", default_value_t = 8)]
    pub max_concurrent_searches: usize,
    /// Thumbnails decoded at once (each holds a whole photo in memory); more wait their turn
    /// for a few seconds, then get a 503.
    #[arg(long, env = "GLIMPSE__MAX_CONCURRENT_THUMBNAILS", default_value_t = 2)]
    pub max_concurrent_thumbnails: usize,
    /// Days the search log keeps searches nobody clicked in (clicked ones teach the ranking,
    /// and stay until the row limit).
    #[arg(long, env = "GLIMPSE__SEARCH_LOG_DAYS", default_value_t = 90)]
    pub search_log_days: u64,
    /// The most searches the search log keeps (the newest).
    #[arg(
        long,
        env = "GLIMPSE__SEARCH_LOG_SEARCHES",
        default_value_t = 1_000_000
    )]
    pub search_log_searches: u64,
    /// Largest upload accepted, in MB.
    #[arg(long, env = "GLIMPSE__MAX_UPLOAD_MB", default_value_t = 100)]
    pub max_upload_mb: usize,
    /// Minutes between full rescans of the library (the file watcher catches changes sooner).
    #[arg(long, env = "GLIMPSE__RESCAN_MINUTES", default_value_t = 10)]
    pub rescan_minutes: u64,
    #[command(flatten)]
    pub memory: MemoryArgs,
    #[command(flatten)]
    pub learning: LearningArgs,
    #[command(flatten)]
    pub reranking: RerankingArgs,
}

/// What reorders the first results of a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RerankerChoice {
    /// Retrieval order (with the learned query adapter): fast, on any machine.
    None,
    /// Qwen2-VL looks at each of the first results: tens of milliseconds per search on a
    /// datacentre GPU, minutes with the 2B model on two CPU cores.
    Vlm,
}

/// The second stage of a search.
#[derive(Args)]
pub struct RerankingArgs {
    /// The reranker of the first results.
    #[arg(long, env = "GLIMPSE__RERANKER", value_enum, default_value_t = RerankerChoice::None)]
    pub reranker: RerankerChoice,
    /// The vision-language reranker's model: a directory or a Hub repository id (downloaded on
    /// first use).
    #[arg(long, env = "GLIMPSE__RERANKER_MODEL", default_value = glimpse_worker::hub::DEFAULT_RERANKER)]
    pub reranker_model: String,
    /// A LoRA adapter for the vision-language reranker (a PEFT directory, from `glimpse train` or
    /// PEFT).
    #[arg(long, env = "GLIMPSE__RERANKER_ADAPTER")]
    pub reranker_adapter: Option<PathBuf>,
    /// The most results the vision-language reranker looks at per search.
    #[arg(long, env = "GLIMPSE__RERANK_CANDIDATES", default_value_t = VlmSettings::default().max_candidates)]
    pub rerank_candidates: usize,
    /// Pixels per photo for the vision-language reranker, in 28 × 28 tokens.
    #[arg(long, env = "GLIMPSE__RERANK_IMAGE_TOKENS", default_value_t = VlmSettings::default().image_tokens)]
    pub rerank_image_tokens: usize,
}

impl RerankingArgs {
    /// The reranker over `blobs`, loaded (and downloaded on first use); `None` for retrieval
    /// order.
    async fn load(&self, blobs: Arc<dyn BlobStore>) -> Result<Option<Arc<VisionReranker>>> {
        if self.reranker == RerankerChoice::None {
            return Ok(None);
        }
        let settings = VlmSettings {
            max_candidates: self.rerank_candidates,
            image_tokens: self.rerank_image_tokens,
        };
        load_vision_reranker(
            &self.reranker_model,
            self.reranker_adapter.as_deref(),
            settings,
            blobs,
        )
        .await
        .map(Some)
    }
}

/// Learning from clicks.
#[derive(Args)]
pub struct LearningArgs {
    /// Do not learn from clicks: no training runs and no exploration (an adapter trained before
    /// still ranks, until deactivated).
    #[arg(long, env = "GLIMPSE__NO_LEARNING")]
    pub no_learning: bool,
    /// Train a new query adapter after this many new clicks.
    #[arg(long, env = "GLIMPSE__LEARN_EVERY_CLICKS", default_value_t = 100)]
    pub learn_every_clicks: u64,
    /// The share of searches whose first result is swapped with a lower one (from 0 to 0.5), to
    /// learn how often people look at each rank and correct clicks for it.
    #[arg(long, env = "GLIMPSE__EXPLORE_SHARE", default_value_t = 0.05)]
    pub explore_share: f64,
    /// Optimiser steps of each training run of the vision-language reranker's adapter.
    #[arg(long, env = "GLIMPSE__RERANKER_TRAINING_STEPS", default_value_t = RerankerTraining::default().steps)]
    pub reranker_training_steps: usize,
    /// AdamW's learning rate in those runs.
    #[arg(long, env = "GLIMPSE__RERANKER_LEARNING_RATE", default_value_t = RerankerTraining::default().learning_rate)]
    pub reranker_learning_rate: f64,
    /// Pixels per photo in those runs, in 28 × 28 tokens.
    #[arg(long, env = "GLIMPSE__RERANKER_TRAINING_IMAGE_TOKENS", default_value_t = RerankerTraining::default().image_tokens)]
    pub reranker_training_image_tokens: usize,
}

impl LearningArgs {
    /// The learning settings, `None` when learning is off.
    pub fn settings(&self) -> Result<Option<LearningSettings>> {
        if !(0.0..=0.5).contains(&self.explore_share) {
            bail!(
                "--explore-share must be from 0 to 0.5, not {}",
                self.explore_share
            );
        }
        if self.no_learning {
            return Ok(None);
        }
        if !(self.reranker_learning_rate.is_finite() && self.reranker_learning_rate > 0.0) {
            bail!(
                "--reranker-learning-rate must be a positive number, not {}",
                self.reranker_learning_rate
            );
        }
        let mut settings = LearningSettings {
            every_clicks: self.learn_every_clicks.max(1),
            reranker: RerankerTraining {
                steps: self.reranker_training_steps.max(1),
                learning_rate: self.reranker_learning_rate,
                image_tokens: self.reranker_training_image_tokens.max(1),
                ..RerankerTraining::default()
            },
            ..LearningSettings::default()
        };
        settings.exploration.swap_share = self.explore_share;
        Ok(Some(settings))
    }
}

/// The write token: configured, else the one kept in the data directory, else a new one (saved
/// with owner-only permissions, and printed once when a person is watching the terminal). A
/// token shorter than 16 characters is refused.
pub fn write_token(data_dir: &Path, configured: Option<String>) -> Result<String> {
    use std::io::IsTerminal;
    if let Some(token) = configured {
        let token = token.trim().to_owned();
        if token.chars().count() < MIN_TOKEN_CHARS {
            bail!(
                "--token (GLIMPSE__TOKEN) is shorter than {MIN_TOKEN_CHARS} characters; use a \
                 longer one, or leave it out to have Glimpse make one"
            );
        }
        return Ok(token);
    }
    let path = data_dir.join("token");
    if let Ok(saved) = std::fs::read_to_string(&path) {
        let token = saved.trim().to_owned();
        if token.chars().count() < MIN_TOKEN_CHARS {
            bail!(
                "{} holds an empty or short token (under {MIN_TOKEN_CHARS} characters); delete \
                 the file and Glimpse makes a new one, or pass --token",
                path.display()
            );
        }
        return Ok(token);
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot save the token in {}", path.display()))?;
        file.write_all(token.as_bytes())?;
    }
    if std::io::stdout().is_terminal() {
        println!(
            "Your write token (shown once; it is kept in {}):",
            path.display()
        );
        println!("  {token}");
    } else {
        // This output may end up in a log: the token stays in its file.
        println!(
            "A write token was made and saved in {} (not printed here, as this output may be \
             kept in a log).",
            path.display()
        );
    }
    println!("Send it as `Authorization: Bearer <token>` to upload or delete photos.");
    Ok(token)
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let learning = args.learning.settings()?;
    let mut engine = open_engine(
        &args.data,
        args.library,
        args.model,
        args.memory.memory_budget,
    )
    .await?
    .with_learning(learning);
    if let Some(reranker) = args.reranking.load(engine.blobs.clone()).await? {
        engine = engine.with_reranker(reranker.clone());
        // An adapter given by hand is the one used; otherwise the reranker learns from clicks
        // and follows the catalog's active adapter.
        if args.reranking.reranker_adapter.is_none() {
            engine = engine.with_reranker_learning(reranker);
            engine.refresh_reranker_adapter().await?;
        }
    }
    let engine = Arc::new(engine);
    args.memory.apply(&engine);
    let token = write_token(engine.data_dir(), args.token)?;
    // Listening first: the page and the API answer while the library is scanned and indexed.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    println!(
        "Glimpse is serving http://{address} (library: {}, data: {})",
        engine
            .library()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
        engine.data_dir().display()
    );
    if let Some(precision) = engine.precision() {
        println!(
            "The model runs with {precision} (--precision f32: equal to transformers, \
             slower)."
        );
    }
    println!("Search: curl 'http://{address}/api/search?q=beach+at+dusk'");
    let background = embedded::background::start(
        Arc::clone(&engine),
        Duration::from_secs(args.rescan_minutes.max(1) * 60),
        flows::LogRetention {
            days: args.search_log_days,
            searches: args.search_log_searches,
        },
    );
    let config = ServerConfig {
        token,
        protect_reads: args.protect_reads,
        max_upload_bytes: args.max_upload_mb.max(1) * 1024 * 1024,
        allowed_hosts: args
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect(),
        max_concurrent_searches: args.max_concurrent_searches,
        max_concurrent_thumbnails: args.max_concurrent_thumbnails,
    };
    let app = server::router(
        Arc::clone(&engine),
        Arc::clone(&background.wake_indexer),
        config,
        Stats::default(),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    background.stop(SHUTDOWN_GRACE).await;
    engine.index.flush()?;
    Ok(())
}
