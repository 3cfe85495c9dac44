//! The worker pool's job consumers against the real Postgres and S3 servers: many consumers share
//! one queue and index every upload exactly once; a consumer that dies mid-lease leaves its jobs
//! to another; an unreachable object store delays jobs and marks nothing done; a Postgres restart
//! is ridden out. Consumers run in-process over the embedded index (so these run everywhere); the
//! last test runs real `glimpse worker` processes against Qdrant when `QDRANT_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on broken fixtures

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::managed::{PrivatePostgres, S3Server, Schema, TestAuthority, qdrant};
use common::{model, spawn_listening};
use glimpse::adapters::{IndexTuning, LocalIndex};
use glimpse_core::EncoderId;
use glimpse_core::flows::{self, LogRetention, RetryPolicy};
use glimpse_core::ports::{
    BlobStore, Catalog, EmbeddedImage, ImageEmbedder, PortError, VectorIndex,
};
use glimpse_worker::adapters::{LocalEncoder, QdrantIndex, S3BlobStore, postgres};
use glimpse_worker::encoder::{ClipEncoder, Precision};
use glimpse_worker::hub;
use glimpse_worker::worker::consumer::{Consumer, ConsumerPacing, ConsumerPorts, Housekeeping};
use tokio::sync::{Notify, watch};
use tokio_postgres::NoTls;

