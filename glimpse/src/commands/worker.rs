//! `glimpse worker`: a member of the worker pool.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use glimpse_core::flows::RetrievalOrder;
use glimpse_core::ports::{BlobStore, Reranker, RerankerLearner, TextEmbedder};
use glimpse_worker::adapters::{LocalEncoder, QdrantIndex, S3BlobStore, VisionReranker};
use glimpse_worker::encoder::ImageTextEncoder;
use glimpse_worker::worker::WorkerApi;
use glimpse_worker::worker::consumer::{Consumer, ConsumerPacing, ConsumerPorts, ConsumerStats};
use glimpse_worker::worker::learning::{LearningStats, RerankerLearning};
use glimpse_worker::worker::settings::{Backends, RerankerSection, WorkerSettings};

use super::{load_encoder, load_vision_reranker, shutdown_signal};

#[derive(Args)]
pub struct WorkerArgs {
    /// A TOML settings file (see the README); `GLIMPSE__SECTION__KEY` variables override it.
    #[arg(long, env = "GLIMPSE__CONFIG")]
    pub config: Option<PathBuf>,
    /// The model (overrides the settings): a directory or a Hub repository id.
    #[arg(long)]
    pub model: Option<String>,
    /// Address of the internal API (overrides the settings).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

pub async fn worker(args: WorkerArgs) -> Result<()> {
    let mut settings = WorkerSettings::load(args.config.as_deref(), std::env::vars())?;
    if let Some(model) = args.model {
        settings.model = model;
    }
    let listen = args.listen.unwrap_or(settings.worker.listen);
    glimpse_worker::encoder::decode_budget::set_decode_memory_mb(settings.worker.decode_memory_mb);
    let (model, precision) = (settings.model.clone(), settings.precision);
    let clip: Arc<dyn ImageTextEncoder> =
        Arc::new(tokio::task::spawn_blocking(move || load_encoder(&model, precision)).await??);
    let encoder = LocalEncoder::new(Arc::clone(&clip));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let consumer = match settings.backends() {
        Some(backends) => Some(start_consumer(&settings, &backends, &encoder, stopped).await?),
        None => {
            println!(
                "Not all of [database], [s3] and [qdrant] are set: serving the internal API \
                 without a job consumer."
            );
            None
        }
    };
    let (reranker, learning): (Arc<dyn Reranker>, _) = match &settings.reranker {
        Some(section) => {
            let (reranker, blobs) = load_reranker(section, &settings).await?;
            let learning =
                start_learning(section, &settings, &reranker, blobs, stop.subscribe()).await?;
            (reranker, learning)
        }
        None => (Arc::new(RetrievalOrder), None),
    };
    let app = glimpse_worker::worker::router(WorkerApi {
        encoder,
        reranker,
        token: settings.token().to_owned(),
        max_body_bytes: settings.worker.max_request_mb.max(1) * 1024 * 1024,
        consumer: consumer.as_ref().map(|(stats, _)| Arc::clone(stats)),
        learning,
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

/// Loads the vision-language reranker (downloading it on first use) over the photos in `[s3]`;
/// returns it and that store.
async fn load_reranker(
    section: &RerankerSection,
    settings: &WorkerSettings,
) -> Result<(Arc<VisionReranker>, Arc<dyn BlobStore>)> {
    let storage = settings
        .storage()
        .context("[reranker] reads the candidate photos from [s3]")?;
    let blobs: Arc<dyn BlobStore> = Arc::new(S3BlobStore::new(&storage));
    let reranker = load_vision_reranker(
        &section.model,
        section.adapter.as_deref(),
        section.vlm_settings(),
        Arc::clone(&blobs),
    )
    .await?;
    Ok((reranker, blobs))
}

/// With `[database]` and no adapter pinned by hand, starts the reranker's learning loop: it
/// follows the catalog's active adapter and, with `[reranker.learning]`, trains new ones.
async fn start_learning(
    section: &RerankerSection,
    settings: &WorkerSettings,
    reranker: &Arc<VisionReranker>,
    blobs: Arc<dyn BlobStore>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Arc<LearningStats>>> {
    let (Some(database), None) = (&settings.database, &section.adapter) else {
        return Ok(None);
    };
    let catalog = glimpse_worker::adapters::postgres::connect(database.url.expose(), 2)
        .await
        .context("cannot open the catalog database ([database] url)")?;
    let stats = Arc::new(LearningStats::default());
    if section.learning.is_some() {
        println!(
            "Training the reranker's adapters from clicks (one run at a time across the pool)"
        );
    }
    let learning = RerankerLearning {
        catalog: Arc::new(catalog),
        blobs,
        learner: Arc::clone(reranker) as Arc<dyn RerankerLearner>,
        settings: section.learning.clone(),
        holder: format!("worker-{}", std::process::id()),
        stats: Arc::clone(&stats),
    };
    tokio::spawn(learning.run(stop));
    Ok(Some(stats))
}

/// Connects the managed backends and starts the job consumer; returns its counters and task.
pub async fn start_consumer(
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
