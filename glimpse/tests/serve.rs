//! `glimpse serve` end to end over HTTP, as a user runs it: a library folder, the small test
//! checkpoint, real SQLite and qdrant-edge under a temporary data directory.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on broken fixtures

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, fixture_count, fixture_library, ids, reference, response, serve_fixtures};
use serde_json::{Value, json};

#[test]
fn indexes_a_library_and_answers_searches_with_filters_negation_examples_and_clicks() {
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    fixture_library(&library);
    let server = Server::start(Some(&library), &scratch.path().join("data"), &[]);
    let total = fixture_count();
    let status = server.wait_indexed(total as u64);
    assert_eq!(status["photos"]["indexed"], total);
    assert_eq!(status["index_vectors"], total);
    assert_eq!(
        status["last_scan"]["skipped"], 1,
        "the text file is counted and skipped"
    );
    // What the server holds, against the default budget of 2 GB.
    let memory = &status["memory"];
    assert_eq!(memory["budget"], 2u64 << 30, "{memory}");
    let resident = memory["resident"].as_u64().unwrap();
    assert!(
        resident > 0 && memory["peak"].as_u64().unwrap() >= resident,
        "{memory}"
    );

    // Ranked results with stage timings, best first.
    let all = server.search("a red sled", 200);
    let results = all["results"].as_array().unwrap();
    assert_eq!(results.len(), total);
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert_eq!(results[0]["rank"], 1);
    assert!(all["timings"]["total_ms"].as_f64().unwrap() > 0.0);

    // GET and POST agree.
    let (status, by_get) = server.get("/api/search?q=a%20red%20sled&top_k=200");
    assert_eq!(status, 200);
    assert_eq!(ids(&by_get), ids(&all));

    // Pages: offsets continue the same ranking with absolute ranks, and clicks name them.
    let mut paged = Vec::new();
    for offset in (0..total).step_by(4) {
        let (status, page) = server.post_json(
            "/api/search",
            json!({"query": "a red sled", "top_k": 4, "offset": offset}),
        );
        assert_eq!(status, 200, "{page}");
        let ranks: Vec<u64> = page["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rank"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> =
            (offset as u64 + 1..=(offset as u64 + 4).min(total as u64)).collect();
        assert_eq!(ranks, expected);
        paged.extend(ids(&page));
        if offset == 4 {
            let clicked = format!("/api/search/{}/clicks", page["query_id"].as_str().unwrap());
            assert_eq!(server.post_json(&clicked, json!({"rank": 6})).0, 200);
            assert_eq!(
                server.post_json(&clicked, json!({"rank": 1})).0,
                404,
                "not on this page"
            );
        }
    }
    assert_eq!(paged, ids(&all));
    // Results go 1000 deep: a page reaching past that stops there, and no page starts beyond.
    let (status, last) = server.get("/api/search?q=sled&top_k=200&offset=999");
    assert_eq!(status, 200, "{last}");
    assert!(last["results"].as_array().unwrap().len() <= 1);
    let (status, too_deep) = server.get("/api/search?q=sled&top_k=20&offset=1000");
    assert_eq!(status, 400);
    assert!(
        too_deep["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000 deep")
    );

    // Browsing: filters only, newest first, page by page; the albums with their counts.
    let (status, page) = server.get("/api/photos?limit=5");
    assert_eq!(status, 200);
    assert_eq!(page["photos"].as_array().unwrap().len(), 5);
    let mut browsed = Vec::new();
    let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
    browsed.extend(page["photos"].as_array().unwrap().iter().cloned());
    while let Some(next) = cursor {
        let (status, page) = server.get(&format!("/api/photos?limit=5&cursor={next}"));
        assert_eq!(status, 200, "{page}");
        browsed.extend(page["photos"].as_array().unwrap().iter().cloned());
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(browsed.len(), total);
    let dates: Vec<i64> = browsed
        .iter()
        .map(|p| p["dated_at"].as_i64().unwrap())
        .collect();
    assert!(dates.windows(2).all(|w| w[0] >= w[1]), "{dates:?}");
    let (_, albums) = server.get("/api/albums");
    let albums = albums["albums"].as_array().unwrap().clone();
    let (_, trips_page) = server.get("/api/photos?q=album:trips&limit=200");
    let trips_count = trips_page["photos"].as_array().unwrap().len();
    assert!(trips_count > 0);
    assert_eq!(
        albums,
        vec![
            json!({"name": "Home", "photos": total - trips_count}),
            json!({"name": "Trips", "photos": trips_count}),
        ]
    );
    let (status, refused) = server.get("/api/photos?q=red+sled");
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["code"], "invalid_query");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("filters only")
    );
    assert_eq!(server.get("/api/photos?cursor=garbage").0, 400);
    assert_eq!(server.get("/api/photos?limit=0").0, 400);
    let (status, filters_only) = server.get("/api/search?q=album:Trips");
    assert_eq!(status, 400);
    assert!(
        filters_only["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET /api/photos")
    );

    // Filters.
    let trips = server.search("a red sled album:trips", 200);
    assert!(!ids(&trips).is_empty());
    assert!(
        trips["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["photo"]["album"] == "Trips")
    );
    assert_eq!(
        ids(&trips).len() + ids(&server.search("a red sled album:Home", 200)).len(),
        total
    );
    assert!(ids(&server.search("a red sled after:2100", 200)).is_empty());
    assert_eq!(
        ids(&server.search("a red sled before:2100-01-01", 200)).len(),
        total
    );
    assert!(ids(&server.search("a red sled camera:canon", 200)).is_empty());

    // A negative term alone ranks by dissimilarity: every score is the positive term's, negated.
    let positive_response = server.search("golden retriever", 200);
    let positive = ids(&positive_response);
    let negative = server.search("-\"golden retriever\"", 200);
    let score_of = |response: &Value, id: &str| {
        response["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["photo"]["id"] == id)
            .map(|r| r["score"].as_f64().unwrap())
            .unwrap()
    };
    for id in &positive {
        let (p, n) = (score_of(&positive_response, id), score_of(&negative, id));
        assert!((p + n).abs() < 1e-4, "{id}: {p} vs {n}");
    }
    assert_eq!(ids(&negative).last(), positive.first());
    // Subtracting a term changes the order; the weight scales its effect.
    let plain = server.search("a red sled", 200);
    let minus = server.search("a red sled -\"golden retriever\"", 200);
    assert_ne!(ids(&plain), ids(&minus));

    // Image by example: the example itself is left out; /similar is the same query.
    let example = positive[0].clone();
    let like = server.search(&format!("like:{example}"), 5);
    assert!(!ids(&like).contains(&example));
    let (status, similar) = server.get(&format!("/api/photos/{example}/similar?top_k=5"));
    assert_eq!(status, 200);
    assert_eq!(ids(&similar), ids(&like));
    let mixed = server.search(&format!("a red sled like:{example}"), 5);
    assert_eq!(ids(&mixed).len(), 5);
    let threshold = server.post_json(
        "/api/search",
        json!({"query": "a red sled", "top_k": 200, "min_score": 0.5}),
    );
    assert!(
        threshold.1["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["score"].as_f64().unwrap() >= 0.5)
    );

    // A click is recorded with its rank, for real results only.
    let query_id = all["query_id"].as_str().unwrap();
    let (status, clicked) = server.post_json(
        &format!("/api/search/{query_id}/clicks"),
        json!({"rank": 2}),
    );
    assert_eq!(status, 200, "{clicked}");
    assert_eq!(clicked["photo_id"], results[1]["photo"]["id"]);
    let (status, _) = server.post_json(
        &format!("/api/search/{query_id}/clicks"),
        json!({"rank": 999}),
    );
    assert_eq!(status, 404);
    let (status, _) = server.post_json(
        &format!("/api/search/{}/clicks", "ab".repeat(16)),
        json!({"rank": 1}),
    );
    assert_eq!(status, 404);
    let (status, log) = server.get(&format!("/api/search/{query_id}"));
    assert_eq!(status, 200);
    assert_eq!(log["text"], "a red sled");
    let logged = log["results"].as_array().unwrap();
    assert_eq!(logged.len(), total);
    assert!(logged[1]["clicked"].as_bool().unwrap());
    assert!(logged.iter().filter(|r| r["clicked"] == true).count() == 1);

    // Photos, originals, thumbnails, stats, metrics, the OpenAPI document.
    let (status, photo) = server.get(&format!("/api/photos/{example}"));
    assert_eq!(status, 200);
    assert_eq!(photo["status"], "indexed");
    let original = ureq::get(&server.url(&format!("/api/photos/{example}/original")))
        .call()
        .unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut original.into_reader(), &mut bytes).unwrap();
    assert_eq!(bytes.len() as u64, photo["bytes"].as_u64().unwrap());
    let thumbnail = ureq::get(&server.url(&format!("/api/photos/{example}/thumbnail")))
        .call()
        .unwrap();
    assert_eq!(thumbnail.content_type(), "image/jpeg");
    let (_, stats) = server.get("/api/stats");
    assert!(stats["stages"]["total"]["samples"].as_u64().unwrap() >= 10);
    assert!(stats["stages"]["embed"]["p95_ms"].as_f64().unwrap() > 0.0);
    let metrics = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(metrics.contains(&format!("glimpse_photos{{status=\"indexed\"}} {total}")));
    assert!(metrics.contains("glimpse_clicks_total 2"));
    // A query seen before skips the text tower: its text comes from the query cache.
    let counter = |name: &str| {
        let metrics = ureq::get(&server.url("/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} is not in /metrics"))
    };
    let (hits, misses) = (
        counter("glimpse_query_cache_hits_total"),
        counter("glimpse_query_cache_misses_total"),
    );
    assert!(hits > 0, "\"a red sled\" was searched several times");
    assert_eq!(ids(&server.search("a red sled", 200)), ids(&plain));
    assert_eq!(
        (
            counter("glimpse_query_cache_hits_total"),
            counter("glimpse_query_cache_misses_total")
        ),
        (hits + 1, misses)
    );
    assert_eq!(counter("glimpse_memory_budget_bytes"), 2 << 30);
    assert!(counter("process_resident_memory_bytes") > 0);
    let (_, openapi) = server.get("/api/openapi.json");
    for path in [
        "/api/albums",
        "/api/photos",
        "/api/photos/{id}",
        "/api/photos/{id}/original",
        "/api/photos/{id}/thumbnail",
        "/api/photos/{id}/similar",
        "/api/search",
        "/api/search/{id}",
        "/api/search/{id}/clicks",
        "/api/status",
        "/api/stats",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            openapi["paths"][path].is_object(),
            "{path} is not documented"
        );
    }

    // The watcher notices a new file and a deleted one.
    let extra = scratch.path().join("extra.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 99]))
        .save(&extra)
        .unwrap();
    std::fs::copy(&extra, library.join("Trips/new.png")).unwrap();
    server.wait_indexed(total as u64 + 1);
    std::fs::remove_file(library.join("Trips/new.png")).unwrap();
    let status = server.wait_indexed(total as u64);
    assert_eq!(status["index_vectors"], total);
}

/// Announces a body of `size` bytes over a raw connection without sending it, and returns what
/// the server answers: it must refuse from the announced length, before any of the body arrives
/// (a client library sending the body would see the connection close under its write).
fn oversized_upload(server: &Server, size: usize) -> String {
    use std::io::{Read, Write};
    let address = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /api/photos HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: image/jpeg\r\nContent-Length: {size}\r\n\r\n",
        server.token
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(read) = stream.read(&mut buffer) {
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}}") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A PNG header declaring 50000 × 50000 pixels, with a valid CRC and no pixel data.
fn bomb_png() -> Vec<u8> {
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&50_000u32.to_be_bytes());
    chunk.extend_from_slice(&50_000u32.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&chunk);
    png.extend_from_slice(&crc32fast::hash(&chunk).to_be_bytes());
    png
}

#[test]
fn bad_input_gets_a_clear_error_and_loses_nothing() {
    let (_scratch, server) = serve_fixtures(&["--max-upload-mb", "1"]);
    let total = fixture_count() as u64;
    server.wait_indexed(total);
    let token = server.token.clone();
    let good = std::fs::read(reference().join("images/noise.png")).unwrap();
    let mut fresh = good.clone();
    fresh.extend_from_slice(b"trailing bytes make a new file");

    // No token, wrong token.
    let (status, body) = server.upload(&fresh, None);
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    assert_eq!(server.upload(&fresh, Some("wrong")).0, 401);
    let (status, _) = response(ureq::delete(&server.url("/api/photos/0000000000000000")).call());
    assert_eq!(status, 401);

    // Not an image, a decompression bomb, an oversized body.
    let (status, body) = server.upload(b"%PDF-1.7 not a photo", Some(&token));
    assert_eq!(status, 415, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JPEG, PNG")
    );
    let (status, body) = server.upload(&bomb_png(), Some(&token));
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("50000×50000")
    );
    // Far over the limit: refused from the announced length, without sending the body.
    let answer = oversized_upload(&server, 64 * 1024 * 1024);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("1 MB limit"), "{answer}");

    // A malformed query, an unknown photo, a bad id, a bad top_k.
    let (status, body) = server.get("/api/search?q=beach%20-%22tour%20bus");
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_query");
    assert_eq!(body["error"]["position"], 7);
    assert!(body["error"]["hint"].as_str().unwrap().contains("quote"));
    assert_eq!(server.get("/api/photos/0123456789abcdef").0, 404);
    assert_eq!(server.get("/api/photos/not-an-id").0, 400);
    assert_eq!(server.get("/api/search?q=sled&top_k=201").0, 400);
    assert_eq!(server.get("/api/search?q=like:0123456789abcdef").0, 404);

    // A truncated image is accepted, then its job fails with the decoder's error on the photo.
    let jpeg = std::fs::read(reference().join("images/noise.jpg")).unwrap();
    let truncated = &jpeg[..jpeg.len() / 2];
    let (status, body) = server.upload(truncated, Some(&token));
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let photo = loop {
        let (_, photo) = server.get(&format!("/api/photos/{id}"));
        if photo["status"] != "pending" {
            break photo;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(photo["status"], "failed");
    assert!(
        photo["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot be decoded"),
        "{photo}"
    );

    // A good upload, then the same bytes again (multipart this time): the existing id.
    let (status, body) = server.upload(&fresh, Some(&token));
    assert_eq!(status, 202);
    let uploaded = body["id"].as_str().unwrap().to_owned();
    let boundary = "glimpse-test-boundary";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(&fresh);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (status, body) = response(
        ureq::post(&server.url("/api/photos"))
            .set("Authorization", &format!("Bearer {token}"))
            .set(
                "Content-Type",
                &format!("multipart/form-data; boundary={boundary}"),
            )
            .send_bytes(&form),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], uploaded.as_str());
    let status = server.wait_indexed(total + 2);
    assert_eq!(status["photos"]["failed"], 1);
    assert_eq!(
        status["index_vectors"],
        total + 1,
        "nothing stored was lost"
    );

    // Library photos are the user's files: deleting one through the API is refused.
    let library_photo = ids(&server.search("a red sled album:Trips", 1))[0].clone();
    let (status, body) = server.delete(&format!("/api/photos/{library_photo}"));
    assert_eq!(status, 409);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("library")
    );
    // Uploaded photos can be deleted.
    assert_eq!(server.delete(&format!("/api/photos/{uploaded}")).0, 204);
    assert_eq!(server.get(&format!("/api/photos/{uploaded}")).0, 404);
    let status = server.wait_indexed(total + 1);
    assert_eq!(status["index_vectors"], total);
}

