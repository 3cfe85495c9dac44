//! `glimpse retry`: put failed photos back in the indexing queue.

use anyhow::Result;
use clap::Args;
use glimpse_core::flows;

use super::{DataDirArgs, ModelArgs, open_engine};

#[derive(Args)]
#[group(id = "which", required = true, args = ["failed", "photos"])]
pub struct RetryArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    /// Every failed photo.
    #[arg(long)]
    pub failed: bool,
    /// These failed photos, by id.
    pub photos: Vec<String>,
}

pub async fn retry(args: RetryArgs) -> Result<()> {
    let engine = open_engine(&args.data, None, ModelArgs::default(), None).await?;
    let requeued = if args.failed {
        engine.retry_failed().await?
    } else {
        for id in &args.photos {
            let id = id.parse().map_err(anyhow::Error::from)?;
            flows::retry_photo(&engine.catalog, id).await?;
        }
        args.photos.len() as u64
    };
    println!(
        "{requeued} failed photos queued again; `glimpse serve` or `glimpse index` indexes them."
    );
    Ok(())
}
