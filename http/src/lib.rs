//! The public HTTP API, written once. A request (`http::Request`) is routed ([`Endpoint`]),
//! checked against the token and the limits, handed to core's flows over the ports a [`Shape`]
//! opens, and answered (`http::Response`). The embedded server (axum) and the edge (Spin
//! components) are thin adapters: they stream bodies in and out and hold the state; every status,
//! limit, header and error body of these endpoints is decided here.

#[cfg(feature = "axum")]
pub mod axum;
mod bodies;
mod endpoints;
pub mod metrics;
pub mod openapi;
pub mod page;

use std::error::Error;
use std::time::SystemTime;

use bytes::Bytes;
use glimpse_contracts::api::{
    self, ApiError, BrowseParams, SearchParams, SimilarParams, TokenHelp, check_bearer,
    token_refusal,
};
use glimpse_core::browse::AlbumSummary;
use glimpse_core::flows::{self, FlowError, UploadDeclaration};
use glimpse_core::photo::{AlbumName, Photo, PhotoId, StagedUpload, UploadId};
use glimpse_core::ports::{Added, BlobStore, Catalog, MaybeSendSync, VectorIndex};
use glimpse_core::search::{MAX_DEPTH, QueryId};
use glimpse_core::search::{SearchRequest, SearchResponse};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body::Body;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::bodies::{UploadForm, drain, is_json, json_body, upload_form};
use self::bodies::{query_params, read_body};
pub use self::endpoints::{Access, Endpoint};

/// What the API answers.
pub type Reply = http::Response<Bytes>;

/// Bodies up to this size are read before a request refused for its token is answered.
const DRAIN_ON_REFUSAL: usize = 4 * 1024 * 1024;

/// How a shape is configured, read for each request (the edge's come from Spin variables).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The bearer token every write needs.
    pub token: String,
    /// Whether reads need the token too.
    pub protect_reads: bool,
}

/// What a shape's refusals tell a person, in its own words.
#[derive(Clone, Copy, Debug)]
pub struct Notes {
    /// Where the token is, and what keeps reads private.
    pub token: TokenHelp<'static>,
    /// What raises the upload limit (named by the 413 of a large upload).
    pub upload_limit: &'static str,
}

/// Where an original's bytes are served from.
#[derive(Debug)]
pub enum Original {
    /// The bytes themselves, with their media type.
    Bytes {
        /// The original's bytes.
        bytes: Vec<u8>,
        /// Its media type.
        media_type: &'static str,
    },
    /// A short-lived URL of storage that serves them; the bytes never pass through the API.
    Redirect(String),
}

/// Something the API did that a shape may act on (wake its indexer, count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An upload was taken; `created` is false for bytes the catalog already had.
    Uploaded {
        /// Whether a new photo (and its job) was added.
        created: bool,
    },
    /// An upload was refused.
    UploadRefused,
    /// A failed photo was queued again.
    Requeued,
    /// A click on a search result was recorded.
    Clicked,
}

