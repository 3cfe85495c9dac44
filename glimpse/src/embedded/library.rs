//! The photo library, read in place: a scan walks it and brings the catalog in line — new files
//! added, changed files replaced, moved files followed, vanished files removed.
//!
//! A scan never deletes on doubt. A photo is removed only on positive evidence: the folder that
//! held its file was read completely and no longer lists it (nor the folder under it that held
//! it). A library that reads as missing, unreadable or without a single image while the catalog
//! holds library photos is *unavailable* (a disk not mounted): nothing is removed. A folder that
//! cannot be read, or that reads completely empty (an unmounted mount point), keeps what the
//! catalog knows below it. `forget_missing` lifts the last two guards, for a library (or folder)
//! emptied on purpose.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use glimpse_core::flows::{self, FlowError};
use glimpse_core::photo::{self, ImageFormat, NewPhotoDetails, Origin, Photo, PhotoId};
use glimpse_core::ports::{IndexedPhoto, VectorIndex};
use serde::Serialize;

use super::{Engine, EngineError};
use crate::adapters::sqlite::{LibraryEntry, Settled, album_of, now_seconds};

/// The most files a scan lists by name among those it could not add, and the most folders it
/// lists among those it could not trust.
const LISTED: usize = 20;
/// New and changed files are read, inspected and recorded this many at a time (one transaction).
const BATCH: usize = 64;

/// What a scan found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ScanReport {
    /// Whether the library could be read. `false`: the folder is missing, unreadable, or holds
    /// no image while the catalog holds library photos (a disk not mounted?) — nothing was
    /// removed, and `problem` says why.
    pub available: bool,
    /// Why the library is unavailable, and what to do.
    pub problem: Option<String>,
    /// Image files seen.
    pub images: u64,
    /// Added to the catalog (queued for indexing).
    pub added: u64,
    /// Changed since the last scan, re-added.
    pub changed: u64,
    /// Photos whose file moved or was renamed: same photo, new path (not embedded again).
    pub moved: u64,
    /// Gone from the library, removed from the catalog and index.
    pub removed: u64,
    /// Paths holding the same bytes as a photo already in the catalog (a copy, or an upload),
    /// recorded as another path of that photo.
    pub duplicates: u64,
    /// Photos kept although their file was not seen, because where it was could not be read
    /// (or read completely empty).
    pub kept_unverified: u64,
    /// Folders that could not be read or read completely empty, relative to the library; what
    /// the catalog knows below them is kept.
    pub unverified_folders: Vec<String>,
    /// Files without an image extension, skipped.
    pub skipped: u64,
    /// Symbolic links, not followed (one inside the library leads to files the scan reaches
    /// anyway; one out of it to files that are not the library's).
    pub skipped_links: u64,
    /// Image files that cannot be indexed (not really an image, unreadable, too many pixels).
    pub rejected: u64,
    /// Some rejected files with the reason, `path: reason`.
    pub rejections: Vec<String>,
    /// When the scan finished, seconds since 1970.
    pub finished_at: i64,
}

struct FileFacts {
    relative: String,
    bytes: u64,
    modified_at: Option<i64>,
}

/// What a walk of the library saw.
#[derive(Default)]
struct Listing {
    files: Vec<FileFacts>,
    /// Folders read completely, relative ("" is the root).
    read: HashSet<String>,
    /// Folders read completely that held no entry at all.
    empty: HashSet<String>,
    /// Folders or files that could not be read: nothing at or below them is known to be gone.
    unreadable: Vec<String>,
    skipped: u64,
    skipped_links: u64,
}

impl Listing {
    /// Whether the walk proves that the file at `relative` is gone: the deepest folder above it
    /// that the walk reached was read completely (and, unless `forget_missing`, was not empty),
    /// and nothing on the way could not be read.
    fn proves_gone(&self, relative: &str, forget_missing: bool) -> bool {
        if self.unreadable.iter().any(|u| within(relative, u)) {
            return false;
        }
        let mut folder = relative;
        while let Some(end) = folder.rfind('/') {
            folder = &folder[..end];
            if self.read.contains(folder) {
                return forget_missing || !self.empty.contains(folder);
            }
        }
        self.read.contains("") && (forget_missing || !self.empty.contains(""))
    }
}

