//! Learning from clicks in `glimpse serve`, as a household uses it: searches and clicks over HTTP
//! train a query adapter, and the running server ranks with it at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on broken fixtures

mod common;

use std::time::{Duration, Instant};

use common::{Server, fixture_count, fixture_library, ids};
use serde_json::{Value, json};

/// What a household looks for.
const QUERIES: [&str; 3] = ["a red sled", "beach at dusk", "a cat asleep on a sofa"];

/// The rank (from 1) of `photo` in a search response.
fn rank_of(response: &Value, photo: &str) -> usize {
    ids(response).iter().position(|id| id == photo).unwrap() + 1
}

/// A server over the fixture library, indexed, with `learning` arguments; the encoder's ranking
/// of each query, and the photo wanted for each: the one the encoder ranks last.
fn household(learning: &[&str]) -> (tempfile::TempDir, Server, Vec<Value>, Vec<String>) {
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    fixture_library(&library);
    household_over(scratch, fixture_count(), learning)
}

/// [`household`] over the library already in `scratch`'s `Pictures` folder, of `photos` photos.
fn household_over(
    scratch: tempfile::TempDir,
    photos: usize,
    learning: &[&str],
) -> (tempfile::TempDir, Server, Vec<Value>, Vec<String>) {
    let library = scratch.path().join("Pictures");
    let server = Server::start(Some(&library), &scratch.path().join("data"), learning);
    server.wait_indexed(photos as u64);
    let before: Vec<Value> = QUERIES.iter().map(|q| server.search(q, 200)).collect();
    for response in &before {
        assert_eq!(response["ranked_by"]["adapter_version"], Value::Null);
    }
    let wanted = before
        .iter()
        .map(|r| ids(r).last().unwrap().clone())
        .collect();
    (scratch, server, before, wanted)
}

/// Searches each query `rounds` times and clicks its wanted photo wherever it is.
fn click_wanted(server: &Server, wanted: &[String], rounds: usize) {
    for _ in 0..rounds {
        for (query, photo) in QUERIES.iter().zip(wanted) {
            let response = server.search(query, 200);
            let (status, body) = server.post_json(
                &format!(
                    "/api/search/{}/clicks",
                    response["query_id"].as_str().unwrap()
                ),
                json!({"rank": rank_of(&response, photo)}),
            );
            assert_eq!(status, 200, "{body}");
        }
    }
}

