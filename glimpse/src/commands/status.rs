//! `glimpse status`: what a data directory holds and how far indexing got.

use anyhow::{Result, bail};
use glimpse::adapters::SqliteCatalog;
use glimpse::embedded::Engine;
use glimpse::memory::MemoryRecord;
use glimpse_core::ports::Catalog;
use glimpse_worker::hub;

use super::DataDirArgs;

pub async fn status(args: DataDirArgs) -> Result<()> {
    let path = args.data_dir.join("catalog.sqlite3");
    if !path.exists() {
        bail!(
            "{} holds no Glimpse data yet: run `glimpse serve --library PATH` or `glimpse index \
             PATH` first",
            args.data_dir.display()
        );
    }
    let settings = Engine::settings(&args.data_dir)?;
    let catalog = SqliteCatalog::open(&path)?;
    let counts = catalog.counts().await?;
    println!("data directory: {}", args.data_dir.display());
    println!(
        "library:        {}",
        settings
            .library
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string())
    );
    println!(
        "model:          {}",
        settings.model.as_deref().unwrap_or(hub::DEFAULT_MODEL)
    );
    println!(
        "photos:         {} ({} indexed, {} pending, {} failed)",
        counts.photos, counts.indexed, counts.pending, counts.failed
    );
    println!(
        "memory budget:  {}",
        settings.memory_budget.unwrap_or_default()
    );
    match MemoryRecord::load(&args.data_dir) {
        Some(record) => println!(
            "memory:         {}, {} s ago",
            record.summary(),
            (glimpse::adapters::sqlite::now_seconds() - record.at).max(0)
        ),
        None => println!("memory:         not recorded yet"),
    }
    for photo in catalog.failed_photos(5)? {
        println!(
            "  failed {}: {}",
            photo.origin.blob_key(),
            photo.last_error.unwrap_or_default()
        );
    }
    Ok(())
}