/// A shape of Glimpse as the API sees it: its settings, the ports it opens for a request, and the
/// few things that differ between shapes. Port accessors open what they need on first use and
/// keep it for the rest of the request.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait Shape: MaybeSendSync {
    /// Whether the shape as a whole offers `endpoint` (its document lists these).
    fn offers(&self, endpoint: &Endpoint<'_>) -> bool;
    /// Whether this shape (or this component of it) serves `endpoint`; the others are 404s.
    fn serves(&self, endpoint: &Endpoint<'_>) -> bool {
        self.offers(endpoint)
    }
    /// What its refusals say.
    fn notes(&self) -> Notes;
    /// Its settings.
    async fn settings(&self) -> Result<Settings, ApiError>;
    /// The largest upload taken in a request's body, in bytes.
    async fn max_upload_bytes(&self) -> Result<usize, ApiError>;
    /// The catalog.
    async fn catalog(&self) -> Result<&dyn Catalog, ApiError>;
    /// Originals and derived files.
    async fn blobs(&self) -> Result<&dyn BlobStore, ApiError>;
    /// The vector index of the encoder searches use.
    async fn index(&self) -> Result<&dyn VectorIndex, ApiError>;
    /// Runs a search (already checked by [`flows::check_search`]) on its ports.
    async fn search(&self, request: &SearchRequest) -> Result<SearchResponse, ApiError>;
    /// Where `photo`'s original is served from.
    async fn original(&self, photo: &Photo) -> Result<Original, ApiError>;
    /// Whether [`Self::original`] is always a redirect (else the bytes).
    fn originals_by_redirect(&self) -> bool;
    /// Adds the operations the shape serves outside this layer to its document.
    fn document_own_operations(&self, _document: &mut openapi::Document) {}
    /// The shape's thumbnails, if it makes them (`/api/photos/{id}/thumbnail` is a 404 without).
    fn thumbnails(&self) -> Option<&dyn Thumbnails>;
    /// The shape's staged uploads, if it takes them (`/api/uploads` is a 404 without).
    fn staged_uploads(&self) -> Option<&dyn StagedUploads>;
    /// Acts on what the API did.
    fn notice(&self, event: Event);
}

/// Thumbnails of photos, kept under [`PhotoId::thumbnail_key`] (which deleting a photo
/// removes).
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait Thumbnails: MaybeSendSync {
    /// A JPEG thumbnail of `photo`: the stored one, or, where the shape decodes images, one made
    /// now and stored.
    async fn thumbnail(&self, photo: &Photo) -> Result<Vec<u8>, ApiError>;
}

/// Uploads that clients put straight into storage, then complete through the API.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait StagedUploads: MaybeSendSync {
    /// The largest original taken this way, in bytes.
    async fn max_bytes(&self) -> Result<u64, ApiError>;
    /// A URL the client PUTs the original to, under `upload`'s staged key, bound to its declared
    /// size and to `media_type`; and how many seconds it stays valid.
    async fn presign_put(
        &self,
        upload: &StagedUpload,
        media_type: &str,
    ) -> Result<(String, u64), ApiError>;
}

/// What `GET /api/status` answers in both shapes (the embedded server says more beside): the
/// photos by indexing state, and how large an original a client may send, and which way.
#[derive(Serialize, JsonSchema)]
pub struct Status {
    /// The photos by indexing state.
    #[serde(flatten)]
    pub indexing: flows::IndexingStatus,
    /// How originals are sent.
    pub uploads: UploadLimits,
}

/// How large an original a client may send, and which way: the web page sends one larger than
/// `max_bytes` straight to storage when `staged_max_bytes` admits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct UploadLimits {
    /// The largest original `POST /api/photos` takes in its body, in bytes.
    pub max_bytes: u64,
    /// The largest original `POST /api/uploads` takes straight into storage, in bytes; `null`
    /// where this server takes no staged uploads.
    pub staged_max_bytes: Option<u64>,
}

/// `shape`'s upload limits, as its settings stand.
pub async fn upload_limits(shape: &dyn Shape) -> Result<UploadLimits, ApiError> {
    let staged_max_bytes = match shape.staged_uploads() {
        Some(staged) => Some(staged.max_bytes().await?),
        None => None,
    };
    Ok(UploadLimits {
        max_bytes: shape.max_upload_bytes().await? as u64,
        staged_max_bytes,
    })
}

/// Serves one request of the public API on `shape`.
pub async fn serve<B>(shape: &dyn Shape, request: http::Request<B>) -> Reply
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let (mut parts, body) = request.into_parts();
    // HEAD is GET without the body.
    let is_head = parts.method == Method::HEAD;
    if is_head {
        parts.method = Method::GET;
    }
    let reply = match handle(shape, &parts, body).await {
        Ok(reply) => reply,
        Err(error) => error_reply(&error),
    };
    if !is_head {
        return reply;
    }
    let (mut head, bytes) = reply.into_parts();
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    http::Response::from_parts(head, Bytes::new())
}

