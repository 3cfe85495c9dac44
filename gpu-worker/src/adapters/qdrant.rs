//! The managed VectorIndex: a Qdrant server or cluster over gRPC (qdrant-client). One collection
//! per encoder id, named after it and stamped with it in the collection's metadata, with the
//! encoder's dimension and cosine distance; HNSW and int8 scalar quantisation (in RAM, rescored
//! on the originals) as configured; payload indexes on the filter fields. Point ids are photo ids,
//! so indexing a photo again replaces its point.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use glimpse_core::photo::PhotoId;
use glimpse_core::ports::{self, IndexedPhoto, Neighbour, PortError, SearchFilter, VectorIndex};
use glimpse_core::{Embedding, EncoderId};

use glimpse_contracts::qdrant::{
    ALBUM, CAMERA, DATED_AT, MINIMUM_SERVER, STAMP_KEY, collection_name, payload, version_at_least,
};
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::vector_output::Vector as VectorOutput;
use qdrant_client::qdrant::vectors_config::Config as VectorsConfig;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder, HnswConfigDiffBuilder,
    PointId, PointStruct, PointsIdsList, QuantizationSearchParamsBuilder, QuantizationType,
    QueryPointsBuilder, Range, RetrievedPoint, ScalarQuantizationBuilder, ScrollPointsBuilder,
    SearchParamsBuilder, UpsertPointsBuilder, VectorParamsBuilder, VectorsOutput,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde_json::json;

/// Where the Qdrant server is and how collections are built and searched.
#[derive(Clone)]
pub struct QdrantSettings {
    /// The gRPC URL, e.g. `http://127.0.0.1:6334` (Qdrant Cloud: `https://…:6334`).
    pub url: String,
    /// The API key, if the server wants one (never printed).
    pub api_key: Option<String>,
    /// Collection names start with this, followed by the encoder's name and a hash of its id.
    pub collection_prefix: String,
    /// HNSW graph degree (when creating a collection).
    pub m: u64,
    /// HNSW build candidate list (when creating a collection).
    pub ef_construct: u64,
    /// HNSW search candidate list.
    pub search_ef: u64,
    /// Keep int8 scalar-quantised vectors (quantile 0.99) in RAM and rescore on the originals.
    pub quantized: bool,
    /// With quantisation, how many times `limit` candidates are rescored.
    pub oversampling: f64,
    /// How long one request may take.
    pub timeout: Duration,
}

impl Default for QdrantSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:6334".to_owned(),
            api_key: None,
            collection_prefix: "glimpse".to_owned(),
            m: 16,
            ef_construct: 200,
            search_ef: 128,
            quantized: true,
            oversampling: 3.0,
            timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for QdrantSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QdrantSettings")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("collection_prefix", &self.collection_prefix)
            .field("m", &self.m)
            .field("ef_construct", &self.ef_construct)
            .field("search_ef", &self.search_ef)
            .field("quantized", &self.quantized)
            .field("oversampling", &self.oversampling)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The Qdrant index of one encoder.
pub struct QdrantIndex {
    client: Qdrant,
    collection: String,
    encoder: EncoderId,
    dimension: usize,
    settings: QdrantSettings,
}

/// Connection trouble, timeouts and overload are worth retrying; everything else is a problem of
/// configuration or a bug. The API key never appears: tonic's messages do not carry it.
fn port_error(what: &str, error: QdrantError) -> PortError {
    use tonic::Code;
    match error {
        QdrantError::ResponseError { status } => {
            let message = format!("vector index ({what}): {}", status.message());
            match status.code() {
                // qdrant-client reports a refused or failed connection as `Internal`.
                Code::Internal if status.message().starts_with("Failed to connect") => {
                    PortError::Unavailable(message)
                }
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Cancelled => PortError::Unavailable(message),
                Code::InvalidArgument | Code::OutOfRange => PortError::Rejected(message),
                Code::Unauthenticated | Code::PermissionDenied => PortError::Internal(format!(
                    "{message}: the Qdrant API key is missing or wrong (GLIMPSE__QDRANT__API_KEY)"
                )),
                Code::Ok
                | Code::Unknown
                | Code::NotFound
                | Code::AlreadyExists
                | Code::FailedPrecondition
                | Code::Unimplemented
                | Code::Internal
                | Code::DataLoss => PortError::Internal(message),
            }
        }
        QdrantError::ResourceExhaustedError {
            retry_after_seconds,
            ..
        } => PortError::Unavailable(format!(
            "vector index ({what}) is rate limited: retry after {retry_after_seconds} s"
        )),
        QdrantError::Io(error) => PortError::Unavailable(format!("vector index ({what}): {error}")),
        other => PortError::Internal(format!("vector index ({what}): {other}")),
    }
}

