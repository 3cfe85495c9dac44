//! The vision-language reranker: Qwen2-VL-Instruct asked, for each candidate photo, whether it
//! matches the search query, answering "yes" or "no".
//!
//! A candidate's relevance is `P(yes)` over the two answer tokens at the last position of the
//! chat prompt (a calibrated probability, independent of the other candidates); the softmax of the
//! "yes" logits across the candidates of one query is given as well. Every candidate of a query
//! is resized to the same square grid of patches within the pixel budget, so their prompts have
//! equal lengths and run as one batch.

pub mod lora;
mod patches;
pub mod training;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glimpse_core::ports::Relevance;
use tokenizers::Tokenizer;

pub use self::patches::{resize_and_normalise, smart_resize, to_patches};
use crate::encoder::{EncoderError, Precision, PreparedImage, compute_device, decode_rgb};
use crate::hub::shard_files;
use crate::models::qwen2_vl::{Config, ImagePatches, ImageTokens, Qwen2Vl};

/// The question asked about every candidate; `{query}` is the search text.
pub const INSTRUCTION: &str =
    "Does this photo match the search query? Answer only \"yes\" or \"no\".\nSearch query: {query}";

/// The system message of Qwen2-VL-Instruct's chat template when none is given.
const SYSTEM: &str = "You are a helpful assistant.";

/// How the reranker runs.
#[derive(Clone, Debug, PartialEq)]
pub struct VlmSettings {
    /// The most candidates scored per query; the rest keep their retrieval order below them.
    pub max_candidates: usize,
    /// Pixels per candidate image, in merged tokens of 28 × 28 pixels: each image becomes a
    /// square of `⌊√budget⌋²` tokens.
    pub image_tokens: usize,
}

impl Default for VlmSettings {
    fn default() -> Self {
        Self {
            max_candidates: 10,
            image_tokens: 144,
        }
    }
}

/// Qwen2-VL with its tokenizer, scoring (query, photo) pairs.
pub struct VlmReranker {
    directory: PathBuf,
    model: Qwen2Vl,
    tokenizer: Tokenizer,
    answers: [u32; 2],
    settings: VlmSettings,
    device: Device,
    dtype: DType,
}

/// The safetensors files of a checkpoint: `model.safetensors`, or the shards its index lists.
fn weight_files(directory: &Path) -> Result<Vec<PathBuf>, EncoderError> {
    let single = directory.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = directory.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(EncoderError::BadModel(format!(
            "{} has neither model.safetensors nor model.safetensors.index.json",
            directory.display()
        )));
    }
    Ok(shard_files(&index)?
        .into_iter()
        .map(|file| directory.join(file))
        .collect())
}

impl VlmReranker {
    /// Loads a Qwen2-VL checkpoint directory (config.json, tokenizer.json, safetensors weights),
    /// in f32 on the CPU or bf16 on a GPU.
    pub fn load(directory: &Path, settings: VlmSettings) -> Result<Self, EncoderError> {
        let (device, dtype) = compute_device(Precision::Auto);
        Self::load_on(directory, settings, device, dtype)
    }

