//! OpenAI CLIP (ViT image tower + causal text transformer), equal to transformers' `CLIPModel`.
//!
//! Tensor names mirror the Hugging Face checkpoint (`text_model.encoder.layers.0.self_attn.q_proj`
//! …). The model does no I/O: the caller builds a [`VarBuilder`] over the weights.
//!
//! Two things differ from a line-by-line port, both exact up to float rounding:
//! - q, k and v are projected by one fused matrix, with the attention scale folded into q;
//! - hidden states stay a flat `(batch · tokens, width)` matrix so that every linear layer is a
//!   single GEMM, whatever the batch size.

use candle_core::{DType, IndexOp, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;

use super::kernels;
pub use super::packed::Kernel as PackedKernel;
use super::packed::PackedLinear;

/// The activation in the MLP blocks (`hidden_act` in config.json).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// `x · sigmoid(1.702 x)`, OpenAI's original checkpoints.
    QuickGelu,
    /// The exact, erf-based GELU.
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluNew,
}

impl HiddenAct {
    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::QuickGelu => kernels::quick_gelu(xs),
            Self::Gelu => xs.gelu_erf(),
            Self::GeluNew => xs.gelu(),
        }
    }
}

/// `text_config` of a CLIP config.json; defaults are transformers' defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Rows of the token-embedding table.
    pub vocab_size: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP blocks.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// The longest token sequence (77 for CLIP).
    pub max_position_embeddings: usize,
    /// The MLP activation.
    pub hidden_act: HiddenAct,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// The end-of-text token whose hidden state is pooled; the legacy value 2 means "the largest
    /// token id", which is what transformers does for OpenAI's checkpoints.
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

/// `vision_config` of a CLIP config.json; defaults are transformers' defaults (ViT-B/32).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP blocks.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Colour channels of the input.
    pub num_channels: usize,
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Side of a square patch; pixels past the last whole patch are ignored, as in the conv.
    pub patch_size: usize,
    /// The MLP activation.
    pub hidden_act: HiddenAct,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// A CLIP config.json.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClipConfig {
    /// The text tower.
    #[serde(default)]
    pub text_config: ClipTextConfig,
    /// The image tower.
    #[serde(default)]
    pub vision_config: ClipVisionConfig,
    /// Dimension of the shared embedding space.
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    /// How the text tower's linear layers keep their weights (a choice of the caller, not of
    /// config.json).
    #[serde(skip)]
    pub text_weights: LinearWeights,
    /// How the image tower's linear layers keep theirs.
    #[serde(skip)]
    pub image_weights: LinearWeights,
}

fn default_projection_dim() -> usize {
    512
}

/// How the linear layers keep their weights on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinearWeights {
    /// As loaded (f32 on the CPU, whatever the device holds elsewhere): equal to transformers.
    #[default]
    AsLoaded,
    /// Panels (bf16 or int8, as the kernel takes them) multiplied by the given kernel, which the
    /// CPU must run (one that [`PackedKernel::fastest`] returned).
    Packed(PackedKernel),
}

/// A linear layer over a flat `(rows, in)` matrix: one GEMM whatever the batch, bias included.
#[derive(Clone, Debug)]
enum Dense {
    /// The weight transposed, `(in, out)` and contiguous, which the GEMM streams without a
    /// strided gather.
    AsLoaded {
        weight_t: Tensor,
        bias: Tensor,
    },
    Packed(PackedLinear),
}

impl Dense {
    fn load(
        vb: &VarBuilder,
        (in_dim, out_dim): (usize, usize),
        bias: bool,
        weights: LinearWeights,
    ) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            vb.get(out_dim, "bias")?
        } else {
            Tensor::zeros(out_dim, weight.dtype(), weight.device())?
        };
        Self::new(&weight, bias, weights)
    }

    /// `weight`: `(out, in)` as stored in checkpoints.
    fn new(weight: &Tensor, bias: Tensor, weights: LinearWeights) -> Result<Self> {
        Ok(match weights {
            LinearWeights::AsLoaded => Self::AsLoaded {
                weight_t: weight.t()?.contiguous()?,
                bias,
            },
            LinearWeights::Packed(kernel) => {
                Self::Packed(PackedLinear::new(weight, &bias, kernel)?)
            }
        })
    }
}

