//! The flows — upload, indexing, search, feedback — written once against the ports. Every shape of
//! Glimpse (embedded binary, worker pool, edge functions) runs these functions with its adapters.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::browse::{BrowseCursor, BrowsePage, MAX_PAGE};
use crate::learning::{AdapterVersion, ExplorationSettings};
use crate::photo::IndexedMediaType;
use crate::photo::{
    self, NewPhotoDetails, Origin, Photo, PhotoId, PhotoStatus, RejectedImage, StagedUpload,
    UploadId,
};
use crate::ports::{
    Added, BlobStore, Catalog, CatalogCounts, ClaimedJob, IndexedPhoto, JobClaim, JobOutcome,
    PortError, Relevance, Requeue, RerankCandidate, Reranker, SearchFilter, TextEmbedder,
    VectorIndex,
};
use crate::query::{self, Date, ParsedQuery, QueryError};
use crate::search::{
    LOWEST_MIN_SCORE, LoggedResult, LoggedSearch, MAX_DEPTH, MAX_MIN_SCORE, MAX_TOP_K, QueryId,
    RERANK_CANDIDATES, RankedBy, SearchLog, SearchRequest, SearchResponse, SearchResult,
    StageTimings,
};
use crate::{Embedding, ports::ImageEmbedder};

/// Why a flow did not complete, named for what the caller should do.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FlowError {
    /// The query does not parse: show the position and hint.
    #[error("{0}")]
    InvalidQuery(#[from] QueryError),
    /// The upload is not an acceptable image.
    #[error("{0}")]
    RejectedImage(#[from] RejectedImage),
    /// Some other part of the request is wrong; the message says which.
    #[error("{0}")]
    BadRequest(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the state of things; the message says what to do instead.
    #[error("{0}")]
    Conflict(String),
    /// A backend is unavailable: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or corrupt state.
    #[error("{0}")]
    Internal(String),
}

impl From<PortError> for FlowError {
    fn from(error: PortError) -> Self {
        match error {
            PortError::Unavailable(message) => Self::Unavailable(message),
            PortError::Rejected(message) => Self::BadRequest(message),
            PortError::Internal(message) => Self::Internal(message),
        }
    }
}

/// The adapters a search runs on.
#[derive(Clone, Copy)]
pub struct Ports<'a> {
    /// Photos, jobs, search log.
    pub catalog: &'a dyn Catalog,
    /// Vectors.
    pub index: &'a dyn VectorIndex,
    /// Query embedding.
    pub text: &'a dyn TextEmbedder,
    /// Reranking.
    pub reranker: &'a dyn Reranker,
    /// The query adapter learned from clicks, if one is active (used for its encoder only).
    pub adapter: Option<&'a AdapterVersion>,
    /// Which searches show a swapped first result, to learn how often each rank is looked at.
    pub exploration: ExplorationSettings,
}

/// Accepts uploaded bytes: checks they are an image Glimpse can index (magic bytes, header, pixel
/// count), stores the original, and adds the photo with its feature job. Identical bytes give the
/// existing photo (`created == false`) and store nothing.
pub async fn upload(
    catalog: &dyn Catalog,
    blobs: &dyn BlobStore,
    bytes: Vec<u8>,
    album: Option<String>,
    now: i64,
) -> Result<Added, FlowError> {
    let album = album_name(album)?;
    let facts = photo::inspect(&bytes)?;
    if let Some(existing) = catalog.photo(facts.id).await? {
        return Ok(Added {
            id: existing.id,
            created: false,
        });
    }
    let origin = Origin::Upload(Origin::upload_key(facts.id));
    let details = NewPhotoDetails {
        origin: origin.clone(),
        bytes: bytes.len() as u64,
        album,
        modified_at: None,
    };
    let photo = Photo::new(facts, details, now);
    blobs.put(&origin.blob_key(), bytes).await?;
    Ok(catalog.add_photo(&photo).await?)
}

/// The album a request names: none when blank; a 400 for a name with a NUL character (no catalog
/// keeps one).
fn album_name(album: Option<String>) -> Result<Option<String>, FlowError> {
    match album {
        Some(name) if name.contains('\0') => Err(FlowError::BadRequest(
            "the album name has a NUL character: remove it".to_owned(),
        )),
        album => Ok(album.filter(|a| !a.trim().is_empty())),
    }
}

/// What a client declares when it starts an upload straight to storage; the storage URL it is
/// handed binds both.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadDeclaration {
    /// The original's size in bytes, from 1 to the deployment's largest upload.
    #[serde(deserialize_with = "crate::whole_number::deserialize")]
    #[schemars(range(min = 1))]
    pub bytes: u64,
    /// Its media type, one of the formats Glimpse indexes (`image/jpeg`, …), as written there.
    #[schemars(with = "IndexedMediaType")]
    pub content_type: String,
}

/// Starts an upload straight to storage: checks what the client declares (a size from 1 byte to
/// `max_bytes`, a media type of a format Glimpse indexes) and records the staged upload, to be
/// completed with [`complete_upload`] or expired by [`expire_staged_uploads`]. Returns the
/// upload and the declared format.
pub async fn start_upload(
    catalog: &dyn Catalog,
    declared: &UploadDeclaration,
    max_bytes: u64,
    now: i64,
) -> Result<(StagedUpload, photo::ImageFormat), FlowError> {
    let format = photo::ImageFormat::ALL
        .into_iter()
        .find(|format| format.media_type() == declared.content_type)
        .ok_or_else(|| {
            let accepted: Vec<&str> = photo::ImageFormat::ALL
                .iter()
                .map(|f| f.media_type())
                .collect();
            FlowError::BadRequest(format!(
                "content_type `{}` is not an image type Glimpse indexes: declare one of {}",
                declared.content_type.chars().take(100).collect::<String>(),
                accepted.join(", ")
            ))
        })?;
    if declared.bytes == 0 || declared.bytes > max_bytes {
        return Err(FlowError::BadRequest(format!(
            "bytes must be the original's size, from 1 to {max_bytes} (the largest upload this \
             deployment takes), not {}",
            declared.bytes
        )));
    }
    let upload = StagedUpload {
        id: UploadId::random(),
        bytes: declared.bytes,
        started_at: now,
    };
    catalog.stage_upload(&upload).await?;
    Ok((upload, format))
}

