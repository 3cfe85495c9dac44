//! The search component: `/api/search` (GET and POST), `/api/search/{id}` (the logged search),
//! `/api/photos/{id}/similar`.

use spin_sdk::http::Request;
use spin_sdk::http_service;

#[http_service]
async fn handle(request: Request) -> glimpse_edge::Response {
    glimpse_edge::serve(glimpse_edge::Component::Search, request).await
}
