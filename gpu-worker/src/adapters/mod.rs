//! The adapters of core's ports: embedded (SQLite, qdrant-edge, local files, the in-process
//! encoder) and managed (Postgres).

pub mod edge_index;
pub mod local_blobs;
pub mod local_encoder;
pub mod postgres;
pub mod sqlite;

pub use edge_index::{EdgeIndex, IndexOpenError, IndexTuning};
pub use local_blobs::LocalBlobStore;
pub use local_encoder::LocalEncoder;
pub use postgres::PostgresCatalog;
pub use sqlite::SqliteCatalog;
