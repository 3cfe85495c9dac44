//! Rewriting an index with another number type for its stored originals (the f32 indexes made
//! before half floats became the default): every vector is copied with its facets, nothing is
//! encoded again, and the new index is built in the same budgeted slices as indexing builds.
//!
//! The files, beside the index folder (`index` here):
//! - `index.export`: the old index's vectors and facets, written while it is open and read back
//!   once it is closed, so that the build holds no more memory than indexing does (the old
//!   index's int8 vectors would otherwise stay in RAM beside the new one's);
//! - `index.rewriting`: the new index while it is built;
//! - `index.rewritten`: the new index, complete;
//! - `index.replaced`: the old index while the new one is moved in.
//!
//! A crash at any step leaves the old index or the complete new one, and
//! [`LocalIndex::finish_rewrite`] (run before an index is opened) puts a complete new one in
//! place and removes the rest.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use glimpse_worker::crash_points::crash_point;
use qdrant_edge::{ScrollRequest, WithPayloadInterface, WithVector};

use super::{IndexOpenError, IndexTuning, LocalIndex, Originals, dense, point_id, storage_error};
use crate::memory::ProcessMemory;
use glimpse_core::photo::PhotoId;

/// Points read from the old index, and written to the new one, at a time.
const PAGE: usize = 1024;

/// What a rewrite is doing when it tells its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewriteStage {
    /// Writing the old index's vectors to the export.
    Exporting,
    /// Building the new index from the export.
    Building,
}

impl std::fmt::Display for RewriteStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Exporting => "exporting",
            Self::Building => "building",
        })
    }
}

/// The folders and the file of a rewrite of the index in `directory`.
struct RewritePaths {
    export: PathBuf,
    rewriting: PathBuf,
    rewritten: PathBuf,
    replaced: PathBuf,
}

impl RewritePaths {
    fn of(directory: &Path) -> Self {
        let beside = |suffix: &str| {
            let mut name = directory.file_name().unwrap_or_default().to_os_string();
            name.push(suffix);
            directory.with_file_name(name)
        };
        Self {
            export: beside(".export"),
            rewriting: beside(".rewriting"),
            rewritten: beside(".rewritten"),
            replaced: beside(".replaced"),
        }
    }
}

impl LocalIndex {
    /// The number type this index stores its originals in.
    pub fn originals(&self) -> Originals {
        self.tuning.originals
    }

    /// Rewrites this index, open from `directory`, into a new one created with `tuning` (its
    /// originals in `tuning.originals`), with the same vectors and facets, and puts the new one
    /// in its place; `progress` is told the stage, the vectors done so far in it and the total as
    /// the copy goes.
    /// Returns the new index, open. On failure the old index is left as it was in `directory`
    /// (open it again) and the partial copy is removed. Needs free disk for the export (the
    /// vectors in f32) and the new index beside the old one.
    pub fn rewrite(
        self,
        directory: &Path,
        tuning: IndexTuning,
        mut progress: impl FnMut(RewriteStage, u64, u64),
    ) -> Result<LocalIndex, IndexOpenError> {
        let paths = RewritePaths::of(directory);
        let (encoder, dimension) = (self.encoder.clone(), self.dimension);
        let built = self.build_rewritten(directory, &paths, tuning, &mut progress);
        // Puts the new index in place, or, on failure, removes what was written beside the old
        // one, which was never touched.
        Self::finish_rewrite(directory)?;
        built?;
        LocalIndex::open(directory, &encoder, dimension, tuning)
    }

    /// Exports this index, closes it and builds the new one from the export, which is then
    /// renamed complete.
    fn build_rewritten(
        self,
        directory: &Path,
        paths: &RewritePaths,
        tuning: IndexTuning,
        progress: &mut impl FnMut(RewriteStage, u64, u64),
    ) -> Result<(), IndexOpenError> {
        let (encoder, dimension) = (self.encoder.clone(), self.dimension);
        // The old index's own memory (its int8 vectors and graph) is resident while it is open,
        // so the export maps in at most a quarter of what a build of the new index holds, and
        // closes the old index before that build.
        let holding = tuning.build_bytes(dimension) / 4;
        let exported = self.export(directory, &paths.export, holding, progress)?;
        crash_point("rewrite:exported");
        let failed = |e: std::io::Error| storage_error(&paths.rewriting, e);
        LocalIndex::destroy(&paths.rewriting).map_err(failed)?;
        let copy = LocalIndex::open(&paths.rewriting, &encoder, dimension, tuning)?;
        copy.import(&paths.export, exported, progress)?;
        drop(copy);
        std::fs::rename(&paths.rewriting, &paths.rewritten).map_err(failed)?;
        crash_point("rewrite:built");
        Ok(())
    }

    /// Finishes a rewrite of the index in `directory` that stopped midway: a complete new index
    /// takes the old one's place, and an unfinished copy and the export are removed (the old
    /// index is kept then). Returns whether a new index was put in place.
    pub fn finish_rewrite(directory: &Path) -> Result<bool, IndexOpenError> {
        let paths = RewritePaths::of(directory);
        let failed = |e: std::io::Error| storage_error(directory, e);
        LocalIndex::destroy(&paths.rewriting).map_err(failed)?;
        let finished = paths.rewritten.exists();
        if finished {
            if directory.exists() {
                // What an earlier rewrite left there, if anything.
                LocalIndex::destroy(&paths.replaced).map_err(failed)?;
                std::fs::rename(directory, &paths.replaced).map_err(failed)?;
                crash_point("rewrite:set-aside");
            }
            std::fs::rename(&paths.rewritten, directory).map_err(failed)?;
        }
        if paths.replaced.exists() {
            if directory.exists() {
                LocalIndex::destroy(&paths.replaced).map_err(failed)?;
            } else {
                // Set aside with nothing in its place: it is the only index there is.
                std::fs::rename(&paths.replaced, directory).map_err(failed)?;
            }
        }
        // Only a file there is an export; anything else is left alone.
        if paths.export.is_file() {
            std::fs::remove_file(&paths.export).map_err(failed)?;
        }
        Ok(finished)
    }

