//! What running a flow as a Spin component costs: `GET /api/photos/{id}` in the test host (a
//! fresh instance per request, the catalog through `spin:postgres`) against the same flow called
//! natively (the worker's Postgres catalog: check the schema, read the photo, JSON), both on the
//! machine's Postgres; `/healthz` for the bare cost of an instance; the photo again over HTTP
//! through the host's server; and the component sizes.
//!
//! `cargo bench -p glimpse-tests --bench edge_overhead` after building the components
//! (`cd functions && cargo build --workspace --release`). Results: docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../glimpse/tests/common/managed.rs"]
#[allow(dead_code)]
mod managed;
#[path = "../spin_host/mod.rs"]
mod spin_host;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glimpse_core::photo::{self, NewPhotoDetails, Origin, Photo, PhotoId};
use glimpse_core::ports::Catalog;

use self::managed::{postgres_server, run_sql, unique};
use self::spin_host::SpinHost;

const REQUESTS: usize = 500;
const WARM_UP: usize = 50;

fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Median and 95th percentile of `REQUESTS` timings after a warm-up.
struct Timings {
    median: Duration,
    p95: Duration,
}

impl Timings {
    async fn of<F: Future<Output = ()>>(mut once: impl FnMut() -> F) -> Self {
        for _ in 0..WARM_UP {
            once().await;
        }
        let mut samples = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let started = Instant::now();
            once().await;
            samples.push(started.elapsed());
        }
        samples.sort();
        Self {
            median: samples[REQUESTS / 2],
            p95: samples[REQUESTS * 95 / 100],
        }
    }

    fn print(&self, what: &str) {
        println!(
            "{what:<48} median {:>7.3} ms   p95 {:>7.3} ms",
            self.median.as_secs_f64() * 1e3,
            self.p95.as_secs_f64() * 1e3
        );
    }
}

fn get(path: &str) -> http::Request<Bytes> {
    http::Request::get(format!("http://127.0.0.1{path}"))
        .body(Bytes::new())
        .unwrap()
}

/// The variables the manifest requires; only the database is reached by these requests.
fn variables(database_name: &str) -> HashMap<String, String> {
    let nowhere = "http://127.0.0.1:9";
    [
        ("api_token", "bench-api-token-0123456789abcdef"),
        ("worker_token", "bench-worker-token-0123456789abc"),
        ("database_host", "127.0.0.1"),
        ("database_name", database_name),
        ("database_user", "postgres"),
        ("database_sslmode", "disable"),
        ("database_password", "not-needed: trust"),
        ("s3_endpoint", nowhere),
        ("s3_bucket", "bench"),
        ("s3_access_key_id", "bench"),
        ("s3_secret_access_key", "bench"),
        ("qdrant_url", nowhere),
        ("qdrant_api_key", ""),
        ("worker_url", nowhere),
        ("rerank_url", nowhere),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

async fn bench() {
    let name = unique("glimpse_bench_edge");
    run_sql(&postgres_server(), &format!("CREATE DATABASE {name}")).await;
    let url = format!("host=127.0.0.1 port=5432 user=postgres dbname={name} sslmode=disable");
    let catalog = glimpse_worker::adapters::postgres::connect(&url, 8)
        .await
        .unwrap();
    let bytes = std::fs::read(repository().join("tests/reference/images/gradient.jpg")).unwrap();
    let details = NewPhotoDetails {
        origin: Origin::Upload("originals/bench".to_owned()),
        bytes: bytes.len() as u64,
        album: Some("Bench".to_owned()),
        modified_at: None,
    };
    let stored = Photo::new(photo::inspect(&bytes).unwrap(), details, 1_750_000_000);
    let id: PhotoId = stored.id;
    catalog.add_photo(&stored).await.unwrap();

    let host = SpinHost::start(&repository().join("spin.toml"), &variables(&name))
        .await
        .unwrap();
    let path = format!("/api/photos/{id}");
    let answer = host.handle(get(&path)).await.unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.body());

    println!("{REQUESTS} requests each, one at a time, after {WARM_UP} to warm up");
    let native = Timings::of(|| async {
        catalog.check_schema().await.unwrap();
        let photo = catalog.photo(id).await.unwrap().unwrap();
        std::hint::black_box(serde_json::to_vec(&photo).unwrap());
    })
    .await;
    native.print("native flow (check schema, read photo, JSON)");
    let component = Timings::of(|| async {
        let answer = host.handle(get(&path)).await.unwrap();
        assert_eq!(answer.status(), 200);
    })
    .await;
    component.print("component in the host: GET /api/photos/{id}");
    let health = Timings::of(|| async {
        let answer = host.handle(get("/healthz")).await.unwrap();
        assert_eq!(answer.status(), 200);
    })
    .await;
    health.print("component in the host: GET /healthz");
    let agent = ureq::AgentBuilder::new().build();
    let url = format!("{}{path}", host.url());
    let over_http = Timings::of(|| {
        let (agent, url) = (agent.clone(), url.clone());
        async move {
            let status =
                tokio::task::spawn_blocking(move || agent.get(&url).call().unwrap().status())
                    .await
                    .unwrap();
            assert_eq!(status, 200);
        }
    })
    .await;
    over_http.print("the same over HTTP on loopback (keep-alive)");
    let overhead = component.median.saturating_sub(native.median);
    println!(
        "overhead of the component (median): {:.3} ms (target <= 1 ms)",
        overhead.as_secs_f64() * 1e3
    );

    let built = repository().join("functions/target/wasm32-wasip2/release");
    for component in ["photos", "uploads", "search", "feedback"] {
        let file = built.join(format!("glimpse_{component}.wasm"));
        let size = std::fs::metadata(&file)
            .map(|m| m.len())
            .unwrap_or_default();
        println!(
            "{:<48} {:>7} KB",
            file.file_name().unwrap().to_string_lossy(),
            size / 1024
        );
    }

    drop(host);
    drop(catalog);
    run_sql(
        &postgres_server(),
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
}
