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
use crate::models::clip::{
    ClipConfig, ClipTextModel, ClipVisionModel, LinearWeights, PackedKernel,
};

/// What one more pass through the text tower costs, in padded token rows: a pass streams every
/// weight once whatever its size (about 3 ms on two cores in bf16, 5 in f32), and each token row
/// adds a few tenths of a millisecond. Texts share a pass, padded to the longest (attention is
/// causal and pooling happens at each text's own end token, so padding changes nothing but
/// costs work), unless the padding would cost more than another pass.
const PASS_COST_IN_ROWS: usize = 16;
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
    /// What the image tower takes its pixels in: f32, or bf16 on a GPU.
    dtype: DType,
    /// How precisely each tower runs.
    precision: TowerPrecisions,
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

/// How exactly an encoder follows the reference (transformers in f32, every JPEG pixel decoded),
/// traded for speed; what each costs is measured in docs/BENCHMARKS.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Each tower in whichever of f32 and the CPU's bf16 kernels (AMX-BF16, AVX-512 BF16,
    /// AVX-512F, AVX2 and FMA) measures fastest for it when the model loads (bf16 for text
    /// queries everywhere so far; for a batch of images it depends on the CPU); large JPEGs
    /// decoded at a reduced scale ([`JpegDecode::Draft`]).
    #[default]
    Auto,
    /// f32 throughout and every JPEG pixel decoded: embeddings equal to transformers' (what the
    /// parity tests check).
    F32,
    /// bf16 weights in both towers, with the kernel that measures fastest (activations in bf16
    /// too with AMX and AVX-512 BF16, in f32 with the widening kernels), products summed in f32,
    /// and draft JPEG decoding; refused on a CPU with no bf16 kernel.
    Bf16,
    /// int8 weights in both towers (a scale per output), activations quantized to 8 bits per
    /// row as each product runs, products summed exactly in i32 (AVX-512 VNNI), and draft JPEG
    /// decoding: the fewest bytes and the most multiply-adds per instruction, at a larger cost
    /// in accuracy than bf16 (docs/BENCHMARKS.md), so never chosen by `Auto`; refused on a CPU
    /// without AVX-512 VNNI.
    Int8,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "int8" => Ok(Self::Int8),
            other => Err(format!(
                "unknown precision {other:?}: use auto, f32, bf16 or int8"
            )),
        }
    }
}

impl Precision {
    /// How JPEG photos are decoded.
    pub fn jpeg_decode(self) -> JpegDecode {
        match self {
            Self::F32 => JpegDecode::Full,
            Self::Auto | Self::Bf16 | Self::Int8 => JpegDecode::Draft,
        }
    }

    /// Sets how each tower of `config` keeps its linear layers' weights on `device`: on a CPU,
    /// unless `F32`, by timing each tower's largest product with every kernel of the precision
    /// that the CPU runs ([`PackedKernel::fastest`]; some tens of milliseconds for ViT-B/32),
    /// f32 included under `Auto`.
    pub fn choose_weights(
        self,
        device: &Device,
        config: &mut ClipConfig,
    ) -> Result<(), EncoderError> {
        let (text, image) = self.tower_weights(device, config)?;
        config.text_weights = text;
        config.image_weights = image;
        Ok(())
    }

