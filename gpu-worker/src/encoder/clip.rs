//! OpenAI CLIP behind [`ImageTextEncoder`]: a Hugging Face checkpoint directory in, unit vectors
//! out.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glimpse_core::{Embedding, EncoderId};

use super::{
    EncoderError, ImageProcessor, ImageProcessorConfig, ImageTextEncoder, JpegDecode,
    PreparedImage, TextTokenizer,
};
use crate::models::clip::{ClipConfig, ClipTextModel, ClipVisionModel};

/// Queries whose lengths differ by at most this many tokens share a batch (padded to the longest;
/// attention is causal and pooling happens at each query's own end token, so padding changes
/// nothing but costs work).
const LENGTH_SLACK: usize = 4;
/// The most texts or images encoded in one forward pass.
const MAX_BATCH: usize = 64;

/// A CLIP checkpoint ready to encode.
pub struct ClipEncoder {
    id: EncoderId,
    text: ClipTextModel,
    /// The image tower, `None` while released (see [`ClipEncoder::release_image_tower`]).
    vision: Mutex<Option<Arc<ClipVisionModel>>>,
    /// How the image tower is read again once released; `None` keeps it loaded.
    reload: Option<Reload>,
    tokenizer: TextTokenizer,
    processor: ImageProcessor,
    pad_token: u32,
    dimension: usize,
    image_size: usize,
    device: Device,
    /// f32 on the CPU, bf16 on a GPU.
    dtype: DType,
}

impl std::fmt::Debug for ClipEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the weights.
        f.debug_struct("ClipEncoder")
            .field("id", &self.id)
            .field("dimension", &self.dimension)
            .finish_non_exhaustive()
    }
}

/// Where the model runs: the first CUDA GPU in bf16 when built with the `cuda` feature and one
/// is present, else the CPU in f32 (the kernels of [`crate::models::kernels`]).
fn compute_device() -> Result<(Device, DType), EncoderError> {
    #[cfg(feature = "cuda")]
    {
        let device = Device::cuda_if_available(0)?;
        if device.is_cuda() {
            return Ok((device, DType::BF16));
        }
    }
    Ok((Device::Cpu, DType::F32))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EncoderError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EncoderError::BadModel(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| EncoderError::BadModel(format!("{} is not valid: {e}", path.display())))
}

impl ClipEncoder {
    /// Loads a Hugging Face CLIP checkpoint directory: `config.json`, `model.safetensors`,
    /// `tokenizer.json` and `preprocessor_config.json` (defaults apply when it is absent).
    pub fn load(directory: &Path, id: EncoderId) -> Result<Self, EncoderError> {
        let config: ClipConfig = read_json(&directory.join("config.json"))?;
        let preprocessor = directory.join("preprocessor_config.json");
        let processor = if preprocessor.exists() {
            read_json(&preprocessor)?
        } else {
            ImageProcessorConfig::default()
        };
        let tokenizer = TextTokenizer::from_file(
            &directory.join("tokenizer.json"),
            config.text_config.max_position_embeddings,
        )?;
        let weights = directory.join("model.safetensors");
        if !weights.exists() {
            return Err(EncoderError::BadModel(format!(
                "{} has no model.safetensors (weights in other formats are not supported)",
                directory.display()
            )));
        }
        let (device, dtype) = compute_device()?;
        let vb = map_weights(&weights, dtype, &device)?;
        let encoder = Self::new(vb, &config, tokenizer, processor, id)?;
        Ok(encoder.releasable(config, move || map_weights(&weights, dtype, &device)))
    }

    /// Lets [`ImageTextEncoder::release_image_tower`] free the image tower: `weights` gives its
    /// weights again when the next image needs it.
    pub fn releasable(
        mut self,
        config: ClipConfig,
        weights: impl Fn() -> Result<VarBuilder<'static>, EncoderError> + Send + Sync + 'static,
    ) -> Self {
        self.reload = Some(Reload {
            config,
            weights: Box::new(weights),
        });
        self
    }

