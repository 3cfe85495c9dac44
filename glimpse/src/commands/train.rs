//! `glimpse train`: a LoRA adapter of the vision-language reranker trained on (query, photo,
//! label) pairs — from a file of triples, from the clicks in a data directory's search log, or
//! both — written in the PEFT layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use glimpse_worker::hub;
use glimpse_worker::reranker::lora::{LoraAdapter, LoraConfig};
use glimpse_worker::reranker::training::{
    self, Example, TrainingSettings, ranking_scores, split_by_query,
};
use glimpse_worker::reranker::{VlmReranker, VlmSettings};
use serde::{Deserialize, Serialize};

use glimpse::embedded::Engine;
use glimpse_core::learning::reranker_image;
use glimpse_core::learning::{LabelledPhoto, Propensities, reranker_pairs};
use glimpse_core::photo::{Photo, PhotoId};
use glimpse_core::ports::{Catalog, LearningStore, VectorIndex};

use super::{DataDirArgs, ModelArgs, open_engine, print_report};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["triples", "from_clicks"])))]
pub struct TrainArgs {
    /// One JSON object per line: `{"query": "kids on a red sled", "image": "photos/sled.jpg",
    /// "label": true}` (`label` true or 1 for a photo the query asks for, false or 0 for one it
    /// does not; an optional `weight`, default 1). Image paths are relative to the file.
    #[arg(long)]
    pub triples: Option<PathBuf>,
    /// Also (or only) learn from the clicks in the data directory's search log: clicked results
    /// are positives weighing 1/p_rank (the position-bias correction of learning from clicks),
    /// results shown above a click and passed over are negatives (run it with the server
    /// stopped).
    #[arg(long)]
    pub from_clicks: bool,
    #[command(flatten)]
    pub data: DataDirArgs,
    /// Where the adapter is written (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    pub output: PathBuf,
    /// The reranker's model: a Qwen2-VL directory or Hub repository id.
    #[arg(long, default_value = hub::DEFAULT_RERANKER)]
    pub reranker_model: String,
    /// Optimiser steps.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// AdamW's learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub learning_rate: f64,
    /// The adapter's rank.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// The update is scaled by alpha / rank.
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Probability of dropping an input of the update while training.
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f64,
    /// Pixels per photo while training, in 28 × 28 tokens.
    #[arg(long, default_value_t = 256)]
    pub image_tokens: usize,
    /// The share of queries held out to evaluate the adapter against the base model.
    #[arg(long, default_value_t = 0.2)]
    pub held_out: f64,
    /// Print the report as one JSON line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Deserialize)]
struct Triple {
    query: String,
    image: PathBuf,
    label: Label,
    #[serde(default = "one")]
    weight: f32,
}

fn one() -> f32 {
    1.0
}

/// `true`/`false` or `1`/`0`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Label {
    Flag(bool),
    Number(u8),
}

impl Label {
    fn relevant(&self) -> Result<bool, String> {
        match self {
            Self::Flag(flag) => Ok(*flag),
            Self::Number(0) => Ok(false),
            Self::Number(1) => Ok(true),
            Self::Number(other) => Err(format!("label must be true, false, 1 or 0, not {other}")),
        }
    }
}

/// What training did.
#[derive(Serialize)]
struct TrainReport {
    adapter: PathBuf,
    training_pairs: usize,
    held_out_pairs: usize,
    first_loss: f32,
    last_loss: f32,
    /// Ranking quality on the held-out queries, without and with the adapter.
    held_out_base: Option<glimpse_core::learning::RankingScores>,
    held_out_adapted: Option<glimpse_core::learning::RankingScores>,
}

/// Reads the triples file: every line must parse and name a readable photo; the error names the
/// line.
fn read_triples(path: &Path) -> Result<Vec<(Triple, bool)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the triples file {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut triples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), number + 1);
        let mut triple: Triple = serde_json::from_str(line).with_context(|| {
            format!(
                "{}: expected {{\"query\": \"…\", \"image\": \"path\", \"label\": true}}",
                at()
            )
        })?;
        let relevant = triple
            .label
            .relevant()
            .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
        if !(triple.weight.is_finite() && triple.weight > 0.0) {
            bail!("{}: weight must be a positive number", at());
        }
        triple.image = base.join(&triple.image);
        triples.push((triple, relevant));
    }
    if !triples.iter().any(|(_, relevant)| *relevant) || triples.iter().all(|(_, r)| *r) {
        bail!(
            "{}: training needs both photos a query asks for (label true) and photos it does not \
             (label false)",
            path.display()
        );
    }
    Ok(triples)
}

/// One labelled pair before its photo is decoded: the photo is named by `key` in the bytes read.
struct Pending {
    query: String,
    key: String,
    relevant: bool,
    weight: f32,
}

/// The pairs of the triples file, with the bytes of their photos.
fn from_file(
    path: &Path,
    pending: &mut Vec<Pending>,
    bytes: &mut HashMap<String, Vec<u8>>,
) -> Result<()> {
    for (triple, relevant) in read_triples(path)? {
        let key = triple.image.display().to_string();
        if !bytes.contains_key(&key) {
            let read = std::fs::read(&triple.image)
                .with_context(|| format!("cannot read the photo {key}"))?;
            bytes.insert(key.clone(), read);
        }
        pending.push(Pending {
            query: triple.query,
            key,
            relevant,
            weight: triple.weight,
        });
    }
    Ok(())
}

