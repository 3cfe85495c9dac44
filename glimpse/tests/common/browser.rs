//! Browser tests: a file of tests/web (node's test runner, playwright-core) in Debian's headless
//! Chromium. Needs Node.js and Chromium (`tests/run` installs both; `CHROMIUM` names another
//! binary). Screenshots land in `target/tmp/<screenshots>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Runs the browser tests of `file` (in tests/web) with `environment`, the screenshots going to
/// `screenshots` under the target's temporary directory; fails with node's report if one fails.
pub fn run_browser_tests(file: &str, screenshots: &str, environment: &[(&str, String)]) {
    let chromium = chromium();
    let tests = browser_tests();
    install_playwright(&tests);
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join(screenshots);
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec", file])
        .current_dir(&tests)
        .env("CHROMIUM", chromium)
        .env("SCREENSHOTS", &screenshots)
        .envs(environment.iter().map(|(name, value)| (name, value)))
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
