//! The managed BlobStore: an S3-compatible object store through aws-sdk-s3 (AWS, or any server that
//! speaks the protocol at a custom endpoint with path-style addressing). Large objects go up in
//! parts; presigned GET and PUT URLs let clients move bytes without passing through Glimpse.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, timeout::TimeoutConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use glimpse_core::ports::{BlobPart, BlobStore, PortError};

/// Objects larger than this are uploaded in parts of this size (S3's minimum part is 5 MiB).
pub const MULTIPART_PART_BYTES: usize = 8 * 1024 * 1024;
/// How long presigned URLs stay valid unless configured otherwise.
pub const DEFAULT_PRESIGN_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Where the bucket is and how to sign for it.
#[derive(Clone)]
pub struct S3Settings {
    /// A custom endpoint (`http://127.0.0.1:9000`) for S3-compatible servers; AWS when absent.
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// The region (any name for servers that ignore it).
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (never printed).
    pub secret_access_key: String,
    /// Address buckets as `endpoint/bucket/key` (most S3-compatible servers need it).
    pub path_style: bool,
    /// How long presigned URLs stay valid.
    pub presign_expiry: Duration,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .field("presign_expiry", &self.presign_expiry)
            .finish()
    }
}

/// The S3 blob store.
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    presign_expiry: Duration,
}

/// Network trouble, timeouts, throttling and server errors are worth retrying; the rest (bad
/// credentials, a missing bucket) is a configuration problem.
fn port_error<E>(what: &str, error: SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let detail = match &error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown");
            let message = service.err().message().unwrap_or_default();
            format!("{code} {message}")
        }
        other => aws_sdk_s3::error::DisplayErrorContext(other).to_string(),
    };
    let transient = match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            status >= 500 || status == 429 || service.err().code() == Some("SlowDown")
        }
        _ => false,
    };
    if transient {
        PortError::Unavailable(format!("object storage unavailable ({what}): {detail}"))
    } else {
        PortError::Internal(format!("object storage refused {what}: {detail}"))
    }
}

impl S3BlobStore {
    /// A store for the configured bucket. Nothing is contacted until the first request.
    pub fn new(settings: &S3Settings) -> Self {
        let credentials = Credentials::new(
            &settings.access_key_id,
            &settings.secret_access_key,
            None,
            None,
            "glimpse-settings",
        );
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(settings.path_style)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Self {
            client: Client::from_conf(config.build()),
            bucket: settings.bucket.clone(),
            presign_expiry: settings.presign_expiry,
        }
    }

    /// Creates the bucket if it does not exist (for first runs against a fresh server).
    pub async fn ensure_bucket(&self) -> Result<(), PortError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(drop)
            .map_err(|e| port_error("creating the bucket", e))
    }

    fn presigning(&self) -> Result<PresigningConfig, PortError> {
        PresigningConfig::expires_in(self.presign_expiry)
            .map_err(|e| PortError::Rejected(format!("presigned URL expiry: {e}")))
    }

    /// A URL anyone can GET `key` from until the expiry.
    pub async fn presigned_get(&self, key: &str) -> Result<String, PortError> {
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(self.presigning()?)
            .await
            .map_err(|e| port_error("presigning a download", e))?;
        Ok(request.uri().to_owned())
    }

    /// A URL anyone can PUT `key` to until the expiry.
    pub async fn presigned_put(&self, key: &str) -> Result<String, PortError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(self.presigning()?)
            .await
            .map_err(|e| port_error("presigning an upload", e))?;
        Ok(request.uri().to_owned())
    }

    async fn put_in_parts(&self, key: &str, bytes: Vec<u8>) -> Result<(), PortError> {
        let started = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| port_error("starting a multipart upload", e))?;
        let upload_id = started.upload_id().unwrap_or_default().to_owned();
        match self.upload_parts(key, &upload_id, &bytes).await {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(drop)
                .map_err(|e| port_error("completing a multipart upload", e)),
            Err(error) => {
                // Leave no orphaned parts behind (best effort: the original error matters).
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(error)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        bytes: &[u8],
    ) -> Result<Vec<CompletedPart>, PortError> {
        let mut parts = Vec::new();
        for (index, chunk) in bytes.chunks(MULTIPART_PART_BYTES).enumerate() {
            let number = index as i32 + 1;
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| port_error("uploading a part", e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        Ok(parts)
    }
}

impl S3BlobStore {
    /// An empty part with the object's size.
    async fn size_part(&self, key: &str) -> Result<Option<BlobPart>, PortError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(BlobPart {
                bytes: Vec::new(),
                total: head
                    .content_length()
                    .and_then(|length| u64::try_from(length).ok())
                    .unwrap_or(0),
            })),
            Err(SdkError::ServiceError(service)) if service.err().is_not_found() => Ok(None),
            Err(error) => Err(port_error("reading an object's size", error)),
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), PortError> {
        if bytes.len() > MULTIPART_PART_BYTES {
            return self.put_in_parts(key, bytes).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map(drop)
            .map_err(|e| port_error("storing an object", e))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(SdkError::ServiceError(service)) if service.err().is_no_such_key() => {
                return Ok(None);
            }
            Err(error) => return Err(port_error("reading an object", error)),
        };
        let body = object.body.collect().await.map_err(|e| {
            PortError::Unavailable(format!("object storage: reading {key} broke off: {e}"))
        })?;
        Ok(Some(body.into_bytes().to_vec()))
    }

    async fn get_part(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Option<BlobPart>, PortError> {
        if length == 0 {
            return self.size_part(key).await;
        }
        let range = format!("bytes={offset}-{}", offset.saturating_add(length) - 1);
        let sent = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(range)
            .send()
            .await;
        let object = match sent {
            Ok(object) => object,
            Err(SdkError::ServiceError(service)) if service.err().is_no_such_key() => {
                return Ok(None);
            }
            // A range that starts past the end: no bytes.
            Err(SdkError::ServiceError(service)) if service.raw().status().as_u16() == 416 => {
                return self.size_part(key).await;
            }
            Err(error) => return Err(port_error("reading an object", error)),
        };
        let total = object
            .content_range()
            .and_then(|range| range.rsplit('/').next())
            .and_then(|total| total.parse::<u64>().ok());
        let body = object.body.collect().await.map_err(|e| {
            PortError::Unavailable(format!("object storage: reading {key} broke off: {e}"))
        })?;
        let bytes = body.into_bytes();
        Ok(Some(match total {
            Some(total) => BlobPart {
                bytes: bytes.to_vec(),
                total,
            },
            // A server that ignores ranges sends the whole object.
            None => {
                let total = bytes.len() as u64;
                let start = offset.min(total) as usize;
                let end = offset.saturating_add(length).min(total) as usize;
                BlobPart {
                    bytes: bytes[start..end].to_vec(),
                    total,
                }
            }
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), PortError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(drop)
            .map_err(|e| port_error("deleting an object", e))
    }
}