/// How much of a staged original [`complete_upload`] reads at a time.
const UPLOAD_PART_BYTES: u64 = photo::HEAD_BYTES as u64;

/// Completes an upload the client put straight into storage under `upload`'s staged key: reads
/// the bytes part by part (memory stays bounded whatever their size), checks them like
/// [`upload`] and adds the photo, whose original stays where it is. Identical bytes already in
/// the catalog give the existing photo; then, and when the bytes are refused, the staged copy is
/// removed. An upload that was never started (or expired) is a `NotFound`; one whose bytes are
/// not there yet stays staged, so the client can still put them.
pub async fn complete_upload(
    catalog: &dyn Catalog,
    blobs: &dyn BlobStore,
    upload: UploadId,
    album: Option<String>,
    now: i64,
) -> Result<Added, FlowError> {
    // A bad album name is refused before anything is read, and the upload waits for a retry.
    let album = album_name(album)?;
    let staged = catalog.staged_upload(&upload).await?.ok_or_else(|| {
        FlowError::NotFound(format!(
            "there is no upload {upload} waiting: it was completed, or it expired, or it never \
             started; start again with POST /api/uploads"
        ))
    })?;
    let key = upload.staged_key();
    let read = read_in_parts(blobs, &key).await?.ok_or_else(|| {
        FlowError::NotFound(format!(
            "nothing was uploaded for {upload}: PUT the file to the upload's URL first (it is \
             valid for a limited time; start again with POST /api/uploads when it has expired)"
        ))
    })?;
    let checked = if read.total == staged.bytes {
        photo::inspect_head(&read.head, read.sha256).map_err(FlowError::from)
    } else {
        Err(FlowError::BadRequest(format!(
            "the stored original has {} bytes, not the {} declared",
            read.total, staged.bytes
        )))
    };
    let facts = match checked {
        Ok(facts) => facts,
        Err(refused) => {
            blobs.delete(&key).await?;
            catalog.end_staged_upload(&upload).await?;
            return Err(refused);
        }
    };
    let details = NewPhotoDetails {
        origin: Origin::Upload(key.clone()),
        bytes: read.total,
        album,
        modified_at: None,
    };
    // Ended before the photo is added, so that an expiry can never remove an original a photo
    // holds: a crash in between leaves a stray staged object at worst, never a lost photo.
    catalog.end_staged_upload(&upload).await?;
    let added = match catalog.add_photo(&Photo::new(facts, details, now)).await {
        Ok(added) => added,
        Err(error) => {
            // Staged again, so that the client can retry the completion.
            catalog.stage_upload(&staged).await?;
            return Err(error.into());
        }
    };
    if !added.created {
        blobs.delete(&key).await?;
    }
    Ok(added)
}

/// A stored object read part by part: its start, its digest and its size.
struct ReadInParts {
    head: Vec<u8>,
    sha256: [u8; 32],
    total: u64,
}

async fn read_in_parts(blobs: &dyn BlobStore, key: &str) -> Result<Option<ReadInParts>, FlowError> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut offset = 0u64;
    loop {
        let Some(part) = blobs.get_part(key, offset, UPLOAD_PART_BYTES).await? else {
            // Gone between two parts: as good as never there.
            return Ok(None);
        };
        hasher.update(&part.bytes);
        if head.is_empty() {
            head = part.bytes.clone();
        }
        offset += part.bytes.len() as u64;
        if part.bytes.is_empty() || offset >= part.total {
            return Ok(Some(ReadInParts {
                head,
                sha256: hasher.finalize().into(),
                total: part.total,
            }));
        }
    }
}

/// Removes uploads started more than `max_age` before `now` that were never completed: their
/// staged originals, if any were put, and their records. Returns how many expired.
pub async fn expire_staged_uploads(
    catalog: &dyn Catalog,
    blobs: &dyn BlobStore,
    now: i64,
    max_age: Duration,
) -> Result<u64, FlowError> {
    let before = now.saturating_sub(i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX));
    let mut expired = 0;
    loop {
        let stale = catalog.stale_uploads(before, 100).await?;
        if stale.is_empty() {
            return Ok(expired);
        }
        for upload in stale {
            blobs.delete(&upload.id.staged_key()).await?;
            catalog.end_staged_upload(&upload.id).await?;
            expired += 1;
        }
    }
}

/// Removes a photo from the catalog and the index, its thumbnail, and its stored original if it
/// was uploaded. Library photos cannot be deleted through the API: their file is the user's, and
/// a rescan would bring them back.
pub async fn delete_photo(
    catalog: &dyn Catalog,
    blobs: &dyn BlobStore,
    index: &dyn VectorIndex,
    id: PhotoId,
    allow_library: bool,
) -> Result<Photo, FlowError> {
    let photo = catalog
        .photo(id)
        .await?
        .ok_or_else(|| FlowError::NotFound(format!("there is no photo {id}")))?;
    if let Origin::Library(path) = &photo.origin
        && !allow_library
    {
        return Err(FlowError::Conflict(format!(
            "photo {id} is the file `{path}` in your library folder; delete or move that \
             file and Glimpse will drop it from the index"
        )));
    }
    blobs.delete(&id.thumbnail_key()).await?;
    index.delete(&[id]).await?;
    catalog.remove_photo(id).await?;
    if let Origin::Upload(key) = &photo.origin {
        blobs.delete(key).await?;
    }
    Ok(photo)
}