/// The answer for an error: its JSON body, and `Retry-After` when a backend is unavailable.
pub fn error_reply(error: &ApiError) -> Reply {
    if error.status == StatusCode::INTERNAL_SERVER_ERROR {
        eprintln!("glimpse: internal error: {}", error.message);
    }
    let mut reply = json_reply(error.status, &error.body());
    if let Some(seconds) = error.retry_after() {
        reply
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    reply
}

/// A JSON answer.
fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut reply = http::Response::new(Bytes::from(body.to_string()));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    reply
}

fn ok(body: &impl Serialize) -> Result<Reply, ApiError> {
    let body = serde_json::to_value(body)
        .map_err(|e| ApiError::from(FlowError::Internal(format!("an answer as JSON: {e}"))))?;
    Ok(json_reply(StatusCode::OK, &body))
}

fn empty_reply(status: StatusCode) -> Reply {
    let mut reply = http::Response::new(Bytes::new());
    *reply.status_mut() = status;
    reply
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Checks a request's token against what `access` needs: a write needs the token, and a read
/// too when reads are kept private.
pub fn authorise(
    headers: &HeaderMap,
    access: Access,
    settings: &Settings,
    notes: Notes,
) -> Result<(), ApiError> {
    let needs_token = match access {
        Access::Open => false,
        Access::Read => settings.protect_reads,
        Access::Write => true,
    };
    if !needs_token {
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    check_bearer(given, &settings.token)
        .map_err(|problem| token_refusal(problem, access == Access::Write, notes.token))
}

/// Whether the shape has what `endpoint` needs.
fn capable(shape: &dyn Shape, endpoint: &Endpoint<'_>) -> bool {
    match endpoint {
        Endpoint::Thumbnail(_) => shape.thumbnails().is_some(),
        Endpoint::Uploads | Endpoint::Upload(_) => shape.staged_uploads().is_some(),
        _ => true,
    }
}

/// The shape's OpenAPI document, as its settings stand.
pub async fn document(shape: &dyn Shape) -> Result<Value, ApiError> {
    let facts = openapi::Facts {
        settings: shape.settings().await?,
        uploads: upload_limits(shape).await?,
        originals_by_redirect: shape.originals_by_redirect(),
    };
    let mut document = openapi::document(&facts, |endpoint| {
        capable(shape, endpoint) && shape.offers(endpoint)
    });
    shape.document_own_operations(&mut document);
    Ok(document.finish())
}

fn not_found(path: &str) -> ApiError {
    FlowError::NotFound(format!("there is no {path} here")).into()
}

const SEARCH_EXAMPLE: &str = r#"{"query": "…", "top_k": 20, "offset": 0, "min_score": 1.5}"#;

async fn handle<B>(shape: &dyn Shape, parts: &Parts, body: B) -> Result<Reply, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let path = parts.uri.path();
    let endpoint = Endpoint::of(path)
        .filter(|endpoint| capable(shape, endpoint) && shape.serves(endpoint))
        .ok_or_else(|| not_found(path))?;
    let method = &parts.method;
    if method == Method::OPTIONS {
        return Ok(with_allow(empty_reply(StatusCode::NO_CONTENT), &endpoint));
    }
    if !endpoint.methods().contains(method) {
        return Ok(method_not_allowed(method, path, &endpoint));
    }
    match endpoint {
        Endpoint::Health => {
            let mut reply = http::Response::new(Bytes::from_static(b"ok"));
            reply.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return Ok(reply);
        }
        Endpoint::OpenApi => return ok(&document(shape).await?),
        _ => {}
    }
    let settings = shape.settings().await?;
    if let Err(refusal) = authorise(
        &parts.headers,
        endpoint.access(method),
        &settings,
        shape.notes(),
    ) {
        drain(body, DRAIN_ON_REFUSAL).await;
        return Err(refusal);
    }
    let query = parts.uri.query().unwrap_or_default();
    let headers = &parts.headers;
    match (method, endpoint) {
        (&Method::GET, Endpoint::Status) => ok(&Status {
            indexing: flows::indexing_status(shape.catalog().await?).await?,
            uploads: upload_limits(shape).await?,
        }),
        (&Method::GET, Endpoint::Albums) => {
            let albums = shape.catalog().await?.albums().await?;
            ok(&AlbumList { albums })
        }
        (&Method::GET, Endpoint::Photos) => {
            let request = query_params::<BrowseParams>(query)?.into_request()?;
            let catalog = shape.catalog().await?;
            let page =
                flows::browse(catalog, &request.filters, request.cursor, request.limit).await?;
            ok(&page)
        }
        (&Method::POST, Endpoint::Photos) => {
            let upload = upload(shape, headers, query, body).await;
            shape.notice(match &upload {
                Ok(added) => Event::Uploaded {
                    created: added.created,
                },
                Err(_) => Event::UploadRefused,
            });
            Ok(added_reply(upload?))
        }
        (&Method::GET, Endpoint::Photo(id)) => ok(&find_photo(shape, id).await?),
        (&Method::DELETE, Endpoint::Photo(id)) => {
            let id = api::parse_photo_id(id)?;
            let (catalog, blobs, index) = (
                shape.catalog().await?,
                shape.blobs().await?,
                shape.index().await?,
            );
            flows::delete_photo(catalog, blobs, index, id, false).await?;
            Ok(empty_reply(StatusCode::NO_CONTENT))
        }
        (&Method::GET, Endpoint::Original(id)) => {
            let photo = find_photo(shape, id).await?;
            original_reply(shape.original(&photo).await?)
        }
        (&Method::GET, Endpoint::Thumbnail(id)) => {
            let photo = find_photo(shape, id).await?;
            let thumbnails = shape.thumbnails().ok_or_else(|| not_found(path))?;
            Ok(immutable(thumbnails.thumbnail(&photo).await?, "image/jpeg"))
        }
        (&Method::GET, Endpoint::Similar(id)) => {
            let id = api::parse_photo_id(id)?;
            search(
                shape,
                query_params::<SimilarParams>(query)?.into_request(id),
            )
            .await
        }
        (&Method::POST, Endpoint::Retry(id)) => {
            let id = api::parse_photo_id(id)?;
            let photo = flows::retry_photo(shape.catalog().await?, id).await?;
            shape.notice(Event::Requeued);
            ok(&photo)
        }
        (&Method::POST, Endpoint::Uploads) => {
            let declared: UploadDeclaration = json_body(headers, body, UPLOAD_EXAMPLE).await?;
            let staged = shape.staged_uploads().ok_or_else(|| not_found(path))?;
            start_upload(shape.catalog().await?, staged, &declared).await
        }
        (&Method::POST, Endpoint::Upload(id)) => {
            let upload: UploadId =
                id.parse()
                    .map_err(|e: glimpse_core::photo::UploadIdError| {
                        ApiError::bad_request(e.to_string())
                    })?;
            let params: AlbumParams = query_params(query)?;
            let (catalog, blobs) = (shape.catalog().await?, shape.blobs().await?);
            let added =
                flows::complete_upload(catalog, blobs, upload, params.album, now_seconds()).await?;
            shape.notice(Event::Uploaded {
                created: added.created,
            });
            Ok(added_reply(added))
        }
        (&Method::GET, Endpoint::Search) => {
            search(shape, query_params::<SearchParams>(query)?.into_request()?).await
        }
        (&Method::POST, Endpoint::Search) => {
            let request: SearchRequest = json_body(headers, body, SEARCH_EXAMPLE).await?;
            search(shape, request).await
        }
        (&Method::GET, Endpoint::SearchLog(id)) => {
            let query_id = api::parse_query_id(id)?;
            let entry = shape
                .catalog()
                .await?
                .search_log(&query_id)
                .await?
                .ok_or_else(|| FlowError::NotFound(format!("there is no search {query_id}")))?;
            ok(&entry)
        }
        (&Method::POST, Endpoint::Clicks(id)) => {
            let query_id = api::parse_query_id(id)?;
            let click: Click = json_body(headers, body, r#"{"rank": 1}"#).await?;
            if click.rank == 0 || click.rank as usize > MAX_DEPTH {
                return Err(ApiError::bad_request(format!(
                    "ranks run from 1 to {MAX_DEPTH}: send the rank of the clicked result"
                )));
            }
            let clicked =
                flows::record_click(shape.catalog().await?, &query_id, click.rank).await?;
            shape.notice(Event::Clicked);
            ok(&Clicked {
                query_id,
                rank: clicked.rank,
                photo_id: clicked.photo_id,
            })
        }
        (method, endpoint) => Ok(method_not_allowed(method, path, &endpoint)),
    }
}

/// The methods `endpoint` answers, as an `Allow` header's value (HEAD and OPTIONS included).
fn allowed(endpoint: &Endpoint<'_>) -> String {
    let mut methods: Vec<&str> = endpoint.methods().iter().map(Method::as_str).collect();
    if endpoint.methods().contains(&Method::GET) {
        methods.push("HEAD");
    }
    methods.push("OPTIONS");
    methods.join(", ")
}

fn with_allow(mut reply: Reply, endpoint: &Endpoint<'_>) -> Reply {
    if let Ok(value) = HeaderValue::from_str(&allowed(endpoint)) {
        reply.headers_mut().insert(header::ALLOW, value);
    }
    reply
}

/// The 405 for a method `endpoint` does not answer, with the `Allow` header of those it does.
fn method_not_allowed(method: &Method, path: &str, endpoint: &Endpoint<'_>) -> Reply {
    let error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not served on {path}; it answers {}",
            allowed(endpoint)
        ),
    );
    with_allow(error_reply(&error), endpoint)
}

