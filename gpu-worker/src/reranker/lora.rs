//! LoRA adapters on the attention projections of the reranker's language model, stored in the
//! Hugging Face PEFT layout: `adapter_config.json` and `adapter_model.safetensors` with tensors
//! named `base_model.model.model.language_model.layers.<i>.self_attn.<q|k|v|o>_proj.lora_<A|B>.weight`
//! (what PEFT writes for `Qwen2VLForConditionalGeneration` with transformers 5; the older
//! `base_model.model.model.layers.…` names load too). An adapter trained by Glimpse loads in
//! PEFT and one trained in PEFT loads in Glimpse.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use glimpse_core::learning::AdapterFiles;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::encoder::EncoderError;
use crate::models::qwen2_vl::{ADAPTABLE_PROJECTIONS, LowRank, Qwen2Vl};

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Where PEFT puts the language model's layers, current and older transformers.
const LAYER_PREFIXES: [&str; 2] = [
    "base_model.model.model.language_model.layers.",
    "base_model.model.model.layers.",
];

/// The parts of PEFT's `adapter_config.json` that shape a LoRA adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank of each update.
    pub r: usize,
    /// The update is scaled by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Probability of dropping an input of the update while training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// The projections adapted, by module name.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: ADAPTABLE_PROJECTIONS.map(str::to_owned).to_vec(),
        }
    }
}

impl LoraConfig {
    fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }
}

/// One adapted projection: its layer and module name.
type Site = (usize, String);

/// A LoRA adapter: trainable `A` and `B` for each adapted projection.
pub struct LoraAdapter {
    config: LoraConfig,
    weights: BTreeMap<Site, (Var, Var)>,
}

/// The full PEFT `adapter_config.json` Glimpse writes: PEFT's defaults with this adapter's shape.
#[derive(Serialize)]
struct PeftConfigFile<'a> {
    peft_type: &'static str,
    task_type: &'static str,
    base_model_name_or_path: &'a str,
    r: usize,
    lora_alpha: f64,
    lora_dropout: f64,
    target_modules: &'a [String],
    bias: &'static str,
    fan_in_fan_out: bool,
    inference_mode: bool,
    init_lora_weights: bool,
    use_rslora: bool,
    use_dora: bool,
    modules_to_save: Option<()>,
}

impl LoraAdapter {
    /// A fresh adapter for `model`, initialised as PEFT does: `A` uniform in ±1/√in (Kaiming with
    /// a = √5), `B` zero, so that it starts as the base model.
    pub fn new(model: &Qwen2Vl, config: LoraConfig, seed: u64) -> Result<Self, EncoderError> {
        validate(&config)?;
        let text = &model.config().text;
        let device = model.device();
        let mut rng = StdRng::seed_from_u64(seed);
        let head_dim = text.hidden_size / text.num_attention_heads;
        let mut weights = BTreeMap::new();
        for layer in 0..text.num_hidden_layers {
            for module in &config.target_modules {
                let (inputs, outputs) = match module.as_str() {
                    "k_proj" | "v_proj" => (text.hidden_size, text.num_key_value_heads * head_dim),
                    _ => (text.hidden_size, text.hidden_size),
                };
                let bound = 1.0 / (inputs as f64).sqrt();
                let values: Vec<f64> = (0..config.r * inputs)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Tensor::from_vec(values, (config.r, inputs), device)?
                    .to_dtype(model.dtype())?;
                let b = Tensor::zeros((outputs, config.r), model.dtype(), device)?;
                weights.insert(
                    (layer, module.clone()),
                    (Var::from_tensor(&a)?, Var::from_tensor(&b)?),
                );
            }
        }
        Ok(Self { config, weights })
    }

    /// Reads an adapter directory in the PEFT layout.
    pub fn load(directory: &Path, device: &Device, dtype: DType) -> Result<Self, EncoderError> {
        let mut files = BTreeMap::new();
        for name in [CONFIG_FILE, WEIGHTS_FILE] {
            let bytes = std::fs::read(directory.join(name)).map_err(|e| {
                EncoderError::BadModel(format!("adapter {}: {e}", directory.display()))
            })?;
            files.insert(name.to_owned(), bytes);
        }
        Self::from_files(&AdapterFiles(files), device, dtype).map_err(|e| match e {
            EncoderError::BadModel(message) => {
                EncoderError::BadModel(format!("adapter {}: {message}", directory.display()))
            }
            other => other,
        })
    }