impl Module for Dense {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::AsLoaded { weight_t, bias } => kernels::affine(xs, weight_t, bias),
            Self::Packed(packed) => packed.forward(xs),
        }
    }
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        vb.get(size, "weight")?,
        vb.get(size, "bias")?,
        eps,
    ))
}

#[derive(Clone, Debug)]
struct Attention {
    qkv: Dense,
    out_proj: Dense,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, width: usize, heads: usize, weights: LinearWeights) -> Result<Self> {
        if heads == 0 || !width.is_multiple_of(heads) {
            candle_core::bail!("hidden size {width} is not divisible by {heads} attention heads");
        }
        let scale = ((width / heads) as f64).powf(-0.5);
        let part = |name: &str, scale: f64| -> Result<(Tensor, Tensor)> {
            let vb = vb.pp(name);
            let weight = (vb.get((width, width), "weight")? * scale)?;
            Ok((weight, (vb.get(width, "bias")? * scale)?))
        };
        let (q, k, v) = (
            part("q_proj", scale)?,
            part("k_proj", 1.0)?,
            part("v_proj", 1.0)?,
        );
        let qkv = Dense::new(
            &Tensor::cat(&[q.0, k.0, v.0], 0)?,
            Tensor::cat(&[q.1, k.1, v.1], 0)?,
            weights,
        )?;
        Ok(Self {
            qkv,
            out_proj: Dense::load(&vb.pp("out_proj"), (width, width), true, weights)?,
            heads,
        })
    }

    /// `xs`: `(batch · tokens, width)`; causal attention lets a token see only those before it.
    fn forward(&self, xs: &Tensor, batch: usize, causal: bool) -> Result<Tensor> {
        let qkv = self.qkv.forward(xs)?;
        let context = kernels::attention(&qkv, batch, self.heads, causal)?;
        self.out_proj.forward(&context)
    }
}

#[derive(Clone, Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    act: HiddenAct,
}

struct LayerShape {
    width: usize,
    intermediate: usize,
    heads: usize,
    eps: f64,
    act: HiddenAct,
    weights: LinearWeights,
}

impl LayerShape {
    fn new(
        (width, intermediate, heads): (usize, usize, usize),
        eps: f64,
        act: HiddenAct,
        weights: LinearWeights,
    ) -> Self {
        Self {
            width,
            intermediate,
            heads,
            eps,
            act,
            weights,
        }
    }
}

impl EncoderLayer {
    fn new(vb: VarBuilder, shape: &LayerShape) -> Result<Self> {
        let mlp = vb.pp("mlp");
        Ok(Self {
            layer_norm1: layer_norm(vb.pp("layer_norm1"), shape.width, shape.eps)?,
            self_attn: Attention::new(vb.pp("self_attn"), shape.width, shape.heads, shape.weights)?,
            layer_norm2: layer_norm(vb.pp("layer_norm2"), shape.width, shape.eps)?,
            fc1: Dense::load(
                &mlp.pp("fc1"),
                (shape.width, shape.intermediate),
                true,
                shape.weights,
            )?,
            fc2: Dense::load(
                &mlp.pp("fc2"),
                (shape.intermediate, shape.width),
                true,
                shape.weights,
            )?,
            act: shape.act,
        })
    }

    fn forward(&self, xs: &Tensor, batch: usize, causal: bool) -> Result<Tensor> {
        let attended = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, batch, causal)?;
        let xs = (xs + attended)?;
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let hidden = self.fc2.forward(&self.act.apply(&hidden)?)?;
        xs + hidden
    }
}