    /// [`Self::load`] on `device` in `dtype` (f64 on the CPU checks gradients precisely).
    pub fn load_on(
        directory: &Path,
        settings: VlmSettings,
        device: Device,
        dtype: DType,
    ) -> Result<Self, EncoderError> {
        let bad = |what: &Path, e: &dyn std::fmt::Display| {
            EncoderError::BadModel(format!("{}: {e}", what.display()))
        };
        if settings.max_candidates == 0 || settings.image_tokens == 0 {
            return Err(EncoderError::BadModel(
                "the reranker needs at least one candidate and one image token".into(),
            ));
        }
        let config_path = directory.join("config.json");
        let json = std::fs::read_to_string(&config_path).map_err(|e| bad(&config_path, &e))?;
        let config = Config::from_json(&json).map_err(|e| bad(&config_path, &e))?;
        let tokenizer_path = directory.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| bad(&tokenizer_path, &e))?;
        let token = |text: &str| {
            tokenizer.token_to_id(text).ok_or_else(|| {
                EncoderError::BadModel(format!("the tokenizer has no single token for {text:?}"))
            })
        };
        let answers = [token("yes")?, token("no")?];
        let files = weight_files(directory)?;
        // SAFETY: the files are mapped read-only; Glimpse never writes model files while a model
        // is loaded, and a model directory replaced underneath a running process is unsupported.
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, &device) }
            .map_err(|e| bad(directory, &e))?;
        let model = Qwen2Vl::new(vb, &config).map_err(|e| bad(directory, &e))?;
        Ok(Self {
            directory: directory.to_path_buf(),
            model,
            tokenizer,
            answers,
            settings,
            device,
            dtype,
        })
    }

    /// The checkpoint directory it was loaded from.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The device and dtype it runs on.
    pub fn placement(&self) -> (Device, DType) {
        (self.device.clone(), self.dtype)
    }

    /// How it runs.
    pub fn settings(&self) -> &VlmSettings {
        &self.settings
    }

    /// The model, for training adapters on it.
    pub fn model_mut(&mut self) -> &mut Qwen2Vl {
        &mut self.model
    }

    /// The model.
    pub fn model(&self) -> &Qwen2Vl {
        &self.model
    }

    /// The side, in pixels, of the square an image of `image_tokens` merged patches is resized
    /// to: `⌊√image_tokens⌋` merge blocks of 28 pixels.
    pub fn image_side(&self, image_tokens: usize) -> u32 {
        let vision = &self.model.config().vision;
        let side_tokens = (image_tokens as f64).sqrt().floor().max(1.0) as usize;
        (side_tokens * vision.spatial_merge_size * vision.patch_size) as u32
    }

    /// Decodes an encoded photo (a draft decode of large JPEGs keeps twice the target side) and
    /// prepares it for [`Self::score`] at the configured pixel budget.
    pub fn prepare(&self, encoded: &[u8]) -> Result<PreparedImage, EncoderError> {
        self.prepare_at(encoded, self.settings.image_tokens)
    }

    /// [`Self::prepare`] at a pixel budget of `image_tokens` (training uses a larger one).
    pub fn prepare_at(
        &self,
        encoded: &[u8],
        image_tokens: usize,
    ) -> Result<PreparedImage, EncoderError> {
        let side = self.image_side(image_tokens);
        let image = decode_rgb(encoded, Some(2 * side))?;
        resize_and_normalise(&image, side, side)
    }

    /// The chat prompt for `query` and an image of `image_tokens` merged patches, with the image
    /// tokens expanded, as `Qwen2VLProcessor` writes it after the model's chat template.
    pub fn prompt(query: &str, image_tokens: usize) -> String {
        // A query must not open or close the template's special tokens.
        let query = query.replace("<|", "< |");
        let instruction = INSTRUCTION.replace("{query}", &query);
        format!(
            "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|>{}\
             <|vision_end|>{instruction}<|im_end|>\n<|im_start|>assistant\n",
            "<|image_pad|>".repeat(image_tokens)
        )
    }

    /// The token ids of [`Self::prompt`].
    pub fn prompt_ids(&self, query: &str, image_tokens: usize) -> Result<Vec<u32>, EncoderError> {
        let prompt = Self::prompt(query, image_tokens);
        let encoding = self
            .tokenizer
            .encode(prompt.as_str(), true)
            .map_err(|e| EncoderError::Internal(format!("tokenizing the prompt: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Patches of prepared images on the model's device.
    fn patches(&self, image: &PreparedImage) -> Result<ImagePatches, EncoderError> {
        let (values, grid) = to_patches(image, &self.model.config().vision)?;
        let rows = grid.iter().product::<usize>();
        let patches = Tensor::from_vec(values, (rows, ()), &self.device)?;
        Ok(ImagePatches {
            patches: patches.to_dtype(self.dtype)?,
            grid,
        })
    }

    /// The vision tower's tokens for each prepared image (the model is never trained there, so
    /// these can be computed once and reused).
    pub fn image_tokens(&self, images: &[PreparedImage]) -> Result<Vec<ImageTokens>, EncoderError> {
        let patches = images
            .iter()
            .map(|image| self.patches(image))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.model.image_features(&patches)?)
    }

    /// The logits of "yes" and "no" at the last position for each (query, image) pair, `(pairs,
    /// 2)` in the model's dtype. Pairs whose prompts have equal lengths run as one batch; the
    /// result is differentiable with respect to an attached adapter.
    pub fn answer_logits(&self, pairs: &[(&str, &ImageTokens)]) -> Result<Tensor, EncoderError> {
        let ids = pairs
            .iter()
            .map(|(query, image)| self.prompt_ids(query, image.rows * image.columns))
            .collect::<Result<Vec<_>, _>>()?;
        let answers = Tensor::new(&self.answers[..], &self.device)?;
        let (mut order, mut outputs) = (Vec::with_capacity(pairs.len()), Vec::new());
        let mut pending: Vec<usize> = (0..pairs.len()).collect();
        while let Some(&first) = pending.first() {
            let length = ids[first].len();
            let (group, rest): (Vec<usize>, Vec<usize>) =
                pending.iter().partition(|&&i| ids[i].len() == length);
            let group_ids: Vec<Vec<u32>> = group.iter().map(|&i| ids[i].clone()).collect();
            let group_images: Vec<ImageTokens> =
                group.iter().map(|&i| pairs[i].1.clone()).collect();
            outputs.push(
                self.model
                    .last_logits(&group_ids, &group_images)?
                    .index_select(&answers, 1)?,
            );
            order.extend(group);
            pending = rest;
        }
        // Back to the pairs' order: row `inverse[i]` of the groups' rows is pair `i`.
        let mut inverse = vec![0u32; pairs.len()];
        for (row, &pair) in order.iter().enumerate() {
            inverse[pair] = row as u32;
        }
        let inverse = Tensor::new(inverse, &self.device)?;
        Ok(Tensor::cat(&outputs, 0)?.index_select(&inverse, 0)?)
    }

    /// Scores prepared images against `query`: `P(yes)` of each over the two answer tokens, and
    /// the softmax of the "yes" logits across them (unnamed: the caller names the reranker).
    pub fn score(&self, query: &str, images: &[PreparedImage]) -> Result<Relevance, EncoderError> {
        if images.is_empty() {
            return Ok(Relevance::default());
        }
        let tokens = self.image_tokens(images)?;
        let pairs: Vec<(&str, &ImageTokens)> = tokens.iter().map(|t| (query, t)).collect();
        let logits: Vec<[f32; 2]> = self
            .answer_logits(&pairs)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?
            .into_iter()
            .map(|row| [row[0], row[1]])
            .collect();
        let probabilities = logits
            .iter()
            .map(|[yes, no]| 1.0 / (1.0 + (no - yes).exp()))
            .collect();
        let top = logits
            .iter()
            .map(|l| l[0])
            .fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|l| (l[0] - top).exp()).collect();
        let sum: f32 = exps.iter().sum();
        Ok(Relevance {
            // Named by whoever serves the model (with the adapter it put on).
            reranker: String::new(),
            probabilities,
            shares: exps.into_iter().map(|e| e / sum).collect(),
        })
    }
}
