//! Glimpse's domain: the types every shape of the system shares (embedded binary, worker pool,
//! edge functions). No native I/O and no async runtime, so it builds for `wasm32-wasip2` as well as
//! natively.

#![warn(missing_docs)]

mod embedding;
mod encoder_id;
pub mod query;

pub use embedding::{Embedding, EmbeddingError};
pub use encoder_id::{EncoderId, EncoderIdError};
