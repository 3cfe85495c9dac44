//! The ports: what the flows need from the outside world, one trait each. The embedded binary,
//! the worker pool and the edge functions each plug in their own adapters.
//!
//! Futures are `Send` on native targets (tokio's multi-threaded runtime) and not required to be on
//! `wasm32` (Spin runs one request per instance on one thread).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::browse::{AlbumSummary, BrowseCursor};
use crate::learning::{
    AdapterFiles, AdapterVersion, Evaluation, Learner, QueryAdapter, RerankerAdapterVersion,
    RerankerExample, RerankerTraining, SwapCounts, TrainedAdapter,
};
use crate::photo::{Facets, Photo, PhotoId, PhotoStatus, StagedUpload, UploadId};
use crate::search::{QueryId, SearchLog, SearchLogEntry};
use crate::{Embedding, EncoderId};

/// `Send + Sync` on native targets; nothing on `wasm32`.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSendSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> MaybeSendSync for T {}
/// `Send + Sync` on native targets; nothing on `wasm32`.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSendSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSendSync for T {}

/// What went wrong in an adapter, named for what the caller should do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The backend is down, overloaded or too slow: try again later.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// The input is not acceptable to the backend (for example a vector of the wrong dimension).
    #[error("rejected: {0}")]
    Rejected(String),
    /// A bug or corrupted state: report it.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Query text to unit vectors.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait TextEmbedder: MaybeSendSync {
    /// The encoder whose text tower this is.
    fn encoder(&self) -> &EncoderId;
    /// Embeds each text (in order).
    async fn embed_texts(&self, texts: &[String]) -> Result<Vec<Embedding>, PortError>;
}

/// Encoded images to unit vectors, batched.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait ImageEmbedder: MaybeSendSync {
    /// The encoder whose image tower this is.
    fn encoder(&self) -> &EncoderId;
    /// Embeds each image; an image that cannot be decoded gets its own error (the decoder's
    /// message) without failing the others. With `thumbnail_size`, an embedder that decodes
    /// images itself also returns a JPEG thumbnail of each, at most that many pixels on its
    /// longer side, made from the same decode (one that does not, a remote one, returns none).
    async fn embed_images(
        &self,
        images: Vec<Vec<u8>>,
        thumbnail_size: Option<u32>,
    ) -> Result<Vec<Result<EmbeddedImage, String>>, PortError>;
}

/// What an image embedder made of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddedImage {
    /// Its embedding.
    pub vector: Embedding,
    /// Its JPEG thumbnail, where one was asked for and made.
    pub thumbnail: Option<Vec<u8>>,
}

/// A vector with its photo and filter fields.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexedPhoto {
    /// The photo.
    pub id: PhotoId,
    /// Its image embedding.
    pub vector: Embedding,
    /// Its filter fields.
    pub facets: Facets,
}

/// Which photos a search may return. All present conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SearchFilter {
    /// Album, lowercase, exact.
    pub album: Option<String>,
    /// Text the camera (lowercase) contains.
    pub camera: Option<String>,
    /// `dated_at >= from` (seconds).
    pub from: Option<i64>,
    /// `dated_at < until` (seconds).
    pub until: Option<i64>,
    /// Photos never to return (for example the example image of `like:`).
    pub exclude: Vec<PhotoId>,
}

/// A nearest neighbour, with its stored vector so the flow can score it on every query term.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbour {
    /// The photo.
    pub id: PhotoId,
    /// Its stored embedding.
    pub vector: Embedding,
}

/// Refuses a vector whose dimension is not the index's, as every [`VectorIndex`] must before it
/// stores or searches with one.
pub fn check_dimension(index_dimension: usize, vector: &Embedding) -> Result<(), PortError> {
    if vector.dimension() == index_dimension {
        Ok(())
    } else {
        Err(PortError::Rejected(format!(
            "a vector of {} dimensions for an index of {index_dimension}",
            vector.dimension()
        )))
    }
}

/// The smallest id a listing of ids after `after` starts at (every id when `None`); `None` when
/// nothing can follow it. For adapters whose listings start at an id, inclusive.
pub fn first_id_after(after: Option<PhotoId>) -> Option<PhotoId> {
    match after {
        None => Some(PhotoId::from_u64(0)),
        Some(id) => id.as_u64().checked_add(1).map(PhotoId::from_u64),
    }
}

