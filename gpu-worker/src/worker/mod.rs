//! `glimpse worker`: a member of the worker pool. Its internal HTTP API lets the edge functions
//! use the encoder and the reranker: `POST /v1/embed/text`, `POST /v1/embed/images`,
//! `POST /v1/rerank`, `GET /metrics`, all behind the internal bearer token (compared in constant
//! time), and an open `GET /healthz`. With the managed backends configured it also consumes the
//! feature-job queue ([`consumer`]).

pub mod consumer;
pub mod learning;
pub mod settings;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use glimpse_core::learning::Learner;
use glimpse_core::ports::{ImageEmbedder, RerankCandidate, Reranker, TextEmbedder};
use serde::Deserialize;
use serde_json::{Value, json};

use self::consumer::ConsumerStats;
use self::learning::LearningStats;
use crate::adapters::LocalEncoder;
use glimpse_contracts::api::BearerProblem;

use glimpse_http::axum::{ApiError, check_bearer, json_body};
use glimpse_http::metrics::{Learning, write_learning};

/// The most texts one request may embed.
pub const MAX_TEXTS: usize = 64;
/// The longest text, in bytes (CLIP reads 77 tokens; longer texts are cut by the tokenizer).
pub const MAX_TEXT_BYTES: usize = 4096;
/// The most images one request may embed.
pub const MAX_IMAGES: usize = 64;
/// The most candidates one rerank request may carry.
pub const MAX_RERANK_CANDIDATES: usize = 64;

/// What the internal API serves.
pub struct WorkerApi {
    /// The encoder (text and image towers).
    pub encoder: LocalEncoder,
    /// The configured reranker.
    pub reranker: Arc<dyn Reranker>,
    /// The pool's internal token.
    pub token: String,
    /// The largest request accepted.
    pub max_body_bytes: usize,
    /// The job consumer's counters, when it runs.
    pub consumer: Option<Arc<ConsumerStats>>,
    /// The reranker's learning loop, when it runs.
    pub learning: Option<Arc<LearningStats>>,
}

struct WorkerState {
    encoder: LocalEncoder,
    reranker: Arc<dyn Reranker>,
    token: String,
    consumer: Option<Arc<ConsumerStats>>,
    learning: Option<Arc<LearningStats>>,
    reranked: AtomicU64,
    rerank_failures: AtomicU64,
    rerank_micros: AtomicU64,
    texts: AtomicU64,
    images: AtomicU64,
    image_errors: AtomicU64,
    refused: AtomicU64,
}

type Shared = State<Arc<WorkerState>>;

/// The worker's internal API.
pub fn router(api: WorkerApi) -> Router {
    let max_body_bytes = api.max_body_bytes;
    let state = Arc::new(WorkerState {
        encoder: api.encoder,
        reranker: api.reranker,
        token: api.token,
        consumer: api.consumer,
        learning: api.learning,
        reranked: AtomicU64::new(0),
        rerank_failures: AtomicU64::new(0),
        rerank_micros: AtomicU64::new(0),
        texts: AtomicU64::new(0),
        images: AtomicU64::new(0),
        image_errors: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/embed/text", post(embed_text))
        .route("/v1/embed/images", post(embed_images))
        .route("/v1/rerank", post(rerank))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authorise,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn authorise(State(state): Shared, request: Request, next: Next) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let (code, message) = match check_bearer(request.headers(), &state.token) {
        Ok(()) => return next.run(request).await,
        Err(BearerProblem::Missing) => (
            "token_required",
            "the worker API needs `Authorization: Bearer <internal token>` (the worker's \
             GLIMPSE__WORKER__TOKEN)",
        ),
        Err(BearerProblem::Wrong) => (
            "bad_token",
            "the internal token is wrong: use the worker pool's GLIMPSE__WORKER__TOKEN",
        ),
    };
    state.refused.fetch_add(1, Ordering::Relaxed);
    ApiError::new(StatusCode::UNAUTHORIZED, code, message).into_response()
}

fn encoder_fields(state: &WorkerState) -> (String, usize) {
    (
        TextEmbedder::encoder(&state.encoder).to_string(),
        state.encoder.dimension(),
    )
}

#[derive(Deserialize)]
struct TextRequest {
    texts: Vec<String>,
}

async fn embed_text(
    State(state): Shared,
    body: Result<Json<TextRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let request = json_body(body, r#"{"texts": ["kids on a red sled"]}"#)?;
    if request.texts.is_empty() || request.texts.len() > MAX_TEXTS {
        return Err(ApiError::bad_request(format!(
            "send 1 to {MAX_TEXTS} texts, not {}",
            request.texts.len()
        )));
    }
    if let Some(long) = request.texts.iter().position(|t| t.len() > MAX_TEXT_BYTES) {
        return Err(ApiError::bad_request(format!(
            "text {long} is longer than {MAX_TEXT_BYTES} bytes"
        )));
    }
    let vectors = state.encoder.embed_texts(&request.texts).await?;
    state
        .texts
        .fetch_add(vectors.len() as u64, Ordering::Relaxed);
    let (encoder, dimension) = encoder_fields(&state);
    Ok(Json(json!({
        "encoder": encoder,
        "dimension": dimension,
        "vectors": vectors.iter().map(|v| v.as_slice()).collect::<Vec<_>>(),
    })))
}

async fn embed_images(
    State(state): Shared,
    mut multipart: Multipart,
) -> Result<Json<Value>, ApiError> {
    let mut images = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("the form cannot be read: {e}")))?
    {
        if images.len() == MAX_IMAGES {
            return Err(ApiError::bad_request(format!(
                "send at most {MAX_IMAGES} images per request"
            )));
        }
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::bad_request(format!("the form cannot be read: {e}")))?;
        images.push(bytes.to_vec());
    }
    if images.is_empty() {
        return Err(ApiError::bad_request(
            "the form holds no image: send each image as a multipart field",
        ));
    }
    let results = state.encoder.embed_images(images, None).await?;
    let failed = results.iter().filter(|r| r.is_err()).count() as u64;
    state
        .images
        .fetch_add(results.len() as u64 - failed, Ordering::Relaxed);
    state.image_errors.fetch_add(failed, Ordering::Relaxed);
    let (encoder, dimension) = encoder_fields(&state);
    let results: Vec<Value> = results
        .into_iter()
        .map(|result| match result {
            Ok(image) => json!({ "vector": image.vector.as_slice() }),
            Err(error) => json!({ "error": error }),
        })
        .collect();
    Ok(Json(json!({
        "encoder": encoder,
        "dimension": dimension,
        "results": results,
    })))
}

