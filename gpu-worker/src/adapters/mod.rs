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
