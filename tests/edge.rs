//! The edge functions end to end: the built Spin components (functions/, wasm32-wasip2) in the
//! test host (tests/spin_host), configured by the real spin.toml at the repository root, against
//! the machine's Postgres, the s3s-fs S3 server, a `glimpse worker` process and — when
//! `QDRANT_URL` is set — Qdrant.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../glimpse/tests/common/api_check.rs"]
mod api_check;
#[path = "../glimpse/tests/common/browser.rs"]
mod browser;
mod bucket_cors;
#[path = "../glimpse/tests/common/managed.rs"]
#[allow(dead_code)]
mod managed;
mod spin_host;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use glimpse_core::photo::{PhotoId, THUMBNAIL_SIZE};
use glimpse_core::ports::{BlobStore, Catalog};
use glimpse_worker::encoder::ImageTextEncoder;
use serde_json::{Value, json};

use self::managed::{
    S3_ACCESS_KEY, S3_SECRET_KEY, S3Server, postgres_server, run_sql, run_sql_from_drop, unique,
};
use self::spin_host::SpinHost;

const API_TOKEN: &str = "edge-api-token-for-the-tests-0123";
const WORKER_TOKEN: &str = "edge-worker-token-for-the-tests-01";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest() -> PathBuf {
    repository().join("spin.toml")
}

fn model() -> String {
    repository()
        .join("tests/reference/checkpoints/clip-odd")
        .display()
        .to_string()
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(repository().join("tests/reference/images").join(name)).unwrap()
}

/// The `glimpse` binary `cargo test --workspace` builds beside this test.
fn glimpse_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("glimpse");
    assert!(
        path.exists(),
        "{} is missing: run cargo test --workspace",
        path.display()
    );
    path
}

