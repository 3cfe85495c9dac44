//! The checks every upload and library file goes through before anything is decoded (format
//! from the magic bytes, size from the header, EXIF): any bytes give facts within the limits or
//! a reason, and never a panic or an allocation the header asked for.

#![no_main]

use glimpse_core::photo::{MAX_PIXELS, PhotoId, inspect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(facts) = inspect(bytes) {
        assert!(facts.width > 0 && facts.height > 0);
        assert!(u64::from(facts.width) * u64::from(facts.height) <= MAX_PIXELS);
        assert_eq!(facts.id.to_string().parse::<PhotoId>().ok(), Some(facts.id));
        assert_eq!(facts.sha256.len(), 64);
    }
});
