//! The HTTP layer in axum's terms (feature `axum`), for Glimpse's axum servers: the embedded
//! server and the worker pool's internal API. Errors become the same responses [`crate::serve`]
//! gives, from the same [`api::ApiError`].

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use glimpse_contracts::api::{self, BearerProblem};
use glimpse_core::flows::FlowError;
use glimpse_core::ports::PortError;
use http::{HeaderMap, StatusCode, header};

use crate::{Reply, error_reply};

/// An error of the API as an axum response.
#[derive(Debug)]
pub struct ApiError(pub api::ApiError);

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self(api::ApiError::new(status, code, message))
    }

    /// A 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self(api::ApiError::bad_request(message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        reply(error_reply(&self.0))
    }
}

impl From<api::ApiError> for ApiError {
    fn from(error: api::ApiError) -> Self {
        Self(error)
    }
}

impl From<FlowError> for ApiError {
    fn from(error: FlowError) -> Self {
        Self(error.into())
    }
}

impl From<PortError> for ApiError {
    fn from(error: PortError) -> Self {
        Self(error.into())
    }
}

/// An answer of the HTTP layer as axum's.
pub fn reply(reply: Reply) -> Response {
    reply.map(Body::from)
}

/// The JSON body axum extracted, or a 400 that says what is wrong and shows `example`.
pub fn json_body<T>(body: Result<Json<T>, JsonRejection>, example: &str) -> Result<T, ApiError> {
    body.map(|Json(value)| value)
        .map_err(|e| api::ApiError::bad_json(e.body_text(), example).into())
}

/// Checks a request's bearer token against `token`, in time independent of where they differ.
pub fn check_bearer(headers: &HeaderMap, token: &str) -> Result<(), BearerProblem> {
    api::check_bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        token,
    )
}
