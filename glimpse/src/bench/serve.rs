//! `glimpse bench serve`: a `glimpse serve` process under load, measured from outside over HTTP,
//! so the same run measures any build (this one, or an older binary for a before/after).
//!
//! Three phases on a generated library of small photos: search latency while the server scans
//! the library for the first time (a scan must not stall the API); a bounded soak of mixed
//! search, browse and thumbnail traffic from several clients, with throughput, latency and
//! errors; and a closed loop of searches only from the same clients, each search a text never
//! asked before (so the query-embedding cache cannot answer it).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::server::percentiles;

/// What to run.
#[derive(Clone, Debug)]
pub struct ServeBenchOptions {
    /// The `glimpse` binary to measure.
    pub binary: PathBuf,
    /// The model it serves with (a directory).
    pub model: String,
    /// Photos in the generated library.
    pub files: usize,
    /// How long the soak runs.
    pub soak: Duration,
    /// Concurrent soak clients.
    pub clients: usize,
}

/// Latency figures of one kind of request, in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    /// Requests answered.
    pub requests: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    fn of(mut samples: Vec<f64>) -> Self {
        let [p50_ms, p95_ms, p99_ms] = percentiles(samples.clone());
        samples.sort_by(f64::total_cmp);
        Self {
            requests: samples.len(),
            p50_ms,
            p95_ms,
            p99_ms,
            max_ms: samples.last().copied().unwrap_or(0.0),
        }
    }
}

/// What `glimpse bench serve --json` prints.
#[derive(Debug, Serialize)]
pub struct ServeReport {
    /// Photos in the library.
    pub files: usize,
    /// How long the first scan took.
    pub first_scan_seconds: f64,
    /// Searches answered while the first scan ran (one client, back to back).
    pub search_during_scan: Latency,
    /// The same searches once scanning and indexing were over.
    pub search_idle: Latency,
    /// The soak: requests per second over all clients.
    pub soak_requests_per_second: f64,
    /// Soak requests that failed (transport error or a status other than 2xx).
    pub soak_errors: usize,
    /// Soak latency by kind of request (`search`, `browse`, `thumbnail`).
    pub soak: BTreeMap<String, Latency>,
    /// The closed loop of new searches: each client sends its next search when the last is
    /// answered, for as long as the soak.
    pub closed_loop: ClosedLoop,
}

/// Searches from several clients in a closed loop.
#[derive(Debug, Serialize)]
pub struct ClosedLoop {
    /// Concurrent clients.
    pub clients: usize,
    /// Searches answered per second, all clients together.
    pub searches_per_second: f64,
    /// Searches that failed (transport error or a status other than 2xx).
    pub errors: usize,
    /// Latency of the answered searches.
    pub latency: Latency,
}

