//! The public HTTP API of the embedded engine (axum). Handlers only translate HTTP to core's flows
//! and back; status codes are decided here and nowhere else.

mod gates;
mod stats;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use glimpse_contracts::api::{self, BearerProblem, BrowseParams, SearchParams, SimilarParams};
use glimpse_core::browse::BrowsePage;
use glimpse_core::flows::{self, FlowError};
use glimpse_core::photo::{Photo, PhotoId};
use glimpse_core::ports::{BlobStore, Catalog};
use glimpse_core::search::{QueryId, SearchRequest, SearchResponse};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

use self::gates::Gate;
pub use self::stats::{Stats, percentiles};
use crate::adapters::sqlite::now_seconds;
use crate::embedded::{Engine, EngineError, ScanReport};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");
/// Longest side of a thumbnail, in pixels.
const THUMBNAIL_SIZE: u32 = 320;

/// How the server is configured.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The bearer token every write needs.
    pub token: String,
    /// Whether reads need the token too.
    pub protect_reads: bool,
    /// The largest request body accepted, in bytes.
    pub max_upload_bytes: usize,
    /// Host names (lowercase, with or without `:port`) this server answers besides `localhost`
    /// and IP addresses: the names it is reached under through a reverse proxy or a LAN name.
    pub allowed_hosts: Vec<String>,
    /// Searches at work at once; more wait their turn, briefly, then get a 503.
    pub max_concurrent_searches: usize,
    /// Thumbnails decoded at once; more wait their turn, briefly, then get a 503.
    pub max_concurrent_thumbnails: usize,
}

struct AppState {
    engine: Arc<Engine>,
    wake_indexer: Arc<Notify>,
    config: ServerConfig,
    stats: Stats,
    searches: Gate,
    thumbnails: Gate,
}

type Shared = State<Arc<AppState>>;

/// The JSON body of a request, or a 400 that says what is wrong and shows `example`.
pub(crate) fn json_body<T>(
    body: Result<Json<T>, JsonRejection>,
    example: &str,
) -> Result<T, ApiError> {
    body.map(|Json(value)| value)
        .map_err(|e| api::ApiError::bad_json(e.body_text(), example).into())
}

/// A JSON body of the public API: one over [`api::MAX_JSON_BYTES`] is a 413, as at the edge.
fn public_json_body<T>(body: Result<Json<T>, JsonRejection>, example: &str) -> Result<T, ApiError> {
    if let Err(rejection) = &body
        && rejection.status() == StatusCode::PAYLOAD_TOO_LARGE
    {
        return Err(api::ApiError::json_too_large().into());
    }
    json_body(body, example)
}

/// An error response of the public API: the contract of [`glimpse_contracts::api`], with a
/// `Retry-After` header when a backend is unavailable.
#[derive(Debug)]
pub struct ApiError(api::ApiError);

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self(api::ApiError::new(status, code, message))
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self(api::ApiError::bad_request(message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self.0;
        if error.status == StatusCode::INTERNAL_SERVER_ERROR {
            eprintln!("glimpse: internal error: {}", error.message);
        }
        let mut response = (error.status, Json(error.body())).into_response();
        if let Some(seconds) = error.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<api::ApiError> for ApiError {
    fn from(error: api::ApiError) -> Self {
        Self(error)
    }
}

impl From<FlowError> for ApiError {
    fn from(error: FlowError) -> Self {
        Self(error.into())
    }
}

impl From<glimpse_core::ports::PortError> for ApiError {
    fn from(error: glimpse_core::ports::PortError) -> Self {
        Self(error.into())
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Port(error) => error.into(),
            EngineError::Flow(error) => error.into(),
            EngineError::Storage { .. } => FlowError::Unavailable(error.to_string()).into(),
            EngineError::DataDirectoryBusy(_) | EngineError::Model(_) | EngineError::Index(_) => {
                FlowError::Internal(error.to_string()).into()
            }
        }
    }
}

fn body_error(status: StatusCode, detail: String, limit: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        api::ApiError::too_large(limit, "serve --max-upload-mb").into()
    } else {
        api::ApiError::bad_body(status, &detail).into()
    }
}

