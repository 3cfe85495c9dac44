//! The web page in a real browser: Debian's headless Chromium driven by playwright-core
//! (tests/web/ui.test.mjs) against two `glimpse serve` processes with the small test checkpoint.
//! Needs Node.js and Chromium (`tests/run` installs both; `CHROMIUM` names another binary).
//! Screenshots of the main states land in `target/tmp/web-screenshots/`. tests/edge.rs runs the
//! same page through the Spin components.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on broken fixtures

mod common;

use common::browser::run_browser_tests;
use common::{Server, fixture_count, fixture_library, reference};

#[test]
fn a_person_can_search_browse_upload_and_click_in_a_real_browser() {
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
    let empty = Server::start(
        None,
        &scratch.path().join("empty-data"),
        &["--max-upload-mb", "1"],
    );
    let private = Server::start(
        Some(&library),
        &scratch.path().join("private-data"),
        &["--protect-reads"],
    );
    private.wait_indexed(photos as u64);

    run_browser_tests(
        "ui.test.mjs",
        "web-screenshots",
        &[
            ("GLIMPSE_URL", server.base.clone()),
            ("GLIMPSE_TOKEN", server.token.clone()),
            ("GLIMPSE_PHOTOS", photos.to_string()),
            ("GLIMPSE_EMPTY_URL", empty.base.clone()),
            ("GLIMPSE_EMPTY_TOKEN", empty.token.clone()),
            ("GLIMPSE_PRIVATE_URL", private.base.clone()),
            ("GLIMPSE_PRIVATE_TOKEN", private.token.clone()),
            ("UPLOAD_GOOD", good.display().to_string()),
            ("UPLOAD_BAD", bad.display().to_string()),
            ("UPLOAD_DUPLICATE", duplicate.display().to_string()),
        ],
    );
}