/// Vectors with payload filters, for one encoder.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait VectorIndex: MaybeSendSync {
    /// The encoder whose vectors this index holds (its stamp).
    fn encoder(&self) -> &EncoderId;
    /// The vectors' dimension.
    fn dimension(&self) -> usize;
    /// Inserts or replaces vectors (idempotent per id).
    async fn upsert(&self, photos: Vec<IndexedPhoto>) -> Result<(), PortError>;
    /// Removes vectors; unknown ids are ignored.
    async fn delete(&self, ids: &[PhotoId]) -> Result<(), PortError>;
    /// The `limit` nearest vectors to `query` (cosine) that pass `filter`, best first.
    async fn nearest(
        &self,
        query: &Embedding,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<Neighbour>, PortError>;
    /// The stored vectors of these photos (absent ids are left out), as the index stores them:
    /// an index may keep a narrower number type than f32 (the embedded one keeps half floats).
    async fn vectors(&self, ids: &[PhotoId]) -> Result<Vec<Neighbour>, PortError>;
    /// Up to `limit` stored vectors, the same ones on every call while the index is unchanged
    /// (a sample for score calibration).
    async fn sample(&self, limit: usize) -> Result<Vec<Embedding>, PortError>;
    /// How many vectors are stored.
    async fn count(&self) -> Result<u64, PortError>;
    /// Up to `limit` stored photo ids greater than `after` (by [`PhotoId::as_u64`]), ascending:
    /// paging with the last id of each page lists every stored vector once.
    async fn ids(&self, after: Option<PhotoId>, limit: usize) -> Result<Vec<PhotoId>, PortError>;
}

/// One candidate for the reranker (also the wire form of the worker's `POST /v1/rerank`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RerankCandidate {
    /// The photo.
    pub photo: Photo,
    /// Its retrieval score (higher is better).
    pub score: f32,
}

/// What a reranker made of the candidates of one query, in their order (also the wire form of
/// the worker's `POST /v1/rerank` answer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Relevance {
    /// The reranker that scored them, named as it was while it scored (with the adapter it
    /// used, e.g. `qwen2-vl+adapter:3`): what a search's `ranked_by.reranker` says. Empty when
    /// it scored none; an answer without it is credited to [`Reranker::name`].
    #[serde(default)]
    pub reranker: String,
    /// Each scored candidate's own calibrated probability of being what the query asks for
    /// (`P(yes)` of a vision-language model): higher ranks first; they need not sum to 1.
    pub probabilities: Vec<f32>,
    /// The softmax of the model's relevance logits across the scored candidates (sums to 1).
    pub shares: Vec<f32>,
}

/// Scores (query, image) pairs.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Reranker: MaybeSendSync {
    /// A short name for logs and metrics (it may change while the reranker runs: with the
    /// adapter it uses); a search names the reranker its [`Relevance`] names.
    fn name(&self) -> String;
    /// The relevance of the candidates, in their order. A reranker that takes fewer candidates
    /// than it is sent scores the first ones only: the rest keep their retrieval order below them.
    /// One without a model of relevance scores none (empty): the search keeps its retrieval order
    /// and says no reranker ranked it.
    async fn rerank(
        &self,
        query: &str,
        candidates: &[RerankCandidate],
    ) -> Result<Relevance, PortError>;
}

/// The outcome of adding a photo to the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Added {
    /// The photo's id.
    pub id: PhotoId,
    /// `false` when identical bytes were already in the catalog (nothing was changed).
    pub created: bool,
}

/// A feature job, claimed under a lease.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimedJob {
    /// The job's id.
    pub job_id: i64,
    /// The photo to extract features from.
    pub photo: Photo,
    /// How many times it was claimed before this claim.
    pub previous_attempts: u32,
    /// How many of those claims never ended: the claimer died or hung past its lease, perhaps
    /// because of this very photo (an image that exhausts memory or trips a decoder bug).
    pub unfinished_claims: u32,
}

/// Proof of one claim of a job: finishing needs it, so a claimer whose lease ran out (and whose job
/// was claimed again) cannot end the job under the new claimer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobClaim {
    /// The job.
    pub job_id: i64,
    /// Which attempt this claim is (1 for the first).
    pub attempt: u32,
}

