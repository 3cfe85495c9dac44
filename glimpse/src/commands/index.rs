//! `glimpse index`: index a photo folder once, with a progress bar.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use glimpse_core::flows;

use super::{DataDirArgs, MemoryArgs, ModelArgs, open_engine};

#[derive(Args)]
pub struct IndexArgs {
    /// The photo folder to index.
    pub library: PathBuf,
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// Also remove the photos of a library (or folder) that reads empty. Without it, an empty
    /// library is taken for a disk that is not mounted and nothing is removed; use this when you
    /// emptied it on purpose.
    #[arg(long)]
    pub forget_missing: bool,
}

pub async fn index(args: IndexArgs) -> Result<()> {
    let engine = open_engine(
        &args.data,
        Some(args.library),
        args.model,
        args.memory.memory_budget,
    )
    .await?;
    args.memory.apply(&engine);
    let check = engine.check_at_start().await?;
    if !check.consistent() {
        println!(
            "Catalog and index disagreed: {} indexed photos had no vector (queued again), {} \
             vectors had no photo (removed).",
            check.missing_vectors, check.orphan_vectors
        );
    }
    let scan = engine
        .scan_library(args.forget_missing)
        .await?
        .unwrap_or_default();
    if let Some(problem) = &scan.problem {
        bail!("{problem}");
    }
    println!(
        "Scanned {} image files: {} new, {} changed, {} moved, {} removed, {} duplicates, {} not \
         images (skipped), {} refused",
        scan.images,
        scan.added,
        scan.changed,
        scan.moved,
        scan.removed,
        scan.duplicates,
        scan.skipped,
        scan.rejected
    );
    for rejection in &scan.rejections {
        println!("  refused {rejection}");
    }
    if scan.kept_unverified > 0 {
        println!(
            "Kept {} photos whose folder could not be read or reads empty ({}); pass \
             --forget-missing if you emptied it on purpose.",
            scan.kept_unverified,
            scan.unverified_folders.join(", ")
        );
    }
    let pending = engine.counts().await?.pending;
    let bar = indicatif::ProgressBar::new(pending);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} indexing [{bar:40}] {pos}/{len} photos ({per_sec}, eta {eta})",
        )?
        .progress_chars("=> "),
    );
    let mut total = flows::IndexRound::default();
    loop {
        let round = engine.index_round().await?;
        bar.inc((round.indexed + round.failed) as u64);
        if let Some(error) = &round.thumbnail_refused {
            bar.suspend(|| {
                eprintln!(
                    "glimpse: a thumbnail could not be stored ({error}); it is made when the \
                     photo is first shown"
                );
            });
        }
        total.indexed += round.indexed;
        total.failed += round.failed;
        total.retried += round.retried;
        if round.claimed == 0 {
            if engine.counts().await?.pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    bar.finish_and_clear();
    engine.index.optimize()?;
    let counts = engine.counts().await?;
    println!(
        "Indexed {} photos this run ({} failed); the library now has {} photos, {} indexed, {} \
         failed.",
        total.indexed, total.failed, counts.photos, counts.indexed, counts.failed
    );
    for photo in engine.catalog.failed_photos(10)? {
        println!(
            "  failed {}: {}",
            photo.origin.blob_key(),
            photo.last_error.unwrap_or_default()
        );
    }
    let memory = engine.record_memory("glimpse index")?;
    println!("Memory: {}", memory.summary());
    Ok(())
}
