//! The `glimpse` command as a user runs it.

#![allow(clippy::unwrap_used)] // test helpers panic on broken fixtures

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference")
}

fn glimpse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(args)
        .output()
        .unwrap()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("glimpse-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn embed_prints_one_json_line_per_input_with_encoder_and_dimension() {
    let model = reference().join("checkpoints/clip-gelu");
    let image = reference().join("images/noise.png");
    let output = glimpse(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--precision",
        "f32",
        "--text",
        "a dog",
        "--image",
        image.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["text"], "a dog");
    assert_eq!(lines[1]["image"], image.to_str().unwrap());
    for line in &lines {
        assert!(
            line["encoder"]
                .as_str()
                .unwrap()
                .starts_with("clip:local/clip-gelu@")
        );
        assert_eq!(line["dimension"], 32);
        let vector: Vec<f32> = serde_json::from_value(line["vector"].clone()).unwrap();
        assert_eq!(vector.len(), 32);
        let norm: f32 = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not a unit vector: {norm}");
    }
    // The same vector transformers computes for this query (fixture text_embeds.0).
    let tensors = candle_core::safetensors::load(
        reference().join("expected/clip-gelu.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let expected: Vec<f32> = tensors["text_embeds.0"].to_vec1().unwrap();
    let got: Vec<f32> = serde_json::from_value(lines[0]["vector"].clone()).unwrap();
    let diff = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-4, "differs from transformers by {diff}");

    // The default precision (bf16 where the CPU has it) stays within its accuracy gate.
    let output = glimpse(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "a dog",
    ]);
    assert!(output.status.success());
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let fast: Vec<f32> = serde_json::from_value(line["vector"].clone()).unwrap();
    let cosine: f32 = fast.iter().zip(&expected).map(|(a, b)| a * b).sum();
    assert!(
        cosine >= 0.9995,
        "default precision: cosine {cosine} with transformers"
    );
}

