//! The managed adapters against real servers: each port's contract suite and what only a managed
//! backend does (migrations, concurrent claims, multipart uploads, presigned URLs, Qdrant
//! collections per encoder), plus what a user sees when a server is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on broken fixtures

mod common;

use std::time::Duration;

use common::managed::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Server, Schema, qdrant};
use glimpse_core::EncoderId;
use glimpse_core::learning::Learner;
use glimpse_core::photo::{ImageFacts, ImageFormat, NewPhotoDetails, Origin, Photo, PhotoId};
use glimpse_core::ports::{
    BlobStore, Catalog, JobOutcome, LearningStore, PortError, QueryEmbeddingCache,
};
use glimpse_worker::adapters::postgres::SCHEMA_VERSION;
use glimpse_worker::adapters::s3::{DEFAULT_PRESIGN_EXPIRY, MULTIPART_PART_BYTES};
use glimpse_worker::adapters::{QdrantIndex, QdrantSettings, S3BlobStore, S3Settings, postgres};

// Postgres

fn pending_photo(seed: u32) -> Photo {
    let sha = format!("{seed:064x}");
    let facts = ImageFacts {
        id: PhotoId::from_u64(u64::from(seed) * 7919 + 1),
        sha256: sha,
        format: ImageFormat::Png,
        width: 10,
        height: 10,
        taken_at: None,
        camera: None,
        location: None,
    };
    let details = NewPhotoDetails {
        origin: Origin::Upload(format!("originals/{seed}")),
        bytes: 100,
        album: None,
        modified_at: None,
    };
    Photo::new(facts, details, 1_750_000_000)
}

#[tokio::test]
async fn postgres_honours_the_catalog_contract() {
    let schema = Schema::new().await;
    glimpse_core::contract::catalog_suite(&schema.catalog().await).await;
}

#[tokio::test]
async fn postgres_honours_the_learning_store_contract() {
    let schema = Schema::new().await;
    let catalog = schema.catalog().await;
    glimpse_core::contract::learning_store_suite(&catalog, &catalog).await;
}

