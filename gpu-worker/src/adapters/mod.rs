//! The adapters of core's ports: embedded (SQLite, qdrant-edge, local files, the in-process
//! encoder) and managed (Postgres, S3, Qdrant).

pub mod edge_index;
pub mod local_blobs;
pub mod local_encoder;
pub mod postgres;
pub mod qdrant;
pub mod s3;
pub mod sqlite;

pub use edge_index::{EdgeIndex, IndexOpenError, IndexTuning};
pub use local_blobs::LocalBlobStore;
pub use local_encoder::LocalEncoder;
pub use postgres::PostgresCatalog;
pub use qdrant::{QdrantIndex, QdrantSettings};
pub use s3::{S3BlobStore, S3Settings};
pub use sqlite::SqliteCatalog;

/// Refuses a vector whose dimension is not the index's.
fn check_dimension(
    index_dimension: usize,
    vector: &glimpse_core::Embedding,
) -> Result<(), glimpse_core::ports::PortError> {
    if vector.dimension() == index_dimension {
        Ok(())
    } else {
        Err(glimpse_core::ports::PortError::Rejected(format!(
            "a vector of {} dimensions for an index of {index_dimension}",
            vector.dimension()
        )))
    }
}
