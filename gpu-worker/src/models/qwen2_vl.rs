//! Qwen2-VL (`Qwen2VLForConditionalGeneration`): a ViT with 2-D rotary positions whose patches are
//! merged 2×2 into the tokens of a Qwen2 language model with multimodal (temporal, height, width)
//! rotary positions. Equal to transformers' implementation at the last position's logits, which
//! is what the reranker reads.
//!
//! Tensor names mirror the published checkpoints (`visual.blocks.0.attn.qkv`,
//! `model.layers.0.self_attn.q_proj`, …); checkpoints saved by recent transformers, which nest
//! them as `model.visual.*` and `model.language_model.*`, load too. The model does no I/O.
//!
//! The model is written with differentiable operations only (softmax, the norms and the rotary
//! embeddings spelt out, none of candle's fused kernels, which have no backward pass), so that
//! gradients reach adapters trained through the language model, in any dtype.

use candle_core::{D, DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

/// The vision tower's part of config.json (`vision_config`).
#[derive(Clone, Debug, Deserialize)]
pub struct VisionConfig {
    /// Transformer blocks.
    pub depth: usize,
    /// Width of the vision transformer.
    pub embed_dim: usize,
    /// Width of the merged tokens: the language model's hidden size.
    pub hidden_size: usize,
    /// MLP width as a multiple of `embed_dim`.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Attention heads.
    pub num_heads: usize,
    /// Colour channels.
    #[serde(alias = "in_channels", default = "default_channels")]
    pub in_chans: usize,
    /// Side of a square patch in pixels.
    pub patch_size: usize,
    /// Patches merged per side into one language-model token.
    pub spatial_merge_size: usize,
    /// Frames per patch (a still image is repeated to fill them).
    pub temporal_patch_size: usize,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

fn default_channels() -> usize {
    3
}

/// The language model's part of config.json.
#[derive(Clone, Debug)]
pub struct TextConfig {
    /// Rows of the token-embedding table.
    pub vocab_size: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key and value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// RMS norm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// How the rotary frequencies are split between the temporal, height and width positions.
    pub mrope_section: Vec<usize>,
}

impl TextConfig {
    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// config.json of a Qwen2-VL checkpoint, in the published layout (the language model's fields at
/// the top level, `rope_scaling.mrope_section`) or as transformers 5 saves it (`text_config`,
/// `rope_parameters`).
#[derive(Clone, Debug)]
pub struct Config {
    /// The language model.
    pub text: TextConfig,
    /// The vision tower.
    pub vision: VisionConfig,
    /// The token the processor repeats once per merged image patch.
    pub image_token_id: u32,
    /// Whether the output projection is the token-embedding table.
    pub tie_word_embeddings: bool,
}

#[derive(Deserialize)]
struct RawText {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    hidden_act: Option<String>,
    tie_word_embeddings: Option<bool>,
}

#[derive(Deserialize)]
struct RawRope {
    rope_theta: Option<f64>,
    mrope_section: Option<Vec<usize>>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    text_config: Option<serde_json::Value>,
    vision_config: VisionConfig,
    image_token_id: u32,
    tie_word_embeddings: Option<bool>,
}

fn default_rms_eps() -> f64 {
    1e-6
}

impl Config {
    /// Parses config.json; the message says which field is missing or unsupported.
    pub fn from_json(json: &str) -> std::result::Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let raw: RawConfig = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        let text_value = raw.text_config.unwrap_or(value);
        let text: RawText = serde_json::from_value(text_value).map_err(|e| e.to_string())?;
        if let Some(act) = text.hidden_act.as_deref().filter(|act| *act != "silu") {
            return Err(format!(
                "hidden_act {act:?} is not supported (Qwen2-VL uses silu)"
            ));
        }
        let rope = text.rope_parameters.as_ref().or(text.rope_scaling.as_ref());
        let head_dim = text.hidden_size / text.num_attention_heads.max(1);
        let mrope_section = rope
            .and_then(|r| r.mrope_section.clone())
            .unwrap_or_else(|| vec![16, 24, 24]);
        if mrope_section.iter().sum::<usize>() * 2 != head_dim {
            return Err(format!(
                "mrope_section {mrope_section:?} does not cover the head dimension {head_dim}"
            ));
        }
        let text_config = TextConfig {
            vocab_size: text.vocab_size,
            hidden_size: text.hidden_size,
            intermediate_size: text.intermediate_size,
            num_hidden_layers: text.num_hidden_layers,
            num_attention_heads: text.num_attention_heads,
            num_key_value_heads: text.num_key_value_heads.unwrap_or(text.num_attention_heads),
            rms_norm_eps: text.rms_norm_eps,
            rope_theta: rope
                .and_then(|r| r.rope_theta)
                .or(text.rope_theta)
                .unwrap_or(1_000_000.0),
            mrope_section,
        };
        Ok(Self {
            tie_word_embeddings: raw
                .tie_word_embeddings
                .or(text.tie_word_embeddings)
                .unwrap_or(false),
            text: text_config,
            vision: raw.vision_config,
            image_token_id: raw.image_token_id,
        })
    }
}

/// One image ready for the vision tower, as the processor makes it.
#[derive(Clone, Debug)]
pub struct ImagePatches {
    /// `(t·h·w, channels · temporal_patch · patch · patch)`, patches in merge-block order.
    pub patches: Tensor,
    /// The grid of patches: frames, rows, columns.
    pub grid: [usize; 3],
}

/// One image as language-model tokens: the vision tower's merged patches and their grid.
#[derive(Clone, Debug)]
pub struct ImageTokens {
    /// `(rows · columns, hidden)`.
    pub tokens: Tensor,
    /// Rows of merged patches.
    pub rows: usize,
    /// Columns of merged patches.
    pub columns: usize,
}

/// Half-precision values in f32 (as transformers computes norms and softmax), others as they are.
fn widened(xs: &Tensor) -> Result<Tensor> {
    match xs.dtype() {
        DType::BF16 | DType::F16 => xs.to_dtype(DType::F32),
        _ => Ok(xs.clone()),
    }
}

/// `x / rms(x) · weight`, written out so that it has a backward pass.
fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let wide = widened(xs)?;
    let variance = wide.sqr()?.mean_keepdim(D::Minus1)?;
    wide.broadcast_div(&(variance + eps)?.sqrt()?)?
        .to_dtype(xs.dtype())?
        .broadcast_mul(weight)
}

/// LayerNorm (`eps` 1e-6) over the last dimension, spelt out so that it runs in any dtype.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(width, "weight")?,
            bias: vb.get(width, "bias")?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let wide = widened(xs)?;
        let centred = wide.broadcast_sub(&wide.mean_keepdim(D::Minus1)?)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(variance + 1e-6)?.sqrt()?)?
            .to_dtype(xs.dtype())?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Softmax over the last dimension, written out so that it has a backward pass.
fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let wide = widened(xs)?;
    let max = wide.max_keepdim(D::Minus1)?.detach();
    let exp = wide.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?
        .to_dtype(xs.dtype())
}

/// `[-x₂, x₁]` of the two halves of the last dimension.
fn rotate_half(xs: &Tensor) -> Result<Tensor> {
    let half = xs.dim(D::Minus1)? / 2;
    let first = xs.narrow(D::Minus1, 0, half)?;
    let second = xs.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&second.neg()?, &first], D::Minus1)
}

fn apply_rotary(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    xs.broadcast_mul(cos)? + rotate_half(xs)?.broadcast_mul(sin)?
}

fn linear(vb: VarBuilder, inputs: usize, outputs: usize, bias: bool) -> Result<Linear> {
    if bias {
        candle_nn::linear(inputs, outputs, vb)
    } else {
        candle_nn::linear_no_bias(inputs, outputs, vb)
    }
}

struct VisionBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl VisionBlock {
    fn new(vb: VarBuilder, cfg: &VisionConfig) -> Result<Self> {
        let dim = cfg.embed_dim;
        let hidden = (dim as f64 * cfg.mlp_ratio) as usize;
        Ok(Self {
            norm1: LayerNorm::new(dim, vb.pp("norm1"))?,
            norm2: LayerNorm::new(dim, vb.pp("norm2"))?,
            qkv: linear(vb.pp("attn.qkv"), dim, 3 * dim, true)?,
            proj: linear(vb.pp("attn.proj"), dim, dim, true)?,
            fc1: linear(vb.pp("mlp.fc1"), dim, hidden, true)?,
            fc2: linear(vb.pp("mlp.fc2"), hidden, dim, true)?,
            heads: cfg.num_heads,
        })
    }

