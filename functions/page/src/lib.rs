//! The page component: the web page `glimpse serve` shows (`/`, `/assets/{file}`), talking to the
//! edge's API on the same origin; it reaches no backend.

use spin_sdk::http::Request;
use spin_sdk::http_service;

#[http_service]
async fn handle(request: Request) -> glimpse_edge::Response {
    glimpse_edge::serve_page(request).await
}
