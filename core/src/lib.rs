//! Glimpse's domain: the types every shape of the system shares (embedded binary, worker pool,
//! edge functions), the port traits, and the flows written once against them. No native I/O and
//! no async runtime, so it builds for `wasm32-wasip2` as well as natively.

#![warn(missing_docs)]

#[cfg(feature = "contract")]
pub mod contract;
mod embedding;
mod encoder_id;
pub mod flows;
pub mod photo;
pub mod ports;
pub mod query;
pub mod search;

pub use embedding::{Embedding, EmbeddingError};
pub use encoder_id::{EncoderId, EncoderIdError};