/// Whether `path` is `folder` or below it.
fn within(path: &str, folder: &str) -> bool {
    folder.is_empty()
        || path == folder
        || path
            .strip_prefix(folder)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn relative_name(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Some(parts.join("/"))
}

fn seconds(metadata: &std::fs::Metadata) -> Option<i64> {
    metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
}

/// Walks `root` (canonical), skipping hidden files and folders (names starting with a dot),
/// `skip` (the data directory, canonical) if it is inside the library, and symbolic links: a link
/// inside the library leads to files the walk reaches anyway, one out of it leads to files that
/// are not the library's, and neither can loop. Blocking: run it off the async runtime.
fn walk(root: &Path, skip: &Path) -> Result<Listing, std::io::Error> {
    let mut listing = Listing::default();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        let Some(relative_dir) = relative_name(root, &directory) else {
            continue;
        };
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(e) if directory == root => return Err(e),
            Err(_) => {
                listing.unreadable.push(relative_dir);
                continue;
            }
        };
        let mut complete = true;
        let mut any = false;
        for entry in entries {
            let Ok(entry) = entry else {
                complete = false;
                continue;
            };
            any = true;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') || path == skip {
                continue;
            }
            let Some(relative) = relative_name(root, &path) else {
                continue;
            };
            let metadata = match entry.file_type() {
                Ok(kind) if kind.is_symlink() => {
                    listing.skipped_links += 1;
                    continue;
                }
                Ok(_) => std::fs::metadata(&path),
                Err(e) => Err(e),
            };
            let Ok(metadata) = metadata else {
                listing.unreadable.push(relative);
                continue;
            };
            if metadata.is_dir() {
                pending.push(path);
                continue;
            }
            if !metadata.is_file() {
                continue;
            }
            if !ImageFormat::has_image_extension(&name) {
                listing.skipped += 1;
                continue;
            }
            listing.files.push(FileFacts {
                relative,
                bytes: metadata.len(),
                modified_at: seconds(&metadata),
            });
        }
        if complete {
            if !any {
                listing.empty.insert(relative_dir.clone());
            }
            listing.read.insert(relative_dir);
        } else {
            listing.unreadable.push(relative_dir);
        }
    }
    listing.files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(listing)
}

fn reject(report: &mut ScanReport, relative: &str, reason: impl std::fmt::Display) {
    report.rejected += 1;
    if report.rejections.len() < LISTED {
        report.rejections.push(format!("{relative}: {reason}"));
    }
}

fn unavailable(report: &mut ScanReport, problem: String) -> ScanReport {
    report.available = false;
    report.problem = Some(problem);
    report.finished_at = now_seconds();
    std::mem::take(report)
}

