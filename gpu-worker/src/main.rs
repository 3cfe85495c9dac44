//! The `glimpse` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use glimpse_core::flows;
use glimpse_core::flows::RetrievalOrder;
use glimpse_core::ports::{Catalog, TextEmbedder};
use glimpse_core::search::SearchRequest;
use glimpse_worker::adapters::postgres::PostgresCatalog;
use glimpse_worker::adapters::{
    LocalEncoder, QdrantIndex, QdrantSettings, S3BlobStore, SqliteCatalog,
};
use glimpse_worker::embedded::{self, Engine, OpenOptions};
use glimpse_worker::encoder::{ClipEncoder, ImageTextEncoder, JpegDecode};
use glimpse_worker::server::{self, ServerConfig, Stats};
use glimpse_worker::worker::WorkerApi;
use glimpse_worker::worker::consumer::{Consumer, ConsumerPacing, ConsumerPorts, ConsumerStats};
use glimpse_worker::worker::settings::{Backends, WorkerSettings};
use glimpse_worker::{bench, hub};
use serde_json::json;

/// Tensors of several megabytes are allocated and freed for every batch; mimalloc keeps that
/// memory mapped instead of returning it to the kernel and faulting it in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "glimpse", version, about = "Self-hosted AI photo search")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Index a photo folder and serve search over HTTP (the main command).
    Serve(ServeArgs),
    /// Index a photo folder once, with a progress bar, then print a summary.
    Index(IndexArgs),
    /// Search a data directory from the command line.
    Search(SearchArgs),
    /// Show what a data directory holds and how far indexing got.
    Status(DataDirArgs),
    /// Compare the catalog with the vector index (of a data directory, or of the worker pool's
    /// Postgres and Qdrant with --config) and, with --repair, bring them in line.
    Check(CheckArgs),
    /// Put failed photos back in the indexing queue (after fixing what made them fail).
    Retry(RetryArgs),
    /// List the worker pool's encoders, or choose the one it searches and indexes with.
    Encoders(EncodersArgs),
    /// Run a member of the worker pool: the internal API for the edge functions and, with the
    /// managed backends configured, the feature-job consumer.
    Worker(WorkerArgs),
    /// Print the embedding of texts or images as JSON, one line per input.
    Embed(EmbedArgs),
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args)]
struct WorkerArgs {
    /// A TOML settings file (see the README); `GLIMPSE__SECTION__KEY` variables override it.
    #[arg(long, env = "GLIMPSE__CONFIG")]
    config: Option<PathBuf>,
    /// The model (overrides the settings): a directory or a Hub repository id.
    #[arg(long)]
    model: Option<String>,
    /// Address of the internal API (overrides the settings).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Args)]
struct EmbedArgs {
    /// A model directory (Hugging Face layout) or a Hub repository id, optionally `@revision`.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// A text to embed (repeatable).
    #[arg(long)]
    text: Vec<String>,
    /// An image file to embed (repeatable).
    #[arg(long)]
    image: Vec<PathBuf>,
}

#[derive(Args, Clone)]
struct DataDirArgs {
    /// Where Glimpse keeps its catalog, index, uploads and token.
    #[arg(long, env = "GLIMPSE__DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
}

#[derive(Args)]
struct ModelArgs {
    /// A model directory (Hugging Face layout) or Hub repository id, optionally `@revision`;
    /// default: the one this data directory used last, else openai/clip-vit-base-patch32.
    #[arg(long, env = "GLIMPSE__MODEL")]
    model: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// The photo folder to index (read in place, never modified); remembered in the data
    /// directory, so later runs may leave it out.
    #[arg(long, env = "GLIMPSE__LIBRARY")]
    library: Option<PathBuf>,
    #[command(flatten)]
    data: DataDirArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on.
    #[arg(long, env = "GLIMPSE__LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The bearer token for writes (default: generated on first start and kept in the data
    /// directory's `token` file).
    #[arg(long, env = "GLIMPSE__TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Require the token for reads (search, photos, status) too.
    #[arg(long, env = "GLIMPSE__PROTECT_READS")]
    protect_reads: bool,
    /// Host names this server is reached under besides localhost and its IP addresses (a LAN
    /// name, a reverse proxy's name), comma-separated; requests naming any other host are
    /// refused, so no web page can reach it through a DNS name of its own.
    #[arg(long, env = "GLIMPSE__ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Searches at work at once; more wait their turn for a few seconds, then get a 503.
    #[arg(long, env = "GLIMPSE__MAX_CONCURRENT_SEARCHES", default_value_t = 8)]
    max_concurrent_searches: usize,
    /// Thumbnails decoded at once (each holds a whole photo in memory); more wait their turn
    /// for a few seconds, then get a 503.
    #[arg(long, env = "GLIMPSE__MAX_CONCURRENT_THUMBNAILS", default_value_t = 2)]
    max_concurrent_thumbnails: usize,
    /// Days the search log keeps searches nobody clicked in (clicked ones teach the ranking,
    /// and stay until the row limit).
    #[arg(long, env = "GLIMPSE__SEARCH_LOG_DAYS", default_value_t = 90)]
    search_log_days: u64,
    /// The most searches the search log keeps (the newest).
    #[arg(
        long,
        env = "GLIMPSE__SEARCH_LOG_SEARCHES",
        default_value_t = 1_000_000
    )]
    search_log_searches: u64,
    /// Largest upload accepted, in MB.
    #[arg(long, env = "GLIMPSE__MAX_UPLOAD_MB", default_value_t = 100)]
    max_upload_mb: usize,
    /// Minutes between full rescans of the library (the file watcher catches changes sooner).
    #[arg(long, env = "GLIMPSE__RESCAN_MINUTES", default_value_t = 10)]
    rescan_minutes: u64,
    #[command(flatten)]
    decoding: DecodingArgs,
}

