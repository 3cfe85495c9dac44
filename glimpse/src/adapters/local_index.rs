//! The embedded VectorIndex: Qdrant's engine in-process (qdrant-edge), so the embedded and the
//! clustered index rank and filter alike. The index directory is stamped with the encoder id and
//! dimension it was built with.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use glimpse_core::photo::PhotoId;
use glimpse_core::ports::{self, IndexedPhoto, Neighbour, PortError, SearchFilter, VectorIndex};
use glimpse_core::{Embedding, EncoderId};
use qdrant_edge::{
    CountRequest, EdgeConfigBuilder, EdgeOptimizersConfig, EdgeShard, Filter, NamedQuery, PointId,
    PointInsertOperations, PointOperations, QuantizationSearchParams, QueryEnum, QueryRequest,
    RetrieveRequest, ScoringQuery, ScrollRequest, SearchParams, UpdateOperation, VectorInternal,
    VectorStructInternal, WithPayloadInterface, WithVector,
};
use serde::{Deserialize, Serialize};

use serde_json::json;

use crate::blocking::off_runtime;
use crate::memory::MemoryBudget;

mod rewrite;

pub use rewrite::RewriteStage;

/// The file that records which encoder built an index.
const STAMP_FILE: &str = "glimpse-index.json";
const SHARD_DIRECTORY: &str = "shard";

#[derive(Debug, Serialize, Deserialize)]
struct Stamp {
    encoder: EncoderId,
    dimension: usize,
    /// Fixed when the index is created.
    #[serde(default = "Originals::of_older_indexes")]
    originals: Originals,
}

impl Stamp {
    fn same_vectors(&self, other: &Self) -> bool {
        self.encoder == other.encoder && self.dimension == other.dimension
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} dimensions)", self.encoder, self.dimension)
    }
}

/// Why an index cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum IndexOpenError {
    /// The index was built by another encoder: rebuild it (or use that encoder).
    #[error(
        "the index in {directory} was built with encoder {found}, not {wanted}; rebuild it with \
         the new encoder"
    )]
    OtherEncoder {
        /// The index directory.
        directory: String,
        /// The encoder it was built with, and its dimension.
        found: String,
        /// The encoder asked for, and its dimension.
        wanted: String,
    },
    /// The files cannot be read or written.
    #[error("the index in {directory} cannot be opened: {message}")]
    Storage {
        /// The index directory.
        directory: String,
        /// What failed.
        message: String,
    },
}

/// With int8 vectors, how many times `limit` candidates are fetched and rescored on the original
/// vectors: near-ties among close neighbours flip under quantisation error, and rescoring a wider
/// set puts them back in order.
const QUANTIZED_OVERSAMPLING: f64 = 3.0;

/// The part of a memory budget kept for the model and the built index (int8 vectors and graph,
/// about 0.7 KB per photo at 512 dimensions).
const RESERVED_BYTES: u64 = 1 << 30;
/// Bytes a segment build holds per vector it builds, in stored vectors' worth: the builder's copy
/// (twice the vectors' size), the pages of the segments it reads and the graph it links, about 5
/// in mapped pages (measured at 1M × 512 in docs/BENCHMARKS.md: 5.1 KB per half-float vector for
/// a slice, 4.5 for a merge), and the build's anonymous memory on top.
const BUILD_COPIES: u64 = 8;
/// The smallest build: below this, graphs are built too often for indexing to keep up.
const MIN_BUILD: usize = 20_000;

/// How the HNSW graph and the vector storage are set up (fixed when the index is created, except
/// `search_ef`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IndexTuning {
    /// Graph degree.
    pub m: usize,
    /// Candidate list size while building.
    pub ef_construct: usize,
    /// Candidate list size while searching.
    pub search_ef: usize,
    /// Keep int8 scalar-quantised vectors in RAM (quantile 0.99) and the originals on disk,
    /// memory-mapped, for rescoring: about a quarter of the memory of f32 vectors in RAM.
    pub quantized: bool,
    /// Upserts build the graph of the vectors that came in since the last build once there are
    /// this many (the unindexed segment, its write-ahead log and the graph builder all grow with
    /// it); `None` leaves every build to [`LocalIndex::optimize`].
    pub build_every: Option<usize>,
    /// The largest segment, in vectors: a merge stops there (it holds the segments it reads and
    /// the one it writes at once). `None`: the engine's default, 256 MB of vectors per indexing
    /// thread.
    pub max_segment_vectors: Option<usize>,
    /// Threads that build a graph (0: the engine's choice, every core).
    pub indexing_threads: usize,
    /// Threads that search the segments of the index in parallel (0: the engine's choice, four
    /// per core, so that some search while others wait on the disk). Taken over on every open.
    pub search_threads: usize,
    /// How a new index stores the original vectors (an existing one keeps its own).
    pub originals: Originals,
}

