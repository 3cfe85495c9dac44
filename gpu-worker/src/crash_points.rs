//! Planned crash points, for the tests that reproduce a crash where it hurts most: with
//! `GLIMPSE_CRASH_AT=<point>[,<point>…]` in its environment the process aborts at each named
//! point, as `kill -9` would stop it there (no destructors, no flushing). Unset, a point costs one
//! look at the environment.

/// The variable naming the points to crash at.
pub const VARIABLE: &str = "GLIMPSE_CRASH_AT";

/// Whether `point` is one the environment names.
fn armed(point: &str) -> bool {
    std::env::var(VARIABLE).is_ok_and(|points| points.split(',').any(|p| p.trim() == point))
}

/// Aborts the process if the environment names `point`.
pub fn crash_point(point: &str) {
    if armed(point) {
        eprintln!("glimpse: crashing at {point} ({VARIABLE})");
        std::process::abort();
    }
}

/// Aborts the process while decoding an image whose SHA-256 starts with a prefix the environment
/// names as `decode:<hex prefix>` (a photo that kills its indexer).
pub fn crash_while_decoding(bytes: &[u8]) {
    let Ok(points) = std::env::var(VARIABLE) else {
        return;
    };
    let prefixes: Vec<&str> = points
        .split(',')
        .filter_map(|p| p.trim().strip_prefix("decode:"))
        .collect();
    if prefixes.is_empty() {
        return;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if prefixes.iter().any(|prefix| hex.starts_with(prefix)) {
        eprintln!("glimpse: crashing while decoding {hex} ({VARIABLE})");
        std::process::abort();
    }
}
