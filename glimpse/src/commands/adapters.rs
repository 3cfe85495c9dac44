//! `glimpse adapters`: the adapters learned from clicks in a data directory — the query
//! adapter's, or with `--reranker` the vision-language reranker's.

use std::sync::Arc;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use glimpse::embedded::Engine;
use glimpse_core::learning::{AdapterSummary, Learner, summaries};
use glimpse_core::ports::LearningStore;
use glimpse_worker::hub;
use glimpse_worker::reranker::VlmSettings;

use super::{DataDirArgs, ModelArgs, load_vision_reranker, open_engine};

#[derive(Args)]
pub struct AdaptersArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    /// The vision-language reranker's LoRA adapters (of `--reranker-model`) instead of the query
    /// adapters.
    #[arg(long)]
    pub reranker: bool,
    /// The reranker's model, as `glimpse serve --reranker-model` names it.
    #[arg(long, default_value = hub::DEFAULT_RERANKER)]
    pub reranker_model: String,
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
    let (learner, what) = if args.reranker {
        (Learner::Reranker, "reranker adapter")
    } else {
        (Learner::QueryAdapter, "query adapter")
    };
    let model = args.reranker_model.as_str();
    match args.action {
        AdaptersAction::List => {
            let (active, versions): (Option<u32>, Vec<AdapterSummary>) = match learner {
                Learner::QueryAdapter => (
                    engine.active_adapter().map(|a| a.version),
                    summaries(engine.adapter_versions().await?),
                ),
                Learner::Reranker => (
                    engine
                        .catalog
                        .active_reranker_adapter(model)
                        .await?
                        .map(|a| a.version),
                    summaries(engine.catalog.reranker_adapter_versions(model).await?),
                ),
            };
            if versions.is_empty() {
                println!(
                    "No {what} yet: one is trained after enough clicks (or run `glimpse adapters \
                     {}train`).",
                    if args.reranker { "--reranker " } else { "" }
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
            let activated = match learner {
                Learner::QueryAdapter => engine.activate_adapter(chosen).await?,
                Learner::Reranker => {
                    engine
                        .catalog
                        .activate_reranker_adapter(model, chosen)
                        .await?
                }
            };
            if !activated {
                bail!(
                    "there is no {what} version {version}: `glimpse adapters {}list`",
                    if args.reranker { "--reranker " } else { "" }
                );
            }
            match chosen {
                Some(number) => println!(
                    "Searches are ranked with {what} {number} (a running server picks it up \
                     within seconds)."
                ),
                None => println!("Searches are ranked without a {what}."),
            }
        }
        AdaptersAction::Train => {
            let engine = match learner {
                Learner::QueryAdapter => engine,
                Learner::Reranker => with_reranker(engine, model).await?,
            };
            let outcome = engine.train(learner, &engine.learning_settings()).await?;
            println!("{}", outcome.summary());
        }
    }
    Ok(())
}

/// The engine with the vision-language reranker of `model` learning.
async fn with_reranker(engine: Engine, model: &str) -> Result<Engine> {
    let reranker = load_vision_reranker(
        model,
        None,
        VlmSettings::default(),
        Arc::clone(&engine.blobs) as _,
    )
    .await?;
    Ok(engine.with_reranker_learning(reranker))
}
