//! Glimpse's domain: the types every shape of the system shares (embedded binary, worker pool,
//! edge functions), the port traits, and the flows written once against them. No native I/O and
//! no async runtime, so it builds for `wasm32-wasip2` as well as natively.

#![warn(missing_docs)]

/// Serialises a type as its `Display` text and deserialises it through `FromStr`.
macro_rules! serde_as_text {
    ($type:ty) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(deserializer)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_text;

pub mod browse;
mod cached_embedder;
#[cfg(feature = "contract")]
pub mod contract;
mod embedding;
mod encoder_id;
pub mod flows;
pub mod photo;
pub mod ports;
pub mod query;
mod random_id;
pub mod search;

pub use cached_embedder::CachedTextEmbedder;
pub use embedding::{Embedding, EmbeddingError};
pub use encoder_id::{EncoderId, EncoderIdError};
