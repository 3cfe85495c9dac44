//! The server's own endpoints (served by axum routes beside the public API) in its OpenAPI
//! document, and what its guard answers on every path.

use axum::http::{Method, StatusCode};
use glimpse_http::openapi::{Document, Operation};
use glimpse_http::{Access, UploadLimits};
use serde_json::json;

use super::ScanRequest;
use super::adapters::{Activation, Adapters, adapters_path};
use crate::embedded::ScanReport;
use glimpse_core::learning::{Learner, TrainingOutcome};
use glimpse_core::ports::CatalogCounts;

/// Adds the server's own operations to `document`, and the guard's refusals to every operation.
pub(super) fn own_operations(document: &mut Document) {
    let text = |media: &str| Some(json!({ media: {"type": "string"} }));
    let metrics = Operation::new("Prometheus metrics.", "operations")
        .reply(StatusCode::OK, "Text format 0.0.4.", text("text/plain"))
        .backend_errors();
    document.add("/metrics", &Method::GET, Access::Read, metrics);
    let status = Operation::new(
        "Indexing progress: photo counts by status, vectors in the index, the encoder, the last \
         library scan and check.",
        "operations",
    )
    .json_reply(StatusCode::OK, "Status.", status_schema(document))
    .backend_errors();
    document.add("/api/status", &Method::GET, Access::Read, status);
    let stats = Operation::new(
        "p50/p95/p99 latency per search stage over the last 10,000 searches, and counters.",
        "operations",
    )
    .json_reply(StatusCode::OK, "Statistics.", json!({"type": "object"}));
    document.add("/api/stats", &Method::GET, Access::Read, stats);
    let page =
        Operation::new("The web page.", "web").reply(StatusCode::OK, "HTML.", text("text/html"));
    document.add("/", &Method::GET, Access::Open, page);
    let names: Vec<&str> = glimpse_http::page::asset_names().collect();
    let mut asset = Operation::new("A file of the web page.", "web")
        .path_parameter::<String>("file")
        .reply(StatusCode::OK, "The file.", text("*/*"))
        .errors(&[StatusCode::NOT_FOUND]);
    asset.enumerate_path_parameter("file", &names);
    document.add("/assets/{file}", &Method::GET, Access::Open, asset);
    let scan_request = document.schema::<ScanRequest>();
    let scan = Operation::new(
        "Scan the library folder now (the watcher and the periodic rescan do it anyway) and \
         report what changed. A library that reads missing or empty while photos were there is \
         reported unavailable and nothing is removed; forget_missing removes them.",
        "operations",
    )
    .json_body(scan_request)
    .optional_body()
    .json_reply(
        StatusCode::OK,
        "The scan's report.",
        document.schema::<ScanReport>(),
    )
    .errors(&[StatusCode::BAD_REQUEST, StatusCode::CONFLICT])
    .backend_errors();
    document.add("/api/library/scan", &Method::POST, Access::Write, scan);
    learning_operations(document);
    // A request must name this server as its host; a write must not come from another site.
    document.errors_everywhere(&[StatusCode::MISDIRECTED_REQUEST], false);
    document.errors_everywhere(&[StatusCode::FORBIDDEN], true);
}