/// Builds the router with its state.
pub fn router(
    engine: Arc<Engine>,
    wake_indexer: Arc<Notify>,
    config: ServerConfig,
    stats: Stats,
) -> Router {
    let limit = config.max_upload_bytes;
    let state = Arc::new(AppState {
        engine,
        wake_indexer,
        searches: Gate::new("searches", config.max_concurrent_searches),
        thumbnails: Gate::new("thumbnail decodes", config.max_concurrent_thumbnails),
        config,
        stats,
    });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .route("/api/status", get(status))
        .route("/api/stats", get(stats_report))
        .route("/", get(web_page))
        .route("/assets/{file}", get(web_asset))
        .route("/api/albums", get(albums))
        .route(
            "/api/library/scan",
            post(scan_library).layer(DefaultBodyLimit::max(api::MAX_JSON_BYTES)),
        )
        .route("/api/photos", get(browse).post(upload))
        .route("/api/photos/{id}", get(photo).delete(delete_photo))
        .route("/api/photos/{id}/original", get(original))
        .route("/api/photos/{id}/thumbnail", get(thumbnail))
        .route("/api/photos/{id}/similar", get(similar))
        .route("/api/photos/{id}/retry", post(retry_photo))
        .route(
            "/api/search",
            get(search_get).post(search_post.layer(DefaultBodyLimit::max(api::MAX_JSON_BYTES))),
        )
        .route("/api/search/{query_id}", get(search_log))
        .route(
            "/api/search/{query_id}/clicks",
            post(click).layer(DefaultBodyLimit::max(api::MAX_JSON_BYTES)),
        )
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authorise,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Keeps other sites out: a request must name this server as its host (a web page the user
/// visits cannot reach it through a DNS name of its own that resolves here), and no page of
/// another origin may write. Every response carries headers that keep browsers from sniffing,
/// framing or embedding it elsewhere.
async fn guard(State(state): Shared, request: Request, next: Next) -> Response {
    if let Err(refusal) = check_host(request.headers(), &state.config.allowed_hosts)
        .and_then(|()| check_origin(request.method(), request.headers()))
    {
        return with_security_headers(refusal.into_response());
    }
    with_security_headers(next.run(request).await)
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]:port`), lowercase.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host.clone(), |(name, _)| name.to_owned())
}

/// Accepts a request for `localhost`, an IP address (which no other site's DNS can stand for),
/// or an allowed name.
fn check_host(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return Ok(());
    };
    let name = host_name(host);
    let local = name == "localhost" || name.ends_with(".localhost");
    let address = name.parse::<std::net::IpAddr>().is_ok();
    let listed = allowed
        .iter()
        .any(|a| *a == name || a.eq_ignore_ascii_case(host.trim()));
    if local || address || listed {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "unknown_host",
        format!(
            "this Glimpse answers requests for localhost, its IP addresses and the names given \
             with --allowed-hosts, not `{}`; if you reach it under that name, start it with \
             --allowed-hosts {name}",
            host.chars().take(100).collect::<String>()
        ),
    ))
}

/// Refuses writes from pages of another origin (a browser says where a request comes from).
fn check_origin(method: &axum::http::Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if method.is_safe() {
        return Ok(());
    }
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let cross_site = matches!(text("sec-fetch-site"), Some("cross-site" | "same-site"));
    let foreign_origin = text(header::ORIGIN.as_str()).is_some_and(|origin| {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        text(header::HOST.as_str()).is_none_or(|host| !authority.eq_ignore_ascii_case(host))
    });
    if cross_site || foreign_origin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "changes from another site's pages are refused: use Glimpse's own page, or a client \
             that is not a web page",
        ));
    }
    Ok(())
}

/// Writes need the bearer token; reads too when configured. Clicks are not writes of photos,
/// settings or models: they are accepted for real search results only, checked by the flow.
async fn authorise(State(state): Shared, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let is_click = path.starts_with("/api/search/") && path.ends_with("/clicks");
    let is_search = path == "/api/search";
    let is_write = !request.method().is_safe() && !is_click && !is_search;
    // The page and its assets hold no data: a visitor needs them to paste the token.
    let open = path == "/healthz" || path == "/" || path.starts_with("/assets/");
    let needs_token = !open && (is_write || state.config.protect_reads);
    if needs_token && let Err(problem) = check_bearer(&request, &state.config.token) {
        let refusal = ApiError::from(api::token_refusal(problem, is_write, TOKEN_HELP));
        // Read a small body before answering, so the client sees the answer instead of a
        // connection reset under its unfinished upload.
        let _ = axum::body::to_bytes(request.into_body(), DRAIN_LIMIT).await;
        return refusal.into_response();
    }
    next.run(request).await
}

/// Bodies up to this size are read before a refused request is answered.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// Checks the request's bearer token against `token`, in time independent of where they differ.
pub(crate) fn check_bearer(request: &Request, token: &str) -> Result<(), BearerProblem> {
    api::check_bearer(
        request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        token,
    )
}

/// Where a person finds the token `glimpse serve` wants.
const TOKEN_HELP: api::TokenHelp<'static> = api::TokenHelp {
    token: "the token `glimpse serve` printed on first start (kept in the data directory's \
            `token` file)",
    private_reads: "serve --protect-reads",
};

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn status(State(state): Shared) -> Result<Json<Value>, ApiError> {
    let engine = &state.engine;
    let counts = engine.counts().await?;
    let vectors = engine.indexed_vectors().await?;
    let encoder = glimpse_core::ports::VectorIndex::encoder(&engine.index);
    let last_scan = engine.last_scan();
    Ok(Json(json!({
        "encoder": encoder,
        "dimension": glimpse_core::ports::VectorIndex::dimension(&engine.index),
        "library": engine.library(),
        "library_available": engine.library_available(),
        "library_problem": last_scan.as_ref().and_then(|scan| scan.problem.clone()),
        "photos": counts,
        "index_vectors": vectors,
        "indexing_done": counts.pending == 0,
        "last_scan": last_scan,
        "index_repairs": engine.index_repairs(),
        "images_embedded": engine.encoder.images_embedded(),
        "last_check": engine.last_check(),
    })))
}

async fn stats_report(State(state): Shared) -> Json<Value> {
    let mut report = state.stats.report();
    if let Some(object) = report.as_object_mut() {
        object.insert(
            "at_once_peak".to_owned(),
            json!({
                "searches": state.searches.peak(),
                "thumbnail_decodes": state.thumbnails.peak(),
            }),
        );
    }
    Json(report)
}

async fn metrics(State(state): Shared) -> Result<Response, ApiError> {
    let counts = state.engine.counts().await?;
    let vectors = state.engine.indexed_vectors().await?;
    let text = state
        .stats
        .prometheus(&counts, vectors, state.engine.library_available());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The web page's files, built into the binary so `glimpse serve` stays one file.
const WEB_ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../../../web/icon.svg"),
    ),
];

/// Nothing on the page comes from, or goes to, another origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob:; \
     style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'";

fn web_response(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn web_page() -> Response {
    web_response(
        "text/html; charset=utf-8",
        include_str!("../../../web/index.html"),
    )
}

async fn web_asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    WEB_ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, content_type, body)| web_response(content_type, body))
        .ok_or_else(|| FlowError::NotFound(format!("there is no asset {file}")).into())
}

async fn albums(State(state): Shared) -> Result<Json<Value>, ApiError> {
    let albums = state.engine.catalog.albums().await?;
    Ok(Json(json!({ "albums": albums })))
}

async fn browse(
    State(state): Shared,
    params: Result<Query<BrowseParams>, QueryRejection>,
) -> Result<Json<BrowsePage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let request = params.into_request()?;
    let page = flows::browse(
        &state.engine.catalog,
        &request.filters,
        request.cursor,
        request.limit,
    )
    .await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
struct UploadParams {
    album: Option<String>,
}

/// How far past the upload limit a refused body is still read, so the client sees the 413.
const LINGER_BYTES: usize = 16 * 1024 * 1024;

async fn upload(
    State(state): Shared,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let limit = state.config.max_upload_bytes;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = announced.filter(|length| *length > limit as u64) {
        // Refuse from the announced length. A body only somewhat too large is read and dropped
        // first, so that every client gets to read the 413 (one still sending when the server
        // closes sees a reset connection instead); a far larger one is not received at all.
        if length <= (limit + LINGER_BYTES) as u64 {
            let _ = axum::body::to_bytes(request.into_body(), limit + LINGER_BYTES).await;
        }
        return Err(body_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            String::new(),
            limit,
        ));
    }
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (bytes, album) = if is_multipart {
        use axum::extract::FromRequest;
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| body_error(e.status(), e.body_text(), limit))?;
        let mut file = None;
        let mut album = params.album;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| body_error(e.status(), e.body_text(), limit))?
        {
            let name = field.name().map(str::to_owned);
            let data = field
                .bytes()
                .await
                .map_err(|e| body_error(e.status(), e.body_text(), limit))?;
            match name.as_deref() {
                Some("album") => album = Some(String::from_utf8_lossy(&data).into_owned()),
                _ if file.is_none() => file = Some(data),
                _ => {
                    return Err(ApiError::bad_request(
                        "send one file per request (the form has more than one)",
                    ));
                }
            }
        }
        let file = file.ok_or_else(|| {
            ApiError::bad_request("the form has no file: send it in a field named `file`")
        })?;
        (file, album)
    } else {
        use axum::extract::FromRequest;
        let bytes = Bytes::from_request(request, &state)
            .await
            .map_err(|e: BytesRejection| body_error(e.status(), e.body_text(), limit))?;
        (bytes, params.album)
    };
    let engine = &state.engine;
    let added = flows::upload(
        &engine.catalog,
        &engine.blobs,
        bytes.to_vec(),
        album,
        now_seconds(),
    )
    .await
    .inspect_err(|_| state.stats.count_rejected_upload())?;
    state.stats.count_upload(added.created);
    if added.created {
        state.wake_indexer.notify_one();
    }
    let status = if added.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut response = (
        status,
        Json(json!({"id": added.id, "created": added.created,
                    "status_url": format!("/api/photos/{}", added.id)})),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/photos/{}", added.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn parse_photo_id(text: &str) -> Result<PhotoId, ApiError> {
    Ok(api::parse_photo_id(text)?)
}

async fn find_photo(state: &AppState, id: &str) -> Result<Photo, ApiError> {
    let id = parse_photo_id(id)?;
    state
        .engine
        .catalog
        .photo(id)
        .await?
        .ok_or_else(|| api::no_such_photo(id).into())
}

async fn photo(State(state): Shared, Path(id): Path<String>) -> Result<Json<Photo>, ApiError> {
    find_photo(&state, &id).await.map(Json)
}

async fn delete_photo(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_photo_id(&id)?;
    let engine = &state.engine;
    flows::delete_photo(&engine.catalog, &engine.blobs, &engine.index, id, false).await?;
    engine
        .blobs
        .delete(&thumbnail_key(id))
        .await
        .map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// What `POST /api/library/scan` accepts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanRequest {
    #[serde(default)]
    forget_missing: bool,
}

/// Scans the library now (waiting for a scan in progress) and answers with its report.
async fn scan_library(
    State(state): Shared,
    body: Result<Json<ScanRequest>, JsonRejection>,
) -> Result<Json<ScanReport>, ApiError> {
    let request = match body {
        Err(JsonRejection::MissingJsonContentType(_)) => ScanRequest::default(),
        other => public_json_body(other, r#"{"forget_missing": false}"#)?,
    };
    let report = state
        .engine
        .scan_library(request.forget_missing)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_library",
                "this Glimpse has no library folder to scan: start it with --library PATH",
            )
        })?;
    state.wake_indexer.notify_one();
    Ok(Json(report))
}

async fn retry_photo(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<Photo>, ApiError> {
    let id = parse_photo_id(&id)?;
    let photo = flows::retry_photo(&state.engine.catalog, id).await?;
    state.wake_indexer.notify_one();
    Ok(Json(photo))
}

async fn read_original(state: &AppState, photo: &Photo) -> Result<Vec<u8>, ApiError> {
    state
        .engine
        .blobs
        .get(&photo.origin.blob_key())
        .await?
        .ok_or_else(|| api::ApiError::original_missing(photo.id).into())
}

async fn original(State(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let photo = find_photo(&state, &id).await?;
    let bytes = read_original(&state, &photo).await?;
    Ok((
        [
            (header::CONTENT_TYPE, photo.format.media_type()),
            (
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            ),
        ],
        bytes,
    )
        .into_response())
}

fn thumbnail_key(id: PhotoId) -> String {
    format!("thumbnails/{id}-{THUMBNAIL_SIZE}.jpg")
}

async fn thumbnail(State(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let photo = find_photo(&state, &id).await?;
    let key = thumbnail_key(photo.id);
    let cached = state.engine.blobs.get(&key).await?;
    let jpeg = match cached {
        Some(jpeg) => jpeg,
        None => {
            let made = state.thumbnails.run(async {
                let original = read_original(&state, &photo).await?;
                tokio::task::spawn_blocking(move || make_thumbnail(&original))
                    .await
                    .map_err(|e| ApiError::from(FlowError::Internal(e.to_string())))?
                    .map_err(|message| {
                        ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "undecodable_image",
                            message,
                        )
                    })
            });
            let jpeg = made.await?;
            state.engine.blobs.put(&key, jpeg.clone()).await?;
            jpeg
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            ),
        ],
        jpeg,
    )
        .into_response())
}

fn make_thumbnail(original: &[u8]) -> Result<Vec<u8>, String> {
    let rgb = crate::encoder::decode_rgb(original, Some(THUMBNAIL_SIZE))
        .map_err(|e| format!("the image cannot be decoded: {e}"))?;
    let small = image::DynamicImage::ImageRgb8(rgb).thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE);
    let mut jpeg = Vec::new();
    small
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .map_err(|e| format!("the thumbnail cannot be encoded: {e}"))?;
    Ok(jpeg)
}

async fn run_search(
    state: &AppState,
    request: SearchRequest,
) -> Result<Json<SearchResponse>, ApiError> {
    let searched = state
        .searches
        .run(async { Ok(flows::search(state.engine.ports(), &request).await) })
        .await?;
    match searched {
        Ok(response) => {
            state.stats.record_search(&response);
            Ok(Json(response))
        }
        Err(error) => {
            state.stats.count_search_error();
            Err(error.into())
        }
    }
}

async fn search_get(
    State(state): Shared,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    run_search(&state, params.into_request()?).await
}

async fn search_post(
    State(state): Shared,
    body: Result<Json<SearchRequest>, JsonRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let request = public_json_body(
        body,
        r#"{"query": "…", "top_k": 20, "offset": 0, "min_score": 1.5}"#,
    )?;
    run_search(&state, request).await
}

async fn similar(
    State(state): Shared,
    Path(id): Path<String>,
    params: Result<Query<SimilarParams>, QueryRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = parse_photo_id(&id)?;
    run_search(&state, params.into_request(id)).await
}

fn parse_query_id(text: &str) -> Result<QueryId, ApiError> {
    Ok(api::parse_query_id(text)?)
}

async fn search_log(
    State(state): Shared,
    Path(query_id): Path<String>,
) -> Result<Json<glimpse_core::search::SearchLogEntry>, ApiError> {
    let query_id = parse_query_id(&query_id)?;
    state
        .engine
        .catalog
        .search_log(&query_id)
        .await?
        .map(Json)
        .ok_or_else(|| FlowError::NotFound(format!("there is no search {query_id}")).into())
}

#[derive(Deserialize)]
struct ClickBody {
    rank: u32,
}

async fn click(
    State(state): Shared,
    Path(query_id): Path<String>,
    body: Result<Json<ClickBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let query_id = parse_query_id(&query_id)?;
    let body = public_json_body(body, r#"{"rank": 1}"#)?;
    let clicked = flows::record_click(&state.engine.catalog, &query_id, body.rank).await?;
    state.stats.count_click();
    Ok(Json(
        json!({"query_id": query_id, "rank": clicked.rank, "photo_id": clicked.photo_id}),
    ))
}
