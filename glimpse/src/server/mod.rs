//! The embedded engine's HTTP server (axum): the public API through glimpse-http's one HTTP layer
//! (this module says how the engine serves originals, thumbnails and searches), and the engine's
//! own endpoints — status, statistics, metrics, the library scan, the web page — with the guard
//! that keeps other sites out.

mod adapters;
mod gates;
mod operations;
mod stats;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use glimpse_contracts::api;
use glimpse_core::flows::FlowError;
use glimpse_core::learning::Learner;
use glimpse_core::photo::{Photo, THUMBNAIL_SIZE};
use glimpse_core::ports::{BlobStore, Catalog, VectorIndex};
use glimpse_core::search::{SearchRequest, SearchResponse};
use glimpse_http::axum::{ApiError, reply};
use glimpse_http::page::Originals;
use glimpse_http::{
    Access, Event, Notes, Original, Settings, Shape, StagedUploads, Thumbnails, openapi,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

use self::gates::Gate;
pub use self::stats::{Stats, percentiles};
use crate::embedded::{Engine, EngineError, ScanReport};
use crate::memory::{MemoryBudget, ProcessMemory};

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

impl ServerConfig {
    fn settings(&self) -> Settings {
        Settings {
            token: self.token.clone(),
            protect_reads: self.protect_reads,
        }
    }
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

/// Builds the router with its state: the public API of `glimpse_http`, and the engine's own
/// endpoints (status, metrics, the library scan, the web page).
pub fn router(
    engine: Arc<Engine>,
    wake_indexer: Arc<Notify>,
    config: ServerConfig,
    stats: Stats,
) -> Router {
    let state = Arc::new(AppState {
        engine,
        wake_indexer,
        searches: Gate::new("searches", config.max_concurrent_searches),
        thumbnails: Gate::new("thumbnail decodes", config.max_concurrent_thumbnails),
        config,
        stats,
    });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/stats", get(stats_report))
        .route("/", any(web_page))
        .route("/assets/{file}", any(web_page))
        .route("/api/library/scan", post(scan_library))
        .merge(adapters::routes(Learner::QueryAdapter))
        .merge(adapters::routes(Learner::Reranker))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authorise,
        ))
        .fallback(public_api)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
        .with_state(state)
}