    /// `xs`: `(patches, dim)` of all images; attention stays within each image (`lengths`).
    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        lengths: &[usize],
    ) -> Result<Tensor> {
        let (n, dim) = xs.dims2()?;
        let head_dim = dim / self.heads;
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(xs)?)?
            .reshape((n, 3, self.heads, head_dim))?;
        let rotate = |t: Tensor| apply_rotary(&t, cos, sin);
        let q = rotate(qkv.i((.., 0))?)?.transpose(0, 1)?.contiguous()?;
        let k = rotate(qkv.i((.., 1))?)?.transpose(0, 1)?.contiguous()?;
        let v = qkv.i((.., 2))?.transpose(0, 1)?.contiguous()?;
        let scale = (head_dim as f64).powf(-0.5);
        let mut outputs = Vec::with_capacity(lengths.len());
        let mut start = 0;
        for &length in lengths {
            let part = |t: &Tensor| t.narrow(1, start, length);
            let weights = (part(&q)?.matmul(&part(&k)?.t()?)? * scale)?;
            outputs.push(softmax_last_dim(&weights)?.matmul(&part(&v)?)?);
            start += length;
        }
        let attended = Tensor::cat(&outputs, 1)?
            .transpose(0, 1)?
            .reshape((n, dim))?;
        let xs = (xs + self.proj.forward(&attended)?)?;
        let hidden = self.fc1.forward(&self.norm2.forward(&xs)?)?;
        let quick_gelu = (&hidden * candle_nn::ops::sigmoid(&(&hidden * 1.702)?)?)?;
        xs + self.fc2.forward(&quick_gelu)?
    }
}

/// The vision tower: patches → merged tokens of the language model's width.
struct VisionTower {
    patch_embed: Tensor,
    blocks: Vec<VisionBlock>,
    merger_norm: LayerNorm,
    merger_fc1: Linear,
    merger_fc2: Linear,
    inv_freq: Vec<f32>,
    merge: usize,
}

