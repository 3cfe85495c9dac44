//! `glimpse adapters`: the query adapters learned from clicks in a data directory.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use super::{DataDirArgs, ModelArgs, open_engine};

#[derive(Args)]
pub struct AdaptersArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(subcommand)]
    pub action: AdaptersAction,
}

#[derive(Subcommand)]
pub enum AdaptersAction {
    /// Every stored version, newest first, with its held-out scores; `*` marks the active one.
    List,
    /// Score searches with a stored version (an older one too), or with `none`.
    Activate {
        /// A version number, or `none` for the encoder's embeddings alone.
        version: String,
    },
    /// Train from the search log now; the new adapter is kept and activated only if it ranks
    /// held-out clicked searches at least as well as the active one.
    Train,
}

pub async fn adapters(args: AdaptersArgs) -> Result<()> {
    let engine = open_engine(&args.data, None, ModelArgs::default(), None).await?;
    match args.action {
        AdaptersAction::List => {
            let active = engine.active_adapter().map(|a| a.version);
            let versions = engine.adapter_versions().await?;
            if versions.is_empty() {
                println!(
                    "No query adapter yet: one is trained after enough clicks (or run \
                     `glimpse adapters train`)."
                );
            }
            for stored in versions {
                let evaluation = &stored.evaluation;
                println!(
                    "{} {:>4}  trained at {}  held-out NDCG@10 {:.3} (was {:.3}), MRR {:.3} \
                     (was {:.3}), {} training searches",
                    if active == Some(stored.version) {
                        "*"
                    } else {
                        " "
                    },
                    stored.version,
                    stored.trained_at,
                    evaluation.trained.ndcg_at_10,
                    evaluation.previous.ndcg_at_10,
                    evaluation.trained.mrr,
                    evaluation.previous.mrr,
                    evaluation.training_searches,
                );
            }
        }
        AdaptersAction::Activate { version } => {
            let chosen = match version.as_str() {
                "none" => None,
                number => match number.parse::<u32>() {
                    Ok(number) => Some(number),
                    Err(_) => bail!("{number:?} is not a version: give its number, or `none`"),
                },
            };
            if !engine.activate_adapter(chosen).await? {
                bail!("there is no query adapter version {version}: `glimpse adapters list`");
            }
            match chosen {
                Some(number) => println!("Searches are scored with query adapter {number}."),
                None => println!("Searches are scored with the encoder's embeddings alone."),
            }
        }
        AdaptersAction::Train => {
            let outcome = engine.retrain(&engine.learning_settings()).await?;
            println!("{}", outcome.summary());
        }
    }
    Ok(())
}
