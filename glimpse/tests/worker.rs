//! `glimpse worker`'s internal API over HTTP, as the edge functions use it, with the small test
//! checkpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on broken fixtures

mod common;

use std::process::{Child, Command};

use std::time::{Duration, Instant};

use common::managed::{S3Server, Schema};
use common::{model, reference, response, spawn_listening};
use glimpse_core::EncoderId;
use glimpse_core::photo::{Photo, PhotoId};
use glimpse_core::ports::{BlobStore, Catalog, LearningStore};
use glimpse_core::search::{LoggedResult, LoggedSearch, QueryId, SearchLog, StageTimings};
use serde_json::{Value, json};

const TOKEN: &str = "internal-token-for-the-pool-0123";

struct Worker {
    child: Child,
    base: String,
}

impl Worker {
    fn start() -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_glimpse"));
        command
            .args(["worker", "--model", &model(), "--listen", "127.0.0.1:0"])
            .env("GLIMPSE__WORKER__TOKEN", TOKEN);
        let (child, base) = spawn_listening(&mut command, "Glimpse worker is serving ");
        Self { child, base }
    }

    fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = ureq::post(&format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        response(request.send_json(body))
    }

    fn post_images(&self, images: &[Vec<u8>]) -> (u16, Value) {
        let boundary = "glimpse-test-boundary";
        let mut body = Vec::new();
        for (i, image) in images.iter().enumerate() {
            body.extend(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; \
                     filename=\"{i}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend(image);
            body.extend(b"\r\n");
        }
        body.extend(format!("--{boundary}--\r\n").as_bytes());
        response(
            ureq::post(&format!("{}/v1/embed/images", self.base))
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .set(
                    "Content-Type",
                    &format!("multipart/form-data; boundary={boundary}"),
                )
                .send_bytes(&body),
        )
    }

    fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.base))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `glimpse embed` prints for these arguments, one JSON object per input.