impl ClaimedJob {
    /// This claim's proof, for [`Catalog::finish_job`].
    pub fn claim(&self) -> JobClaim {
        JobClaim {
            job_id: self.job_id,
            attempt: self.previous_attempts + 1,
        }
    }
}

/// How a claimed job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Features are stored; the photo is indexed.
    Done,
    /// A transient error: run the job again after the delay.
    Retry {
        /// What went wrong.
        error: String,
        /// Back-off before the next claim.
        after: Duration,
    },
    /// Gave up: the photo is marked failed with the error.
    Failed {
        /// What went wrong, for the person looking at the photo.
        error: String,
    },
}

/// Which photos [`Catalog::requeue`] puts back in the indexing queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Every photo (after an encoder change).
    Everything,
    /// Every photo that failed (after the cause was fixed).
    Failed,
    /// These photos, whatever their state (absent ids are ignored).
    Photos(Vec<PhotoId>),
}

/// Photo counts by indexing state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct CatalogCounts {
    /// All photos.
    pub photos: u64,
    /// Waiting for or in feature extraction.
    pub pending: u64,
    /// In the vector index.
    pub indexed: u64,
    /// Given up on.
    pub failed: u64,
}

/// The result a click refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClickedResult {
    /// The photo that was clicked.
    pub photo_id: PhotoId,
    /// Its rank in the results (1-based).
    pub rank: u32,
}

/// Photos, feature jobs, the search log and clicks.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Catalog: MaybeSendSync {
    /// Records an encoder that indexes (idempotent). The first encoder ever registered becomes
    /// the active one; registering another does not change it.
    async fn register_encoder(
        &self,
        encoder: &EncoderId,
        dimension: usize,
    ) -> Result<(), PortError>;
    /// The active encoder: the one searches use and indexing works for. `None` before any
    /// encoder registered.
    async fn active_encoder(&self) -> Result<Option<EncoderId>, PortError>;
    /// Makes a registered encoder the active one. Returns `false`, changing nothing, for an
    /// encoder that never registered.
    async fn activate_encoder(&self, encoder: &EncoderId) -> Result<bool, PortError>;
    /// Inserts the photo and its feature job in one transaction; if a photo with the same
    /// SHA-256 exists, changes nothing and returns its id with `created == false`.
    async fn add_photo(&self, photo: &Photo) -> Result<Added, PortError>;
    /// One photo.
    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, PortError>;
    /// These photos (absent ids are left out; order unspecified).
    async fn photos(&self, ids: &[PhotoId]) -> Result<Vec<Photo>, PortError>;
    /// Up to `limit` photos passing `filter`, newest `dated_at` first (ties in an order of the
    /// adapter's choosing that stays the same between calls), starting just after `after`.
    /// Paging with the cursor of each page's last photo returns every photo exactly once.
    async fn browse(
        &self,
        filter: &SearchFilter,
        after: Option<BrowseCursor>,
        limit: usize,
    ) -> Result<Vec<Photo>, PortError>;
    /// Every album with its photo count, by lowercase name; albums differing only in case are
    /// one (named as one of its photos spells it).
    async fn albums(&self) -> Result<Vec<AlbumSummary>, PortError>;
    /// Removes the photo and its jobs, returning what was removed.
    async fn remove_photo(&self, id: PhotoId) -> Result<Option<Photo>, PortError>;
    /// Claims up to `limit` runnable jobs (queued and due, or leased with an expired lease) for
    /// `lease`; a job is held by one claimer at a time. Claiming a job whose lease expired counts
    /// an unfinished claim. Jobs with unfinished claims (suspected of killing their claimer) are
    /// claimed alone — one per call, and only when no other job is runnable — so a photo that
    /// crashes the indexer cannot take a batch of innocent photos down with it.
    async fn claim_jobs(&self, limit: usize, lease: Duration)
    -> Result<Vec<ClaimedJob>, PortError>;
    /// Ends a job under `claim` and updates its photo's status. Returns `false`, changing nothing,
    /// when the claim is no longer the job's current one (its lease ran out and another claimer
    /// took the job, or the job was re-queued).
    async fn finish_job(&self, claim: JobClaim, outcome: &JobOutcome) -> Result<bool, PortError>;
    /// Puts photos back in the indexing queue as pending, with a fresh job (attempts and
    /// unfinished claims start again at zero). Returns how many photos were re-queued.
    async fn requeue(&self, which: &Requeue) -> Result<u64, PortError>;
    /// Up to `limit` photos with their indexing state, starting just after the photo `after` in
    /// an order of the adapter's choosing that stays the same between calls: paging with the
    /// last id of each page lists every photo once.
    async fn photo_states(
        &self,
        after: Option<PhotoId>,
        limit: usize,
    ) -> Result<Vec<(PhotoId, PhotoStatus)>, PortError>;
    /// Photo counts by state.
    async fn counts(&self) -> Result<CatalogCounts, PortError>;
    /// Stores a search and its ranked results (none clicked).
    async fn log_search(&self, log: &SearchLog) -> Result<(), PortError>;
    /// A logged search with its results and clicks.
    async fn search_log(&self, query_id: &QueryId) -> Result<Option<SearchLogEntry>, PortError>;
    /// Forgets logged searches (with their results): those logged before `before` (seconds
    /// since 1970) that have no click — clicked ones are what ranking learns from — and, clicked
    /// or not, all but the newest `keep`. Returns how many searches were forgotten.
    async fn prune_search_log(&self, before: i64, keep: u64) -> Result<u64, PortError>;
    /// Marks the result at `rank` of that search clicked; `None` if there is no such result.
    async fn record_click(
        &self,
        query_id: &QueryId,
        rank: u32,
    ) -> Result<Option<ClickedResult>, PortError>;
    /// Records an upload whose storage URL is handed out (replacing one with the same id).
    async fn stage_upload(&self, upload: &StagedUpload) -> Result<(), PortError>;
    /// A staged upload not yet ended.
    async fn staged_upload(&self, id: &UploadId) -> Result<Option<StagedUpload>, PortError>;
    /// Forgets a staged upload (completed, refused or expired); an unknown id is not an error.
    async fn end_staged_upload(&self, id: &UploadId) -> Result<(), PortError>;
    /// Up to `limit` staged uploads started before `before` (seconds since 1970), oldest first.
    async fn stale_uploads(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<StagedUpload>, PortError>;
}