fn learning_operations(document: &mut Document) {
    let adapters = document.schema::<Adapters>();
    let outcome = document.schema::<TrainingOutcome>();
    for learner in [Learner::QueryAdapter, Learner::Reranker] {
        let (what, alone) = match learner {
            Learner::QueryAdapter => ("query adapters", "the encoder's embeddings alone"),
            Learner::Reranker => (
                "vision-language reranker's LoRA adapters (learning with --reranker vlm)",
                "the reranker's model alone",
            ),
        };
        let path = adapters_path(learner);
        let list = Operation::new(
            &format!(
                "The {what} learned from clicks: whether this server learns them, the version \
                 searches are ranked with, and every stored version with its held-out scores."
            ),
            "learning",
        )
        .json_reply(StatusCode::OK, "The adapters.", adapters.clone())
        .backend_errors();
        document.add(path, &Method::GET, Access::Read, list);
        let activate = Operation::new(
            &format!(
                "Rank searches with a stored version from the next search on (an older one too), \
                 or with none (null: {alone})."
            ),
            "learning",
        )
        .json_body(Activation::schema())
        .json_reply(
            StatusCode::OK,
            "The adapters, with the new active one.",
            adapters.clone(),
        )
        .errors(&[
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::CONFLICT,
            StatusCode::PAYLOAD_TOO_LARGE,
        ])
        .backend_errors();
        document.add(
            &format!("{path}/active"),
            &Method::PUT,
            Access::Write,
            activate,
        );
        let train = Operation::new(
            &format!(
                "Train one of the {what} from the search log now, as every --learn-every-clicks \
                 clicks do: it is kept and activated only if it ranks held-out clicked searches at \
                 least as well as the active one. One run at a time (already_running while one is \
                 under way)."
            ),
            "learning",
        )
        .json_reply(StatusCode::OK, "How the run ended.", outcome.clone())
        .errors(&[StatusCode::CONFLICT])
        .backend_errors();
        document.add(
            &format!("{path}/train"),
            &Method::POST,
            Access::Write,
            train,
        );
    }
}

fn status_schema(document: &mut Document) -> serde_json::Value {
    let count = json!({"type": "integer", "minimum": 0});
    json!({
        "type": "object",
        "required": [
            "encoder", "dimension", "photos", "index_vectors", "indexing_done", "uploads",
        ],
        "properties": {
            "encoder": {"type": "string"},
            "precision": {
                "enum": ["f32", "bf16", "int8", null],
                "description": "How precisely the text tower (what a search waits for) runs: \
                                bf16 (weights in bf16 on a CPU with AVX2 and FMA or AVX-512 \
                                BF16, or a GPU), int8 (only when asked for, on a CPU with \
                                AVX-512 VNNI) or f32, what --precision came to on this machine.",
            },
            "image_precision": {
                "enum": ["f32", "bf16", "int8", null],
                "description": "How precisely the image tower (what indexing waits for) runs. \
                                Under --precision auto it takes bf16 only where that measured \
                                faster than f32 on this CPU when the model loaded.",
            },
            "kernel": {
                "type": ["string", "null"],
                "description": "The CPU instructions the text tower's products run with \
                                (AMX-BF16, AVX-512 BF16, AVX-512F, AVX2 and FMA, AVX-512 \
                                VNNI), whichever measured fastest when the model loaded; null \
                                for f32 or a GPU.",
            },
            "image_kernel": {
                "type": ["string", "null"],
                "description": "The same for the image tower.",
            },
            "dimension": count,
            "library": {"type": ["string", "null"]},
            "library_available": {
                "type": ["boolean", "null"],
                "description": "false while the library folder is missing, unreadable or holds \
                                no photo although it did (a disk not mounted?): nothing is \
                                removed meanwhile. null without a library.",
            },
            "library_problem": {"type": ["string", "null"]},
            "photos": document.schema::<CatalogCounts>(),
            "index_vectors": count,
            "indexing_done": {"type": "boolean"},
            "last_scan": {"anyOf": [document.schema::<ScanReport>(), {"type": "null"}]},
            "index_repairs": {"type": "array", "items": {"type": "string"}},
            "images_embedded": count,
            "last_check": {"type": ["object", "null"]},
            "memory": {
                "type": "object",
                "description": "What the server holds now, against its --memory-budget, in \
                                bytes: anonymous memory (heap) plus the resident pages of \
                                mapped index files (which the kernel drops under pressure).",
                "properties": {
                    "budget": count, "resident": count, "anonymous": count, "file": count,
                    "peak": count,
                },
            },
            "uploads": document.schema::<UploadLimits>(),
        },
    })
}