impl VisionTower {
    fn new(vb: VarBuilder, cfg: &VisionConfig) -> Result<Self> {
        let patch_values = cfg.in_chans * cfg.temporal_patch_size * cfg.patch_size.pow(2);
        let patch_embed = vb
            .get(
                (
                    cfg.embed_dim,
                    cfg.in_chans,
                    cfg.temporal_patch_size,
                    cfg.patch_size,
                    cfg.patch_size,
                ),
                "patch_embed.proj.weight",
            )?
            .reshape((cfg.embed_dim, patch_values))?
            .t()?
            .contiguous()?;
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(vb.pp(format!("blocks.{i}")), cfg))
            .collect::<Result<_>>()?;
        let merged = cfg.embed_dim * cfg.spatial_merge_size.pow(2);
        // Each axis rotates a quarter of the head dimension's frequencies (theta 10,000).
        let spatial = cfg.embed_dim / cfg.num_heads / 2;
        let inv_freq = (0..spatial)
            .step_by(2)
            .map(|i| 1.0 / 10_000f32.powf(i as f32 / spatial as f32))
            .collect();
        Ok(Self {
            patch_embed,
            blocks,
            merger_norm: LayerNorm::new(cfg.embed_dim, vb.pp("merger.ln_q"))?,
            merger_fc1: linear(vb.pp("merger.mlp.0"), merged, merged, true)?,
            merger_fc2: linear(vb.pp("merger.mlp.2"), merged, cfg.hidden_size, true)?,
            inv_freq,
            merge: cfg.spatial_merge_size,
        })
    }

    /// The (row, column) of every patch, in the processor's merge-block order.
    fn patch_positions(&self, grid: [usize; 3]) -> Vec<(usize, usize)> {
        let [frames, rows, columns] = grid;
        let m = self.merge;
        let mut positions = Vec::with_capacity(frames * rows * columns);
        for _ in 0..frames {
            for block_row in 0..rows / m {
                for block_column in 0..columns / m {
                    for r in 0..m {
                        for c in 0..m {
                            positions.push((block_row * m + r, block_column * m + c));
                        }
                    }
                }
            }
        }
        positions
    }

    /// Merged tokens of every image, one after the other: `(Σ tokens, hidden)`.
    fn forward(&self, images: &[ImagePatches]) -> Result<Tensor> {
        let device = self.patch_embed.device();
        let patches = Tensor::cat(&images.iter().map(|i| &i.patches).collect::<Vec<_>>(), 0)?;
        let mut xs = patches.matmul(&self.patch_embed)?;
        let quarter = self.inv_freq.len();
        let mut angles = Vec::new();
        let mut lengths = Vec::with_capacity(images.len());
        for image in images {
            let positions = self.patch_positions(image.grid);
            lengths.push(positions.len());
            for (row, column) in positions {
                let row_angles = self.inv_freq.iter().map(|f| row as f32 * f);
                let column_angles = self.inv_freq.iter().map(|f| column as f32 * f);
                let half: Vec<f32> = row_angles.chain(column_angles).collect();
                angles.extend_from_slice(&half);
                angles.extend_from_slice(&half);
            }
        }
        let angles =
            Tensor::from_vec(angles, (xs.dim(0)?, 1, 4 * quarter), device)?.to_dtype(xs.dtype())?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        for block in &self.blocks {
            xs = block.forward(&xs, &cos, &sin, &lengths)?;
        }
        let merged_width = xs.dim(1)? * self.merge * self.merge;
        let xs = self.merger_norm.forward(&xs)?.reshape(((), merged_width))?;
        self.merger_fc2
            .forward(&self.merger_fc1.forward(&xs)?.gelu_erf()?)
    }
}

/// A linear layer of the language model's attention that an adapter may wrap: the base
/// projection plus, when one is attached, `scale · B·A·x`.
pub struct AdaptableLinear {
    base: Linear,
    adapter: Option<LowRank>,
}

/// A low-rank update `scale · B·A`, its matrices as the adapter stores them (`A`: rank × in,
/// `B`: out × rank).
#[derive(Clone, Debug)]
pub struct LowRank {
    /// `lora_A.weight`.
    pub a: Tensor,
    /// `lora_B.weight`.
    pub b: Tensor,
    /// `alpha / rank`.
    pub scale: f64,
    /// While training: the probability that an input of the update is dropped (PEFT's
    /// `lora_dropout`); `None` at inference.
    pub dropout: Option<f32>,
}

impl AdaptableLinear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let base = self.base.forward(xs)?;
        match &self.adapter {
            None => Ok(base),
            Some(low_rank) => {
                let xs = match low_rank.dropout {
                    Some(p) if p > 0.0 => candle_nn::ops::dropout(xs, p)?,
                    _ => xs.clone(),
                };
                let down = xs.broadcast_matmul(&low_rank.a.t()?)?;
                let up = down.broadcast_matmul(&low_rank.b.t()?)?;
                base + (up * low_rank.scale)?
            }
        }
    }
}