/// What learning from clicks keeps: the clicked searches and position-bias counts it reads (from
/// the search log), the adapter versions it writes, and the lease that keeps one training run at a
/// time across processes.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait LearningStore: MaybeSendSync {
    /// How many logged results are clicked.
    async fn click_count(&self) -> Result<u64, PortError>;
    /// Up to `limit` logged searches embedded by `encoder` with at least one click, newest first.
    async fn clicked_searches(
        &self,
        encoder: &EncoderId,
        limit: usize,
    ) -> Result<Vec<SearchLogEntry>, PortError>;
    /// For the first pages embedded by `encoder` (searches with a result at rank 1), grouped by
    /// the rank their first result was swapped with: how many, and in how many the would-be first
    /// result (shown at that rank, or at rank 1 when not swapped) was clicked.
    async fn swap_counts(&self, encoder: &EncoderId) -> Result<Vec<SwapCounts>, PortError>;
    /// Takes `learner`'s training lease for `holder` until `lease` from now, unless another
    /// holder's lease has not run out, and records the [`click_count`](Self::click_count) it
    /// starts from. Returns whether it was taken. Each learner has its own lease.
    async fn claim_training(
        &self,
        learner: Learner,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, PortError>;
    /// Ends `holder`'s lease of `learner` (nothing when the lease is not its own any more).
    async fn release_training(&self, learner: Learner, holder: &str) -> Result<(), PortError>;
    /// The click count `learner`'s last training run started from, if one ever started.
    async fn clicks_at_last_training(&self, learner: Learner) -> Result<Option<u64>, PortError>;
    /// Stores `adapter` as the next version for `encoder` and makes it the active one.
    async fn store_adapter(
        &self,
        encoder: &EncoderId,
        adapter: &QueryAdapter,
        evaluation: &Evaluation,
        trained_at: i64,
    ) -> Result<AdapterVersion, PortError>;
    /// Every stored version for `encoder`, newest first.
    async fn adapter_versions(&self, encoder: &EncoderId)
    -> Result<Vec<AdapterVersion>, PortError>;
    /// The active version for `encoder`, if any.
    async fn active_adapter(
        &self,
        encoder: &EncoderId,
    ) -> Result<Option<AdapterVersion>, PortError>;
    /// Makes a stored version the active one for `encoder` (`None`: no adapter, the encoder's
    /// embeddings alone). Returns `false`, changing nothing, for a version that is not stored.
    async fn activate_adapter(
        &self,
        encoder: &EncoderId,
        version: Option<u32>,
    ) -> Result<bool, PortError>;
    /// Records a reranker adapter whose files are stored under `blobs` in the blob store as the
    /// next version for `model`, and makes it the active one.
    async fn store_reranker_adapter(
        &self,
        model: &str,
        blobs: &str,
        evaluation: &Evaluation,
        trained_at: i64,
    ) -> Result<RerankerAdapterVersion, PortError>;
    /// Every recorded reranker adapter version for `model`, newest first.
    async fn reranker_adapter_versions(
        &self,
        model: &str,
    ) -> Result<Vec<RerankerAdapterVersion>, PortError>;
    /// The active reranker adapter version for `model`, if any.
    async fn active_reranker_adapter(
        &self,
        model: &str,
    ) -> Result<Option<RerankerAdapterVersion>, PortError>;
    /// Makes a recorded version the active one for `model` (`None`: the model alone). Returns
    /// `false`, changing nothing, for a version that is not recorded.
    async fn activate_reranker_adapter(
        &self,
        model: &str,
        version: Option<u32>,
    ) -> Result<bool, PortError>;
}

