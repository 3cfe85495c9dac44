//! The photos component: `/api/photos` (browse; upload of bodies up to `max_upload_mb`),
//! `/api/albums`, `/api/photos/{id}` (read, delete), `/api/photos/{id}/original` (302 to storage),
//! `/api/photos/{id}/thumbnail` (the one the pool made while indexing, from storage),
//! `/api/status` (photos by indexing state: the work waiting for the pool), `/healthz`,
//! `/api/openapi.json` (the edge's OpenAPI document).

use spin_sdk::http::Request;
use spin_sdk::http_service;

#[http_service]
async fn handle(request: Request) -> glimpse_edge::Response {
    glimpse_edge::serve(glimpse_edge::Component::Photos, request).await
}