fn cli_embeddings(args: &[&str]) -> Vec<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["embed", "--model", &model()])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn embeds_texts_and_images_for_holders_of_the_internal_token() {
    let worker = Worker::start();

    // Health is open; everything else needs the token.
    let (status, _) = response(ureq::get(&format!("{}/healthz", worker.base)).call());
    assert_eq!(status, 200);
    let texts = json!({"texts": ["kids on a red sled", "a whiteboard"]});
    let (status, body) = worker.post("/v1/embed/text", None, texts.clone());
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "token_required");
    let (status, body) = worker.post("/v1/embed/text", Some("wrong-token"), texts.clone());
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "bad_token");
    assert!(
        !body.to_string().contains(TOKEN),
        "the token is never echoed"
    );
    let (status, _) = response(ureq::get(&format!("{}/metrics", worker.base)).call());
    assert_eq!(status, 401);

    // Texts: the same vectors as the CLI computes in-process.
    let (status, body) = worker.post("/v1/embed/text", Some(TOKEN), texts);
    assert_eq!(status, 200, "{body}");
    let expected = cli_embeddings(&["--text", "kids on a red sled", "--text", "a whiteboard"]);
    assert_eq!(body["encoder"], expected[0]["encoder"]);
    assert_eq!(body["dimension"], expected[0]["dimension"]);
    assert_eq!(body["vectors"][0], expected[0]["vector"]);
    assert_eq!(body["vectors"][1], expected[1]["vector"]);

    // Images: a vector per readable image, the decoder's words for the others, in order.
    let noise = reference().join("images/noise.png");
    let good = std::fs::read(&noise).unwrap();
    let (status, body) = worker.post_images(&[good, b"not an image".to_vec()]);
    assert_eq!(status, 200, "{body}");
    let expected = cli_embeddings(&["--image", noise.to_str().unwrap()]);
    assert_eq!(body["results"][0]["vector"], expected[0]["vector"]);
    assert!(body["results"][1]["error"].as_str().unwrap().len() > 5);

    // Bad requests say what to send.
    let (status, body) = worker.post("/v1/embed/text", Some(TOKEN), json!({"texts": []}));
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 to 64")
    );
    let (status, body) = worker.post("/v1/embed/text", Some(TOKEN), json!({"text": "x"}));
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"texts\"")
    );
    let (status, _) = worker.post_images(&[]);
    assert_eq!(status, 400);

    // Rerank without a reranking model: nothing scored, so the edge keeps retrieval order and
    // shows no probability.
    let photo = |id: &str| {
        json!({"id": id, "sha256": "ab", "origin": {"kind": "upload", "key": format!("originals/{id}")},
               "format": "png", "bytes": 10, "width": 4, "height": 4, "taken_at": null,
               "dated_at": 0, "camera": null, "location": null, "album": null,
               "status": "indexed", "last_error": null, "added_at": 0, "modified_at": null})
    };
    let candidates = json!({"query": "a red sled", "candidates": [
        {"photo": photo("00000000000000a1"), "score": 3.0},
        {"photo": photo("00000000000000a2"), "score": 1.0},
    ]});
    let (status, body) = worker.post("/v1/rerank", None, candidates.clone());
    assert_eq!(status, 401);
    let (status, body_ok) = worker.post("/v1/rerank", Some(TOKEN), candidates);
    assert_eq!(status, 200, "{body_ok} {body}");
    assert_eq!(body_ok["reranker"], "retrieval-order");
    assert_eq!(body_ok["probabilities"], json!([]), "{body_ok}");
    assert_eq!(body_ok["shares"], json!([]), "{body_ok}");
    let (status, body) = worker.post(
        "/v1/rerank",
        Some(TOKEN),
        json!({"query": "x", "candidates": []}),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 to 64")
    );

    let metrics = worker.metrics();
    assert!(
        metrics.contains("glimpse_worker_texts_embedded_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("glimpse_worker_rerank_requests_total 1"));
    assert!(metrics.contains("glimpse_worker_images_embedded_total 1"));
    assert!(metrics.contains("glimpse_worker_image_errors_total 1"));
    assert!(metrics.contains("glimpse_worker_refused_requests_total 4"));
    assert!(
        !metrics.contains("jobs_done"),
        "no consumer runs without the managed backends"
    );
}

#[test]
fn refuses_to_start_without_a_long_enough_internal_token() {
    let output = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["worker", "--model", &model(), "--listen", "127.0.0.1:0"])
        .env_remove("GLIMPSE__WORKER__TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let short = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["worker", "--model", &model(), "--listen", "127.0.0.1:0"])
        .env("GLIMPSE__WORKER__TOKEN", "short")
        .output()
        .unwrap();
    assert!(!short.status.success());
    let message = String::from_utf8_lossy(&short.stderr);
    assert!(message.contains("at least 16 characters"), "{message}");
    assert!(!message.contains("short\n"), "the token is not printed");
}

#[test]
fn refuses_to_start_with_some_but_not_all_backends_and_keeps_secrets() {
    let output = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["worker", "--model", &model(), "--listen", "127.0.0.1:0"])
        .env("GLIMPSE__WORKER__TOKEN", TOKEN)
        .env(
            "GLIMPSE__DATABASE__URL",
            "postgres://glimpse:pa55-w0rd@127.0.0.1:5432/test",
        )
        .env("GLIMPSE__QDRANT__URL", "http://127.0.0.1:6334")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("[s3] is missing"), "{message}");
    assert!(!message.contains("pa55-w0rd") && !message.contains(TOKEN));
}

/// A worker whose `/v1/rerank` runs the Qwen2-VL test checkpoint over photos in `s3`.
fn vision_worker(s3: &S3Server, max_candidates: usize, extra: &[(&str, String)]) -> Worker {
    let settings = s3.settings();
    let mut command = Command::new(env!("CARGO_BIN_EXE_glimpse"));
    command
        .args(["worker", "--model", &model(), "--listen", "127.0.0.1:0"])
        .env("GLIMPSE__WORKER__TOKEN", TOKEN)
        .env("GLIMPSE__S3__ENDPOINT", settings.endpoint.unwrap())
        .env("GLIMPSE__S3__BUCKET", &settings.bucket)
        .env("GLIMPSE__S3__REGION", &settings.region)
        .env("GLIMPSE__S3__ACCESS_KEY_ID", &settings.access_key_id)
        .env(
            "GLIMPSE__S3__SECRET_ACCESS_KEY",
            &settings.secret_access_key,
        )
        .env(
            "GLIMPSE__RERANKER__MODEL",
            reference().join("checkpoints/qwen2-vl-tiny"),
        )
        .env(
            "GLIMPSE__RERANKER__MAX_CANDIDATES",
            max_candidates.to_string(),
        )
        .env("GLIMPSE__RERANKER__IMAGE_TOKENS", "16")
        .envs(extra.iter().map(|(key, value)| (*key, value)));
    let (child, base) = spawn_listening(&mut command, "Glimpse worker is serving ");
    Worker { child, base }
}

