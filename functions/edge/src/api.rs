//! The public API at the edge: `glimpse_http`'s one HTTP layer over the edge's adapters, each
//! component serving its share of the paths. Nothing here decides a status, a limit or a body:
//! this file opens the ports a request needs and says where originals and uploads go.

use std::cell::OnceCell;
use std::time::Duration;

use bytes::Bytes;
use glimpse_contracts::api::{ApiError, TokenHelp};
use glimpse_core::flows::{self, FlowError, Ports};
use glimpse_core::learning::ExplorationSettings;
use glimpse_core::photo::{Photo, PhotoStatus, StagedUpload};
use glimpse_core::ports::{BlobStore, Catalog, VectorIndex};
use glimpse_core::search::{SearchRequest, SearchResponse};
use glimpse_core::{CachedTextEmbedder, EncoderId};
use glimpse_http::page::{self, Originals};
use glimpse_http::{Endpoint, Event, Notes, Original, Settings, Shape, StagedUploads, Thumbnails};
use http::{Method, StatusCode};
use http_body_util::Full;
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

/// The components, each serving its share of the paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// `/api/photos`, `/api/photos/{id}`, `/api/photos/{id}/original`, `/api/photos/{id}/retry`,
    /// `/api/albums`, `/api/status`, `/healthz`, `/api/openapi.json`.
    Photos,
    /// `/api/uploads`, `/api/uploads/{id}`.
    Uploads,
    /// `/api/search`, `/api/search/{id}`, `/api/photos/{id}/similar`.
    Search,
    /// `/api/search/{id}/clicks`.
    Feedback,
}

impl Component {
    /// The component that serves `endpoint`, if the edge serves it.
    fn of(endpoint: &Endpoint<'_>) -> Option<Self> {
        match endpoint {
            Endpoint::Health
            | Endpoint::OpenApi
            | Endpoint::Status
            | Endpoint::Albums
            | Endpoint::Photos
            | Endpoint::Photo(_)
            | Endpoint::Original(_)
            | Endpoint::Thumbnail(_)
            | Endpoint::Retry(_) => Some(Self::Photos),
            Endpoint::Uploads | Endpoint::Upload(_) => Some(Self::Uploads),
            Endpoint::Search | Endpoint::SearchLog(_) | Endpoint::Similar(_) => Some(Self::Search),
            Endpoint::Clicks(_) => Some(Self::Feedback),
        }
    }
}

/// Serves one request as `component`.
pub async fn serve(component: Component, request: Request) -> Response {
    let edge = Edge {
        component,
        catalog: OnceCell::new(),
        index: OnceCell::new(),
        blobs: OnceCell::new(),
    };
    glimpse_http::serve(&edge, request).await.map(Full::new)
}

/// Serves the web page (`/`, `/assets/{file}`), allowed to show originals from the storage they
/// are redirected to (`s3_endpoint`). Apart from [`serve`], so the page's component carries none
/// of the API.
pub async fn serve_page(request: Request) -> Response {
    let originals = settings::variable("s3_endpoint")
        .await
        .map_err(ApiError::from)
        .and_then(|endpoint| Ok(Originals::storage_at(&endpoint)?));
    let reply = match originals {
        Ok(originals) => page::serve_page(
            request.method(),
            request.uri().path(),
            request.headers(),
            &originals,
        ),
        Err(error) => glimpse_http::error_reply(&error),
    };
    reply.map(Full::new)
}

/// The edge for one request: its component, and the ports it opened (on first use).
struct Edge {
    component: Component,
    catalog: OnceCell<EdgeCatalog>,
    index: OnceCell<QdrantRest>,
    blobs: OnceCell<PresignedS3>,
}

impl Edge {
    async fn edge_catalog(&self) -> Result<&EdgeCatalog, ApiError> {
        if let Some(catalog) = self.catalog.get() {
            return Ok(catalog);
        }
        let opened = catalog::open(&settings::database_address().await?).await?;
        Ok(self.catalog.get_or_init(|| opened))
    }

    async fn storage(&self) -> Result<&PresignedS3, ApiError> {
        if let Some(blobs) = self.blobs.get() {
            return Ok(blobs);
        }
        let opened = PresignedS3::new(S3Settings::load().await?);
        Ok(self.blobs.get_or_init(|| opened))
    }

    /// The encoder the index is built with: the catalog's active one.
    async fn active_encoder(&self) -> Result<(EncoderId, usize), ApiError> {
        self.edge_catalog()
            .await?
            .current_encoder()
            .await?
            .ok_or_else(|| {
                FlowError::Unavailable(
                    "no worker has registered an encoder yet: start the worker pool once so \
                     the index exists"
                        .to_owned(),
                )
                .into()
            })
    }

    async fn qdrant(&self) -> Result<&QdrantRest, ApiError> {
        if let Some(index) = self.index.get() {
            return Ok(index);
        }
        let (encoder, dimension) = self.active_encoder().await?;
        let opened = QdrantRest::new(&QdrantSettings::load().await?, &encoder, dimension);
        Ok(self.index.get_or_init(|| opened))
    }
}