/// The pairs the click model makes of the data directory's clicked searches, with the bytes of
/// their photos (thumbnails where made).
async fn from_clicks(
    data: &DataDirArgs,
    pending: &mut Vec<Pending>,
    bytes: &mut HashMap<String, Vec<u8>>,
) -> Result<()> {
    // Only a data directory Glimpse has used: opening an empty one would make it one.
    if Engine::settings(&data.data_dir)?.model.is_none() {
        bail!(
            "{} is not a Glimpse data directory yet: the search log of `glimpse serve \
             --data-dir …` has no clicks to learn from there",
            data.data_dir.display()
        );
    }
    let engine = open_engine(data, None, ModelArgs::default(), None).await?;
    let settings = engine.learning_settings();
    let encoder = engine.index.encoder().clone();
    let logged = engine
        .catalog
        .clicked_searches(&encoder, settings.max_searches)
        .await?;
    let counts = engine.catalog.swap_counts(&encoder).await?;
    let propensities =
        Propensities::estimate(&counts, settings.exploration.max_rank, &settings.propensity);
    for entry in &logged {
        let Some((query, pairs)) = reranker_pairs(entry, &propensities) else {
            continue;
        };
        let ids: Vec<PhotoId> = pairs.iter().map(|pair| pair.photo).collect();
        let photos: HashMap<PhotoId, Photo> = engine
            .catalog
            .photos(&ids)
            .await?
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        for LabelledPhoto {
            photo: id,
            clicked,
            weight,
        } in pairs
        {
            // A photo deleted since the search teaches nothing.
            let Some(photo) = photos.get(&id) else {
                continue;
            };
            let key = id.to_string();
            if !bytes.contains_key(&key) {
                let read = reranker_image(&*engine.blobs, photo)
                    .await
                    .with_context(|| format!("photo {id}"))?;
                bytes.insert(key.clone(), read);
            }
            pending.push(Pending {
                query: query.clone(),
                key,
                relevant: clicked,
                weight,
            });
        }
    }
    if pending.iter().all(|p| p.relevant) || !pending.iter().any(|p| p.relevant) {
        bail!(
            "the search log of {} has no clicks to learn from yet (a click and a result passed \
             over above it)",
            data.data_dir.display()
        );
    }
    Ok(())
}

pub async fn train(args: TrainArgs) -> Result<()> {
    let mut pending = Vec::new();
    let mut bytes = HashMap::new();
    if let Some(path) = &args.triples {
        from_file(path, &mut pending, &mut bytes)?;
    }
    if args.from_clicks {
        from_clicks(&args.data, &mut pending, &mut bytes).await?;
    }
    tokio::task::spawn_blocking(move || train_on(&args, &pending, &bytes)).await?
}

fn train_on(args: &TrainArgs, pending: &[Pending], bytes: &HashMap<String, Vec<u8>>) -> Result<()> {
    let directory = hub::resolve_reranker(&args.reranker_model)?;
    let settings = VlmSettings {
        max_candidates: 1,
        image_tokens: args.image_tokens.max(1),
    };
    let mut reranker = VlmReranker::load(&directory, settings)?;
    // Each photo is decoded and run through the (frozen) vision tower once.
    let mut tokens = HashMap::new();
    let mut examples = Vec::with_capacity(pending.len());
    for pair in pending {
        if !tokens.contains_key(&pair.key) {
            let prepared = reranker
                .prepare(&bytes[&pair.key])
                .with_context(|| pair.key.clone())?;
            let image = reranker.image_tokens(&[prepared])?.remove(0);
            tokens.insert(pair.key.clone(), image);
        }
        examples.push(Example {
            query: pair.query.clone(),
            image: tokens[&pair.key].clone(),
            relevant: pair.relevant,
            weight: pair.weight,
        });
    }
    let (train_set, held_out) = split_by_query(examples, args.held_out);
    let held_out_base = if held_out.is_empty() {
        None
    } else {
        Some(ranking_scores(&reranker, &held_out)?)
    };
    let config = LoraConfig {
        r: args.rank,
        lora_alpha: args.alpha,
        lora_dropout: args.dropout,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(reranker.model(), config, 0)?;
    let training = TrainingSettings {
        steps: args.steps.max(1),
        batch: args.batch.max(1),
        learning_rate: args.learning_rate,
        ..TrainingSettings::default()
    };
    let losses = training::train(&mut reranker, &adapter, &train_set, &training)?;
    let held_out_adapted = if held_out.is_empty() {
        None
    } else {
        Some(ranking_scores(&reranker, &held_out)?)
    };
    adapter.save(&args.output, &args.reranker_model)?;
    print_report(
        &TrainReport {
            adapter: args.output.clone(),
            training_pairs: train_set.len(),
            held_out_pairs: held_out.len(),
            first_loss: losses.first().copied().unwrap_or(f32::NAN),
            last_loss: losses.last().copied().unwrap_or(f32::NAN),
            held_out_base,
            held_out_adapted,
        },
        args.json,
    )
}