async fn find_photo(shape: &dyn Shape, id: &str) -> Result<Photo, ApiError> {
    let id = api::parse_photo_id(id)?;
    shape
        .catalog()
        .await?
        .photo(id)
        .await?
        .ok_or_else(|| api::no_such_photo(id))
}

async fn search(shape: &dyn Shape, request: SearchRequest) -> Result<Reply, ApiError> {
    // A request that cannot succeed is a 400 before any backend is asked.
    flows::check_search(&request)?;
    ok(&shape.search(&request).await?)
}

/// The album a query string names (`?album=…`).
#[derive(Deserialize, JsonSchema)]
struct AlbumParams {
    /// The album to file the photo in (blank for none).
    #[schemars(with = "Option<AlbumName>")]
    album: Option<String>,
}

/// A click on a search result.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Click {
    /// The clicked result's rank, from 1 to the depth of results.
    #[serde(deserialize_with = "glimpse_core::whole_number::deserialize")]
    #[schemars(range(min = 1, max = "MAX_DEPTH"))]
    rank: u32,
}

/// A recorded click.
#[derive(Serialize, JsonSchema)]
struct Clicked {
    /// The search.
    query_id: QueryId,
    /// The clicked rank.
    rank: u32,
    /// The photo at that rank.
    photo_id: PhotoId,
}