#[derive(Clone, Debug)]
struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    fn new(vb: VarBuilder, count: usize, shape: &LayerShape) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..count)
            .map(|i| EncoderLayer::new(vb.pp(i), shape))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    fn forward(&self, xs: &Tensor, batch: usize, causal: bool) -> Result<Tensor> {
        self.layers
            .iter()
            .try_fold(xs.clone(), |xs, layer| layer.forward(&xs, batch, causal))
    }
}

/// The text tower with its projection: token ids → (unnormalised) text features.
#[derive(Clone, Debug)]
pub struct ClipTextModel {
    /// f32 as loaded, or bf16 beside packed weights.
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    text_projection: Dense,
    max_tokens: usize,
    eos_token_id: u32,
}

impl ClipTextModel {
    /// Loads `text_model.*` and `text_projection` from `vb` (the checkpoint root).
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        let c = &cfg.text_config;
        let text = vb.pp("text_model");
        let embeddings = text.pp("embeddings");
        let shape = LayerShape::new(
            (c.hidden_size, c.intermediate_size, c.num_attention_heads),
            c.layer_norm_eps,
            c.hidden_act,
            cfg.text_weights,
        );
        let n = c.max_position_embeddings;
        let token_embedding = embeddings
            .pp("token_embedding")
            .get((c.vocab_size, c.hidden_size), "weight")?;
        // With packed weights the lookup table is kept in bf16: half of its 100 MB for ViT-B/32,
        // for the few rows a query looks up, widened back to f32.
        let token_embedding = match cfg.text_weights {
            LinearWeights::Packed(_) => token_embedding.to_dtype(DType::BF16)?,
            LinearWeights::AsLoaded => token_embedding,
        };
        Ok(Self {
            token_embedding,
            position_embedding: embeddings
                .pp("position_embedding")
                .get((n, c.hidden_size), "weight")?,
            encoder: Encoder::new(text.pp("encoder"), c.num_hidden_layers, &shape)?,
            final_layer_norm: layer_norm(
                text.pp("final_layer_norm"),
                c.hidden_size,
                c.layer_norm_eps,
            )?,
            text_projection: Dense::load(
                &vb.pp("text_projection"),
                (c.hidden_size, cfg.projection_dim),
                false,
                cfg.text_weights,
            )?,
            max_tokens: n,
            eos_token_id: c.eos_token_id,
        })
    }

    /// The longest sequence the model accepts.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// `input_ids`: `(batch, tokens)` u32, each row a full sequence from start to end-of-text,
    /// possibly followed by padding. Returns `(batch, projection_dim)` features, pooled where
    /// transformers pools: at the first end-of-text token, or at the largest id for legacy
    /// configs (`eos_token_id == 2`). Padding after the pooled token does not change the result:
    /// attention is causal.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (batch, tokens) = input_ids.dims2()?;
        if tokens > self.max_tokens() {
            candle_core::bail!("{tokens} tokens exceed the model's {}", self.max_tokens());
        }
        let flat_ids = input_ids.flatten_all()?;
        let positions = self.position_embedding.narrow(0, 0, tokens)?;
        let xs = self
            .token_embedding
            .index_select(&flat_ids, 0)?
            .to_dtype(positions.dtype())?
            .reshape((batch, tokens, ()))?
            .broadcast_add(&positions)?
            .flatten_to(1)?;
        let xs = self.encoder.forward(&xs, batch, true)?;
        let pooled_rows = self.pooled_rows(&input_ids.to_vec2::<u32>()?, tokens);
        let pooled = xs.index_select(&Tensor::new(pooled_rows, xs.device())?, 0)?;
        self.text_projection
            .forward(&self.final_layer_norm.forward(&pooled)?)
    }

    fn pooled_rows(&self, ids: &[Vec<u32>], tokens: usize) -> Vec<u32> {
        ids.iter()
            .enumerate()
            .map(|(row, sequence)| {
                let column = if self.eos_token_id == 2 {
                    first_position_of_max(sequence)
                } else {
                    sequence
                        .iter()
                        .position(|&id| id == self.eos_token_id)
                        .unwrap_or(0)
                };
                (row * tokens + column) as u32
            })
            .collect()
    }
}

