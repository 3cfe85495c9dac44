//! The public API's errors, shared by every shape that serves it (the embedded server, the edge
//! functions): the status, a stable code a client can switch on, a message a person can act on,
//! and sometimes details. The body is `{"error": {"code": …, "message": …, …details}}`.

use glimpse_core::browse::{BrowseCursor, DEFAULT_PAGE, MAX_PAGE};
use glimpse_core::flows::FlowError;
use glimpse_core::photo::{PhotoId, RejectedImage};
use glimpse_core::ports::PortError;
use glimpse_core::query::{FiltersText, SearchText};
use glimpse_core::search::{
    DEFAULT_TOP_K, LOWEST_MIN_SCORE, MAX_MIN_SCORE, MAX_OFFSET, MAX_TOP_K, QueryId, SearchRequest,
};
use glimpse_core::whole_number;
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// Seconds a client is told to wait (`Retry-After`) when a backend is unavailable: about what a
/// worker pool scaled to zero takes to start.
pub const RETRY_AFTER_SECONDS: u32 = 30;

/// The largest JSON request body either shape accepts (a search, a click, a scan request).
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// What the 413 for a JSON body over [`MAX_JSON_BYTES`] says about the limit.
pub const JSON_LIMIT_NOTE: &str = "for JSON bodies; searches, clicks and the like need far less";

/// An error response.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// More fields of the error object (for example a query error's position).
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// A 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A 413 `too_large`; `setting` names what raises the limit.
    pub fn too_large(limit_bytes: usize, setting: &str) -> Self {
        const MB: usize = 1024 * 1024;
        let limit = if limit_bytes >= MB {
            format!("{} MB", limit_bytes / MB)
        } else {
            format!("{} KB", limit_bytes / 1024)
        };
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than the {limit} limit ({setting})"),
        )
    }

    /// The 413 for a JSON body over [`MAX_JSON_BYTES`].
    pub fn json_too_large() -> Self {
        Self::too_large(MAX_JSON_BYTES, JSON_LIMIT_NOTE)
    }

    /// A body that cannot be read (broken connection, bad framing).
    pub fn bad_body(status: StatusCode, detail: &str) -> Self {
        Self::new(
            status,
            "bad_body",
            format!("the request body cannot be read: {detail}"),
        )
    }

    /// A 410: the catalog knows the photo but its original is gone from storage.
    pub fn original_missing(id: PhotoId) -> Self {
        Self::new(
            StatusCode::GONE,
            "original_missing",
            format!(
                "the original of photo {id} is no longer in storage (moved or deleted); a \
                 library rescan will drop it"
            ),
        )
    }

    /// A 400 for a JSON body that does not parse as expected; `example` shows a good one.
    pub fn bad_json(detail: impl std::fmt::Display, example: &str) -> Self {
        Self::bad_request(format!("{detail}; send {example}"))
    }

    /// The `Retry-After` seconds to send with this error, if any.
    pub fn retry_after(&self) -> Option<u32> {
        (self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_SECONDS)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let (Some(Value::Object(extra)), Some(object)) = (&self.details, error.as_object_mut()) {
            object.extend(extra.clone());
        }
        json!({ "error": error })
    }
}

