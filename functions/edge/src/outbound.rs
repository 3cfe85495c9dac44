//! Outbound HTTP through Spin (WASIp3 `wasi:http/client`), with the errors named for what the
//! caller should do, and a time budget.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{Either, select};
use glimpse_core::ports::PortError;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use spin_sdk::wasip3::http::types::ErrorCode;

/// A response read whole.
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text, cut to a length fit for an error message.
    pub fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned()
    }
}

/// Sends `request` to `service` (named in errors) and reads the whole response. Connection
/// trouble and timeouts are `Unavailable`; a host the manifest does not allow is a deployment
/// mistake (`Internal`) that says where to allow it.
pub async fn send(service: &str, request: Request<Full<Bytes>>) -> Result<Reply, PortError> {
    let host = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let response = spin_sdk::http::send(request)
        .await
        .map_err(|code| transport_error(service, &host, code))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| PortError::Unavailable(format!("{service}: the response broke off: {e}")))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

fn transport_error(service: &str, host: &str, code: ErrorCode) -> PortError {
    match code {
        ErrorCode::HttpRequestDenied => PortError::Internal(format!(
            "{service}: this component may not call {host}: add it to the component's \
             allowed_outbound_hosts in spin.toml"
        )),
        ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid => {
            PortError::Internal(format!(
                "{service}: the request to {host} is malformed ({code:?})"
            ))
        }
        other => PortError::Unavailable(format!("{service} at {host} is unavailable ({other:?})")),
    }
}

/// `work`, or `None` once `budget` has passed.
pub async fn within<T>(budget: Duration, work: impl Future<Output = T>) -> Option<T> {
    let work = std::pin::pin!(work);
    let timer = std::pin::pin!(spin_sdk::time::sleep(budget));
    match select(work, timer).await {
        Either::Left((done, _)) => Some(done),
        Either::Right(((), _)) => None,
    }
}

/// A POST of a JSON body with a bearer token.
pub fn post_json(
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> Result<Request<Full<Bytes>>, PortError> {
    Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| PortError::Internal(format!("the URL {url} does not work: {e}")))
}