#[test]
fn a_restart_keeps_photos_searches_clicks_and_the_token() {
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    fixture_library(&library);
    let data = scratch.path().join("data");
    let total = fixture_count() as u64;
    let server = Server::start(Some(&library), &data, &[]);
    server.wait_indexed(total);
    let (_, uploaded) = server.upload(&bomb_free_upload(), Some(&server.token.clone()));
    server.wait_indexed(total + 1);
    let before = server.search("a red sled", 50);
    let query_id = before["query_id"].as_str().unwrap().to_owned();
    server.post_json(
        &format!("/api/search/{query_id}/clicks"),
        json!({"rank": 1}),
    );
    let token = server.token.clone();
    server.stop();

    // The library is remembered: no --library this time.
    let server = Server::start(None, &data, &[]);
    assert_eq!(server.token, token);
    let status = server.wait_indexed(total + 1);
    assert_eq!(status["index_vectors"], total + 1);
    assert_eq!(ids(&server.search("a red sled", 50)), ids(&before));
    let (_, log) = server.get(&format!("/api/search/{query_id}"));
    assert_eq!(log["results"][0]["clicked"], true);
    assert_eq!(
        server
            .get(&format!("/api/photos/{}", uploaded["id"].as_str().unwrap()))
            .0,
        200
    );
    assert_eq!(server.data_dir, data);
}

