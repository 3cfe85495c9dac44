//! The embedded BlobStore: the user's library read in place (keys under `library/`, never
//! written) and a folder under the data directory for everything else.

use std::io::{Read, Seek, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use glimpse_core::photo::LIBRARY_PREFIX;
use glimpse_core::ports::{BlobPart, BlobStore, PortError};

use crate::blocking::off_runtime;

/// Files on the local disk.
pub struct LocalBlobStore {
    library: Option<PathBuf>,
    root: PathBuf,
}

fn io_error(key: &str, error: std::io::Error) -> PortError {
    PortError::Unavailable(format!("blob `{key}`: {error}"))
}

impl LocalBlobStore {
    /// Blobs under `root` (created if needed); `library` keys resolve under the library root.
    pub fn open(root: &Path, library: Option<&Path>) -> Result<Self, PortError> {
        std::fs::create_dir_all(root).map_err(|e| io_error(&root.display().to_string(), e))?;
        Ok(Self {
            library: library.map(Path::to_path_buf),
            root: root.to_path_buf(),
        })
    }

    /// The file a key names, refusing keys that would escape their folder.
    fn path(&self, key: &str) -> Result<(PathBuf, bool), PortError> {
        let (base, relative, in_library) = match key.strip_prefix(LIBRARY_PREFIX) {
            Some(relative) => {
                let library = self.library.as_ref().ok_or_else(|| {
                    PortError::Unavailable(format!(
                        "blob `{key}` is in the photo library, and no library folder is configured"
                    ))
                })?;
                (library, relative, true)
            }
            None => (&self.root, key, false),
        };
        let relative = Path::new(relative);
        let safe = !relative.as_os_str().is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(PortError::Rejected(format!(
                "`{key}` is not a valid blob key"
            )));
        }
        Ok((base.join(relative), in_library))
    }
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), PortError> {
        let (path, in_library) = self.path(key)?;
        if in_library {
            return Err(PortError::Rejected(format!(
                "`{key}` is in the photo library, which Glimpse never writes to"
            )));
        }
        off_runtime(|| {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_error(key, e))?;
            }
            // A name of its own per write: two writers of one key (two first requests of the
            // same thumbnail) must not rename each other's file away.
            static WRITES: AtomicU64 = AtomicU64::new(0);
            let temporary = path.with_extension(format!(
                "partial-{}-{}",
                std::process::id(),
                WRITES.fetch_add(1, Ordering::Relaxed)
            ));
            let mut file = std::fs::File::create(&temporary).map_err(|e| io_error(key, e))?;
            file.write_all(&bytes).map_err(|e| io_error(key, e))?;
            file.sync_all().map_err(|e| io_error(key, e))?;
            std::fs::rename(&temporary, &path).map_err(|e| io_error(key, e))
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        let (path, _) = self.path(key)?;
        match off_runtime(|| std::fs::read(&path)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(key, e)),
        }
    }

    async fn get_part(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Option<BlobPart>, PortError> {
        let (path, _) = self.path(key)?;
        let read = off_runtime(|| -> std::io::Result<BlobPart> {
            let mut file = std::fs::File::open(&path)?;
            let total = file.metadata()?.len();
            file.seek(std::io::SeekFrom::Start(offset.min(total)))?;
            let mut bytes = Vec::new();
            file.take(length).read_to_end(&mut bytes)?;
            Ok(BlobPart { bytes, total })
        });
        match read {
            Ok(part) => Ok(Some(part)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), PortError> {
        let (path, in_library) = self.path(key)?;
        if in_library {
            return Err(PortError::Rejected(format!(
                "`{key}` is in the photo library, which Glimpse never deletes from"
            )));
        }
        match off_runtime(|| std::fs::remove_file(&path)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(key, e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn honours_the_blob_store_contract() {
        let directory = tempfile::tempdir().unwrap();
        let blobs = LocalBlobStore::open(directory.path(), None).unwrap();
        glimpse_core::contract::blob_store_suite(&blobs).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writers_of_one_key_at_once_all_succeed() {
        let directory = tempfile::tempdir().unwrap();
        let blobs = std::sync::Arc::new(LocalBlobStore::open(directory.path(), None).unwrap());
        let writers: Vec<_> = (0..16u8)
            .map(|i| {
                let blobs = std::sync::Arc::clone(&blobs);
                tokio::spawn(async move { blobs.put("thumbnails/same.jpg", vec![i; 4096]).await })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        let stored = blobs.get("thumbnails/same.jpg").await.unwrap().unwrap();
        assert!(
            stored.iter().all(|b| *b == stored[0]),
            "one writer's bytes, whole"
        );
    }

    #[tokio::test]
    async fn reads_the_library_in_place_and_never_writes_it() {
        let library = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(library.path().join("Trips")).unwrap();
        std::fs::write(library.path().join("Trips/a.jpg"), b"jpeg").unwrap();
        let blobs = LocalBlobStore::open(data.path(), Some(library.path())).unwrap();
        assert_eq!(
            blobs.get("library/Trips/a.jpg").await.unwrap(),
            Some(b"jpeg".to_vec())
        );
        assert!(blobs.put("library/Trips/b.jpg", vec![1]).await.is_err());
        assert!(blobs.delete("library/Trips/a.jpg").await.is_err());
        assert!(library.path().join("Trips/a.jpg").exists());
        for escaping in [
            "library/../secret",
            "../secret",
            "/etc/passwd",
            "originals/../../x",
        ] {
            assert!(
                matches!(blobs.get(escaping).await, Err(PortError::Rejected(_))),
                "{escaping}"
            );
        }
    }
}
