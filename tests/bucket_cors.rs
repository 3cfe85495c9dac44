//! The bucket's CORS rule in front of the test's S3 server, which has none (s3s-fs answers a
//! preflight with 501): a browser test's page then reaches storage only as it would reach the
//! real bucket that infra/terraform's `storage` module configures — a preflight admitted only for
//! the page's origin, a PUT, and the headers that rule lists; `Access-Control-Allow-Origin` on
//! the answers to that origin. Everything else passes through byte for byte (the `Host` header
//! included, so presigned signatures still hold).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the `storage` module's CORS rule for presigned PUTs admits (`allowed_headers`).
const ALLOWED_HEADERS: [&str; 2] = ["content-type", "content-length"];

/// The rule, listening on a port of its own in front of the S3 server.
pub struct BucketCors {
    address: SocketAddr,
    origin: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl BucketCors {
    /// Fronts the S3 server at `upstream` (`host:port`); no origin is admitted until
    /// [`Self::admit`] names the page's.
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let origin = Arc::new(Mutex::new(String::new()));
        let admitted = Arc::clone(&origin);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let origin = admitted.lock().unwrap().clone();
                tokio::spawn(async move {
                    let _ = exchange(client, &upstream, &origin).await;
                });
            }
        });
        Self {
            address,
            origin,
            task,
        }
    }

    /// Admits pages served from `origin` (`http://host:port`), as the rule's `allowed_origins`.
    pub fn admit(&self, origin: &str) {
        *self.origin.lock().unwrap() = origin.to_owned();
    }

    /// Its origin, to use as the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for BucketCors {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads up to the end of a message's head; the head and whatever came after it.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(String, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut buffer = [0; 8192];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = bytes.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&bytes).into_owned(), rest));
        }
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&buffer[..read]);
    }
}

/// A header's value in `head` (names compared without case).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// One request on `client` (the connection is closed after it): a preflight answered by the
/// rule, anything else passed to `upstream` with the rule's header added to the answer.
async fn exchange(mut client: TcpStream, upstream: &str, origin: &str) -> std::io::Result<()> {
    let (head, body) = read_head(&mut client).await?;
    let admitted_origin = !origin.is_empty() && header(&head, "origin") == Some(origin);
    if head.starts_with("OPTIONS ") {
        let method = header(&head, "access-control-request-method").unwrap_or_default();
        let headers_admitted = header(&head, "access-control-request-headers")
            .unwrap_or_default()
            .split(',')
            .map(|name| name.trim().to_ascii_lowercase())
            .all(|name| name.is_empty() || ALLOWED_HEADERS.contains(&name.as_str()));
        let answer = if admitted_origin && method == "PUT" && headers_admitted {
            format!(
                "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: {origin}\r\n\
                 Access-Control-Allow-Methods: PUT\r\nAccess-Control-Allow-Headers: {}\r\n\
                 Access-Control-Max-Age: 3600\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ALLOWED_HEADERS.join(", ")
            )
        } else {
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        };
        return client.write_all(answer.as_bytes()).await;
    }
    let mut server = TcpStream::connect(upstream).await?;
    let (request_line, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    let kept: String = headers
        .split("\r\n")
        .filter(|line| !line.is_empty() && !line.to_ascii_lowercase().starts_with("connection:"))
        .map(|line| format!("{line}\r\n"))
        .collect();
    server
        .write_all(format!("{request_line}\r\n{kept}Connection: close\r\n\r\n").as_bytes())
        .await?;
    server.write_all(&body).await?;
    let (mut server_read, mut server_write) = server.into_split();
    let (mut client_read, mut client_write) = client.into_split();
    let upload = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let (answer_head, answer_body) = read_head(&mut server_read).await?;
    let (status_line, answer_headers) =
        answer_head.split_once("\r\n").unwrap_or((&answer_head, ""));
    let cors = if admitted_origin {
        format!("Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Expose-Headers: etag\r\n")
    } else {
        String::new()
    };
    client_write
        .write_all(format!("{status_line}\r\n{cors}{answer_headers}").as_bytes())
        .await?;
    client_write.write_all(&answer_body).await?;
    tokio::io::copy(&mut server_read, &mut client_write).await?;
    upload.abort();
    client_write.shutdown().await
}