impl From<FlowError> for ApiError {
    fn from(error: FlowError) -> Self {
        match error {
            FlowError::InvalidQuery(query) => Self {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_query",
                message: query.to_string(),
                details: Some(json!({"position": query.position, "hint": query.hint})),
            },
            FlowError::RejectedImage(rejected) => {
                let (status, code) = match &rejected {
                    RejectedImage::UnsupportedType(_) => {
                        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
                    }
                    RejectedImage::Unreadable(_) => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "unreadable_image")
                    }
                    RejectedImage::TooManyPixels { .. } => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "too_many_pixels")
                    }
                };
                Self::new(status, code, rejected.to_string())
            }
            FlowError::BadRequest(message) => Self::bad_request(message),
            FlowError::NotFound(message) => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            FlowError::Conflict(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            FlowError::Unavailable(message) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            FlowError::Internal(message) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

impl From<PortError> for ApiError {
    fn from(error: PortError) -> Self {
        FlowError::from(error).into()
    }
}

/// A photo id from a path segment, or a 400 saying what one looks like.
pub fn parse_photo_id(text: &str) -> Result<PhotoId, ApiError> {
    text.parse()
        .map_err(|e: glimpse_core::photo::PhotoIdError| ApiError::bad_request(e.to_string()))
}

/// A search id from a path segment, or a 400 saying what one looks like.
pub fn parse_query_id(text: &str) -> Result<QueryId, ApiError> {
    text.parse()
        .map_err(|e: glimpse_core::search::QueryIdError| ApiError::bad_request(e.to_string()))
}

/// The query string of `GET /api/search`: `q`, `top_k`, `min_score`, `offset`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SearchParams {
    /// What to search for.
    #[schemars(with = "SearchText")]
    q: Option<String>,
    /// How many results at most.
    #[serde(default, deserialize_with = "whole_number::option_text")]
    #[schemars(range(min = 1, max = "MAX_TOP_K"))]
    top_k: Option<usize>,
    /// Leave out results scoring below this.
    #[schemars(range(min = "LOWEST_MIN_SCORE", max = "MAX_MIN_SCORE"))]
    min_score: Option<f32>,
    /// Skip this many of the best results (the next page); ranks stay absolute.
    #[serde(default, deserialize_with = "whole_number::option_text")]
    #[schemars(range(max = "MAX_OFFSET"))]
    offset: Option<usize>,
}

impl SearchParams {
    /// The search asked for, with the defaults filled in, or a 400 when there is no query.
    pub fn into_request(self) -> Result<SearchRequest, ApiError> {
        let query = self.q.ok_or_else(|| {
            ApiError::bad_request("say what to search for: /api/search?q=beach+at+dusk")
        })?;
        Ok(SearchRequest {
            query,
            top_k: self.top_k.unwrap_or(DEFAULT_TOP_K),
            min_score: self.min_score,
            offset: self.offset.unwrap_or_default(),
        })
    }
}

/// The query string of `GET /api/photos/{id}/similar`: `top_k`, `offset`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SimilarParams {
    /// How many results at most.
    #[serde(default, deserialize_with = "whole_number::option_text")]
    #[schemars(range(min = 1, max = "MAX_TOP_K"))]
    top_k: Option<usize>,
    /// Skip this many of the best results (the next page); ranks stay absolute.
    #[serde(default, deserialize_with = "whole_number::option_text")]
    #[schemars(range(max = "MAX_OFFSET"))]
    offset: Option<usize>,
}

impl SimilarParams {
    /// The search for photos like `photo`.
    pub fn into_request(self, photo: PhotoId) -> SearchRequest {
        SearchRequest {
            query: format!("like:{photo}"),
            top_k: self.top_k.unwrap_or(DEFAULT_TOP_K),
            min_score: None,
            offset: self.offset.unwrap_or_default(),
        }
    }
}

/// The query string of `GET /api/photos`: `q` (filters), `cursor`, `limit`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct BrowseParams {
    /// Filters; none for every photo.
    #[schemars(with = "Option<FiltersText>")]
    q: Option<String>,
    /// Where the page starts: the previous page's `next_cursor`.
    #[schemars(with = "Option<BrowseCursor>")]
    cursor: Option<String>,
    /// How many photos at most.
    #[serde(default, deserialize_with = "whole_number::option_text")]
    #[schemars(range(min = 1, max = "MAX_PAGE"))]
    limit: Option<usize>,
}

/// A page of photos asked for, checked.
#[derive(Debug)]
pub struct BrowseRequest {
    /// The filters (the query language without ranking terms); empty for every photo.
    pub filters: String,
    /// Where the page starts; `None` for the newest photos.
    pub cursor: Option<BrowseCursor>,
    /// How many photos at most.
    pub limit: usize,
}