/// Every album.
#[derive(Serialize, JsonSchema)]
struct AlbumList {
    /// The albums, by name.
    albums: Vec<AlbumSummary>,
}

/// A photo taken by an upload.
#[derive(Serialize, JsonSchema)]
struct Uploaded {
    /// Its id.
    id: PhotoId,
    /// Whether it is new (else the catalog had these bytes).
    created: bool,
    /// Where to follow its indexing.
    status_url: String,
}

/// An upload started straight to storage.
#[derive(Serialize, JsonSchema)]
struct StartedUpload {
    /// Its id.
    upload_id: UploadId,
    /// Where to PUT the original.
    put_url: String,
    /// The headers the PUT must carry.
    put_headers: PutHeaders,
    /// The declared size, which the PUT must match.
    bytes: u64,
    /// How long `put_url` stays valid.
    expires_in_seconds: u64,
    /// Where to POST once the original is in storage.
    complete_url: String,
    /// What to do next, in words.
    next: String,
}

/// The headers a staged upload's PUT carries.
#[derive(Serialize, JsonSchema)]
struct PutHeaders {
    /// The declared media type.
    #[serde(rename = "Content-Type")]
    content_type: String,
}

async fn upload<B>(
    shape: &dyn Shape,
    headers: &HeaderMap,
    query: &str,
    body: B,
) -> Result<Added, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let params: AlbumParams = query_params(query)?;
    let limit = shape.max_upload_bytes().await?;
    let bytes = read_body(headers, body, limit, shape.notes().upload_limit).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let form = upload_form(content_type, bytes).await?;
    let album = form.album.or(params.album);
    let (catalog, blobs) = (shape.catalog().await?, shape.blobs().await?);
    Ok(flows::upload(catalog, blobs, Vec::from(form.file), album, now_seconds()).await?)
}