/// The number type of the stored original vectors: what a search rescores its candidates on
/// (with int8 vectors in RAM) or searches (without), what a segment build reads at random, and
/// what [`VectorIndex::vectors`] and the hits of a search return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Originals {
    /// 32-bit floats, as the encoder returns them.
    F32,
    /// IEEE half floats: half the bytes on disk and in the pages a build holds; 11 significant
    /// bits, below what separates neighbours that matter in an embedding search.
    F16,
}

impl Originals {
    /// What the indexes created before the choice existed store.
    fn of_older_indexes() -> Self {
        Self::F32
    }

    /// Bytes of one stored number.
    fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }
}

impl std::fmt::Display for Originals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "32-bit float",
            Self::F16 => "half-float",
        })
    }
}

impl Default for IndexTuning {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construct: 100,
            search_ef: 128,
            quantized: true,
            build_every: None,
            max_segment_vectors: None,
            indexing_threads: 0,
            search_threads: 0,
            originals: Originals::F16,
        }
    }
}

impl IndexTuning {
    /// The tuning whose builds fit in `budget`: the largest build that fits in what the budget
    /// leaves beside the model and the built index. Vectors come in and are built into the graph
    /// in slices of that size, and no merge builds a larger segment (the engine builds the last
    /// slice together with a built segment, or merges small segments, only up to it), whatever
    /// the library's size. Larger segments search faster (a search visits every segment); see
    /// docs/BENCHMARKS.md for the trade-off.
    pub fn within(budget: MemoryBudget, dimension: usize) -> Self {
        let vector_bytes = (dimension * Self::default().originals.bytes()) as u64;
        let for_building = budget.bytes().saturating_sub(RESERVED_BYTES);
        let largest_build = for_building / (vector_bytes * BUILD_COPIES);
        let largest_build = usize::try_from(largest_build)
            .unwrap_or(usize::MAX)
            .max(MIN_BUILD);
        Self {
            build_every: Some(largest_build),
            max_segment_vectors: Some(largest_build),
            ..Self::default()
        }
    }

    /// The same bytes per slice and per segment for an index whose originals are `originals`
    /// (one created before half floats holds half as many f32 vectors in a segment).
    pub fn for_originals(self, originals: Originals) -> Self {
        let scaled = |vectors: usize| vectors * self.originals.bytes() / originals.bytes();
        Self {
            build_every: self.build_every.map(scaled),
            max_segment_vectors: self.max_segment_vectors.map(scaled),
            originals,
            ..self
        }
    }

    /// The most bytes a build of one slice holds (in mapped pages and the builder's memory), by
    /// the measured [`BUILD_COPIES`].
    fn build_bytes(&self, dimension: usize) -> u64 {
        let slice = self
            .build_every
            .or(self.max_segment_vectors)
            .unwrap_or(MIN_BUILD);
        (slice * dimension * self.originals.bytes()) as u64 * BUILD_COPIES
    }

    fn vector_params(&self, dimension: usize) -> Result<qdrant_edge::EdgeVectorParams, String> {
        let mut params = json!({
            "size": dimension,
            "distance": "Cosine",
            "hnsw_config": {
                "m": self.m,
                "ef_construct": self.ef_construct,
                "full_scan_threshold": 10_000,
                "max_indexing_threads": self.indexing_threads,
            },
        });
        if self.originals == Originals::F16 {
            params["datatype"] = json!("float16");
        }
        if self.quantized {
            params["memory"] = json!("cold");
            params["quantization_config"] =
                json!({"scalar": {"type": "int8", "quantile": 0.99, "always_ram": true}});
        }
        serde_json::from_value(params).map_err(|e| e.to_string())
    }

    /// The settings an existing index takes over when it is opened (the rest is fixed).
    fn optimizers(&self, dimension: usize) -> EdgeOptimizersConfig {
        EdgeOptimizersConfig {
            max_segment_size: self
                .max_segment_vectors
                .map(|vectors| (vectors * dimension * self.originals.bytes()).div_ceil(1024)),
            ..EdgeOptimizersConfig::default()
        }
    }