    /// Writes every vector with its facets to `path` (per point: id, the facets' JSON length and
    /// bytes, the vector in little-endian f32), then closes the index. Returns how many.
    ///
    /// Reading the originals maps their pages in, and they would stay resident until the index
    /// is closed (the whole index's originals: 2 GB of f32 at 1M × 512). So whenever the pages
    /// mapped since the export started exceed `holding` bytes, the index is closed and opened
    /// again from `directory`, which lets them go (where the system reports it: Linux).
    fn export(
        self,
        directory: &Path,
        path: &Path,
        holding: u64,
        progress: &mut impl FnMut(RewriteStage, u64, u64),
    ) -> Result<u64, IndexOpenError> {
        let failed = |e: &dyn std::fmt::Display| storage_error(path, e);
        let total = self.count_now().map_err(|e| failed(&e))?;
        let mapped = || ProcessMemory::now().unwrap_or_default().file;
        let (encoder, dimension, tuning) = (self.encoder.clone(), self.dimension, self.tuning);
        let mut index = self;
        let mut file = BufWriter::new(File::create(path).map_err(|e| failed(&e))?);
        let mut offset = None;
        let mut exported = 0;
        let mut mapped_at_opening = mapped();
        loop {
            let mut request = ScrollRequest::new();
            request.offset = offset;
            request.limit = Some(PAGE);
            request.with_vector = WithVector::Bool(true);
            request.with_payload = Some(WithPayloadInterface::Bool(true));
            let (records, next) = index
                .on_shard(|shard| shard.scroll(request))
                .map_err(|e| failed(&e))?;
            for record in records {
                let id = super::photo_id(&record.id).map_err(|e| failed(&e))?;
                let facets = record.payload.map(|payload| payload.0).unwrap_or_default();
                let facets = serde_json::to_vec(&facets).map_err(|e| failed(&e))?;
                let vector = dense(record.vector).map_err(|e| failed(&e))?;
                let facets_length = u32::try_from(facets.len()).map_err(|e| failed(&e))?;
                file.write_all(&id.as_u64().to_le_bytes())
                    .and_then(|()| file.write_all(&facets_length.to_le_bytes()))
                    .and_then(|()| file.write_all(&facets))
                    .and_then(|()| {
                        vector
                            .as_slice()
                            .iter()
                            .try_for_each(|x| file.write_all(&x.to_le_bytes()))
                    })
                    .map_err(|e| failed(&e))?;
                exported += 1;
            }
            progress(RewriteStage::Exporting, exported, total);
            match next {
                Some(next) => offset = Some(next),
                None => break,
            }
            if mapped().saturating_sub(mapped_at_opening) > holding {
                drop(index);
                index = LocalIndex::open(directory, &encoder, dimension, tuning)?;
                mapped_at_opening = mapped();
            }
        }
        file.into_inner()
            .map_err(|e| failed(&e.into_error()))?
            .sync_all()
            .map_err(|e| failed(&e))?;
        Ok(exported)
    }

    /// Adds the `exported` points of the export at `path`, builds the graph of what is left
    /// unbuilt and persists it all; fails if the index then holds another number of points.
    fn import(
        &self,
        path: &Path,
        exported: u64,
        progress: &mut impl FnMut(RewriteStage, u64, u64),
    ) -> Result<(), IndexOpenError> {
        let failed = |e: &dyn std::fmt::Display| storage_error(path, e);
        let mut file = BufReader::new(File::open(path).map_err(|e| failed(&e))?);
        let mut vector = vec![0u8; self.dimension * 4];
        let mut imported = 0;
        while imported < exported {
            let mut points = Vec::with_capacity(PAGE);
            while points.len() < PAGE && imported + (points.len() as u64) < exported {
                let mut id = [0u8; 8];
                let mut facets_length = [0u8; 4];
                file.read_exact(&mut id)
                    .and_then(|()| file.read_exact(&mut facets_length))
                    .map_err(|e| failed(&e))?;
                let mut facets = vec![0u8; u32::from_le_bytes(facets_length) as usize];
                file.read_exact(&mut facets)
                    .and_then(|()| file.read_exact(&mut vector))
                    .map_err(|e| failed(&e))?;
                let facets: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&facets).map_err(|e| failed(&e))?;
                let values: Vec<f32> = vector
                    .chunks_exact(4)
                    .map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
                    .collect();
                let id = point_id(PhotoId::from_u64(u64::from_le_bytes(id)));
                points.push(qdrant_edge::PointStruct::new(
                    id,
                    values,
                    serde_json::Value::Object(facets),
                ));
            }
            imported += points.len() as u64;
            self.write(points).map_err(|e| failed(&e))?;
            progress(RewriteStage::Building, imported, exported);
        }
        self.optimize().map_err(|e| failed(&e))?;
        let count = self.count_now().map_err(|e| failed(&e))?;
        if count != exported {
            return Err(failed(&format!(
                "the copy holds {count} vectors where the index held {exported}"
            )));
        }
        Ok(())
    }
}
