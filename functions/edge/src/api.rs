//! The public API at the edge: the paths and the error contract of the embedded server
//! (`glimpse_contracts::api`), each component serving its share. Handlers translate HTTP to core's
//! flows and back; statuses are decided here and nowhere else in the components.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use glimpse_contracts::api::{
    self, ApiError, BrowseParams, SearchParams, SimilarParams, TokenHelp, check_bearer,
    token_refusal,
};
use glimpse_core::flows::{self, FlowError, Ports};
use glimpse_core::photo::{PhotoId, UploadId};
use glimpse_core::ports::{Added, Catalog, PortError};
use glimpse_core::search::SearchRequest;
use glimpse_core::{CachedTextEmbedder, EncoderId};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use spin_sdk::http::Request;

use crate::blobs::PresignedS3;
use crate::catalog::{self, EdgeCatalog};
use crate::index::QdrantRest;
use crate::pool::{PoolEncoder, PoolReranker};
use crate::settings::{self, PoolSettings, QdrantSettings, S3Settings};

/// What a component answers.
pub type Response = http::Response<Full<Bytes>>;

/// How long a presigned URL handed to a client stays valid.
const CLIENT_URL_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// Where a person finds the token the edge wants.
const TOKEN_HELP: TokenHelp<'static> = TokenHelp {
    token: "the deployment's `api_token` Spin variable",
    private_reads: "the `protect_reads` Spin variable",
};

/// The components, each serving its share of the paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// `/api/photos`, `/api/photos/{id}`, `/api/photos/{id}/original`, `/healthz`.
    Photos,
    /// `/api/uploads`, `/api/uploads/{id}`.
    Uploads,
    /// `/api/search`, `/api/search/{id}`, `/api/photos/{id}/similar`.
    Search,
    /// `/api/search/{id}/clicks`.
    Feedback,
}

/// A request's route: the path's parts after `/api/`.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Health,
    Photos,
    Photo(&'a str),
    Original(&'a str),
    Similar(&'a str),
    Retry(&'a str),
    Uploads,
    Upload(&'a str),
    Search,
    SearchLog(&'a str),
    Clicks(&'a str),
}

impl<'a> Route<'a> {
    fn of(path: &'a str) -> Option<Self> {
        if path == "/healthz" {
            return Some(Self::Health);
        }
        let parts: Vec<&str> = path.strip_prefix("/api/")?.split('/').collect();
        Some(match parts.as_slice() {
            ["photos"] => Self::Photos,
            ["photos", id] => Self::Photo(id),
            ["photos", id, "original"] => Self::Original(id),
            ["photos", id, "similar"] => Self::Similar(id),
            ["photos", id, "retry"] => Self::Retry(id),
            ["uploads"] => Self::Uploads,
            ["uploads", id] => Self::Upload(id),
            ["search"] => Self::Search,
            ["search", id] => Self::SearchLog(id),
            ["search", id, "clicks"] => Self::Clicks(id),
            _ => return None,
        })
    }

    fn component(&self) -> Component {
        match self {
            Self::Health | Self::Photos | Self::Photo(_) | Self::Original(_) | Self::Retry(_) => {
                Component::Photos
            }
            Self::Uploads | Self::Upload(_) => Component::Uploads,
            Self::Search | Self::SearchLog(_) | Self::Similar(_) => Component::Search,
            Self::Clicks(_) => Component::Feedback,
        }
    }
}

/// Serves one request as `component`.
pub async fn serve(component: Component, request: Request) -> Response {
    match handle(component, request).await {
        Ok(response) => response,
        Err(error) => error_response(error),
    }
}

fn error_response(error: ApiError) -> Response {
    if error.status == StatusCode::INTERNAL_SERVER_ERROR {
        eprintln!("glimpse edge: internal error: {}", error.message);
    }
    let mut response = json_response(error.status, &error.body());
    if let Some(seconds) = error.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn ok(body: Value) -> Response {
    json_response(StatusCode::OK, &body)
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not served on {path}"),
    )
}

/// Writes need the bearer token; reads too when `protect_reads` is set. Searches and clicks are
/// not writes of photos, settings or models (a click is accepted for a real result only).
async fn authorise(request: &Request, route: &Route<'_>) -> Result<(), ApiError> {
    let is_write =
        !request.method().is_safe() && !matches!(route, Route::Search | Route::Clicks(_));
    let needs_token = *route != Route::Health && (is_write || settings::protect_reads().await?);
    if !needs_token {
        return Ok(());
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    check_bearer(given, &settings::api_token().await?)
        .map_err(|problem| token_refusal(problem, is_write, TOKEN_HELP))
}

async fn handle(component: Component, request: Request) -> Result<Response, ApiError> {
    let path = request.uri().path().to_owned();
    let route = Route::of(&path)
        .filter(|route| route.component() == component)
        .ok_or_else(|| FlowError::NotFound(format!("there is no {path} here")))?;
    authorise(&request, &route).await?;
    let method = request.method().clone();
    let query = request.uri().query().unwrap_or_default().to_owned();
    match (&method, route) {
        (&Method::GET, Route::Health) => Ok(http::Response::new(Full::new(Bytes::from("ok")))),
        (&Method::GET, Route::Photos) => browse(&query).await,
        (&Method::POST, Route::Photos) => upload(&query, request).await,
        (&Method::GET, Route::Photo(id)) => photo(id).await,
        (&Method::DELETE, Route::Photo(id)) => delete_photo(id).await,
        (&Method::GET, Route::Original(id)) => original(id).await,
        (&Method::POST, Route::Retry(id)) => retry(id).await,
        (&Method::POST, Route::Uploads) => start_upload().await,
        (&Method::POST, Route::Upload(id)) => complete_upload(id, &query).await,
        (&Method::GET, Route::Search) => {
            search(query_params::<SearchParams>(&query)?.into_request()?).await
        }
        (&Method::POST, Route::Search) => {
            let request = json_body(
                request,
                r#"{"query": "…", "top_k": 20, "offset": 0, "min_score": 1.5}"#,
            )
            .await?;
            search(request).await
        }
        (&Method::GET, Route::SearchLog(id)) => search_log(id).await,
        (&Method::GET, Route::Similar(id)) => {
            let id = api::parse_photo_id(id)?;
            search(query_params::<SimilarParams>(&query)?.into_request(id)).await
        }
        (&Method::POST, Route::Clicks(id)) => click(id, request).await,
        (method, _) => Err(method_not_allowed(method, &path)),
    }
}

fn query_params<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("Failed to deserialize query string: {e}")))
}

/// Reads at most `limit` bytes of body; more is a 413 naming `setting`.
async fn body_bytes(request: Request, limit: usize, setting: &str) -> Result<Bytes, ApiError> {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::too_large(limit, setting));
    }
    Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                ApiError::too_large(limit, setting)
            } else {
                ApiError::bad_body(StatusCode::BAD_REQUEST, &error.to_string())
            }
        })
}

