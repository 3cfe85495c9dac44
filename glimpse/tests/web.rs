//! The web page in a real browser: Debian's headless Chromium driven by playwright-core
//! (tests/web/ui.test.mjs) against two `glimpse serve` processes with the small test checkpoint.
//! Needs Node.js and Chromium (`tests/run` installs both; `CHROMIUM` names another binary).
//! Screenshots of the main states land in `target/tmp/web-screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on broken fixtures

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, fixture_count, fixture_library, reference};

fn browser_tests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/web")
}

/// Installs playwright-core (pinned by the lock file) when it is missing.
fn install_playwright(directory: &Path) {
    if directory.join("node_modules/playwright-core").is_dir() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(directory)
        .status()
        .expect(
            "npm is needed for the browser tests: install Node.js 20 or later (tests/run does)",
        );
    assert!(status.success(), "npm ci failed in {}", directory.display());
}

fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "the browser tests need Chromium at {chromium}: `apt-get install chromium` (tests/run \
         does), or set CHROMIUM to another Chromium binary"
    );
    chromium
}

#[test]
fn a_person_can_search_browse_upload_and_click_in_a_real_browser() {
    let chromium = chromium();
    let tests = browser_tests();
    install_playwright(&tests);

    let scratch = tempfile::tempdir().unwrap();
    let library = scratch.path().join("Pictures");
    fixture_library(&library);
    // One photo stays out of the library, to be uploaded through the page.
    let good = scratch.path().join("upload/fresh-noise.png");
    std::fs::create_dir_all(good.parent().unwrap()).unwrap();
    std::fs::rename(library.join("Trips/noise.png"), &good).unwrap();
    let bad = scratch.path().join("upload/notes.txt");
    std::fs::write(&bad, "a shopping list, not a photo").unwrap();
    let duplicate = reference().join("images/gradient.jpg");
    let photos = fixture_count() - 1;

    let server = Server::start(Some(&library), &scratch.path().join("data"), &[]);
    server.wait_indexed(photos as u64);
    let empty = Server::start(None, &scratch.path().join("empty-data"), &[]);
    let private = Server::start(
        Some(&library),
        &scratch.path().join("private-data"),
        &["--protect-reads"],
    );
    private.wait_indexed(photos as u64);

    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec", "ui.test.mjs"])
        .current_dir(&tests)
        .env("CHROMIUM", chromium)
        .env("GLIMPSE_URL", &server.base)
        .env("GLIMPSE_TOKEN", &server.token)
        .env("GLIMPSE_PHOTOS", photos.to_string())
        .env("GLIMPSE_EMPTY_URL", &empty.base)
        .env("GLIMPSE_EMPTY_TOKEN", &empty.token)
        .env("GLIMPSE_PRIVATE_URL", &private.base)
        .env("GLIMPSE_PRIVATE_TOKEN", &private.token)
        .env("UPLOAD_GOOD", &good)
        .env("UPLOAD_BAD", &bad)
        .env("UPLOAD_DUPLICATE", &duplicate)
        .env("SCREENSHOTS", &screenshots)
        .output()
        .expect("node is needed for the browser tests: install Node.js 20 or later");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(output.status.success(), "browser tests failed:\n{report}");
    println!("screenshots: {}", screenshots.display());
}