    fn tower_weights(
        self,
        device: &Device,
        config: &ClipConfig,
    ) -> Result<(LinearWeights, LinearWeights), EncoderError> {
        use LinearWeights::{AsLoaded, Packed};
        if !device.is_cpu() {
            return Ok((AsLoaded, AsLoaded));
        }
        // Each tower's largest product, at the rows it sees: a query, a batch of images.
        let (text, vision) = (&config.text_config, &config.vision_config);
        let image_rows =
            CALIBRATION_IMAGES * ((vision.image_size / vision.patch_size.max(1)).pow(2) + 1);
        let kernels = match self {
            Self::F32 => return Ok((AsLoaded, AsLoaded)),
            Self::Auto | Self::Bf16 => &PackedKernel::BF16[..],
            Self::Int8 => &PackedKernel::INT8,
        };
        if !PackedKernel::any_supported(kernels) {
            return match self {
                Self::Auto => Ok((AsLoaded, AsLoaded)),
                Self::F32 | Self::Bf16 | Self::Int8 => Err(EncoderError::BadModel(format!(
                    "precision {self} needs an x86-64 CPU with {} and this one has none: use \
                     auto or f32",
                    if self == Self::Int8 {
                        "AVX-512 VNNI"
                    } else {
                        "AVX2 and FMA (or AVX-512 BF16)"
                    }
                ))),
            };
        }
        let with_f32 = self == Self::Auto;
        let fastest = |rows, inputs, outputs| {
            PackedKernel::fastest(kernels, (rows, inputs, outputs), with_f32)
                .map(|kernel| kernel.map_or(AsLoaded, Packed))
        };
        Ok((
            fastest(CALIBRATION_TOKENS, text.hidden_size, text.intermediate_size)?,
            fastest(image_rows, vision.hidden_size, vision.intermediate_size)?,
        ))
    }
}

/// Images in the batch that the image tower's kernels are timed on when a model loads: enough
/// rows that the product runs as a batch of images does, few enough to take milliseconds.
const CALIBRATION_IMAGES: usize = 4;
/// Tokens of the query that the text tower's kernels are timed on.
const CALIBRATION_TOKENS: usize = 16;

/// What [`Precision`] came to on this machine, tower by tower: [`Precision::F32`],
/// [`Precision::Bf16`] or [`Precision::Int8`] each, and the CPU instructions its products run
/// with. Displayed as `text tower bf16 (AMX-BF16), image tower f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TowerPrecisions {
    /// The text tower (what a search waits for).
    pub text: Precision,
    /// The image tower (what indexing waits for).
    pub image: Precision,
    /// The packed kernel's instructions for the text tower ([`PackedKernel::instructions`]);
    /// `None` for the f32 GEMM or a GPU.
    pub text_kernel: Option<&'static str>,
    /// The same for the image tower.
    pub image_kernel: Option<&'static str>,
}

impl std::fmt::Display for TowerPrecisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kernel = |kernel: Option<&str>| kernel.map(|k| format!(" ({k})")).unwrap_or_default();
        write!(
            f,
            "text tower {}{}, image tower {}{}",
            self.text,
            kernel(self.text_kernel),
            self.image,
            kernel(self.image_kernel)
        )
    }
}

/// Where the model runs and in what: the first CUDA GPU when built with the `cuda` feature and
/// one is usable (bf16, or f32 at [`Precision::F32`]), else the CPU, whose weights are f32 as
/// loaded (and packed per [`Precision::choose_weights`]).
pub(crate) fn compute_device(precision: Precision) -> (Device, DType) {
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(device) if precision == Precision::F32 => return (device, DType::F32),
        Ok(device) => return (device, DType::BF16),
        // A CUDA build on a machine without a usable GPU (or driver) still runs, on the CPU.
        Err(e) => eprintln!("No usable CUDA GPU ({e}): the model runs on the CPU."),
    }
    #[cfg(not(feature = "cuda"))]
    let _ = precision;
    (Device::Cpu, DType::F32)
}

/// How precisely a tower runs with its weights `weights` in `dtype`.
fn weights_precision(dtype: DType, weights: LinearWeights) -> Precision {
    match weights {
        LinearWeights::Packed(PackedKernel::Avx512Vnni) => Precision::Int8,
        LinearWeights::Packed(
            PackedKernel::AmxBf16
            | PackedKernel::Avx512Bf16
            | PackedKernel::Avx512Fma
            | PackedKernel::Avx2Fma,
        ) => Precision::Bf16,
        LinearWeights::AsLoaded if dtype == DType::BF16 => Precision::Bf16,
        LinearWeights::AsLoaded => Precision::F32,
    }
}

