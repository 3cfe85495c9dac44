//! The embedded engine's adapters of core's ports: the SQLite catalog, the qdrant-edge vector
//! index, the local blob store (uploads and thumbnails in the data directory, the library read
//! in place) and the in-memory query embedding cache.

pub mod local_blobs;
pub mod local_index;
pub mod query_cache;
pub mod sqlite;

pub use local_blobs::LocalBlobStore;
pub use local_index::{IndexOpenError, IndexTuning, LocalIndex, Originals, RewriteStage};
pub use query_cache::MemoryQueryCache;
pub use sqlite::SqliteCatalog;
