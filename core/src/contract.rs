//! The contract every adapter of a port must honour, as plain async functions over `&dyn Port`
//! that panic (like `assert!`) on a violation. Each adapter's tests call the suite of its port
//! with a fresh, empty instance; the embedded adapters always, the managed ones against real
//! servers.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use crate::browse::BrowseCursor;
use crate::learning::{
    AdapterFiles, Evaluation, Learner, LearningSettings, QueryAdapter, RerankerExample,
    RerankerLoop, RerankerTraining, SwapCounts, TrainedAdapter, TrainingOutcome,
    follow_active_reranker_adapter, reranker_adapter_files, retrain_reranker,
};
use crate::photo::{
    Facets, ImageFormat, NewPhotoDetails, Origin, Photo, PhotoId, PhotoStatus, StagedUpload,
    UploadId,
};
use crate::ports::{
    BlobStore, Catalog, ImageEmbedder, IndexedPhoto, JobOutcome, LearningStore, PortError,
    QueryEmbeddingCache, Requeue, RerankCandidate, Reranker, RerankerLearner, SearchFilter,
    TextEmbedder, VectorIndex,
};
use crate::search::{LoggedResult, LoggedSearch, QueryId, SearchLog, StageTimings};
use crate::{Embedding, EncoderId};

fn photo(seed: u8, album: Option<&str>) -> Photo {
    let facts = crate::photo::ImageFacts {
        sha256: format!("{seed:02x}").repeat(32),
        id: PhotoId::from_sha256(&[seed; 32]),
        format: ImageFormat::Jpeg,
        width: 640,
        height: 480,
        taken_at: Some(1_700_000_000 + i64::from(seed)),
        camera: Some("Test Camera".to_owned()),
        location: None,
    };
    let details = NewPhotoDetails {
        origin: Origin::Upload(format!("originals/{seed}")),
        bytes: 1000 + u64::from(seed),
        album: album.map(str::to_owned),
        modified_at: None,
    };
    Photo::new(facts, details, 1_750_000_000)
}

