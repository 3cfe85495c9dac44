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
use glimpse_core::ports::{BlobStore, PortError};
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

    /// A URL valid for `expires_in` that lets whoever holds it `method` the object at `key`.
    pub fn presign(
        &self,
        method: &Method,
        key: &str,
        expires_in: Duration,
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
            std::iter::empty(),
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
        body: Vec<u8>,
    ) -> Result<crate::outbound::Reply, PortError> {
        let url = self.presign(&method, key, OWN_REQUEST_EXPIRY)?;
        let request = Request::builder()
            .method(method)
            .uri(url)
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
        let reply = self.call(Method::PUT, key, bytes).await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(storage_error("put", key, &reply))
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        let reply = self.call(Method::GET, key, Vec::new()).await?;
        match reply.status {
            status if status.is_success() => Ok(Some(reply.body.to_vec())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(storage_error("get", key, &reply)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), PortError> {
        let reply = self.call(Method::DELETE, key, Vec::new()).await?;
        match reply.status {
            status if status.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Ok(()),
            _ => Err(storage_error("delete", key, &reply)),
        }
    }
}