/// Trains adapters of a reranker that looks at the photos (the vision-language model), and puts
/// the chosen one on the reranker that serves searches.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait RerankerLearner: MaybeSendSync {
    /// The model its adapters belong to (an adapter of one model never goes on another).
    fn model(&self) -> &str;
    /// Trains a new adapter on `training` (starting from the model alone), and scores every
    /// `held_out` pair with it and with `active` (the model alone when `None`), without touching
    /// the adapter that serves searches.
    async fn train(
        &self,
        training: &[RerankerExample],
        held_out: &[RerankerExample],
        active: Option<&AdapterFiles>,
        settings: &RerankerTraining,
    ) -> Result<TrainedAdapter, PortError>;
    /// Searches are reranked with `adapter`, a recorded version and its files (the model alone
    /// when `None`), from the next one on, and the reranker's name says which. An adapter that
    /// does not load is [`PortError::Rejected`], and the one in use stays.
    async fn use_adapter(&self, adapter: Option<(u32, &AdapterFiles)>) -> Result<(), PortError>;
}

/// Query embeddings kept for reuse, so a query seen before is answered while the encoder is away
/// (the worker pool scaled to zero or down). A cache stays bounded: it may forget the least
/// recently used entries (stored or read), and forgets an encoder's entries once another encoder's
/// are stored.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait QueryEmbeddingCache: MaybeSendSync {
    /// The stored embedding of each text by `encoder`, in order (`None` where there is none).
    async fn cached_embeddings(
        &self,
        encoder: &EncoderId,
        texts: &[String],
    ) -> Result<Vec<Option<Embedding>>, PortError>;
    /// Stores embeddings by `encoder` (replacing any stored for the same text).
    async fn store_embeddings(
        &self,
        encoder: &EncoderId,
        entries: &[(String, Embedding)],
    ) -> Result<(), PortError>;
}

/// Originals and derived files, by key.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait BlobStore: MaybeSendSync {
    /// Stores bytes under a key (replacing what was there).
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), PortError>;
    /// The bytes under a key, if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError>;
    /// Up to `length` bytes of the object at `key` from `offset` (fewer at its end, none past
    /// it), with the object's size; `None` if there is no object. Reads an object of any size in
    /// bounded memory.
    async fn get_part(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Option<BlobPart>, PortError>;
    /// Removes a key; an absent key is not an error.
    async fn delete(&self, key: &str) -> Result<(), PortError>;
}

/// A part of a stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobPart {
    /// The part's bytes.
    pub bytes: Vec<u8>,
    /// The whole object's size in bytes.
    pub total: u64,
}
