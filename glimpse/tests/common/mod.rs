//! What the end-to-end tests of `glimpse serve` share: the fixture library and a server process.
//! Each test crate uses a part of it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod browser;
pub mod managed;

pub fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference")
}

pub fn model() -> String {
    reference()
        .join("checkpoints/clip-odd")
        .display()
        .to_string()
}

/// The fixture images in two albums (PNGs in `Trips`, JPEGs in `Home`) and a text file.
pub fn fixture_library(root: &Path) {
    std::fs::create_dir_all(root.join("Trips")).unwrap();
    std::fs::create_dir_all(root.join("Home")).unwrap();
    for entry in std::fs::read_dir(reference().join("images")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        let album = match path.extension().and_then(|e| e.to_str()) {
            Some("png") => "Trips",
            _ => "Home",
        };
        std::fs::copy(&path, root.join(album).join(name)).unwrap();
    }
    std::fs::write(root.join("notes.txt"), "not a photo").unwrap();
}

/// `count` small PNGs in `folder`, each with different pixels (so different bytes and ids).
pub fn distinct_photos(folder: &Path, prefix: &str, count: u32) {
    std::fs::create_dir_all(folder).unwrap();
    let seed = prefix
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    for i in 0..count {
        let tint = seed.wrapping_mul(i + 1);
        image::RgbImage::from_fn(48, 32, |x, y| {
            image::Rgb([
                (x * 5) as u8 ^ tint as u8,
                (y * 7) as u8 ^ (tint >> 8) as u8,
                (i * 13) as u8 ^ (tint >> 16) as u8,
            ])
        })
        .save(folder.join(format!("{prefix}-{i:03}.png")))
        .unwrap();
    }
}

/// `glimpse serve` over the fixture library in a scratch folder (kept alive by the first value).
pub fn serve_fixtures(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    fixture_library(&library);
    let server = Server::start(Some(&library), &scratch.path().join("data"), extra);
    (scratch, server)
}

/// Runs `glimpse train` with the tiny Qwen2-VL checkpoint of the parity tests and `args`.
pub fn train_reranker<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .arg("train")
        .arg("--reranker-model")
        .arg(reference().join("checkpoints/qwen2-vl-tiny"))
        .args(args)
        .output()
        .unwrap()
}

pub fn fixture_count() -> usize {
    std::fs::read_dir(reference().join("images"))
        .unwrap()
        .count()
}

pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The write token.
    pub token: String,
    /// The data directory.
    pub data_dir: PathBuf,
}

/// Starts `command` and waits for its line `<announcement>http://…`; returns the process and
/// that address.
pub fn spawn_listening(command: &mut Command, announcement: &str) -> (Child, String) {
    let mut child = command
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("glimpse exited before listening")
            .unwrap();
        if let Some(rest) = line.strip_prefix(announcement) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, base)
}

impl Server {
    pub fn start(library: Option<&Path>, data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(library, data_dir, extra, &[])
    }

    /// Starts `glimpse serve` with extra environment variables.
    pub fn start_with_env(
        library: Option<&Path>,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_glimpse"));
        command.envs(env.iter().copied());
        command.arg("serve");
        if let Some(library) = library {
            command.arg("--library").arg(library);
        }
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--model", &model(), "--listen", "127.0.0.1:0"])
            .args(extra);
        // Results in the order ranked, unless a test explores on purpose.
        if !extra.contains(&"--explore-share") {
            command.args(["--explore-share", "0"]);
        }
        let (child, base) = spawn_listening(&mut command, "Glimpse is serving ");
        let configured = extra
            .windows(2)
            .find(|pair| pair[0] == "--token")
            .map(|pair| pair[1].to_owned());
        let token = configured.unwrap_or_else(|| {
            std::fs::read_to_string(data_dir.join("token"))
                .unwrap()
                .trim()
                .to_owned()
        });
        Self {
            child,
            base,
            token,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        response(ureq::get(&self.url(path)).call())
    }

    pub fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        response(ureq::post(&self.url(path)).send_json(body))
    }

    pub fn upload(&self, bytes: &[u8], token: Option<&str>) -> (u16, Value) {
        let mut request = ureq::post(&self.url("/api/photos"));
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        response(request.send_bytes(bytes))
    }

    /// A POST with the token, and a JSON body.
    pub fn post_authorised(&self, path: &str, body: Value) -> (u16, Value) {
        self.send_authorised("POST", path, body)
    }

    /// A request with the token, and a JSON body.
    pub fn send_authorised(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        response(
            ureq::request(method, &self.url(path))
                .set("Authorization", &format!("Bearer {}", self.token))
                .send_json(body),
        )
    }

    /// Scans the library now (`POST /api/library/scan`) and returns the report.
    pub fn scan(&self, forget_missing: bool) -> Value {
        let (status, report) = self.post_authorised(
            "/api/library/scan",
            json!({ "forget_missing": forget_missing }),
        );
        assert_eq!(status, 200, "{report}");
        report
    }

    /// The status, asked with the token.
    pub fn status(&self) -> Value {
        let (status, body) = response(
            ureq::get(&self.url("/api/status"))
                .set("Authorization", &format!("Bearer {}", self.token))
                .call(),
        );
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Every photo, newest first (paging through `GET /api/photos`).
    pub fn photos(&self) -> Vec<Value> {
        let mut photos = Vec::new();
        let mut path = "/api/photos?limit=100".to_owned();
        loop {
            let (status, page) = response(
                ureq::get(&self.url(&path))
                    .set("Authorization", &format!("Bearer {}", self.token))
                    .call(),
            );
            assert_eq!(status, 200, "{page}");
            photos.extend(page["photos"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/api/photos?limit=100&cursor={cursor}"),
                None => return photos,
            }
        }
    }

    /// Waits up to `timeout` for the process to end by itself; its exit status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        response(
            ureq::delete(&self.url(path))
                .set("Authorization", &format!("Bearer {}", self.token))
                .call(),
        )
    }

    pub fn search(&self, query: &str, top_k: usize) -> Value {
        let (status, body) = self.post_json("/api/search", json!({"query": query, "top_k": top_k}));
        assert_eq!(status, 200, "{query}: {body}");
        body
    }

    /// Waits until nothing is pending and `photos` are known (asking with the token, so it works
    /// with `--protect-reads` too).
    pub fn wait_indexed(&self, photos: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, status) = response(
                ureq::get(&self.url("/api/status"))
                    .set("Authorization", &format!("Bearer {}", self.token))
                    .call(),
            );
            if status["photos"]["photos"] == photos && status["photos"]["pending"] == 0 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "indexing did not finish: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) {
        // SIGTERM: a graceful stop.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn response(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(other) => panic!("request failed: {other}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn ids(response: &Value) -> Vec<String> {
    response["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["photo"]["id"].as_str().unwrap().to_owned())
        .collect()
}