#[derive(Args)]
struct IndexArgs {
    /// The photo folder to index.
    library: PathBuf,
    #[command(flatten)]
    data: DataDirArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decoding: DecodingArgs,
    /// Also remove the photos of a library (or folder) that reads empty. Without it, an empty
    /// library is taken for a disk that is not mounted and nothing is removed; use this when you
    /// emptied it on purpose.
    #[arg(long)]
    forget_missing: bool,
}

#[derive(Args)]
struct DecodingArgs {
    /// Memory that image decoding may use at once, in MB: decodes wait their turn within it, and
    /// an image that needs more is refused (failed with the reason) instead of exhausting memory.
    #[arg(long, env = "GLIMPSE__DECODE_MEMORY_MB", default_value_t = 1024)]
    decode_memory_mb: u64,
}

impl DecodingArgs {
    fn apply(&self) {
        glimpse_worker::encoder::decode_budget::set_decode_memory_mb(self.decode_memory_mb);
    }
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    data: DataDirArgs,
    /// Check the worker pool's Postgres catalog against its Qdrant collection instead, with the
    /// worker's settings file (`GLIMPSE__SECTION__KEY` variables apply).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Re-queue indexed photos whose vector is missing and remove vectors without a photo.
    #[arg(long)]
    repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EncodersArgs {
    /// The worker's settings file (its [database] and [qdrant] settings are used);
    /// `GLIMPSE__SECTION__KEY` variables apply.
    #[arg(long, env = "GLIMPSE__CONFIG")]
    config: PathBuf,
    /// Make this encoder (an id the list shows) the pool's active one: the edge searches its
    /// collection from then on, only its workers claim feature jobs, and the photos its
    /// collection lacks are queued for them.
    #[arg(long)]
    activate: Option<String>,
}

#[derive(Args)]
#[group(id = "which", required = true, args = ["failed", "photos"])]
struct RetryArgs {
    #[command(flatten)]
    data: DataDirArgs,
    /// Every failed photo.
    #[arg(long)]
    failed: bool,
    /// These failed photos, by id.
    photos: Vec<String>,
}

#[derive(Args)]
struct SearchArgs {
    /// The query, e.g. "beach at dusk -people album:Trips".
    query: String,
    #[command(flatten)]
    data: DataDirArgs,
    /// How many results.
    #[arg(long, default_value_t = 20)]
    top_k: usize,
    /// Leave out results scoring below this.
    #[arg(long)]
    min_score: Option<f32>,
    /// Print the whole response as JSON.
    #[arg(long)]
    json: bool,
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME").or_else(|| std::env::var_os("HOME")) {
        Some(base) if std::env::var_os("XDG_DATA_HOME").is_some() => {
            PathBuf::from(base).join("glimpse")
        }
        Some(home) => PathBuf::from(home).join(".local/share/glimpse"),
        None => PathBuf::from("glimpse-data"),
    }
}

