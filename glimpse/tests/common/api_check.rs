//! Checking a running shape against its own OpenAPI document with schemathesis.

use std::path::Path;
use std::process::Command;

/// Examples per operation and seed: enough to find what the document and the server disagree
/// on, within about a minute per shape.
const EXAMPLES: &str = "25";

/// Runs `tests/api/check` (schemathesis `--checks all`, a fixed seed and a fresh one) against the
/// shape at `base`, with `token` for its writes and `options` for `st run`; fails with what it
/// found unless it found nothing.
pub fn check_against_its_document(base: &str, token: &str, options: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/api/check");
    let output = Command::new(&script)
        .args([base, token, EXAMPLES])
        .args(options)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "schemathesis found the document and the server disagreeing at {base}:\n{report}"
    );
}
