//! `glimpse encoders`: the worker pool's encoders, and the choice of its active one.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use glimpse_core::flows;
use glimpse_core::ports::Catalog;
use glimpse_worker::adapters::QdrantIndex;

use super::connect_pool;

#[derive(Args)]
pub struct EncodersArgs {
    /// The worker's settings file (its [database] and [qdrant] settings are used);
    /// `GLIMPSE__SECTION__KEY` variables apply.
    #[arg(long, env = "GLIMPSE__CONFIG")]
    pub config: PathBuf,
    /// Make this encoder (an id the list shows) the pool's active one: the edge searches its
    /// collection from then on, only its workers claim feature jobs, and the photos its
    /// collection lacks are queued for them.
    #[arg(long)]
    pub activate: Option<String>,
}

pub async fn encoders(args: EncodersArgs) -> Result<()> {
    let (catalog, qdrant) = connect_pool(&args.config).await?;
    if let Some(wanted) = &args.activate {
        let encoder: glimpse_core::EncoderId = wanted.parse()?;
        let Some((_, dimension, _)) = catalog
            .encoders()
            .await?
            .into_iter()
            .find(|(id, _, _)| *id == encoder)
        else {
            bail!(
                "no worker of {encoder} has registered with this pool: start one with that model \
                 first (`glimpse encoders` lists those that have)"
            );
        };
        catalog.activate_encoder(&encoder).await?;
        let index = QdrantIndex::open(&qdrant, &encoder, dimension)
            .await
            .context("cannot open the encoder's Qdrant collection ([qdrant])")?;
        let check = flows::reconcile(&catalog, &index, true).await?;
        println!(
            "{encoder} is the pool's active encoder; {} photos its collection lacks are queued \
             for its workers.",
            check.missing_vectors
        );
    }
    let registered = catalog.encoders().await?;
    if registered.is_empty() {
        println!("No worker has registered with this pool yet.");
    }
    for (id, dimension, active) in registered {
        println!(
            "{} {id} ({dimension} dimensions)",
            if active { "*" } else { " " }
        );
    }
    Ok(())
}
