//! `glimpse bench encode`: text latency and end-to-end image throughput of an encoder.
//!
//! Without a model directory the benchmark builds the ViT-B/32 architecture with random weights
//! from a fixed seed (speed does not depend on the values) and a byte-level CLIP tokenizer, so it
//! runs on a machine that has never downloaded a model.

pub mod ann;
pub mod learner;
pub mod pool;
pub mod serve;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use glimpse_core::EncoderId;
use image::codecs::jpeg::JpegEncoder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use glimpse_worker::encoder::{
    ClipEncoder, EncoderError, ImageProcessorConfig, ImageTextEncoder, TextTokenizer,
    embed_pipelined,
};
use glimpse_worker::models::clip::ClipConfig;

/// Token counts the text benchmark measures.
pub const TEXT_LENGTHS: [usize; 3] = [4, 16, 77];
/// Batch sizes the image benchmark measures.
pub const IMAGE_BATCHES: [usize; 3] = [1, 8, 32];

/// The figures `glimpse bench encode --json` prints.
#[derive(Debug, Serialize)]
pub struct EncodeReport {
    /// The encoder measured.
    pub encoder: String,
    /// Median latency of one query (tokenize + encode), by token count.
    pub text_p50_ms: BTreeMap<usize, f64>,
    /// Images per second end to end (JPEG decode of a 12-megapixel photo, preprocessing and
    /// encoding, decode overlapped with encoding), by batch size.
    pub image_per_s: BTreeMap<usize, f64>,
    /// Median time to decode and preprocess one 12-megapixel JPEG on one thread.
    pub prepare_ms_per_image: f64,
    /// Images per second of the image tower alone at batch 32 (pixels already prepared).
    pub encode_only_per_s: f64,
}

/// Weights drawn from N(0, 1/fan_in) by a generator seeded with the seed and the tensor's name,
/// so every run builds the same model.
struct SeededWeights(u64);

impl SeededWeights {
    fn tensor(&self, shape: &Shape, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let seed = name.bytes().fold(self.0, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let mut rng = StdRng::seed_from_u64(seed);
        let fan_in = shape.dims().last().copied().unwrap_or(1).max(1) as f32;
        let scale = fan_in.sqrt().recip();
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| {
                let v: f32 = StandardNormal.sample(&mut rng);
                v * scale
            })
            .collect();
        Tensor::from_vec(values, shape, device)
    }
}

