//! What several shapes of Glimpse must agree on, so that a worker, an edge function and the
//! embedded server reading the same data or serving the same API cannot drift apart:
//!
//! - [`catalog_sql`]: the catalog's Postgres schema, its migrations and every statement, with the
//!   encoding of rows and parameters (the worker's tokio-postgres adapter and the edge's Spin
//!   Postgres adapter both run these);
//! - [`adapter_tables`]: how both catalogs (SQLite, Postgres) lay out adapter versions;
//! - [`learning_sql`]: learning from clicks in the same database (the catalog as core's
//!   `LearningStore`);
//! - [`qdrant`]: how an encoder's vectors are laid out in Qdrant (gRPC in the worker, REST at the
//!   edge);
//! - [`api`]: the public API's errors — status, stable code and message for every flow error.
//!
//! No I/O and no async runtime: it builds for `wasm32-wasip2`.

pub mod adapter_tables;
pub mod api;
pub mod catalog_sql;
pub mod learning_sql;
pub mod qdrant;
