//! `glimpse bench rerank`: what the vision-language reranker costs per search and per training
//! pair on this machine, and what Qwen2-VL-2B would cost on a datacentre GPU by its FLOPs.

use std::path::Path;
use std::time::Instant;

use glimpse_worker::encoder::{EncoderError, decode_rgb, thumbnail_jpeg};
use glimpse_worker::models::qwen2_vl::Config;
use glimpse_worker::reranker::lora::{LoraAdapter, LoraConfig};
use glimpse_worker::reranker::training::{self, Example, TrainingSettings};
use glimpse_worker::reranker::{VlmReranker, VlmSettings};
use serde::Serialize;

use super::twelve_megapixel_jpeg;

/// config.json of Qwen/Qwen2-VL-2B-Instruct (the fields that shape its FLOPs).
const QWEN2_VL_2B: &str = r#"{
  "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
  "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
  "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "image_token_id": 151655, "tie_word_embeddings": true,
  "vision_config": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4,
    "num_heads": 16, "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2,
    "temporal_patch_size": 2}
}"#;
/// Dense bf16 tensor throughput, FLOP/s: A100 (SXM) and H100 (SXM).
const A100_BF16: f64 = 312e12;
const H100_BF16: f64 = 989e12;
/// The share of that peak assumed for the estimate: batched prompts of a few thousand tokens,
/// no fused attention kernel.
const ASSUMED_UTILISATION: f64 = 0.35;

/// What to measure.
#[derive(Clone, Debug)]
pub struct RerankBenchOptions {
    /// Candidates per search.
    pub candidates: usize,
    /// Pixels per candidate at inference, in 28 × 28 tokens.
    pub image_tokens: usize,
    /// Pixels per photo in training, in 28 × 28 tokens.
    pub train_image_tokens: usize,
    /// Searches timed (the median is reported).
    pub rounds: usize,
    /// Training steps timed.
    pub train_steps: usize,
}

/// A FLOP count and what it takes on two GPUs at the assumed utilisation.
#[derive(Debug, Serialize)]
pub struct FlopEstimate {
    /// Floating-point operations (a multiply-add is two) for one search's candidates.
    pub gflops: f64,
    /// Estimated milliseconds on one A100 in bf16.
    pub a100_ms: f64,
    /// Estimated milliseconds on one H100 in bf16.
    pub h100_ms: f64,
}

/// The figures of `glimpse bench rerank`.
#[derive(Debug, Serialize)]
pub struct RerankReport {
    /// The checkpoint measured.
    pub model: String,
    /// Candidates per search.
    pub candidates: usize,
    /// Image tokens per candidate.
    pub image_tokens: usize,
    /// Tokens of each candidate's prompt, image tokens included.
    pub prompt_tokens: usize,
    /// Decoding and resizing the candidates' thumbnails, per search.
    pub prepare_ms: f64,
    /// The model over all candidates as one batch (median), per search.
    pub score_p50_ms: f64,
    /// Training pairs per second (forward and backward, batches of 8, at the training budget).
    pub train_pairs_per_s: f64,
    /// FLOPs of one search on the measured model, and the GPU estimate.
    pub measured_model: FlopEstimate,
    /// The same search on Qwen2-VL-2B-Instruct.
    pub qwen2_vl_2b: FlopEstimate,
    /// The GPU utilisation the estimates assume.
    pub assumed_utilisation: f64,
}

/// FLOPs of scoring `candidates` prompts of `prompt_tokens` tokens, `image_tokens` of them an
/// image: the vision tower over the image's patches, the language model over the prompt, and
/// the output projection at the last position only.
pub fn rerank_flops(
    config: &Config,
    prompt_tokens: usize,
    image_tokens: usize,
    candidates: usize,
) -> f64 {
    let vision = &config.vision;
    let patches = (image_tokens * vision.spatial_merge_size.pow(2)) as f64;
    let width = vision.embed_dim as f64;
    let mlp = width * vision.mlp_ratio;
    let patch_values =
        (vision.in_chans * vision.temporal_patch_size * vision.patch_size.pow(2)) as f64;
    let merged = width * vision.spatial_merge_size.pow(2) as f64;
    let vision_flops = 2.0 * patches * patch_values * width
        + vision.depth as f64
            * (2.0 * patches * (4.0 * width * width + 2.0 * width * mlp)
                + 4.0 * patches * patches * width)
        + 2.0 * image_tokens as f64 * (merged * merged + merged * vision.hidden_size as f64);
    let text = &config.text;
    let hidden = text.hidden_size as f64;
    let kv = (text.num_key_value_heads * text.hidden_size / text.num_attention_heads) as f64;
    let tokens = prompt_tokens as f64;
    let per_layer = 2.0 * tokens * (2.0 * hidden * hidden + 2.0 * hidden * kv)
        + 2.0 * tokens * 3.0 * hidden * text.intermediate_size as f64
        + 4.0 * tokens * tokens * hidden / 2.0;
    let language =
        text.num_hidden_layers as f64 * per_layer + 2.0 * hidden * text.vocab_size as f64;
    candidates as f64 * (vision_flops + language)
}