fn bomb_free_upload() -> Vec<u8> {
    let mut png = Vec::new();
    image::RgbImage::from_fn(33, 21, |x, y| image::Rgb([x as u8 * 7, 200, y as u8 * 11]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

/// Noise JPEGs, slow enough to decode that a kill lands in the middle of indexing.
fn many_photos(root: &Path, count: u32) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..count {
        let mut state = 0x9E37_79B9u32.wrapping_mul(i + 1);
        let image = image::RgbImage::from_fn(640, 480, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
        });
        image.save(root.join(format!("photo-{i:04}.jpg"))).unwrap();
    }
}

#[test]
fn kill_during_indexing_then_restart_indexes_every_photo_exactly_once() {
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    let count = 400;
    many_photos(&library, count);
    let data = scratch.path().join("data");
    let server = Server::start(Some(&library), &data, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, status) = server.get("/api/status");
        let indexed = status["photos"]["indexed"].as_u64().unwrap();
        if indexed > 0 {
            assert!(
                indexed < u64::from(count),
                "indexing finished before the kill: {status}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "indexing never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();

    let server = Server::start(Some(&library), &data, &[]);
    let status = server.wait_indexed(u64::from(count));
    assert_eq!(status["photos"]["indexed"], count);
    assert_eq!(status["photos"]["failed"], 0);
    assert_eq!(status["index_vectors"], count);
    drop(server);
    let catalog = rusqlite::Connection::open(data.join("catalog.sqlite3")).unwrap();
    let (jobs, done, photos_with_one_job): (i64, i64, i64) = catalog
        .query_row(
            "SELECT COUNT(*), SUM(state = 'done'), \
             (SELECT COUNT(*) FROM (SELECT photo_id FROM feature_jobs GROUP BY photo_id \
              HAVING COUNT(*) = 1)) FROM feature_jobs",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (jobs, done, photos_with_one_job),
        (i64::from(count), i64::from(count), i64::from(count))
    );
}

#[test]
fn protected_reads_need_the_token_and_a_configured_token_replaces_the_generated_one() {
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    fixture_library(&library);
    let data = scratch.path().join("data");
    let server = Server::start(
        Some(&library),
        &data,
        &["--protect-reads", "--token", "my-own-secret-token"],
    );
    assert!(
        !data.join("token").exists(),
        "a configured token is not replaced by a generated one"
    );
    let (status, body) = server.get("/api/search?q=sled");
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--protect-reads")
    );
    // The page itself holds no photos: it loads, to ask for the token.
    for page in ["/", "/assets/app.js", "/assets/app.css", "/assets/icon.svg"] {
        let (status, _) = response(ureq::get(&server.url(page)).call());
        assert_eq!(status, 200, "{page}");
    }
    assert_eq!(server.get("/api/status").0, 401);
    let (status, _) = response(ureq::get(&server.url("/healthz")).call());
    assert_eq!(status, 200);
    let (status, _) = response(
        ureq::get(&server.url("/api/status"))
            .set("Authorization", "Bearer my-own-secret-token")
            .call(),
    );
    assert_eq!(status, 200);
}

/// A raw request with the given headers; the status and body of the answer.
fn raw_request(server: &Server, head: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let address = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[test]
fn other_sites_cannot_reach_the_library_or_change_it_and_short_tokens_are_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    std::fs::create_dir_all(&library).unwrap();
    std::fs::copy(
        reference().join("images/noise.png"),
        library.join("noise.png"),
    )
    .unwrap();
    let data = scratch.path().join("data");
    let server = Server::start(
        Some(&library),
        &data,
        &["--allowed-hosts", "photos.home.arpa"],
    );
    server.wait_indexed(1);
    let get = |host: &str| {
        raw_request(
            &server,
            &format!("GET /api/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    // A page on evil.example whose name resolves to this machine (DNS rebinding) is refused.
    let (status, body) = get("evil.example");
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("--allowed-hosts"), "{body}");
    let (status, _) = get("evil.example:8080");
    assert_eq!(status, 421);
    for host in [
        "localhost",
        "localhost:8080",
        "127.0.0.1:9",
        "[::1]:8080",
        "192.168.1.20",
        "photos.home.arpa",
        "PHOTOS.home.arpa:443",
    ] {
        let (status, body) = get(host);
        assert_eq!(status, 200, "{host}: {body}");
        assert!(
            body.to_ascii_lowercase()
                .contains("x-content-type-options: nosniff")
        );
        assert!(
            body.to_ascii_lowercase()
                .contains("cross-origin-resource-policy: same-origin")
        );
    }

    // A write from another site's page is refused, even with the token; the page's own go through.
    let address = server.base.trim_start_matches("http://").to_owned();
    let post = |origin: &str| {
        raw_request(
            &server,
            &format!(
                "POST /api/search HTTP/1.1\r\nHost: {address}\r\nOrigin: {origin}\r\n\
                 Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
                 Content-Length: 17\r\nConnection: close\r\n\r\n{{\"query\": \"sled\"}}",
                server.token
            ),
        )
    };
    let (status, body) = post("https://evil.example");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("another site"), "{body}");
    let (status, body) = post("null");
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(&format!("http://{address}"));
    assert_eq!(status, 200, "{body}");
    drop(server);

    // A short token, configured or in the token file, stops the start with the reason.
    for (args, file) in [(&["--token", "short"][..], None), (&[][..], Some(""))] {
        let data = scratch.path().join(format!("data-{}", args.len()));
        std::fs::create_dir_all(&data).unwrap();
        if let Some(content) = file {
            std::fs::write(data.join("token"), content).unwrap();
        }
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_glimpse"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args(["--model", &common::model(), "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("16 characters"), "{stderr}");
    }
}

#[test]
fn work_per_request_is_bounded_with_clear_answers() {
    let (_scratch, server) = serve_fixtures(&["--max-concurrent-thumbnails", "2"]);
    let total = fixture_count();
    server.wait_indexed(total as u64);

    // A JSON body over 64 KB is refused with a 413 that names the limit.
    let padding = "x".repeat(65 * 1024);
    let (status, body) = server.post_json("/api/search", json!({"query": "sled", "pad": padding}));
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("64 KB"),
        "{body}"
    );
    // A query of 300 short terms: a 400 that says where the limit was passed.
    let many = vec!["-x"; 300].join(" ");
    let (status, body) = server.post_json("/api/search", json!({ "query": many }));
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("more than 32 terms"), "{message}");
    assert!(message.contains("at character 96"), "{message}");

    // 200 thumbnail requests at once, none of them made yet (thumbnails lost from the data
    // directory are made again on request): every one answered, never more than 2 decodes at a
    // time.
    std::fs::remove_dir_all(server.data_dir.join("blobs/thumbnails")).unwrap();
    let photos = server.photos();
    let ids: Vec<String> = photos
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let requests: Vec<_> = (0..200)
            .map(|i| {
                let url = server.url(&format!("/api/photos/{}/thumbnail", ids[i % ids.len()]));
                scope.spawn(move || match ureq::get(&url).call() {
                    Ok(response) => response.status(),
                    Err(ureq::Error::Status(status, _)) => status,
                    Err(other) => panic!("{other}"),
                })
            })
            .collect();
        requests.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    let (_, stats) = server.get("/api/stats");
    let peak = stats["at_once_peak"]["thumbnail_decodes"].as_u64().unwrap();
    assert!((1..=2).contains(&peak), "{stats}");
}

fn get_bytes(server: &Server, path: &str) -> Vec<u8> {
    let reply = ureq::get(&server.url(path)).call().unwrap();
    assert_eq!(reply.content_type(), "image/jpeg", "{path}");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut reply.into_reader(), &mut bytes).unwrap();
    bytes
}

/// A smooth `width`×`height` JPEG, its colours set by `tint`.
fn smooth_jpeg(path: &Path, width: u32, height: u32, tint: u8) {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, tint])
    })
    .save(path)
    .unwrap();
}