async fn json_body<T: DeserializeOwned>(request: Request, example: &str) -> Result<T, ApiError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(ApiError::bad_json(
            "Expected request with `Content-Type: application/json`",
            example,
        ));
    }
    let bytes = body_bytes(request, api::MAX_JSON_BYTES, api::JSON_LIMIT_NOTE).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_json(
            format!("Failed to deserialize the JSON body into the target type: {e}"),
            example,
        )
    })
}

async fn open_catalog() -> Result<EdgeCatalog, ApiError> {
    Ok(catalog::open(&settings::database_address().await?).await?)
}

async fn blobs() -> Result<PresignedS3, ApiError> {
    Ok(PresignedS3::new(S3Settings::load().await?))
}

/// The encoder the index is built with, as the workers registered it.
async fn current_encoder(catalog: &EdgeCatalog) -> Result<(EncoderId, usize), ApiError> {
    catalog.current_encoder().await?.ok_or_else(|| {
        FlowError::Unavailable(
            "no worker has registered an encoder yet: start the worker pool once so the index \
             exists"
                .to_owned(),
        )
        .into()
    })
}

async fn browse(query: &str) -> Result<Response, ApiError> {
    let request = query_params::<BrowseParams>(query)?.into_request()?;
    let catalog = open_catalog().await?;
    let page = flows::browse(&catalog, &request.filters, request.cursor, request.limit).await?;
    Ok(ok(json!(page)))
}

#[derive(Deserialize)]
struct AlbumParams {
    album: Option<String>,
}

fn added_response(added: Added) -> Response {
    let status = if added.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let location = format!("/api/photos/{}", added.id);
    let mut response = json_response(
        status,
        &json!({"id": added.id, "created": added.created, "status_url": location}),
    );
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

async fn upload(query: &str, request: Request) -> Result<Response, ApiError> {
    let params: AlbumParams = query_params(query)?;
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/"));
    if is_form {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the image's bytes as the request body (curl --data-binary @photo.jpg), not a \
             form; for originals larger than the upload limit use POST /api/uploads",
        ));
    }
    let limit = settings::max_upload_bytes().await?;
    let bytes = body_bytes(
        request,
        limit,
        "max_upload_mb; larger originals go straight to storage through POST /api/uploads",
    )
    .await?;
    let catalog = open_catalog().await?;
    let blobs = blobs().await?;
    let added = flows::upload(&catalog, &blobs, bytes.into(), params.album, now_seconds()).await?;
    Ok(added_response(added))
}

