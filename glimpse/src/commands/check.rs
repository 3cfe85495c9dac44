//! `glimpse check`: compare the catalog with the vector index, and repair.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use glimpse_core::flows;
use glimpse_worker::adapters::QdrantIndex;

use super::{DataDirArgs, ModelArgs, connect_pool, open_engine};

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    /// Check the worker pool's Postgres catalog against its Qdrant collection instead, with the
    /// worker's settings file (`GLIMPSE__SECTION__KEY` variables apply).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Re-queue indexed photos whose vector is missing and remove vectors without a photo.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn check(args: CheckArgs) -> Result<()> {
    let report = match &args.config {
        Some(config) => check_pool(config, args.repair).await?,
        None => {
            let engine = open_engine(&args.data, None, ModelArgs::default(), None).await?;
            engine.check(args.repair).await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} photos ({} indexed), {} vectors: {} indexed photos without a vector, {} vectors \
             without a photo{}",
            report.photos,
            report.indexed,
            report.vectors,
            report.missing_vectors,
            report.orphan_vectors,
            match (report.consistent(), report.repaired) {
                (true, _) => "; consistent.",
                (false, true) => "; repaired (photos queued again, stray vectors removed).",
                (false, false) => "; run again with --repair to fix.",
            }
        );
    }
    if !report.consistent() && !args.repair {
        std::process::exit(1);
    }
    Ok(())
}

/// Reconciles the worker pool's catalog with the Qdrant collection of its active encoder.
pub async fn check_pool(config: &Path, repair: bool) -> Result<flows::Reconciliation> {
    let (catalog, qdrant) = connect_pool(config).await?;
    let Some((encoder, dimension)) = catalog.current_encoder().await? else {
        bail!("no encoder has indexed anything in this catalog yet: nothing to check");
    };
    let index = QdrantIndex::open(&qdrant, &encoder, dimension)
        .await
        .context("cannot open the Qdrant collection ([qdrant])")?;
    Ok(flows::reconcile(&catalog, &index, repair).await?)
}