    /// Reads an adapter from its files in the PEFT layout.
    pub fn from_files(
        files: &AdapterFiles,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EncoderError> {
        let bad = |e: &dyn std::fmt::Display| EncoderError::BadModel(e.to_string());
        let file = |name: &str| {
            files
                .0
                .get(name)
                .ok_or_else(|| EncoderError::BadModel(format!("{name} is missing")))
        };
        let config: LoraConfig = serde_json::from_slice(file(CONFIG_FILE)?)
            .map_err(|e| bad(&format!("{CONFIG_FILE}: {e}")))?;
        validate(&config)?;
        let tensors = candle_core::safetensors::load_buffer(file(WEIGHTS_FILE)?, device)
            .map_err(|e| bad(&format!("{WEIGHTS_FILE}: {e}")))?;
        let mut pairs: HashMap<Site, [Option<Tensor>; 2]> = HashMap::new();
        for (name, tensor) in tensors {
            let Some((site, matrix)) = parse_name(&name) else {
                return Err(bad(&format!(
                    "{name} is not a LoRA matrix of a language-model attention projection"
                )));
            };
            pairs.entry(site).or_default()[matrix] = Some(tensor.to_dtype(dtype)?);
        }
        let mut weights = BTreeMap::new();
        for (site, pair) in pairs {
            let [Some(a), Some(b)] = pair else {
                return Err(bad(&format!(
                    "layer {} {} lacks lora_A or lora_B",
                    site.0, site.1
                )));
            };
            weights.insert(site, (Var::from_tensor(&a)?, Var::from_tensor(&b)?));
        }
        Ok(Self { config, weights })
    }

    /// The adapter's files in the PEFT layout, naming `base_model` as the model it adapts.
    pub fn to_files(&self, base_model: &str) -> Result<AdapterFiles, EncoderError> {
        let failed = |e: &dyn std::fmt::Display| {
            EncoderError::Internal(format!("serialising the adapter: {e}"))
        };
        let config = PeftConfigFile {
            peft_type: "LORA",
            task_type: "CAUSAL_LM",
            base_model_name_or_path: base_model,
            r: self.config.r,
            lora_alpha: self.config.lora_alpha,
            lora_dropout: self.config.lora_dropout,
            target_modules: &self.config.target_modules,
            bias: "none",
            fan_in_fan_out: false,
            inference_mode: true,
            init_lora_weights: true,
            use_rslora: false,
            use_dora: false,
            modules_to_save: None,
        };
        let json = serde_json::to_string_pretty(&config).map_err(|e| failed(&e))? + "\n";
        let mut tensors = Vec::new();
        for ((layer, module), (a, b)) in &self.weights {
            let stem = format!("{}{layer}.self_attn.{module}", LAYER_PREFIXES[0]);
            tensors.push((
                format!("{stem}.lora_A.weight"),
                a.as_tensor().to_dtype(DType::F32)?,
            ));
            tensors.push((
                format!("{stem}.lora_B.weight"),
                b.as_tensor().to_dtype(DType::F32)?,
            ));
        }
        let weights = safetensors::serialize(tensors, None).map_err(|e| failed(&e))?;
        Ok(AdapterFiles(BTreeMap::from([
            (CONFIG_FILE.to_owned(), json.into_bytes()),
            (WEIGHTS_FILE.to_owned(), weights),
        ])))
    }

    /// Writes the adapter in the PEFT layout (creating `directory`).
    pub fn save(&self, directory: &Path, base_model: &str) -> Result<(), EncoderError> {
        let failed = |e: &dyn std::fmt::Display| {
            EncoderError::Internal(format!("writing the adapter {}: {e}", directory.display()))
        };
        let files = self.to_files(base_model)?;
        std::fs::create_dir_all(directory).map_err(|e| failed(&e))?;
        // Each file is written beside its place and renamed into it, weights first: a process
        // following the directory never reads half a file.
        for name in [WEIGHTS_FILE, CONFIG_FILE] {
            let partial = directory.join(format!("{name}.partial"));
            std::fs::write(&partial, &files.0[name]).map_err(|e| failed(&e))?;
            std::fs::rename(&partial, directory.join(name)).map_err(|e| failed(&e))?;
        }
        Ok(())
    }

    /// Its shape.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Every trainable matrix, `A` then `B` of each projection in layer order.
    pub fn vars(&self) -> Vec<Var> {
        self.weights
            .values()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect()
    }

    /// Puts the adapter on `model` (replacing any other), with its dropout while `training`.
    pub fn attach(&self, model: &mut Qwen2Vl, training: bool) -> Result<(), EncoderError> {
        detach(model);
        let dropout =
            (training && self.config.lora_dropout > 0.0).then_some(self.config.lora_dropout as f32);
        for ((layer, module), (a, b)) in &self.weights {
            let low_rank = LowRank {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: self.config.scale(),
                dropout,
            };
            if !model.set_adapter(*layer, module, Some(low_rank)) {
                return Err(EncoderError::BadModel(format!(
                    "the adapter has layer {layer} {module}, which the model does not"
                )));
            }
        }
        Ok(())
    }
}

/// Removes every adapter from `model`: the base model again.
pub fn detach(model: &mut Qwen2Vl) {
    for layer in 0..model.config().text.num_hidden_layers {
        for module in ADAPTABLE_PROJECTIONS {
            model.set_adapter(layer, module, None);
        }
    }
}

fn validate(config: &LoraConfig) -> Result<(), EncoderError> {
    if config.r == 0 {
        return Err(EncoderError::BadModel(
            "a LoRA adapter needs a rank of at least 1".into(),
        ));
    }
    if let Some(other) = config
        .target_modules
        .iter()
        .find(|m| !ADAPTABLE_PROJECTIONS.contains(&m.as_str()))
    {
        return Err(EncoderError::BadModel(format!(
            "LoRA on {other} is not supported: adapt the attention projections {}",
            ADAPTABLE_PROJECTIONS.join(", ")
        )));
    }
    if !(0.0..1.0).contains(&config.lora_dropout) {
        return Err(EncoderError::BadModel(
            "lora_dropout must be in [0, 1)".into(),
        ));
    }
    Ok(())
}

/// `(layer, module)` and 0 for `lora_A`, 1 for `lora_B` from a PEFT tensor name.
fn parse_name(name: &str) -> Option<(Site, usize)> {
    let rest = LAYER_PREFIXES.iter().find_map(|p| name.strip_prefix(p))?;
    let (layer, rest) = rest.split_once(".self_attn.")?;
    let (module, matrix) = rest.split_once('.')?;
    let matrix = match matrix {
        "lora_A.weight" => 0,
        "lora_B.weight" => 1,
        _ => return None,
    };
    if !ADAPTABLE_PROJECTIONS.contains(&module) {
        return None;
    }
    Some(((layer.parse().ok()?, module.to_owned()), matrix))
}