/// The Catalog contract, on an empty catalog.
pub async fn catalog_suite(catalog: &dyn Catalog) {
    staged_uploads_suite(catalog).await;
    let encoder: EncoderId = "clip:test/contract@1".parse().unwrap();
    assert_eq!(catalog.active_encoder().await.unwrap(), None);
    catalog.register_encoder(&encoder, 4).await.unwrap();
    catalog.register_encoder(&encoder, 4).await.unwrap();
    // The first encoder is active; another one starting does not take over until activated.
    let other: EncoderId = "clip:test/other@1".parse().unwrap();
    catalog.register_encoder(&other, 8).await.unwrap();
    assert_eq!(
        catalog.active_encoder().await.unwrap(),
        Some(encoder.clone())
    );
    let unknown: EncoderId = "clip:test/never-registered@1".parse().unwrap();
    assert!(!catalog.activate_encoder(&unknown).await.unwrap());
    assert!(catalog.activate_encoder(&other).await.unwrap());
    assert_eq!(catalog.active_encoder().await.unwrap(), Some(other));
    assert!(catalog.activate_encoder(&encoder).await.unwrap());
    assert_eq!(
        catalog.active_encoder().await.unwrap(),
        Some(encoder.clone())
    );

    // Adding is idempotent by content.
    let first = photo(1, Some("Trips"));
    let added = catalog.add_photo(&first).await.unwrap();
    assert!(added.created);
    assert_eq!(added.id, first.id);
    let again = catalog.add_photo(&first).await.unwrap();
    assert!(
        !again.created,
        "identical bytes must not create a second photo"
    );
    assert_eq!(catalog.photo(first.id).await.unwrap(), Some(first.clone()));
    let second = photo(2, None);
    catalog.add_photo(&second).await.unwrap();
    let mut both = catalog
        .photos(&[first.id, second.id, PhotoId::from_u64(7)])
        .await
        .unwrap();
    both.sort_by_key(|p| p.id);
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort_by_key(|p| p.id);
    assert_eq!(both, expected);
    let counts = catalog.counts().await.unwrap();
    assert_eq!((counts.photos, counts.pending, counts.indexed), (2, 2, 0));

    // Each job is claimed once while its lease runs.
    let lease = Duration::from_secs(60);
    let claimed = catalog.claim_jobs(10, lease).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(
        claimed
            .iter()
            .all(|j| j.previous_attempts == 0 && j.unfinished_claims == 0)
    );
    assert!(catalog.claim_jobs(10, lease).await.unwrap().is_empty());
    let job_of = |id: PhotoId| claimed.iter().find(|j| j.photo.id == id).unwrap().claim();
    assert!(
        catalog
            .finish_job(job_of(first.id), &JobOutcome::Done)
            .await
            .unwrap()
    );
    let indexed = catalog.photo(first.id).await.unwrap().unwrap();
    assert_eq!(indexed.status, PhotoStatus::Indexed);
    catalog
        .finish_job(
            job_of(second.id),
            &JobOutcome::Retry {
                error: "disk busy".to_owned(),
                after: Duration::from_secs(3600),
            },
        )
        .await
        .unwrap();
    assert!(
        catalog.claim_jobs(10, lease).await.unwrap().is_empty(),
        "a job in back-off must not be claimed early"
    );
    let pending = catalog.photo(second.id).await.unwrap().unwrap();
    assert_eq!(pending.status, PhotoStatus::Pending);
    assert_eq!(pending.last_error.as_deref(), Some("disk busy"));

    // An expired lease is claimed again, with the attempt counted.
    let third = photo(3, None);
    catalog.add_photo(&third).await.unwrap();
    let short = catalog
        .claim_jobs(10, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(short.len(), 1);
    std::thread::sleep(Duration::from_millis(20));
    let reclaimed = catalog.claim_jobs(10, lease).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].photo.id, third.id);
    assert_eq!(reclaimed[0].previous_attempts, 1);
    assert_eq!(
        reclaimed[0].unfinished_claims, 1,
        "a lease that ran out is a claim that never ended"
    );
    // The first claimer's lease ran out: it can no longer end the job.
    assert!(
        !catalog
            .finish_job(short[0].claim(), &JobOutcome::Done)
            .await
            .unwrap()
    );
    assert_eq!(
        catalog.photo(third.id).await.unwrap().unwrap().status,
        PhotoStatus::Pending
    );
    catalog
        .finish_job(
            reclaimed[0].claim(),
            &JobOutcome::Failed {
                error: "the image cannot be decoded: truncated".to_owned(),
            },
        )
        .await
        .unwrap();
    let failed = catalog.photo(third.id).await.unwrap().unwrap();
    assert_eq!(failed.status, PhotoStatus::Failed);
    assert!(failed.last_error.unwrap().contains("truncated"));
    let counts = catalog.counts().await.unwrap();
    assert_eq!(
        (counts.photos, counts.pending, counts.indexed, counts.failed),
        (3, 1, 1, 1)
    );

    // Search log and clicks: only real (query id, rank) pairs are accepted.
    let query_id = QueryId::random();
    let log = SearchLog {
        search: LoggedSearch {
            query_id,
            text: "beach -people".to_owned(),
            parsed: "{}".to_owned(),
            encoder: encoder.clone(),
            timings: StageTimings::from_values([0.1, 1.0, 1.5, 0.2, 0.4, 3.5]),
            rerank_fallback: Some("reranker down".to_owned()),
            adapter_version: Some(3),
            swapped_with: Some(2),
        },
        results: vec![
            LoggedResult {
                rank: 1,
                photo_id: first.id,
                score: 2.5,
                rerank_probability: Some(0.7),
            },
            LoggedResult {
                rank: 2,
                photo_id: second.id,
                score: 1.5,
                rerank_probability: None,
            },
        ],
    };
    catalog.log_search(&log).await.unwrap();
    assert_eq!(catalog.record_click(&query_id, 3).await.unwrap(), None);
    assert_eq!(
        catalog.record_click(&QueryId::random(), 1).await.unwrap(),
        None
    );
    let click = catalog.record_click(&query_id, 2).await.unwrap().unwrap();
    assert_eq!((click.photo_id, click.rank), (second.id, 2));
    let entry = catalog.search_log(&query_id).await.unwrap().unwrap();
    assert_eq!(entry.search, log.search);
    assert_eq!(entry.results.len(), 2);
    assert!(!entry.results[0].clicked);
    assert!(entry.results[1].clicked && entry.results[1].clicked_at.is_some());
    assert_eq!(entry.results[0].result, log.results[0]);
    assert_eq!(catalog.search_log(&QueryId::random()).await.unwrap(), None);

    // Removal takes the jobs along; re-queueing brings every photo back to pending.
    assert_eq!(
        catalog.remove_photo(second.id).await.unwrap().map(|p| p.id),
        Some(second.id)
    );
    assert_eq!(catalog.remove_photo(second.id).await.unwrap(), None);
    assert_eq!(catalog.photo(second.id).await.unwrap(), None);
    assert_eq!(catalog.requeue(&Requeue::Failed).await.unwrap(), 1);
    let retried = catalog.photo(third.id).await.unwrap().unwrap();
    assert_eq!(
        (retried.status, retried.last_error),
        (PhotoStatus::Pending, None)
    );
    assert_eq!(
        catalog
            .requeue(&Requeue::Photos(vec![first.id, PhotoId::from_u64(7)]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(catalog.requeue(&Requeue::Everything).await.unwrap(), 2);
    let counts = catalog.counts().await.unwrap();
    assert_eq!((counts.photos, counts.pending), (2, 2));
    let fresh = catalog.claim_jobs(10, lease).await.unwrap();
    assert_eq!(fresh.len(), 2, "one job per photo after re-queueing");
    assert!(
        fresh
            .iter()
            .all(|j| j.previous_attempts == 0 && j.unfinished_claims == 0)
    );
    for job in &fresh {
        catalog
            .finish_job(job.claim(), &JobOutcome::Done)
            .await
            .unwrap();
    }

    search_log_retention_contract(catalog, &encoder, first.id).await;
    suspects_are_claimed_alone(catalog).await;
    photo_states_contract(catalog).await;
    browse_contract(catalog, &[first, third]).await;
}

/// A logged search for "sled" showing `shown` from rank `first_rank` on.
fn sled_search(
    query_id: QueryId,
    encoder: &EncoderId,
    swapped_with: Option<u32>,
    first_rank: u32,
    shown: &[PhotoId],
) -> SearchLog {
    SearchLog {
        search: LoggedSearch {
            query_id,
            text: "sled".to_owned(),
            parsed: "{}".to_owned(),
            encoder: encoder.clone(),
            timings: StageTimings::from_values([0.1; 6]),
            rerank_fallback: None,
            adapter_version: None,
            swapped_with,
        },
        results: shown
            .iter()
            .zip(first_rank..)
            .map(|(photo_id, rank)| LoggedResult {
                rank,
                photo_id: *photo_id,
                score: 1.0,
                rerank_probability: None,
            })
            .collect(),
    }
}

/// Old searches without clicks go, clicked ones stay until the row cap.
async fn search_log_retention_contract(catalog: &dyn Catalog, encoder: &EncoderId, shown: PhotoId) {
    let log = |query_id| sled_search(query_id, encoder, None, 1, &[shown]);
    let (clicked, ignored) = (QueryId::random(), QueryId::random());
    catalog.log_search(&log(clicked)).await.unwrap();
    catalog.log_search(&log(ignored)).await.unwrap();
    catalog.record_click(&clicked, 1).await.unwrap().unwrap();
    assert_eq!(
        catalog.prune_search_log(i64::MIN, u64::MAX).await.unwrap(),
        0,
        "nothing is older than the beginning of time"
    );
    assert!(catalog.prune_search_log(i64::MAX, u64::MAX).await.unwrap() >= 1);
    assert!(catalog.search_log(&ignored).await.unwrap().is_none());
    assert!(
        catalog.search_log(&clicked).await.unwrap().is_some(),
        "a search with a click is kept past the age limit"
    );
    catalog.prune_search_log(i64::MIN, 0).await.unwrap();
    assert!(
        catalog.search_log(&clicked).await.unwrap().is_none(),
        "the row cap applies to every search"
    );
}

/// Jobs whose claims died are claimed one at a time, after the others; on a catalog whose jobs
/// are all done. Leaves them all done.
async fn suspects_are_claimed_alone(catalog: &dyn Catalog) {
    let batch: Vec<Photo> = (30..34u8).map(|seed| photo(seed, None)).collect();
    for photo in &batch {
        catalog.add_photo(photo).await.unwrap();
    }
    // A claimer takes two jobs and dies: their leases run out.
    let died = catalog
        .claim_jobs(2, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(died.len(), 2);
    std::thread::sleep(Duration::from_millis(20));
    let lease = Duration::from_secs(60);
    let clean = catalog.claim_jobs(10, lease).await.unwrap();
    assert_eq!(clean.len(), 2, "the jobs never claimed come first");
    assert!(clean.iter().all(|j| j.unfinished_claims == 0));
    let mut suspects = Vec::new();
    for _ in 0..2 {
        let alone = catalog.claim_jobs(10, lease).await.unwrap();
        assert_eq!(alone.len(), 1, "a suspect is claimed alone");
        assert_eq!(alone[0].unfinished_claims, 1);
        suspects.push(alone[0].photo.id);
    }
    suspects.sort();
    let mut expected: Vec<PhotoId> = died.iter().map(|j| j.photo.id).collect();
    expected.sort();
    assert_eq!(suspects, expected);
    assert!(catalog.claim_jobs(10, lease).await.unwrap().is_empty());
    catalog
        .requeue(&Requeue::Photos(suspects.clone()))
        .await
        .unwrap();
    let renewed = catalog.claim_jobs(10, lease).await.unwrap();
    assert_eq!(
        renewed.len(),
        2,
        "re-queueing forgets the unfinished claims"
    );
    for job in clean.iter().chain(&renewed) {
        catalog
            .finish_job(job.claim(), &JobOutcome::Done)
            .await
            .unwrap();
    }
    for photo in &batch {
        catalog.remove_photo(photo.id).await.unwrap();
    }
}

/// Paging through the photos' states lists each photo once.
async fn photo_states_contract(catalog: &dyn Catalog) {
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = catalog.photo_states(after, 1).await.unwrap();
        assert!(page.len() <= 1);
        let Some(last) = page.last() else { break };
        after = Some(last.0);
        seen.extend(page);
    }
    let counts = catalog.counts().await.unwrap();
    assert_eq!(seen.len() as u64, counts.photos);
    let mut ids: Vec<PhotoId> = seen.iter().map(|(id, _)| *id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), seen.len(), "each photo once");
    for (id, status) in seen {
        assert_eq!(catalog.photo(id).await.unwrap().unwrap().status, status);
    }
    assert_eq!(
        catalog.photo_states(None, 1000).await.unwrap().len() as u64,
        counts.photos
    );
}

/// Browsing, on a catalog holding `existing` photos.
async fn browse_contract(catalog: &dyn Catalog, existing: &[Photo]) {
    let mut all = existing.to_vec();
    for seed in 10..17u8 {
        let album = ["Trips", "trips", "Home"][usize::from(seed % 3)];
        let mut photo = photo(seed, Some(album));
        if seed >= 14 {
            photo.dated_at = 1_600_000_000; // three photos on the same second
        }
        catalog.add_photo(&photo).await.unwrap();
        all.push(photo);
    }
    let browse_all = |filter: SearchFilter, page: usize| async move {
        let mut seen: Vec<Photo> = Vec::new();
        let mut after = None;
        loop {
            let batch = catalog.browse(&filter, after, page).await.unwrap();
            assert!(batch.len() <= page);
            seen.extend(batch.iter().cloned());
            match batch.last() {
                Some(last) if batch.len() == page => after = Some(BrowseCursor::after(last)),
                _ => return seen,
            }
        }
    };
    let ids = |photos: &[Photo]| {
        let mut ids: Vec<PhotoId> = photos.iter().map(|p| p.id).collect();
        ids.sort();
        ids
    };
    let everything = browse_all(SearchFilter::default(), 2).await;
    assert_eq!(ids(&everything), ids(&all), "every photo exactly once");
    assert!(
        everything
            .windows(2)
            .all(|w| w[0].dated_at >= w[1].dated_at),
        "newest first"
    );
    assert_eq!(everything, browse_all(SearchFilter::default(), 100).await);

    let only = |keep: &dyn Fn(&Photo) -> bool| {
        ids(&all.iter().filter(|p| keep(p)).cloned().collect::<Vec<_>>())
    };
    let trips = SearchFilter {
        album: Some("trips".to_owned()),
        ..SearchFilter::default()
    };
    assert_eq!(
        ids(&browse_all(trips, 2).await),
        only(&|p| p
            .album
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case("trips")))
    );
    let range = SearchFilter {
        from: Some(1_700_000_011),
        until: Some(1_700_000_013),
        camera: Some("test cam".to_owned()),
        ..SearchFilter::default()
    };
    assert_eq!(
        ids(&browse_all(range, 1).await),
        only(&|p| (1_700_000_011..1_700_000_013).contains(&p.dated_at))
    );
    let nikon = SearchFilter {
        camera: Some("nikon".to_owned()),
        ..SearchFilter::default()
    };
    assert!(catalog.browse(&nikon, None, 10).await.unwrap().is_empty());

    let albums = catalog.albums().await.unwrap();
    let summary: Vec<(String, u64)> = albums
        .iter()
        .map(|a| (a.name.to_lowercase(), a.photos))
        .collect();
    let count = |name: &str| {
        all.iter()
            .filter(|p| {
                p.album
                    .as_deref()
                    .is_some_and(|a| a.eq_ignore_ascii_case(name))
            })
            .count() as u64
    };
    assert_eq!(
        summary,
        vec![
            ("home".to_owned(), count("home")),
            ("trips".to_owned(), count("trips"))
        ]
    );
}

