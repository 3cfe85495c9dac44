//! Glimpse's native side: candle models, encoders, model download, benchmarks, the adapters, the
//! embedded engine and its HTTP server, and the worker pool's internal API.

#![warn(missing_docs)]

pub mod adapters;
pub mod bench;
pub mod blocking;
pub mod crash_points;
pub mod embedded;
pub mod encoder;
pub mod hub;
pub mod models;
pub mod server;
pub mod worker;
