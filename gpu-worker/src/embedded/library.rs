//! The photo library, read in place: a scan walks it and brings the catalog in line — new files
//! added, changed files replaced, vanished files removed.

use std::collections::HashMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

use glimpse_core::flows::{self, FlowError};
use glimpse_core::photo::{ImageFormat, NewPhotoDetails, Origin};
use serde::Serialize;

use super::{Engine, EngineError};
use crate::adapters::sqlite::{LibraryEntry, now_seconds};

/// The most files a scan lists by name among those it could not add.
const LISTED_REJECTIONS: usize = 20;

/// What a scan found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    /// Image files seen.
    pub images: u64,
    /// Added to the catalog (queued for indexing).
    pub added: u64,
    /// Changed since the last scan, re-added.
    pub changed: u64,
    /// Gone from the library, removed from the catalog and index.
    pub removed: u64,
    /// Same bytes as a photo already in the catalog (another path or an upload).
    pub duplicates: u64,
    /// Files without an image extension, skipped.
    pub skipped: u64,
    /// Image files that cannot be indexed (not really an image, unreadable, too many pixels).
    pub rejected: u64,
    /// Some rejected files with the reason, `path: reason`.
    pub rejections: Vec<String>,
    /// When the scan finished, seconds since 1970.
    pub finished_at: i64,
}

struct FileFacts {
    relative: String,
    album: Option<String>,
    bytes: u64,
    modified_at: Option<i64>,
}

/// Walks `root`, skipping hidden files and folders (names starting with a dot) and the data
/// directory if it is inside the library.
fn walk(root: &Path, skip: &Path, report: &mut ScanReport) -> Result<Vec<FileFacts>, EngineError> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(e) if directory == root => return Err(super::storage(root, e)),
            Err(e) => {
                report
                    .rejections
                    .push(format!("{}: {e}", directory.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') || path == skip {
                continue;
            }
            let Ok(metadata) = std::fs::metadata(&path) else {
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
                report.skipped += 1;
                continue;
            }
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let relative: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let album = (relative.len() > 1).then(|| relative[relative.len() - 2].clone());
            files.push(FileFacts {
                relative: relative.join("/"),
                album,
                bytes: metadata.len(),
                modified_at: metadata
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64),
            });
        }
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

fn reject(report: &mut ScanReport, relative: &str, reason: impl std::fmt::Display) {
    report.rejected += 1;
    if report.rejections.len() < LISTED_REJECTIONS {
        report.rejections.push(format!("{relative}: {reason}"));
    }
}

/// Brings the catalog in line with the library folder.
pub(super) async fn scan(engine: &Engine, root: &Path) -> Result<ScanReport, EngineError> {
    let mut report = ScanReport::default();
    let files = walk(root, engine.data_dir(), &mut report)?;
    let mut known: HashMap<String, LibraryEntry> = engine.catalog.library_entries()?;
    for file in files {
        report.images += 1;
        let changed = match known.remove(&file.relative) {
            Some(entry) if entry.bytes == file.bytes && entry.modified_at == file.modified_at => {
                continue;
            }
            Some(entry) => {
                remove(engine, entry).await?;
                true
            }
            None => false,
        };
        let path = root.join(&file.relative);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                reject(&mut report, &file.relative, e);
                continue;
            }
        };
        let details = NewPhotoDetails {
            origin: Origin::Library(file.relative.clone()),
            bytes: bytes.len() as u64,
            album: file.album,
            modified_at: file.modified_at,
        };
        match flows::add_library_file(&engine.catalog, &bytes, details, now_seconds()).await {
            Ok(added) if !added.created => report.duplicates += 1,
            Ok(_) if changed => report.changed += 1,
            Ok(_) => report.added += 1,
            Err(FlowError::RejectedImage(reason)) => reject(&mut report, &file.relative, reason),
            Err(other) => return Err(other.into()),
        }
    }
    for entry in known.into_values() {
        remove(engine, entry).await?;
        report.removed += 1;
    }
    report.finished_at = now_seconds();
    Ok(report)
}

async fn remove(engine: &Engine, entry: LibraryEntry) -> Result<(), EngineError> {
    match flows::delete_photo(
        &engine.catalog,
        &engine.blobs,
        &engine.index,
        entry.id,
        true,
    )
    .await
    {
        Ok(_) | Err(FlowError::NotFound(_)) => Ok(()),
        Err(other) => Err(other.into()),
    }
}
