//! The upload form reader on any body and `Content-Type` a client can send (the input's first
//! line is the header's value, the rest the body): it gives the one file and the album, or a 400
//! that says what to send, and never panics.

#![no_main]

use bytes::Bytes;
use glimpse_http::upload_form;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (header, body) = match input.iter().position(|b| *b == b'\n') {
        Some(end) => (&input[..end], &input[end + 1..]),
        None => (input, &[][..]),
    };
    let content_type = std::str::from_utf8(header).ok();
    let body = Bytes::copy_from_slice(body);
    match pollster::block_on(upload_form(content_type, body.clone())) {
        Ok(form) => {
            assert!(form.file.len() <= body.len());
            let is_form = content_type.is_some_and(|t| {
                t.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data")
            });
            if !is_form {
                assert_eq!(form.file, body, "a plain body is the file itself");
            }
        }
        Err(refused) => {
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
            assert!(refused.message.len() > 10, "{refused:?}");
        }
    }
});