impl BrowseParams {
    /// The page asked for, with the defaults filled in, or a 400 when the cursor is not one.
    pub fn into_request(self) -> Result<BrowseRequest, ApiError> {
        let cursor = self
            .cursor
            .map(|c| c.parse::<BrowseCursor>())
            .transpose()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(BrowseRequest {
            filters: self.q.unwrap_or_default(),
            cursor,
            limit: self.limit.unwrap_or(DEFAULT_PAGE),
        })
    }
}

/// The 404 for an id the catalog does not know.
pub fn no_such_photo(id: PhotoId) -> ApiError {
    FlowError::NotFound(format!("there is no photo {id}")).into()
}

/// What is wrong with a request's bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BearerProblem {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A token that is not the expected one.
    Wrong,
}

/// Checks an `Authorization` header's value against `token`, in time independent of where they
/// differ and of the given token's length: the SHA-256 digests of both are compared with
/// `subtle`'s constant-time equality. The one bearer check of the server, the worker and the edge.
pub fn check_bearer(authorization: Option<&str>, token: &str) -> Result<(), BearerProblem> {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let given = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(BearerProblem::Missing)?;
    let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    let wanted: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if bool::from(given.ct_eq(&wanted)) {
        Ok(())
    } else {
        Err(BearerProblem::Wrong)
    }
}

/// What a refusal tells a person about the token, in the words of the shape that serves the API.
#[derive(Clone, Copy, Debug)]
pub struct TokenHelp<'a> {
    /// Where the token is, as a noun phrase ("the deployment's `api_token` Spin variable").
    pub token: &'a str,
    /// The setting that makes reads need the token too ("serve --protect-reads").
    pub private_reads: &'a str,
}

/// The 401 for a request that needs the token: a write (`is_write`), or a read where reads are
/// kept private.
pub fn token_refusal(problem: BearerProblem, is_write: bool, help: TokenHelp<'_>) -> ApiError {
    let TokenHelp {
        token,
        private_reads,
    } = help;
    let (code, message) = match problem {
        BearerProblem::Wrong => (
            "bad_token",
            format!("the bearer token is wrong; use {token}"),
        ),
        BearerProblem::Missing if is_write => (
            "token_required",
            format!(
                "this request changes data and needs `Authorization: Bearer <token>` with {token}"
            ),
        ),
        BearerProblem::Missing => (
            "token_required",
            format!(
                "this Glimpse keeps its photos private ({private_reads}): reading needs \
                 `Authorization: Bearer <token>` with {token}"
            ),
        ),
    };
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_says_when_to_retry_and_details_join_the_error_object() {
        let busy = ApiError::from(FlowError::Unavailable("the pool sleeps".to_owned()));
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.retry_after(), Some(RETRY_AFTER_SECONDS));
        assert_eq!(ApiError::bad_request("x").retry_after(), None);
        let query = glimpse_core::query::parse("album:").expect_err("an empty album");
        let body = ApiError::from(FlowError::InvalidQuery(query)).body();
        assert_eq!(body["error"]["code"], "invalid_query");
        assert!(body["error"]["position"].is_number(), "{body}");
    }

    #[test]
    fn bearer_tokens_must_match_exactly() {
        assert_eq!(check_bearer(Some("Bearer abc"), "abc"), Ok(()));
        assert_eq!(
            check_bearer(Some("Bearer abd"), "abc"),
            Err(BearerProblem::Wrong)
        );
        assert_eq!(
            check_bearer(Some("Bearer ab"), "abc"),
            Err(BearerProblem::Wrong)
        );
        assert_eq!(
            check_bearer(Some("abc"), "abc"),
            Err(BearerProblem::Missing)
        );
        assert_eq!(check_bearer(None, "abc"), Err(BearerProblem::Missing));
    }
}
