//! The adapters of core's ports on the worker's side: the managed backends (Postgres, S3, Qdrant)
//! and the in-process encoder and reranker.

pub mod local_encoder;
pub mod postgres;
pub mod qdrant;
pub mod s3;
pub mod vision_reranker;

pub use local_encoder::LocalEncoder;
pub use postgres::PostgresCatalog;
pub use qdrant::{QdrantIndex, QdrantSettings};
pub use s3::{S3BlobStore, S3Settings};
pub use vision_reranker::VisionReranker;