/// Everything else is the public API, served by the one HTTP layer both shapes share.
async fn public_api(State(state): Shared, request: Request) -> Response {
    reply(glimpse_http::serve(state.as_ref(), request).await)
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

/// The engine's own endpoints need the token as the public API's do: the page and its assets
/// hold no data (a visitor needs them to paste the token), the rest are reads, the scan a write.
async fn authorise(State(state): Shared, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let access = if glimpse_http::page::is_page_path(path) {
        Access::Open
    } else {
        Access::of_method(request.method())
    };
    if let Err(refusal) =
        glimpse_http::authorise(request.headers(), access, &state.config.settings(), NOTES)
    {
        glimpse_http::drain(request.into_body(), api::MAX_JSON_BYTES).await;
        return ApiError(refusal).into_response();
    }
    next.run(request).await
}

/// What refusals of `glimpse serve` say.
const NOTES: Notes = Notes {
    token: api::TokenHelp {
        token: "the token `glimpse serve` printed on first start (kept in the data directory's \
                `token` file)",
        private_reads: "serve --protect-reads",
    },
    upload_limit: "serve --max-upload-mb",
};

async fn status(State(state): Shared) -> Result<Json<Value>, ApiError> {
    let engine = &state.engine;
    let counts = engine.counts().await?;
    let vectors = engine.indexed_vectors().await?;
    let encoder = VectorIndex::encoder(&engine.index);
    let last_scan = engine.last_scan();
    Ok(Json(json!({
        "encoder": encoder,
        "precision": engine.precision().map(|p| p.text),
        "image_precision": engine.precision().map(|p| p.image),
        "kernel": engine.precision().and_then(|p| p.text_kernel),
        "image_kernel": engine.precision().and_then(|p| p.image_kernel),
        "dimension": VectorIndex::dimension(&engine.index),
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
        "learning": engine.learning(),
        "query_adapter": engine.active_adapter().map(|a| json!({
            "version": a.version,
            "trained_at": a.trained_at,
            "evaluation": a.evaluation,
        })),
        "reranker_adapter": engine.reranker_adapter(),
        "training_runs": engine.training_runs(Learner::QueryAdapter),
        "reranker_training_runs": engine.training_runs(Learner::Reranker),
        "memory": memory_status(engine.memory_budget()),
        "uploads": glimpse_http::upload_limits(&*state).await?,
    })))
}

/// What the server holds, against its budget, in bytes.
fn memory_status(budget: MemoryBudget) -> Value {
    let memory = ProcessMemory::now().unwrap_or_default();
    json!({
        "budget": budget.bytes(),
        "resident": memory.resident,
        "anonymous": memory.anonymous,
        "file": memory.file,
        "peak": memory.peak,
    })
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
    let mut text = state.stats.prometheus(
        &counts,
        vectors,
        state.engine.library_available(),
        state.engine.query_cache(),
        &state.engine.learning_metrics(),
    );
    stats::write_memory(&mut text, state.engine.memory_budget());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The web page (`/`, `/assets/{file}`), as the HTTP layer serves it; originals come from this
/// server.
async fn web_page(request: Request) -> Response {
    reply(glimpse_http::page::serve_page(
        request.method(),
        request.uri().path(),
        request.headers(),
        &Originals::SameOrigin,
    ))
}

/// What `POST /api/library/scan` accepts (a body is optional).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ScanRequest {
    /// Remove the photos of a library that reads missing or empty (one emptied on purpose).
    #[serde(default)]
    forget_missing: bool,
}

/// Scans the library now (waiting for a scan in progress) and answers with its report.
async fn scan_library(
    State(state): Shared,
    request: Request,
) -> Result<Json<ScanReport>, ApiError> {
    let (parts, body) = request.into_parts();
    let request = if glimpse_http::is_json(&parts.headers) {
        glimpse_http::json_body(&parts.headers, body, r#"{"forget_missing": false}"#).await?
    } else {
        glimpse_http::drain(body, api::MAX_JSON_BYTES).await;
        ScanRequest::default()
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

/// The embedded engine as the public API sees it.
#[async_trait::async_trait]
impl Shape for AppState {
    fn offers(&self, endpoint: &glimpse_http::Endpoint<'_>) -> bool {
        // Its own `/api/status` says more (the library, memory, learning; own_operations
        // documents it).
        !matches!(endpoint, glimpse_http::Endpoint::Status)
    }

    fn originals_by_redirect(&self) -> bool {
        false
    }

    fn document_own_operations(&self, document: &mut openapi::Document) {
        operations::own_operations(document);
    }

    fn notes(&self) -> Notes {
        NOTES
    }

    async fn settings(&self) -> Result<Settings, api::ApiError> {
        Ok(self.config.settings())
    }

    async fn max_upload_bytes(&self) -> Result<usize, api::ApiError> {
        Ok(self.config.max_upload_bytes)
    }

    async fn catalog(&self) -> Result<&dyn Catalog, api::ApiError> {
        Ok(&self.engine.catalog)
    }

    async fn blobs(&self) -> Result<&dyn BlobStore, api::ApiError> {
        Ok(&*self.engine.blobs)
    }

    async fn index(&self) -> Result<&dyn VectorIndex, api::ApiError> {
        Ok(&self.engine.index)
    }

    /// Searches run within the search gate, and are counted.
    async fn search(&self, request: &SearchRequest) -> Result<SearchResponse, api::ApiError> {
        let searched = self
            .searches
            .run(async { Ok(self.engine.search(request).await) })
            .await
            .map_err(|refusal| refusal.0)?;
        match searched {
            Ok(response) => {
                self.stats.record_search(&response);
                Ok(response)
            }
            Err(error) => {
                self.stats.count_search_error();
                Err(error.into())
            }
        }
    }

    async fn original(&self, photo: &Photo) -> Result<Original, api::ApiError> {
        Ok(Original::Bytes {
            bytes: self.read_original(photo).await?,
            media_type: photo.format.media_type(),
        })
    }

    fn thumbnails(&self) -> Option<&dyn Thumbnails> {
        Some(self)
    }

    fn staged_uploads(&self) -> Option<&dyn StagedUploads> {
        None
    }

    fn notice(&self, event: Event) {
        match event {
            Event::Uploaded { created } => {
                self.stats.count_upload(created);
                if created {
                    self.wake_indexer.notify_one();
                }
            }
            Event::UploadRefused => self.stats.count_rejected_upload(),
            Event::Requeued => self.wake_indexer.notify_one(),
            Event::Clicked => {
                self.stats.count_click();
                self.engine.notice_click();
            }
        }
    }
}

impl AppState {
    async fn read_original(&self, photo: &Photo) -> Result<Vec<u8>, api::ApiError> {
        self.engine
            .blobs
            .get(&photo.origin.blob_key())
            .await?
            .ok_or_else(|| api::ApiError::original_missing(photo.id))
    }
}

/// Thumbnails are made while indexing, from the decode the embedding needs; one missing (made
/// before that, or refused by storage) is made on first request, within the thumbnail gate, and
/// kept beside the others.
#[async_trait::async_trait]
impl Thumbnails for AppState {
    async fn thumbnail(&self, photo: &Photo) -> Result<Vec<u8>, api::ApiError> {
        let key = photo.id.thumbnail_key();
        if let Some(jpeg) = self.engine.blobs.get(&key).await? {
            return Ok(jpeg);
        }
        let made = self.thumbnails.run(async {
            // Made while this request waited its turn (for another request of the same photo):
            // no second decode.
            if let Some(jpeg) = self.engine.blobs.get(&key).await? {
                return Ok(jpeg);
            }
            let original = self.read_original(photo).await?;
            self.stats.count_thumbnail_decode();
            let jpeg = tokio::task::spawn_blocking(move || make_thumbnail(&original))
                .await
                .map_err(|e| ApiError::from(FlowError::Internal(e.to_string())))?
                .map_err(|message| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "undecodable_image",
                        message,
                    )
                })?;
            self.engine.blobs.put(&key, jpeg.clone()).await?;
            Ok(jpeg)
        });
        made.await.map_err(|refusal| refusal.0)
    }
}

fn make_thumbnail(original: &[u8]) -> Result<Vec<u8>, String> {
    let rgb = glimpse_worker::encoder::decode_rgb(original, Some(THUMBNAIL_SIZE))
        .map_err(|e| format!("the image cannot be decoded: {e}"))?;
    glimpse_worker::encoder::thumbnail_jpeg(&rgb, THUMBNAIL_SIZE).map_err(|e| e.to_string())
}