    fn search_params(&self) -> SearchParams {
        SearchParams {
            hnsw_ef: Some(self.search_ef),
            quantization: self.quantized.then_some(QuantizationSearchParams {
                ignore: false,
                rescore: Some(true),
                oversampling: Some(QUANTIZED_OVERSAMPLING),
            }),
            ..SearchParams::default()
        }
    }
}

/// The qdrant-edge index.
pub struct LocalIndex {
    shard: EdgeShard,
    tuning: IndexTuning,
    /// Vectors upserted since the graph was last built.
    unbuilt: AtomicUsize,
    /// Held while the optimiser runs: one build at a time.
    building: Mutex<()>,
    /// Writes (upserts and deletes) completed since the index was opened.
    writes: AtomicU64,
    /// The last calibration sample read, while no write has completed since it was read: every
    /// search asks for it, and reading it again means a scroll over every segment.
    sample: Mutex<Option<CachedSample>>,
    encoder: EncoderId,
    dimension: usize,
}

/// A calibration sample as read after `writes` writes.
struct CachedSample {
    writes: u64,
    limit: usize,
    vectors: Vec<Embedding>,
}

fn storage_error(directory: &Path, error: impl std::fmt::Display) -> IndexOpenError {
    IndexOpenError::Storage {
        directory: directory.display().to_string(),
        message: error.to_string(),
    }
}

/// Disk full, I/O errors, memory pressure and time-outs pass: the caller waits them out. Bad
/// input is the caller's to fix; damaged storage is reported.
fn port_error(error: qdrant_edge::OperationError) -> PortError {
    use qdrant_edge::OperationError as E;
    let message = format!("vector index: {error}");
    match error {
        E::ServiceError { .. }
        | E::OutOfMemory { .. }
        | E::Cancelled { .. }
        | E::Timeout { .. }
        | E::OutOfAppendableCapacity { .. } => PortError::Unavailable(message),
        E::WrongVectorDimension { .. }
        | E::MalformedVectorBlob { .. }
        | E::MalformedPayloadBlob { .. }
        | E::VectorNameNotExists { .. }
        | E::PointIdError { .. }
        | E::TypeError { .. }
        | E::TypeInferenceError { .. }
        | E::ValidationError { .. }
        | E::WrongSparse
        | E::WrongMulti
        | E::MissingRangeIndexForOrderBy { .. }
        | E::MissingMapIndexForFacet { .. }
        | E::VariableTypeError { .. }
        | E::NonFiniteNumber { .. } => PortError::Rejected(message),
        E::InconsistentStorage { .. } | E::FileNotFound { .. } => PortError::Internal(message),
    }
}

fn point_id(id: PhotoId) -> PointId {
    PointId::NumId(id.as_u64())
}

fn photo_id(id: &PointId) -> Result<PhotoId, PortError> {
    match id {
        PointId::NumId(n) => Ok(PhotoId::from_u64(*n)),
        PointId::Uuid(u) => Err(PortError::Internal(format!(
            "vector index holds a point {u} that is not a photo"
        ))),
    }
}

fn dense(vector: Option<VectorStructInternal>) -> Result<Embedding, PortError> {
    let values = match vector {
        Some(VectorStructInternal::Single(values)) => values,
        Some(VectorStructInternal::Named(mut named)) => {
            match named.remove(qdrant_edge::DEFAULT_VECTOR_NAME) {
                Some(VectorInternal::Dense(values)) => values,
                _ => return Err(PortError::Internal("vector index: no dense vector".into())),
            }
        }
        _ => return Err(PortError::Internal("vector index: no dense vector".into())),
    };
    Embedding::normalized(values).map_err(|e| PortError::Internal(format!("vector index: {e}")))
}

