//! Glimpse's native engine room: the candle models and encoders, model download, the managed
//! adapters (Postgres catalog, S3 blob store, Qdrant index) and the in-process encoder adapter,
//! and the worker pool (settings, internal API, job consumer). The `glimpse` binary (crate
//! `glimpse`) runs the embedded engine over these and `glimpse worker`.

#![warn(missing_docs)]

pub mod adapters;
pub mod crash_points;
pub mod encoder;
pub mod hub;
pub mod models;
pub mod reranker;
pub mod worker;