/// A 24-bit BMP of `side`×`side` random pixels: incompressible, so its size is what it says
/// (3 bytes a pixel).
fn noise_bmp(side: u32) -> Vec<u8> {
    let row = (side * 3).div_ceil(4) * 4;
    let pixels = row * side;
    let mut bytes = Vec::with_capacity(54 + pixels as usize);
    bytes.extend(b"BM");
    bytes.extend((54 + pixels).to_le_bytes());
    bytes.extend([0; 4]);
    bytes.extend(54u32.to_le_bytes());
    bytes.extend(40u32.to_le_bytes());
    bytes.extend(side.to_le_bytes());
    bytes.extend(side.to_le_bytes());
    bytes.extend(1u16.to_le_bytes());
    bytes.extend(24u16.to_le_bytes());
    bytes.extend(0u32.to_le_bytes());
    bytes.extend(pixels.to_le_bytes());
    bytes.extend(2835u32.to_le_bytes());
    bytes.extend(2835u32.to_le_bytes());
    bytes.extend([0; 8]);
    let mut body = vec![0; pixels as usize];
    getrandom::fill(&mut body).unwrap();
    bytes.extend(body);
    bytes
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A database of the test's own on the machine's Postgres, at this build's schema, dropped at the
/// end.
struct Database {
    name: String,
}

impl Database {
    async fn new() -> Self {
        let name = unique("glimpse_edge");
        run_sql(&postgres_server(), &format!("CREATE DATABASE {name}")).await;
        let database = Self { name };
        glimpse_worker::adapters::postgres::connect(&database.url(), 1)
            .await
            .unwrap();
        database
    }

    fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port=5432 user=postgres dbname={} sslmode=disable",
            self.name
        )
    }

    async fn rows(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        let rows = client.query(sql, &[]).await.unwrap();
        drop(client);
        let _ = driver.await;
        rows
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        run_sql_from_drop(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// The backends of one test and the variables the edge gets for them.
struct Backends {
    database: Database,
    s3: S3Server,
    bucket: String,
}

impl Backends {
    async fn start() -> Self {
        let database = Database::new().await;
        let s3 = S3Server::start();
        let mut settings = s3.settings();
        settings.bucket = unique("edge").replace('_', "-");
        s3.store(&settings).await;
        Self {
            database,
            s3,
            bucket: settings.bucket,
        }
    }

    /// The Spin variables (by name, as `SPIN_VARIABLE_*` would give them); the worker and
    /// reranker on closed ports unless changed.
    fn variables(&self) -> HashMap<String, String> {
        let closed = format!("http://127.0.0.1:{}", closed_port());
        [
            ("api_token", API_TOKEN.to_owned()),
            ("max_upload_mb", "1".to_owned()),
            ("database_host", "127.0.0.1:5432".to_owned()),
            ("database_name", self.database.name.clone()),
            ("database_user", "postgres".to_owned()),
            ("database_sslmode", "disable".to_owned()),
            // Trust authentication ignores it; it still goes through the address.
            ("database_password", "not-needed: trust".to_owned()),
            ("s3_endpoint", self.s3.endpoint()),
            ("s3_bucket", self.bucket.clone()),
            ("s3_access_key_id", S3_ACCESS_KEY.to_owned()),
            ("s3_secret_access_key", S3_SECRET_KEY.to_owned()),
            ("qdrant_url", format!("http://127.0.0.1:{}", closed_port())),
            ("qdrant_api_key", String::new()),
            ("worker_url", closed.clone()),
            ("rerank_url", closed),
            ("worker_token", WORKER_TOKEN.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The edge over these backends: the components of spin.toml in the test host.
    async fn edge(&self) -> SpinHost {
        SpinHost::start(&manifest(), &self.variables())
            .await
            .unwrap()
    }

    /// The test's bucket, as the worker pool writes to it.
    async fn storage(&self) -> glimpse_worker::adapters::s3::S3BlobStore {
        let mut settings = self.s3.settings();
        settings.bucket = self.bucket.clone();
        self.s3.store(&settings).await
    }

    /// Registers the test model's encoder, as a worker of it does on start.
    async fn register_encoder(&self) {
        let catalog = glimpse_worker::adapters::postgres::connect(&self.database.url(), 1)
            .await
            .unwrap();
        let model = glimpse_worker::hub::resolve(&model()).unwrap();
        let encoder = glimpse_worker::encoder::ClipEncoder::load(
            &model.directory,
            model.id,
            glimpse_worker::encoder::Precision::Auto,
        )
        .unwrap();
        catalog
            .register_encoder(encoder.id(), encoder.dimension())
            .await
            .unwrap();
    }
}

/// An HTTP answer: status, headers, body as JSON (or a string).
struct Answer {
    status: u16,
    header: HashMap<String, String>,
    body: Value,
}

fn call(request: ureq::Request, body: Option<&[u8]>) -> Answer {
    let result = match body {
        Some(bytes) => request.send_bytes(bytes),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{error}"),
    };
    let status = response.status();
    let header = response
        .headers_names()
        .into_iter()
        .filter_map(|name| Some((name.clone(), response.header(&name)?.to_owned())))
        .collect();
    let text = response.into_string().unwrap_or_default();
    Answer {
        status,
        header,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

fn get(base: &str, path: &str) -> Answer {
    call(agent().get(&format!("{base}{path}")), None)
}

fn upload(base: &str, bytes: &[u8], token: Option<&str>) -> Answer {
    let mut request = agent().post(&format!("{base}/api/photos"));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    call(request, Some(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_through_the_edge_lands_in_storage_and_the_queue() {
    let backends = Backends::start().await;
    let host = backends.edge().await;
    let base = host.url();
    let bytes = image("gradient.jpg");
    let base_for = base.clone();
    let (refused, added, again) = tokio::task::spawn_blocking(move || {
        (
            upload(&base_for, &bytes, None),
            upload(&base_for, &bytes, Some(API_TOKEN)),
            upload(&base_for, &bytes, Some(API_TOKEN)),
        )
    })
    .await
    .unwrap();
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "token_required");
    assert_eq!(added.status, 202, "{}", added.body);
    assert_eq!(added.body["created"], true);
    let id = added.body["id"].as_str().unwrap().to_owned();
    assert_eq!(again.status, 200, "identical bytes: {}", again.body);
    assert_eq!(again.body["id"], id.as_str());

    // The photo row and its feature job, once.
    let rows = backends
        .database
        .rows("SELECT p.status, j.state FROM photos p JOIN feature_jobs j ON j.photo_id = p.id")
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "pending");
    assert_eq!(rows[0].get::<_, String>(1), "queued");

    // The photo, and its original through a presigned URL the edge signed.
    let (photo, original, fetched) = tokio::task::spawn_blocking({
        let base = base.clone();
        let id = id.clone();
        move || {
            let photo = get(&base, &format!("/api/photos/{id}"));
            let original = get(&base, &format!("/api/photos/{id}/original"));
            let location = original.header.get("location").cloned().unwrap_or_default();
            let fetched = agent().get(&location).call().unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut fetched.into_reader(), &mut bytes).unwrap();
            (photo, original, bytes)
        }
    })
    .await
    .unwrap();
    assert_eq!(photo.status, 200);
    assert_eq!(photo.body["status"], "pending");
    assert_eq!(original.status, 302);
    assert!(original.header["location"].contains("X-Amz-Signature="));
    assert_eq!(fetched, image("gradient.jpg"));
}

/// `POST /api/uploads` with a declaration (as JSON).
fn start_staged(base: &str, declaration: &Value) -> Answer {
    call(
        agent()
            .post(&format!("{base}/api/uploads"))
            .set("Authorization", &format!("Bearer {API_TOKEN}"))
            .set("Content-Type", "application/json"),
        Some(declaration.to_string().as_bytes()),
    )
}

/// What storage answered a PUT to a presigned URL: its status, or [`CUT_OFF`] when it closed the
/// connection while the body was still being sent (a server refusing a request before reading
/// its body may do either, depending on timing).
fn put_status(url: &str, content_type: &str, bytes: &[u8]) -> u16 {
    match agent()
        .put(url)
        .set("Content-Type", content_type)
        .send_bytes(bytes)
    {
        Ok(response) => response.status(),
        Err(ureq::Error::Status(status, _)) => status,
        Err(ureq::Error::Transport(cut)) if cut.kind() == ureq::ErrorKind::Io => CUT_OFF,
        Err(error) => panic!("{error}"),
    }
}

/// [`put_status`] when storage cut the connection off.
const CUT_OFF: u16 = 0;

#[tokio::test(flavor = "multi_thread")]
async fn a_large_original_goes_straight_to_storage_bound_to_its_declared_size_and_type() {
    let backends = Backends::start().await;
    let host = backends.edge().await;
    let base = host.url();
    let original = image("noise.png");
    let outcome = tokio::task::spawn_blocking(move || {
        let started = start_staged(
            &base,
            &json!({"bytes": original.len(), "content_type": "image/png"}),
        );
        let url = started.body["put_url"].as_str().unwrap().to_owned();
        let complete = started.body["complete_url"].as_str().unwrap().to_owned();
        let completion = |path: &str| {
            call(
                agent()
                    .post(&format!("{base}{path}"))
                    .set("Authorization", &format!("Bearer {API_TOKEN}")),
                Some(b""),
            )
        };
        let mut longer = original.clone();
        longer.push(0);
        let outcome = vec![
            ("started", started.status, started.body.clone()),
            (
                "put of more bytes than declared",
                put_status(&url, "image/png", &longer),
                Value::Null,
            ),
            (
                "put of another type than declared",
                put_status(&url, "image/jpeg", &original),
                Value::Null,
            ),
            {
                let early = completion(&complete);
                ("completed before any put", early.status, early.body)
            },
            (
                "put as declared",
                put_status(&url, "image/png", &original),
                Value::Null,
            ),
            {
                let done = completion(&format!("{complete}?album=Trips"));
                ("completed", done.status, done.body)
            },
            {
                let again = completion(&complete);
                ("completed again", again.status, again.body)
            },
            {
                let unknown = completion(&format!("/api/uploads/{}", "ab".repeat(16)));
                ("an upload never started", unknown.status, unknown.body)
            },
            {
                let huge = start_staged(
                    &base,
                    &json!({"bytes": 3u64 << 40, "content_type": "image/png"}),
                );
                ("declared over max_staged_upload_mb", huge.status, huge.body)
            },
            {
                let text = start_staged(&base, &json!({"bytes": 10, "content_type": "text/plain"}));
                ("declared as text", text.status, text.body)
            },
            {
                let bare = call(
                    agent()
                        .post(&format!("{base}/api/uploads"))
                        .set("Authorization", &format!("Bearer {API_TOKEN}")),
                    Some(b""),
                );
                ("no declaration", bare.status, bare.body)
            },
            {
                let albums = get(&base, "/api/albums");
                ("albums", albums.status, albums.body)
            },
        ];
        outcome
    })
    .await
    .unwrap();
    // A refused PUT is a 403, or the connection cut off under the body: refused either way (and
    // the completion that follows finds nothing stored).
    let statuses: Vec<(&str, u16)> = outcome
        .iter()
        .map(|(what, status, _)| (*what, *status))
        .map(
            |(what, status)| match (what.starts_with("put of"), status) {
                (true, CUT_OFF) => (what, 403),
                _ => (what, status),
            },
        )
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("started", 201),
            ("put of more bytes than declared", 403),
            ("put of another type than declared", 403),
            ("completed before any put", 404),
            ("put as declared", 200),
            ("completed", 202),
            ("completed again", 404),
            ("an upload never started", 404),
            ("declared over max_staged_upload_mb", 400),
            ("declared as text", 400),
            ("no declaration", 400),
            ("albums", 200),
        ],
        "{outcome:#?}"
    );
    assert_eq!(
        outcome[11].2["albums"],
        json!([{"name": "Trips", "photos": 1}]),
        "{}",
        outcome[11].2
    );
    assert_eq!(outcome[0].2["put_headers"]["Content-Type"], "image/png");
    assert!(
        outcome[8].2["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("largest upload")),
        "{}",
        outcome[8].2
    );
    let rows = backends
        .database
        .rows("SELECT origin_key, album, bytes FROM photos")
        .await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].get::<_, String>(0).starts_with("staged/"));
    assert_eq!(
        rows[0].get::<_, Option<String>>(1).as_deref(),
        Some("Trips")
    );
    assert_eq!(rows[0].get::<_, i64>(2), image("noise.png").len() as i64);
    let staged = backends
        .database
        .rows("SELECT id FROM staged_uploads")
        .await;
    assert!(staged.is_empty(), "completed uploads are no longer staged");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thumbnail_the_pool_made_is_served_from_storage_and_a_missing_one_says_why() {
    let backends = Backends::start().await;
    let host = backends.edge().await;
    let base = host.url();
    let original = image("gradient.jpg");
    let (id, missing) = tokio::task::spawn_blocking({
        let base = base.clone();
        let original = original.clone();
        move || {
            let id = upload(&base, &original, Some(API_TOKEN)).body["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let missing = get(&base, &format!("/api/photos/{id}/thumbnail"));
            (id, missing)
        }
    })
    .await
    .unwrap();
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(missing.body["error"]["code"], "thumbnail_not_made");
    let message = missing.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("waits for the worker pool"), "{message}");
    assert!(
        message.contains(&format!("/api/photos/{id}/original")),
        "{message}"
    );

    // The pool's thumbnail, made from the decode indexing does and kept where indexing keeps it.
    let decoded = glimpse_worker::encoder::decode_rgb(&original, None).unwrap();
    let jpeg = glimpse_worker::encoder::thumbnail_jpeg(&decoded, THUMBNAIL_SIZE).unwrap();
    let key = id.parse::<PhotoId>().unwrap().thumbnail_key();
    backends
        .storage()
        .await
        .put(&key, jpeg.clone())
        .await
        .unwrap();
    let served = tokio::task::spawn_blocking(move || {
        let response = agent()
            .get(&format!("{base}/api/photos/{id}/thumbnail"))
            .call()
            .unwrap();
        let headers = ["content-type", "cache-control"]
            .map(|name| response.header(name).unwrap_or_default().to_owned());
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes).unwrap();
        (headers, bytes)
    })
    .await
    .unwrap();
    assert_eq!(served.0[0], "image/jpeg");
    assert!(served.0[1].contains("immutable"), "{:?}", served.0);
    assert!(served.1 == jpeg, "the thumbnail is the one in storage");
}

/// The web page through the page component, as a person meets the edge while the worker pool
/// sleeps: an empty library, an upload through the page that waits for the pool (its tile says
/// so), a search answered with why it cannot run yet and when to try again; the page's headers
/// (policy naming the storage of originals, revalidation) and no script error or blocked load.
#[tokio::test(flavor = "multi_thread")]
async fn the_web_page_at_the_edge_takes_uploads_while_the_pool_sleeps_in_a_real_browser() {
    let backends = Backends::start().await;
    backends.register_encoder().await;
    // The page reaches storage through the bucket's CORS rule, as in production.
    let bucket = bucket_cors::BucketCors::start(
        backends
            .s3
            .endpoint()
            .trim_start_matches("http://")
            .to_owned(),
    )
    .await;
    let mut variables = backends.variables();
    variables.insert("s3_endpoint".to_owned(), bucket.endpoint());
    let host = SpinHost::start(&manifest(), &variables).await.unwrap();
    let base = host.url();
    bucket.admit(&base);
    let storage = bucket.endpoint();
    let scratch = tempfile::tempdir().unwrap();
    let good = scratch.path().join("sled.png");
    std::fs::write(&good, image("noise.png")).unwrap();
    // Over the test edge's max_upload_mb (1): the page sends it straight to storage.
    let large = scratch.path().join("panorama.bmp");
    let large_bytes = noise_bmp(640);
    std::fs::write(&large, &large_bytes).unwrap();
    tokio::task::spawn_blocking(move || {
        browser::run_browser_tests(
            "edge.test.mjs",
            "edge-web-screenshots",
            &[
                ("GLIMPSE_URL", base),
                ("GLIMPSE_TOKEN", API_TOKEN.to_owned()),
                ("STORAGE_ORIGIN", storage),
                ("UPLOAD_GOOD", good.display().to_string()),
                ("UPLOAD_LARGE", large.display().to_string()),
            ],
        );
    })
    .await
    .unwrap();
    let queued = backends
        .database
        .rows("SELECT count(*) FROM photos WHERE status = 'pending'")
        .await;
    assert_eq!(
        queued[0].get::<_, i64>(0),
        2,
        "both uploads wait for the pool"
    );
    let storage = backends.storage().await;
    let photo = backends
        .database
        .rows("SELECT origin_key FROM photos WHERE format = 'bmp'")
        .await;
    let kept = storage.get(&photo[0].get::<_, String>(0)).await.unwrap();
    assert!(
        kept == Some(large_bytes),
        "the large original is in storage as the page sent it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_worker_pool_away_a_new_query_gets_503_and_retry_after() {
    let backends = Backends::start().await;
    backends.register_encoder().await;
    let host = backends.edge().await;
    let base = host.url();
    let answer =
        tokio::task::spawn_blocking(move || get(&base, "/api/search?q=kids+on+a+red+sled"))
            .await
            .unwrap();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.body["error"]["code"], "unavailable");
    assert_eq!(
        answer.header.get("retry-after").map(String::as_str),
        Some("30")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_search_that_cannot_succeed_is_a_400_even_before_a_worker_registered_an_encoder() {
    let backends = Backends::start().await;
    let host = backends.edge().await;
    let base = host.url();
    let (bad, good) = tokio::task::spawn_blocking(move || {
        (
            get(&base, "/api/search?q=album:"),
            get(&base, "/api/search?q=kids+on+a+red+sled"),
        )
    })
    .await
    .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.body["error"]["code"], "invalid_query");
    assert_eq!(good.status, 503, "{}", good.body);
    assert!(
        good.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no worker has registered an encoder"),
        "{}",
        good.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_refuses_a_manifest_whose_secrets_are_not_given() {
    let backends = Backends::start().await;
    let mut missing = backends.variables();
    missing.remove("worker_token");
    let refused = SpinHost::start(&manifest(), &missing).await;
    assert!(
        refused.err().unwrap().to_string().contains("worker_token"),
        "a required secret without a value must stop the host, as it stops `spin up`"
    );
    let host = backends.edge().await;
    let base = host.url();
    let healthy = tokio::task::spawn_blocking(move || get(&base, "/healthz"))
        .await
        .unwrap();
    assert_eq!(healthy.status, 200);
}

/// The address a started `glimpse` process says it serves on (its line starting with `banner`);
/// the rest of its output is read and dropped.
fn serving_address(child: &mut Child, banner: &str) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let base = loop {
        let line = lines
            .next()
            .expect("the process exited before serving")
            .unwrap();
        if let Some(rest) = line.strip_prefix(banner) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    base
}

/// The embedded server, for comparing its answers with the edge's.
struct Embedded {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
}

impl Embedded {
    fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(glimpse_binary())
            .args(["serve", "--model", &model(), "--listen", "127.0.0.1:0"])
            .args(["--token", API_TOKEN, "--max-upload-mb", "1", "--data-dir"])
            .arg(data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let base = serving_address(&mut child, "Glimpse is serving ");
        Self {
            child,
            base,
            _data: data,
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One bad request and the answer both shapes owe it.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    token: Option<&'static str>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn cases() -> Vec<Case> {
    let case = |what, method, path: &str, status, code| Case {
        what,
        method,
        path: path.to_owned(),
        token: None,
        content_type: None,
        body: Vec::new(),
        status,
        code,
    };
    let unknown_search = "0123456789abcdef".repeat(2);
    vec![
        case(
            "search without words",
            "GET",
            "/api/search",
            400,
            "bad_request",
        ),
        case(
            "a query that does not parse",
            "GET",
            "/api/search?q=album:",
            400,
            "invalid_query",
        ),
        case(
            "top_k of 0",
            "GET",
            "/api/search?q=sled&top_k=0",
            400,
            "bad_request",
        ),
        case(
            "a photo id that is not one",
            "GET",
            "/api/photos/zzz",
            400,
            "bad_request",
        ),
        case(
            "an unknown photo",
            "GET",
            "/api/photos/00000000000000ff",
            404,
            "not_found",
        ),
        case(
            "similar to a bad id",
            "GET",
            "/api/photos/zzz/similar",
            400,
            "bad_request",
        ),
        case(
            "a thumbnail of a bad id",
            "GET",
            "/api/photos/zzz/thumbnail",
            400,
            "bad_request",
        ),
        case(
            "a thumbnail of an unknown photo",
            "GET",
            "/api/photos/00000000000000ff/thumbnail",
            404,
            "not_found",
        ),
        case(
            "a file the web page does not have",
            "GET",
            "/assets/nothing.js",
            404,
            "not_found",
        ),
        case(
            "a write to the web page",
            "POST",
            "/",
            405,
            "method_not_allowed",
        ),
        case(
            "a log of a bad search id",
            "GET",
            "/api/search/xyz",
            400,
            "bad_request",
        ),
        case(
            "an unknown search's log",
            "GET",
            &format!("/api/search/{unknown_search}"),
            404,
            "not_found",
        ),
        Case {
            content_type: Some("application/json"),
            body: br#"{"rank": 1}"#.to_vec(),
            ..case(
                "a click on an unknown search",
                "POST",
                &format!("/api/search/{unknown_search}/clicks"),
                404,
                "not_found",
            )
        },
        Case {
            content_type: Some("application/json"),
            body: b"{rank".to_vec(),
            ..case(
                "a click that is not JSON",
                "POST",
                &format!("/api/search/{unknown_search}/clicks"),
                400,
                "bad_request",
            )
        },
        case(
            "an upload without the token",
            "POST",
            "/api/photos",
            401,
            "token_required",
        ),
        Case {
            token: Some("not-the-token"),
            ..case(
                "an upload with a wrong token",
                "POST",
                "/api/photos",
                401,
                "bad_token",
            )
        },
        Case {
            token: Some(API_TOKEN),
            content_type: Some("application/octet-stream"),
            body: b"just some text, not an image".to_vec(),
            ..case(
                "an upload that is not an image",
                "POST",
                "/api/photos",
                415,
                "unsupported_media_type",
            )
        },
        Case {
            token: Some(API_TOKEN),
            content_type: Some("application/octet-stream"),
            body: vec![0xff; 1024 * 1024 + 1],
            ..case(
                "an upload over the limit",
                "POST",
                "/api/photos",
                413,
                "too_large",
            )
        },
        Case {
            token: Some(API_TOKEN),
            ..case(
                "deleting an unknown photo",
                "DELETE",
                "/api/photos/00000000000000ff",
                404,
                "not_found",
            )
        },
        case(
            "retrying a photo without the token",
            "POST",
            "/api/photos/00000000000000ff/retry",
            401,
            "token_required",
        ),
        Case {
            token: Some(API_TOKEN),
            ..case(
                "retrying an unknown photo",
                "POST",
                "/api/photos/00000000000000ff/retry",
                404,
                "not_found",
            )
        },
        Case {
            token: Some(API_TOKEN),
            ..case(
                "retrying a bad photo id",
                "POST",
                "/api/photos/zzz/retry",
                400,
                "bad_request",
            )
        },
        Case {
            content_type: Some("application/json"),
            body: format!(r#"{{"query": "sled", "pad": "{}"}}"#, "x".repeat(65 * 1024))
                .into_bytes(),
            ..case(
                "a search body over 64 KB",
                "POST",
                "/api/search",
                413,
                "too_large",
            )
        },
        Case {
            content_type: Some("application/json"),
            body: format!(r#"{{"query": "{}"}}"#, vec!["-x"; 300].join(" ")).into_bytes(),
            ..case(
                "a query of 300 terms",
                "POST",
                "/api/search",
                400,
                "invalid_query",
            )
        },
        Case {
            content_type: Some("application/json"),
            body: br#"{"rank": 1, "photo": "x"}"#.to_vec(),
            ..case(
                "a click with a field the API does not know",
                "POST",
                &format!("/api/search/{unknown_search}/clicks"),
                400,
                "bad_request",
            )
        },
        Case {
            content_type: Some("text/plain"),
            body: br#"{"query": "sled"}"#.to_vec(),
            ..case(
                "a search body that does not say it is JSON",
                "POST",
                "/api/search",
                400,
                "bad_request",
            )
        },
        case(
            "a method the path does not answer",
            "PUT",
            "/api/search",
            405,
            "method_not_allowed",
        ),
        Case {
            token: Some(API_TOKEN),
            content_type: Some("multipart/form-data; boundary=b"),
            body: b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\none\r\n--b\r\n\
                    Content-Disposition: form-data; name=\"file\"\r\n\r\ntwo\r\n--b--\r\n"
                .to_vec(),
            ..case(
                "an upload form with two files",
                "POST",
                "/api/photos",
                400,
                "bad_request",
            )
        },
        Case {
            token: Some(API_TOKEN),
            content_type: Some("multipart/form-data; boundary=b"),
            body:
                b"--b\r\nContent-Disposition: form-data; name=\"album\"\r\n\r\nTrips\r\n--b--\r\n"
                    .to_vec(),
            ..case(
                "an upload form without a file",
                "POST",
                "/api/photos",
                400,
                "bad_request",
            )
        },
    ]
}

/// Whether a case's message names where the shape keeps its token or its upload limit (they
/// differ by shape); every other answer is the same body from both.
fn worded_by_shape(case: &Case) -> bool {
    matches!(case.code, "token_required" | "bad_token")
        || (case.code == "too_large" && case.path == "/api/photos")
}

fn run_case(base: &str, case: &Case) -> Answer {
    let mut request = agent().request(case.method, &format!("{base}{}", case.path));
    if let Some(token) = case.token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    if let Some(content_type) = case.content_type {
        request = request.set("Content-Type", content_type);
    }
    call(
        request,
        (case.method != "GET").then_some(case.body.as_slice()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_same_4xx_from_the_edge_as_from_the_embedded_server() {
    let backends = Backends::start().await;
    backends.register_encoder().await;
    let host = backends.edge().await;
    let edge = host.url();
    tokio::task::spawn_blocking(move || {
        let embedded = Embedded::start();
        for case in cases() {
            let mut bodies = Vec::new();
            for (shape, base) in [
                ("edge", edge.as_str()),
                ("embedded", embedded.base.as_str()),
            ] {
                let answer = run_case(base, &case);
                bodies.push(answer.body.clone());
                assert_eq!(
                    (answer.status, answer.body["error"]["code"].as_str()),
                    (case.status, Some(case.code)),
                    "{shape}: {}: {}",
                    case.what,
                    answer.body
                );
                assert!(
                    answer.body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.len() > 10),
                    "{shape}: {}: a message a person can act on",
                    case.what
                );
            }
            if !worded_by_shape(&case) {
                assert_eq!(bodies[0], bodies[1], "{}: the same answer", case.what);
            }
        }
    })
    .await
    .unwrap();
}

/// A `glimpse worker` with the managed backends (so it indexes) and its internal API.
struct Worker {
    child: Child,
    base: String,
}

/// The worker settings that have it rerank with the Qwen2-VL test checkpoint (at a small pixel
/// budget), as a pool with a GPU reranks with the real model.
fn vision_reranker() -> Vec<(&'static str, String)> {
    vec![
        (
            "GLIMPSE__RERANKER__MODEL",
            repository()
                .join("tests/reference/checkpoints/qwen2-vl-tiny")
                .display()
                .to_string(),
        ),
        ("GLIMPSE__RERANKER__IMAGE_TOKENS", "16".to_owned()),
    ]
}

impl Worker {
    /// A worker listening on `listen` with `extra` settings (environment variables) besides the
    /// backends'.
    fn start(
        backends: &Backends,
        qdrant: &glimpse_worker::adapters::QdrantSettings,
        listen: &str,
        extra: &[(&str, String)],
    ) -> Self {
        let mut child = Command::new(glimpse_binary())
            .args(["worker", "--model", &model(), "--listen", listen])
            .env("GLIMPSE__WORKER__TOKEN", WORKER_TOKEN)
            .env("GLIMPSE__WORKER__IDLE_POLL_MS", "100")
            .env("GLIMPSE__DATABASE__URL", backends.database.url())
            .env("GLIMPSE__S3__ENDPOINT", backends.s3.endpoint())
            .env("GLIMPSE__S3__BUCKET", &backends.bucket)
            .env("GLIMPSE__S3__ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("GLIMPSE__S3__SECRET_ACCESS_KEY", S3_SECRET_KEY)
            .env("GLIMPSE__QDRANT__URL", &qdrant.url)
            .env(
                "GLIMPSE__QDRANT__COLLECTION_PREFIX",
                &qdrant.collection_prefix,
            )
            .envs(extra.iter().map(|(key, value)| (*key, value)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let base = serving_address(&mut child, "Glimpse worker is serving ");
        Self { child, base }
    }

    /// The worker's own `/v1/rerank` answer for `query` over `photos` (as the edge returned
    /// them): the reranker's name and each photo's probability.
    fn rerank(&self, query: &str, photos: &[Value]) -> (String, HashMap<String, f64>) {
        let candidates: Vec<Value> = photos
            .iter()
            .map(|photo| json!({"photo": photo, "score": 1.0}))
            .collect();
        let answer = call(
            agent()
                .post(&format!("{}/v1/rerank", self.base))
                .set("Authorization", &format!("Bearer {WORKER_TOKEN}"))
                .set("Content-Type", "application/json"),
            Some(
                json!({"query": query, "candidates": candidates})
                    .to_string()
                    .as_bytes(),
            ),
        );
        assert_eq!(answer.status, 200, "{}", answer.body);
        let probabilities = photos
            .iter()
            .zip(answer.body["probabilities"].as_array().unwrap())
            .map(|(photo, p)| {
                (
                    photo["id"].as_str().unwrap().to_owned(),
                    p.as_f64().unwrap(),
                )
            })
            .collect();
        (
            answer.body["reranker"].as_str().unwrap().to_owned(),
            probabilities,
        )
    }

    /// Points the edge's `variables` at this worker (encoder and reranker) and at `qdrant`.
    fn serve_the_edge(
        &self,
        qdrant: &glimpse_worker::adapters::QdrantSettings,
        variables: &mut HashMap<String, String>,
    ) {
        variables.insert("worker_url".to_owned(), self.base.clone());
        variables.insert("rerank_url".to_owned(), self.base.clone());
        variables.insert("qdrant_url".to_owned(), qdrant_rest(&qdrant.url));
        variables.insert(
            "qdrant_collection_prefix".to_owned(),
            qdrant.collection_prefix.clone(),
        );
    }
}

impl Worker {
    /// Stops the worker as a pool scaling in does (SIGTERM: it finishes what it holds) and
    /// checks that it exited cleanly.
    fn stop(mut self) {
        let terminated = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(terminated.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "the worker exited with {exit} on SIGTERM");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A search for "a photo" through a new edge host with `variables`, and how long it took.
async fn search_a_photo(variables: &HashMap<String, String>) -> (Answer, Duration) {
    let host = SpinHost::start(&manifest(), variables).await.unwrap();
    tokio::task::block_in_place(|| {
        let started = Instant::now();
        let answer = get(&host.url(), "/api/search?q=a+photo&top_k=3");
        (answer, started.elapsed())
    })
}

/// Waits (two minutes at most) until the edge says each of `ids` is indexed.
fn wait_until_indexed(base: &str, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ids
        .iter()
        .any(|id| get(base, &format!("/api/photos/{id}")).body["status"] != "indexed")
    {
        assert!(
            Instant::now() < deadline,
            "the worker did not index the uploads"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Uploads `name` from the test images through the edge; its id.
fn upload_image(base: &str, name: &str) -> String {
    let answer = upload(base, &image(name), Some(API_TOKEN));
    assert_eq!(answer.status, 202, "{name}: {}", answer.body);
    answer.body["id"].as_str().unwrap().to_owned()
}

/// Qdrant's REST URL beside the gRPC one of `QDRANT_URL` (6334 → 6333, or `QDRANT_REST_URL`).
fn qdrant_rest(grpc: &str) -> String {
    std::env::var("QDRANT_REST_URL").unwrap_or_else(|_| grpc.replace(":6334", ":6333"))
}

/// How long the edge's searches wait for the reranker in the flow test: the test checkpoint
/// answers well inside it on a loaded CI machine, and the test holds it to that.
const RERANK_BUDGET_MS: u64 = 5_000;

#[tokio::test(flavor = "multi_thread")]
async fn upload_index_search_rerank_click_through_the_edge_and_degrade_without_the_pool() {
    let Some(qdrant) = managed::qdrant("upload_index_search_rerank_click_through_the_edge") else {
        return;
    };
    let backends = Backends::start().await;
    let worker = Worker::start(&backends, &qdrant, "127.0.0.1:0", &vision_reranker());
    let mut variables = backends.variables();
    worker.serve_the_edge(&qdrant, &mut variables);
    variables.insert("rerank_budget_ms".to_owned(), RERANK_BUDGET_MS.to_string());
    let host = SpinHost::start(&manifest(), &variables).await.unwrap();
    let base = host.url();

    let (ids, search, click) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            let ids: Vec<String> = ["gradient.jpg", "noise.png", "checkerboard.png"]
                .iter()
                .map(|name| upload_image(&base, name))
                .collect();
            wait_until_indexed(&base, &ids);
            let search = get(&base, "/api/search?q=a+photo&top_k=3");
            let query_id = search.body["query_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let click = call(
                agent()
                    .post(&format!("{base}/api/search/{query_id}/clicks"))
                    .set("Content-Type", "application/json"),
                Some(br#"{"rank": 1}"#),
            );
            (ids, search, click)
        }
    })
    .await
    .unwrap();
    assert_eq!(search.status, 200, "{}", search.body);
    let results = search.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(
        results
            .iter()
            .all(|r| ids.contains(&r["photo"]["id"].as_str().unwrap().to_owned()))
    );

    // Reranked by the pool's vision-language reranker, within the budget: every result carries
    // the probability the worker itself gives that photo for that query.
    assert_eq!(
        search.body["rerank_fallback"],
        Value::Null,
        "{}",
        search.body
    );
    assert_eq!(
        search.body["ranked_by"]["reranker"], "qwen2-vl",
        "{}",
        search.body
    );
    let rerank_ms = search.body["timings"]["rerank_ms"].as_f64().unwrap();
    assert!(rerank_ms <= RERANK_BUDGET_MS as f64, "{rerank_ms} ms");
    let photos: Vec<Value> = results.iter().map(|r| r["photo"].clone()).collect();
    let (reranker, expected) = tokio::task::block_in_place(|| worker.rerank("a photo", &photos));
    assert_eq!(reranker, "qwen2-vl");
    for result in results {
        let id = result["photo"]["id"].as_str().unwrap();
        let probability = result["rerank_probability"].as_f64().unwrap();
        assert!(
            (probability - expected[id]).abs() < 1e-4,
            "{id}: {probability} vs {}",
            expected[id]
        );
    }
    assert_eq!(click.status, 200, "{}", click.body);
    let clicked = backends
        .database
        .rows("SELECT rank FROM search_results WHERE clicked")
        .await;
    assert_eq!(clicked.len(), 1);
    let logged = backends
        .database
        .rows("SELECT rank FROM search_results WHERE rerank_probability IS NOT NULL")
        .await;
    assert_eq!(logged.len(), 3, "the search log keeps the probabilities");

    // The reranker too slow for the budget: retrieval order at once, the reason logged.
    variables.insert("rerank_budget_ms".to_owned(), "1".to_owned());
    let (too_slow, _) = search_a_photo(&variables).await;
    assert_eq!(too_slow.status, 200, "{}", too_slow.body);
    assert_eq!(too_slow.body["results"].as_array().unwrap().len(), 3);
    let reason = too_slow.body["rerank_fallback"].as_str().unwrap();
    assert!(reason.contains("rerank_budget_ms"), "{reason}");
    assert_eq!(too_slow.body["ranked_by"]["reranker"], Value::Null);
    assert!(
        too_slow.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["rerank_probability"].is_null()),
        "{}",
        too_slow.body
    );

    // The reranker silent: retrieval order within the (default) budget, the fallback logged.
    variables.remove("rerank_budget_ms");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    variables.insert(
        "rerank_url".to_owned(),
        format!("http://{}", silent.local_addr().unwrap()),
    );
    let (fallback, took) = search_a_photo(&variables).await;
    assert_eq!(fallback.status, 200, "{}", fallback.body);
    assert!(took < Duration::from_secs(5), "{took:?}");
    let reason = fallback.body["rerank_fallback"].as_str().unwrap();
    assert!(reason.contains("rerank_budget_ms"), "{reason}");
    let logged = backends
        .database
        .rows("SELECT rerank_fallback FROM searches WHERE rerank_fallback IS NOT NULL")
        .await;
    assert_eq!(logged.len(), 2, "both fallbacks are in the search log");
    drop(silent);

    // The pool away: a query seen before is answered from the cache, a new one gets 503.
    drop(worker);
    variables.insert(
        "worker_url".to_owned(),
        format!("http://127.0.0.1:{}", closed_port()),
    );
    let host = SpinHost::start(&manifest(), &variables).await.unwrap();
    let base = host.url();
    let (repeated, new) = tokio::task::spawn_blocking(move || {
        (
            get(&base, "/api/search?q=a+photo&top_k=3"),
            get(&base, "/api/search?q=something+never+asked"),
        )
    })
    .await
    .unwrap();
    assert_eq!(repeated.status, 200, "{}", repeated.body);
    assert_eq!(repeated.body["results"].as_array().unwrap().len(), 3);
    assert_eq!(new.status, 503, "{}", new.body);
}

/// The pool scaled to zero and back with real processes, the edge unchanged throughout: while no
/// worker runs, uploads are accepted and wait (the pending count says how many, which is what
/// wakes the pool) and a search asked before still answers; a worker started at the pool's
/// address drains the queue; stopped as the pool scales in (SIGTERM), it finishes and exits; no
/// photo is lost.
#[tokio::test(flavor = "multi_thread")]
async fn the_pool_sleeps_wakes_drains_and_sleeps_again_without_losing_an_upload() {
    let Some(qdrant) = managed::qdrant("the_pool_sleeps_wakes_drains_and_sleeps_again") else {
        return;
    };
    let backends = Backends::start().await;
    let awake = Worker::start(&backends, &qdrant, "127.0.0.1:0", &[]);
    let pool_address = awake.base.trim_start_matches("http://").to_owned();
    let mut variables = backends.variables();
    awake.serve_the_edge(&qdrant, &mut variables);
    let host = SpinHost::start(&manifest(), &variables).await.unwrap();
    let base = host.url();
    let search = |base: &str| get(base, "/api/search?q=a+photo&top_k=10");
    let status = |base: &str| get(base, "/api/status").body["photos"].clone();

    let (first, before) = tokio::task::block_in_place(|| {
        let first = upload_image(&base, "gradient.jpg");
        wait_until_indexed(&base, std::slice::from_ref(&first));
        (first, search(&base))
    });
    assert_eq!(before.status, 200, "{}", before.body);
    assert_eq!(before.body["results"].as_array().unwrap().len(), 1);
    awake.stop();

    // Asleep: uploads wait, counted; the search asked before answers from the indexed photo;
    // a new one says when to come back.
    let (queued, asleep, repeated, new) = tokio::task::block_in_place(|| {
        let queued: Vec<String> = ["noise.png", "checkerboard.png"]
            .iter()
            .map(|name| upload_image(&base, name))
            .collect();
        let new = get(&base, "/api/search?q=something+never+asked");
        (queued, status(&base), search(&base), new)
    });
    assert_eq!(asleep["pending"], 2, "{asleep}");
    assert_eq!(asleep["indexed"], 1, "{asleep}");
    assert_eq!(repeated.status, 200, "{}", repeated.body);
    let shown: Vec<&str> = repeated.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["photo"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(shown, [first.as_str()]);
    assert_eq!(new.status, 503, "{}", new.body);
    assert!(new.header.contains_key("retry-after"));

    // Awake again at the same address: the queue drains.
    let woken = Worker::start(&backends, &qdrant, &pool_address, &[]);
    let all: Vec<String> = std::iter::once(first).chain(queued).collect();
    let drained = tokio::task::block_in_place(|| {
        wait_until_indexed(&base, &all);
        status(&base)
    });
    assert_eq!(drained["pending"], 0, "{drained}");
    woken.stop();

    // Asleep again: every photo is indexed, found and kept as uploaded.
    let (after, found, originals) = tokio::task::block_in_place(|| {
        let originals: Vec<Vec<u8>> = all
            .iter()
            .map(|id| {
                let original = get(&base, &format!("/api/photos/{id}/original"));
                let location = &original.header["location"];
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(
                    &mut agent().get(location).call().unwrap().into_reader(),
                    &mut bytes,
                )
                .unwrap();
                bytes
            })
            .collect();
        (status(&base), search(&base), originals)
    });
    assert_eq!(
        (after["photos"].as_u64(), after["indexed"].as_u64()),
        (Some(3), Some(3)),
        "{after}"
    );
    assert_eq!(found.status, 200, "{}", found.body);
    let mut found: Vec<&str> = found.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["photo"]["id"].as_str().unwrap())
        .collect();
    found.sort_unstable();
    let mut expected: Vec<&str> = all.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(found, expected);
    for (original, name) in originals
        .iter()
        .zip(["gradient.jpg", "noise.png", "checkerboard.png"])
    {
        assert!(*original == image(name), "{name} came back changed");
    }
}

/// The operations that need the vector index (Qdrant) and the worker pool.
const INDEX_OPERATIONS: [&str; 4] = [
    "get_api_search",
    "post_api_search",
    "get_api_photos_id_similar",
    "delete_api_photos_id",
];

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_disagreement_between_the_edge_and_its_document() {
    let backends = Backends::start().await;
    let mut variables = backends.variables();
    let qdrant = managed::qdrant(
        "schemathesis against the edge's searches and deletions (the other operations run)",
    );
    let worker = qdrant.as_ref().map(|qdrant| {
        let worker = Worker::start(&backends, qdrant, "127.0.0.1:0", &[]);
        worker.serve_the_edge(qdrant, &mut variables);
        worker
    });
    let host = SpinHost::start(&manifest(), &variables).await.unwrap();
    let base = host.url();
    let options: Vec<&str> = if worker.is_some() {
        Vec::new()
    } else {
        INDEX_OPERATIONS
            .iter()
            .flat_map(|id| ["--exclude-operation-id", id])
            .collect()
    };
    tokio::task::spawn_blocking(move || {
        api_check::check_against_its_document(&base, API_TOKEN, &options);
    })
    .await
    .unwrap();
    drop(worker);
}
