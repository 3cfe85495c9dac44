//! Unguessable ids: 128 random bits written as 32 lowercase hex digits.

use std::fmt;

/// 128 fresh random bits from the operating system's generator.
///
/// # Panics
/// If the system has no randomness source (not a state Glimpse can run in).
pub(crate) fn fresh() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes
}

/// Writes the bits as 32 lowercase hex digits.
pub(crate) fn write_hex(bytes: &[u8; 16], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// What [`parse_hex`] accepts.
pub(crate) const PATTERN: &str = "^[0-9a-fA-F]{32}$";

/// The bits written by [`write_hex`] (either case), or `None` for anything else.
pub(crate) fn parse_hex(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}