#[test]
fn clicks_train_an_adapter_the_running_server_ranks_with() {
    let (_scratch, server, _, wanted) = household(&["--learn-every-clicks", "10"]);
    click_wanted(&server, &wanted, 15);

    // Training runs in the background; the server picks the adapter up without a restart.
    let deadline = Instant::now() + Duration::from_secs(120);
    let learned = loop {
        let response = server.search(QUERIES[0], 200);
        if response["ranked_by"]["adapter_version"].as_u64().is_some() {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "no adapter was trained: {response}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let total = fixture_count();
    let after: Vec<usize> = QUERIES
        .iter()
        .zip(&wanted)
        .map(|(query, photo)| rank_of(&server.search(query, 200), photo))
        .collect();
    assert!(
        after.iter().all(|rank| *rank < total),
        "every wanted photo moved up from rank {total}: {after:?}"
    );
    // The search log says which adapter ranked a search; status and metrics say how it scored.
    let (status, logged) = server.get(&format!(
        "/api/search/{}",
        learned["query_id"].as_str().unwrap()
    ));
    assert_eq!(status, 200);
    assert_eq!(
        logged["adapter_version"], learned["ranked_by"]["adapter_version"],
        "{logged}"
    );
    let status = server.status();
    assert!(
        status["query_adapter"]["version"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(status["training_runs"]["shipped"].as_u64().unwrap() >= 1);
    let metrics = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics
            .contains("glimpse_training_runs_total{learner=\"query_adapter\",outcome=\"shipped\"}")
    );
    assert!(
        metrics.contains(
            "glimpse_adapter_held_out_score{learner=\"query_adapter\",ranker=\"trained\",\
             measure=\"mrr\"}"
        ),
        "{metrics}"
    );
}

#[test]
fn adapters_are_listed_switched_and_trained_through_the_api() {
    // No training by click count here: every run is asked for.
    let (_scratch, server, before, wanted) = household(&["--learn-every-clicks", "1000000"]);
    click_wanted(&server, &wanted, 10);
    let (status, outcome) = server.post_json("/api/adapters/train", json!({}));
    assert_eq!(status, 401, "training needs the token: {outcome}");
    let (status, outcome) = server.post_authorised("/api/adapters/train", json!({}));
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["outcome"], "shipped", "{outcome}");
    assert_eq!(outcome["version"], 1);
    assert_eq!(
        server.search(QUERIES[0], 200)["ranked_by"]["adapter_version"],
        1
    );
    let (status, listed) = server.get("/api/adapters");
    assert_eq!(status, 200);
    assert_eq!(listed["active"], 1, "{listed}");
    assert_eq!(listed["learning"], true);
    assert_eq!(listed["versions"][0]["version"], 1);

    // Off: the encoder's own ranking is back at the next search; on again.
    let off = |version: Value| {
        server.send_authorised("PUT", "/api/adapters/active", json!({ "version": version }))
    };
    let (status, listed) = off(Value::Null);
    assert_eq!(
        (status, listed["active"].clone()),
        (200, Value::Null),
        "{listed}"
    );
    let plain = server.search(QUERIES[0], 200);
    assert_eq!(plain["ranked_by"]["adapter_version"], Value::Null);
    assert_eq!(ids(&plain), ids(&before[0]));
    assert_eq!(off(json!(1)).0, 200);
    assert_eq!(
        server.search(QUERIES[0], 200)["ranked_by"]["adapter_version"],
        1
    );
    // A version never trained, or a body without one, changes nothing.
    let (status, body) = off(json!(7));
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.send_authorised("PUT", "/api/adapters/active", json!({}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        server.search(QUERIES[0], 200)["ranked_by"]["adapter_version"],
        1
    );

    // A second run keeps its adapter only if it does at least as well; the first stays listed
    // and can be activated again.
    let (status, outcome) = server.post_authorised("/api/adapters/train", json!({}));
    assert_eq!(status, 200, "{outcome}");
    let (_, listed) = server.get("/api/adapters");
    match outcome["outcome"].as_str().unwrap() {
        "shipped" => assert_eq!(listed["active"], 2, "{listed}"),
        "rejected" => assert_eq!(listed["active"], 1, "{listed}"),
        other => panic!("unexpected outcome {other}: {outcome}"),
    }
    assert_eq!(off(json!(1)).0, 200);
    assert_eq!(
        server.search(QUERIES[0], 200)["ranked_by"]["adapter_version"],
        1
    );
}

#[test]
fn exploration_swaps_a_share_of_first_pages_and_logs_it_the_same_all_day() {
    let (_scratch, server, _, _) = household(&["--explore-share", "0.5"]);
    let mut swapped = 0;
    for n in 0..20 {
        let query = format!("photo number {n}");
        let response = server.search(&query, 10);
        let (status, logged) = server.get(&format!(
            "/api/search/{}",
            response["query_id"].as_str().unwrap()
        ));
        assert_eq!(status, 200);
        let scores: Vec<f64> = response["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect();
        match logged["swapped_with"].as_u64() {
            // The would-be first result is shown at rank k, and rank k's first.
            Some(rank) => {
                swapped += 1;
                let k = rank as usize - 1;
                assert!(scores[0] <= scores[k], "{scores:?}");
                let mut ranked = scores.clone();
                ranked.swap(0, k);
                assert!(ranked.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
            }
            None => assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}"),
        }
        // The same search shows the same order (all day).
        assert_eq!(ids(&server.search(&query, 10)), ids(&response));
    }
    assert!((1..20).contains(&swapped), "{swapped} of 20 swapped");
}

#[test]
fn the_reranker_learns_from_the_same_clicks_with_glimpse_train() {
    let (scratch, server, _, wanted) = household(&["--no-learning"]);
    click_wanted(&server, &wanted, 2);
    server.stop();
    let adapter = scratch.path().join("reranker-adapter");
    let data = scratch.path().join("data");
    let output = common::train_reranker(&[
        "--from-clicks".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--output".as_ref(),
        adapter.as_os_str(),
        "--steps".as_ref(),
        "10".as_ref(),
        "--image-tokens".as_ref(),
        "16".as_ref(),
        "--json".as_ref(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    // Six searches with a click each: the clicked photo, and those passed over above it.
    let pairs =
        report["training_pairs"].as_u64().unwrap() + report["held_out_pairs"].as_u64().unwrap();
    assert!(pairs > 6, "{report}");
    assert!(adapter.join("adapter_model.safetensors").is_file());

    // A data directory without clicks says so, and writes nothing.
    let empty = tempfile::tempdir().unwrap();
    let output = common::train_reranker(&[
        "--from-clicks".as_ref(),
        "--data-dir".as_ref(),
        empty.path().as_os_str(),
        "--output".as_ref(),
        empty.path().join("adapter").as_os_str(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no clicks"), "{stderr}");
    assert!(!empty.path().join("adapter").exists());
    assert!(
        !empty.path().join("settings.json").exists(),
        "it was left as it was"
    );
}

/// The first results' reranker probabilities of a search, in order.
fn rerank_probabilities(response: &Value) -> Vec<f64> {
    response["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["rerank_probability"].as_f64())
        .collect()
}

#[test]
fn the_vision_reranker_learns_from_clicks_and_its_versions_are_switched() {
    let vlm = common::reference().join("checkpoints/qwen2-vl-tiny");
    // Four photos, all of which the reranker looks at.
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    std::fs::create_dir_all(&library).unwrap();
    let photos = ["checkerboard.png", "noise.png", "solid.png", "gradient.png"];
    for photo in photos {
        std::fs::copy(
            common::reference().join("images").join(photo),
            library.join(photo),
        )
        .unwrap();
    }
    let (scratch, server, _, wanted) = household_over(
        scratch,
        photos.len(),
        &[
            "--reranker",
            "vlm",
            "--reranker-model",
            vlm.to_str().unwrap(),
            "--rerank-candidates",
            "4",
            "--rerank-image-tokens",
            "16",
            // No training by click count here: every run is asked for.
            "--learn-every-clicks",
            "1000000",
            "--reranker-training-steps",
            "60",
            "--reranker-learning-rate",
            "0.01",
            "--reranker-training-image-tokens",
            "16",
        ],
    );
    let base = server.search(QUERIES[0], 12);
    assert_eq!(base["ranked_by"]["reranker"], "qwen2-vl", "{base}");
    let before = rerank_probabilities(&base);
    assert_eq!(before.len(), 4, "the reranker scores the first four");
    let (status, listed) = server.get("/api/reranker-adapters");
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["learning"], true, "{listed}");
    assert_eq!(listed["active"], Value::Null, "{listed}");
    click_wanted(&server, &wanted, 8);

    // A run trains on the clicks, beats the model alone on held-out searches, and is stored,
    // recorded and put on the running reranker.
    let (status, outcome) = server.post_authorised("/api/reranker-adapters/train", json!({}));
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["outcome"], "shipped", "{outcome}");
    assert_eq!(outcome["version"], 1, "{outcome}");
    let evaluation = &outcome["evaluation"];
    assert!(
        evaluation["trained"]["ndcg_at_10"].as_f64().unwrap()
            >= evaluation["previous"]["ndcg_at_10"].as_f64().unwrap(),
        "{outcome}"
    );
    let (_, listed) = server.get("/api/reranker-adapters");
    assert_eq!(listed["active"], 1, "{listed}");
    assert_eq!(listed["versions"].as_array().unwrap().len(), 1, "{listed}");
    let adapted = server.search(QUERIES[0], 12);
    assert_eq!(
        adapted["ranked_by"]["reranker"], "qwen2-vl+adapter:1",
        "the response says which adapter reranked it: {adapted}"
    );
    let trained = rerank_probabilities(&adapted);
    assert_ne!(trained, before, "the adapter reranks at once");
    let stored = std::fs::read_dir(scratch.path().join("data/blobs/reranker-adapters"))
        .unwrap()
        .count();
    assert_eq!(stored, 1, "the adapter's files are in the blob store");

    // The model alone again, then the trained version again: each reranks the next search.
    let activate = |version: Value| {
        server.send_authorised(
            "PUT",
            "/api/reranker-adapters/active",
            json!({ "version": version }),
        )
    };
    let (status, body) = activate(json!(null));
    assert_eq!(status, 200, "{body}");
    let alone = server.search(QUERIES[0], 12);
    assert_eq!(alone["ranked_by"]["reranker"], "qwen2-vl", "{alone}");
    assert_eq!(rerank_probabilities(&alone), before);
    let (status, body) = activate(json!(1));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rerank_probabilities(&server.search(QUERIES[0], 12)),
        trained
    );
    let (status, body) = activate(json!(9));
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/api/reranker-adapters"),
        "{body}"
    );
    let status = server.status();
    assert_eq!(status["reranker_adapter"]["version"], 1, "{status}");
    assert_eq!(status["reranker_training_runs"]["shipped"], 1, "{status}");
    let metrics = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("glimpse_adapter_version{learner=\"reranker\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("glimpse_training_runs_total{learner=\"reranker\",outcome=\"shipped\"} 1"),
        "{metrics}"
    );

    // With the server stopped, the command line lists and switches the same versions.
    server.stop();
    let adapters = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_glimpse"))
            .arg("adapters")
            .arg("--data-dir")
            .arg(scratch.path().join("data"))
            .args(["--reranker", "--reranker-model", vlm.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(
        adapters(&["list"]).starts_with("*    1"),
        "the active one is marked"
    );
    adapters(&["activate", "none"]);
    assert!(adapters(&["list"]).starts_with("     1"), "none is active");
}
