//! The uploads component: `/api/uploads` (a presigned PUT URL for an original too large to pass
//! through a request) and `/api/uploads/{id}` (completing it).

use spin_sdk::http::Request;
use spin_sdk::http_service;

#[http_service]
async fn handle(request: Request) -> glimpse_edge::Response {
    glimpse_edge::serve(glimpse_edge::Component::Uploads, request).await
}
