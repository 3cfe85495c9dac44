//! Training a LoRA adapter of the reranker from labelled (query, photo) pairs: binary
//! cross-entropy with logits on the margin `logit(yes) − logit(no)` (the log-odds of the
//! reranker's `P(yes)`), each pair weighted (by the inverse of its rank's examination
//! propensity, for clicks), minimised with AdamW through candle's autograd. Only the adapter
//! learns: the base weights are plain tensors, never variables.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use glimpse_core::learning::{RankingScores, score_rankings};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;

use super::VlmReranker;
use super::lora::LoraAdapter;
use crate::encoder::EncoderError;
use crate::models::qwen2_vl::ImageTokens;

/// One labelled pair.
#[derive(Clone, Debug)]
pub struct Example {
    /// The search text.
    pub query: String,
    /// The photo, as the vision tower's tokens ([`VlmReranker::image_tokens`]).
    pub image: ImageTokens,
    /// Whether the photo is what the query asked for (clicked, or labelled so).
    pub relevant: bool,
    /// How much the pair counts in the loss (1 without a position-bias correction).
    pub weight: f32,
}

/// How long and how fast to train.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingSettings {
    /// Optimiser steps.
    pub steps: usize,
    /// Pairs per step (all of them when there are fewer).
    pub batch: usize,
    /// AdamW's learning rate.
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Seeds the order in which pairs are drawn.
    pub seed: u64,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        Self {
            steps: 50,
            batch: 8,
            learning_rate: 1e-3,
            weight_decay: 0.01,
            seed: 0,
        }
    }
}

/// The weighted mean of `softplus(−margin)` for relevant pairs and `softplus(margin)` for the
/// others: binary cross-entropy with logits, written with differentiable operations.
pub fn weighted_bce(margins: &Tensor, examples: &[&Example]) -> Result<Tensor, EncoderError> {
    let device = margins.device();
    let dtype = margins.dtype();
    // ±1: the sign that makes a correct answer a large positive logit.
    let signs: Vec<f32> = examples
        .iter()
        .map(|e| if e.relevant { 1.0 } else { -1.0 })
        .collect();
    let weights: Vec<f32> = examples.iter().map(|e| e.weight).collect();
    let total: f32 = weights.iter().sum();
    let signs = Tensor::new(signs, device)?.to_dtype(dtype)?;
    let weights = (Tensor::new(weights, device)?.to_dtype(dtype)? / f64::from(total.max(1e-12)))?;
    // softplus(−s·m) = relu(−s·m) + log(1 + exp(−|s·m|)), stable for large margins.
    let x = (margins * signs)?.neg()?;
    let softplus = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok((softplus * weights)?.sum_all()?)
}

/// The loss of `adapter` (as attached) on `examples`: margins from the model, then
/// [`weighted_bce`].
pub fn loss(reranker: &VlmReranker, examples: &[&Example]) -> Result<Tensor, EncoderError> {
    let pairs: Vec<(&str, &ImageTokens)> = examples
        .iter()
        .map(|e| (e.query.as_str(), &e.image))
        .collect();
    let logits = reranker.answer_logits(&pairs)?;
    let margins = (logits.narrow(1, 0, 1)? - logits.narrow(1, 1, 1)?)?.squeeze(1)?;
    weighted_bce(&margins, examples)
}

/// Trains `adapter` on `examples` for `settings.steps` steps, with its dropout on, and leaves it
/// attached without dropout. Returns the loss of every step.
pub fn train(
    reranker: &mut VlmReranker,
    adapter: &LoraAdapter,
    examples: &[Example],
    settings: &TrainingSettings,
) -> Result<Vec<f32>, EncoderError> {
    if examples.is_empty() || settings.batch == 0 {
        return Err(EncoderError::Internal(
            "training was started without pairs to train on".into(),
        ));
    }
    adapter.attach(reranker.model_mut(), true)?;
    let params = ParamsAdamW {
        lr: settings.learning_rate,
        weight_decay: settings.weight_decay,
        ..ParamsAdamW::default()
    };
    let mut optimiser = AdamW::new(adapter.vars(), params)?;
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let batch = settings.batch.min(examples.len());
    let mut losses = Vec::with_capacity(settings.steps);
    for _ in 0..settings.steps {
        let drawn: Vec<&Example> = sample(&mut rng, examples.len(), batch)
            .into_iter()
            .map(|i| &examples[i])
            .collect();
        let step_loss = loss(reranker, &drawn)?;
        optimiser.backward_step(&step_loss)?;
        losses.push(step_loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
    }
    adapter.attach(reranker.model_mut(), false)?;
    Ok(losses)
}

/// `P(yes)` of each pair with the adapter as attached, in order (a few pairs per pass, without
/// gradients).
pub fn probabilities(
    reranker: &VlmReranker,
    examples: &[Example],
) -> Result<Vec<f32>, EncoderError> {
    const PAIRS_PER_PASS: usize = 8;
    let mut found = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(PAIRS_PER_PASS) {
        let pairs: Vec<(&str, &ImageTokens)> =
            chunk.iter().map(|e| (e.query.as_str(), &e.image)).collect();
        let logits = reranker
            .answer_logits(&pairs)?
            .detach()
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        found.extend(logits.iter().map(|l| 1.0 / (1.0 + (l[1] - l[0]).exp())));
    }
    Ok(found)
}

/// Ranking quality on `examples`: each query's photos ranked by the reranker (its adapter as
/// attached), NDCG@10 and MRR of the relevant ones, each weighing its `weight`.
pub fn ranking_scores(
    reranker: &VlmReranker,
    examples: &[Example],
) -> Result<RankingScores, EncoderError> {
    let mut by_query: BTreeMap<&str, Vec<&Example>> = BTreeMap::new();
    for example in examples {
        by_query
            .entry(example.query.as_str())
            .or_default()
            .push(example);
    }
    let mut rankings = Vec::with_capacity(by_query.len());
    for (query, group) in by_query {
        let pairs: Vec<(&str, &ImageTokens)> = group.iter().map(|e| (query, &e.image)).collect();
        let logits = reranker
            .answer_logits(&pairs)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let mut ranked: Vec<(f32, &Example)> =
            logits.iter().map(|l| l[0] - l[1]).zip(group).collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        rankings.push(
            ranked
                .iter()
                .map(|(_, e)| if e.relevant { f64::from(e.weight) } else { 0.0 })
                .collect(),
        );
    }
    Ok(score_rankings(&rankings))
}

/// Splits `examples` by query into training and held-out pairs: `share` of the distinct queries
/// (at least one, at most half; chosen by a hash of their text, so the same set always splits
/// the same way) are held out, none when there are fewer than five queries.
pub fn split_by_query(examples: Vec<Example>, share: f64) -> (Vec<Example>, Vec<Example>) {
    // FNV-1a: stable across runs and platforms.
    let hash = |query: &str| {
        query.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let mut queries: Vec<&str> = examples.iter().map(|e| e.query.as_str()).collect();
    queries.sort_by_key(|q| (hash(q), *q));
    queries.dedup();
    if queries.len() < 5 || share <= 0.0 {
        return (examples, Vec::new());
    }
    let count = ((share.min(0.5) * queries.len() as f64).round() as usize).max(1);
    let held: std::collections::BTreeSet<String> =
        queries[..count].iter().map(|q| (*q).to_owned()).collect();
    examples.into_iter().partition(|e| !held.contains(&e.query))
}
