//! The `glimpse` binary's library: the embedded engine (library scan and watcher, indexing loop,
//! crash recovery) over its adapters (SQLite catalog, qdrant-edge index, local files), the HTTP
//! server and web page, and the benchmarks. Models, encoders and the worker pool are
//! glimpse-worker's; the public API's HTTP layer is glimpse-http's.

#![warn(missing_docs)]

pub mod adapters;
pub mod bench;
pub mod blocking;
pub mod embedded;
pub mod memory;
pub mod server;