/// The instructions of a tower's packed kernel, if it has one.
fn weights_kernel(weights: LinearWeights) -> Option<&'static str> {
    match weights {
        LinearWeights::Packed(kernel) => Some(kernel.instructions()),
        LinearWeights::AsLoaded => None,
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EncoderError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EncoderError::BadModel(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| EncoderError::BadModel(format!("{} is not valid: {e}", path.display())))
}

impl ClipEncoder {
    /// Loads a Hugging Face CLIP checkpoint directory: `config.json`, `model.safetensors`,
    /// `tokenizer.json` and `preprocessor_config.json` (defaults apply when it is absent), to
    /// run at `precision`.
    pub fn load(
        directory: &Path,
        id: EncoderId,
        precision: Precision,
    ) -> Result<Self, EncoderError> {
        let mut config: ClipConfig = read_json(&directory.join("config.json"))?;
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
        let (device, dtype) = compute_device(precision);
        precision.choose_weights(&device, &mut config)?;
        let vb = map_weights(&weights, dtype, &device)?;
        let encoder = Self::new(vb, &config, tokenizer, processor, id)?
            .with_jpeg_decode(precision.jpeg_decode());
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
            precision: TowerPrecisions {
                text: weights_precision(dtype, config.text_weights),
                image: weights_precision(dtype, config.image_weights),
                text_kernel: weights_kernel(config.text_weights),
                image_kernel: weights_kernel(config.image_weights),
            },
            device,
            dtype,
        })
    }

    /// How precisely each tower of this encoder runs, what [`Precision::Auto`] came to on this
    /// machine.
    pub fn precision(&self) -> TowerPrecisions {
        self.precision
    }

    /// Chooses how JPEG photos are decoded; [`JpegDecode::Full`] (the default) keeps
    /// preprocessing equal to transformers.
    pub fn with_jpeg_decode(mut self, jpeg_decode: JpegDecode) -> Self {
        self.processor = self.processor.with_jpeg_decode(jpeg_decode);
        self
    }

    /// Encodes token sequences (each from start to end token, as the tokenizer makes them): the
    /// texts of a query in one pass, many texts in passes of similar length (see
    /// [`PASS_COST_IN_ROWS`]). Exposed for benchmarks and for callers that tokenize ahead.
    pub fn embed_token_ids(&self, sequences: &[Vec<u32>]) -> Result<Vec<Embedding>, EncoderError> {
        let mut order: Vec<usize> = (0..sequences.len()).collect();
        order.sort_by_key(|&i| sequences[i].len());
        let mut results: Vec<Option<Embedding>> = vec![None; sequences.len()];
        let mut start = 0;
        while start < order.len() {
            let end = start + shared_pass(&order[start..], |i| sequences[i].len());
            let batch = &order[start..end];
            let longest = sequences[batch[batch.len() - 1]].len();
            let mut flat = Vec::with_capacity(batch.len() * longest);
            for &i in batch {
                flat.extend_from_slice(&sequences[i]);
                flat.resize(flat.len() + longest - sequences[i].len(), self.pad_token);
            }
            let ids = Tensor::from_vec(flat, (batch.len(), longest), &self.device)?;
            // On a thread of the pool: the products inside hand half their work to the other
            // threads instead of waking the pool and waiting for it, once per product.
            let features = rayon::scope(|_| self.text.forward(&ids))?.to_dtype(DType::F32)?;
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

/// How many of `order` (sorted by length, not empty) go in the next pass: while padding the
/// rows taken so far to the next length costs less than a pass of its own, and at most
/// [`MAX_BATCH`].
fn shared_pass(order: &[usize], length: impl Fn(usize) -> usize) -> usize {
    let mut longest = length(order[0]);
    let mut taken = 1;
    for &next in order.iter().skip(1).take(MAX_BATCH - 1) {
        let padding = taken * (length(next) - longest);
        if padding > PASS_COST_IN_ROWS {
            break;
        }
        longest = length(next);
        taken += 1;
    }
    taken
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

    fn prepare_image_with_thumbnail(
        &self,
        encoded: &[u8],
        thumbnail_size: u32,
    ) -> Result<(PreparedImage, Vec<u8>), EncoderError> {
        self.processor
            .prepare_with_thumbnail(encoded, thumbnail_size)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_texts_of_a_query_share_one_pass_and_far_apart_lengths_do_not() {
        // "people", "beach at dusk", "sunset over water -people -boats" as token counts.
        let query = [3, 5, 7];
        assert_eq!(shared_pass(&[0, 1, 2], |i| query[i]), 3);
        // A pass of 77-token rows for a 5-token text would cost more than a second pass.
        let apart = [5, 77];
        assert_eq!(shared_pass(&[0, 1], |i| apart[i]), 1);
        // Padding grows with the rows already taken: 10 texts of 4 tokens, then one of 6.
        let many = [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 6];
        let order: Vec<usize> = (0..many.len()).collect();
        assert_eq!(shared_pass(&order, |i| many[i]), 10);
        let same = [4; 100];
        let order: Vec<usize> = (0..same.len()).collect();
        assert_eq!(shared_pass(&order, |i| same[i]), MAX_BATCH);
    }

    /// On a GPU (a `cuda` build on a machine with one; `tests/gpu/run.sh`): transformers'
    /// embeddings of the fixtures at cosine ≥ 0.99999 in f32, and within the bf16 accuracy gate
    /// (≥ 0.9995) in bf16.
    #[cfg(feature = "cuda")]
    #[test]
    fn a_gpu_encodes_the_fixtures_like_transformers() {
        if let Err(e) = Device::new_cuda(0) {
            eprintln!("SKIPPED: no usable CUDA GPU ({e})");
            return;
        }
        let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference");
        let expected: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(reference.join("expected/clip-odd.json")).unwrap(),
        )
        .unwrap();
        let tensors = candle_core::safetensors::load(
            reference.join("expected/clip-odd.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let vector =
            |key: &str| -> Vec<f32> { tensors[key].flatten_all().unwrap().to_vec1().unwrap() };
        let cosine = |a: &[f32], b: &[f32]| -> f32 {
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b))
        };
        for (precision, lowest_cosine) in [(Precision::F32, 0.99999), (Precision::Bf16, 0.9995)] {
            let id: EncoderId = "clip:test/clip-odd@gpu".parse().unwrap();
            let encoder =
                ClipEncoder::load(&reference.join("checkpoints/clip-odd"), id, precision).unwrap();
            assert!(encoder.device.is_cuda());
            for (i, query) in expected["queries"].as_array().unwrap().iter().enumerate() {
                let text = query["text"].as_str().unwrap();
                let ours = encoder.embed_texts(&[text]).unwrap();
                let want = vector(&format!("text_embeds.{i}"));
                let got = cosine(ours[0].as_slice(), &want);
                assert!(
                    got >= lowest_cosine,
                    "{precision}: {text:?} at cosine {got}"
                );
            }
            for i in 0..expected["images"].as_array().map_or(0, Vec::len) {
                let key = format!("pixel_values.{i}");
                let (_, height, width) = tensors[&key].dims3().unwrap();
                let ours = encoder
                    .embed_prepared(&[PreparedImage {
                        pixels: vector(&key),
                        height: height as u32,
                        width: width as u32,
                    }])
                    .unwrap();
                let got = cosine(ours[0].as_slice(), &vector(&format!("image_embeds.{i}")));
                assert!(
                    got >= lowest_cosine,
                    "{precision}: image {i} at cosine {got}"
                );
            }
        }
    }
}
