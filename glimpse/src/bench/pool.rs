//! `glimpse bench pool`: one worker's indexing throughput end to end (claim → original from S3 →
//! decode and preprocess → encode → upsert into Qdrant → end the job), on synthetic 12 MP JPEGs,
//! and the job queue's own cost per job (claim and finish with nothing in between).
//!
//! It works on the configured backends without touching their data: a Postgres schema, a Qdrant
//! collection prefix and object keys of its own, all removed at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glimpse_core::flows;
use glimpse_core::photo::{ImageFacts, ImageFormat, NewPhotoDetails, Origin, Photo, PhotoId};
use glimpse_core::ports::{BlobStore, Catalog, JobOutcome, PortError, TextEmbedder};
use serde::Serialize;

use glimpse_worker::adapters::postgres::DatabaseUrl;
use glimpse_worker::adapters::{
    LocalEncoder, PostgresCatalog, QdrantIndex, QdrantSettings, S3BlobStore,
};
use glimpse_worker::encoder::ImageTextEncoder;
use glimpse_worker::worker::consumer::{Consumer, ConsumerPacing, ConsumerPorts};
use glimpse_worker::worker::settings::Backends;

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct PoolBenchOptions {
    /// Photos indexed end to end.
    pub photos: usize,
    /// Jobs claimed and finished for the queue's own cost.
    pub queue_jobs: usize,
    /// Jobs claimed per indexing round.
    pub batch: usize,
}

/// The results.
#[derive(Debug, Serialize)]
pub struct PoolReport {
    /// The encoder.
    pub encoder: String,
    /// Photos indexed end to end.
    pub photos: usize,
    /// Their mean size in MB.
    pub photo_mb: f64,
    /// Jobs claimed per round.
    pub batch: usize,
    /// End-to-end throughput of one worker.
    pub jobs_per_s: f64,
    /// Jobs claimed and finished for the queue's own cost.
    pub queue_jobs: usize,
    /// The queue's own cost per job (claim + finish, no work), in ms, by claim batch size.
    pub queue_ms_per_job: BTreeMap<usize, f64>,
}

fn random_suffix() -> Result<String, String> {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).map_err(|e| e.to_string())?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// A schema of the benchmark's own in the configured database.
struct Scratch {
    admin: DatabaseUrl,
    schema: String,
}

impl Scratch {
    async fn create(url: &str) -> Result<(Self, PostgresCatalog), String> {
        let admin: DatabaseUrl = url.parse().map_err(|e: PortError| e.to_string())?;
        let schema = format!("glimpse_bench_{}", random_suffix()?);
        run_sql(&admin, &format!("CREATE SCHEMA {schema}")).await?;
        let mut url = admin.clone();
        url.config.options(format!("-c search_path={schema}"));
        let scratch = Self { admin, schema };
        match glimpse_worker::adapters::postgres::connect_to(url, 4).await {
            Ok(catalog) => Ok((scratch, catalog)),
            Err(error) => {
                scratch.remove().await;
                Err(error.to_string())
            }
        }
    }

    async fn remove(&self) {
        let sql = format!("DROP SCHEMA {} CASCADE", self.schema);
        if let Err(error) = run_sql(&self.admin, &sql).await {
            eprintln!(
                "glimpse bench: could not drop the scratch schema {}: {error}",
                self.schema
            );
        }
    }
}

async fn run_sql(url: &DatabaseUrl, sql: &str) -> Result<(), String> {
    let connector = url.connector().map_err(|e| e.to_string())?;
    let (client, connection) = url
        .config
        .connect(connector)
        .await
        .map_err(|e| format!("catalog database: {e}"))?;
    let driver = tokio::spawn(connection);
    let result = client.batch_execute(sql).await.map_err(|e| e.to_string());
    drop(client);
    let _ = driver.await;
    result
}

fn queue_photo(seed: usize) -> Photo {
    let facts = ImageFacts {
        sha256: format!("{seed:064x}"),
        id: PhotoId::from_u64(seed as u64 + 1),
        format: ImageFormat::Jpeg,
        width: 4000,
        height: 3000,
        taken_at: None,
        camera: None,
        location: None,
    };
    let details = NewPhotoDetails {
        origin: Origin::Upload(format!("bench/{seed}")),
        bytes: 1,
        album: None,
        modified_at: None,
    };
    Photo::new(facts, details, 1_750_000_000)
}

