//! The Qwen2-VL reranker. Parity with Hugging Face `transformers` (the chat prompt's token ids with
//! the image tokens expanded, the image patches, the logits at the last position) and with PEFT
//! (a LoRA adapter's logits and its files), checked against the fixtures written by
//! `tests/reference/make_vlm_fixtures.py`; what the reranker makes of them (probabilities,
//! batching); and training adapters (gradients, finite differences, learning a separable set).

#![allow(clippy::unwrap_used)] // test helpers panic on broken fixtures

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::max_abs_diff;
use glimpse_worker::encoder::decode_rgb;
use glimpse_worker::models::qwen2_vl::ImageTokens;
use glimpse_worker::models::qwen2_vl::{Config, ImagePatches, Qwen2Vl};
use glimpse_worker::reranker::lora::{LoraAdapter, LoraConfig};
use glimpse_worker::reranker::training::{self, Example, TrainingSettings};
use glimpse_worker::reranker::{
    INSTRUCTION, VlmReranker, VlmSettings, resize_and_normalise, smart_resize, to_patches,
};
use serde::Deserialize;

const NAME: &str = "qwen2-vl-tiny";
/// The per-channel standard deviations of the processor's normalisation (OpenAI CLIP's).
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reference")
}

fn checkpoint() -> PathBuf {
    reference().join("checkpoints").join(NAME)
}

#[derive(Deserialize)]
struct Case {
    query: String,
    image: String,
    max_pixels: u64,
    prompt: String,
}

#[derive(Deserialize)]
struct Expected {
    instruction: String,
    min_pixels: u64,
    yes: u32,
    no: u32,
    cases: Vec<Case>,
}

struct Fixture {
    expected: Expected,
    tensors: HashMap<String, Tensor>,
}

impl Fixture {
    fn load() -> Self {
        let dir = reference().join("expected");
        let json = std::fs::read_to_string(dir.join(format!("{NAME}.json"))).unwrap();
        let tensors =
            candle_core::safetensors::load(dir.join(format!("{NAME}.safetensors")), &Device::Cpu)
                .unwrap();
        Self {
            expected: serde_json::from_str(&json).unwrap(),
            tensors,
        }
    }

    fn tensor(&self, case: usize, what: &str) -> &Tensor {
        &self.tensors[&format!("case{case}.{what}")]
    }

    fn ids(&self, case: usize) -> Vec<u32> {
        let ids: Vec<i64> = self.tensor(case, "input_ids").to_vec1().unwrap();
        ids.into_iter().map(|id| id as u32).collect()
    }

    fn grid(&self, case: usize) -> [usize; 3] {
        let grid: Vec<i64> = self.tensor(case, "image_grid_thw").to_vec1().unwrap();
        [grid[0] as usize, grid[1] as usize, grid[2] as usize]
    }

    fn patches(&self, case: usize) -> ImagePatches {
        ImagePatches {
            patches: self.tensor(case, "pixel_values").clone(),
            grid: self.grid(case),
        }
    }
}

fn model() -> Qwen2Vl {
    let config =
        Config::from_json(&std::fs::read_to_string(checkpoint().join("config.json")).unwrap())
            .unwrap();
    let weights = checkpoint().join("model.safetensors");
    let tensors = candle_core::safetensors::load(weights, &Device::Cpu).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    Qwen2Vl::new(vb, &config).unwrap()
}

