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
use glimpse_core::ports::{BlobStore, PortError};

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    use super::*;

    const ACCESS_KEY: &str = "glimpse-test";
    const SECRET_KEY: &str = "glimpse-test-secret-key";

    /// The S3 server binary: `S3S_FS`, else where `tests/run` installs it.
    fn s3s_fs() -> PathBuf {
        let path = std::env::var_os("S3S_FS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/s3s-fs")
            });
        assert!(
            path.exists(),
            "the S3 tests need the s3s-fs server at {}: run tests/run (it installs it with \
             `cargo install s3s-fs --features binary`), or set S3S_FS",
            path.display()
        );
        path
    }

    /// An S3-protocol server on loopback over a temporary folder, stopped when dropped.
    struct S3Server {
        child: Child,
        endpoint: String,
        _root: tempfile::TempDir,
    }

    impl S3Server {
        fn start() -> Self {
            let root = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(s3s_fs())
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let address = format!("127.0.0.1:{port}");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(&address).is_err() {
                assert!(std::time::Instant::now() < deadline, "s3s-fs did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            Self {
                child,
                endpoint: format!("http://{address}"),
                _root: root,
            }
        }

        fn settings(&self) -> S3Settings {
            S3Settings {
                endpoint: Some(self.endpoint.clone()),
                bucket: "glimpse-test".to_owned(),
                region: "us-east-1".to_owned(),
                access_key_id: ACCESS_KEY.to_owned(),
                secret_access_key: SECRET_KEY.to_owned(),
                path_style: true,
                presign_expiry: DEFAULT_PRESIGN_EXPIRY,
            }
        }

        async fn store(&self, settings: &S3Settings) -> S3BlobStore {
            let store = S3BlobStore::new(settings);
            store.ensure_bucket().await.unwrap();
            store
        }
    }

    impl Drop for S3Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn honours_the_blob_store_contract() {
        let server = S3Server::start();
        let store = server.store(&server.settings()).await;
        glimpse_core::contract::blob_store_suite(&store).await;
    }

    #[tokio::test]
    async fn large_objects_go_up_in_parts_and_come_back_whole() {
        let server = S3Server::start();
        let store = server.store(&server.settings()).await;
        let large: Vec<u8> = (0..(2 * MULTIPART_PART_BYTES + 12_345))
            .map(|i| (i % 253) as u8)
            .collect();
        store.put("originals/large", large.clone()).await.unwrap();
        assert_eq!(store.get("originals/large").await.unwrap(), Some(large));
    }

    #[tokio::test]
    async fn presigned_urls_move_bytes_without_credentials_until_they_expire() {
        let server = S3Server::start();
        let store = server.store(&server.settings()).await;
        let put = store.presigned_put("originals/presigned").await.unwrap();
        let response = tokio::task::spawn_blocking(move || {
            ureq::put(&put)
                .send_bytes(b"uploaded directly")
                .unwrap()
                .status()
        })
        .await
        .unwrap();
        assert_eq!(response, 200);
        assert_eq!(
            store.get("originals/presigned").await.unwrap(),
            Some(b"uploaded directly".to_vec())
        );
        let get = store.presigned_get("originals/presigned").await.unwrap();
        assert!(!get.contains(SECRET_KEY));
        let body = tokio::task::spawn_blocking(move || {
            ureq::get(&get).call().unwrap().into_string().unwrap()
        })
        .await
        .unwrap();
        assert_eq!(body, "uploaded directly");

        let short = S3Settings {
            presign_expiry: Duration::from_secs(1),
            ..server.settings()
        };
        let expiring = S3BlobStore::new(&short)
            .presigned_get("originals/presigned")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let status = tokio::task::spawn_blocking(move || match ureq::get(&expiring).call() {
            Ok(response) => response.status(),
            Err(ureq::Error::Status(status, _)) => status,
            Err(other) => panic!("{other}"),
        })
        .await
        .unwrap();
        assert_eq!(status, 403, "an expired URL is refused");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_and_the_secret_stays_secret() {
        let settings = S3Settings {
            endpoint: Some("http://127.0.0.1:1".to_owned()),
            bucket: "glimpse-test".to_owned(),
            region: "us-east-1".to_owned(),
            access_key_id: ACCESS_KEY.to_owned(),
            secret_access_key: SECRET_KEY.to_owned(),
            path_style: true,
            presign_expiry: DEFAULT_PRESIGN_EXPIRY,
        };
        assert!(!format!("{settings:?}").contains(SECRET_KEY));
        let store = S3BlobStore::new(&settings);
        let error = store.get("originals/x").await.unwrap_err();
        assert!(matches!(error, PortError::Unavailable(_)), "{error:?}");
        assert!(!format!("{error} {error:?}").contains(SECRET_KEY));
    }
}
