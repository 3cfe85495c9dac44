//! The query adapters learned from clicks: list them, choose the active one, train one now.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use glimpse_contracts::api;
use glimpse_core::learning::{AdapterVersion, Evaluation, TrainingOutcome};
use glimpse_http::axum::ApiError;
use serde::{Deserialize, Serialize};

use super::{AppState, Shared};

/// What `GET /api/adapters` answers.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(super) struct Adapters {
    /// Whether this server learns from clicks (`--no-learning` turns it off).
    learning: bool,
    /// The version searches are scored with; none: the encoder's embeddings alone.
    active: Option<u32>,
    /// Every stored version, newest first.
    versions: Vec<AdapterSummary>,
}

/// A stored query adapter.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(super) struct AdapterSummary {
    /// Its version.
    version: u32,
    /// When it was trained, seconds since 1970.
    trained_at: i64,
    /// How it and what ranked before it scored on held-out clicked searches.
    evaluation: Evaluation,
}

impl From<AdapterVersion> for AdapterSummary {
    fn from(stored: AdapterVersion) -> Self {
        Self {
            version: stored.version,
            trained_at: stored.trained_at,
            evaluation: stored.evaluation,
        }
    }
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

async fn listing(state: &AppState) -> Result<Adapters, ApiError> {
    let engine = &state.engine;
    Ok(Adapters {
        learning: engine.learning(),
        active: engine.active_adapter().map(|a| a.version),
        versions: engine
            .adapter_versions()
            .await?
            .into_iter()
            .map(AdapterSummary::from)
            .collect(),
    })
}

/// Lists the stored versions and the active one.
pub(super) async fn list(State(state): Shared) -> Result<Json<Adapters>, ApiError> {
    Ok(Json(listing(&state).await?))
}

/// Makes a stored version (or none) the active one; searches use it at once.
pub(super) async fn activate(
    State(state): Shared,
    request: Request,
) -> Result<Json<Adapters>, ApiError> {
    let (parts, body) = request.into_parts();
    let activation: Activation =
        glimpse_http::json_body(&parts.headers, body, r#"{"version": 1}"#).await?;
    if !state.engine.activate_adapter(activation.version).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "there is no query adapter version {}: GET /api/adapters lists them",
                activation.version.unwrap_or_default()
            ),
        ));
    }
    Ok(Json(listing(&state).await?))
}

/// Runs a training run now (one at a time: answers `already_running` while one is under way).
pub(super) async fn train(
    State(state): Shared,
    request: Request,
) -> Result<Json<TrainingOutcome>, ApiError> {
    glimpse_http::drain(request.into_body(), api::MAX_JSON_BYTES).await;
    let settings = state.engine.learning_settings();
    Ok(Json(state.engine.retrain(&settings).await?))
}