/// How indexing retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Claims before a job is failed for good.
    pub max_attempts: u32,
    /// Back-off after the first failure; doubled after each further one.
    pub first_backoff: Duration,
    /// The longest back-off.
    pub max_backoff: Duration,
    /// How long a claim holds a job before another worker may take it.
    pub lease: Duration,
    /// Claims that never ended (the indexer died or hung holding the job) before the photo is
    /// failed as one that crashes the indexer.
    pub max_unfinished_claims: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            first_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            lease: Duration::from_secs(300),
            max_unfinished_claims: 3,
        }
    }
}

impl RetryPolicy {
    /// A backend that is unavailable (an outage: storage or index down) is waited out however
    /// long it lasts, so an outage never fails photos for good; other errors fail the job after
    /// `max_attempts` claims.
    fn after_error(&self, previous_attempts: u32, error: &PortError) -> JobOutcome {
        let attempts = previous_attempts + 1;
        let backoff = self
            .first_backoff
            .saturating_mul(2u32.saturating_pow(previous_attempts.min(16)))
            .min(self.max_backoff);
        match error {
            PortError::Unavailable(_) => JobOutcome::Retry {
                error: error.to_string(),
                after: backoff,
            },
            PortError::Rejected(_) | PortError::Internal(_) if attempts >= self.max_attempts => {
                JobOutcome::Failed {
                    error: format!("{error} (gave up after {attempts} attempts)"),
                }
            }
            PortError::Rejected(_) | PortError::Internal(_) => JobOutcome::Retry {
                error: error.to_string(),
                after: backoff,
            },
        }
    }
}

/// What one indexing round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexRound {
    /// Jobs claimed.
    pub claimed: usize,
    /// Photos now indexed.
    pub indexed: usize,
    /// Jobs to run again later.
    pub retried: usize,
    /// Photos failed for good.
    pub failed: usize,
    /// Jobs whose lease ran out before they finished (another claimer has them now).
    pub lost: usize,
    /// Nothing was claimed because the embedder's encoder is not the catalog's active one (the
    /// pool was switched to another encoder, or not yet to this one).
    pub inactive_encoder: bool,
    /// Why the blob store refused a thumbnail made while indexing, if it refused one (such a
    /// photo's thumbnail is made when it is first shown instead).
    pub thumbnail_refused: Option<String>,
}

/// The start of the error of a photo failed because claims of its job never ended.
pub const CRASHED_THE_INDEXER: &str = "crashed the indexer";

/// A claimed job's end: its claim, its photo and how it ended.
type Ended = (JobClaim, PhotoId, JobOutcome);

fn ended(job: &ClaimedJob, outcome: JobOutcome) -> Ended {
    (job.claim(), job.photo.id, outcome)
}