fn estimate(flops: f64) -> FlopEstimate {
    FlopEstimate {
        gflops: flops / 1e9,
        a100_ms: flops / (A100_BF16 * ASSUMED_UTILISATION) * 1000.0,
        h100_ms: flops / (H100_BF16 * ASSUMED_UTILISATION) * 1000.0,
    }
}

/// Photo-like thumbnails, as the indexer stores them (320 pixels on the longer side).
fn thumbnails(count: usize) -> Result<Vec<Vec<u8>>, EncoderError> {
    (0..count)
        .map(|i| {
            let photo = twelve_megapixel_jpeg(1000 + i as u64)?;
            thumbnail_jpeg(&decode_rgb(&photo, Some(640))?, 320)
        })
        .collect()
}

/// Measures the reranker of the checkpoint at `directory`.
pub fn run(directory: &Path, options: &RerankBenchOptions) -> Result<RerankReport, EncoderError> {
    let settings = VlmSettings {
        max_candidates: options.candidates.max(1),
        image_tokens: options.image_tokens.max(1),
    };
    let mut reranker = VlmReranker::load(directory, settings)?;
    let photos = thumbnails(options.candidates.max(1))?;
    let query = "kids on a red sled in the snow";

    let started = Instant::now();
    let prepared = photos
        .iter()
        .map(|bytes| reranker.prepare(bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let prepare_ms = started.elapsed().as_secs_f64() * 1000.0;
    reranker.score(query, &prepared)?; // warm-up
    let mut times: Vec<f64> = (0..options.rounds.max(1))
        .map(|_| {
            let started = Instant::now();
            reranker
                .score(query, &prepared)
                .map(|_| started.elapsed().as_secs_f64() * 1000.0)
        })
        .collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);
    let side_tokens = (reranker.image_side(options.image_tokens) / 28) as usize;
    let image_tokens = side_tokens * side_tokens;
    let prompt_tokens = reranker.prompt_ids(query, image_tokens)?.len();

    // Training: pairs at the training budget, half of them relevant.
    let train_prepared = photos
        .iter()
        .map(|bytes| reranker.prepare_at(bytes, options.train_image_tokens.max(1)))
        .collect::<Result<Vec<_>, _>>()?;
    let examples: Vec<Example> = reranker
        .image_tokens(&train_prepared)?
        .into_iter()
        .enumerate()
        .map(|(i, image)| Example {
            query: query.to_owned(),
            image,
            relevant: i % 2 == 0,
            weight: 1.0,
        })
        .collect();
    let adapter = LoraAdapter::new(reranker.model(), LoraConfig::default(), 1)?;
    let training = TrainingSettings {
        steps: options.train_steps.max(1),
        batch: 8,
        ..TrainingSettings::default()
    };
    let started = Instant::now();
    training::train(&mut reranker, &adapter, &examples, &training)?;
    let pairs = (training.steps * training.batch.min(examples.len())) as f64;
    let train_pairs_per_s = pairs / started.elapsed().as_secs_f64();

    let published = Config::from_json(QWEN2_VL_2B).map_err(EncoderError::Internal)?;
    let candidates = options.candidates.max(1);
    Ok(RerankReport {
        model: directory.display().to_string(),
        candidates,
        image_tokens,
        prompt_tokens,
        prepare_ms,
        score_p50_ms: times[times.len() / 2],
        train_pairs_per_s,
        measured_model: estimate(rerank_flops(
            reranker.model().config(),
            prompt_tokens,
            image_tokens,
            candidates,
        )),
        qwen2_vl_2b: estimate(rerank_flops(
            &published,
            prompt_tokens,
            image_tokens,
            candidates,
        )),
        assumed_utilisation: ASSUMED_UTILISATION,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_only_prompt_costs_two_flops_per_parameter_and_token() {
        let config = Config::from_json(QWEN2_VL_2B).unwrap();
        // Qwen2-VL-2B's language model without its embeddings: 28 layers of attention (q and o
        // 1536², k and v 1536 × 256) and MLP (3 × 1536 × 8960).
        let parameters =
            28.0 * (2.0 * 1536.0 * 1536.0 + 2.0 * 1536.0 * 256.0 + 3.0 * 1536.0 * 8960.0);
        let tokens = 100.0;
        let expected = 2.0 * parameters * tokens + 2.0 * 1536.0 * 151_936.0;
        let counted = rerank_flops(&config, 100, 0, 1);
        // The rest is attention over 100 tokens: under 1 %.
        assert!(
            counted >= expected && counted < expected * 1.01,
            "{counted} vs {expected}"
        );
        assert!((rerank_flops(&config, 100, 0, 10) / counted - 10.0).abs() < 1e-9);
    }
}