/// 202 for a new photo (its job is queued), 200 for bytes the catalog had; where to follow it.
fn added_reply(added: Added) -> Reply {
    let status = if added.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let location = format!("/api/photos/{}", added.id);
    let body = Uploaded {
        id: added.id,
        created: added.created,
        status_url: location.clone(),
    };
    let mut reply = json_reply(status, &serde_json::to_value(&body).unwrap_or_default());
    if let Ok(location) = HeaderValue::from_str(&location) {
        reply.headers_mut().insert(header::LOCATION, location);
    }
    reply
}

const UPLOAD_EXAMPLE: &str = r#"{"bytes": 48213504, "content_type": "image/tiff"}"#;

/// Records the upload and hands out a storage URL bound to its declared size and type.
async fn start_upload(
    catalog: &dyn Catalog,
    staged: &dyn StagedUploads,
    declared: &UploadDeclaration,
) -> Result<Reply, ApiError> {
    let max_bytes = staged.max_bytes().await?;
    let (upload, format) = flows::start_upload(catalog, declared, max_bytes, now_seconds()).await?;
    let (put_url, expires_in_seconds) = staged.presign_put(&upload, format.media_type()).await?;
    let complete = format!("/api/uploads/{}", upload.id);
    let started = StartedUpload {
        upload_id: upload.id,
        put_url,
        put_headers: PutHeaders {
            content_type: format.media_type().to_owned(),
        },
        bytes: upload.bytes,
        expires_in_seconds,
        complete_url: complete.clone(),
        next: "PUT exactly the declared bytes to put_url with the Content-Type of put_headers \
               (storage refuses any other size or type), then POST complete_url (add ?album=… \
               to file it in an album)"
            .to_owned(),
    };
    let mut reply = json_reply(
        StatusCode::CREATED,
        &serde_json::to_value(&started).unwrap_or_default(),
    );
    if let Ok(location) = HeaderValue::from_str(&complete) {
        reply.headers_mut().insert(header::LOCATION, location);
    }
    Ok(reply)
}

/// Bytes that never change under their URL (a photo's id is its content's hash).
fn immutable(bytes: Vec<u8>, media_type: &'static str) -> Reply {
    let mut reply = http::Response::new(Bytes::from(bytes));
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    reply
}

fn original_reply(original: Original) -> Result<Reply, ApiError> {
    match original {
        Original::Bytes { bytes, media_type } => Ok(immutable(bytes, media_type)),
        Original::Redirect(url) => {
            let location = HeaderValue::from_str(&url)
                .map_err(|e| ApiError::from(FlowError::Internal(format!("a storage URL: {e}"))))?;
            let mut reply = empty_reply(StatusCode::FOUND);
            reply.headers_mut().insert(header::LOCATION, location);
            // Cached by the browser for less time than the URL lives.
            reply.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=600"),
            );
            Ok(reply)
        }
    }
}