struct DecoderLayer {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    q_proj: AdaptableLinear,
    k_proj: AdaptableLinear,
    v_proj: AdaptableLinear,
    o_proj: AdaptableLinear,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// The attention projections an adapter may attach to, by their checkpoint names.
pub const ADAPTABLE_PROJECTIONS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

impl DecoderLayer {
    fn new(vb: VarBuilder, cfg: &TextConfig) -> Result<Self> {
        let (hidden, head_dim) = (cfg.hidden_size, cfg.head_dim());
        let kv = cfg.num_key_value_heads * head_dim;
        let attention = vb.pp("self_attn");
        let adaptable = |name: &str, inputs, outputs, bias| -> Result<AdaptableLinear> {
            Ok(AdaptableLinear {
                base: linear(attention.pp(name), inputs, outputs, bias)?,
                adapter: None,
            })
        };
        Ok(Self {
            input_norm: vb.get(hidden, "input_layernorm.weight")?,
            post_attention_norm: vb.get(hidden, "post_attention_layernorm.weight")?,
            q_proj: adaptable("q_proj", hidden, hidden, true)?,
            k_proj: adaptable("k_proj", hidden, kv, true)?,
            v_proj: adaptable("v_proj", hidden, kv, true)?,
            o_proj: adaptable("o_proj", hidden, hidden, false)?,
            gate_proj: linear(vb.pp("mlp.gate_proj"), hidden, cfg.intermediate_size, false)?,
            up_proj: linear(vb.pp("mlp.up_proj"), hidden, cfg.intermediate_size, false)?,
            down_proj: linear(vb.pp("mlp.down_proj"), cfg.intermediate_size, hidden, false)?,
        })
    }

    fn projection_mut(&mut self, name: &str) -> Option<&mut AdaptableLinear> {
        match name {
            "q_proj" => Some(&mut self.q_proj),
            "k_proj" => Some(&mut self.k_proj),
            "v_proj" => Some(&mut self.v_proj),
            "o_proj" => Some(&mut self.o_proj),
            _ => None,
        }
    }