/// Staged uploads: recorded, found, listed oldest first by age, ended.
async fn staged_uploads_suite(catalog: &dyn Catalog) {
    let staged = |started_at| StagedUpload {
        id: UploadId::random(),
        bytes: 5_000_000_000,
        started_at,
    };
    let (old, older, fresh) = (staged(1_000), staged(500), staged(9_000));
    assert_eq!(catalog.staged_upload(&old.id).await.unwrap(), None);
    for upload in [&old, &older, &fresh] {
        catalog.stage_upload(upload).await.unwrap();
    }
    catalog.stage_upload(&old).await.unwrap();
    assert_eq!(
        catalog.staged_upload(&old.id).await.unwrap(),
        Some(old.clone())
    );
    assert_eq!(
        catalog.stale_uploads(5_000, 10).await.unwrap(),
        vec![older.clone(), old.clone()]
    );
    assert_eq!(
        catalog.stale_uploads(5_000, 1).await.unwrap(),
        vec![older.clone()]
    );
    catalog.end_staged_upload(&older.id).await.unwrap();
    catalog.end_staged_upload(&older.id).await.unwrap();
    assert_eq!(catalog.staged_upload(&older.id).await.unwrap(), None);
    assert_eq!(
        catalog.stale_uploads(5_000, 10).await.unwrap(),
        vec![old.clone()]
    );
    for upload in [&old, &fresh] {
        catalog.end_staged_upload(&upload.id).await.unwrap();
    }
    assert!(
        catalog
            .stale_uploads(i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The BlobStore contract, on an empty store.
pub async fn blob_store_suite(blobs: &dyn BlobStore) {
    assert_eq!(blobs.get("originals/absent").await.unwrap(), None);
    blobs.put("originals/a", b"first".to_vec()).await.unwrap();
    assert_eq!(
        blobs.get("originals/a").await.unwrap(),
        Some(b"first".to_vec())
    );
    blobs.put("originals/a", b"second".to_vec()).await.unwrap();
    assert_eq!(
        blobs.get("originals/a").await.unwrap(),
        Some(b"second".to_vec())
    );
    let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    blobs.put("originals/large", large.clone()).await.unwrap();
    assert_eq!(
        blobs.get("originals/large").await.unwrap(),
        Some(large.clone())
    );
    // Parts: from any offset, fewer bytes at the end, none past it, always the whole size.
    let total = large.len() as u64;
    for (offset, length) in [(0, 10), (1_000_000, 65_536), (total - 5, 100), (total, 10)] {
        let part = blobs
            .get_part("originals/large", offset, length)
            .await
            .unwrap()
            .expect("the object is there");
        assert_eq!(part.total, total);
        let start = offset as usize;
        let end = (offset + length).min(total) as usize;
        assert_eq!(part.bytes, large[start..end], "{offset}+{length}");
    }
    assert_eq!(
        blobs.get_part("originals/absent", 0, 10).await.unwrap(),
        None
    );
    blobs.delete("originals/a").await.unwrap();
    blobs.delete("originals/a").await.unwrap();
    assert_eq!(blobs.get("originals/a").await.unwrap(), None);
}

fn unit(values: &[f32]) -> Embedding {
    Embedding::normalized(values.to_vec()).unwrap()
}

fn facets(album: Option<&str>, camera: Option<&str>, dated_at: i64) -> Facets {
    Facets {
        album: album.map(str::to_owned),
        camera: camera.map(str::to_owned),
        dated_at,
    }
}

/// The QueryEmbeddingCache contract, on an empty cache that keeps at least three entries.
pub async fn query_embedding_cache_suite(cache: &dyn QueryEmbeddingCache) {
    let clip: EncoderId = "clip:test/a@1".parse().unwrap();
    let other: EncoderId = "clip:test/b@1".parse().unwrap();
    let texts = |list: &[&str]| list.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
    let wanted = texts(&["beach", "dusk", "beach"]);
    assert_eq!(
        cache.cached_embeddings(&clip, &wanted).await.unwrap(),
        vec![None, None, None]
    );
    let beach = unit(&[1.0, 0.0, 0.0, 0.0]);
    cache
        .store_embeddings(&clip, &[("beach".to_owned(), beach.clone())])
        .await
        .unwrap();
    assert_eq!(
        cache.cached_embeddings(&clip, &wanted).await.unwrap(),
        vec![Some(beach.clone()), None, Some(beach)],
        "in the order asked, repeats included"
    );
    let replaced = unit(&[0.0, 1.0, 0.0, 0.0]);
    let dusk = unit(&[0.0, 0.0, 1.0, 0.5]);
    cache
        .store_embeddings(
            &clip,
            &[
                ("beach".to_owned(), replaced.clone()),
                ("dusk".to_owned(), dusk.clone()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        cache.cached_embeddings(&clip, &wanted).await.unwrap(),
        vec![Some(replaced.clone()), Some(dusk), Some(replaced)]
    );
    assert_eq!(
        cache.cached_embeddings(&other, &wanted).await.unwrap(),
        vec![None, None, None],
        "entries belong to their encoder"
    );
    let other_beach = unit(&[0.0, 0.0, 0.0, 1.0]);
    cache
        .store_embeddings(&other, &[("beach".to_owned(), other_beach.clone())])
        .await
        .unwrap();
    assert_eq!(
        cache
            .cached_embeddings(&other, &texts(&["beach"]))
            .await
            .unwrap(),
        vec![Some(other_beach)]
    );
}

/// The VectorIndex contract, on an empty index of dimension 4.
pub async fn vector_index_suite(index: &dyn VectorIndex) {
    assert_eq!(index.dimension(), 4);
    assert_eq!(index.count().await.unwrap(), 0);
    let id = PhotoId::from_u64;
    let points = vec![
        IndexedPhoto {
            id: id(1),
            vector: unit(&[1.0, 0.0, 0.0, 0.0]),
            facets: facets(Some("trips"), Some("pixel 8"), 1_000),
        },
        IndexedPhoto {
            id: id(2),
            vector: unit(&[0.9, 0.1, 0.0, 0.0]),
            facets: facets(Some("home"), Some("canon eos r5"), 2_000),
        },
        IndexedPhoto {
            id: id(3),
            vector: unit(&[0.0, 1.0, 0.0, 0.0]),
            facets: facets(None, None, 3_000),
        },
        IndexedPhoto {
            id: id(u64::MAX),
            vector: unit(&[0.0, 0.0, 1.0, 0.0]),
            facets: facets(Some("trips"), None, 4_000),
        },
    ];
    index.upsert(points.clone()).await.unwrap();
    index.upsert(points[..1].to_vec()).await.unwrap();
    assert_eq!(
        index.count().await.unwrap(),
        4,
        "upsert is idempotent per id"
    );

    let query = unit(&[1.0, 0.05, 0.0, 0.0]);
    let ids =
        |found: Vec<crate::ports::Neighbour>| found.into_iter().map(|n| n.id).collect::<Vec<_>>();
    let all = index
        .nearest(&query, &SearchFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(ids(all.clone())[..3], [id(1), id(2), id(3)]);
    assert!(
        all[0].vector.cosine(&points[0].vector) > 0.9999,
        "stored vectors come back (in the index's number type)"
    );
    assert_eq!(
        ids(index
            .nearest(&query, &SearchFilter::default(), 2)
            .await
            .unwrap()),
        [id(1), id(2)]
    );

    let in_album = SearchFilter {
        album: Some("trips".to_owned()),
        ..SearchFilter::default()
    };
    assert_eq!(
        ids(index.nearest(&query, &in_album, 10).await.unwrap()),
        [id(1), id(u64::MAX)]
    );
    let by_camera = SearchFilter {
        camera: Some("canon".to_owned()),
        ..SearchFilter::default()
    };
    assert_eq!(
        ids(index.nearest(&query, &by_camera, 10).await.unwrap()),
        [id(2)]
    );
    let dated = SearchFilter {
        from: Some(2_000),
        until: Some(4_000),
        ..SearchFilter::default()
    };
    assert_eq!(
        ids(index.nearest(&query, &dated, 10).await.unwrap()),
        [id(2), id(3)]
    );
    let excluding = SearchFilter {
        exclude: vec![id(1), id(3)],
        ..SearchFilter::default()
    };
    assert_eq!(
        ids(index.nearest(&query, &excluding, 10).await.unwrap()),
        [id(2), id(u64::MAX)]
    );

    let mut found = ids(index.vectors(&[id(3), id(9), id(u64::MAX)]).await.unwrap());
    found.sort();
    assert_eq!(found, [id(3), id(u64::MAX)]);
    // Listing pages through every id once, ascending, the largest id included.
    assert_eq!(
        index.ids(None, 10).await.unwrap(),
        [id(1), id(2), id(3), id(u64::MAX)]
    );
    assert_eq!(index.ids(None, 2).await.unwrap(), [id(1), id(2)]);
    assert_eq!(
        index.ids(Some(id(2)), 2).await.unwrap(),
        [id(3), id(u64::MAX)]
    );
    assert!(index.ids(Some(id(u64::MAX)), 2).await.unwrap().is_empty());
    let sample = index.sample(3).await.unwrap();
    assert_eq!(sample.len(), 3);
    assert_eq!(
        sample,
        index.sample(3).await.unwrap(),
        "the sample is stable"
    );

    index.delete(&[id(1), id(42)]).await.unwrap();
    assert_eq!(index.count().await.unwrap(), 3);
    let moved = unit(&[0.0, 0.0, 0.0, 1.0]);
    let sampled = |sample: Vec<Embedding>, vector: &Embedding| {
        sample.iter().any(|s| s.cosine(vector) > 0.999)
    };
    let after_delete = index.sample(10).await.unwrap();
    assert_eq!(after_delete.len(), 3, "the sample follows a delete");
    assert!(!sampled(after_delete, &points[0].vector));
    index
        .upsert(vec![IndexedPhoto {
            vector: moved.clone(),
            ..points[2].clone()
        }])
        .await
        .unwrap();
    assert!(
        sampled(index.sample(10).await.unwrap(), &moved),
        "the sample follows a replaced vector"
    );
    assert_eq!(
        ids(index
            .nearest(&query, &SearchFilter::default(), 1)
            .await
            .unwrap()),
        [id(2)]
    );
    let wrong = Embedding::normalized(vec![1.0; 3]).unwrap();
    assert!(
        index
            .nearest(&wrong, &SearchFilter::default(), 1)
            .await
            .is_err(),
        "a vector of another dimension is refused"
    );
}

/// The TextEmbedder contract: unit vectors of the encoder's dimension, one per text, in order,
/// deterministic.
pub async fn text_embedder_suite(embedder: &dyn TextEmbedder, dimension: usize) {
    let texts = vec![
        "a red sled".to_owned(),
        "beach at dusk".to_owned(),
        String::new(),
    ];
    let vectors = embedder.embed_texts(&texts).await.unwrap();
    assert_eq!(vectors.len(), 3);
    for v in &vectors {
        assert_eq!(v.dimension(), dimension);
        assert!((v.cosine(v) - 1.0).abs() < 1e-4);
    }
    let single = embedder.embed_texts(&texts[1..2]).await.unwrap();
    assert!(
        (single[0].cosine(&vectors[1]) - 1.0).abs() < 1e-4,
        "batching does not change vectors"
    );
    assert!(embedder.embed_texts(&[]).await.unwrap().is_empty());
}

/// The ImageEmbedder contract: one result per image, in order; a bad image fails alone with the
/// decoder's message; thumbnails only when asked for, as JPEGs that fit the size asked for.
/// `good` is an image larger than 48 pixels on its longer side.
pub async fn image_embedder_suite(embedder: &dyn ImageEmbedder, good: Vec<u8>, dimension: usize) {
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 3);
    let images = vec![
        good.clone(),
        b"not an image".to_vec(),
        truncated,
        good.clone(),
    ];
    let results = embedder.embed_images(images, None).await.unwrap();
    assert_eq!(results.len(), 4);
    let first = results[0].as_ref().unwrap();
    assert_eq!(first.vector.dimension(), dimension);
    assert_eq!(first.thumbnail, None, "no thumbnail was asked for");
    assert!(results[1].as_ref().is_err_and(|e| !e.is_empty()));
    assert!(results[2].is_err(), "a truncated image is an error");
    let last = &results[3].as_ref().unwrap().vector;
    assert!((last.cosine(&first.vector) - 1.0).abs() < 1e-4);

    let with_thumbnail = embedder
        .embed_images(vec![good, b"not an image".to_vec()], Some(48))
        .await
        .unwrap();
    assert!(with_thumbnail[1].is_err());
    let image = with_thumbnail[0].as_ref().unwrap();
    assert!((image.vector.cosine(&first.vector) - 1.0).abs() < 1e-4);
    if let Some(jpeg) = &image.thumbnail {
        let facts = crate::photo::inspect(jpeg).unwrap();
        assert_eq!(facts.format, ImageFormat::Jpeg);
        assert_eq!(
            facts.width.max(facts.height),
            48,
            "the longer side fits the size"
        );
    }
}

/// The Reranker contract: one probability per candidate, summing to 1.
pub async fn reranker_suite(reranker: &dyn Reranker) {
    let candidates: Vec<RerankCandidate> = (1..=3u8)
        .map(|seed| RerankCandidate {
            photo: photo(seed, None),
            score: f32::from(seed),
        })
        .collect();
    let relevance = reranker.rerank("a red sled", &candidates).await.unwrap();
    // None scored (a reranker without a model), or the first ones, each with a probability and a
    // share of one.
    let scored = relevance.probabilities.len();
    assert!(scored <= candidates.len());
    assert_eq!(relevance.shares.len(), scored);
    assert!(
        relevance
            .probabilities
            .iter()
            .all(|p| (0.0..=1.0).contains(p))
    );
    if scored > 0 {
        let total: f32 = relevance.shares.iter().sum();
        assert!((total - 1.0).abs() < 1e-4, "{relevance:?}");
    }
}

/// The LearningStore contract, on an empty catalog that is also `store`.
pub async fn learning_store_suite(catalog: &dyn Catalog, store: &dyn LearningStore) {
    let encoder: EncoderId = "clip:test/learning@1".parse().unwrap();
    let other: EncoderId = "clip:test/learning-other@1".parse().unwrap();
    catalog.register_encoder(&encoder, 4).await.unwrap();
    catalog.register_encoder(&other, 4).await.unwrap();
    let shown: Vec<Photo> = (40..44).map(|seed| photo(seed, None)).collect();
    for p in &shown {
        catalog.add_photo(p).await.unwrap();
    }
    assert_eq!(store.click_count().await.unwrap(), 0);
    // First pages: one as ranked (clicked at 1), two swapped with rank 3 (one clicked there),
    // one of another encoder, and a second page (no rank 1), clicked.
    let pages: [(&EncoderId, Option<u32>, u32, Option<u32>); 5] = [
        (&encoder, None, 1, Some(1)),
        (&encoder, Some(3), 1, Some(3)),
        (&encoder, Some(3), 1, None),
        (&other, None, 1, Some(1)),
        (&encoder, None, 21, Some(22)),
    ];
    let mut ids = Vec::new();
    for (encoder, swapped_with, first_rank, click) in pages {
        let query_id = QueryId::random();
        let shown: Vec<PhotoId> = shown.iter().map(|p| p.id).collect();
        let log = sled_search(query_id, encoder, swapped_with, first_rank, &shown);
        catalog.log_search(&log).await.unwrap();
        if let Some(rank) = click {
            catalog
                .record_click(&query_id, rank)
                .await
                .unwrap()
                .unwrap();
        }
        ids.push(query_id);
    }
    assert_eq!(store.click_count().await.unwrap(), 4);
    let mut counts = store.swap_counts(&encoder).await.unwrap();
    counts.sort_by_key(|c| c.swapped_with);
    assert_eq!(
        counts,
        vec![
            SwapCounts {
                swapped_with: None,
                searches: 1,
                clicked: 1
            },
            SwapCounts {
                swapped_with: Some(3),
                searches: 2,
                clicked: 1
            },
        ]
    );
    let clicked = store.clicked_searches(&encoder, 10).await.unwrap();
    let mut found: Vec<QueryId> = clicked.iter().map(|e| e.search.query_id).collect();
    found.sort_by_key(ToString::to_string);
    let mut expected = vec![ids[0], ids[1], ids[4]];
    expected.sort_by_key(ToString::to_string);
    assert_eq!(found, expected, "the clicked searches of the encoder");
    assert!(clicked.iter().all(|e| e.results.iter().any(|r| r.clicked)));
    assert_eq!(store.clicked_searches(&encoder, 1).await.unwrap().len(), 1);

    // One training run at a time per learner; a lease that ran out can be taken over.
    let (query, vlm) = (Learner::QueryAdapter, Learner::Reranker);
    assert_eq!(store.clicks_at_last_training(query).await.unwrap(), None);
    let minute = Duration::from_secs(60);
    assert!(store.claim_training(query, "a", minute).await.unwrap());
    assert!(!store.claim_training(query, "b", minute).await.unwrap());
    store.release_training(query, "b").await.unwrap();
    assert!(!store.claim_training(query, "b", minute).await.unwrap());
    assert!(
        store.claim_training(vlm, "b", minute).await.unwrap(),
        "each learner has its own lease"
    );
    store.release_training(vlm, "b").await.unwrap();
    store.release_training(query, "a").await.unwrap();
    assert!(store.claim_training(query, "b", minute).await.unwrap());
    store.release_training(query, "b").await.unwrap();
    assert!(
        store
            .claim_training(query, "a", Duration::ZERO)
            .await
            .unwrap()
    );
    assert!(store.claim_training(query, "b", minute).await.unwrap());
    store.release_training(query, "b").await.unwrap();
    assert_eq!(store.clicks_at_last_training(query).await.unwrap(), Some(4));
    assert_eq!(store.clicks_at_last_training(vlm).await.unwrap(), Some(4));

    // Reranker adapters: versions count up per model, the newest recorded is active, any can be
    // activated again, and none is the model alone.
    let (model, another) = ("Qwen/Qwen2-VL-2B-Instruct", "/models/qwen2-vl-tiny");
    assert_eq!(store.active_reranker_adapter(model).await.unwrap(), None);
    let first = store
        .store_reranker_adapter(model, "reranker-adapters/a/1", &Evaluation::default(), 10)
        .await
        .unwrap();
    assert_eq!(
        (first.version, first.blobs.as_str()),
        (1, "reranker-adapters/a/1")
    );
    let second = store
        .store_reranker_adapter(model, "reranker-adapters/a/2", &Evaluation::default(), 20)
        .await
        .unwrap();
    assert_eq!(second.version, 2);
    let elsewhere = store
        .store_reranker_adapter(another, "reranker-adapters/b/1", &Evaluation::default(), 30)
        .await
        .unwrap();
    assert_eq!(elsewhere.version, 1);
    assert_eq!(
        store.active_reranker_adapter(model).await.unwrap(),
        Some(second.clone())
    );
    assert!(
        store
            .activate_reranker_adapter(model, Some(1))
            .await
            .unwrap()
    );
    assert_eq!(
        store.active_reranker_adapter(model).await.unwrap(),
        Some(first.clone())
    );
    assert!(
        !store
            .activate_reranker_adapter(model, Some(7))
            .await
            .unwrap()
    );
    assert_eq!(
        store.reranker_adapter_versions(model).await.unwrap(),
        vec![second, first]
    );
    assert!(store.activate_reranker_adapter(model, None).await.unwrap());
    assert_eq!(store.active_reranker_adapter(model).await.unwrap(), None);
    assert_eq!(
        store.active_reranker_adapter(another).await.unwrap(),
        Some(elsewhere)
    );

    // Versions count up per encoder; the newest stored is active; any can be activated again.
    assert_eq!(store.active_adapter(&encoder).await.unwrap(), None);
    let first = QueryAdapter::new(4, 2, 1.0, 1);
    let second = QueryAdapter::new(4, 2, 0.5, 2);
    let evaluation = Evaluation::default();
    let stored = store
        .store_adapter(&encoder, &first, &evaluation, 100)
        .await
        .unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(
        store
            .store_adapter(&encoder, &second, &evaluation, 200)
            .await
            .unwrap()
            .version,
        2
    );
    let elsewhere = store
        .store_adapter(&other, &first, &evaluation, 300)
        .await
        .unwrap();
    assert_eq!(elsewhere.version, 1);
    let active = store.active_adapter(&encoder).await.unwrap().unwrap();
    assert_eq!((active.version, &active.adapter), (2, &second));
    assert!(store.activate_adapter(&encoder, Some(1)).await.unwrap());
    assert_eq!(store.active_adapter(&encoder).await.unwrap(), Some(stored));
    assert!(!store.activate_adapter(&encoder, Some(9)).await.unwrap());
    assert_eq!(
        store
            .active_adapter(&encoder)
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    let versions: Vec<u32> = store
        .adapter_versions(&encoder)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, vec![2, 1]);
    assert!(store.activate_adapter(&encoder, None).await.unwrap());
    assert_eq!(store.active_adapter(&encoder).await.unwrap(), None);
    assert_eq!(
        store.active_adapter(&other).await.unwrap().unwrap().version,
        1
    );
}

/// A reranker learner with scripted scores: its new adapters rank the held-out clicked photos
/// first (`better`) or last, and the active one does the opposite. It records what it trained on
/// and which adapters it was asked to put on.
#[derive(Default)]
pub struct ScriptedLearner {
    pub better: std::sync::atomic::AtomicBool,
    pub trained_on: std::sync::Mutex<Vec<RerankerExample>>,
    pub used: std::sync::Mutex<Vec<Option<(u32, AdapterFiles)>>>,
}

impl ScriptedLearner {
    const MODEL: &'static str = "test/scripted-vlm";

    fn files(marker: u8) -> AdapterFiles {
        AdapterFiles(
            [
                ("adapter_config.json".to_owned(), b"{\"r\": 8}".to_vec()),
                ("adapter_model.safetensors".to_owned(), vec![marker; 16]),
            ]
            .into(),
        )
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl RerankerLearner for ScriptedLearner {
    fn model(&self) -> &str {
        Self::MODEL
    }

    async fn train(
        &self,
        training: &[RerankerExample],
        held_out: &[RerankerExample],
        _active: Option<&AdapterFiles>,
        _settings: &RerankerTraining,
    ) -> Result<TrainedAdapter, PortError> {
        self.trained_on.lock().unwrap().extend_from_slice(training);
        let better = self.better.load(std::sync::atomic::Ordering::SeqCst);
        let score = |relevant: bool, good: bool| if relevant == good { 0.9 } else { 0.1 };
        Ok(TrainedAdapter {
            files: Self::files(u8::from(better)),
            held_out: held_out.iter().map(|e| score(e.relevant, better)).collect(),
            held_out_before: held_out
                .iter()
                .map(|e| score(e.relevant, !better))
                .collect(),
        })
    }

    async fn use_adapter(&self, adapter: Option<(u32, &AdapterFiles)>) -> Result<(), PortError> {
        self.used
            .lock()
            .unwrap()
            .push(adapter.map(|(version, files)| (version, files.clone())));
        Ok(())
    }
}

/// The reranker's learning loop over a store and a blob store (empty): what it trains on, the gate,
/// where the adapters go, single flight, and following the active version.
pub async fn reranker_loop_suite(
    catalog: &dyn Catalog,
    store: &dyn LearningStore,
    blobs: &dyn BlobStore,
) {
    let encoder: EncoderId = "clip:test/reranker-loop@1".parse().unwrap();
    catalog.register_encoder(&encoder, 4).await.unwrap();
    let shown: Vec<Photo> = (60..66).map(|seed| photo(seed, None)).collect();
    for (seed, p) in (60u8..).zip(&shown) {
        catalog.add_photo(p).await.unwrap();
        blobs
            .put(&p.origin.blob_key(), vec![seed; 32])
            .await
            .unwrap();
    }
    let ids: Vec<PhotoId> = shown.iter().map(|p| p.id).collect();
    // Ten searches for "sled": the fourth result clicked each time.
    for _ in 0..10 {
        let query_id = QueryId::random();
        catalog
            .log_search(&sled_search(query_id, &encoder, None, 1, &ids))
            .await
            .unwrap();
        catalog.record_click(&query_id, 4).await.unwrap().unwrap();
    }
    let learner = ScriptedLearner::default();
    learner
        .better
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let ports = RerankerLoop {
        store,
        catalog,
        blobs,
        learner: &learner,
        encoder: &encoder,
    };
    let settings = LearningSettings {
        min_searches: 5,
        held_out_share: 0.3,
        ..LearningSettings::default()
    };
    let too_many = LearningSettings {
        min_searches: 11,
        ..settings.clone()
    };
    assert!(matches!(
        retrain_reranker(&ports, &too_many, "a", 100).await.unwrap(),
        TrainingOutcome::NotEnoughClicks {
            searches: 10,
            needed: 11
        }
    ));

    // Pairs under the click model, with the photos' bytes: the click a positive, the three shown
    // above it negatives, nothing below it.
    let shipped = retrain_reranker(&ports, &settings, "a", 200).await.unwrap();
    let TrainingOutcome::Shipped { version, .. } = shipped else {
        panic!("a better adapter ships: {shipped:?}");
    };
    assert_eq!(version, 1);
    let trained_on = learner.trained_on.lock().unwrap().clone();
    assert_eq!(
        trained_on.len(),
        7 * 4,
        "seven training searches of four pairs"
    );
    assert!(trained_on.iter().all(|e| e.query == "sled"));
    let clicked: Vec<&RerankerExample> = trained_on.iter().filter(|e| e.relevant).collect();
    assert_eq!(clicked.len(), 7);
    assert!(
        clicked.iter().all(|e| *e.image == [63u8; 32]),
        "the clicked photo's bytes"
    );
    let active = store
        .active_reranker_adapter(ScriptedLearner::MODEL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(active.version, 1);
    assert_eq!(active.trained_at, 200);
    assert!(active.evaluation.trained.ndcg_at_10 > active.evaluation.previous.ndcg_at_10);
    assert_eq!(
        reranker_adapter_files(blobs, &active).await.unwrap(),
        ScriptedLearner::files(1),
        "the files are in the blob store"
    );

    // A process following the catalog puts it on once.
    let held = follow_active_reranker_adapter(store, blobs, &learner, None)
        .await
        .unwrap();
    assert_eq!(held.as_ref().map(|a| a.version), Some(1));
    follow_active_reranker_adapter(store, blobs, &learner, Some(1))
        .await
        .unwrap();
    assert_eq!(
        *learner.used.lock().unwrap(),
        vec![Some((1, ScriptedLearner::files(1)))]
    );

    // A worse adapter is not kept.
    learner
        .better
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let rejected = retrain_reranker(&ports, &settings, "a", 300).await.unwrap();
    assert!(
        matches!(rejected, TrainingOutcome::Rejected { .. }),
        "{rejected:?}"
    );
    let versions = store
        .reranker_adapter_versions(ScriptedLearner::MODEL)
        .await
        .unwrap();
    assert_eq!(versions.len(), 1);

    // One run at a time: another holder's lease makes a trigger return at once.
    let lease = Duration::from_secs(60);
    assert!(
        store
            .claim_training(Learner::Reranker, "elsewhere", lease)
            .await
            .unwrap()
    );
    assert_eq!(
        retrain_reranker(&ports, &settings, "a", 400).await.unwrap(),
        TrainingOutcome::AlreadyRunning
    );
    store
        .release_training(Learner::Reranker, "elsewhere")
        .await
        .unwrap();

    // The model alone, chosen by hand, is followed too.
    assert!(
        store
            .activate_reranker_adapter(ScriptedLearner::MODEL, None)
            .await
            .unwrap()
    );
    assert_eq!(
        follow_active_reranker_adapter(store, blobs, &learner, Some(1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(learner.used.lock().unwrap().last(), Some(&None));
}