async fn open_engine(
    data: &DataDirArgs,
    library: Option<PathBuf>,
    model: Option<String>,
) -> Result<Engine> {
    Engine::open(OpenOptions {
        data_dir: data.data_dir.clone(),
        library,
        model,
        rebuild_on_encoder_change: true,
    })
    .await
    .map_err(anyhow::Error::from)
}

/// The shortest token accepted: shorter ones can be guessed.
const MIN_TOKEN_CHARS: usize = 16;

/// The write token: configured, else the one kept in the data directory, else a new one (saved
/// with owner-only permissions, and printed once when a person is watching the terminal). A
/// token shorter than 16 characters is refused.
fn write_token(data_dir: &Path, configured: Option<String>) -> Result<String> {
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

async fn serve(args: ServeArgs) -> Result<()> {
    args.decoding.apply();
    let engine = Arc::new(open_engine(&args.data, args.library, args.model.model).await?);
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
    drop(background);
    engine.index.flush()?;
    Ok(())
}

async fn worker(args: WorkerArgs) -> Result<()> {
    let mut settings = WorkerSettings::load(args.config.as_deref(), std::env::vars())?;
    if let Some(model) = args.model {
        settings.model = model;
    }
    let listen = args.listen.unwrap_or(settings.worker.listen);
    glimpse_worker::encoder::decode_budget::set_decode_memory_mb(settings.worker.decode_memory_mb);
    let model = settings.model.clone();
    let clip: Arc<dyn ImageTextEncoder> =
        Arc::new(tokio::task::spawn_blocking(move || load_encoder(&model)).await??);
    let encoder = LocalEncoder::new(Arc::clone(&clip));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let consumer = match settings.backends() {
        Some(backends) => Some(start_consumer(&settings, &backends, &encoder, stopped).await?),
        None => {
            println!(
                "No [database], [s3] and [qdrant] settings: serving the internal API only (no \
                 job consumer)."
            );
            None
        }
    };
    let app = glimpse_worker::worker::router(WorkerApi {
        encoder,
        reranker: Arc::new(RetrievalOrder),
        token: settings.token().to_owned(),
        max_body_bytes: settings.worker.max_request_mb.max(1) * 1024 * 1024,
        consumer: consumer.as_ref().map(|(stats, _)| Arc::clone(stats)),
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "Glimpse worker is serving http://{} (model: {})",
        listener.local_addr()?,
        clip.id()
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    let _ = stop.send(true);
    if let Some((_, running)) = consumer {
        running.await?;
    }
    Ok(())
}

/// Connects the managed backends and starts the job consumer; returns its counters and task.
async fn start_consumer(
    settings: &WorkerSettings,
    backends: &Backends<'_>,
    encoder: &LocalEncoder,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(Arc<ConsumerStats>, tokio::task::JoinHandle<()>)> {
    let id = TextEmbedder::encoder(encoder).clone();
    let dimension = encoder.dimension();
    let catalog = glimpse_worker::adapters::postgres::connect(
        backends.database.url.expose(),
        backends.database.connections,
    )
    .await
    .context("cannot open the catalog database ([database] url)")?;
    let blobs = S3BlobStore::new(&backends.s3);
    blobs
        .ensure_bucket()
        .await
        .with_context(|| format!("cannot use the bucket `{}` ([s3])", backends.s3.bucket))?;
    let index = QdrantIndex::open(&backends.qdrant, &id, dimension)
        .await
        .context("cannot open the Qdrant collection ([qdrant])")?;
    println!(
        "Consuming feature jobs: catalog {}, bucket {}, Qdrant collection {}",
        catalog.connection().describe(),
        backends.s3.bucket,
        index.collection()
    );
    let consumer = Consumer::new(
        ConsumerPorts {
            catalog: Arc::new(catalog),
            blobs: Arc::new(blobs),
            embedder: Arc::new(encoder.clone()),
            index: Arc::new(index),
        },
        ConsumerPacing {
            batch: settings.worker.batch,
            policy: settings.retry_policy(),
            idle_poll: Duration::from_millis(settings.worker.idle_poll_ms.max(10)),
            housekeeping: Some(settings.housekeeping()),
        },
    );
    let stats = consumer.stats();
    let running = tokio::spawn(async move { consumer.run(stop).await });
    Ok((stats, running))
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}

async fn index(args: IndexArgs) -> Result<()> {
    args.decoding.apply();
    let engine = open_engine(&args.data, Some(args.library), args.model.model).await?;
    let check = engine.check(true).await?;
    if !check.consistent() {
        println!(
            "Catalog and index disagreed: {} indexed photos had no vector (queued again), {} \
             vectors had no photo (removed).",
            check.missing_vectors, check.orphan_vectors
        );
    }
    let scan = engine
        .scan_library(args.forget_missing)
        .await?
        .unwrap_or_default();
    if let Some(problem) = &scan.problem {
        bail!("{problem}");
    }
    println!(
        "Scanned {} image files: {} new, {} changed, {} moved, {} removed, {} duplicates, {} not \
         images (skipped), {} refused",
        scan.images,
        scan.added,
        scan.changed,
        scan.moved,
        scan.removed,
        scan.duplicates,
        scan.skipped,
        scan.rejected
    );
    for rejection in &scan.rejections {
        println!("  refused {rejection}");
    }
    if scan.kept_unverified > 0 {
        println!(
            "Kept {} photos whose folder could not be read or reads empty ({}); pass \
             --forget-missing if you emptied it on purpose.",
            scan.kept_unverified,
            scan.unverified_folders.join(", ")
        );
    }
    let pending = engine.counts().await?.pending;
    let bar = indicatif::ProgressBar::new(pending);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} indexing [{bar:40}] {pos}/{len} photos ({per_sec}, eta {eta})",
        )?
        .progress_chars("=> "),
    );
    let mut total = flows::IndexRound::default();
    loop {
        let round = engine.index_round().await?;
        bar.inc((round.indexed + round.failed) as u64);
        total.indexed += round.indexed;
        total.failed += round.failed;
        total.retried += round.retried;
        if round.claimed == 0 {
            if engine.counts().await?.pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    bar.finish_and_clear();
    engine.index.optimize()?;
    let counts = engine.counts().await?;
    println!(
        "Indexed {} photos this run ({} failed); the library now has {} photos, {} indexed, {} \
         failed.",
        total.indexed, total.failed, counts.photos, counts.indexed, counts.failed
    );
    for photo in engine.catalog.failed_photos(10)? {
        println!(
            "  failed {}: {}",
            photo.origin.blob_key(),
            photo.last_error.unwrap_or_default()
        );
    }
    Ok(())
}

async fn search(args: SearchArgs) -> Result<()> {
    let engine = open_engine(&args.data, None, None).await?;
    let request = SearchRequest {
        query: args.query,
        top_k: args.top_k,
        min_score: args.min_score,
        offset: 0,
    };
    let response = flows::search(engine.ports(), &request).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(());
    }
    if response.results.is_empty() {
        println!("No results.");
    }
    let library = engine.library().map(Path::to_path_buf);
    for result in &response.results {
        let location = match (&result.photo.origin, &library) {
            (glimpse_core::photo::Origin::Library(path), Some(root)) => {
                root.join(path).display().to_string()
            }
            (origin, _) => origin.blob_key(),
        };
        println!(
            "{:>3}  {:>6.2}  {}  {}",
            result.rank, result.score, result.photo.id, location
        );
    }
    println!(
        "{} results in {:.1} ms (search id {})",
        response.results.len(),
        response.timings.total_ms,
        response.query_id
    );
    Ok(())
}

async fn status(args: DataDirArgs) -> Result<()> {
    let path = args.data_dir.join("catalog.sqlite3");
    if !path.exists() {
        bail!(
            "{} holds no Glimpse data yet: run `glimpse serve --library PATH` or `glimpse index \
             PATH` first",
            args.data_dir.display()
        );
    }
    let settings = Engine::settings(&args.data_dir)?;
    let catalog = SqliteCatalog::open(&path)?;
    let counts = catalog.counts().await?;
    println!("data directory: {}", args.data_dir.display());
    println!(
        "library:        {}",
        settings
            .library
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string())
    );
    println!(
        "model:          {}",
        settings.model.as_deref().unwrap_or(hub::DEFAULT_MODEL)
    );
    println!(
        "photos:         {} ({} indexed, {} pending, {} failed)",
        counts.photos, counts.indexed, counts.pending, counts.failed
    );
    for photo in catalog.failed_photos(5)? {
        println!(
            "  failed {}: {}",
            photo.origin.blob_key(),
            photo.last_error.unwrap_or_default()
        );
    }
    Ok(())
}

async fn check(args: CheckArgs) -> Result<()> {
    let report = match &args.config {
        Some(config) => check_pool(config, args.repair).await?,
        None => {
            let engine = open_engine(&args.data, None, None).await?;
            engine.check(args.repair).await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} photos ({} indexed), {} vectors: {} indexed photos without a vector, {} vectors \
             without a photo{}",
            report.photos,
            report.indexed,
            report.vectors,
            report.missing_vectors,
            report.orphan_vectors,
            match (report.consistent(), report.repaired) {
                (true, _) => "; consistent.",
                (false, true) => "; repaired (photos queued again, stray vectors removed).",
                (false, false) => "; run again with --repair to fix.",
            }
        );
    }
    if !report.consistent() && !args.repair {
        std::process::exit(1);
    }
    Ok(())
}