/// `count` small distinct PNGs, 100 to a folder.
fn generate_library(root: &Path, count: usize) -> Result<(), String> {
    for i in 0..count {
        let folder = root.join(format!("album-{:04}", i / 100));
        std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
        let seed = (i as u32).wrapping_mul(2_654_435_761);
        image::RgbImage::from_fn(32, 24, |x, y| {
            image::Rgb([
                (seed ^ (x * 7)) as u8,
                ((seed >> 8) ^ (y * 11)) as u8,
                ((seed >> 16) ^ (x * y)) as u8,
            ])
        })
        .save(folder.join(format!("photo-{i:06}.png")))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One HTTP/1.1 GET on a fresh connection: the status and the body.
fn get(address: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP head")?;
    let status = String::from_utf8_lossy(&answer[..head_end])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok((status, answer[head_end + 4..].to_vec()))
}

fn get_json(address: &str, path: &str) -> Result<Value, String> {
    let (status, body) = get(address, path)?;
    if status != 200 {
        return Err(format!("{path}: {status}"));
    }
    // The body may be chunked; the JSON object is between the first `{` and the last `}`.
    let start = body.iter().position(|&b| b == b'{').ok_or("no JSON")?;
    let end = body.iter().rposition(|&b| b == b'}').ok_or("no JSON")?;
    serde_json::from_slice(&body[start..=end]).map_err(|e| e.to_string())
}

struct Served {
    child: Child,
    address: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(options: &ServeBenchOptions, library: &Path, data: &Path) -> Result<Served, String> {
    let mut child = Command::new(&options.binary)
        .arg("serve")
        .arg("--library")
        .arg(library)
        .arg("--data-dir")
        .arg(data)
        .args(["--model", &options.model, "--listen", "127.0.0.1:0"])
        .args(["--rescan-minutes", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", options.binary.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        let line = lines
            .next()
            .ok_or("glimpse serve exited before listening")?
            .map_err(|e| e.to_string())?;
        if let Some(rest) = line.strip_prefix("Glimpse is serving http://") {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Served { child, address })
}

const QUERIES: [&str; 4] = [
    "a+red+sled",
    "beach+at+dusk+-people",
    "2:%22golden+retriever%22+on+grass",
    "kids+album:album-0001",
];

/// Searches back to back until `done`; their latencies in milliseconds.
fn search_until(address: &str, done: &AtomicBool) -> Vec<f64> {
    let mut latencies = Vec::new();
    let mut i = 0;
    while !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        let path = format!("/api/search?q={}&top_k=20", QUERIES[i % QUERIES.len()]);
        if matches!(get(address, &path), Ok((200, _))) {
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        i += 1;
    }
    latencies
}

/// Runs the benchmark (minutes for 20,000 photos); the library and data directory live in a
/// temporary folder removed afterwards.
pub fn run(options: &ServeBenchOptions) -> Result<ServeReport, String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let library = scratch.path().join("library");
    generate_library(&library, options.files)?;
    let served = serve(options, &library, &scratch.path().join("data"))?;
    let address = served.address.clone();

    // Phase 1: one client searches while the first scan runs.
    let started = Instant::now();
    let scanned = AtomicBool::new(false);
    let during = std::thread::scope(|scope| -> Result<Vec<f64>, String> {
        let searching = scope.spawn(|| search_until(&address, &scanned));
        let waited = loop {
            match get_json(&address, "/api/status") {
                Ok(status) if !status["last_scan"].is_null() => break Ok(()),
                Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                Err(error) => break Err(error),
            }
        };
        scanned.store(true, Ordering::Relaxed);
        let latencies = searching.join().map_err(|_| "the search client panicked")?;
        waited.map(|()| latencies)
    })?;
    let first_scan_seconds = started.elapsed().as_secs_f64();
    loop {
        let status = get_json(&address, "/api/status")?;
        if status["photos"]["pending"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let idle_done = AtomicBool::new(false);
    let idle = std::thread::scope(|scope| {
        let searching = scope.spawn(|| search_until(&address, &idle_done));
        std::thread::sleep(Duration::from_secs(10));
        idle_done.store(true, Ordering::Relaxed);
        searching.join().unwrap_or_default()
    });

    // Phase 2: the soak, mixed traffic from several clients.
    let page = get_json(&address, "/api/photos?limit=200")?;
    let ids: Vec<String> = page["photos"]
        .as_array()
        .map(|photos| {
            photos
                .iter()
                .filter_map(|p| p["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        return Err("the library has no photos to ask thumbnails of".to_owned());
    }
    let deadline = Instant::now() + options.soak;
    let soak_started = Instant::now();
    let results: Vec<Vec<(&'static str, Result<f64, ()>)>> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..options.clients.max(1))
            .map(|client| {
                let (address, ids) = (&address, &ids);
                scope.spawn(move || {
                    let mut results = Vec::new();
                    let mut i = client;
                    while Instant::now() < deadline {
                        let (kind, path) = match i % 3 {
                            0 => (
                                "search",
                                format!("/api/search?q={}&top_k=20", QUERIES[i % QUERIES.len()]),
                            ),
                            1 => ("browse", "/api/photos?limit=60".to_owned()),
                            _ => (
                                "thumbnail",
                                format!("/api/photos/{}/thumbnail", ids[i % ids.len()]),
                            ),
                        };
                        let started = Instant::now();
                        let outcome = match get(address, &path) {
                            Ok((200..=299, _)) => Ok(started.elapsed().as_secs_f64() * 1000.0),
                            _ => Err(()),
                        };
                        results.push((kind, outcome));
                        i += 1;
                    }
                    results
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap_or_default())
            .collect()
    });
    let elapsed = soak_started.elapsed().as_secs_f64();
    let closed_loop = closed_loop(&address, options.clients.max(1), options.soak);
    let mut by_kind: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut errors = 0;
    let mut answered = 0;
    for (kind, outcome) in results.into_iter().flatten() {
        match outcome {
            Ok(ms) => {
                answered += 1;
                by_kind.entry(kind.to_owned()).or_default().push(ms);
            }
            Err(()) => errors += 1,
        }
    }
    drop(served);
    Ok(ServeReport {
        files: options.files,
        first_scan_seconds,
        search_during_scan: Latency::of(during),
        search_idle: Latency::of(idle),
        soak_requests_per_second: answered as f64 / elapsed.max(1e-9),
        soak_errors: errors,
        soak: by_kind
            .into_iter()
            .map(|(kind, samples)| (kind, Latency::of(samples)))
            .collect(),
        closed_loop,
    })
}

/// `clients` threads searching back to back for `duration`, every search a new text.
fn closed_loop(address: &str, clients: usize, duration: Duration) -> ClosedLoop {
    const WORDS: [&str; 8] = [
        "dog", "beach", "sled", "sunset", "kitchen", "mountain", "birthday", "train",
    ];
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let outcomes: Vec<Result<f64, ()>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|client| {
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    let mut n = 0usize;
                    while Instant::now() < deadline {
                        let text = format!(
                            "{}+{}+{client}x{n}",
                            WORDS[n % WORDS.len()],
                            WORDS[(n / WORDS.len() + client) % WORDS.len()]
                        );
                        let began = Instant::now();
                        outcomes.push(
                            match get(address, &format!("/api/search?q={text}&top_k=20")) {
                                Ok((200..=299, _)) => Ok(began.elapsed().as_secs_f64() * 1000.0),
                                _ => Err(()),
                            },
                        );
                        n += 1;
                    }
                    outcomes
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let answered: Vec<f64> = outcomes.iter().filter_map(|o| o.ok()).collect();
    ClosedLoop {
        clients,
        searches_per_second: answered.len() as f64 / elapsed.max(1e-9),
        errors: outcomes.len() - answered.len(),
        latency: Latency::of(answered),
    }
}