#[tokio::test]
async fn postgres_runs_the_reranker_learning_loop() {
    let schema = Schema::new().await;
    let catalog = schema.catalog().await;
    let scratch = tempfile::tempdir().unwrap();
    let blobs = glimpse::adapters::LocalBlobStore::open(scratch.path(), None).unwrap();
    glimpse_core::contract::reranker_loop_suite(&catalog, &catalog, &blobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_a_hundred_training_triggers_from_two_workers_one_wins_the_lease() {
    let schema = Schema::new().await;
    // Two workers: two pools of connections to the same database.
    let workers = [schema.catalog().await, schema.catalog().await];
    let workers: Vec<std::sync::Arc<postgres::PostgresCatalog>> =
        workers.into_iter().map(std::sync::Arc::new).collect();
    let triggers: Vec<_> = (0..100)
        .map(|i| {
            let catalog = std::sync::Arc::clone(&workers[i % 2]);
            tokio::spawn(async move {
                catalog
                    .claim_training(
                        Learner::Reranker,
                        &format!("worker-{}-trigger-{i}", i % 2),
                        Duration::from_secs(600),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for trigger in triggers {
        won += usize::from(trigger.await.unwrap());
    }
    assert_eq!(won, 1, "exactly one training run starts");
}

#[tokio::test]
async fn postgres_honours_the_query_embedding_cache_contract() {
    let schema = Schema::new().await;
    glimpse_core::contract::query_embedding_cache_suite(&schema.catalog().await).await;
}

#[tokio::test]
async fn the_query_embedding_cache_keeps_the_most_recently_used_entries() {
    let schema = Schema::new().await;
    let cache = schema.catalog().await.with_query_cache_capacity(2);
    let encoder: EncoderId = "clip:test/a@1".parse().unwrap();
    let vector = glimpse_core::Embedding::normalized(vec![1.0, 0.0]).unwrap();
    let texts = |list: &[&str]| list.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
    // Each step a few milliseconds apart, so the order of the steps is the order of use.
    let pause = || tokio::time::sleep(Duration::from_millis(10));
    for text in ["asked daily", "asked once"] {
        cache
            .store_embeddings(&encoder, &[(text.to_owned(), vector.clone())])
            .await
            .unwrap();
        pause().await;
    }
    let daily = cache
        .cached_embeddings(&encoder, &texts(&["asked daily"]))
        .await
        .unwrap();
    assert!(daily[0].is_some());
    pause().await;
    cache
        .store_embeddings(&encoder, &[("new".to_owned(), vector.clone())])
        .await
        .unwrap();
    let kept = cache
        .cached_embeddings(&encoder, &texts(&["asked daily", "asked once", "new"]))
        .await
        .unwrap();
    assert_eq!(
        kept.iter().map(Option::is_some).collect::<Vec<_>>(),
        [true, false, true],
        "the entry stored first but read since outlives the one never read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_starting_together_apply_each_migration_once() {
    let schema = Schema::new().await;
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = schema.url();
            tokio::spawn(async move { postgres::connect(&url, 1).await })
        })
        .collect();
    for start in starts {
        let catalog = start.await.unwrap().unwrap();
        assert_eq!(catalog.schema_version().await.unwrap(), SCHEMA_VERSION);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_get_each_job_exactly_once() {
    let schema = Schema::new().await;
    let catalog = std::sync::Arc::new(schema.catalog().await);
    for seed in 0..300 {
        catalog.add_photo(&pending_photo(seed)).await.unwrap();
    }
    let claimers = (0..8).map(|_| {
        let catalog = std::sync::Arc::clone(&catalog);
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let jobs = catalog
                    .claim_jobs(7, Duration::from_secs(60))
                    .await
                    .unwrap();
                if jobs.is_empty() {
                    return mine;
                }
                for job in jobs {
                    let ended = catalog.finish_job(job.claim(), &JobOutcome::Done).await;
                    assert!(ended.unwrap(), "a live claim ends its job");
                    mine.push(job.job_id);
                }
            }
        })
    });
    let mut all = Vec::new();
    for claimer in claimers.collect::<Vec<_>>() {
        all.extend(claimer.await.unwrap());
    }
    let total = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!((total, all.len()), (300, 300), "each job once, none lost");
    let counts = catalog.counts().await.unwrap();
    assert_eq!((counts.indexed, counts.pending), (300, 0));
}

#[tokio::test]
async fn postgres_unreachable_is_unavailable_and_the_password_stays_secret() {
    let error = postgres::connect("postgres://glimpse:s3cr3t-pw@127.0.0.1:1/test", 1)
        .await
        .err()
        .unwrap();
    assert!(matches!(error, PortError::Unavailable(_)), "{error:?}");
    assert!(!format!("{error} {error:?}").contains("s3cr3t-pw"));
    let garbage = postgres::connect("postgres://a:s3cr3t-pw@[broken", 1)
        .await
        .err()
        .unwrap();
    assert!(matches!(garbage, PortError::Rejected(_)), "{garbage:?}");
    assert!(!format!("{garbage} {garbage:?}").contains("s3cr3t-pw"));
}

// S3 (s3s-fs)

#[tokio::test]
async fn s3_honours_the_blob_store_contract() {
    let server = S3Server::start();
    let store = server.store(&server.settings()).await;
    glimpse_core::contract::blob_store_suite(&store).await;
}

#[tokio::test]
async fn large_objects_go_up_in_parts_and_come_back_whole() {
    let server = S3Server::start();
    let store = server.store(&server.settings()).await;
    let large: Vec<u8> = (0..(2 * MULTIPART_PART_BYTES + 12_345))
        .map(|i| (i % 253) as u8)
        .collect();
    store.put("originals/large", large.clone()).await.unwrap();
    assert_eq!(store.get("originals/large").await.unwrap(), Some(large));
}

#[tokio::test]
async fn presigned_urls_move_bytes_without_credentials_until_they_expire() {
    let server = S3Server::start();
    let store = server.store(&server.settings()).await;
    let put = store.presigned_put("originals/presigned").await.unwrap();
    let response = tokio::task::spawn_blocking(move || {
        ureq::put(&put)
            .send_bytes(b"uploaded directly")
            .unwrap()
            .status()
    })
    .await
    .unwrap();
    assert_eq!(response, 200);
    assert_eq!(
        store.get("originals/presigned").await.unwrap(),
        Some(b"uploaded directly".to_vec())
    );
    let get = store.presigned_get("originals/presigned").await.unwrap();
    assert!(!get.contains(S3_SECRET_KEY));
    let body =
        tokio::task::spawn_blocking(move || ureq::get(&get).call().unwrap().into_string().unwrap())
            .await
            .unwrap();
    assert_eq!(body, "uploaded directly");

    let short = S3Settings {
        presign_expiry: Duration::from_secs(1),
        ..server.settings()
    };
    let expiring = S3BlobStore::new(&short)
        .presigned_get("originals/presigned")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let status = tokio::task::spawn_blocking(move || match ureq::get(&expiring).call() {
        Ok(response) => response.status(),
        Err(ureq::Error::Status(status, _)) => status,
        Err(other) => panic!("{other}"),
    })
    .await
    .unwrap();
    assert_eq!(status, 403, "an expired URL is refused");
}

#[tokio::test]
async fn s3_unreachable_is_unavailable_and_the_secret_stays_secret() {
    let settings = S3Settings {
        endpoint: Some("http://127.0.0.1:1".to_owned()),
        bucket: "glimpse-test".to_owned(),
        region: "us-east-1".to_owned(),
        access_key_id: S3_ACCESS_KEY.to_owned(),
        secret_access_key: S3_SECRET_KEY.to_owned(),
        path_style: true,
        presign_expiry: DEFAULT_PRESIGN_EXPIRY,
    };
    assert!(!format!("{settings:?}").contains(S3_SECRET_KEY));
    let store = S3BlobStore::new(&settings);
    let error = store.get("originals/x").await.unwrap_err();
    assert!(matches!(error, PortError::Unavailable(_)), "{error:?}");
    assert!(!format!("{error} {error:?}").contains(S3_SECRET_KEY));
}

// Qdrant (when QDRANT_URL is set)

#[tokio::test]
async fn qdrant_honours_the_vector_index_contract() {
    let Some(settings) = qdrant("qdrant_honours_the_vector_index_contract") else {
        return;
    };
    let encoder: EncoderId = "clip:test/contract@1".parse().expect("encoder id");
    let index = QdrantIndex::open(&settings, &encoder, 4)
        .await
        .expect("open");
    glimpse_core::contract::vector_index_suite(&index).await;
    index.drop_collection().await.expect("drop");
}

#[tokio::test]
async fn refuses_a_collection_of_another_encoder_or_dimension() {
    let Some(settings) = qdrant("refuses_a_collection_of_another_encoder_or_dimension") else {
        return;
    };
    let settings = QdrantSettings {
        quantized: false,
        ..settings
    };
    let encoder: EncoderId = "clip:test/a@1".parse().expect("encoder id");
    let first = QdrantIndex::open(&settings, &encoder, 4)
        .await
        .expect("open");
    let reopened = QdrantIndex::open(&settings, &encoder, 4)
        .await
        .expect("reopen");
    assert_eq!(reopened.collection(), first.collection());
    let wider = QdrantIndex::open(&settings, &encoder, 8).await.err();
    assert!(
        matches!(&wider, Some(PortError::Rejected(m)) if m.contains("8 dimensions")),
        "{wider:?}"
    );
    let other: EncoderId = "clip:test/b@1".parse().expect("encoder id");
    let separate = QdrantIndex::open(&settings, &other, 4).await.expect("open");
    assert_ne!(separate.collection(), first.collection());
    separate.drop_collection().await.expect("drop");
    first.drop_collection().await.expect("drop");
}

#[tokio::test]
async fn qdrant_unreachable_is_unavailable_and_the_key_stays_secret() {
    let settings = QdrantSettings {
        url: "http://127.0.0.1:1".to_owned(),
        api_key: Some("s3cr3t-key".to_owned()),
        ..QdrantSettings::default()
    };
    let encoder: EncoderId = "clip:test/a@1".parse().expect("encoder id");
    let error = QdrantIndex::open(&settings, &encoder, 4)
        .await
        .err()
        .expect("no server there");
    assert!(matches!(error, PortError::Unavailable(_)), "{error:?}");
    assert!(!format!("{error} {error:?} {settings:?}").contains("s3cr3t-key"));
}