/// One round of feature extraction, for a worker of the catalog's active encoder (another claims
/// nothing: its vectors would go to a collection nobody searches): claims up to `batch` jobs,
/// reads their originals, embeds them (the adapter overlaps decoding with encoding), stores the
/// vectors, then ends every job. An image the decoder rejects fails at once with the decoder's
/// message (retrying cannot help); a photo whose claims keep dying with the indexer fails as
/// [`CRASHED_THE_INDEXER`]; outages and a library file that is not where the catalog says are
/// waited out; other errors are retried with back-off up to the policy's attempts.
pub async fn index_round(
    catalog: &dyn Catalog,
    blobs: &dyn BlobStore,
    embedder: &dyn ImageEmbedder,
    index: &dyn VectorIndex,
    batch: usize,
    policy: &RetryPolicy,
) -> Result<IndexRound, FlowError> {
    if embedder.encoder() != index.encoder() {
        return Err(FlowError::Internal(format!(
            "the image encoder {} does not match the index's encoder {}",
            embedder.encoder(),
            index.encoder()
        )));
    }
    if catalog.active_encoder().await?.as_ref() != Some(embedder.encoder()) {
        return Ok(IndexRound {
            inactive_encoder: true,
            ..IndexRound::default()
        });
    }
    let claimed = catalog.claim_jobs(batch, policy.lease).await?;
    let mut round = IndexRound {
        claimed: claimed.len(),
        ..IndexRound::default()
    };
    let mut outcomes: Vec<Ended> = Vec::with_capacity(claimed.len());
    let (crashed, jobs): (Vec<_>, Vec<_>) = claimed
        .into_iter()
        .partition(|job| job.unfinished_claims >= policy.max_unfinished_claims);
    for job in crashed {
        let error = format!(
            "{CRASHED_THE_INDEXER} {} times (an image that exhausts memory or trips a decoder \
             bug?); replace or remove the file, or retry it once the cause is fixed",
            job.unfinished_claims
        );
        outcomes.push(ended(&job, JobOutcome::Failed { error }));
    }
    let mut readable = Vec::with_capacity(jobs.len());
    let mut images = Vec::with_capacity(jobs.len());
    // All originals are requested at once: with object storage, one after another would leave
    // the encoder idle for a round trip per photo.
    let keys: Vec<String> = jobs.iter().map(|job| job.photo.origin.blob_key()).collect();
    let fetched = futures_util::future::join_all(keys.iter().map(|key| blobs.get(key))).await;
    for (job, original) in jobs.into_iter().zip(fetched) {
        let outcome = match original {
            Ok(Some(bytes)) => {
                images.push(bytes);
                readable.push(job);
                continue;
            }
            // A library file that is not where the catalog says was moved or deleted, or its disk
            // is not mounted: the next scan finds it again or removes the photo, so wait.
            Ok(None) if matches!(job.photo.origin, Origin::Library(_)) => {
                let missing = PortError::Unavailable(
                    "the file is not in the library folder (moved, deleted, or its disk is not \
                     mounted); waiting for the next library scan"
                        .to_owned(),
                );
                policy.after_error(job.previous_attempts, &missing)
            }
            Ok(None) => JobOutcome::Failed {
                error: "the original is missing from storage".to_owned(),
            },
            Err(error) => policy.after_error(job.previous_attempts, &error),
        };
        outcomes.push(ended(&job, outcome));
    }
    if !readable.is_empty() {
        // Thumbnails come from the decode the embedding needs: a photo's first view needs no
        // second decode of its original.
        match embedder
            .embed_images(images, Some(photo::THUMBNAIL_SIZE))
            .await
        {
            Ok(vectors) => {
                let mut points = Vec::with_capacity(vectors.len());
                let mut embedded = Vec::with_capacity(vectors.len());
                for (job, vector) in readable.into_iter().zip(vectors) {
                    match vector {
                        Ok(image) => {
                            if let Some(jpeg) = image.thumbnail
                                && let Err(error) =
                                    blobs.put(&job.photo.id.thumbnail_key(), jpeg).await
                            {
                                round.thumbnail_refused = Some(error.to_string());
                            }
                            points.push(IndexedPhoto {
                                id: job.photo.id,
                                vector: image.vector,
                                facets: job.photo.facets(),
                            });
                            embedded.push(job);
                        }
                        Err(error) => outcomes.push(ended(
                            &job,
                            JobOutcome::Failed {
                                error: format!("the image cannot be decoded: {error}"),
                            },
                        )),
                    }
                }
                let stored = if points.is_empty() {
                    Ok(())
                } else {
                    index.upsert(points).await
                };
                for job in embedded {
                    let outcome = match &stored {
                        Ok(()) => JobOutcome::Done,
                        Err(error) => policy.after_error(job.previous_attempts, error),
                    };
                    outcomes.push(ended(&job, outcome));
                }
            }
            Err(error) => {
                for job in readable {
                    let outcome = policy.after_error(job.previous_attempts, &error);
                    outcomes.push(ended(&job, outcome));
                }
            }
        }
    }
    for (claim, photo, outcome) in &outcomes {
        if !catalog.finish_job(*claim, outcome).await? {
            // A photo removed while its vector was being written must not leave the vector
            // behind (a result without a photo); one whose claim was taken over keeps it.
            if *outcome == JobOutcome::Done && catalog.photo(*photo).await?.is_none() {
                index.delete(&[*photo]).await?;
                blobs.delete(&photo.thumbnail_key()).await?;
            }
            round.lost += 1;
            continue;
        }
        match outcome {
            JobOutcome::Done => round.indexed += 1,
            JobOutcome::Retry { .. } => round.retried += 1,
            JobOutcome::Failed { .. } => round.failed += 1,
        }
    }
    Ok(round)
}

/// Puts a failed photo back in the indexing queue (after its cause was fixed).
pub async fn retry_photo(catalog: &dyn Catalog, id: PhotoId) -> Result<Photo, FlowError> {
    let photo = catalog
        .photo(id)
        .await?
        .ok_or_else(|| FlowError::NotFound(format!("there is no photo {id}")))?;
    if photo.status != PhotoStatus::Failed {
        return Err(FlowError::Conflict(format!(
            "photo {id} is {}, not failed: only failed photos are retried",
            photo.status.as_str()
        )));
    }
    catalog.requeue(&Requeue::Photos(vec![id])).await?;
    Ok(catalog.photo(id).await?.unwrap_or(photo))
}

/// How long the search log keeps searches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRetention {
    /// Searches without a click older than this many days are forgotten (clicked ones teach the
    /// ranking).
    pub days: u64,
    /// At most this many searches are kept, clicked or not (the newest).
    pub searches: u64,
}

impl LogRetention {
    /// How often a running shape prunes its search log.
    pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
}

/// Forgets what `retention` says the search log no longer keeps, as of `now` (seconds since
/// 1970); returns how many searches went.
pub async fn prune_search_log(
    catalog: &dyn Catalog,
    retention: LogRetention,
    now: i64,
) -> Result<u64, FlowError> {
    let age = i64::try_from(retention.days.saturating_mul(86_400)).unwrap_or(i64::MAX);
    Ok(catalog
        .prune_search_log(now.saturating_sub(age), retention.searches)
        .await?)
}

/// How far catalog and index disagreed, and what was done about it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    /// Photos in the catalog.
    pub photos: u64,
    /// Of those, marked indexed.
    pub indexed: u64,
    /// Vectors in the index.
    pub vectors: u64,
    /// Photos marked indexed whose vector is missing (re-queued when repairing).
    pub missing_vectors: u64,
    /// Vectors of photos the catalog does not hold (removed when repairing).
    pub orphan_vectors: u64,
    /// Whether the differences were repaired.
    pub repaired: bool,
}

impl Reconciliation {
    /// Whether catalog and index agree (every indexed photo has its vector, and no vector is
    /// without its photo).
    pub fn consistent(&self) -> bool {
        self.missing_vectors == 0 && self.orphan_vectors == 0
    }
}

/// Ids fetched per page while reconciling.
const RECONCILE_PAGE: usize = 10_000;

/// [`reconcile`] when the counts say it is needed: when the catalog's indexed photos and the
/// index's vectors number the same, nothing is listed and they are taken to agree (a missing
/// vector and a stray one at once would pass; `glimpse check` compares every id). Cheap enough
/// for every start.
pub async fn reconcile_if_counts_differ(
    catalog: &dyn Catalog,
    index: &dyn VectorIndex,
    repair: bool,
) -> Result<Reconciliation, FlowError> {
    let counts = catalog.counts().await?;
    let vectors = index.count().await?;
    if counts.indexed == vectors {
        return Ok(Reconciliation {
            photos: counts.photos,
            indexed: counts.indexed,
            vectors,
            ..Reconciliation::default()
        });
    }
    reconcile(catalog, index, repair).await
}

