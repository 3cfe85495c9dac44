//! The vector index at the edge: Qdrant's REST API, on the collection the workers create for the
//! encoder (`glimpse_contracts::qdrant`: same name, payload and point ids as their gRPC adapter).

use bytes::Bytes;
use glimpse_contracts::qdrant::{ALBUM, CAMERA, DATED_AT, collection_name, payload};
use glimpse_core::photo::PhotoId;
use glimpse_core::ports::{self, IndexedPhoto, Neighbour, PortError, SearchFilter, VectorIndex};
use glimpse_core::{Embedding, EncoderId};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::outbound::{Reply, send};
use crate::settings::QdrantSettings;

/// HNSW candidate list of a search (the workers' default).
const SEARCH_EF: u64 = 128;
/// With quantisation, how many times `limit` candidates are rescored on the originals.
const OVERSAMPLING: f64 = 3.0;

/// One encoder's collection over REST.
pub struct QdrantRest {
    base: String,
    api_key: String,
    collection: String,
    encoder: EncoderId,
    dimension: usize,
}

#[derive(Deserialize)]
struct Answer<T> {
    result: T,
}

#[derive(Deserialize)]
struct Point {
    id: u64,
    vector: Option<Vec<f32>>,
}

#[derive(Deserialize)]
struct Points {
    points: Vec<Point>,
}

#[derive(Deserialize)]
struct Count {
    count: u64,
}

impl QdrantRest {
    /// The collection of `encoder`'s vectors (made by the first worker of that encoder).
    pub fn new(settings: &QdrantSettings, encoder: &EncoderId, dimension: usize) -> Self {
        Self {
            base: settings.url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
            collection: collection_name(&settings.collection_prefix, encoder),
            encoder: encoder.clone(),
            dimension,
        }
    }

    /// Sends `body` to the collection's `path` and returns the answer as it is.
    async fn exchange(&self, method: Method, path: &str, body: Value) -> Result<Reply, PortError> {
        let url = format!("{}/collections/{}{path}", self.base, self.collection);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/json");
        if !self.api_key.is_empty() {
            request = request.header("api-key", &self.api_key);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| PortError::Internal(format!("the qdrant_url does not work: {e}")))?;
        send("the vector index (Qdrant)", request).await
    }

    /// Sends `body` to the collection's `path` and reads the `result` of a successful answer.
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Value,
    ) -> Result<T, PortError> {
        let reply = self.exchange(method, path, body).await?;
        self.check(what, &reply)?;
        serde_json::from_slice::<Answer<T>>(&reply.body)
            .map(|answer| answer.result)
            .map_err(|e| {
                PortError::Internal(format!("vector index ({what}): unexpected answer: {e}"))
            })
    }

    fn check(&self, what: &str, reply: &Reply) -> Result<(), PortError> {
        let message = || {
            format!(
                "vector index ({what}): {} {}",
                reply.status,
                reply.excerpt()
            )
        };
        match reply.status {
            status if status.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(PortError::Unavailable(format!(
                "the vector index has no collection {} for encoder {} yet: start a worker of \
                 this encoder (it creates the collection)",
                self.collection, self.encoder
            ))),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(PortError::Internal(format!(
                "{}: the Qdrant API key (qdrant_api_key) is missing or wrong",
                message()
            ))),
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                Err(PortError::Rejected(message()))
            }
            status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                Err(PortError::Unavailable(message()))
            }
            _ => Err(PortError::Internal(message())),
        }
    }
}

fn neighbour(point: Point) -> Result<Neighbour, PortError> {
    Ok(Neighbour {
        id: PhotoId::from_u64(point.id),
        vector: dense(point.vector)?,
    })
}

fn dense(vector: Option<Vec<f32>>) -> Result<Embedding, PortError> {
    vector
        .ok_or_else(|| {
            PortError::Internal("vector index returned a point without its vector".to_owned())
        })
        .and_then(|v| {
            Embedding::normalized(v).map_err(|e| PortError::Internal(format!("vector index: {e}")))
        })
}