/// The model's logits at the last position of a fixture case's prompt and image.
fn last_logits(model: &Qwen2Vl, fixture: &Fixture, case: usize) -> Vec<f32> {
    let features = model.image_features(&[fixture.patches(case)]).unwrap();
    model
        .last_logits(&[fixture.ids(case)], &features)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn reranker(image_tokens: usize) -> VlmReranker {
    VlmReranker::load(
        &checkpoint(),
        VlmSettings {
            max_candidates: 10,
            image_tokens,
        },
    )
    .unwrap()
}

#[test]
fn the_last_positions_logits_equal_transformers() {
    let fixture = Fixture::load();
    let model = model();
    assert!(fixture.expected.cases.len() >= 5);
    for (case, entry) in fixture.expected.cases.iter().enumerate() {
        let logits = last_logits(&model, &fixture, case);
        let expected: Vec<f32> = fixture.tensor(case, "logits").to_vec1().unwrap();
        let diff = max_abs_diff(&logits, &expected);
        println!("case {case} ({}): max logit diff {diff:.2e}", entry.image);
        assert!(diff <= 1e-4, "case {case}: max logit difference {diff}");
    }
}

#[test]
fn prompts_and_their_tokens_equal_the_processors() {
    let fixture = Fixture::load();
    let reranker = reranker(16);
    assert_eq!(fixture.expected.instruction, INSTRUCTION);
    for (case, entry) in fixture.expected.cases.iter().enumerate() {
        let [_, rows, columns] = fixture.grid(case);
        let image_tokens = rows * columns / 4;
        let expanded = entry
            .prompt
            .replace("<|image_pad|>", &"<|image_pad|>".repeat(image_tokens));
        assert_eq!(VlmReranker::prompt(&entry.query, image_tokens), expanded);
        assert_eq!(
            reranker.prompt_ids(&entry.query, image_tokens).unwrap(),
            fixture.ids(case),
            "case {case}: {:?}",
            entry.query
        );
    }
}

#[test]
fn image_patches_equal_the_processors() {
    let fixture = Fixture::load();
    let config =
        Config::from_json(&std::fs::read_to_string(checkpoint().join("config.json")).unwrap())
            .unwrap();
    for (case, entry) in fixture.expected.cases.iter().enumerate() {
        let bytes = std::fs::read(reference().join("images").join(&entry.image)).unwrap();
        let image = decode_rgb(&bytes, None).unwrap();
        let (height, width) = smart_resize(
            image.height(),
            image.width(),
            28,
            fixture.expected.min_pixels,
            entry.max_pixels,
        )
        .unwrap();
        let prepared = resize_and_normalise(&image, height, width).unwrap();
        let (values, grid) = to_patches(&prepared, &config.vision).unwrap();
        assert_eq!(grid, fixture.grid(case), "case {case}");
        let expected: Vec<f32> = fixture
            .tensor(case, "pixel_values")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // In 0–255 units: undo the division by each channel's standard deviation. PNG pixels
        // agree up to the resize's rounding; JPEG decoding follows libjpeg to within 3 levels.
        assert_eq!(values.len(), expected.len());
        let per_channel = values.len() / (grid[1] * grid[2] * 3);
        let diff = values
            .iter()
            .zip(&expected)
            .enumerate()
            .map(|(k, (a, b))| (a - b).abs() * CLIP_STD[(k / per_channel) % 3] * 255.0)
            .fold(0.0, f32::max);
        println!(
            "case {case} ({}): max pixel diff {diff:.2}/255",
            entry.image
        );
        let allowed = if entry.image.ends_with(".png") {
            1.01
        } else {
            3.01
        };
        assert!(diff <= allowed, "case {case}: pixels differ by {diff}/255");
    }
}

#[test]
fn scores_are_probabilities_and_a_batch_equals_one_by_one() {
    let reranker = reranker(16);
    let images: Vec<_> = [
        "gradient.png",
        "noise.jpg",
        "checkerboard.png",
        "exif-rotated.jpg",
    ]
    .iter()
    .map(|file| {
        let bytes = std::fs::read(reference().join("images").join(file)).unwrap();
        reranker.prepare(&bytes).unwrap()
    })
    .collect();
    let together = reranker.score("kids on a red sled", &images).unwrap();
    assert_eq!(together.probabilities.len(), images.len());
    assert!(
        together
            .probabilities
            .iter()
            .all(|p| p.is_finite() && (0.0..=1.0).contains(p))
    );
    assert!((together.shares.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    for (i, image) in images.iter().enumerate() {
        let alone = reranker
            .score("kids on a red sled", std::slice::from_ref(image))
            .unwrap();
        assert!(
            (alone.probabilities[0] - together.probabilities[i]).abs() < 1e-5,
            "candidate {i}: {} alone, {} in a batch",
            alone.probabilities[0],
            together.probabilities[i]
        );
        assert!((alone.shares[0] - 1.0).abs() < 1e-6);
    }
    // Different photos get different scores: the image reaches the answer.
    let distinct = together
        .probabilities
        .windows(2)
        .any(|pair| (pair[0] - pair[1]).abs() > 1e-4);
    assert!(distinct, "{:?}", together.probabilities);
}

#[test]
fn the_answer_tokens_are_the_checkpoints_yes_and_no() {
    let fixture = Fixture::load();
    let model = model();
    let case = 0;
    let logits = last_logits(&model, &fixture, case);
    let reranker = reranker(16);
    let image = &model.image_features(&[fixture.patches(case)]).unwrap()[0];
    let query = fixture.expected.cases[case].query.as_str();
    let answer = reranker
        .answer_logits(&[(query, image)])
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let (yes, no) = (fixture.expected.yes as usize, fixture.expected.no as usize);
    assert!((answer[0][0] - logits[yes]).abs() < 1e-5);
    assert!((answer[0][1] - logits[no]).abs() < 1e-5);
}

fn lora_dir() -> PathBuf {
    reference().join("checkpoints").join(format!("{NAME}-lora"))
}

fn tensor_shapes(file: &Path) -> Vec<(String, Vec<usize>)> {
    let mut shapes: Vec<_> = candle_core::safetensors::load(file, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, tensor)| (name, tensor.dims().to_vec()))
        .collect();
    shapes.sort();
    shapes
}

#[test]
fn a_peft_adapter_gives_pefts_logits_and_what_glimpse_writes_peft_reads() {
    let fixture = Fixture::load();
    let mut model = model();
    let adapter = LoraAdapter::load(&lora_dir(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(adapter.config().r, 8);
    adapter.attach(&mut model, false).unwrap();
    let mut ours = HashMap::new();
    for case in 0..fixture.expected.cases.len() {
        let logits = last_logits(&model, &fixture, case);
        let expected: Vec<f32> = fixture.tensor(case, "lora_logits").to_vec1().unwrap();
        let diff = max_abs_diff(&logits, &expected);
        assert!(diff <= 1e-4, "case {case}: adapter logits differ by {diff}");
        let without: Vec<f32> = fixture.tensor(case, "logits").to_vec1().unwrap();
        assert!(
            max_abs_diff(&logits, &without) > 1e-3,
            "the adapter changed nothing"
        );
        ours.insert(
            format!("case{case}"),
            Tensor::new(logits, &Device::Cpu).unwrap(),
        );
    }

    // Written back in PEFT's layout: the same tensors and shapes, a config PEFT reads.
    let written = tempfile::tempdir().unwrap();
    adapter.save(written.path(), NAME).unwrap();
    assert_eq!(
        tensor_shapes(&written.path().join("adapter_model.safetensors")),
        tensor_shapes(&lora_dir().join("adapter_model.safetensors"))
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(written.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);
    assert_eq!(config["lora_alpha"], 16.0);
    let reread = LoraAdapter::load(written.path(), &Device::Cpu, DType::F32).unwrap();
    reread.attach(&mut model, false).unwrap();
    assert_eq!(
        last_logits(&model, &fixture, 0),
        ours["case0"].to_vec1::<f32>().unwrap()
    );

    // PEFT itself reads it, where a Python with PEFT is at hand.
    candle_core::safetensors::save(&ours, written.path().join("glimpse_logits.safetensors"))
        .unwrap();
    match std::env::var("GLIMPSE_PEFT_PYTHON") {
        Ok(python) => {
            let status = std::process::Command::new(python)
                .arg(reference().join("check_peft_loads.py"))
                .arg(written.path())
                .current_dir(reference())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "PEFT did not read the adapter Glimpse wrote"
            );
        }
        Err(_) => println!(
            "SKIPPED: loading the adapter Glimpse wrote in PEFT (set GLIMPSE_PEFT_PYTHON to a \
             Python with tests/reference/requirements.txt)"
        ),
    }
}

fn reranker_on(dtype: DType) -> VlmReranker {
    VlmReranker::load_on(
        &checkpoint(),
        VlmSettings {
            max_candidates: 10,
            image_tokens: 16,
        },
        Device::Cpu,
        dtype,
    )
    .unwrap()
}

/// A separable click set: each query is relevant to one photo and to none of the others.
fn separable_examples(reranker: &VlmReranker) -> Vec<Example> {
    let files = ["solid.png", "checkerboard.png", "noise.png"];
    let queries = ["a red wall", "a chessboard", "television static"];
    let prepared: Vec<_> = files
        .iter()
        .map(|file| {
            let bytes = std::fs::read(reference().join("images").join(file)).unwrap();
            reranker.prepare(&bytes).unwrap()
        })
        .collect();
    let tokens = reranker.image_tokens(&prepared).unwrap();
    let mut examples = Vec::new();
    for (q, query) in queries.iter().enumerate() {
        for (i, image) in tokens.iter().enumerate() {
            examples.push(Example {
                query: (*query).to_owned(),
                image: image.clone(),
                relevant: q == i,
                weight: if q == i { 2.0 } else { 1.0 },
            });
        }
    }
    examples
}

fn full_loss(reranker: &VlmReranker, examples: &[Example]) -> f64 {
    let all: Vec<&Example> = examples.iter().collect();
    training::loss(reranker, &all)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn fifty_steps_halve_the_loss_and_move_the_relevant_photos_up() {
    let mut reranker = reranker_on(DType::F32);
    let examples = separable_examples(&reranker);
    let adapter = LoraAdapter::new(reranker.model_mut(), LoraConfig::default(), 7).unwrap();
    adapter.attach(reranker.model_mut(), false).unwrap();
    let before = full_loss(&reranker, &examples);
    let settings = TrainingSettings {
        steps: 50,
        batch: 9,
        learning_rate: 0.01,
        ..TrainingSettings::default()
    };
    let losses = training::train(&mut reranker, &adapter, &examples, &settings).unwrap();
    assert_eq!(losses.len(), 50);
    let after = full_loss(&reranker, &examples);
    println!("loss {before:.4} -> {after:.4}");
    assert!(after <= before / 2.0, "loss {before} -> {after}");
    for query in ["a red wall", "a chessboard", "television static"] {
        let pairs: Vec<(&str, &ImageTokens)> = examples
            .iter()
            .filter(|e| e.query == query)
            .map(|e| (query, &e.image))
            .collect();
        let logits = reranker
            .answer_logits(&pairs)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let margins: Vec<f32> = logits.iter().map(|l| l[0] - l[1]).collect();
        let relevant = examples
            .iter()
            .filter(|e| e.query == query)
            .position(|e| e.relevant)
            .unwrap();
        let best = (0..margins.len())
            .max_by(|&a, &b| margins[a].total_cmp(&margins[b]))
            .unwrap();
        assert_eq!(best, relevant, "{query}: margins {margins:?}");
    }
}

#[test]
fn every_lora_matrix_gets_a_gradient_and_it_matches_finite_differences() {
    let mut reranker = reranker_on(DType::F64);
    let examples = separable_examples(&reranker);
    let config = LoraConfig {
        lora_dropout: 0.0,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(reranker.model_mut(), config, 11).unwrap();
    // One step first: B starts at zero, which leaves A without a gradient.
    let one_step = TrainingSettings {
        steps: 1,
        batch: 9,
        learning_rate: 0.05,
        ..TrainingSettings::default()
    };
    training::train(&mut reranker, &adapter, &examples, &one_step).unwrap();
    let all: Vec<&Example> = examples.iter().collect();
    let loss = training::loss(&reranker, &all).unwrap();
    let gradients = loss.backward().unwrap();
    let vars = adapter.vars();
    assert_eq!(
        vars.len(),
        2 * 4 * 2,
        "A and B of q, k, v, o in both layers"
    );
    for (i, var) in vars.iter().enumerate() {
        let gradient = gradients
            .get(var)
            .expect("every LoRA matrix is in the graph");
        let norm = gradient
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(norm > 0.0, "LoRA matrix {i} got no gradient");
    }
    // Central differences on a few entries of each matrix, in f64.
    let epsilon = 1e-5;
    for var in vars.iter().step_by(3) {
        let gradient: Vec<f64> = gradients
            .get(var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let original = var.as_tensor().copy().unwrap();
        let values: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
        for index in [0, values.len() / 2, values.len() - 1] {
            let at = |delta: f64| {
                let mut changed = values.clone();
                changed[index] += delta;
                var.set(&Tensor::from_vec(changed, original.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                full_loss(&reranker, &examples)
            };
            let numeric = (at(epsilon) - at(-epsilon)) / (2.0 * epsilon);
            var.set(&original).unwrap();
            let analytic = gradient[index];
            assert!(
                (numeric - analytic).abs() <= 1e-6 + 1e-4 * analytic.abs().max(numeric.abs()),
                "entry {index}: finite difference {numeric}, autograd {analytic}"
            );
        }
    }
}

#[test]
fn in_bf16_as_on_a_gpu_the_probabilities_stay_close_to_f32() {
    let f32_reranker = reranker_on(DType::F32);
    let bf16_reranker = reranker_on(DType::BF16);
    let images = |reranker: &VlmReranker| -> Vec<_> {
        ["gradient.png", "noise.jpg", "checkerboard.png"]
            .iter()
            .map(|file| {
                let bytes = std::fs::read(reference().join("images").join(file)).unwrap();
                reranker.prepare(&bytes).unwrap()
            })
            .collect()
    };
    let exact = f32_reranker
        .score("kids on a red sled", &images(&f32_reranker))
        .unwrap();
    let half = bf16_reranker
        .score("kids on a red sled", &images(&bf16_reranker))
        .unwrap();
    let diff = max_abs_diff(&exact.probabilities, &half.probabilities);
    println!("bf16 against f32: largest probability difference {diff:.4}");
    assert!(
        diff < 0.05,
        "{:?} vs {:?}",
        exact.probabilities,
        half.probabilities
    );
}