/// Brings the catalog in line with the library folder (see the module's rules). With
/// `forget_missing`, files missing from folders that read empty, or from a library without a
/// single image, are removed too.
pub(super) async fn scan(
    engine: &Engine,
    root: &Path,
    forget_missing: bool,
) -> Result<ScanReport, EngineError> {
    let mut report = ScanReport {
        available: true,
        ..ScanReport::default()
    };
    let (walk_root, skip) = (root.to_path_buf(), engine.data_dir().to_path_buf());
    let walked = tokio::task::spawn_blocking(move || walk(&walk_root, &skip))
        .await
        .map_err(|e| super::storage(root, e))?;
    let known: HashMap<String, LibraryEntry> = engine.catalog.library_files()?;
    let listing = match walked {
        Ok(listing) => listing,
        Err(e) if known.is_empty() => return Err(super::storage(root, e)),
        Err(e) => {
            let problem = format!(
                "the library folder {} cannot be read ({e}); is its disk mounted? The {} photos \
                 from it are kept; they come back as soon as it can be read",
                root.display(),
                known.len()
            );
            return Ok(unavailable(&mut report, problem));
        }
    };
    report.skipped = listing.skipped;
    report.skipped_links = listing.skipped_links;
    report.images = listing.files.len() as u64;
    if listing.files.is_empty() && !known.is_empty() && !forget_missing {
        let problem = format!(
            "the library folder {} holds no photos, but {} were there before; is its disk \
             mounted? Nothing was removed. If you emptied it on purpose, run `glimpse index \
             --forget-missing` to remove them from Glimpse",
            root.display(),
            known.len()
        );
        return Ok(unavailable(&mut report, problem));
    }

    // Photos whose paths changed, to settle once every path is known (a swap of two names, or a
    // move, then finds the photo at its new path before its old one is forgotten).
    let mut touched: BTreeSet<PhotoId> = BTreeSet::new();
    let mut new_paths: HashSet<PhotoId> = HashSet::new();
    let seen: HashSet<&str> = listing.files.iter().map(|f| f.relative.as_str()).collect();
    let unchanged = |file: &FileFacts| {
        known
            .get(&file.relative)
            .is_some_and(|e| e.bytes == file.bytes && e.modified_at == file.modified_at)
    };
    let to_read: Vec<&FileFacts> = listing.files.iter().filter(|f| !unchanged(f)).collect();
    for batch in to_read.chunks(BATCH) {
        let paths: Vec<PathBuf> = batch.iter().map(|f| root.join(&f.relative)).collect();
        let inspected = tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .map(|path| {
                    std::fs::read(path).map(|bytes| (bytes.len() as u64, photo::inspect(&bytes)))
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| super::storage(root, e))?;
        let now = now_seconds();
        let mut found = Vec::with_capacity(batch.len());
        for (file, read) in batch.iter().zip(inspected) {
            match read {
                Err(e) => reject(&mut report, &file.relative, e),
                Ok((_, Err(reason))) => reject(
                    &mut report,
                    &file.relative,
                    FlowError::RejectedImage(reason),
                ),
                Ok((bytes, Ok(facts))) => {
                    let details = NewPhotoDetails {
                        origin: Origin::Library(file.relative.clone()),
                        bytes,
                        album: album_of(&file.relative),
                        modified_at: file.modified_at,
                    };
                    found.push((file.relative.as_str(), Photo::new(facts, details, now)));
                }
            }
        }
        let recorded = engine.catalog.add_library_files(&found)?;
        for ((path, _), (added, previous)) in found.iter().zip(recorded) {
            if let Some(previous) = previous {
                touched.insert(previous);
            }
            match (known.contains_key(*path), added.created) {
                (true, true) => report.changed += 1,
                (false, true) => report.added += 1,
                (_, false) => {
                    // Same bytes as a photo the catalog holds: a copy, or the file's new path.
                    touched.insert(added.id);
                    new_paths.insert(added.id);
                    report.duplicates += 1;
                }
            }
        }
    }

    let mut unverified: BTreeSet<String> = listing.unreadable.iter().cloned().collect();
    for (path, entry) in &known {
        if seen.contains(path.as_str()) {
            continue;
        }
        if listing.proves_gone(path, forget_missing) {
            engine.catalog.unlink_library_file(path)?;
            touched.insert(entry.id);
        } else {
            report.kept_unverified += 1;
            if let Some(folder) = listing.empty.iter().find(|f| within(path, f)) {
                unverified.insert(folder.clone());
            }
        }
    }
    report.unverified_folders = unverified.into_iter().take(LISTED).collect();

    for id in touched {
        match engine.catalog.settle_library_photo(id)? {
            Settled::Kept => {}
            Settled::Moved {
                photo,
                album_changed,
            } => {
                report.moved += 1;
                if new_paths.contains(&id) {
                    // Counted as a copy above; it is the photo's own path now.
                    report.duplicates = report.duplicates.saturating_sub(1);
                }
                if album_changed {
                    let stored = engine.index.vectors(&[id]).await?;
                    let points: Vec<IndexedPhoto> = stored
                        .into_iter()
                        .map(|neighbour| IndexedPhoto {
                            id,
                            vector: neighbour.vector,
                            facets: photo.facets(),
                        })
                        .collect();
                    if !points.is_empty() {
                        engine.index.upsert(points).await?;
                    }
                }
            }
            Settled::NoFileLeft(photo) => {
                match flows::delete_photo(
                    &engine.catalog,
                    &*engine.blobs,
                    &engine.index,
                    photo.id,
                    true,
                )
                .await
                {
                    Ok(_) | Err(FlowError::NotFound(_)) => report.removed += 1,
                    Err(other) => return Err(other.into()),
                }
            }
        }
    }
    report.finished_at = now_seconds();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(read: &[&str], empty: &[&str], unreadable: &[&str]) -> Listing {
        Listing {
            read: read.iter().map(|s| s.to_string()).collect(),
            empty: empty.iter().map(|s| s.to_string()).collect(),
            unreadable: unreadable.iter().map(|s| s.to_string()).collect(),
            ..Listing::default()
        }
    }

    #[test]
    fn only_a_folder_read_completely_proves_a_file_gone() {
        let walk = listing(&["", "Trips", "Mount"], &["Mount"], &["Locked"]);
        assert!(walk.proves_gone("a.jpg", false));
        assert!(walk.proves_gone("Trips/a.jpg", false));
        // Its folder is gone from a folder that was read: gone.
        assert!(walk.proves_gone("Trips/2019/a.jpg", false));
        assert!(walk.proves_gone("Gone/a.jpg", false));
        // Unreadable, or empty like a mount point without its disk: kept.
        assert!(!walk.proves_gone("Locked/a.jpg", false));
        assert!(!walk.proves_gone("Locked/deep/a.jpg", false));
        assert!(!walk.proves_gone("Mount/a.jpg", false));
        assert!(walk.proves_gone("Mount/a.jpg", true));
        assert!(!walk.proves_gone("Locked/a.jpg", true));
        // `Locked` does not cover `Lockedness`.
        assert!(walk.proves_gone("Lockedness/a.jpg", false));
        // Nothing read at all proves nothing.
        assert!(!listing(&[], &[], &[]).proves_gone("a.jpg", true));
    }
}