/// The worker pool's catalog and Qdrant settings, from a worker's settings file.
async fn connect_pool(config: &Path) -> Result<(PostgresCatalog, QdrantSettings)> {
    let settings = WorkerSettings::load(Some(config), std::env::vars())?;
    let Some(backends) = settings.backends() else {
        bail!(
            "{} has no [database], [s3] and [qdrant] settings",
            config.display()
        );
    };
    let catalog = glimpse_worker::adapters::postgres::connect(
        backends.database.url.expose(),
        backends.database.connections,
    )
    .await
    .context("cannot open the catalog database ([database] url)")?;
    Ok((catalog, backends.qdrant))
}

/// Reconciles the worker pool's catalog with the Qdrant collection of its active encoder.
async fn check_pool(config: &Path, repair: bool) -> Result<flows::Reconciliation> {
    let (catalog, qdrant) = connect_pool(config).await?;
    let Some((encoder, dimension)) = catalog.current_encoder().await? else {
        bail!("no encoder has indexed anything in this catalog yet: nothing to check");
    };
    let index = QdrantIndex::open(&qdrant, &encoder, dimension)
        .await
        .context("cannot open the Qdrant collection ([qdrant])")?;
    Ok(flows::reconcile(&catalog, &index, repair).await?)
}

async fn encoders(args: EncodersArgs) -> Result<()> {
    let (catalog, qdrant) = connect_pool(&args.config).await?;
    if let Some(wanted) = &args.activate {
        let encoder: glimpse_core::EncoderId = wanted.parse()?;
        let Some((_, dimension, _)) = catalog
            .encoders()
            .await?
            .into_iter()
            .find(|(id, _, _)| *id == encoder)
        else {
            bail!(
                "no worker of {encoder} has registered with this pool: start one with that model \
                 first (`glimpse encoders` lists those that have)"
            );
        };
        catalog.activate_encoder(&encoder).await?;
        let index = QdrantIndex::open(&qdrant, &encoder, dimension)
            .await
            .context("cannot open the encoder's Qdrant collection ([qdrant])")?;
        let check = flows::reconcile(&catalog, &index, true).await?;
        println!(
            "{encoder} is the pool's active encoder; {} photos its collection lacks are queued \
             for its workers.",
            check.missing_vectors
        );
    }
    let registered = catalog.encoders().await?;
    if registered.is_empty() {
        println!("No worker has registered with this pool yet.");
    }
    for (id, dimension, active) in registered {
        println!(
            "{} {id} ({dimension} dimensions)",
            if active { "*" } else { " " }
        );
    }
    Ok(())
}