#[derive(Deserialize)]
struct RerankRequest {
    query: String,
    candidates: Vec<RerankCandidate>,
}

async fn rerank(
    State(state): Shared,
    body: Result<Json<RerankRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let request = json_body(
        body,
        r#"{"query": "…", "candidates": [{"photo": {…}, "score": 1.5}]}"#,
    )?;
    if request.candidates.is_empty() || request.candidates.len() > MAX_RERANK_CANDIDATES {
        return Err(ApiError::bad_request(format!(
            "send 1 to {MAX_RERANK_CANDIDATES} candidates, not {}",
            request.candidates.len()
        )));
    }
    if request.query.len() > MAX_TEXT_BYTES {
        return Err(ApiError::bad_request(format!(
            "the query is longer than {MAX_TEXT_BYTES} bytes"
        )));
    }
    let started = std::time::Instant::now();
    let outcome = state
        .reranker
        .rerank(&request.query, &request.candidates)
        .await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    state.rerank_micros.fetch_add(micros, Ordering::Relaxed);
    let relevance = outcome.inspect_err(|_| {
        state.rerank_failures.fetch_add(1, Ordering::Relaxed);
    })?;
    state.reranked.fetch_add(1, Ordering::Relaxed);
    // A reranker that scored nothing still says who it is.
    let reranker = if relevance.reranker.is_empty() {
        state.reranker.name()
    } else {
        relevance.reranker
    };
    Ok(Json(json!({
        "reranker": reranker,
        "probabilities": relevance.probabilities,
        "shares": relevance.shares,
    })))
}

/// One Prometheus counter: its help line, type line and value.
fn counter(text: &mut String, name: &str, help: &str, value: u64) {
    use std::fmt::Write;
    let _ = write!(
        text,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
    );
}

async fn metrics(State(state): Shared) -> Response {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let mut text = String::new();
    let api = [
        (
            "glimpse_worker_texts_embedded_total",
            "Texts embedded.",
            &state.texts,
        ),
        (
            "glimpse_worker_images_embedded_total",
            "Images embedded.",
            &state.images,
        ),
        (
            "glimpse_worker_image_errors_total",
            "Images that could not be embedded.",
            &state.image_errors,
        ),
        (
            "glimpse_worker_rerank_requests_total",
            "Rerank requests answered.",
            &state.reranked,
        ),
        (
            "glimpse_worker_rerank_failures_total",
            "Rerank requests the reranker failed (the edge then keeps retrieval order).",
            &state.rerank_failures,
        ),
        (
            "glimpse_worker_rerank_microseconds_total",
            "Time spent reranking, answered or failed: over the two counters above, the mean \
             latency.",
            &state.rerank_micros,
        ),
        (
            "glimpse_worker_refused_requests_total",
            "Requests refused for a missing or wrong token.",
            &state.refused,
        ),
    ];
    for (name, help, value) in api {
        counter(&mut text, name, help, load(value));
    }
    if let Some(jobs) = &state.consumer {
        let consumer = [
            (
                "glimpse_worker_jobs_claimed_total",
                "Feature jobs claimed.",
                &jobs.claimed,
            ),
            (
                "glimpse_worker_jobs_done_total",
                "Feature jobs done (vector stored).",
                &jobs.indexed,
            ),
            (
                "glimpse_worker_jobs_retried_total",
                "Feature jobs put back for later.",
                &jobs.retried,
            ),
            (
                "glimpse_worker_jobs_failed_total",
                "Feature jobs failed for good.",
                &jobs.failed,
            ),
            (
                "glimpse_worker_jobs_lost_total",
                "Feature jobs whose lease ran out before they finished.",
                &jobs.lost,
            ),
            (
                "glimpse_worker_round_errors_total",
                "Indexing rounds that failed as a whole.",
                &jobs.round_errors,
            ),
        ];
        for (name, help, value) in consumer {
            counter(&mut text, name, help, load(value));
        }
    }
    if let Some(learning) = &state.learning {
        write_learning(
            &mut text,
            &[Learning {
                learner: Learner::Reranker,
                active: learning.active(),
                training_runs: learning.runs.counts(),
            }],
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