fn mean_difference(a: &[u8], b: &[u8]) -> f64 {
    let (a, b) = (
        image::load_from_memory(a).unwrap().into_rgb8(),
        image::load_from_memory(b).unwrap().into_rgb8(),
    );
    assert_eq!(a.dimensions(), b.dimensions());
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    total as f64 / a.as_raw().len() as f64
}

/// Indexing leaves every photo's thumbnail ready, made from the decode the embedding needed:
/// showing the grid decodes no original a second time. A thumbnail lost from the data directory
/// is made again on request, alike; deleting a photo or changing its file removes the old one.
#[test]
fn thumbnails_are_made_while_indexing_and_go_with_their_photo() {
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    fixture_library(&library);
    // A camera-sized photo (thumbnails scale it down to 320 px) besides the small fixtures.
    smooth_jpeg(&library.join("Home/large.jpg"), 2400, 1600, 90);
    let server = Server::start(Some(&library), &scratch.path().join("data"), &[]);
    let total = fixture_count() as u64 + 1;
    server.wait_indexed(total);
    let stored = server.data_dir.join("blobs/thumbnails");
    let thumbnail_file = |id: &str| stored.join(format!("{id}-320.jpg"));

    let photos = server.photos();
    let mut made_while_indexing = Vec::new();
    for photo in &photos {
        let id = photo["id"].as_str().unwrap();
        let jpeg = get_bytes(&server, &format!("/api/photos/{id}/thumbnail"));
        let image = image::load_from_memory(&jpeg).unwrap();
        let longer = photo["width"]
            .as_u64()
            .unwrap()
            .max(photo["height"].as_u64().unwrap());
        assert_eq!(
            u64::from(image.width().max(image.height())),
            longer.min(320),
            "{photo}"
        );
        assert_eq!(std::fs::read(thumbnail_file(id)).unwrap(), jpeg);
        made_while_indexing.push((id.to_owned(), jpeg));
    }
    let (_, stats) = server.get("/api/stats");
    assert_eq!(
        stats["thumbnail_decodes"], 0,
        "no original decoded again: {stats}"
    );

    // Lost thumbnails are made on request, and look like the ones indexing made.
    std::fs::remove_dir_all(&stored).unwrap();
    for (id, before) in &made_while_indexing {
        let again = get_bytes(&server, &format!("/api/photos/{id}/thumbnail"));
        let difference = mean_difference(before, &again);
        assert!(difference < 4.0, "{id}: mean difference {difference}/255");
    }
    let (_, stats) = server.get("/api/stats");
    assert_eq!(stats["thumbnail_decodes"], made_while_indexing.len());

    // A deleted upload takes its thumbnail with it.
    let (status, uploaded) = server.upload(&bomb_free_upload(), Some(&server.token));
    assert_eq!(status, 202, "{uploaded}");
    let uploaded = uploaded["id"].as_str().unwrap().to_owned();
    server.wait_indexed(total + 1);
    assert!(thumbnail_file(&uploaded).exists());
    assert_eq!(server.delete(&format!("/api/photos/{uploaded}")).0, 204);
    assert!(!thumbnail_file(&uploaded).exists());

    // A library file rewritten with other pixels is another photo: the old thumbnail goes.
    let large = photos.iter().find(|p| p["width"] == 2400).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    smooth_jpeg(&library.join("Home/large.jpg"), 2400, 1600, 200);
    let report = server.scan(false);
    assert_eq!(report["changed"], 1, "{report}");
    assert!(!thumbnail_file(&large).exists());
    server.wait_indexed(total);
    let photos = server.photos();
    let rewritten = photos.iter().find(|p| p["width"] == 2400).unwrap()["id"]
        .as_str()
        .unwrap();
    assert_ne!(rewritten, large);
    assert!(thumbnail_file(rewritten).exists());
}