/// The filter in Qdrant's JSON form (the same conditions the REST and gRPC adapters send).
fn qdrant_filter(filter: &SearchFilter) -> Result<Option<Filter>, PortError> {
    let mut must = Vec::new();
    if let Some(album) = &filter.album {
        must.push(json!({"key": "album", "match": {"value": album}}));
    }
    if let Some(camera) = &filter.camera {
        must.push(json!({"key": "camera", "match": {"text": camera}}));
    }
    if filter.from.is_some() || filter.until.is_some() {
        must.push(json!({"key": "dated_at", "range": {"gte": filter.from, "lt": filter.until}}));
    }
    let must_not: Vec<_> = if filter.exclude.is_empty() {
        Vec::new()
    } else {
        let ids: Vec<u64> = filter.exclude.iter().map(|id| id.as_u64()).collect();
        vec![json!({"has_id": ids})]
    };
    if must.is_empty() && must_not.is_empty() {
        return Ok(None);
    }
    serde_json::from_value(json!({"must": must, "must_not": must_not}))
        .map(Some)
        .map_err(|e| PortError::Internal(format!("vector index filter: {e}")))
}

impl LocalIndex {
    /// Opens the index in `directory`, creating it if it does not exist. An index built by
    /// another encoder is refused.
    pub fn open(
        directory: &Path,
        encoder: &EncoderId,
        dimension: usize,
        tuning: IndexTuning,
    ) -> Result<Self, IndexOpenError> {
        let stamp_path = directory.join(STAMP_FILE);
        let shard_path = directory.join(SHARD_DIRECTORY);
        let wanted = Stamp {
            encoder: encoder.clone(),
            dimension,
            originals: tuning.originals,
        };
        let mut tuning = tuning;
        let shard = if stamp_path.exists() {
            let text =
                std::fs::read_to_string(&stamp_path).map_err(|e| storage_error(directory, e))?;
            let found: Stamp =
                serde_json::from_str(&text).map_err(|e| storage_error(directory, e))?;
            if !found.same_vectors(&wanted) {
                return Err(IndexOpenError::OtherEncoder {
                    directory: directory.display().to_string(),
                    found: found.to_string(),
                    wanted: wanted.to_string(),
                });
            }
            tuning = tuning.for_originals(found.originals);
            // A damaged shard may make the engine panic rather than fail: either way the index
            // cannot be opened.
            let tunables = EdgeConfigBuilder::new()
                .optimizers(tuning.optimizers(dimension))
                .max_search_threads(tuning.search_threads)
                .build();
            std::panic::catch_unwind(|| EdgeShard::load(&shard_path, Some(tunables)))
                .map_err(|_| storage_error(directory, "its files are damaged"))?
                .map_err(|e| storage_error(directory, e))?
        } else {
            std::fs::create_dir_all(&shard_path).map_err(|e| storage_error(directory, e))?;
            let params = tuning
                .vector_params(dimension)
                .map_err(|e| storage_error(directory, e))?;
            let config = EdgeConfigBuilder::new()
                .vector(qdrant_edge::DEFAULT_VECTOR_NAME, params)
                .optimizers(tuning.optimizers(dimension))
                .max_search_threads(tuning.search_threads)
                .build();
            let shard =
                EdgeShard::new(&shard_path, config).map_err(|e| storage_error(directory, e))?;
            let stamp =
                serde_json::to_string_pretty(&wanted).map_err(|e| storage_error(directory, e))?;
            let temporary = directory.join(format!("{STAMP_FILE}.tmp"));
            std::fs::write(&temporary, stamp).map_err(|e| storage_error(directory, e))?;
            std::fs::rename(&temporary, &stamp_path).map_err(|e| storage_error(directory, e))?;
            shard
        };
        Ok(Self {
            shard,
            tuning,
            unbuilt: AtomicUsize::new(0),
            building: Mutex::new(()),
            writes: AtomicU64::new(0),
            sample: Mutex::new(None),
            encoder: encoder.clone(),
            dimension,
        })
    }

    /// Whether `directory` holds an index (of any encoder).
    pub fn exists(directory: &Path) -> bool {
        directory.join(STAMP_FILE).exists()
    }