#[async_trait::async_trait(?Send)]
impl Shape for Edge {
    fn offers(&self, endpoint: &Endpoint<'_>) -> bool {
        Component::of(endpoint).is_some()
    }

    fn serves(&self, endpoint: &Endpoint<'_>) -> bool {
        Component::of(endpoint) == Some(self.component)
    }

    fn originals_by_redirect(&self) -> bool {
        true
    }

    fn notes(&self) -> Notes {
        Notes {
            token: TokenHelp {
                token: "the deployment's `api_token` Spin variable",
                private_reads: "the `protect_reads` Spin variable",
            },
            upload_limit: "max_upload_mb; larger originals go straight to storage through POST \
                           /api/uploads",
        }
    }

    async fn settings(&self) -> Result<Settings, ApiError> {
        Ok(Settings {
            token: settings::api_token().await?,
            protect_reads: settings::protect_reads().await?,
        })
    }

    async fn max_upload_bytes(&self) -> Result<usize, ApiError> {
        Ok(settings::max_upload_bytes().await?)
    }

    async fn catalog(&self) -> Result<&dyn Catalog, ApiError> {
        Ok(self.edge_catalog().await?)
    }

    async fn blobs(&self) -> Result<&dyn BlobStore, ApiError> {
        Ok(self.storage().await?)
    }

    async fn index(&self) -> Result<&dyn VectorIndex, ApiError> {
        Ok(self.qdrant().await?)
    }

    /// A search on the pool's encoder behind the query-embedding cache (so a query seen before
    /// is answered while the pool sleeps), Qdrant, and the pool's reranker within its budget.
    async fn search(&self, request: &SearchRequest) -> Result<SearchResponse, ApiError> {
        let catalog = self.edge_catalog().await?;
        let index = self.qdrant().await?;
        let pool = PoolSettings::load().await?;
        // The index was opened for the active encoder: no second look at the catalog.
        let pool_encoder = PoolEncoder::new(&pool, VectorIndex::encoder(index).clone());
        let text = CachedTextEmbedder::new(&pool_encoder, catalog);
        let reranker = PoolReranker::new(&pool);
        let ports = Ports {
            catalog,
            index,
            text: &text,
            reranker: &reranker,
            // The pool does not learn from clicks yet: nothing to explore for.
            adapter: None,
            exploration: ExplorationSettings::OFF,
        };
        let response = flows::search(ports, request).await?;
        if let Some(reason) = &response.rerank_fallback {
            eprintln!(
                "glimpse edge: rerank fallback for search {}: {reason}",
                response.query_id
            );
        }
        Ok(response)
    }

    /// A redirect to a short-lived presigned GET: the bytes never pass through the component.
    async fn original(&self, photo: &Photo) -> Result<Original, ApiError> {
        let url = self.storage().await?.presign(
            &Method::GET,
            &photo.origin.blob_key(),
            CLIENT_URL_EXPIRY,
            &[],
        )?;
        Ok(Original::Redirect(url))
    }

    fn thumbnails(&self) -> Option<&dyn Thumbnails> {
        Some(self)
    }

    fn staged_uploads(&self) -> Option<&dyn StagedUploads> {
        Some(self)
    }

    fn notice(&self, _event: Event) {}
}

/// The thumbnails the pool made while indexing, read from storage: the edge decodes no image, so
/// a photo without one (still waiting for the pool, say) is a 404 that says why.
#[async_trait::async_trait(?Send)]
impl Thumbnails for Edge {
    async fn thumbnail(&self, photo: &Photo) -> Result<Vec<u8>, ApiError> {
        let stored = self.storage().await?.get(&photo.id.thumbnail_key()).await?;
        stored.ok_or_else(|| {
            let id = photo.id;
            let why = match photo.status {
                PhotoStatus::Pending => {
                    "it waits for the worker pool, which makes thumbnails while indexing \
                     (GET /api/status counts the photos waiting)"
                }
                PhotoStatus::Failed => {
                    "it could not be indexed, and the worker pool makes thumbnails while indexing"
                }
                PhotoStatus::Indexed => {
                    "storage refused it when the photo was indexed, or the photo was indexed \
                     before thumbnails were made"
                }
            };
            ApiError::new(
                StatusCode::NOT_FOUND,
                "thumbnail_not_made",
                format!(
                    "photo {id} has no thumbnail yet: {why}; its original is at \
                     /api/photos/{id}/original"
                ),
            )
        })
    }
}

#[async_trait::async_trait(?Send)]
impl StagedUploads for Edge {
    async fn max_bytes(&self) -> Result<u64, ApiError> {
        Ok(settings::max_staged_upload_bytes().await?)
    }

    async fn presign_put(
        &self,
        upload: &StagedUpload,
        media_type: &str,
    ) -> Result<(String, u64), ApiError> {
        let length = upload.bytes.to_string();
        let url = self.storage().await?.presign(
            &Method::PUT,
            &upload.id.staged_key(),
            CLIENT_URL_EXPIRY,
            &[("content-length", &length), ("content-type", media_type)],
        )?;
        Ok((url, CLIENT_URL_EXPIRY.as_secs()))
    }
}