    /// The image tower, read again if it was released.
    fn image_tower(&self) -> Result<Arc<ClipVisionModel>, EncoderError> {
        let mut vision = self.vision.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tower) = vision.as_ref() {
            return Ok(Arc::clone(tower));
        }
        let Some(reload) = &self.reload else {
            return Err(EncoderError::Internal(
                "the image tower was released but cannot be read again".into(),
            ));
        };
        let tower = ClipVisionModel::new((reload.weights)()?, &reload.config).map_err(|e| {
            EncoderError::BadModel(format!("the model's weights changed on disk: {e}"))
        })?;
        let tower = Arc::new(tower);
        *vision = Some(Arc::clone(&tower));
        Ok(tower)
    }

    /// Builds an encoder from weights already behind a [`VarBuilder`] (a checkpoint, or random
    /// weights for benchmarks).
    pub fn new(
        vb: VarBuilder,
        config: &ClipConfig,
        tokenizer: TextTokenizer,
        processor: ImageProcessorConfig,
        id: EncoderId,
    ) -> Result<Self, EncoderError> {
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let mismatch =
            |e| EncoderError::BadModel(format!("the weights do not match config.json: {e}"));
        let text = ClipTextModel::new(vb.clone(), config).map_err(mismatch)?;
        let vision = ClipVisionModel::new(vb, config).map_err(mismatch)?;
        let image_size = config.vision_config.image_size;
        let processor = ImageProcessor::new(processor);
        let (out_h, out_w) = processor
            .config()
            .output_size(image_size as u32, image_size as u32);
        if (out_h as usize, out_w as usize) != (image_size, image_size) {
            return Err(EncoderError::BadModel(format!(
                "preprocessor_config.json produces {out_h}×{out_w} images but the model takes \
                 {image_size}×{image_size}"
            )));
        }
        Ok(Self {
            id,
            text,
            vision: Mutex::new(Some(Arc::new(vision))),
            reload: None,
            tokenizer,
            processor,
            pad_token: config.text_config.eos_token_id,
            dimension: config.projection_dim,
            image_size,
            device,
            dtype,
        })
    }

    /// Chooses how JPEG photos are decoded; [`JpegDecode::Full`] (the default) keeps
    /// preprocessing equal to transformers.
    pub fn with_jpeg_decode(mut self, jpeg_decode: JpegDecode) -> Self {
        self.processor = self.processor.with_jpeg_decode(jpeg_decode);
        self
    }

    /// Encodes token sequences (each from start to end token, as the tokenizer makes them) in
    /// batches of similar length. Exposed for benchmarks and for callers that tokenize ahead.
    pub fn embed_token_ids(&self, sequences: &[Vec<u32>]) -> Result<Vec<Embedding>, EncoderError> {
        let mut order: Vec<usize> = (0..sequences.len()).collect();
        order.sort_by_key(|&i| sequences[i].len());
        let mut results: Vec<Option<Embedding>> = vec![None; sequences.len()];
        let mut start = 0;
        while start < order.len() {
            let shortest = sequences[order[start]].len();
            let end = order[start..]
                .iter()
                .take(MAX_BATCH)
                .take_while(|&&i| sequences[i].len() <= shortest + LENGTH_SLACK)
                .count()
                + start;
            let batch = &order[start..end];
            let longest = sequences[batch[batch.len() - 1]].len();
            let mut flat = Vec::with_capacity(batch.len() * longest);
            for &i in batch {
                flat.extend_from_slice(&sequences[i]);
                flat.resize(flat.len() + longest - sequences[i].len(), self.pad_token);
            }
            let ids = Tensor::from_vec(flat, (batch.len(), longest), &self.device)?;
            let features = self.text.forward(&ids)?.to_dtype(DType::F32)?;
            for (&i, row) in batch.iter().zip(features.to_vec2::<f32>()?) {
                results[i] = Some(to_embedding(row)?);
            }
            start = end;
        }
        results
            .into_iter()
            .map(|e| e.ok_or_else(|| EncoderError::Internal("a text was not encoded".into())))
            .collect()
    }
}

/// How a released image tower is read again.
struct Reload {
    config: ClipConfig,
    weights: Box<dyn Fn() -> Result<VarBuilder<'static>, EncoderError> + Send + Sync>,
}

/// Maps a safetensors file for loading.
fn map_weights(
    weights: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, EncoderError> {
    // SAFETY: the file is mapped read-only; Glimpse never writes model files while a model is
    // loaded, and a model directory replaced underneath a running process is unsupported.
    #[allow(unsafe_code)]
    unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, device) }
        .map_err(|e| EncoderError::BadModel(format!("{}: {e}", weights.display())))
}

fn to_embedding(values: Vec<f32>) -> Result<Embedding, EncoderError> {
    Embedding::normalized(values)
        .map_err(|e| EncoderError::Internal(format!("the model produced a bad vector: {e}")))
}

impl ImageTextEncoder for ClipEncoder {
    fn id(&self) -> &EncoderId {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Embedding>, EncoderError> {
        let sequences = texts
            .iter()
            .map(|text| self.tokenizer.encode(text))
            .collect::<Result<Vec<_>, _>>()?;
        self.embed_token_ids(&sequences)
    }

    fn prepare_image(&self, encoded: &[u8]) -> Result<PreparedImage, EncoderError> {
        self.processor.prepare(encoded)
    }

    fn release_image_tower(&self) -> bool {
        if self.reload.is_none() {
            return false;
        }
        let mut vision = self.vision.lock().unwrap_or_else(PoisonError::into_inner);
        vision.take().is_some()
    }

    fn embed_prepared(&self, images: &[PreparedImage]) -> Result<Vec<Embedding>, EncoderError> {
        let side = self.image_size;
        let vision = self.image_tower()?;
        let mut embeddings = Vec::with_capacity(images.len());
        for chunk in images.chunks(MAX_BATCH) {
            let mut flat = Vec::with_capacity(chunk.len() * 3 * side * side);
            for image in chunk {
                if (image.height as usize, image.width as usize) != (side, side) {
                    return Err(EncoderError::Internal(format!(
                        "a {}×{} image was prepared for another model ({side}×{side})",
                        image.height, image.width
                    )));
                }
                flat.extend_from_slice(&image.pixels);
            }
            let pixels = Tensor::from_vec(flat, (chunk.len(), 3, side, side), &self.device)?
                .to_dtype(self.dtype)?;
            let features = vision.forward(&pixels)?.to_dtype(DType::F32)?;
            for row in features.to_vec2::<f32>()? {
                embeddings.push(to_embedding(row)?);
            }
        }
        Ok(embeddings)
    }
}