async fn start_upload() -> Result<Response, ApiError> {
    let upload = UploadId::random();
    let blobs = blobs().await?;
    let put_url = blobs.presign(&Method::PUT, &upload.staged_key(), CLIENT_URL_EXPIRY)?;
    let complete = format!("/api/uploads/{upload}");
    let mut response = json_response(
        StatusCode::CREATED,
        &json!({
            "upload_id": upload,
            "put_url": put_url,
            "expires_in_seconds": CLIENT_URL_EXPIRY.as_secs(),
            "complete_url": complete,
            "next": "PUT the original's bytes to put_url, then POST complete_url (add ?album=… \
                     to file it in an album)",
        }),
    );
    if let Ok(location) = HeaderValue::from_str(&complete) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn complete_upload(id: &str, query: &str) -> Result<Response, ApiError> {
    let upload: UploadId = id
        .parse()
        .map_err(|e: glimpse_core::photo::UploadIdError| ApiError::bad_request(e.to_string()))?;
    let params: AlbumParams = query_params(query)?;
    let catalog = open_catalog().await?;
    let blobs = blobs().await?;
    let added =
        flows::complete_upload(&catalog, &blobs, upload, params.album, now_seconds()).await?;
    Ok(added_response(added))
}

async fn find_photo(
    catalog: &EdgeCatalog,
    id: &str,
) -> Result<glimpse_core::photo::Photo, ApiError> {
    let id: PhotoId = api::parse_photo_id(id)?;
    catalog
        .photo(id)
        .await?
        .ok_or_else(|| api::no_such_photo(id))
}

async fn photo(id: &str) -> Result<Response, ApiError> {
    let catalog = open_catalog().await?;
    Ok(ok(json!(find_photo(&catalog, id).await?)))
}

async fn delete_photo(id: &str) -> Result<Response, ApiError> {
    let id = api::parse_photo_id(id)?;
    let catalog = open_catalog().await?;
    let blobs = blobs().await?;
    let (encoder, dimension) = current_encoder(&catalog).await?;
    let index = QdrantRest::new(&QdrantSettings::load().await?, &encoder, dimension);
    flows::delete_photo(&catalog, &blobs, &index, id, false).await?;
    let mut response = http::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

async fn retry(id: &str) -> Result<Response, ApiError> {
    let id = api::parse_photo_id(id)?;
    let catalog = open_catalog().await?;
    Ok(ok(json!(flows::retry_photo(&catalog, id).await?)))
}

/// A redirect to a short-lived presigned GET of the original: the bytes never pass through the
/// component.
async fn original(id: &str) -> Result<Response, ApiError> {
    let catalog = open_catalog().await?;
    let photo = find_photo(&catalog, id).await?;
    let url = blobs()
        .await?
        .presign(&Method::GET, &photo.origin.blob_key(), CLIENT_URL_EXPIRY)?;
    let mut response = http::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    let location = HeaderValue::from_str(&url)
        .map_err(|e| ApiError::from(PortError::Internal(format!("presigned URL: {e}"))))?;
    response.headers_mut().insert(header::LOCATION, location);
    // Cached by the browser for less time than the URL lives.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=600"),
    );
    Ok(response)
}

/// A search on the pool's encoder behind the query-embedding cache (so a query seen before is
/// answered while the pool sleeps), Qdrant, and the pool's reranker within its budget.
async fn search(request: SearchRequest) -> Result<Response, ApiError> {
    // A request that cannot succeed is a 400 even before a worker has registered an encoder.
    flows::check_search(&request)?;
    let catalog = open_catalog().await?;
    let (encoder, dimension) = current_encoder(&catalog).await?;
    let pool = PoolSettings::load().await?;
    let index = QdrantRest::new(&QdrantSettings::load().await?, &encoder, dimension);
    let pool_encoder = PoolEncoder::new(&pool, encoder);
    let text = CachedTextEmbedder::new(&pool_encoder, &catalog);
    let reranker = PoolReranker::new(&pool);
    let ports = Ports {
        catalog: &catalog,
        index: &index,
        text: &text,
        reranker: &reranker,
    };
    let response = flows::search(ports, &request).await?;
    if let Some(reason) = &response.rerank_fallback {
        eprintln!(
            "glimpse edge: rerank fallback for search {}: {reason}",
            response.query_id
        );
    }
    Ok(ok(json!(response)))
}

async fn search_log(id: &str) -> Result<Response, ApiError> {
    let query_id = api::parse_query_id(id)?;
    let catalog = open_catalog().await?;
    let entry = catalog
        .search_log(&query_id)
        .await?
        .ok_or_else(|| FlowError::NotFound(format!("there is no search {query_id}")))?;
    Ok(ok(json!(entry)))
}

#[derive(Deserialize)]
struct ClickBody {
    rank: u32,
}

async fn click(id: &str, request: Request) -> Result<Response, ApiError> {
    let query_id = api::parse_query_id(id)?;
    let body: ClickBody = json_body(request, r#"{"rank": 1}"#).await?;
    let catalog = open_catalog().await?;
    let clicked = flows::record_click(&catalog, &query_id, body.rank).await?;
    Ok(ok(
        json!({"query_id": query_id, "rank": clicked.rank, "photo_id": clicked.photo_id}),
    ))
}
