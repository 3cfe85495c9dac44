//! The embedded engine's adapters of core's ports: the SQLite catalog, the qdrant-edge vector
//! index and the local blob store (uploads and thumbnails in the data directory, the library read
//! in place).

pub mod local_blobs;
pub mod local_index;
pub mod sqlite;

pub use local_blobs::LocalBlobStore;
pub use local_index::{IndexOpenError, IndexTuning, LocalIndex};
pub use sqlite::SqliteCatalog;
