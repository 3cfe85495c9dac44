//! Glimpse at the edge: what the Spin components share. Each API component is one call to
//! [`serve`], the page's to [`serve_page`]; the flows are core's, run through the adapters here:
//!
//! - [`catalog`]: the catalog over Spin's Postgres interface (the statements of
//!   `glimpse_contracts::catalog_sql`, the same the worker runs);
//! - [`index`]: the vector index over Qdrant's REST API;
//! - [`blobs`]: object storage through SigV4-presigned URLs computed in the component;
//! - [`pool`]: the query encoder and the reranker of the `glimpse worker` pool's internal API.
//!
//! Settings come from Spin variables ([`settings`]); HTTP statuses are decided in [`api`] only.

pub mod api;
pub mod blobs;
pub mod catalog;
pub mod index;
mod outbound;
pub mod pool;
pub mod settings;

pub use api::{Component, Response, serve, serve_page};