    /// Removes the index in `directory` entirely (before rebuilding it for another encoder).
    pub fn destroy(directory: &Path) -> std::io::Result<()> {
        match std::fs::remove_dir_all(directory) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Builds the HNSW graph and merges segments where worthwhile, then persists everything.
    /// Slow on large changes: call it off the request path, when indexing goes idle.
    pub fn optimize(&self) -> Result<bool, PortError> {
        let _building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        self.optimize_while_building()
    }

    fn optimize_while_building(&self) -> Result<bool, PortError> {
        self.unbuilt.store(0, Ordering::Relaxed);
        let changed = self.shard.optimize().map_err(port_error)?;
        self.shard.flush().map_err(port_error)?;
        Ok(changed)
    }

    /// Searches from now on keep `ef` candidates.
    pub fn set_search_ef(&mut self, ef: usize) {
        self.tuning.search_ef = ef;
    }

    /// How many segments the index has now.
    pub fn segments(&self) -> Result<usize, PortError> {
        Ok(self.shard.info().map_err(port_error)?.segments_count)
    }

    /// Runs `work` on the shard, off the async runtime's worker threads.
    fn on_shard<T>(
        &self,
        work: impl FnOnce(&EdgeShard) -> Result<T, qdrant_edge::OperationError>,
    ) -> Result<T, PortError> {
        off_runtime(|| work(&self.shard)).map_err(port_error)
    }

    /// Adds or replaces `points`, and builds the graph of the vectors added since the last build
    /// once there are a slice's worth.
    fn write(&self, points: Vec<qdrant_edge::PointStruct>) -> Result<(), PortError> {
        let added = points.len();
        let points = points.into_iter().map(Into::into).collect();
        let written = self.on_shard(|shard| {
            shard.update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
        });
        self.writes.fetch_add(1, Ordering::Release);
        written?;
        let unbuilt = self.unbuilt.fetch_add(added, Ordering::Relaxed) + added;
        if self
            .tuning
            .build_every
            .is_some_and(|every| unbuilt >= every)
        {
            // Another upsert that is building already takes these vectors along.
            if let Ok(_building) = self.building.try_lock() {
                off_runtime(|| self.optimize_while_building())?;
            }
        }
        Ok(())
    }

    /// How many vectors the index holds.
    fn count_now(&self) -> Result<u64, PortError> {
        let mut request = CountRequest::new();
        request.exact = true;
        self.on_shard(|shard| shard.count(request))
            .map(|n| n as u64)
    }

    /// Persists buffered changes (they are in the write-ahead log already).
    pub fn flush(&self) -> Result<(), PortError> {
        self.shard.flush().map_err(port_error)
    }
}

#[async_trait]
impl VectorIndex for LocalIndex {
    fn encoder(&self) -> &EncoderId {
        &self.encoder
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn upsert(&self, photos: Vec<IndexedPhoto>) -> Result<(), PortError> {
        let mut points = Vec::with_capacity(photos.len());
        for photo in photos {
            ports::check_dimension(self.dimension, &photo.vector)?;
            let facets = &photo.facets;
            let payload = json!({
                "album": facets.album,
                "camera": facets.camera,
                "dated_at": facets.dated_at,
            });
            points.push(qdrant_edge::PointStruct::new(
                point_id(photo.id),
                photo.vector.into_vec(),
                payload,
            ));
        }
        self.write(points)
    }

    async fn delete(&self, ids: &[PhotoId]) -> Result<(), PortError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.iter().map(|id| point_id(*id)).collect();
        let deleted = self.on_shard(|shard| {
            shard.update(UpdateOperation::PointOperation(
                PointOperations::DeletePoints { ids },
            ))
        });
        self.writes.fetch_add(1, Ordering::Release);
        deleted
    }