fn point_id(id: PhotoId) -> PointId {
    id.as_u64().into()
}

fn photo_id(id: Option<PointId>) -> Result<PhotoId, PortError> {
    match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Num(n)) => Ok(PhotoId::from_u64(n)),
        other => Err(PortError::Internal(format!(
            "vector index holds a point {other:?} that is not a photo"
        ))),
    }
}

fn dense(vectors: Option<VectorsOutput>) -> Result<Embedding, PortError> {
    match vectors.and_then(|v| v.get_vector()) {
        Some(VectorOutput::Dense(dense)) => Embedding::normalized(dense.data)
            .map_err(|e| PortError::Internal(format!("vector index: {e}"))),
        _ => Err(PortError::Internal(
            "vector index returned a point without its dense vector".to_owned(),
        )),
    }
}

fn neighbour(id: Option<PointId>, vectors: Option<VectorsOutput>) -> Result<Neighbour, PortError> {
    Ok(Neighbour {
        id: photo_id(id)?,
        vector: dense(vectors)?,
    })
}

/// The filter: album (exact, lowercase), camera (contains: the field has no full-text index, so
/// Qdrant matches a substring, as the embedded index does), date range, excluded photos.
fn qdrant_filter(filter: &SearchFilter) -> Option<Filter> {
    let mut must = Vec::new();
    if let Some(album) = &filter.album {
        must.push(Condition::matches(ALBUM, album.clone()));
    }
    if let Some(camera) = &filter.camera {
        must.push(Condition::matches_text(CAMERA, camera.clone()));
    }
    if filter.from.is_some() || filter.until.is_some() {
        must.push(Condition::range(
            DATED_AT,
            Range {
                gte: filter.from.map(|s| s as f64),
                lt: filter.until.map(|s| s as f64),
                ..Range::default()
            },
        ));
    }
    let must_not: Vec<Condition> = if filter.exclude.is_empty() {
        Vec::new()
    } else {
        vec![Condition::has_id(
            filter.exclude.iter().map(|id| id.as_u64()),
        )]
    };
    if must.is_empty() && must_not.is_empty() {
        return None;
    }
    Some(Filter {
        must,
        must_not,
        ..Filter::default()
    })
}

impl QdrantIndex {
    /// One page of the collection's points, without their payloads.
    async fn scroll(&self, page: ScrollPointsBuilder) -> Result<Vec<RetrievedPoint>, PortError> {
        Ok(self
            .client
            .scroll(page.with_payload(false))
            .await
            .map_err(|e| port_error("scroll", e))?
            .result)
    }