async fn retry(args: RetryArgs) -> Result<()> {
    let engine = open_engine(&args.data, None, None).await?;
    let requeued = if args.failed {
        engine.retry_failed().await?
    } else {
        for id in &args.photos {
            let id = id.parse().map_err(anyhow::Error::from)?;
            flows::retry_photo(&engine.catalog, id).await?;
        }
        args.photos.len() as u64
    };
    println!(
        "{requeued} failed photos queued again; `glimpse serve` or `glimpse index` indexes them."
    );
    Ok(())
}

#[derive(Args)]
struct AnnArgs {
    /// How many vectors.
    #[arg(long, default_value_t = 1_000_000)]
    vectors: usize,
    /// Their dimension.
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Queries measured (each run twice; the second pass is timed).
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// Vectors per cluster.
    #[arg(long, default_value_t = 100)]
    per_cluster: usize,
    /// Uniform random unit vectors (the worst case) instead of clusters.
    #[arg(long)]
    uniform: bool,
    /// HNSW graph degree.
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// HNSW build candidate list.
    #[arg(long, default_value_t = 100)]
    ef_construct: usize,
    /// HNSW search candidate list.
    #[arg(long, default_value_t = 128)]
    ef: usize,
    /// Keep f32 vectors in RAM instead of int8 in RAM + f32 on disk.
    #[arg(long)]
    no_quantization: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

impl AnnArgs {
    fn options(&self) -> bench::ann::AnnOptions {
        bench::ann::AnnOptions {
            vectors: self.vectors,
            dimension: self.dim,
            per_cluster: self.per_cluster,
            uniform: self.uniform,
            queries: self.queries,
            tuning: glimpse_worker::adapters::IndexTuning {
                m: self.m,
                ef_construct: self.ef_construct,
                search_ef: self.ef,
                quantized: !self.no_quantization,
            },
            seed: 7,
        }
    }
}

fn print_report<T: serde::Serialize>(report: &T, json_output: bool) -> Result<()> {
    if json_output {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    Ok(())
}

async fn bench_ann(args: AnnArgs) -> Result<()> {
    let report = bench::ann::ann(&args.options())
        .await
        .map_err(anyhow::Error::msg)?;
    print_report(&report, args.json)
}

async fn bench_search(args: AnnArgs, searches: usize, model: Option<String>) -> Result<()> {
    let encoder: Arc<dyn ImageTextEncoder> = match model {
        Some(spec) => Arc::new(load_encoder(&spec)?),
        None => Arc::new(bench::random_vit_b32(0)?),
    };
    let report = bench::ann::search(&args.options(), encoder, searches)
        .await
        .map_err(anyhow::Error::msg)?;
    print_report(&report, args.json)
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The vector index: build time, memory, latency and recall@10 on synthetic embeddings.
    Ann(AnnArgs),
    /// The whole search flow, server-side, over an index of synthetic embeddings.
    Search {
        #[command(flatten)]
        index: AnnArgs,
        /// Searches measured.
        #[arg(long, default_value_t = 500)]
        searches: usize,
        /// A model directory or Hub repository; default: ViT-B/32 with seeded random weights.
        #[arg(long)]
        model: Option<String>,
    },
    /// One pool worker's indexing throughput end to end, and the job queue's cost per job, on
    /// the worker's configured Postgres, S3 and Qdrant (in a scratch schema, collection and keys
    /// of its own, removed afterwards).
    Pool {
        /// The worker's settings file (as `glimpse worker --config`); `GLIMPSE__…` variables too.
        #[arg(long, env = "GLIMPSE__CONFIG")]
        config: Option<PathBuf>,
        /// Synthetic 12 MP JPEGs indexed end to end.
        #[arg(long, default_value_t = 64)]
        photos: usize,
        /// Jobs claimed and finished for the queue's own cost.
        #[arg(long, default_value_t = 2000)]
        queue_jobs: usize,
        /// A model directory or Hub repository; default: ViT-B/32 with seeded random weights.
        #[arg(long)]
        model: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// `glimpse serve` under load, from outside over HTTP: search latency while it scans a
    /// generated library for the first time, then a soak of mixed search, browse and thumbnail
    /// traffic (any `glimpse` binary, for a before/after).
    Serve {
        /// The `glimpse` binary to measure (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The model directory it serves with (e.g. tests/reference/checkpoints/clip-odd).
        #[arg(long)]
        model: String,
        /// Photos in the generated library.
        #[arg(long, default_value_t = 20_000)]
        files: usize,
        /// Seconds of soak.
        #[arg(long, default_value_t = 120)]
        soak_seconds: u64,
        /// Concurrent soak clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Text latency and end-to-end image throughput of the encoder.
    Encode {
        /// A model directory or Hub repository; default: ViT-B/32 with seeded random weights.
        #[arg(long)]
        model: Option<String>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Repeat every measurement this many times more (steadier figures, longer run).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Decode JPEGs in PIL's draft mode (DCT-domain downscaling; faster, not bit-equal).
        #[arg(long)]
        jpeg_draft: bool,
    },
}

async fn bench_pool(
    config: Option<PathBuf>,
    options: bench::pool::PoolBenchOptions,
    model: Option<String>,
    json_output: bool,
) -> Result<()> {
    let settings = WorkerSettings::load(config.as_deref(), std::env::vars())?;
    let Some(backends) = settings.backends() else {
        bail!(
            "bench pool runs on the worker's backends: configure [database], [s3] and [qdrant] \
             (a --config file or GLIMPSE__DATABASE__URL, GLIMPSE__S3__…, GLIMPSE__QDRANT__URL)"
        );
    };
    let encoder: Arc<dyn ImageTextEncoder> = match model {
        Some(spec) => Arc::new(load_encoder(&spec)?),
        None => Arc::new(bench::random_vit_b32(0)?),
    };
    let options = bench::pool::PoolBenchOptions {
        batch: settings.worker.batch,
        ..options
    };
    let report = bench::pool::pool(&backends, encoder, options)
        .await
        .map_err(anyhow::Error::msg)?;
    print_report(&report, json_output)
}

fn load_encoder(spec: &str) -> Result<ClipEncoder> {
    let model = hub::resolve(spec)?;
    ClipEncoder::load(&model.directory, model.id)
        .with_context(|| format!("loading the model in {}", model.directory.display()))
}

fn embed(args: &EmbedArgs) -> Result<()> {
    if args.text.is_empty() && args.image.is_empty() {
        bail!("nothing to embed: give --text \"…\" or --image FILE (either may be repeated)");
    }
    let encoder = load_encoder(&args.model)?;
    let (id, dimension) = (encoder.id().to_string(), encoder.dimension());
    let texts: Vec<&str> = args.text.iter().map(String::as_str).collect();
    for (text, vector) in texts.iter().zip(encoder.embed_texts(&texts)?) {
        let line = json!({"encoder": id, "dimension": dimension, "text": text, "vector": vector});
        println!("{line}");
    }
    for path in &args.image {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let vector = encoder
            .embed_images(&[&bytes])
            .with_context(|| format!("cannot embed {}", path.display()))?;
        let line =
            json!({"encoder": id, "dimension": dimension, "image": path, "vector": vector[0]});
        println!("{line}");
    }
    Ok(())
}

fn bench_encode(
    model: Option<&str>,
    json_output: bool,
    rounds: usize,
    jpeg_draft: bool,
) -> Result<()> {
    let encoder = match model {
        Some(spec) => load_encoder(spec)?,
        None => bench::random_vit_b32(0)?,
    };
    let encoder = if jpeg_draft {
        encoder.with_jpeg_decode(JpegDecode::Draft)
    } else {
        encoder
    };
    let report = bench::encode(&encoder, rounds)?;
    if json_output {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("encoder: {}", report.encoder);
    for (tokens, ms) in &report.text_p50_ms {
        println!("text, {tokens:>2} tokens, batch 1: p50 {ms:.2} ms");
    }
    for (batch, rate) in &report.image_per_s {
        println!("image, 12 MP JPEG end to end, batch {batch:>2}: {rate:.2} images/s");
    }
    println!(
        "image, decode + preprocess of one 12 MP JPEG: {:.1} ms",
        report.prepare_ms_per_image
    );
    println!(
        "image, encoder only, batch 32: {:.2} images/s",
        report.encode_only_per_s
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    };
    match cli.command {
        Command::Serve(args) => runtime()?.block_on(serve(args)),
        Command::Index(args) => runtime()?.block_on(index(args)),
        Command::Search(args) => runtime()?.block_on(search(args)),
        Command::Status(args) => runtime()?.block_on(status(args)),
        Command::Check(args) => runtime()?.block_on(check(args)),
        Command::Retry(args) => runtime()?.block_on(retry(args)),
        Command::Encoders(args) => runtime()?.block_on(encoders(args)),
        Command::Worker(args) => runtime()?.block_on(worker(args)),
        Command::Embed(args) => embed(&args),
        Command::Bench(BenchCommand::Ann(args)) => runtime()?.block_on(bench_ann(args)),
        Command::Bench(BenchCommand::Search {
            index,
            searches,
            model,
        }) => runtime()?.block_on(bench_search(index, searches, model)),
        Command::Bench(BenchCommand::Pool {
            config,
            photos,
            queue_jobs,
            model,
            json,
        }) => runtime()?.block_on(bench_pool(
            config,
            bench::pool::PoolBenchOptions {
                photos: photos.max(1),
                queue_jobs: queue_jobs.max(2),
                batch: 32,
            },
            model,
            json,
        )),
        Command::Bench(BenchCommand::Serve {
            binary,
            model,
            files,
            soak_seconds,
            clients,
            json,
        }) => {
            let options = bench::serve::ServeBenchOptions {
                binary: match binary {
                    Some(binary) => binary,
                    None => std::env::current_exe()?,
                },
                model,
                files: files.max(1),
                soak: Duration::from_secs(soak_seconds),
                clients,
            };
            let report = bench::serve::run(&options).map_err(anyhow::Error::msg)?;
            print_report(&report, json)
        }
        Command::Bench(BenchCommand::Encode {
            model,
            json,
            rounds,
            jpeg_draft,
        }) => bench_encode(model.as_deref(), json, rounds, jpeg_draft),
    }
}