/// The status says how precisely the model runs, and a chosen precision is remembered in the
/// data directory like the model.
#[test]
fn status_says_what_precision_the_model_runs_in_and_remembers_the_choice() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let server = Server::start(None, &data, &["--precision", "f32"]);
    let status = server.get("/api/status").1;
    assert_eq!(status["precision"], "f32");
    assert_eq!(status["image_precision"], "f32");
    // f32 runs on the GEMM, no packed kernel.
    assert_eq!(status["kernel"], Value::Null);
    assert_eq!(status["image_kernel"], Value::Null);
    drop(server);
    let server = Server::start(None, &data, &[]);
    assert_eq!(
        server.get("/api/status").1["precision"],
        "f32",
        "not remembered"
    );
    drop(server);
    let server = Server::start(None, &data, &["--precision", "auto"]);
    let status = server.get("/api/status").1;
    for (tower, kernel) in [("precision", "kernel"), ("image_precision", "image_kernel")] {
        let (precision, kernel) = (&status[tower], &status[kernel]);
        assert!(
            precision == "bf16" || precision == "f32",
            "{tower}: {precision}"
        );
        // bf16 names the kernel it runs; f32 has none.
        assert_eq!(
            kernel.is_string(),
            precision == "bf16",
            "{kernel}: {precision}"
        );
    }
}

