//! `glimpse bench encode`: text latency and end-to-end image throughput of an encoder.
//!
//! Without a model directory the benchmark builds the ViT-B/32 architecture with random weights
//! from a fixed seed (speed does not depend on the values) and OpenAI CLIP's tokenizer, so it
//! runs on a machine that has never downloaded a model.

pub mod ann;
pub mod index;
pub mod learner;
pub mod pool;
pub mod rerank;
pub mod serve;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
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
    ClipEncoder, EncoderError, ImageProcessorConfig, ImageTextEncoder, Precision, TextTokenizer,
    embed_pipelined,
};
use glimpse_worker::models::clip::{ClipConfig, ClipTextModel, ClipVisionModel};

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

/// OpenAI CLIP's tokenizer (the vocabulary is vendored in tests/reference/tokenizer with its
/// licence), so benchmark queries have the token counts real queries have.
const CLIP_TOKENIZER_JSON: &str =
    include_str!("../../../tests/reference/tokenizer/openai-clip/tokenizer.json");

fn clip_tokenizer(max_tokens: usize) -> Result<TextTokenizer, EncoderError> {
    let tokenizer = tokenizers::Tokenizer::from_bytes(CLIP_TOKENIZER_JSON.as_bytes())
        .map_err(|e| EncoderError::Internal(format!("the CLIP tokenizer: {e}")))?;
    TextTokenizer::new(tokenizer, max_tokens)
}

/// Every tensor a model asked [`SeededWeights`] for, by name.
#[derive(Clone, Default)]
struct RecordedWeights {
    seed: u64,
    tensors: Arc<Mutex<HashMap<String, Tensor>>>,
}

impl SimpleBackend for RecordedWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = SeededWeights(self.seed).get(shape, name, init, DType::F32, device)?;
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), tensor.clone());
        tensor.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        SeededWeights(self.seed).get_unchecked(name, dtype, device)
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The config.json of ViT-B/32 (`openai/clip-vit-base-patch32`): transformers' defaults.
fn vit_b32_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 512,
        "text_config": {"eos_token_id": 2}, "vision_config": {},
    })
}

fn parse_config(config: &serde_json::Value) -> Result<ClipConfig, EncoderError> {
    serde_json::from_value(config.clone())
        .map_err(|e| EncoderError::BadModel(format!("not a CLIP config: {e}")))
}

/// Writes the model of [`random_vit_b32`] as a Hugging Face checkpoint directory
/// (`config.json`, `model.safetensors`, `tokenizer.json`), for benchmarks that run `glimpse`
/// itself on a model directory: the same weights, so the same embeddings.
pub fn write_random_vit_b32(directory: &Path, seed: u64) -> Result<(), EncoderError> {
    write_random_clip(directory, &vit_b32_config(), seed)
}