impl SimpleBackend for SeededWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.tensor(&shape, name, device)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// A CLIP tokenizer with the byte-level alphabet only (no merges): every ASCII letter followed by
/// a space is one token, so `"a a a"` is 5 tokens with the start and end tokens.
fn byte_level_clip_tokenizer(max_tokens: usize) -> Result<TextTokenizer, EncoderError> {
    // CLIP's reversible byte → character table: printable bytes stand for themselves, the rest
    // map to U+0100 onwards in byte order.
    let mut next_unprintable = 0x100;
    let symbols: Vec<char> = (0u8..=255)
        .map(|b| match b {
            b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF => char::from(b),
            _ => {
                next_unprintable += 1;
                char::from_u32(next_unprintable - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
            }
        })
        .collect();
    let mut vocab = serde_json::Map::new();
    let mut id = 0u32;
    for suffix in ["", "</w>"] {
        for symbol in &symbols {
            vocab.insert(format!("{symbol}{suffix}"), id.into());
            id += 1;
        }
    }
    vocab.insert("<|startoftext|>".into(), 49406.into());
    vocab.insert("<|endoftext|>".into(), 49407.into());
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "added_tokens": [special(49406, "<|startoftext|>"), special(49407, "<|endoftext|>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 49407],
            "cls": ["<|startoftext|>", 49406], "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
            "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    let tokenizer = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
        .map_err(|e| EncoderError::Internal(format!("byte-level tokenizer: {e}")))?;
    TextTokenizer::new(tokenizer, max_tokens)
}

/// ViT-B/32 (the default encoder's architecture) with seeded random weights.
pub fn random_vit_b32(seed: u64) -> Result<ClipEncoder, EncoderError> {
    let config = ClipConfig::vit_base_patch32();
    let weights =
        move || VarBuilder::from_backend(Box::new(SeededWeights(seed)), DType::F32, Device::Cpu);
    let id = EncoderId::new("clip", "random/vit-base-patch32", format!("seed-{seed}"))
        .map_err(|e| EncoderError::Internal(e.to_string()))?;
    let tokenizer = byte_level_clip_tokenizer(config.text_config.max_position_embeddings)?;
    let encoder = ClipEncoder::new(
        weights(),
        &config,
        tokenizer,
        ImageProcessorConfig::default(),
        id,
    )?;
    Ok(encoder.releasable(config, move || Ok(weights())))
}

/// A synthetic 12-megapixel (4000×3000) photo-like JPEG at quality 90: smooth gradients, hard
/// edges and sensor-like noise, so the decoder does representative work.
pub fn twelve_megapixel_jpeg(seed: u64) -> Result<Vec<u8>, EncoderError> {
    let (width, height) = (4000u32, 3000u32);
    let mut rng = StdRng::seed_from_u64(seed);
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let noise: i32 = rng.random_range(-12..=12);
        let edge = if (x / 250 + y / 250) % 2 == 0 { 60 } else { 0 };
        let channel = |base: u32| (base as i32 + edge + noise).clamp(0, 255) as u8;
        image::Rgb([
            channel(x * 255 / width),
            channel(y * 255 / height),
            channel((x + y) * 128 / (width + height) + 64),
        ])
    });
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&image)
        .map_err(|e| EncoderError::Internal(format!("encoding the benchmark JPEG: {e}")))?;
    Ok(bytes)
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// A query of exactly `tokens` tokens (start and end included) for CLIP-style tokenizers, where
/// the single letter `a` is one token; 77 is reached by truncation.
fn query_of(tokens: usize) -> String {
    vec![
        "a";
        tokens
            .saturating_sub(2)
            .max(if tokens >= 77 { 200 } else { 0 })
    ]
    .join(" ")
}

/// Runs the encode benchmark; `rounds` scales the number of repetitions (1 is the default run).
pub fn encode(encoder: &dyn ImageTextEncoder, rounds: usize) -> Result<EncodeReport, EncoderError> {
    let rounds = rounds.max(1);
    let mut text_p50_ms = BTreeMap::new();
    for tokens in TEXT_LENGTHS {
        let query = query_of(tokens);
        // Warm up until allocations reach their steady state, as in a long-running server.
        for _ in 0..30 {
            encoder.embed_texts(&[&query])?;
        }
        let samples = (0..50 * rounds)
            .map(|_| {
                let start = Instant::now();
                encoder.embed_texts(&[&query]).map(|_| start.elapsed())
            })
            .collect::<Result<Vec<_>, _>>()?;
        text_p50_ms.insert(tokens, median_ms(samples));
    }

    let jpeg = twelve_megapixel_jpeg(7)?;
    let prepare_samples = (0..3 * rounds)
        .map(|_| {
            let start = Instant::now();
            encoder.prepare_image(&jpeg).map(|_| start.elapsed())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let prepared = encoder.prepare_image(&jpeg)?;

    let batch = vec![prepared; 32];
    encoder.embed_prepared(&batch[..2])?;
    let start = Instant::now();
    for _ in 0..rounds {
        encoder.embed_prepared(&batch)?;
    }
    let encode_only_per_s = (32 * rounds) as f64 / start.elapsed().as_secs_f64();

    let mut image_per_s = BTreeMap::new();
    for size in IMAGE_BATCHES {
        let count = (size * 2).max(16) * rounds;
        let inputs: Vec<&[u8]> = vec![jpeg.as_slice(); count];
        let start = Instant::now();
        for result in embed_pipelined(encoder, &inputs, size) {
            result?;
        }
        image_per_s.insert(size, count as f64 / start.elapsed().as_secs_f64());
    }
    Ok(EncodeReport {
        encoder: encoder.id().to_string(),
        text_p50_ms,
        image_per_s,
        prepare_ms_per_image: median_ms(prepare_samples),
        encode_only_per_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_tokenizer_counts_one_token_per_letter() {
        let tokenizer = byte_level_clip_tokenizer(77).unwrap();
        for tokens in TEXT_LENGTHS {
            assert_eq!(tokenizer.encode(&query_of(tokens)).unwrap().len(), tokens);
        }
        let ids = tokenizer.encode("a a").unwrap();
        assert_eq!(ids.first(), Some(&49406));
        assert_eq!(ids.last(), Some(&49407));
    }
}
