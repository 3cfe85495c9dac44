//! Object storage at the edge: every request to the S3-protocol endpoint goes through a SigV4
//! presigned URL computed here (aws-sigv4), so no credentials travel in headers and clients can be
//! handed URLs of their own (an original to view, a large upload to put).

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation,
    SigningSettings, UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use glimpse_core::ports::{BlobPart, BlobStore, PortError};
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use crate::outbound::send;
use crate::settings::S3Settings;

/// How long a URL this component signs for its own request stays valid.
const OWN_REQUEST_EXPIRY: Duration = Duration::from_secs(60);

/// A bucket through presigned URLs (path-style: `{endpoint}/{bucket}/{key}`).
pub struct PresignedS3 {
    settings: S3Settings,
}

/// Percent-encodes a key for a URL path (`/` kept: it separates the key's parts).
fn encode_key(key: &str) -> String {
    key.split('/')
        .map(crate::settings::percent_encoded)
        .collect::<Vec<_>>()
        .join("/")
}

impl PresignedS3 {
    /// The bucket of `settings`.
    pub fn new(settings: S3Settings) -> Self {
        Self { settings }
    }

    /// A URL valid for `expires_in` that lets whoever holds it `method` the object at `key`,
    /// sending exactly the `bound` headers (a PUT's `content-length` and `content-type`: storage
    /// refuses a request whose values differ from the signed ones).
    pub fn presign(
        &self,
        method: &Method,
        key: &str,
        expires_in: Duration,
        bound: &[(&str, &str)],
    ) -> Result<String, PortError> {
        let settings = &self.settings;
        let url = format!(
            "{}/{}/{}",
            settings.endpoint.trim_end_matches('/'),
            settings.bucket,
            encode_key(key)
        );
        let identity: Identity = Credentials::new(
            &settings.access_key_id,
            &settings.secret_access_key,
            None,
            None,
            "spin-variables",
        )
        .into();
        let mut signing = SigningSettings::default();
        signing.signature_location = SignatureLocation::QueryParams;
        signing.expires_in = Some(expires_in);
        // S3's rules: the path is signed as sent, once encoded, and the payload is not hashed.
        signing.percent_encoding_mode = PercentEncodingMode::Single;
        signing.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        signing.payload_checksum_kind = PayloadChecksumKind::NoHeader;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&settings.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(signing)
            .build()
            .map_err(|e| PortError::Internal(format!("object storage signing: {e}")))?
            .into();
        let signable = SignableRequest::new(
            method.as_str(),
            &url,
            bound.iter().copied(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| PortError::Internal(format!("object storage signing: {e}")))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| PortError::Internal(format!("object storage signing: {e}")))?
            .into_parts();
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(())
            .map_err(|e| PortError::Internal(format!("the s3_endpoint does not work: {e}")))?;
        instructions.apply_to_request_http1x(&mut request);
        Ok(request.uri().to_string())
    }

    async fn call(
        &self,
        method: Method,
        key: &str,
        range: Option<String>,
        body: Vec<u8>,
    ) -> Result<crate::outbound::Reply, PortError> {
        let url = self.presign(&method, key, OWN_REQUEST_EXPIRY, &[])?;
        let mut request = Request::builder().method(method).uri(url);
        if let Some(range) = range {
            request = request.header(http::header::RANGE, range);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PortError::Internal(format!("the s3_endpoint does not work: {e}")))?;
        send("object storage", request).await
    }
}

fn storage_error(what: &str, key: &str, reply: &crate::outbound::Reply) -> PortError {
    let message = format!(
        "object storage ({what} {key}): {} {}",
        reply.status,
        reply.excerpt()
    );
    match reply.status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => PortError::Internal(format!(
            "{message}: check s3_access_key_id, s3_secret_access_key and s3_region"
        )),
        status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
            PortError::Unavailable(message)
        }
        _ => PortError::Internal(message),
    }
}

#[async_trait::async_trait(?Send)]
impl BlobStore for PresignedS3 {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), PortError> {
        let reply = self.call(Method::PUT, key, None, bytes).await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(storage_error("put", key, &reply))
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        let reply = self.call(Method::GET, key, None, Vec::new()).await?;
        match reply.status {
            status if status.is_success() => Ok(Some(reply.body.to_vec())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(storage_error("get", key, &reply)),
        }
    }

    async fn get_part(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Option<BlobPart>, PortError> {
        // An empty range cannot be asked for: one byte is, and left out.
        let last = offset.saturating_add(length.max(1)) - 1;
        let range = format!("bytes={offset}-{last}");
        let reply = self.call(Method::GET, key, Some(range), Vec::new()).await?;
        // `Content-Range: bytes 0-9/1234` (or `bytes */1234` for a range past the end).
        let total = reply
            .headers
            .get(http::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|range| range.rsplit('/').next())
            .and_then(|total| total.parse::<u64>().ok());
        match (reply.status, total) {
            (StatusCode::NOT_FOUND, _) => Ok(None),
            (StatusCode::RANGE_NOT_SATISFIABLE, Some(total)) => Ok(Some(BlobPart {
                bytes: Vec::new(),
                total,
            })),
            (StatusCode::PARTIAL_CONTENT, Some(total)) => {
                let mut bytes = reply.body.to_vec();
                bytes.truncate(usize::try_from(length).unwrap_or(usize::MAX));
                Ok(Some(BlobPart { bytes, total }))
            }
            // A server that ignores ranges sends the whole object.
            (StatusCode::OK, _) => {
                let total = reply.body.len() as u64;
                let start = offset.min(total) as usize;
                let end = offset.saturating_add(length).min(total) as usize;
                Ok(Some(BlobPart {
                    bytes: reply.body[start..end].to_vec(),
                    total,
                }))
            }
            _ => Err(storage_error("get a part of", key, &reply)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), PortError> {
        let reply = self.call(Method::DELETE, key, None, Vec::new()).await?;
        match reply.status {
            status if status.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Ok(()),
            _ => Err(storage_error("delete", key, &reply)),
        }
    }
}