#[test]
fn the_vision_reranker_with_an_adapter_orders_the_first_results_and_follows_a_new_adapter() {
    let vlm = reference().join("checkpoints/qwen2-vl-tiny");
    // With a LoRA adapter written by PEFT, in a folder of its own.
    let adapters = tempfile::tempdir().unwrap();
    let adapter = adapters.path().join("qwen2-vl-tiny-lora");
    std::fs::create_dir(&adapter).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        let fixture = reference()
            .join("checkpoints/qwen2-vl-tiny-lora")
            .join(file);
        std::fs::copy(fixture, adapter.join(file)).unwrap();
    }
    let (_scratch, server) = serve_fixtures(&[
        "--reranker",
        "vlm",
        "--reranker-model",
        vlm.to_str().unwrap(),
        "--rerank-candidates",
        "4",
        "--rerank-image-tokens",
        "16",
        "--reranker-adapter",
        adapter.to_str().unwrap(),
        "--no-learning",
    ]);
    server.wait_indexed(fixture_count() as u64);
    let response = server.search("kids on a red sled", 12);
    assert_eq!(
        response["ranked_by"]["reranker"], "qwen2-vl+lora:qwen2-vl-tiny-lora",
        "{response}"
    );
    assert_eq!(response["rerank_fallback"], Value::Null, "{response}");
    let results = response["results"].as_array().unwrap();
    assert_eq!(results.len(), 12);
    // The first four carry the reranker's probability, highest first; the rest keep retrieval
    // order without one.
    let probabilities: Vec<f64> = results[..4]
        .iter()
        .map(|r| r["rerank_probability"].as_f64().unwrap())
        .collect();
    assert!(probabilities.iter().all(|p| (0.0..=1.0).contains(p)));
    assert!(
        probabilities.windows(2).all(|w| w[0] >= w[1]),
        "{probabilities:?}"
    );
    assert!(
        results[4..]
            .iter()
            .all(|r| r.get("rerank_probability").is_none_or(Value::is_null)),
        "{response}"
    );
    let scores: Vec<f64> = results[4..]
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    // A new adapter written into the folder (as `glimpse train --output` writes it) ranks the
    // next searches, without a restart.
    let probabilities_of = |response: &Value| -> Vec<f64> {
        response["results"].as_array().unwrap()[..4]
            .iter()
            .map(|r| r["rerank_probability"].as_f64().unwrap())
            .collect()
    };
    let before = probabilities_of(&response);
    let trained = adapters.path().join("trained");
    let triples = adapters.path().join("triples.jsonl");
    let lines: Vec<String> = ["solid.png", "noise.png", "checkerboard.png"]
        .iter()
        .enumerate()
        .map(|(i, file)| {
            json!({"query": "kids on a red sled", "image": reference().join("images").join(file),
                   "label": i == 0})
            .to_string()
        })
        .collect();
    std::fs::write(&triples, lines.join("\n")).unwrap();
    let output = common::train_reranker(&[
        "--triples".as_ref(),
        triples.as_os_str(),
        "--output".as_ref(),
        trained.as_os_str(),
        "--steps".as_ref(),
        "5".as_ref(),
        "--learning-rate".as_ref(),
        "0.05".as_ref(),
        "--image-tokens".as_ref(),
        "16".as_ref(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::rename(trained.join(file), adapter.join(file)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = server.search("kids on a red sled", 12);
        if probabilities_of(&after) != before {
            assert_eq!(
                after["ranked_by"]["reranker"], "qwen2-vl+lora:qwen2-vl-tiny-lora",
                "{after}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new adapter was not picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