    fn forward(&self, xs: &Tensor, rope: &Rope, mask: &Tensor, cfg: &TextConfig) -> Result<Tensor> {
        let (batch, length, hidden) = xs.dims3()?;
        let head_dim = cfg.head_dim();
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let normed = rms_norm(xs, &self.input_norm, cfg.rms_norm_eps)?;
        let split = |t: Tensor, h: usize| -> Result<Tensor> {
            t.reshape((batch, length, h, head_dim))?.transpose(1, 2)
        };
        let q = split(self.q_proj.forward(&normed)?, heads)?;
        let k = split(self.k_proj.forward(&normed)?, kv_heads)?;
        let v = split(self.v_proj.forward(&normed)?, kv_heads)?;
        let q = apply_rotary(&q, &rope.cos, &rope.sin)?;
        let k = apply_rotary(&k, &rope.cos, &rope.sin)?;
        // Grouped-query attention: each key/value head serves `groups` query heads.
        let groups = heads / kv_heads;
        let q = q.reshape((batch, kv_heads, groups * length, head_dim))?;
        let scale = (head_dim as f64).powf(-0.5);
        let weights = (q.matmul(&k.t()?)? * scale)?
            .reshape((batch, kv_heads, groups, length, length))?
            .broadcast_add(mask)?;
        let weights =
            softmax_last_dim(&weights)?.reshape((batch, kv_heads, groups * length, length))?;
        let attended = weights
            .matmul(&v.contiguous()?)?
            .reshape((batch, heads, length, head_dim))?
            .transpose(1, 2)?
            .reshape((batch, length, hidden))?;
        let xs = (xs + self.o_proj.forward(&attended)?)?;
        let normed = rms_norm(&xs, &self.post_attention_norm, cfg.rms_norm_eps)?;
        let gated = (self.gate_proj.forward(&normed)?.silu()? * self.up_proj.forward(&normed)?)?;
        xs + self.down_proj.forward(&gated)?
    }
}

/// Cosines and sines of the multimodal rotary embedding: `(batch, 1, length, head_dim)`.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// Qwen2-VL: the vision tower, the language model and its output projection.
pub struct Qwen2Vl {
    visual: VisionTower,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Tensor,
    cfg: Config,
}

impl Qwen2Vl {
    /// Builds the model from a checkpoint's tensors (either naming, see the module's doc).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let nested = vb.contains_tensor("model.language_model.embed_tokens.weight");
        let (text_vb, visual_vb) = if nested {
            (vb.pp("model.language_model"), vb.pp("model.visual"))
        } else {
            (vb.pp("model"), vb.pp("visual"))
        };
        let text = &cfg.text;
        let embed_tokens = candle_nn::embedding(
            text.vocab_size,
            text.hidden_size,
            text_vb.pp("embed_tokens"),
        )?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.embeddings().clone()
        } else {
            vb.get((text.vocab_size, text.hidden_size), "lm_head.weight")?
        };
        Ok(Self {
            visual: VisionTower::new(visual_vb, &cfg.vision)?,
            layers: (0..text.num_hidden_layers)
                .map(|i| DecoderLayer::new(text_vb.pp(format!("layers.{i}")), text))
                .collect::<Result<_>>()?,
            norm: text_vb.get(text.hidden_size, "norm.weight")?,
            embed_tokens,
            lm_head,
            cfg: cfg.clone(),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Where its weights are.
    pub fn device(&self) -> &Device {
        self.lm_head.device()
    }

    /// What its weights are stored in.
    pub fn dtype(&self) -> DType {
        self.lm_head.dtype()
    }

    /// Attaches (or, with `None`, removes) a low-rank adapter on one attention projection of one
    /// layer; `false` when there is no such layer or projection.
    pub fn set_adapter(
        &mut self,
        layer: usize,
        projection: &str,
        adapter: Option<LowRank>,
    ) -> bool {
        match self
            .layers
            .get_mut(layer)
            .and_then(|l| l.projection_mut(projection))
        {
            Some(target) => {
                target.adapter = adapter;
                true
            }
            None => false,
        }
    }

    /// Runs the vision tower: the merged tokens of each image, in order.
    pub fn image_features(&self, images: &[ImagePatches]) -> Result<Vec<ImageTokens>> {
        let merged = self.visual.forward(images)?;
        let merge = self.cfg.vision.spatial_merge_size;
        let mut start = 0;
        let mut features = Vec::with_capacity(images.len());
        for image in images {
            let [frames, rows, columns] = image.grid;
            if frames != 1 {
                candle_core::bail!("only still images (one frame) are supported");
            }
            let (rows, columns) = (rows / merge, columns / merge);
            features.push(ImageTokens {
                tokens: merged.narrow(0, start, rows * columns)?,
                rows,
                columns,
            });
            start += rows * columns;
        }
        Ok(features)
    }

    /// The logits at the last position of each sequence, `(batch, vocab)`. Every row of
    /// `input_ids` holds one image as one run of image tokens, and `features[row]` has one row
    /// per such token (from [`Self::image_features`]). The prompt pass is causal, as in
    /// generation; rows must have equal lengths (no padding).
    pub fn last_logits(&self, input_ids: &[Vec<u32>], features: &[ImageTokens]) -> Result<Tensor> {
        let device = self.lm_head.device().clone();
        let length = input_ids.first().map_or(0, Vec::len);
        if input_ids.iter().any(|ids| ids.len() != length) || features.len() != input_ids.len() {
            candle_core::bail!("every sequence needs the same length and one image");
        }
        let mut rows = Vec::with_capacity(input_ids.len());
        let mut positions = Vec::with_capacity(input_ids.len());
        for (ids, image) in input_ids.iter().zip(features) {
            let (embeds, row_positions) = self.embed_row(ids, image, &device)?;
            rows.push(embeds);
            positions.push(row_positions);
        }
        let mut xs = Tensor::stack(&rows, 0)?;
        let rope = self.rope(&positions, &device)?;
        let rope = Rope {
            cos: rope.cos.to_dtype(xs.dtype())?,
            sin: rope.sin.to_dtype(xs.dtype())?,
        };
        let mask = causal_mask(length, &device)?.to_dtype(xs.dtype())?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &rope, &mask, &self.cfg.text)?;
        }
        let last = xs.narrow(1, length - 1, 1)?.squeeze(1)?;
        rms_norm(&last, &self.norm, self.cfg.text.rms_norm_eps)?.matmul(&self.lm_head.t()?)
    }