/// The filter in Qdrant's JSON, or `None` when nothing is filtered.
fn filter_json(filter: &SearchFilter) -> Option<Value> {
    let mut must = Vec::new();
    if let Some(album) = &filter.album {
        must.push(json!({"key": ALBUM, "match": {"value": album}}));
    }
    if let Some(camera) = &filter.camera {
        must.push(json!({"key": CAMERA, "match": {"text": camera}}));
    }
    if filter.from.is_some() || filter.until.is_some() {
        must.push(json!({"key": DATED_AT, "range": {"gte": filter.from, "lt": filter.until}}));
    }
    let ids: Vec<u64> = filter.exclude.iter().map(|id| id.as_u64()).collect();
    let must_not = if ids.is_empty() {
        Vec::new()
    } else {
        vec![json!({ "has_id": ids })]
    };
    (!must.is_empty() || !must_not.is_empty()).then(|| json!({"must": must, "must_not": must_not}))
}

#[async_trait::async_trait(?Send)]
impl VectorIndex for QdrantRest {
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
        for photo in &photos {
            ports::check_dimension(self.dimension, &photo.vector)?;
            points.push(json!({
                "id": photo.id.as_u64(),
                "vector": photo.vector.as_slice(),
                "payload": payload(&photo.facets),
            }));
        }
        self.call::<Value>(
            "upsert",
            Method::PUT,
            "/points?wait=true",
            json!({ "points": points }),
        )
        .await
        .map(drop)
    }

    async fn delete(&self, ids: &[PhotoId]) -> Result<(), PortError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = ids.iter().map(|id| id.as_u64()).collect();
        let reply = self
            .exchange(
                Method::POST,
                "/points/delete?wait=true",
                json!({ "points": ids }),
            )
            .await?;
        // No collection: nothing of this encoder was ever indexed, so nothing to delete.
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        self.check("delete", &reply)
    }

    async fn nearest(
        &self,
        query: &Embedding,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<Neighbour>, PortError> {
        ports::check_dimension(self.dimension, query)?;
        let mut body = json!({
            "query": query.as_slice(),
            "limit": limit,
            "with_vector": true,
            "with_payload": false,
            "params": {
                "hnsw_ef": SEARCH_EF,
                "quantization": {"rescore": true, "oversampling": OVERSAMPLING},
            },
        });
        if let (Some(filter), Some(object)) = (filter_json(filter), body.as_object_mut()) {
            object.insert("filter".to_owned(), filter);
        }
        self.call::<Points>("query", Method::POST, "/points/query", body)
            .await?
            .points
            .into_iter()
            .map(neighbour)
            .collect()
    }

    async fn vectors(&self, ids: &[PhotoId]) -> Result<Vec<Neighbour>, PortError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<u64> = ids.iter().map(|id| id.as_u64()).collect();
        self.call::<Vec<Point>>(
            "retrieve",
            Method::POST,
            "/points",
            json!({"ids": ids, "with_vector": true, "with_payload": false}),
        )
        .await?
        .into_iter()
        .map(neighbour)
        .collect()
    }

    async fn sample(&self, limit: usize) -> Result<Vec<Embedding>, PortError> {
        self.call::<Points>(
            "scroll",
            Method::POST,
            "/points/scroll",
            json!({"limit": limit, "with_vector": true, "with_payload": false}),
        )
        .await?
        .points
        .into_iter()
        .map(|point| dense(point.vector))
        .collect()
    }

    async fn count(&self) -> Result<u64, PortError> {
        self.call::<Count>(
            "count",
            Method::POST,
            "/points/count",
            json!({"exact": true}),
        )
        .await
        .map(|count| count.count)
    }

    async fn ids(&self, after: Option<PhotoId>, limit: usize) -> Result<Vec<PhotoId>, PortError> {
        let Some(start) = ports::first_id_after(after) else {
            return Ok(Vec::new());
        };
        Ok(self
            .call::<Points>(
                "scroll",
                Method::POST,
                "/points/scroll",
                json!({
                    "offset": start.as_u64(),
                    "limit": limit,
                    "with_vector": false,
                    "with_payload": false,
                }),
            )
            .await?
            .points
            .into_iter()
            .map(|point| PhotoId::from_u64(point.id))
            .collect())
    }
}
