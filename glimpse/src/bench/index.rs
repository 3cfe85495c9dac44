//! `glimpse bench index`: `glimpse index` run as a process on a folder of distinct 12-megapixel
//! JPEGs with the ViT-B/32-shaped model, end to end (scan, hashing, decoding, preprocessing,
//! both cores encoding, catalog and vector index), timed from outside.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use glimpse_worker::encoder::Precision;
use serde::Serialize;

use super::{twelve_megapixel_jpeg, write_random_vit_b32};

/// What to run.
#[derive(Clone, Debug)]
pub struct IndexBenchOptions {
    /// The `glimpse` binary to measure.
    pub binary: PathBuf,
    /// Distinct photos in the library.
    pub photos: usize,
    /// The precision `glimpse index` runs at.
    pub precision: Precision,
}

/// What `glimpse bench index --json` prints.
#[derive(Debug, Serialize)]
pub struct IndexReport {
    /// Photos in the library (12 MP JPEGs, ~3.6 MB each).
    pub photos: usize,
    /// Photos `glimpse index` reported indexed.
    pub indexed: usize,
    /// The precision it ran at.
    pub precision: Precision,
    /// Wall-clock seconds of the whole command, model loading included.
    pub seconds: f64,
    /// `indexed / seconds`.
    pub photos_per_second: f64,
}

/// Runs the benchmark; the model, library and data directory live in a temporary folder
/// removed afterwards.
pub fn run(options: &IndexBenchOptions) -> Result<IndexReport, String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let model = scratch.path().join("model");
    write_random_vit_b32(&model, 0).map_err(|e| e.to_string())?;
    let library = scratch.path().join("library");
    std::fs::create_dir_all(&library).map_err(|e| e.to_string())?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..threads)
            .map(|first| {
                let library = &library;
                scope.spawn(move || {
                    (first..options.photos)
                        .step_by(threads)
                        .try_for_each(|i| write_photo(library, i))
                })
            })
            .collect();
        writers
            .into_iter()
            .try_for_each(|writer| writer.join().map_err(|_| "a writer panicked".to_owned())?)
    })?;
    let started = Instant::now();
    let output = Command::new(&options.binary)
        .arg("index")
        .arg(&library)
        .arg("--data-dir")
        .arg(scratch.path().join("data"))
        .arg("--model")
        .arg(&model)
        .arg("--precision")
        .arg(options.precision.to_string())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", options.binary.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "glimpse index failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let indexed = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Indexed "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .ok_or_else(|| format!("glimpse index did not say what it indexed: {stdout}"))?;
    Ok(IndexReport {
        photos: options.photos,
        indexed,
        precision: options.precision,
        seconds,
        photos_per_second: indexed as f64 / seconds.max(1e-9),
    })
}

fn write_photo(library: &Path, i: usize) -> Result<(), String> {
    let jpeg = twelve_megapixel_jpeg(1000 + i as u64).map_err(|e| e.to_string())?;
    std::fs::write(library.join(format!("photo-{i:04}.jpg")), jpeg).map_err(|e| e.to_string())
}
