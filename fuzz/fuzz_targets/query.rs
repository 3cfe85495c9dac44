//! The query parser on any text a person (or a script) can send: it answers with a query or an
//! error that points inside the text, and never panics.

#![no_main]

use glimpse_core::query::{MAX_QUERY_CHARS, MAX_TERMS, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let characters = text.chars().count();
    match parse(text) {
        Ok(query) => {
            assert!(characters <= MAX_QUERY_CHARS);
            let terms = query.positive.len() + query.negative.len() + query.like.len();
            assert!(terms <= MAX_TERMS, "{terms} terms from {text:?}");
            for term in query.positive.iter().chain(&query.negative) {
                assert!(term.weight > 0.0 && term.weight.is_finite(), "{term:?}");
            }
        }
        Err(error) => {
            assert!(error.position <= characters, "{error:?} in {text:?}");
            assert!(!error.hint.is_empty());
        }
    }
});
