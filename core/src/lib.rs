//! Glimpse's domain: the types every shape of the system shares (embedded binary, worker pool,
//! edge functions), the port traits, and the flows written once against them. No native I/O and
//! no async runtime, so it builds for `wasm32-wasip2` as well as natively.

#![warn(missing_docs)]

/// Serialises a type as its `Display` text and deserialises it through `FromStr`; its JSON
/// Schema is a string matching `$pattern` (what `FromStr` accepts), described by `$description`.
macro_rules! serde_as_text {
    ($type:ident, $pattern:expr, $description:expr) => {
        impl schemars::JsonSchema for $type {
            fn schema_name() -> String {
                stringify!($type).to_owned()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::schema::Schema {
                $crate::text_schema(
                    schemars::schema::StringValidation {
                        pattern: Some(($pattern).to_owned()),
                        ..Default::default()
                    },
                    None,
                    $description,
                )
            }
        }

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

/// Implements `JsonSchema` for a marker type (`#[schemars(with = "…")]`) whose schema, the
/// expression given, is written inline wherever it is used.
macro_rules! inline_schema {
    ($type:ident, $schema:expr) => {
        impl schemars::JsonSchema for $type {
            fn schema_name() -> String {
                stringify!($type).to_owned()
            }

            fn is_referenceable() -> bool {
                false
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::schema::Schema {
                $schema
            }
        }
    };
}
pub(crate) use inline_schema;

/// The JSON Schema of a string under `validation`, of `format` if any, described by
/// `description`.
pub(crate) fn text_schema(
    validation: schemars::schema::StringValidation,
    format: Option<&str>,
    description: &str,
) -> schemars::schema::Schema {
    use schemars::schema::{InstanceType, Metadata, SchemaObject};
    SchemaObject {
        instance_type: Some(InstanceType::String.into()),
        format: format.map(str::to_owned),
        string: Some(Box::new(validation)),
        metadata: Some(Box::new(Metadata {
            description: Some(description.to_owned()),
            ..Metadata::default()
        })),
        ..SchemaObject::default()
    }
    .into()
}

pub mod browse;
mod cached_embedder;
#[cfg(feature = "contract")]
pub mod contract;
mod embedding;
mod encoder_id;
pub mod flows;
pub mod learning;
pub mod photo;
pub mod ports;
pub mod query;
mod random_id;
pub mod search;
pub mod whole_number;

pub use cached_embedder::CachedTextEmbedder;
pub use embedding::{Embedding, EmbeddingError};
pub use encoder_id::{EncoderId, EncoderIdError};
