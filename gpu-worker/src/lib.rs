//! Glimpse's native side: candle models, encoders, model download, benchmarks; later the adapters,
//! the worker and the HTTP server.

#![warn(missing_docs)]

pub mod adapters;
pub mod bench;
pub mod embedded;
pub mod encoder;
pub mod hub;
pub mod models;
pub mod server;
