//! How an encoder's vectors live in Qdrant, for the worker (gRPC) and the edge (REST) alike: one
//! collection per encoder id, named after it and stamped with it in the collection's metadata;
//! cosine distance; point id = photo id; the filter fields as payload.

use glimpse_core::EncoderId;
use glimpse_core::photo::Facets;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The oldest Qdrant server Glimpse works with.
pub const MINIMUM_SERVER: (u64, u64) = (1, 15);
/// The metadata key of a collection that records the encoder that built it.
pub const STAMP_KEY: &str = "glimpse_encoder";
/// Payload field: album, lowercase (keyword index).
pub const ALBUM: &str = "album";
/// Payload field: camera, lowercase (matched as a substring).
pub const CAMERA: &str = "camera";
/// Payload field: `dated_at`, seconds (integer index).
pub const DATED_AT: &str = "dated_at";

/// The collection that holds `encoder`'s vectors: `{prefix}_{repository name}_{12 hex digits of
/// the id's SHA-256}`, within the characters Qdrant allows.
pub fn collection_name(prefix: &str, encoder: &EncoderId) -> String {
    let id = encoder.to_string();
    let digest = Sha256::digest(id.as_bytes());
    let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let name = id
        .split('@')
        .next()
        .and_then(|head| head.rsplit(['/', ':']).next())
        .unwrap_or("encoder");
    let readable: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("{prefix}_{readable}_{hash}")
}

/// The payload stored with a photo's vector.
pub fn payload(facets: &Facets) -> Value {
    json!({ ALBUM: facets.album, CAMERA: facets.camera, DATED_AT: facets.dated_at })
}

/// Whether a server version (`1.19.0`, `1.19.0-dev`) is at least `minimum` (major, minor).
pub fn version_at_least(version: &str, minimum: (u64, u64)) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= minimum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_are_per_encoder_and_legal() {
        let a: EncoderId = "clip:openai/clip-vit-base-patch32@c237dc4"
            .parse()
            .expect("id");
        let b: EncoderId = "clip:openai/clip-vit-base-patch32@0000000"
            .parse()
            .expect("id");
        let name = collection_name("glimpse", &a);
        assert!(name.starts_with("glimpse_clip-vit-base-patch32_"), "{name}");
        assert_ne!(name, collection_name("glimpse", &b));
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        );
        assert!(version_at_least("1.15.0", MINIMUM_SERVER));
        assert!(version_at_least("1.19.0-dev", MINIMUM_SERVER));
        assert!(!version_at_least("1.14.9", MINIMUM_SERVER));
    }
}
