//! Learning from clicks in `glimpse serve`, as a household uses it: searches and clicks over HTTP
//! train a query adapter in the background, and the running server ranks with it at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on broken fixtures

mod common;

use std::time::{Duration, Instant};

use common::{Server, fixture_count, fixture_library, ids};
use serde_json::{Value, json};

/// The rank (from 1) of `photo` in a search response.
fn rank_of(response: &Value, photo: &str) -> usize {
    ids(response).iter().position(|id| id == photo).unwrap() + 1
}

#[test]
fn clicks_train_an_adapter_the_running_server_ranks_with() {
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    fixture_library(&library);
    let server = Server::start(
        Some(&library),
        &scratch.path().join("data"),
        &["--learn-every-clicks", "10", "--explore-share", "0"],
    );
    let total = fixture_count();
    server.wait_indexed(total as u64);
    let queries = ["a red sled", "beach at dusk", "a cat asleep on a sofa"];
    // The photo this household always wants for each query is the one the encoder ranks last.
    let before: Vec<Value> = queries.iter().map(|q| server.search(q, 200)).collect();
    for response in &before {
        assert_eq!(response["ranked_by"]["adapter_version"], Value::Null);
    }
    let wanted: Vec<String> = before
        .iter()
        .map(|r| ids(r).last().unwrap().clone())
        .collect();

    for _ in 0..15 {
        for (query, photo) in queries.iter().zip(&wanted) {
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

    // Training runs in the background; the server picks the adapter up without a restart.
    let deadline = Instant::now() + Duration::from_secs(120);
    let learned = loop {
        let response = server.search(queries[0], 200);
        if response["ranked_by"]["adapter_version"] == 1 {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "no adapter was trained: {response}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let after: Vec<usize> = queries
        .iter()
        .zip(&wanted)
        .map(|(query, photo)| rank_of(&server.search(query, 200), photo))
        .collect();
    assert!(
        after.iter().all(|rank| *rank < total),
        "every wanted photo moved up from rank {total}: {after:?}"
    );
    // The search log says which adapter ranked a search.
    let (status, logged) = server.get(&format!(
        "/api/search/{}",
        learned["query_id"].as_str().unwrap()
    ));
    assert_eq!(status, 200);
    assert_eq!(logged["adapter_version"], 1, "{logged}");
}