    /// Connects, checks the server's version, and opens the collection of `encoder`, creating it
    /// (with its payload indexes) when absent. A collection stamped with another encoder, or of
    /// another dimension or distance, is refused with [`PortError::Rejected`].
    pub async fn open(
        settings: &QdrantSettings,
        encoder: &EncoderId,
        dimension: usize,
    ) -> Result<Self, PortError> {
        let client = Qdrant::from_url(&settings.url)
            .api_key(settings.api_key.clone())
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(5))
            .skip_compatibility_check()
            .build()
            .map_err(|e| {
                PortError::Rejected(format!(
                    "the Qdrant URL does not work ({e}): expected e.g. http://127.0.0.1:6334 \
                     (the gRPC port)"
                ))
            })?;
        let health = client
            .health_check()
            .await
            .map_err(|e| port_error("health check", e))?;
        if !version_at_least(&health.version, MINIMUM_SERVER) {
            return Err(PortError::Rejected(format!(
                "Qdrant {} is too old: Glimpse needs {}.{} or newer",
                health.version, MINIMUM_SERVER.0, MINIMUM_SERVER.1
            )));
        }
        let index = Self {
            client,
            collection: collection_name(&settings.collection_prefix, encoder),
            encoder: encoder.clone(),
            dimension,
            settings: settings.clone(),
        };
        let exists = index
            .client
            .collection_exists(&index.collection)
            .await
            .map_err(|e| port_error("collection lookup", e))?;
        if !exists && let Err(error) = index.create_collection().await {
            // Several workers starting together race to create it; the loser finds it made.
            let made = index
                .client
                .collection_exists(&index.collection)
                .await
                .map_err(|e| port_error("collection lookup", e))?;
            if !made {
                return Err(error);
            }
        }
        index.check_stamp().await?;
        Ok(index)
    }

    /// The collection's name.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    async fn create_collection(&self) -> Result<(), PortError> {
        let mut vectors = VectorParamsBuilder::new(self.dimension as u64, Distance::Cosine)
            .hnsw_config(
                HnswConfigDiffBuilder::default()
                    .m(self.settings.m)
                    .ef_construct(self.settings.ef_construct),
            );
        if self.settings.quantized {
            vectors = vectors.on_disk(true).quantization_config(
                ScalarQuantizationBuilder::default()
                    .r#type(QuantizationType::Int8.into())
                    .quantile(0.99)
                    .always_ram(true),
            );
        }
        let stamp: HashMap<String, serde_json::Value> = HashMap::from([
            (STAMP_KEY.to_owned(), json!(self.encoder.to_string())),
            ("dimension".to_owned(), json!(self.dimension)),
        ]);
        self.client
            .create_collection(
                CreateCollectionBuilder::new(&self.collection)
                    .vectors_config(vectors)
                    .metadata(stamp),
            )
            .await
            .map_err(|e| port_error("collection creation", e))?;
        for (field, kind) in [(ALBUM, FieldType::Keyword), (DATED_AT, FieldType::Integer)] {
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(&self.collection, field, kind)
                        .wait(true),
                )
                .await
                .map_err(|e| port_error("payload index creation", e))?;
        }
        Ok(())
    }

    /// Refuses a collection built by another encoder or for other vectors.
    async fn check_stamp(&self) -> Result<(), PortError> {
        let info = self
            .client
            .collection_info(&self.collection)
            .await
            .map_err(|e| port_error("collection info", e))?;
        let config = info.result.and_then(|r| r.config).ok_or_else(|| {
            PortError::Internal(format!(
                "Qdrant gave no configuration for {}",
                self.collection
            ))
        })?;
        let wanted = self.encoder.to_string();
        if let Some(found) = config.metadata.get(STAMP_KEY) {
            let found = serde_json::Value::from(found.clone());
            if found.as_str() != Some(wanted.as_str()) {
                return Err(PortError::Rejected(format!(
                    "Qdrant collection {} was built with encoder {found}, not {wanted}; give \
                     this encoder its own collection prefix (GLIMPSE__QDRANT__COLLECTION_PREFIX)",
                    self.collection
                )));
            }
        }
        let params = config
            .params
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config);
        match params {
            Some(VectorsConfig::Params(params))
                if params.size == self.dimension as u64
                    && params.distance == Distance::Cosine as i32 =>
            {
                Ok(())
            }
            other => Err(PortError::Rejected(format!(
                "Qdrant collection {} does not hold one cosine vector of {} dimensions per point \
                 ({other:?}); it was not made by Glimpse for {wanted}",
                self.collection, self.dimension
            ))),
        }
    }

    /// Deletes this encoder's collection (to rebuild it, or after a test).
    pub async fn drop_collection(&self) -> Result<(), PortError> {
        self.client
            .delete_collection(&self.collection)
            .await
            .map(drop)
            .map_err(|e| port_error("collection deletion", e))
    }
}

