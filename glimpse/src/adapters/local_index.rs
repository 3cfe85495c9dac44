//! The embedded VectorIndex: Qdrant's engine in-process (qdrant-edge), so the embedded and the
//! clustered index rank and filter alike. The index directory is stamped with the encoder id and
//! dimension it was built with.

use std::path::Path;

use async_trait::async_trait;
use glimpse_core::photo::PhotoId;
use glimpse_core::ports::{self, IndexedPhoto, Neighbour, PortError, SearchFilter, VectorIndex};
use glimpse_core::{Embedding, EncoderId};
use qdrant_edge::{
    CountRequest, EdgeConfigBuilder, EdgeShard, Filter, NamedQuery, PointId, PointInsertOperations,
    PointOperations, QuantizationSearchParams, QueryEnum, QueryRequest, RetrieveRequest,
    ScoringQuery, ScrollRequest, SearchParams, UpdateOperation, VectorInternal,
    VectorStructInternal, WithPayloadInterface, WithVector,
};
use serde::{Deserialize, Serialize};

use serde_json::json;

use crate::blocking::off_runtime;

/// The file that records which encoder built an index.
const STAMP_FILE: &str = "glimpse-index.json";
const SHARD_DIRECTORY: &str = "shard";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Stamp {
    encoder: EncoderId,
    dimension: usize,
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
}

impl Default for IndexTuning {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construct: 100,
            search_ef: 128,
            quantized: true,
        }
    }
}

impl IndexTuning {
    fn vector_params(&self, dimension: usize) -> Result<qdrant_edge::EdgeVectorParams, String> {
        let mut params = json!({
            "size": dimension,
            "distance": "Cosine",
            "hnsw_config": {
                "m": self.m,
                "ef_construct": self.ef_construct,
                "full_scan_threshold": 10_000,
            },
        });
        if self.quantized {
            params["memory"] = json!("cold");
            params["quantization_config"] =
                json!({"scalar": {"type": "int8", "quantile": 0.99, "always_ram": true}});
        }
        serde_json::from_value(params).map_err(|e| e.to_string())
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
    encoder: EncoderId,
    dimension: usize,
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
        };
        let shard = if stamp_path.exists() {
            let text =
                std::fs::read_to_string(&stamp_path).map_err(|e| storage_error(directory, e))?;
            let found: Stamp =
                serde_json::from_str(&text).map_err(|e| storage_error(directory, e))?;
            if found != wanted {
                return Err(IndexOpenError::OtherEncoder {
                    directory: directory.display().to_string(),
                    found: found.to_string(),
                    wanted: wanted.to_string(),
                });
            }
            // A damaged shard may make the engine panic rather than fail: either way the index
            // cannot be opened.
            std::panic::catch_unwind(|| EdgeShard::load(&shard_path, None))
                .map_err(|_| storage_error(directory, "its files are damaged"))?
                .map_err(|e| storage_error(directory, e))?
        } else {
            std::fs::create_dir_all(&shard_path).map_err(|e| storage_error(directory, e))?;
            let params = tuning
                .vector_params(dimension)
                .map_err(|e| storage_error(directory, e))?;
            let config = EdgeConfigBuilder::new()
                .vector(qdrant_edge::DEFAULT_VECTOR_NAME, params)
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
        let changed = self.shard.optimize().map_err(port_error)?;
        self.shard.flush().map_err(port_error)?;
        Ok(changed)
    }

    /// Runs `work` on the shard, off the async runtime's worker threads.
    fn on_shard<T>(
        &self,
        work: impl FnOnce(&EdgeShard) -> Result<T, qdrant_edge::OperationError>,
    ) -> Result<T, PortError> {
        off_runtime(|| work(&self.shard)).map_err(port_error)
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
            points.push(
                qdrant_edge::PointStruct::new(point_id(photo.id), photo.vector.into_vec(), payload)
                    .into(),
            );
        }
        self.on_shard(|shard| {
            shard.update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
        })
    }

    async fn delete(&self, ids: &[PhotoId]) -> Result<(), PortError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.iter().map(|id| point_id(*id)).collect();
        self.on_shard(|shard| {
            shard.update(UpdateOperation::PointOperation(
                PointOperations::DeletePoints { ids },
            ))
        })
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
        let mut request = ScrollRequest::new();
        request.limit = Some(limit);
        request.with_vector = WithVector::Bool(true);
        request.with_payload = Some(WithPayloadInterface::Bool(false));
        let (records, _next) = self.on_shard(|shard| shard.scroll(request))?;
        records.into_iter().map(|r| dense(r.vector)).collect()
    }

    async fn count(&self) -> Result<u64, PortError> {
        let mut request = CountRequest::new();
        request.exact = true;
        self.on_shard(|shard| shard.count(request))
            .map(|n| n as u64)
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
