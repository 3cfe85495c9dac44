//! The API says what it accepts: `glimpse serve`'s OpenAPI document is checked against the
//! server by schemathesis (tests/api), with the token, on a small indexed library.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on broken fixtures

#[path = "common/api_check.rs"]
mod api_check;
mod common;

use common::{Server, fixture_library};

#[test]
fn schemathesis_finds_no_disagreement_between_the_server_and_its_document() {
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    fixture_library(&library);
    let server = Server::start(Some(&library), &scratch.path().join("data"), &[]);
    server.wait_indexed(common::fixture_count() as u64);
    api_check::check_against_its_document(&server.base, &server.token, &[]);
}

#[test]
fn with_private_reads_the_document_asks_for_the_token_on_every_read() {
    let scratch = tempfile::tempdir().unwrap();
    let server = Server::start(None, &scratch.path().join("data"), &["--protect-reads"]);
    let (status, document) = server.get("/api/openapi.json");
    assert_eq!(status, 200, "the document is open: it holds no data");
    let operation = |path: &str, method: &str| document["paths"][path][method].clone();
    for (path, method) in [
        ("/api/photos", "get"),
        ("/api/search", "get"),
        ("/api/search", "post"),
        ("/api/status", "get"),
        ("/api/photos", "post"),
    ] {
        let described = operation(path, method);
        assert_eq!(
            described["security"][0]["bearer"],
            serde_json::json!([]),
            "{method} {path}"
        );
        assert!(described["responses"]["401"].is_object(), "{method} {path}");
    }
    for (path, method) in [
        ("/healthz", "get"),
        ("/api/openapi.json", "get"),
        ("/", "get"),
    ] {
        assert_eq!(
            operation(path, method)["security"],
            serde_json::json!([]),
            "{method} {path}"
        );
    }
}