/// Runs `glimpse embed` with the default (Hub) model and an empty Hugging Face cache; returns
/// whether it succeeded and its standard error.
fn embed_from_an_empty_cache(name: &str, env: &[(&str, &str)]) -> (bool, String) {
    let home = scratch_dir(name);
    let output = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["embed", "--text", "a dog"])
        .env("HF_HOME", &home)
        .env_remove("HF_HUB_OFFLINE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    std::fs::remove_dir_all(&home).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

#[test]
fn offline_download_failure_says_how_to_use_a_local_directory() {
    // Nothing listens on port 9: the download fails at once, as it does on a machine offline.
    let (ok, stderr) =
        embed_from_an_empty_cache("offline", &[("HF_ENDPOINT", "http://127.0.0.1:9")]);
    assert!(!ok);
    assert!(stderr.contains("openai/clip-vit-base-patch32"), "{stderr}");
    assert!(stderr.contains("--model /path/to/"), "{stderr}");
    assert!(stderr.contains("offline"), "{stderr}");
}

#[test]
fn hub_offline_mode_refuses_to_download_and_names_the_way_out() {
    let (ok, stderr) = embed_from_an_empty_cache("hub-offline", &[("HF_HUB_OFFLINE", "1")]);
    assert!(!ok);
    assert!(stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
    assert!(stderr.contains("--model /path/to/"), "{stderr}");
}

#[test]
fn embed_without_inputs_or_with_a_bad_image_explains_the_problem() {
    let model = reference().join("checkpoints/clip-gelu");
    let output = glimpse(&["embed", "--model", model.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--text"));

    let not_an_image = reference().join("make_fixtures.py");
    let output = glimpse(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--image",
        not_an_image.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not an image"), "{stderr}");
}

/// Lays out `clip-gelu` as a Hugging Face cache entry for `test/clip-gelu` at `commit`, with a
/// `refs/main` pointing at it when `with_main_ref`.
fn fake_hub_cache(name: &str, commit: &str, with_main_ref: bool) -> PathBuf {
    let home = scratch_dir(name);
    let repo = home.join("hub/models--test--clip-gelu");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for entry in std::fs::read_dir(reference().join("checkpoints/clip-gelu")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, snapshot.join(path.file_name().unwrap())).unwrap();
    }
    if with_main_ref {
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
    }
    home
}

fn embed_offline_from_cache(home: &Path, model: &str) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["embed", "--model", model, "--text", "a dog"])
        .env("HF_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn cached_hub_models_load_offline_by_branch_or_by_commit() {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    // As hf-hub leaves it: refs/main → commit.
    let home = fake_hub_cache("cache-ref", commit, true);
    let line = embed_offline_from_cache(&home, "test/clip-gelu");
    assert_eq!(line["encoder"], format!("clip:test/clip-gelu@{commit}"));
    std::fs::remove_dir_all(&home).unwrap();
    // As Python's `hf download --revision <commit>` leaves it: no ref, just the snapshot.
    let home = fake_hub_cache("cache-commit", commit, false);
    let line = embed_offline_from_cache(&home, &format!("test/clip-gelu@{commit}"));
    assert_eq!(line["encoder"], format!("clip:test/clip-gelu@{commit}"));
    assert_eq!(line["dimension"], 32);
    std::fs::remove_dir_all(&home).unwrap();
}

fn run_ok(args: &[&str]) -> String {
    let output = glimpse(args);
    assert!(
        output.status.success(),
        "glimpse {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn index_then_search_and_status_on_a_data_directory_and_a_new_encoder_rebuilds_the_index() {
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures/Trips");
    std::fs::create_dir_all(&library).unwrap();
    for name in ["noise.png", "gradient.jpg", "checkerboard.png"] {
        std::fs::copy(reference().join("images").join(name), library.join(name)).unwrap();
    }
    std::fs::write(library.join("no-header.jpg"), b"\xFF\xD8\xFF\xE0 cut short").unwrap();
    let jpeg = std::fs::read(reference().join("images/noise.jpg")).unwrap();
    std::fs::write(library.join("broken.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    let data = scratch.path().join("data");
    let (data, root) = (data.to_str().unwrap(), scratch.path().join("Pictures"));
    let odd = reference().join("checkpoints/clip-odd");
    let index_with = |model: &Path, more: &[&str]| {
        let mut args = vec![
            "index",
            root.to_str().unwrap(),
            "--data-dir",
            data,
            "--model",
            model.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        run_ok(&args)
    };
    let refused = glimpse(&[
        "index",
        root.to_str().unwrap(),
        "--data-dir",
        data,
        "--memory-budget",
        "lots",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("write it like 2GB"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let summary = index_with(&odd, &["--memory-budget", "1.5GB"]);
    assert!(
        summary.contains("Memory: glimpse index (pid") && summary.contains("of a 1.5 GB budget"),
        "{summary}"
    );
    assert!(
        summary.contains("Scanned 5 image files: 4 new"),
        "{summary}"
    );
    assert!(summary.contains("1 refused"), "{summary}");
    assert!(
        summary.contains("refused Trips/no-header.jpg: the image header cannot be read"),
        "{summary}"
    );
    assert!(summary.contains("3 indexed, 1 failed"), "{summary}");
    assert!(
        summary.contains("failed library/Trips/broken.jpg"),
        "{summary}"
    );

    let search_json = || -> serde_json::Value {
        serde_json::from_str(&run_ok(&[
            "search",
            "a red sled",
            "--json",
            "--data-dir",
            data,
        ]))
        .unwrap()
    };
    let json = search_json();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r["photo"]["album"] == "Trips"));
    let table = run_ok(&["search", "a red sled album:nowhere", "--data-dir", data]);
    assert!(table.contains("No results."), "{table}");
    let bad = glimpse(&["search", "beach -\"open", "--data-dir", data]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("closing quote"));

    let status = run_ok(&["status", "--data-dir", data]);
    assert!(
        status.contains("4 (3 indexed, 0 pending, 1 failed)"),
        "{status}"
    );
    assert!(status.contains("clip-odd"), "{status}");
    assert!(status.contains("memory budget:  1.5 GB"), "{status}");
    assert!(
        status.contains("memory:         glimpse index (pid"),
        "{status}"
    );

    // Another encoder: the index is rebuilt for it and every photo is indexed again.
    let gelu = reference().join("checkpoints/clip-gelu");
    let summary = index_with(&gelu, &[]);
    assert!(
        summary.contains("Indexed 3 photos this run (1 failed)"),
        "{summary}"
    );
    let json = search_json();
    assert_eq!(json["results"].as_array().unwrap().len(), 3);
    let status = run_ok(&["status", "--data-dir", data]);
    assert!(status.contains("clip-gelu"), "{status}");
    // The budget is remembered, like the model.
    assert!(status.contains("memory budget:  1.5 GB"), "{status}");
}

/// A triples file over the fixture images: each query asks for one of four photos.
fn write_triples(directory: &Path) -> PathBuf {
    let photos = ["solid.png", "checkerboard.png", "noise.png", "gradient.png"];
    let queries = [
        ("a red wall", 0),
        ("a crimson surface", 0),
        ("a chessboard", 1),
        ("black and white squares", 1),
        ("television static", 2),
        ("a rainbow gradient", 3),
    ];
    let mut lines = String::new();
    for (query, wanted) in queries {
        for (i, photo) in photos.iter().enumerate() {
            let image = reference().join("images").join(photo);
            let line = serde_json::json!({"query": query, "image": image, "label": i == wanted});
            lines.push_str(&format!("{line}\n"));
        }
    }
    let path = directory.join("triples.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

/// `glimpse train` with the tiny Qwen2-VL checkpoint.
fn train(triples: &Path, adapter: &Path, extra: &[&str]) -> Output {
    let vlm = reference().join("checkpoints/qwen2-vl-tiny");
    let mut args = vec![
        "train",
        "--triples",
        triples.to_str().unwrap(),
        "--output",
        adapter.to_str().unwrap(),
        "--reranker-model",
        vlm.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    glimpse(&args)
}

#[test]
fn train_writes_an_adapter_from_triples_and_reports_held_out_queries() {
    let scratch = scratch_dir("train");
    let triples = write_triples(&scratch);
    let adapter = scratch.join("adapter");
    let output = train(
        &triples,
        &adapter,
        &[
            "--steps",
            "30",
            "--learning-rate",
            "0.01",
            "--image-tokens",
            "16",
            "--json",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["training_pairs"].as_u64().unwrap() + report["held_out_pairs"].as_u64().unwrap(),
        24,
        "{report}"
    );
    assert!(report["held_out_pairs"].as_u64().unwrap() >= 4, "{report}");
    assert!(
        report["last_loss"].as_f64().unwrap() < report["first_loss"].as_f64().unwrap(),
        "{report}"
    );
    for scores in [&report["held_out_base"], &report["held_out_adapted"]] {
        assert!(
            (0.0..=1.0).contains(&scores["ndcg_at_10"].as_f64().unwrap()),
            "{report}"
        );
    }
    assert!(adapter.join("adapter_config.json").is_file());
    assert!(adapter.join("adapter_model.safetensors").is_file());
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn train_names_the_line_of_a_bad_triple_and_writes_nothing() {
    let scratch = scratch_dir("train-bad");
    let triples = write_triples(&scratch);
    let mut text = std::fs::read_to_string(&triples).unwrap();
    text.push_str("{\"query\": \"a dog\", \"image\": \"dog.jpg\", \"label\": 2}\n");
    std::fs::write(&triples, text).unwrap();
    let adapter = scratch.join("adapter");
    let output = train(&triples, &adapter, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 25") && stderr.contains("label"),
        "{stderr}"
    );
    assert!(!adapter.exists());
    std::fs::remove_dir_all(&scratch).unwrap();
}