/// A distinct small PNG per seed.
fn image(seed: u32) -> Vec<u8> {
    let pixels = image::RgbImage::from_fn(12, 10, |x, y| {
        let v = seed.wrapping_mul(2_654_435_761) ^ (x * 31 + y * 17);
        image::Rgb([
            (v & 0xff) as u8,
            (v >> 8 & 0xff) as u8,
            (v >> 16 & 0xff) as u8,
        ])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    pixels
        .write_to(&mut bytes, image::ImageFormat::Png)
        .unwrap();
    bytes.into_inner()
}

/// What a pool test runs on: a scratch schema of the real Postgres with its catalog, an S3
/// server, the test encoder and an embedded index in a folder of its own.
struct Pool {
    schema: Schema,
    s3: S3Server,
    encoder: LocalEncoder,
    index: Arc<LocalIndex>,
    catalog: Arc<postgres::PostgresCatalog>,
    _folder: tempfile::TempDir,
}

impl Pool {
    async fn start() -> Self {
        let schema = Schema::new().await;
        let folder = tempfile::tempdir().unwrap();
        let encoder = encoder();
        let index = embedded_index(folder.path(), &encoder);
        let catalog = Arc::new(schema.catalog().await);
        Self {
            schema,
            s3: S3Server::start(),
            encoder,
            index,
            catalog,
            _folder: folder,
        }
    }
}

fn encoder() -> LocalEncoder {
    let model = hub::resolve(&model()).unwrap();
    LocalEncoder::new(Arc::new(
        ClipEncoder::load(&model.directory, model.id, Precision::Auto).unwrap(),
    ))
}

fn embedded_index(directory: &std::path::Path, encoder: &LocalEncoder) -> Arc<LocalIndex> {
    Arc::new(
        LocalIndex::open(
            directory,
            ImageEmbedder::encoder(encoder),
            encoder.dimension(),
            IndexTuning::default(),
        )
        .unwrap(),
    )
}

/// Uploads `count` distinct photos through the upload flow (original to S3, photo row and job
/// to Postgres in one transaction).
async fn upload(catalog: &dyn Catalog, blobs: &dyn BlobStore, count: u32) {
    for seed in 0..count {
        let added = flows::upload(catalog, blobs, image(seed), None, 1_750_000_000)
            .await
            .unwrap();
        assert!(added.created);
    }
}

fn pacing(batch: usize, lease: Duration) -> ConsumerPacing {
    ConsumerPacing {
        batch,
        policy: RetryPolicy {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
            lease,
            ..RetryPolicy::default()
        },
        idle_poll: Duration::from_millis(50),
        housekeeping: None,
    }
}

/// One consumer of `catalog`'s queue over the embedded index, claiming `batch` jobs a round.
fn consumer_of(
    catalog: &Arc<postgres::PostgresCatalog>,
    blobs: S3BlobStore,
    encoder: &LocalEncoder,
    index: &Arc<LocalIndex>,
    batch: usize,
) -> Consumer {
    Consumer::new(
        ConsumerPorts {
            catalog: Arc::clone(catalog) as Arc<dyn Catalog>,
            blobs: Arc::new(blobs),
            embedder: Arc::new(encoder.clone()),
            index: Arc::clone(index) as Arc<dyn VectorIndex>,
        },
        pacing(batch, Duration::from_secs(300)),
    )
}

/// Waits (bounded) until nothing is pending.
async fn wait_settled(catalog: &dyn Catalog, photos: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = catalog.counts().await;
        if let Ok(counts) = counts
            && counts.photos == photos
            && counts.pending == 0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "indexing did not finish: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One number from the catalog database.
async fn count_where(url: &str, sql: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    let value: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
    drop(client);
    let _ = driver.await;
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_consumers_index_a_thousand_uploads_exactly_once() {
    let Pool {
        schema,
        s3,
        encoder,
        index,
        catalog,
        _folder,
    } = Pool::start().await;
    let blobs = s3.store(&s3.settings()).await;
    upload(catalog.as_ref(), &blobs, 1000).await;

    let (stop, stopped) = watch::channel(false);
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let consumer = Arc::new(Consumer::new(
            ConsumerPorts {
                catalog: Arc::new(postgres::connect(&schema.url(), 2).await.unwrap()),
                blobs: Arc::new(S3BlobStore::new(&s3.settings())),
                embedder: Arc::new(encoder.clone()),
                index: Arc::clone(&index) as Arc<dyn VectorIndex>,
            },
            pacing(16, Duration::from_secs(300)),
        ));
        let running = Arc::clone(&consumer);
        let stopped = stopped.clone();
        consumers.push((
            consumer,
            tokio::spawn(async move { running.run(stopped).await }),
        ));
    }
    wait_settled(catalog.as_ref(), 1000).await;
    stop.send(true).unwrap();
    let mut done = 0;
    for (consumer, running) in consumers {
        running.await.unwrap();
        let stats = consumer.stats();
        done += stats.indexed.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(stats.lost.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(stats.failed.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
    assert_eq!(done, 1000, "each job done once across the consumers");
    assert_eq!(catalog.counts().await.unwrap().indexed, 1000);
    assert_eq!(index.count().await.unwrap(), 1000);
    assert_eq!(
        count_where(
            &schema.url(),
            "SELECT count(*) FROM feature_jobs WHERE state = 'done' AND attempts = 1"
        )
        .await,
        1000,
        "no job was ever claimed twice"
    );
}

/// The real encoder, except that the first call announces itself and never returns: a worker
/// that stops dead in the middle of its lease.
struct DiesMidLease {
    inner: LocalEncoder,
    reached: Arc<Notify>,
}

#[async_trait]
impl ImageEmbedder for DiesMidLease {
    fn encoder(&self) -> &EncoderId {
        ImageEmbedder::encoder(&self.inner)
    }

    async fn embed_images(
        &self,
        _images: Vec<Vec<u8>>,
        _thumbnail_size: Option<u32>,
    ) -> Result<Vec<Result<EmbeddedImage, String>>, PortError> {
        self.reached.notify_one();
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_workers_of_the_active_encoder_claim_jobs_and_starting_switches_nothing() {
    let Pool {
        schema: _schema,
        s3,
        encoder,
        index,
        catalog,
        _folder,
    } = Pool::start().await;
    let blobs = s3.store(&s3.settings()).await;
    // Workers of another model reached the pool first: theirs is the active encoder.
    let other: EncoderId = "clip:test/another-model@1".parse().unwrap();
    catalog.register_encoder(&other, 8).await.unwrap();
    upload(catalog.as_ref(), &blobs, 6).await;
    let consumer = consumer_of(&catalog, blobs, &encoder, &index, 16);
    let round = consumer.round().await.unwrap();
    assert!(round.inactive_encoder, "{round:?}");
    assert_eq!(round.claimed, 0);
    assert_eq!(catalog.counts().await.unwrap().pending, 6);
    assert_eq!(
        catalog.current_encoder().await.unwrap(),
        Some((other, 8)),
        "a worker starting with another model does not switch the pool (nor the edge)"
    );

    // The operator switches the pool to this worker's model.
    assert!(
        catalog
            .activate_encoder(ImageEmbedder::encoder(&encoder))
            .await
            .unwrap()
    );
    let round = consumer.round().await.unwrap();
    assert_eq!(
        (round.inactive_encoder, round.indexed),
        (false, 6),
        "{round:?}"
    );
    assert_eq!(index.count().await.unwrap(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_straight_to_storage_never_completed_expire_and_completed_ones_stay() {
    let Pool {
        schema: _schema,
        s3,
        encoder,
        index,
        catalog,
        _folder,
    } = Pool::start().await;
    let blobs = s3.store(&s3.settings()).await;
    // Two clients start an upload and put their original; one completes, one goes away.
    let mut started = Vec::new();
    for seed in [1, 2] {
        let bytes = image(seed);
        let declared = flows::UploadDeclaration {
            bytes: bytes.len() as u64,
            content_type: "image/png".to_owned(),
        };
        let (upload, _) = flows::start_upload(catalog.as_ref(), &declared, 1 << 20, 1_000)
            .await
            .unwrap();
        blobs.put(&upload.id.staged_key(), bytes).await.unwrap();
        started.push(upload);
    }
    let (completed, abandoned) = (&started[0], &started[1]);
    let added = flows::complete_upload(catalog.as_ref(), &blobs, completed.id, None, 1_010)
        .await
        .unwrap();
    assert!(added.created);

    // A day later, a consumer keeps house.
    let consumer = Consumer::new(
        ConsumerPorts {
            catalog: Arc::clone(&catalog) as Arc<dyn Catalog>,
            blobs: Arc::new(s3.store(&s3.settings()).await),
            embedder: Arc::new(encoder.clone()),
            index: Arc::clone(&index) as Arc<dyn VectorIndex>,
        },
        ConsumerPacing {
            housekeeping: Some(Housekeeping {
                search_log: LogRetention {
                    days: 90,
                    searches: 1_000_000,
                },
                staged_uploads_expire_after: Duration::ZERO,
            }),
            ..pacing(16, Duration::from_secs(300))
        },
    );
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(async move { consumer.run(stopped).await });
    wait_settled(catalog.as_ref(), 1).await;
    stop.send(true).unwrap();
    running.await.unwrap();

    assert_eq!(
        blobs.get(&abandoned.id.staged_key()).await.unwrap(),
        None,
        "the abandoned original is removed"
    );
    assert_eq!(catalog.staged_upload(&abandoned.id).await.unwrap(), None);
    assert_eq!(
        blobs.get(&completed.id.staged_key()).await.unwrap(),
        Some(image(1)),
        "the completed upload is a photo's original: it stays"
    );
    let photo = catalog.photo(added.id).await.unwrap().unwrap();
    assert_eq!(photo.status, glimpse_core::photo::PhotoStatus::Indexed);
    let refused = flows::complete_upload(catalog.as_ref(), &blobs, abandoned.id, None, 90_000)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, flows::FlowError::NotFound(_)),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_dies_mid_lease_leaves_its_jobs_to_another() {
    let Pool {
        schema,
        s3,
        encoder,
        index,
        catalog,
        _folder,
    } = Pool::start().await;
    let blobs = Arc::new(s3.store(&s3.settings()).await);
    upload(catalog.as_ref(), blobs.as_ref(), 24).await;
    let lease = Duration::from_secs(2);
    let ports = |embedder: Arc<dyn ImageEmbedder>| ConsumerPorts {
        catalog: Arc::clone(&catalog) as Arc<dyn Catalog>,
        blobs: Arc::clone(&blobs) as Arc<dyn BlobStore>,
        embedder,
        index: Arc::clone(&index) as Arc<dyn VectorIndex>,
    };

    let reached = Arc::new(Notify::new());
    let doomed = Consumer::new(
        ports(Arc::new(DiesMidLease {
            inner: encoder.clone(),
            reached: Arc::clone(&reached),
        })),
        pacing(24, lease),
    );
    let dying = tokio::spawn(async move { doomed.round().await });
    reached.notified().await;
    dying.abort();
    assert_eq!(
        count_where(
            &schema.url(),
            "SELECT count(*) FROM feature_jobs WHERE state = 'leased'"
        )
        .await,
        24,
        "the dead consumer holds every job"
    );

    let survivor = Consumer::new(ports(Arc::new(encoder.clone())), pacing(24, lease));
    let early = survivor.round().await.unwrap();
    assert_eq!(early.claimed, 0, "a live lease is respected");
    let started = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let survivor = Arc::new(survivor);
    let running = Arc::clone(&survivor);
    let run = tokio::spawn(async move { running.run(stopped).await });
    wait_settled(catalog.as_ref(), 24).await;
    assert!(
        started.elapsed() >= lease / 2,
        "claimed again only after the lease"
    );
    stop.send(true).unwrap();
    run.await.unwrap();
    assert_eq!(catalog.counts().await.unwrap().indexed, 24);
    assert_eq!(index.count().await.unwrap(), 24);
    assert_eq!(
        count_where(
            &schema.url(),
            "SELECT count(*) FROM feature_jobs WHERE state = 'done' AND attempts = 2"
        )
        .await,
        24
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_delays_jobs_and_marks_nothing_done() {
    let Pool {
        schema,
        mut s3,
        encoder,
        index,
        catalog,
        _folder,
    } = Pool::start().await;
    let blobs = s3.store(&s3.settings()).await;
    upload(catalog.as_ref(), &blobs, 8).await;
    let consumer = consumer_of(&catalog, blobs, &encoder, &index, 32);

    s3.halt();
    let round = consumer.round().await.unwrap();
    assert_eq!((round.claimed, round.retried), (8, 8), "{round:?}");
    assert_eq!(index.count().await.unwrap(), 0);
    let counts = catalog.counts().await.unwrap();
    assert_eq!((counts.pending, counts.indexed, counts.failed), (8, 0, 0));
    let queued_errors = count_where(
        &schema.url(),
        "SELECT count(*) FROM feature_jobs WHERE state = 'queued' AND error LIKE '%unavailable%'",
    )
    .await;
    assert_eq!(queued_errors, 8, "each job waits with the reason");

    s3.resume();
    let (stop, stopped) = watch::channel(false);
    let consumer = Arc::new(consumer);
    let running = Arc::clone(&consumer);
    let run = tokio::spawn(async move { running.run(stopped).await });
    wait_settled(catalog.as_ref(), 8).await;
    stop.send(true).unwrap();
    run.await.unwrap();
    assert_eq!(catalog.counts().await.unwrap().indexed, 8);
    assert_eq!(index.count().await.unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_ride_out_a_postgres_restart() {
    let mut postgres = PrivatePostgres::start();
    let s3 = S3Server::start();
    let folder = tempfile::tempdir().unwrap();
    let encoder = encoder();
    let index = embedded_index(folder.path(), &encoder);
    let catalog = Arc::new(postgres::connect(&postgres.url(), 4).await.unwrap());
    let blobs = Arc::new(s3.store(&s3.settings()).await);
    upload(catalog.as_ref(), blobs.as_ref(), 120).await;
    let consumer = Arc::new(Consumer::new(
        ConsumerPorts {
            catalog: Arc::clone(&catalog) as Arc<dyn Catalog>,
            blobs: Arc::clone(&blobs) as Arc<dyn BlobStore>,
            embedder: Arc::new(encoder.clone()),
            index: Arc::clone(&index) as Arc<dyn VectorIndex>,
        },
        pacing(8, Duration::from_secs(2)),
    ));
    let (stop, stopped) = watch::channel(false);
    let running = Arc::clone(&consumer);
    let run = tokio::spawn(async move { running.run(stopped).await });
    let stats = consumer.stats();
    let indexed = || stats.indexed.load(std::sync::atomic::Ordering::Relaxed);
    let failed_rounds = || {
        stats
            .round_errors
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    while indexed() < 16 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    postgres.halt();
    while failed_rounds() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = indexed();
    postgres.resume();
    wait_settled(catalog.as_ref(), 120).await;
    stop.send(true).unwrap();
    run.await.unwrap();
    assert!(
        indexed() > before,
        "the consumer carried on after the restart"
    );
    assert_eq!(catalog.counts().await.unwrap().indexed, 120);
    assert_eq!(index.count().await.unwrap(), 120);
}

/// `glimpse worker` processes over Postgres, S3 and Qdrant: one is killed with SIGKILL while it
/// holds every job; four others then index all 1,000 uploads, each job done by exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_index_every_upload_exactly_once_when_one_is_killed() {
    let Some(qdrant) =
        qdrant("worker_processes_index_every_upload_exactly_once_when_one_is_killed")
    else {
        return;
    };
    let schema = Schema::new().await;
    let s3 = S3Server::start();
    let catalog = schema.catalog().await;
    let blobs = s3.store(&s3.settings()).await;
    upload(&catalog, &blobs, 1000).await;
    let worker = |batch: usize| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_glimpse"));
        command
            .args(["worker", "--model", &model(), "--listen", "127.0.0.1:0"])
            .env("GLIMPSE__WORKER__TOKEN", "internal-token-for-the-pool-0123")
            .env("GLIMPSE__WORKER__BATCH", batch.to_string())
            .env("GLIMPSE__WORKER__LEASE_SECONDS", "3")
            .env("GLIMPSE__WORKER__IDLE_POLL_MS", "100")
            .env("GLIMPSE__DATABASE__URL", schema.url())
            .env("GLIMPSE__S3__ENDPOINT", s3.endpoint())
            .env("GLIMPSE__S3__BUCKET", s3.settings().bucket)
            .env("GLIMPSE__S3__ACCESS_KEY_ID", common::managed::S3_ACCESS_KEY)
            .env(
                "GLIMPSE__S3__SECRET_ACCESS_KEY",
                common::managed::S3_SECRET_KEY,
            )
            .env("GLIMPSE__QDRANT__URL", &qdrant.url)
            .env(
                "GLIMPSE__QDRANT__COLLECTION_PREFIX",
                &qdrant.collection_prefix,
            );
        spawn_listening(&mut command, "Glimpse worker is serving ")
    };

    let (mut victim, _) = worker(1000);
    while count_where(
        &schema.url(),
        "SELECT count(*) FROM feature_jobs WHERE state = 'leased'",
    )
    .await
        == 0
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    let held = count_where(
        &schema.url(),
        "SELECT count(*) FROM feature_jobs WHERE state = 'leased'",
    )
    .await;
    assert!(held > 0);

    let pool: Vec<_> = (0..4).map(|_| worker(16)).collect();
    wait_settled(&catalog, 1000).await;
    let mut done = 0;
    for (_, base) in &pool {
        let metrics = ureq::get(&format!("{base}/metrics"))
            .set("Authorization", "Bearer internal-token-for-the-pool-0123")
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("glimpse_worker_jobs_done_total "))
            .unwrap();
        done += line.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
    }
    for (mut child, _) in pool {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(done, 1000, "each job done by exactly one worker");
    assert_eq!(
        count_where(
            &schema.url(),
            "SELECT count(*) FROM feature_jobs WHERE state = 'done' AND attempts = 2"
        )
        .await,
        held,
        "the killed worker's jobs were claimed again after its lease"
    );
    let encoder = encoder();
    let index = QdrantIndex::open(
        &qdrant,
        ImageEmbedder::encoder(&encoder),
        encoder.dimension(),
    )
    .await
    .unwrap();
    assert_eq!(index.count().await.unwrap(), 1000);
    index.drop_collection().await.unwrap();
}

/// The worker reaches its catalog database over TLS and checks whom it talks to: the server's
/// certificate must chain to a trusted CA (here one made for the test, named by sslrootcert)
/// and, unless the URL says verify-ca, name the host. A server it cannot verify, or one without
/// TLS, is refused with the reason; nothing goes in plaintext unless the URL says disable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_database_is_reached_over_verified_tls() {
    let authority = TestAuthority::new(&["IP:127.0.0.1", "DNS:localhost"]);
    let server = PrivatePostgres::start_tls_only(&authority);
    let trusting = |server: &PrivatePostgres, authority: &TestAuthority, mode: &str| {
        format!(
            "{} sslmode={mode} sslrootcert='{}'",
            server.address(),
            authority.certificate().display()
        )
    };
    let refusal = |url: String| async move {
        postgres::connect(&url, 1)
            .await
            .err()
            .expect("connected to a server it should have refused")
            .to_string()
    };

    // verify-full is the default: the catalog works, and its connections are encrypted.
    let verified = format!(
        "{} sslrootcert='{}'",
        server.address(),
        authority.certificate().display()
    );
    let catalog = postgres::connect(&verified, 2).await.unwrap();
    let encoder: EncoderId = "clip:test/tls@1".parse().unwrap();
    catalog.register_encoder(&encoder, 8).await.unwrap();
    assert_eq!(catalog.active_encoder().await.unwrap(), Some(encoder));
    let url: postgres::DatabaseUrl = verified.parse().unwrap();
    let (client, connection) = url.config.connect(url.connector().unwrap()).await.unwrap();
    tokio::spawn(connection);
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted);

    // The system's roots do not hold the test's CA: the worker stops and says why.
    let error = refusal(server.address()).await;
    assert!(error.contains("invalid peer certificate"), "{error}");
    let worker = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["worker", "--model", &model(), "--listen", "127.0.0.1:0"])
        .env("GLIMPSE__WORKER__TOKEN", "internal-token-for-the-pool-0123")
        .env("GLIMPSE__DATABASE__URL", server.address())
        .env("GLIMPSE__S3__BUCKET", "never-reached")
        .env("GLIMPSE__S3__ACCESS_KEY_ID", "never-used")
        .env("GLIMPSE__S3__SECRET_ACCESS_KEY", "never-used")
        .env("GLIMPSE__QDRANT__URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!worker.status.success());
    let message = String::from_utf8_lossy(&worker.stderr);
    assert!(
        message.contains("[database] url") && message.contains("invalid peer certificate"),
        "{message}"
    );

    // A CA other than the server's: refused, even when the name is not checked.
    let other = TestAuthority::new(&["DNS:db.internal"]);
    let error = refusal(trusting(&server, &other, "verify-ca")).await;
    assert!(error.contains("invalid peer certificate"), "{error}");

    // A certificate for another name: refused by verify-full, enough for verify-ca.
    let elsewhere = PrivatePostgres::start_tls_only(&other);
    let error = refusal(trusting(&elsewhere, &other, "verify-full")).await;
    assert!(error.contains("not valid for name"), "{error}");
    postgres::connect(&trusting(&elsewhere, &other, "verify-ca"), 1)
        .await
        .unwrap();

    // A server without TLS is refused unless the URL says so, and then only TLS servers refuse.
    let plaintext = PrivatePostgres::start();
    let error = refusal(trusting(&plaintext, &authority, "verify-full")).await;
    assert!(error.contains("does not support TLS"), "{error}");
    postgres::connect(&plaintext.url(), 1).await.unwrap();
    let error = refusal(format!("{} sslmode=disable", server.address())).await;
    assert!(error.contains("no encryption"), "{error}");
}