    /// One row's input embeddings with the image's tokens in place of its image-token run, and
    /// its (temporal, height, width) positions as transformers' `get_rope_index` assigns them.
    fn embed_row(
        &self,
        ids: &[u32],
        image: &ImageTokens,
        device: &Device,
    ) -> Result<(Tensor, Vec<[u32; 3]>)> {
        let image_token = self.cfg.image_token_id;
        let start = ids.iter().position(|&id| id == image_token);
        let count = ids.iter().filter(|&&id| id == image_token).count();
        let Some(start) = start else {
            candle_core::bail!("the prompt has no image tokens")
        };
        if ids[start..start + count]
            .iter()
            .any(|&id| id != image_token)
            || count != image.rows * image.columns
        {
            candle_core::bail!(
                "the prompt's {count} image tokens do not match the image's {} merged patches",
                image.rows * image.columns
            );
        }
        let ids_tensor = Tensor::new(ids, device)?;
        let text = self.embed_tokens.forward(&ids_tensor)?;
        let before = text.narrow(0, 0, start)?;
        let after = text.narrow(0, start + count, ids.len() - start - count)?;
        let embeds = Tensor::cat(&[&before, &image.tokens.to_dtype(text.dtype())?, &after], 0)?;

        // Every image token has the same temporal position, its row and its column in the grid
        // of merged tokens, offset by the text before it; text after the image continues from
        // the largest of them plus one.
        let (rows, columns) = (image.rows, image.columns);
        let mut positions = Vec::with_capacity(ids.len());
        positions.extend((0..start as u32).map(|p| [p, p, p]));
        let offset = start as u32;
        for r in 0..rows {
            for c in 0..columns {
                positions.push([offset, offset + r as u32, offset + c as u32]);
            }
        }
        let next = offset + rows.max(columns) as u32;
        positions.extend((0..(ids.len() - start - count) as u32).map(|p| [next + p; 3]));
        Ok((embeds, positions))
    }

    fn rope(&self, positions: &[Vec<[u32; 3]>], device: &Device) -> Result<Rope> {
        let text = &self.cfg.text;
        let head_dim = text.head_dim();
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (text.rope_theta as f32).powf(2.0 * i as f32 / head_dim as f32))
            .collect();
        // Frequency i rotates by the temporal, height or width position as its section says.
        let mut component = Vec::with_capacity(half);
        for (section, &width) in text.mrope_section.iter().enumerate() {
            component.extend(std::iter::repeat_n(section % 3, width));
        }
        let (batch, length) = (positions.len(), positions[0].len());
        let mut angles = Vec::with_capacity(batch * length * head_dim);
        for row in positions {
            for position in row {
                let start = angles.len();
                angles.extend(
                    inv_freq
                        .iter()
                        .zip(&component)
                        .map(|(f, &c)| position[c] as f32 * f),
                );
                angles.extend_from_within(start..start + half);
            }
        }
        let angles = Tensor::from_vec(angles, (batch, 1, length, head_dim), device)?;
        Ok(Rope {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }
}

/// `0` on and below the diagonal, `-inf` above: `(1, 1, 1, length, length)` to broadcast over
/// batch, key/value heads and query groups.
fn causal_mask(length: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..length)
        .flat_map(|i| (0..length).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (1, 1, 1, length, length), device)
}