/// Claims and finishes `jobs` jobs `batch` at a time; the mean cost per job in ms.
async fn queue_cost(catalog: &dyn Catalog, jobs: usize, batch: usize) -> Result<f64, String> {
    let started = Instant::now();
    let mut done = 0;
    while done < jobs {
        let claimed = catalog
            .claim_jobs(batch.min(jobs - done), Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        if claimed.is_empty() {
            return Err("the queue ran dry before the benchmark's jobs were done".to_owned());
        }
        for job in claimed {
            catalog
                .finish_job(job.claim(), &JobOutcome::Done)
                .await
                .map_err(|e| e.to_string())?;
            done += 1;
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1e3 / jobs as f64)
}

/// Runs the benchmark against `backends` with `encoder`.
pub async fn pool(
    backends: &Backends<'_>,
    encoder: Arc<dyn ImageTextEncoder>,
    options: PoolBenchOptions,
) -> Result<PoolReport, String> {
    let encoder = LocalEncoder::new(encoder);
    let (scratch, catalog) = Scratch::create(backends.database.url.expose()).await?;
    let catalog = Arc::new(catalog);
    let blobs = Arc::new(S3BlobStore::new(&backends.s3));
    if let Err(error) = blobs.ensure_bucket().await {
        scratch.remove().await;
        return Err(format!("the bucket `{}`: {error}", backends.s3.bucket));
    }
    let qdrant = QdrantSettings {
        collection_prefix: format!("glimpse_bench_{}", random_suffix()?),
        ..backends.qdrant.clone()
    };
    let index = QdrantIndex::open(
        &qdrant,
        TextEmbedder::encoder(&encoder),
        encoder.dimension(),
    )
    .await
    .map_err(|e| e.to_string());
    let result = match index {
        Ok(index) => {
            let index = Arc::new(index);
            let measured = measure(&catalog, &blobs, &index, &encoder, options).await;
            if let Err(error) = index.drop_collection().await {
                eprintln!(
                    "glimpse bench: could not drop {}: {error}",
                    index.collection()
                );
            }
            measured
        }
        Err(error) => Err(error),
    };
    scratch.remove().await;
    result
}

async fn measure(
    catalog: &Arc<PostgresCatalog>,
    blobs: &Arc<S3BlobStore>,
    index: &Arc<QdrantIndex>,
    encoder: &LocalEncoder,
    options: PoolBenchOptions,
) -> Result<PoolReport, String> {
    let mut queue_ms_per_job = BTreeMap::new();
    let half = (options.queue_jobs / 2).max(1);
    for seed in 0..half * 2 {
        catalog
            .add_photo(&queue_photo(1_000_000 + seed))
            .await
            .map_err(|e| e.to_string())?;
    }
    for batch in [1, options.batch] {
        queue_ms_per_job.insert(batch, queue_cost(catalog.as_ref(), half, batch).await?);
    }

    let mut keys = Vec::with_capacity(options.photos);
    let mut bytes_total = 0usize;
    for seed in 0..options.photos {
        let jpeg =
            tokio::task::spawn_blocking(move || super::twelve_megapixel_jpeg(10_000 + seed as u64))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        bytes_total += jpeg.len();
        let added = flows::upload(catalog.as_ref(), blobs.as_ref(), jpeg, None, 1_750_000_000)
            .await
            .map_err(|e| e.to_string())?;
        keys.push(Origin::upload_key(added.id));
    }
    let consumer = Consumer::new(
        ConsumerPorts {
            catalog: Arc::clone(catalog) as Arc<dyn Catalog>,
            blobs: Arc::clone(blobs) as Arc<dyn BlobStore>,
            embedder: Arc::new(encoder.clone()),
            index: Arc::clone(index) as Arc<dyn glimpse_core::ports::VectorIndex>,
        },
        ConsumerPacing {
            batch: options.batch,
            policy: flows::RetryPolicy::default(),
            idle_poll: Duration::from_millis(10),
            housekeeping: None,
        },
    );
    let started = Instant::now();
    loop {
        let round = consumer.round().await.map_err(|e| e.to_string())?;
        if round.claimed == 0 {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let indexed = consumer
        .stats()
        .indexed
        .load(std::sync::atomic::Ordering::Relaxed);
    for key in &keys {
        let _ = blobs.delete(key).await;
    }
    if indexed as usize != options.photos {
        return Err(format!(
            "only {indexed} of {} photos were indexed",
            options.photos
        ));
    }
    Ok(PoolReport {
        encoder: TextEmbedder::encoder(encoder).to_string(),
        photos: options.photos,
        photo_mb: bytes_total as f64 / options.photos.max(1) as f64 / 1e6,
        batch: options.batch,
        jobs_per_s: options.photos as f64 / seconds,
        queue_jobs: half * 2,
        queue_ms_per_job,
    })
}