#[async_trait]
impl VectorIndex for QdrantIndex {
    fn encoder(&self) -> &EncoderId {
        &self.encoder
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn upsert(&self, photos: Vec<IndexedPhoto>) -> Result<(), PortError> {
        if photos.is_empty() {
            return Ok(());
        }
        let mut points = Vec::with_capacity(photos.len());
        for photo in photos {
            ports::check_dimension(self.dimension, &photo.vector)?;
            let payload = Payload::try_from(payload(&photo.facets))
                .map_err(|e| PortError::Internal(format!("vector index payload: {e}")))?;
            points.push(PointStruct::new(
                point_id(photo.id),
                photo.vector.into_vec(),
                payload,
            ));
        }
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
            .await
            .map(drop)
            .map_err(|e| port_error("upsert", e))
    }

    async fn delete(&self, ids: &[PhotoId]) -> Result<(), PortError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = PointsIdsList {
            ids: ids.iter().map(|id| point_id(*id)).collect(),
        };
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(ids)
                    .wait(true),
            )
            .await
            .map(drop)
            .map_err(|e| port_error("delete", e))
    }

    async fn nearest(
        &self,
        query: &Embedding,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<Neighbour>, PortError> {
        ports::check_dimension(self.dimension, query)?;
        let mut params = SearchParamsBuilder::default().hnsw_ef(self.settings.search_ef);
        if self.settings.quantized {
            params = params.quantization(
                QuantizationSearchParamsBuilder::default()
                    .rescore(true)
                    .oversampling(self.settings.oversampling),
            );
        }
        let mut request = QueryPointsBuilder::new(&self.collection)
            .query(query.as_slice().to_vec())
            .limit(limit as u64)
            .params(params)
            .with_vectors(true)
            .with_payload(false);
        if let Some(filter) = qdrant_filter(filter) {
            request = request.filter(filter);
        }
        self.client
            .query(request)
            .await
            .map_err(|e| port_error("query", e))?
            .result
            .into_iter()
            .map(|point| neighbour(point.id, point.vectors))
            .collect()
    }

    async fn vectors(&self, ids: &[PhotoId]) -> Result<Vec<Neighbour>, PortError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<PointId> = ids.iter().map(|id| point_id(*id)).collect();
        self.client
            .get_points(
                GetPointsBuilder::new(&self.collection, ids)
                    .with_vectors(true)
                    .with_payload(false),
            )
            .await
            .map_err(|e| port_error("retrieve", e))?
            .result
            .into_iter()
            .map(|point| neighbour(point.id, point.vectors))
            .collect()
    }

    async fn sample(&self, limit: usize) -> Result<Vec<Embedding>, PortError> {
        self.scroll(
            ScrollPointsBuilder::new(&self.collection)
                .limit(limit as u32)
                .with_vectors(true),
        )
        .await?
        .into_iter()
        .map(|point| dense(point.vectors))
        .collect()
    }

    async fn count(&self) -> Result<u64, PortError> {
        self.client
            .count(CountPointsBuilder::new(&self.collection).exact(true))
            .await
            .map_err(|e| port_error("count", e))
            .map(|response| response.result.map_or(0, |r| r.count))
    }

    async fn ids(&self, after: Option<PhotoId>, limit: usize) -> Result<Vec<PhotoId>, PortError> {
        let Some(start) = ports::first_id_after(after) else {
            return Ok(Vec::new());
        };
        self.scroll(
            ScrollPointsBuilder::new(&self.collection)
                .offset(point_id(start))
                .limit(limit.min(u32::MAX as usize) as u32)
                .with_vectors(false),
        )
        .await?
        .into_iter()
        .map(|point| photo_id(point.id))
        .collect()
    }
}