/// Compares the catalog with the index by photo id and, with `repair`, brings them in line:
/// photos marked indexed without a vector are re-queued (their originals are embedded again),
/// vectors without a photo are removed. Pending and failed photos may have a vector or not.
pub async fn reconcile(
    catalog: &dyn Catalog,
    index: &dyn VectorIndex,
    repair: bool,
) -> Result<Reconciliation, FlowError> {
    let mut report = Reconciliation::default();
    let mut vectors = std::collections::HashSet::new();
    let mut after = None;
    loop {
        let page = index.ids(after, RECONCILE_PAGE).await?;
        after = page.last().copied();
        let full = page.len() == RECONCILE_PAGE;
        vectors.extend(page);
        if !full {
            break;
        }
    }
    report.vectors = vectors.len() as u64;
    let mut missing = Vec::new();
    let mut after = None;
    loop {
        let page = catalog.photo_states(after, RECONCILE_PAGE).await?;
        after = page.last().map(|(id, _)| *id);
        let full = page.len() == RECONCILE_PAGE;
        for (id, status) in page {
            report.photos += 1;
            let has_vector = vectors.remove(&id);
            if status == PhotoStatus::Indexed {
                report.indexed += 1;
                if !has_vector {
                    missing.push(id);
                }
            }
        }
        if !full {
            break;
        }
    }
    // What is left in `vectors` has no photo.
    report.missing_vectors = missing.len() as u64;
    report.orphan_vectors = vectors.len() as u64;
    if repair {
        for chunk in missing.chunks(RECONCILE_PAGE) {
            catalog.requeue(&Requeue::Photos(chunk.to_vec())).await?;
        }
        let orphans: Vec<PhotoId> = vectors.into_iter().collect();
        for chunk in orphans.chunks(RECONCILE_PAGE) {
            index.delete(chunk).await?;
        }
        report.repaired = true;
    }
    Ok(report)
}

/// How many stored vectors calibrate the score scale of each query term.
pub const CALIBRATION_SAMPLE: usize = 512;
/// Below this many sampled vectors the scale is not estimated: scores are raw cosines.
const MIN_CALIBRATION: usize = 8;
/// Extra candidates retrieved per term beyond the page's depth when rescoring can reorder them
/// (on several terms, or with a learned adapter). A lone term ranks by its own cosine, the order
/// the index retrieves in, so it needs none.
const EXTRA_CANDIDATES: usize = 40;

/// A query term with its vector, weight (negative for `-terms`) and score scale.
#[derive(Clone)]
struct Term {
    vector: Embedding,
    weight: f32,
    mean: f32,
    scale: f32,
}