fn uploaded(id: &str) -> Value {
    json!({"id": id, "sha256": "ab", "origin": {"kind": "upload", "key": format!("originals/{id}")},
           "format": "jpeg", "bytes": 10, "width": 4, "height": 4, "taken_at": null,
           "dated_at": 0, "camera": null, "location": null, "album": null,
           "status": "indexed", "last_error": null, "added_at": 0, "modified_at": null})
}

#[test]
fn the_vision_reranker_scores_photos_from_storage_and_says_which_it_cannot_read() {
    let s3 = S3Server::start();
    let ids = ["00000000000000b1", "00000000000000b2", "00000000000000b3"];
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = s3.store(&s3.settings()).await;
        for (id, file) in ids
            .iter()
            .zip(["gradient.jpg", "noise.png", "checkerboard.png"])
        {
            let bytes = std::fs::read(reference().join("images").join(file)).unwrap();
            store.put(&format!("originals/{id}"), bytes).await.unwrap();
        }
        // The second photo has a thumbnail: the reranker looks at that one.
        let thumbnail = std::fs::read(reference().join("images/noise.jpg")).unwrap();
        let id: PhotoId = ids[1].parse().unwrap();
        store.put(&id.thumbnail_key(), thumbnail).await.unwrap();
    });
    let worker = vision_worker(&s3, 2, &[]);
    let candidates: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"photo": uploaded(id), "score": 3.0 - i as f64}))
        .collect();
    let request = json!({"query": "kids on a red sled", "candidates": candidates});
    let (status, body) = worker.post("/v1/rerank", Some(TOKEN), request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reranker"], "qwen2-vl");
    // max_candidates = 2: the first two are scored, each with its own probability of "yes".
    let p: Vec<f64> = body["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert_eq!(p.len(), 2, "{body}");
    assert!(p.iter().all(|p| (0.0..=1.0).contains(p)), "{p:?}");
    // And the softmax of the "yes" logits across them.
    let shares: f64 = body["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-4, "{body}");

    // A candidate whose original is not in storage: the request fails with the reason (the
    // edge then keeps retrieval order).
    let missing = json!({"query": "a dog", "candidates": [
        {"photo": uploaded("00000000000000c9"), "score": 1.0}
    ]});
    let (status, body) = worker.post("/v1/rerank", Some(TOKEN), missing);
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(body.to_string().contains("00000000000000c9"), "{body}");

    // Both counted, and the time they took.
    let metrics = worker.metrics();
    assert!(
        metrics.contains("glimpse_worker_rerank_requests_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("glimpse_worker_rerank_failures_total 1\n"),
        "{metrics}"
    );
    let micros: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("glimpse_worker_rerank_microseconds_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(micros > 0);
}

/// A photo of the pool's catalog, uploaded, with `id` as its id.
fn catalog_photo(id: &str) -> Photo {
    let mut photo = uploaded(id);
    photo["sha256"] = json!(id.repeat(4));
    serde_json::from_value(photo).unwrap()
}

/// `/v1/rerank` of "kids on a red sled" over `ids`: the reranker's name and probabilities.
fn rerank_sled(worker: &Worker, ids: &[&str]) -> (String, Vec<f64>) {
    let candidates: Vec<Value> = ids
        .iter()
        .map(|id| json!({"photo": uploaded(id), "score": 1.0}))
        .collect();
    let (status, body) = worker.post(
        "/v1/rerank",
        Some(TOKEN),
        json!({"query": "kids on a red sled", "candidates": candidates}),
    );
    assert_eq!(status, 200, "{body}");
    let probabilities = body["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    (body["reranker"].as_str().unwrap().to_owned(), probabilities)
}

/// Polls `/v1/rerank` until the reranker is called `name`.
fn wait_for_reranker(worker: &Worker, ids: &[&str], name: &str) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (now, probabilities) = rerank_sled(worker, ids);
        if now == name {
            return probabilities;
        }
        assert!(
            Instant::now() < deadline,
            "the reranker is still {now}, not {name}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_worker_trains_the_reranker_from_the_pools_clicks_and_follows_the_active_adapter() {
    let s3 = S3Server::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let schema = runtime.block_on(Schema::new());
    let ids = [
        "00000000000000d1",
        "00000000000000d2",
        "00000000000000d3",
        "00000000000000d4",
    ];
    let encoder: EncoderId = "clip:test/pool-learning@1".parse().unwrap();
    runtime.block_on(async {
        let store = s3.store(&s3.settings()).await;
        let catalog = schema.catalog().await;
        catalog.register_encoder(&encoder, 4).await.unwrap();
        catalog.activate_encoder(&encoder).await.unwrap();
        for (id, file) in
            ids.iter()
                .zip(["gradient.jpg", "noise.png", "checkerboard.png", "solid.png"])
        {
            let bytes = std::fs::read(reference().join("images").join(file)).unwrap();
            store.put(&format!("originals/{id}"), bytes).await.unwrap();
            catalog.add_photo(&catalog_photo(id)).await.unwrap();
        }
        // Searches at the edge: the third photo is what people click each time.
        for _ in 0..12 {
            let query_id = QueryId::random();
            let log = SearchLog {
                search: LoggedSearch {
                    query_id,
                    text: "kids on a red sled".to_owned(),
                    parsed: "{}".to_owned(),
                    encoder: encoder.clone(),
                    timings: StageTimings::from_values([0.1; 6]),
                    rerank_fallback: None,
                    adapter_version: None,
                    swapped_with: None,
                },
                results: ids
                    .iter()
                    .zip(1..)
                    .map(|(id, rank)| LoggedResult {
                        rank,
                        photo_id: id.parse().unwrap(),
                        score: 1.0,
                        rerank_probability: None,
                    })
                    .collect(),
            };
            catalog.log_search(&log).await.unwrap();
            catalog.record_click(&query_id, 3).await.unwrap().unwrap();
        }
    });
    let model = reference().join("checkpoints/qwen2-vl-tiny");
    let learning = [
        ("GLIMPSE__DATABASE__URL", schema.url()),
        ("GLIMPSE__RERANKER__LEARNING__EVERY_CLICKS", "5".to_owned()),
        ("GLIMPSE__RERANKER__LEARNING__MIN_SEARCHES", "5".to_owned()),
        (
            "GLIMPSE__RERANKER__LEARNING__RERANKER__STEPS",
            "30".to_owned(),
        ),
        (
            "GLIMPSE__RERANKER__LEARNING__RERANKER__LEARNING_RATE",
            "0.02".to_owned(),
        ),
        (
            "GLIMPSE__RERANKER__LEARNING__RERANKER__IMAGE_TOKENS",
            "16".to_owned(),
        ),
    ];
    let worker = vision_worker(&s3, 4, &learning);
    let (name, before) = rerank_sled(&worker, &ids);
    assert_eq!(name, "qwen2-vl");

    // Twelve clicks are more than five: the worker trains, the adapter beats the model alone on
    // held-out searches, goes to storage and the catalog, and the worker reranks with it.
    let trained = wait_for_reranker(&worker, &ids, "qwen2-vl+adapter:1");
    assert_ne!(trained, before);
    let model_name = model.to_str().unwrap();
    let active = runtime.block_on(async {
        schema
            .catalog()
            .await
            .active_reranker_adapter(model_name)
            .await
            .unwrap()
            .expect("an active adapter")
    });
    assert!(active.blobs.starts_with("reranker-adapters/"), "{active:?}");
    let metrics = worker.metrics();
    assert!(
        metrics.contains("glimpse_training_runs_total{learner=\"reranker\",outcome=\"shipped\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("glimpse_adapter_version{learner=\"reranker\"} 1"),
        "{metrics}"
    );

    // The model alone, chosen in the catalog (as `glimpse adapters` or another worker would):
    // the running worker follows without a restart, and back.
    runtime.block_on(async {
        let catalog = schema.catalog().await;
        assert!(
            catalog
                .activate_reranker_adapter(model_name, None)
                .await
                .unwrap()
        );
    });
    assert_eq!(wait_for_reranker(&worker, &ids, "qwen2-vl"), before);
    runtime.block_on(async {
        let catalog = schema.catalog().await;
        assert!(
            catalog
                .activate_reranker_adapter(model_name, Some(1))
                .await
                .unwrap()
        );
    });
    assert_eq!(
        wait_for_reranker(&worker, &ids, "qwen2-vl+adapter:1"),
        trained
    );
}
