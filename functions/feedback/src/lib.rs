//! The feedback component: `/api/search/{id}/clicks`, a click on a real search result.

use spin_sdk::http::Request;
use spin_sdk::http_service;

#[http_service]
async fn handle(request: Request) -> glimpse_edge::Response {
    glimpse_edge::serve(glimpse_edge::Component::Feedback, request).await
}