impl Term {
    fn standardised(&self, vector: &Embedding) -> f32 {
        (self.vector.cosine(vector) - self.mean) / self.scale
    }
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn day_start(date: Date) -> i64 {
    photo::days_from_civil(i64::from(date.year), date.month, date.day).unwrap_or(0) * 86_400
}

/// Refuses, as [`search`] does before it touches a port, a request that cannot succeed: `top_k`
/// or `offset` out of range, a `min_score` that is not a number, a query that does not parse or
/// has nothing to rank by. A shape whose ports are costly to open checks first.
pub fn check_search(request: &SearchRequest) -> Result<(), FlowError> {
    checked(request).map(|_| ())
}

/// The parsed query and its `like:` photos, or why the request is refused.
fn checked(request: &SearchRequest) -> Result<(ParsedQuery, Vec<PhotoId>), FlowError> {
    if request.top_k == 0 || request.top_k > MAX_TOP_K {
        return Err(FlowError::BadRequest(format!(
            "top_k must be between 1 and {MAX_TOP_K}, not {}",
            request.top_k
        )));
    }
    if request.offset >= MAX_DEPTH {
        return Err(FlowError::BadRequest(format!(
            "results go {MAX_DEPTH} deep: offset must be below {MAX_DEPTH}, not {}; narrow the \
             query instead",
            request.offset
        )));
    }
    if request
        .min_score
        .is_some_and(|s| !(LOWEST_MIN_SCORE..=MAX_MIN_SCORE).contains(&s))
    {
        return Err(FlowError::BadRequest(format!(
            "min_score must be a number from {LOWEST_MIN_SCORE} to {MAX_MIN_SCORE}"
        )));
    }
    let parsed = query::parse_search(&request.query)?;
    let like_ids = parsed
        .like
        .iter()
        .map(|id| {
            id.parse::<PhotoId>()
                .map_err(|e| FlowError::BadRequest(format!("like: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((parsed, like_ids))
}

/// Runs a search: parse, embed, retrieve with filters, rerank (falling back to retrieval order if
/// the reranker fails), then load the photos, log the search and return it.
///
/// Scores live in score space: each term's cosine is standardised against the library (mean and
/// spread of that term's cosine over a fixed sample of stored vectors), so a text term and a
/// `like:` term — whose raw cosines sit on very different scales — count as their weights say.
pub async fn search(
    ports: Ports<'_>,
    request: &SearchRequest,
) -> Result<SearchResponse, FlowError> {
    let started = Instant::now();
    let (parsed, like_ids) = checked(request)?;
    // A page reaching past the depth is cut there.
    let depth = (request.offset + request.top_k).min(MAX_DEPTH);
    let mut timings = StageTimings {
        parse_ms: elapsed_ms(started),
        ..StageTimings::default()
    };

    let stage = Instant::now();
    if ports.text.encoder() != ports.index.encoder() {
        return Err(FlowError::Internal(format!(
            "the text encoder {} does not match the index's encoder {}",
            ports.text.encoder(),
            ports.index.encoder()
        )));
    }
    let texts: Vec<String> = parsed
        .positive
        .iter()
        .chain(&parsed.negative)
        .map(|t| t.text.clone())
        .collect();
    let text_vectors = if texts.is_empty() {
        Vec::new()
    } else {
        ports.text.embed_texts(&texts).await?
    };
    timings.embed_ms = elapsed_ms(stage);

    let stage = Instant::now();
    let examples = ports.index.vectors(&like_ids).await?;
    if let Some(missing) = like_ids
        .iter()
        .find(|id| !examples.iter().any(|e| e.id == **id))
    {
        return Err(FlowError::NotFound(format!(
            "like:{missing} names no indexed photo (unknown, or not indexed yet)"
        )));
    }
    let sample = ports.index.sample(CALIBRATION_SAMPLE).await?;
    let weights = parsed
        .positive
        .iter()
        .map(|t| t.weight)
        .chain(parsed.negative.iter().map(|t| -t.weight))
        .chain(examples.iter().map(|_| 1.0));
    let vectors = text_vectors
        .into_iter()
        .chain(examples.iter().map(|e| e.vector.clone()));
    let terms: Vec<Term> = vectors
        .zip(weights)
        .map(|(vector, weight)| calibrate(vector, weight, &sample))
        .collect();
    // Candidates come from the encoder's own embeddings; a learned adapter scores them.
    let adapter = ports
        .adapter
        .filter(|active| active.encoder == *ports.index.encoder());
    let adapted: Option<Vec<Term>> = adapter.map(|active| {
        terms
            .iter()
            .enumerate()
            .map(|(i, term)| {
                if i < texts.len() {
                    calibrate(active.adapter.adapt(&term.vector), term.weight, &sample)
                } else {
                    term.clone()
                }
            })
            .collect()
    });
    let scoring = adapted.as_deref().unwrap_or(&terms);
    let filter = search_filter(&parsed, like_ids);
    let rescored = terms.len() > 1 || adapted.is_some();
    let limit = depth + if rescored { EXTRA_CANDIDATES } else { 0 };
    let candidates = retrieve(ports.index, &terms, &filter, limit).await?;
    let mut scored = score(scoring, candidates, request.min_score);
    scored.truncate(depth);
    // Reranking reorders the first RERANK_CANDIDATES only: a page past them skips it.
    let reranked = request.offset < RERANK_CANDIDATES;
    let skipped = if reranked { 0 } else { request.offset };
    scored.drain(..skipped.min(scored.len()));
    timings.retrieve_ms = elapsed_ms(stage);

    let stage = Instant::now();
    let photos: HashMap<PhotoId, Photo> = ports
        .catalog
        .photos(&scored.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    let mut ranked: Vec<(Photo, f32, Option<f32>)> = scored
        .into_iter()
        .filter_map(|(id, score)| photos.get(&id).map(|p| (p.clone(), score, None)))
        .collect();
    let rerank_text = parsed.rerank_text();
    let reranking = if reranked {
        rerank(ports.reranker, &rerank_text, &mut ranked).await
    } else {
        Reranking::Kept
    };
    ranked.drain(..(request.offset - skipped).min(ranked.len()));
    let (ranked_by, rerank_fallback) = match reranking {
        Reranking::Ranked(name) => (Some(name), None),
        Reranking::Kept => (None, None),
        Reranking::FellBack(reason) => (None, Some(reason)),
    };
    // Named only on a page that shows its probabilities.
    let reranker = ranked_by.filter(|_| {
        ranked
            .iter()
            .any(|(_, _, probability)| probability.is_some())
    });
    let swapped_with = match request.offset {
        0 => ports
            .exploration
            .swap(ranked.len(), exploration_draw(&request.query)),
        _ => None,
    };
    if let Some(rank) = swapped_with {
        ranked.swap(0, rank as usize - 1);
    }
    timings.rerank_ms = elapsed_ms(stage);

    let stage = Instant::now();
    let query_id = QueryId::random();
    let results: Vec<SearchResult> = ranked
        .into_iter()
        .enumerate()
        .map(|(i, (photo, score, rerank_probability))| SearchResult {
            rank: (request.offset + i) as u32 + 1,
            score,
            rerank_probability,
            photo,
        })
        .collect();
    let mut log = SearchLog {
        search: LoggedSearch {
            query_id,
            text: request.query.clone(),
            parsed: parsed_json(&parsed),
            encoder: ports.index.encoder().clone(),
            timings,
            rerank_fallback: rerank_fallback.clone(),
            adapter_version: adapter.map(|active| active.version),
            swapped_with,
        },
        results: results
            .iter()
            .map(|r| LoggedResult {
                rank: r.rank,
                photo_id: r.photo.id,
                score: r.score,
                rerank_probability: r.rerank_probability,
            })
            .collect(),
    };
    log.search.timings.total_ms = elapsed_ms(started);
    ports.catalog.log_search(&log).await?;
    timings.log_ms = elapsed_ms(stage);
    timings.total_ms = elapsed_ms(started);
    Ok(SearchResponse {
        query_id,
        query: request.query.clone(),
        results,
        timings,
        rerank_fallback,
        ranked_by: RankedBy {
            adapter_version: adapter.map(|active| active.version),
            reranker,
        },
    })
}

/// The exploration draw of a search: the same for the same query text all day (a person who
/// repeats a search sees the same order, and pages stay consistent), and independent of its
/// results, as the propensity estimate needs.
fn exploration_draw(query: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 86_400);
    let digest = Sha256::new()
        .chain_update(day.to_le_bytes())
        .chain_update(query.trim().to_lowercase().as_bytes())
        .finalize();
    digest
        .iter()
        .take(8)
        .fold(0u64, |draw, byte| (draw << 8) | u64::from(*byte))
}

fn parsed_json(parsed: &ParsedQuery) -> String {
    serde_json::to_string(parsed).unwrap_or_else(|e| format!("\"unserialisable: {e}\""))
}

fn calibrate(vector: Embedding, weight: f32, sample: &[Embedding]) -> Term {
    let (mean, scale) = if sample.len() < MIN_CALIBRATION {
        (0.0, 1.0)
    } else {
        let cosines: Vec<f64> = sample.iter().map(|s| f64::from(vector.cosine(s))).collect();
        let n = cosines.len() as f64;
        let mean = cosines.iter().sum::<f64>() / n;
        let variance = cosines.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean as f32, (variance.sqrt() as f32).max(1e-3))
    };
    Term {
        vector,
        weight,
        mean,
        scale,
    }
}

fn search_filter(parsed: &ParsedQuery, exclude: Vec<PhotoId>) -> SearchFilter {
    SearchFilter {
        album: parsed.album.as_deref().map(str::to_lowercase),
        camera: parsed.camera.as_deref().map(str::to_lowercase),
        from: parsed.taken_from.map(day_start),
        until: parsed.taken_until.map(day_start),
        exclude,
    }
}

/// The `limit` nearest neighbours of every positive term (of the negated vector when there are
/// only negative terms: the photos least like them), merged.
async fn retrieve(
    index: &dyn VectorIndex,
    terms: &[Term],
    filter: &SearchFilter,
    limit: usize,
) -> Result<Vec<(PhotoId, Embedding)>, FlowError> {
    let only_negative = terms.iter().all(|t| t.weight < 0.0);
    let mut merged: HashMap<PhotoId, Embedding> = HashMap::new();
    for term in terms.iter().filter(|t| only_negative || t.weight > 0.0) {
        let probe = if only_negative {
            let negated: Vec<f32> = term.vector.as_slice().iter().map(|v| -v).collect();
            Embedding::normalized(negated).map_err(|e| FlowError::Internal(e.to_string()))?
        } else {
            term.vector.clone()
        };
        for neighbour in index.nearest(&probe, filter, limit).await? {
            merged.entry(neighbour.id).or_insert(neighbour.vector);
        }
    }
    Ok(merged.into_iter().collect())
}

/// Combined scores, best first (ties broken by id for a stable order).
fn score(
    terms: &[Term],
    candidates: Vec<(PhotoId, Embedding)>,
    min_score: Option<f32>,
) -> Vec<(PhotoId, f32)> {
    let positive_weight: f32 = terms.iter().map(|t| t.weight.max(0.0)).sum();
    let normaliser = if positive_weight > 0.0 {
        positive_weight
    } else {
        terms.iter().map(|t| t.weight.abs()).sum()
    };
    let mut scored: Vec<(PhotoId, f32)> = candidates
        .into_iter()
        .map(|(id, vector)| {
            let total: f32 = terms
                .iter()
                .map(|t| t.weight * t.standardised(&vector))
                .sum();
            (id, total / normaliser)
        })
        .filter(|(_, s)| min_score.is_none_or(|m| *s >= m))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored
}

/// What reranking did to a search's first results.
enum Reranking {
    /// Reordered by the probabilities of the reranker so named (as it named itself while it
    /// scored them, adapter included).
    Ranked(String),
    /// Left in retrieval order: no query text, no results, or a reranker that scores nothing.
    Kept,
    /// Left in retrieval order because the reranker failed, for this reason.
    FellBack(String),
}

/// Reorders the first [`RERANK_CANDIDATES`] results (or as many as the reranker scored) by the
/// reranker's probabilities.
async fn rerank(
    reranker: &dyn Reranker,
    query: &str,
    ranked: &mut [(Photo, f32, Option<f32>)],
) -> Reranking {
    if query.is_empty() || ranked.is_empty() {
        return Reranking::Kept;
    }
    let head = ranked.len().min(RERANK_CANDIDATES);
    let candidates: Vec<RerankCandidate> = ranked[..head]
        .iter()
        .map(|(photo, score, _)| RerankCandidate {
            photo: photo.clone(),
            score: *score,
        })
        .collect();
    match reranker.rerank(query, &candidates).await {
        Ok(relevance) if relevance.probabilities.is_empty() => Reranking::Kept,
        Ok(relevance) if relevance.probabilities.len() <= head => {
            let scored = relevance.probabilities.len();
            for (entry, probability) in ranked[..scored].iter_mut().zip(relevance.probabilities) {
                entry.2 = Some(probability);
            }
            ranked[..scored].sort_by(|a, b| {
                let (pa, pb) = (a.2.unwrap_or(0.0), b.2.unwrap_or(0.0));
                pb.total_cmp(&pa)
            });
            Reranking::Ranked(if relevance.reranker.is_empty() {
                reranker.name()
            } else {
                relevance.reranker
            })
        }
        Ok(relevance) => Reranking::FellBack(format!(
            "reranker {} returned {} scores for {head} candidates",
            reranker.name(),
            relevance.probabilities.len()
        )),
        Err(error) => Reranking::FellBack(format!("reranker {}: {error}", reranker.name())),
    }
}

/// The reranker of a deployment without a reranking model: it scores nothing, so searches keep
/// their retrieval order and carry no reranker probability.
pub struct RetrievalOrder;

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl Reranker for RetrievalOrder {
    fn name(&self) -> String {
        "retrieval-order".to_owned()
    }

    async fn rerank(
        &self,
        _query: &str,
        _candidates: &[RerankCandidate],
    ) -> Result<Relevance, PortError> {
        Ok(Relevance::default())
    }
}

/// What either shape says of its photos at `GET /api/status`: how many there are by indexing
/// state, and whether indexing is done. `photos.pending` is the work waiting for the workers: what
/// wakes a worker pool scaled to zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct IndexingStatus {
    /// The photos by indexing state.
    pub photos: CatalogCounts,
    /// Whether no photo waits for its features.
    pub indexing_done: bool,
}

/// The catalog's [`IndexingStatus`].
pub async fn indexing_status(catalog: &dyn Catalog) -> Result<IndexingStatus, FlowError> {
    let photos = catalog.counts().await?;
    Ok(IndexingStatus {
        photos,
        indexing_done: photos.pending == 0,
    })
}

/// A page of photos in date order (newest first) passing the filters of `query`, which must not
/// rank (no words, no `like:`): what a person sees before searching, or for `album:Trips`.
pub async fn browse(
    catalog: &dyn Catalog,
    query: &str,
    after: Option<BrowseCursor>,
    limit: usize,
) -> Result<BrowsePage, FlowError> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(FlowError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}, not {limit}"
        )));
    }
    let parsed = query::parse_filters(query)?;
    let photos = catalog
        .browse(&search_filter(&parsed, Vec::new()), after, limit)
        .await?;
    let next_cursor = if photos.len() == limit {
        photos.last().map(BrowseCursor::after)
    } else {
        None
    };
    Ok(BrowsePage {
        photos,
        next_cursor,
    })
}