fn first_position_of_max(values: &[u32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(
            (0, 0),
            |(best, max), (i, &v)| if v > max { (i, v) } else { (best, max) },
        )
        .0
}

/// The image tower with its projection: normalised pixels → (unnormalised) image features.
#[derive(Clone, Debug)]
pub struct ClipVisionModel {
    class_embedding: Tensor,
    patch_embedding: Dense,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    visual_projection: Dense,
    image_size: usize,
    patch_size: usize,
    channels: usize,
}

impl ClipVisionModel {
    /// Loads `vision_model.*` and `visual_projection` from `vb` (the checkpoint root).
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        let c = &cfg.vision_config;
        let vision = vb.pp("vision_model");
        let embeddings = vision.pp("embeddings");
        let grid = c.image_size / c.patch_size;
        let shape = LayerShape::new(
            (c.hidden_size, c.intermediate_size, c.num_attention_heads),
            c.layer_norm_eps,
            c.hidden_act,
            cfg.image_weights,
        );
        let patch = (c.hidden_size, c.num_channels, c.patch_size, c.patch_size);
        Ok(Self {
            class_embedding: embeddings.get(c.hidden_size, "class_embedding")?,
            patch_embedding: Dense::new(
                &embeddings
                    .pp("patch_embedding")
                    .get(patch, "weight")?
                    .flatten_from(1)?,
                Tensor::zeros(c.hidden_size, vb.dtype(), vb.device())?,
                cfg.image_weights,
            )?,
            position_embedding: embeddings
                .pp("position_embedding")
                .get((grid * grid + 1, c.hidden_size), "weight")?,
            pre_layrnorm: layer_norm(vision.pp("pre_layrnorm"), c.hidden_size, c.layer_norm_eps)?,
            encoder: Encoder::new(vision.pp("encoder"), c.num_hidden_layers, &shape)?,
            post_layernorm: layer_norm(
                vision.pp("post_layernorm"),
                c.hidden_size,
                c.layer_norm_eps,
            )?,
            visual_projection: Dense::load(
                &vb.pp("visual_projection"),
                (c.hidden_size, cfg.projection_dim),
                false,
                cfg.image_weights,
            )?,
            image_size: c.image_size,
            patch_size: c.patch_size,
            channels: c.num_channels,
        })
    }

    /// `pixel_values`: `(batch, channels, image_size, image_size)` f32, already normalised.
    /// Returns `(batch, projection_dim)` features of the class token.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = pixel_values.dims4()?;
        if (channels, height, width) != (self.channels, self.image_size, self.image_size) {
            candle_core::bail!(
                "expected images of {}×{}×{}, got {channels}×{height}×{width}",
                self.channels,
                self.image_size,
                self.image_size
            );
        }
        // The patch convolution (stride = kernel, no bias) as one GEMM over unfolded patches.
        let (p, grid) = (self.patch_size, self.image_size / self.patch_size);
        let patches = pixel_values
            .narrow(2, 0, grid * p)?
            .narrow(3, 0, grid * p)?
            .reshape((batch, channels, grid, p, grid, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((batch * grid * grid, channels * p * p))?;
        let hidden = self.class_embedding.dim(0)?;
        let patch_embeds =
            self.patch_embedding
                .forward(&patches)?
                .reshape((batch, grid * grid, hidden))?;
        let class = self
            .class_embedding
            .reshape((1, 1, hidden))?
            .broadcast_as((batch, 1, hidden))?;
        let xs = Tensor::cat(&[class, patch_embeds], 1)?
            .broadcast_add(&self.position_embedding)?
            .flatten_to(1)?;
        let xs = self.pre_layrnorm.forward(&xs)?;
        let xs = self.encoder.forward(&xs, batch, false)?;
        let class_rows = xs.reshape((batch, grid * grid + 1, hidden))?.i((.., 0))?;
        self.visual_projection
            .forward(&self.post_layernorm.forward(&class_rows.contiguous()?)?)
    }
}