    async fn nearest(
        &self,
        query: &Embedding,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<Neighbour>, PortError> {
        ports::check_dimension(self.dimension, query)?;
        let mut request = QueryRequest::new(limit);
        request.query = Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
            query: VectorInternal::Dense(query.as_slice().to_vec()),
            using: None,
        })));
        request.filter = qdrant_filter(filter)?;
        request.params = Some(self.tuning.search_params());
        request.with_vector = WithVector::Bool(true);
        request.with_payload = WithPayloadInterface::Bool(false);
        self.on_shard(|shard| shard.query(request))?
            .into_iter()
            .map(|point| {
                Ok(Neighbour {
                    id: photo_id(&point.id)?,
                    vector: dense(point.vector)?,
                })
            })
            .collect()
    }

    async fn vectors(&self, ids: &[PhotoId]) -> Result<Vec<Neighbour>, PortError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut request = RetrieveRequest::new(ids.iter().map(|id| point_id(*id)).collect());
        request.with_vector = Some(WithVector::Bool(true));
        request.with_payload = Some(WithPayloadInterface::Bool(false));
        self.on_shard(|shard| shard.retrieve(request))?
            .into_iter()
            .map(|record| {
                Ok(Neighbour {
                    id: photo_id(&record.id)?,
                    vector: dense(record.vector)?,
                })
            })
            .collect()
    }

    async fn sample(&self, limit: usize) -> Result<Vec<Embedding>, PortError> {
        // Read before the segments: a write that completes while they are read makes this
        // sample stale at once.
        let writes = self.writes.load(Ordering::Acquire);
        let cached = self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sample) = cached
            .as_ref()
            .filter(|sample| sample.writes == writes && sample.limit == limit)
        {
            return Ok(sample.vectors.clone());
        }
        drop(cached);
        let mut request = ScrollRequest::new();
        request.limit = Some(limit);
        request.with_vector = WithVector::Bool(true);
        request.with_payload = Some(WithPayloadInterface::Bool(false));
        let (records, _next) = self.on_shard(|shard| shard.scroll(request))?;
        let vectors = records
            .into_iter()
            .map(|r| dense(r.vector))
            .collect::<Result<Vec<_>, _>>()?;
        *self.sample.lock().unwrap_or_else(PoisonError::into_inner) = Some(CachedSample {
            writes,
            limit,
            vectors: vectors.clone(),
        });
        Ok(vectors)
    }

    async fn count(&self) -> Result<u64, PortError> {
        self.count_now()
    }

    async fn ids(&self, after: Option<PhotoId>, limit: usize) -> Result<Vec<PhotoId>, PortError> {
        let Some(start) = ports::first_id_after(after) else {
            return Ok(Vec::new());
        };
        let mut request = ScrollRequest::new();
        request.offset = Some(point_id(start));
        request.limit = Some(limit);
        request.with_vector = WithVector::Bool(false);
        request.with_payload = Some(WithPayloadInterface::Bool(false));
        let (records, _next) = self.on_shard(|shard| shard.scroll(request))?;
        records.iter().map(|record| photo_id(&record.id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn honours_the_vector_index_contract() {
        let directory = tempfile::tempdir().unwrap();
        let encoder: EncoderId = "clip:test/contract@1".parse().unwrap();
        let index =
            LocalIndex::open(directory.path(), &encoder, 4, IndexTuning::default()).unwrap();
        glimpse_core::contract::vector_index_suite(&index).await;
    }

    #[test]
    fn a_larger_budget_builds_larger_segments_in_larger_slices() {
        let segment = |budget: MemoryBudget| IndexTuning::within(budget, 512).max_segment_vectors;
        let default = IndexTuning::within(MemoryBudget::DEFAULT, 512);
        assert_eq!(default.max_segment_vectors, Some(131_072));
        // No merge builds more than a slice.
        assert_eq!(default.build_every, default.max_segment_vectors);
        assert_eq!(segment(MemoryBudget::MIN), Some(MIN_BUILD));
        assert!(segment("4GB".parse().unwrap()) > default.max_segment_vectors);
        assert!(
            IndexTuning::within(MemoryBudget::DEFAULT, 1024).max_segment_vectors
                < default.max_segment_vectors,
            "larger vectors, smaller segments"
        );
    }

    #[tokio::test]
    async fn new_indexes_store_half_floats_and_older_ones_keep_f32_in_segments_of_equal_bytes() {
        let photos: Vec<_> = (0..50).map(photo).collect();
        // How `glimpse serve` opens an index.
        let budgeted = IndexTuning::within(MemoryBudget::DEFAULT, SLICED_DIMENSION);
        let older = IndexTuning {
            originals: Originals::F32,
            ..IndexTuning::default()
        };
        for (created, originals) in [
            (IndexTuning::default(), Originals::F16),
            (older, Originals::F32),
        ] {
            let directory = tempfile::tempdir().unwrap();
            let encoder: EncoderId = "clip:test/originals@1".parse().unwrap();
            {
                let index = LocalIndex::open(directory.path(), &encoder, SLICED_DIMENSION, created)
                    .unwrap();
                index.upsert(photos.clone()).await.unwrap();
            }
            let index =
                LocalIndex::open(directory.path(), &encoder, SLICED_DIMENSION, budgeted).unwrap();
            assert_eq!(index.tuning.originals, originals);
            let segment_bytes = |tuning: IndexTuning| {
                tuning.max_segment_vectors.unwrap() * tuning.originals.bytes()
            };
            assert_eq!(segment_bytes(index.tuning), segment_bytes(budgeted));
            for wanted in [&photos[0], &photos[17], &photos[49]] {
                let found = index
                    .nearest(&wanted.vector, &SearchFilter::default(), 3)
                    .await
                    .unwrap();
                assert_eq!(found[0].id, wanted.id);
                let stored = &found[0].vector;
                assert!(stored.cosine(&wanted.vector) > 0.99999);
                let largest_difference = stored
                    .as_slice()
                    .iter()
                    .zip(wanted.vector.as_slice())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // Half floats keep 11 significant bits; f32 differs only by renormalising.
                assert_eq!(largest_difference > 1e-5, originals == Originals::F16);
            }
        }
        let stamped_before_the_choice: Stamp =
            serde_json::from_str(r#"{"encoder": "clip:test/old@1", "dimension": 32}"#).unwrap();
        assert_eq!(stamped_before_the_choice.originals, Originals::F32);
    }

    /// Photo `n`, in album "beach" if `n` is a multiple of 3 and "city" otherwise.
    fn photo_in_album(n: u64) -> IndexedPhoto {
        let mut photo = photo(n);
        photo.facets.album = Some(if n.is_multiple_of(3) { "beach" } else { "city" }.to_owned());
        photo.facets.dated_at = n as i64;
        photo
    }

    /// Opens (or creates) the index of the rewrite tests in `directory`.
    fn open_rewritten(directory: &Path, tuning: IndexTuning) -> LocalIndex {
        let encoder: EncoderId = "clip:test/rewrite@1".parse().unwrap();
        LocalIndex::open(directory, &encoder, SLICED_DIMENSION, tuning).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_index_is_rewritten_with_half_floats_keeping_every_vector_and_facet() {
        let scratch = tempfile::tempdir().unwrap();
        let directory = scratch.path().join("index");
        let older = IndexTuning {
            originals: Originals::F32,
            build_every: Some(200),
            max_segment_vectors: Some(400),
            ..IndexTuning::default()
        };
        let index = open_rewritten(&directory, older);
        let photos: Vec<_> = (0..1000).map(photo_in_album).collect();
        for batch in photos.chunks(100) {
            index.upsert(batch.to_vec()).await.unwrap();
        }
        index.optimize().unwrap();

        let wanted = IndexTuning {
            build_every: Some(300),
            max_segment_vectors: Some(300),
            ..IndexTuning::default()
        };
        let mut told = Vec::new();
        let index = index
            .rewrite(&directory, wanted, |stage, done, total| {
                told.push((stage, done, total))
            })
            .unwrap();
        assert_eq!(index.originals(), Originals::F16);
        assert_eq!(
            told.first(),
            Some(&(RewriteStage::Exporting, 1000, 1000)),
            "one page: {told:?}"
        );
        assert_eq!(
            told.last(),
            Some(&(RewriteStage::Building, 1000, 1000)),
            "{told:?}"
        );
        assert_eq!(index.count().await.unwrap(), 1000);
        for wanted in [&photos[0], &photos[1], &photos[500], &photos[999]] {
            let found = index
                .nearest(&wanted.vector, &SearchFilter::default(), 1)
                .await
                .unwrap();
            assert_eq!(found[0].id, wanted.id);
            assert!(found[0].vector.cosine(&wanted.vector) > 0.9999);
        }
        // The facets came along: a filter on them still selects.
        let beach = SearchFilter {
            album: Some("beach".to_owned()),
            from: Some(100),
            ..SearchFilter::default()
        };
        let found = index.nearest(&photos[1].vector, &beach, 50).await.unwrap();
        assert_eq!(found.len(), 50);
        assert!(
            found
                .iter()
                .all(|hit| hit.id.as_u64().is_multiple_of(3) && hit.id.as_u64() >= 100),
            "{found:?}"
        );
        drop(index);
        let left: Vec<_> = std::fs::read_dir(scratch.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["index"], "nothing of the rewrite is left beside it");
        let reopened = open_rewritten(&directory, IndexTuning::default());
        assert_eq!(reopened.originals(), Originals::F16);
        assert_eq!(reopened.count().await.unwrap(), 1000);
    }

    #[tokio::test]
    async fn a_rewrite_that_cannot_be_written_leaves_the_old_index_as_it_was() {
        let scratch = tempfile::tempdir().unwrap();
        let directory = scratch.path().join("index");
        // A folder of someone else's where the export would go.
        let in_the_way = scratch.path().join("index.export/kept.txt");
        std::fs::create_dir_all(in_the_way.parent().unwrap()).unwrap();
        std::fs::write(&in_the_way, "mine").unwrap();
        let older = IndexTuning {
            originals: Originals::F32,
            ..IndexTuning::default()
        };
        let index = open_rewritten(&directory, older);
        let photos: Vec<_> = (0..50).map(photo_in_album).collect();
        index.upsert(photos.clone()).await.unwrap();

        let error = index
            .rewrite(&directory, IndexTuning::default(), |_, _, _| {})
            .err()
            .unwrap();
        assert!(error.to_string().contains("index.export"), "{error}");
        assert_eq!(std::fs::read_to_string(&in_the_way).unwrap(), "mine");
        assert!(!LocalIndex::finish_rewrite(&directory).unwrap());
        let reopened = open_rewritten(&directory, IndexTuning::default());
        assert_eq!(reopened.originals(), Originals::F32);
        assert_eq!(reopened.count().await.unwrap(), 50);
        let found = reopened
            .nearest(&photos[7].vector, &SearchFilter::default(), 1)
            .await
            .unwrap();
        assert_eq!(found[0].id, photos[7].id);
    }

    /// Photo `n` with a vector of its own: hashed components, far from every other photo's.
    fn photo(n: u64) -> IndexedPhoto {
        let values = (0..SLICED_DIMENSION as u64)
            .map(|i| {
                let mut x = (n * 64 + i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                x ^= x >> 29;
                x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
                x ^= x >> 32;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        IndexedPhoto {
            id: PhotoId::from_u64(n),
            vector: Embedding::normalized(values).unwrap(),
            facets: glimpse_core::photo::Facets {
                album: None,
                camera: None,
                dated_at: 0,
            },
        }
    }

    const SLICED_DIMENSION: usize = 32;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn builds_in_slices_while_two_writers_upsert_and_loses_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let encoder: EncoderId = "clip:test/slices@1".parse().unwrap();
        let tuning = IndexTuning {
            build_every: Some(200),
            max_segment_vectors: Some(400),
            ..IndexTuning::default()
        };
        let index = std::sync::Arc::new(
            LocalIndex::open(directory.path(), &encoder, SLICED_DIMENSION, tuning).unwrap(),
        );
        let writers: Vec<_> = (0..2u64)
            .map(|writer| {
                let index = std::sync::Arc::clone(&index);
                tokio::spawn(async move {
                    for batch in 0..25u64 {
                        let first = writer * 1000 + batch * 40;
                        index
                            .upsert((first..first + 40).map(photo).collect())
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        assert_eq!(index.count().await.unwrap(), 2000);
        for n in [0, 255, 1001, 1999] {
            let query = photo(n).vector;
            let found = index
                .nearest(&query, &SearchFilter::default(), 1)
                .await
                .unwrap();
            assert_eq!(found[0].id, PhotoId::from_u64(n));
        }
        drop(index);
        let reopened =
            LocalIndex::open(directory.path(), &encoder, SLICED_DIMENSION, tuning).unwrap();
        assert_eq!(reopened.count().await.unwrap(), 2000);
    }

    #[tokio::test]
    async fn is_stamped_with_its_encoder_and_survives_reopening() {
        let directory = tempfile::tempdir().unwrap();
        let encoder: EncoderId = "clip:test/a@1".parse().unwrap();
        {
            let index =
                LocalIndex::open(directory.path(), &encoder, 4, IndexTuning::default()).unwrap();
            let vector = Embedding::normalized(vec![1.0, 2.0, 3.0, 4.0]).unwrap();
            index
                .upsert(vec![IndexedPhoto {
                    id: PhotoId::from_u64(5),
                    vector,
                    facets: glimpse_core::photo::Facets {
                        album: None,
                        camera: None,
                        dated_at: 0,
                    },
                }])
                .await
                .unwrap();
        }
        let reopened =
            LocalIndex::open(directory.path(), &encoder, 4, IndexTuning::default()).unwrap();
        assert_eq!(reopened.count().await.unwrap(), 1);
        drop(reopened);
        let other: EncoderId = "clip:test/b@1".parse().unwrap();
        let error = LocalIndex::open(directory.path(), &other, 4, IndexTuning::default())
            .err()
            .unwrap();
        assert!(
            matches!(error, IndexOpenError::OtherEncoder { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("clip:test/a@1"));
    }
}