fn write_random_clip(
    directory: &Path,
    config_json: &serde_json::Value,
    seed: u64,
) -> Result<(), EncoderError> {
    let config = parse_config(config_json)?;
    let recorded = RecordedWeights {
        seed,
        ..RecordedWeights::default()
    };
    // Building both towers asks for every tensor by its checkpoint name and shape.
    let vb = VarBuilder::from_backend(Box::new(recorded.clone()), DType::F32, Device::Cpu);
    ClipTextModel::new(vb.clone(), &config)?;
    ClipVisionModel::new(vb, &config)?;
    let failed = |name: &str, e: &dyn std::fmt::Display| {
        EncoderError::Internal(format!("writing {}: {e}", directory.join(name).display()))
    };
    std::fs::create_dir_all(directory).map_err(|e| failed("", &e))?;
    let tensors = std::mem::take(
        &mut *recorded
            .tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    candle_core::safetensors::save(&tensors, directory.join("model.safetensors"))
        .map_err(|e| failed("model.safetensors", &e))?;
    for (name, contents) in [
        ("config.json", config_json.to_string()),
        ("tokenizer.json", CLIP_TOKENIZER_JSON.to_owned()),
    ] {
        std::fs::write(directory.join(name), contents).map_err(|e| failed(name, &e))?;
    }
    Ok(())
}

/// ViT-B/32 (the default encoder's architecture) with seeded random weights, run at
/// `precision`.
pub fn random_vit_b32(seed: u64, precision: Precision) -> Result<ClipEncoder, EncoderError> {
    random_clip(
        &vit_b32_config(),
        "random/vit-base-patch32",
        seed,
        precision,
    )
}

fn random_clip(
    config_json: &serde_json::Value,
    name: &str,
    seed: u64,
    precision: Precision,
) -> Result<ClipEncoder, EncoderError> {
    let mut config = parse_config(config_json)?;
    precision.choose_weights(&Device::Cpu, &mut config)?;
    let weights =
        move || VarBuilder::from_backend(Box::new(SeededWeights(seed)), DType::F32, Device::Cpu);
    let id = EncoderId::new("clip", name, format!("seed-{seed}"))
        .map_err(|e| EncoderError::Internal(e.to_string()))?;
    let tokenizer = clip_tokenizer(config.text_config.max_position_embeddings)?;
    let encoder = ClipEncoder::new(
        weights(),
        &config,
        tokenizer,
        ImageProcessorConfig::default(),
        id,
    )?
    .with_jpeg_decode(precision.jpeg_decode());
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
        for result in embed_pipelined(encoder, &inputs, size, None) {
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

/// How far an encoder's embeddings are from a reference's with the same weights (a faster
/// precision against f32), and what that changes in searches.
#[derive(Debug, Serialize)]
pub struct AccuracyReport {
    /// Queries compared.
    pub queries: usize,
    /// The lowest cosine between the two embeddings of a query.
    pub text_cosine_min: f64,
    /// The mean cosine between the two embeddings of a query.
    pub text_cosine_mean: f64,
    /// Photos compared (synthetic 12 MP JPEGs, each encoder decoding and preparing them).
    pub images: usize,
    /// The lowest cosine between the two embeddings of a photo.
    pub image_cosine_min: f64,
    /// The mean cosine between the two embeddings of a photo.
    pub image_cosine_mean: f64,
    /// Vectors of the generated library the queries search.
    pub library_vectors: usize,
    /// Mean fraction of a query's exact top 10 in that library that both embeddings share.
    pub top10_agreement: f64,
}

/// Queries of the kind people type: the search benchmark's, and subjects in places.
fn accuracy_queries() -> Vec<String> {
    const SUBJECTS: [&str; 10] = [
        "a dog",
        "two kids",
        "my grandmother",
        "a red car",
        "a birthday cake",
        "an old bridge",
        "a cat",
        "the whole team",
        "a sailboat",
        "fireworks",
    ];
    const PLACES: [&str; 18] = [
        "on the beach",
        "in the snow",
        "at night",
        "in the kitchen",
        "under a tree",
        "in paris",
        "at the lake",
        "on a train",
        "in the rain",
        "at sunset",
        "in the garden",
        "on a mountain",
        "at a wedding",
        "in black and white",
        "from above",
        "through a window",
        "in autumn",
        "at the zoo",
    ];
    let combined = SUBJECTS
        .iter()
        .flat_map(|subject| PLACES.iter().map(move |place| format!("{subject} {place}")));
    ann::QUERIES
        .iter()
        .map(|q| q.to_string())
        .chain(combined)
        .collect()
}

/// Cosines between pairs of unit vectors: (lowest, mean).
fn cosines(a: &[glimpse_core::Embedding], b: &[glimpse_core::Embedding]) -> (f64, f64) {
    let values: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| f64::from(a.cosine(b)))
        .collect();
    let lowest = values.iter().copied().fold(f64::INFINITY, f64::min);
    (
        lowest,
        values.iter().sum::<f64>() / values.len().max(1) as f64,
    )
}

/// Compares `candidate` with `reference` (the same weights at another precision): the queries of
/// [`accuracy_queries`], `images` synthetic photos, and top-10 agreement over a library of
/// `library_vectors` generated vectors.
pub fn accuracy(
    candidate: &dyn ImageTextEncoder,
    reference: &dyn ImageTextEncoder,
    images: usize,
    library_vectors: usize,
) -> Result<AccuracyReport, String> {
    let queries = accuracy_queries();
    let texts: Vec<&str> = queries.iter().map(String::as_str).collect();
    let embed = |encoder: &dyn ImageTextEncoder| -> Result<Vec<_>, String> {
        // One query at a time, as searches run.
        texts
            .iter()
            .map(|text| {
                Ok(encoder
                    .embed_texts(&[text])
                    .map_err(|e| e.to_string())?
                    .remove(0))
            })
            .collect()
    };
    let (wanted, got) = (embed(reference)?, embed(candidate)?);
    let (text_cosine_min, text_cosine_mean) = cosines(&got, &wanted);
    // End to end, from the JPEG: each encoder decodes and prepares the photo its own way.
    let photos = (0..images as u64)
        .map(|seed| twelve_megapixel_jpeg(100 + seed).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let embed_photos = |encoder: &dyn ImageTextEncoder| -> Result<Vec<_>, String> {
        let prepared = photos
            .iter()
            .map(|jpeg| encoder.prepare_image(jpeg).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        encoder.embed_prepared(&prepared).map_err(|e| e.to_string())
    };
    let image_pair = (embed_photos(candidate)?, embed_photos(reference)?);
    let (image_cosine_min, image_cosine_mean) = cosines(&image_pair.0, &image_pair.1);
    let vectors = |embeddings: &[glimpse_core::Embedding]| -> Vec<Vec<f32>> {
        embeddings.iter().map(|e| e.as_slice().to_vec()).collect()
    };
    let top10_agreement = ann::top10_agreement(&vectors(&wanted), &vectors(&got), library_vectors)?;
    Ok(AccuracyReport {
        queries: queries.len(),
        text_cosine_min,
        text_cosine_mean,
        images,
        image_cosine_min,
        image_cosine_mean,
        library_vectors,
        top10_agreement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A written checkpoint loads into the same model as the weights in memory.
    #[test]
    fn a_written_random_checkpoint_embeds_like_the_model_in_memory() {
        let small = serde_json::json!({
            "projection_dim": 16,
            "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "eos_token_id": 2},
            "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4},
        });
        let directory =
            std::env::temp_dir().join(format!("glimpse-random-clip-{}", std::process::id()));
        write_random_clip(&directory, &small, 3).unwrap();
        let id = EncoderId::new("clip", "local/random", "x").unwrap();
        let loaded = ClipEncoder::load(&directory, id, Precision::F32).unwrap();
        let in_memory = random_clip(&small, "random/small", 3, Precision::F32).unwrap();
        std::fs::remove_dir_all(&directory).unwrap();
        let text = ["a red sled"];
        let (a, b) = (
            loaded.embed_texts(&text).unwrap(),
            in_memory.embed_texts(&text).unwrap(),
        );
        assert_eq!(a[0].as_slice(), b[0].as_slice());
        let jpeg = twelve_megapixel_jpeg(1).unwrap();
        let (a, b) = (
            loaded
                .embed_prepared(&[loaded.prepare_image(&jpeg).unwrap()])
                .unwrap(),
            in_memory
                .embed_prepared(&[in_memory.prepare_image(&jpeg).unwrap()])
                .unwrap(),
        );
        assert_eq!(a[0].as_slice(), b[0].as_slice());
    }

    #[test]
    fn benchmark_queries_have_the_token_counts_they_are_named_for() {
        let tokenizer = clip_tokenizer(77).unwrap();
        for tokens in TEXT_LENGTHS {
            assert_eq!(tokenizer.encode(&query_of(tokens)).unwrap().len(), tokens);
        }
        let ids = tokenizer.encode("a a").unwrap();
        assert_eq!(ids.first(), Some(&49406));
        assert_eq!(ids.last(), Some(&49407));
    }
}
