//! The adapters learned from clicks — the query adapter's (`/api/adapters`) and the
//! vision-language reranker's (`/api/reranker-adapters`): list them, choose the active one, train
//! one now.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use glimpse_contracts::api;
use glimpse_core::learning::{AdapterSummary, Learner, TrainingOutcome, summaries};
use glimpse_http::axum::ApiError;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::{AppState, Shared};

/// Where a learner's adapters are served: `<path>`, `<path>/active`, `<path>/train`.
pub(super) fn adapters_path(learner: Learner) -> &'static str {
    match learner {
        Learner::QueryAdapter => "/api/adapters",
        Learner::Reranker => "/api/reranker-adapters",
    }
}

/// The routes of `learner`'s adapters.
pub(super) fn routes(learner: Learner) -> Router<Arc<AppState>> {
    let path = adapters_path(learner);
    Router::new()
        .route(path, get(move |State(state): Shared| list(state, learner)))
        .route(
            &format!("{path}/active"),
            put(move |State(state): Shared, request: Request| activate(state, learner, request)),
        )
        .route(
            &format!("{path}/train"),
            post(move |State(state): Shared, request: Request| train(state, learner, request)),
        )
}

/// What `GET /api/adapters` (and `/api/reranker-adapters`) answers.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(super) struct Adapters {
    /// Whether this server trains these adapters from clicks (`--no-learning` turns it off; the
    /// reranker's learn with `--reranker vlm`).
    learning: bool,
    /// The version searches are scored with; none: the encoder's embeddings (or the reranker's
    /// model) alone.
    active: Option<u32>,
    /// Every stored version, newest first.
    versions: Vec<AdapterSummary>,
}

/// What `PUT /api/adapters/active` accepts: `{"version": 3}`, or `{"version": null}` for none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Activation {
    /// The version to score searches with; null for none (the encoder's embeddings alone). It
    /// must be there: an empty object turns nothing off by accident.
    #[serde(deserialize_with = "glimpse_core::whole_number::nullable")]
    version: Option<u32>,
}

impl Activation {
    /// Its JSON schema, for the OpenAPI document.
    pub(super) fn schema() -> serde_json::Value {
        serde_json::json!({
            "type": "object",
            "required": ["version"],
            "additionalProperties": false,
            "properties": {
                "version": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "maximum": u32::MAX,
                    "description": "The version to score searches with; null for none (the \
                                    encoder's embeddings alone).",
                },
            },
        })
    }
}

async fn listing(state: &AppState, learner: Learner) -> Result<Adapters, ApiError> {
    let engine = &state.engine;
    let (active, versions) = match learner {
        Learner::QueryAdapter => (
            engine.active_adapter().map(|a| a.version),
            summaries(engine.adapter_versions().await?),
        ),
        Learner::Reranker => (
            engine.reranker_adapter().map(|a| a.version),
            summaries(engine.reranker_adapter_versions().await?),
        ),
    };
    Ok(Adapters {
        learning: engine.learning() && engine.learners().contains(&learner),
        active,
        versions,
    })
}

/// Lists `learner`'s stored versions and the active one.
async fn list(state: Arc<AppState>, learner: Learner) -> Result<Json<Adapters>, ApiError> {
    Ok(Json(listing(&state, learner).await?))
}

/// Makes one of `learner`'s stored versions (or none) the active one; searches use it at once.
async fn activate(
    state: Arc<AppState>,
    learner: Learner,
    request: Request,
) -> Result<Json<Adapters>, ApiError> {
    let (parts, body) = request.into_parts();
    let activation: Activation =
        glimpse_http::json_body(&parts.headers, body, r#"{"version": 1}"#).await?;
    let activated = match learner {
        Learner::QueryAdapter => state.engine.activate_adapter(activation.version).await?,
        Learner::Reranker => {
            state
                .engine
                .activate_reranker_adapter(activation.version)
                .await?
        }
    };
    if !activated {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "there is no {} version {}: GET {} lists them",
                learner.name().replace('_', " "),
                activation.version.unwrap_or_default(),
                adapters_path(learner)
            ),
        ));
    }
    Ok(Json(listing(&state, learner).await?))
}

/// Runs one of `learner`'s training runs now (one at a time: answers `already_running` while
/// one is under way).
async fn train(
    state: Arc<AppState>,
    learner: Learner,
    request: Request,
) -> Result<Json<TrainingOutcome>, ApiError> {
    glimpse_http::drain(request.into_body(), api::MAX_JSON_BYTES).await;
    let settings = state.engine.learning_settings();
    Ok(Json(state.engine.train(learner, &settings).await?))
}