/// Records a click on a search result. Only real results are accepted: the query id must be one
/// the search returned and the rank one of its results.
pub async fn record_click(
    catalog: &dyn Catalog,
    query_id: &QueryId,
    rank: u32,
) -> Result<crate::ports::ClickedResult, FlowError> {
    catalog.record_click(query_id, rank).await?.ok_or_else(|| {
        FlowError::NotFound(format!(
            "search {query_id} has no result at rank {rank}: clicks must name a search id and a \
             rank from that search's response"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "contract")]
    #[test]
    fn retrieval_order_honours_the_reranker_contract() {
        pollster::block_on(crate::contract::reranker_suite(&RetrievalOrder));
    }

    fn unit(values: Vec<f32>) -> Embedding {
        Embedding::normalized(values).unwrap()
    }

    /// Two terms whose raw cosines live on very different scales (an image–image term spread
    /// widely, a text–image term in a narrow band) count as their weights say once standardised.
    #[test]
    fn weights_mean_what_they_say_across_score_scales() {
        // Library: component 1 varies widely (what the "image" term sees), component 2 a little
        // (what the "text" term sees), independently.
        let library: Vec<Embedding> = (0..64)
            .map(|i| {
                let wide = ((i % 8) as f32 - 3.5) * 0.1;
                let narrow = ((i / 8) as f32 - 3.5) * 0.01;
                unit(vec![1.0, wide, narrow])
            })
            .collect();
        let image_term = unit(vec![0.0, 1.0, 0.0]);
        let text_term = unit(vec![0.0, 0.0, 1.0]);
        // A stands out on the image term, B on the text term, by the same number of spreads.
        let a = unit(vec![1.0, 0.46, 0.0]);
        let b = unit(vec![1.0, 0.0, 0.046]);
        let candidates = vec![
            (PhotoId::from_u64(1), a.clone()),
            (PhotoId::from_u64(2), b.clone()),
        ];
        let top = |image_weight: f32, text_weight: f32| {
            let terms = [
                calibrate(image_term.clone(), image_weight, &library),
                calibrate(text_term.clone(), text_weight, &library),
            ];
            score(&terms, candidates.clone(), None)[0].0
        };
        // In raw cosines A's lead on the image term dwarfs B's on the text term ...
        let raw_a = image_term.cosine(&a) + 3.0 * text_term.cosine(&a);
        let raw_b = image_term.cosine(&b) + 3.0 * text_term.cosine(&b);
        assert!(raw_a > raw_b);
        // ... standardised, the heavier term decides.
        assert_eq!(top(1.0, 3.0), PhotoId::from_u64(2));
        assert_eq!(top(3.0, 1.0), PhotoId::from_u64(1));
        // A single term's score is its cosine in standard deviations above the library mean.
        let terms = [calibrate(text_term.clone(), 1.0, &library)];
        let all: Vec<(PhotoId, Embedding)> = library
            .iter()
            .enumerate()
            .map(|(i, v)| (PhotoId::from_u64(i as u64), v.clone()))
            .collect();
        let scored = score(&terms, all.clone(), None);
        let mean: f32 = scored.iter().map(|(_, s)| s).sum::<f32>() / scored.len() as f32;
        assert!(mean.abs() < 1e-3, "{mean}");
        let above = score(&terms, all, Some(1.0));
        assert!(!above.is_empty() && above.len() < 32);
        assert!(above.iter().all(|(_, s)| *s >= 1.0));
    }

    #[test]
    fn retries_back_off_exponentially_then_give_up_unless_it_is_an_outage() {
        let policy = RetryPolicy::default();
        let broken = PortError::Internal("e".to_owned());
        assert_eq!(
            policy.after_error(1, &broken),
            JobOutcome::Retry {
                error: broken.to_string(),
                after: Duration::from_secs(4)
            }
        );
        assert!(matches!(
            policy.after_error(4, &broken),
            JobOutcome::Failed { .. }
        ));
        let outage = PortError::Unavailable("storage down".to_owned());
        assert_eq!(
            policy.after_error(40, &outage),
            JobOutcome::Retry {
                error: outage.to_string(),
                after: policy.max_backoff
            },
            "an outage is waited out, with a bounded back-off"
        );
    }
}
