//! Reading request bodies under their limits: raw bytes, JSON, query strings and multipart upload
//! forms. Every refusal is an [`ApiError`] that says what to send instead.

use std::error::Error;

use bytes::Bytes;
use glimpse_contracts::api::{self, ApiError};
use http::{HeaderMap, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

/// How far past its limit a refused body is still read, so that the client gets to read the 413
/// (one still sending when the server answers and closes sees a reset connection instead); a body
/// announced as larger still is not received at all.
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// The length a request announces, if any.
fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The media type of a request (`type/subtype`, lowercase, without parameters), if any.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

/// Reads at most `limit` bytes of body. A larger body is a 413 naming `setting` (what raises the
/// limit); one that cannot be read (a broken connection, bad framing) is a 400.
pub(crate) async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    setting: &str,
) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    if let Some(length) = announced_length(headers).filter(|length| *length > limit as u64) {
        if length <= limit.saturating_add(LINGER_BYTES) as u64 {
            drain(body, limit.saturating_add(LINGER_BYTES)).await;
        }
        return Err(ApiError::too_large(limit, setting));
    }
    Limited::new(body, limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                ApiError::too_large(limit, setting)
            } else {
                ApiError::bad_body(StatusCode::BAD_REQUEST, &error.to_string())
            }
        })
}

/// Reads and drops up to `limit` bytes of a body that is refused, so that the client reads the
/// answer instead of a reset connection under its unfinished request.
pub async fn drain<B>(body: B, limit: usize)
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let _ = Limited::new(body, limit).collect().await;
}

/// Whether a request says its body is JSON (`application/json` or a `+json` type).
pub fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|t| t == "application/json" || t.ends_with("+json"))
}

/// A JSON object of at most [`api::MAX_JSON_BYTES`], parsed as `T`; a refusal shows `example`.
pub async fn json_body<T, B>(headers: &HeaderMap, body: B, example: &str) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    if !is_json(headers) {
        drain(body, api::MAX_JSON_BYTES).await;
        return Err(ApiError::bad_json(
            "Expected request with `Content-Type: application/json`",
            example,
        ));
    }
    let bytes = read_body(headers, body, api::MAX_JSON_BYTES, api::JSON_LIMIT_NOTE).await?;
    let refusal = |e: serde_json::Error| {
        ApiError::bad_json(
            format!("Failed to deserialize the JSON body into the target type: {e}"),
            example,
        )
    };
    // An object, not the array serde would also read a struct from.
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(refusal)?;
    if !value.is_object() {
        return Err(ApiError::bad_json(
            "the body must be a JSON object",
            example,
        ));
    }
    serde_json::from_value(value).map_err(refusal)
}

/// A query string parsed as `T`.
pub(crate) fn query_params<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("Failed to deserialize query string: {e}")))
}

/// What an upload's body holds: the image's bytes and, from a form, the album it names.
#[derive(Debug, PartialEq, Eq)]
pub struct UploadForm {
    /// The image's bytes.
    pub file: Bytes,
    /// The form's `album` field, if it has one.
    pub album: Option<String>,
}

/// Reads an upload body: the image's bytes as the whole body, or a `multipart/form-data` form
/// with exactly one `file` field and an optional `album` field (and no other).
pub async fn upload_form(content_type: Option<&str>, body: Bytes) -> Result<UploadForm, ApiError> {
    let is_form = content_type.is_some_and(|t| {
        t.trim_start()
            .to_ascii_lowercase()
            .starts_with("multipart/form-data")
    });
    let Some(content_type) = content_type.filter(|_| is_form) else {
        return Ok(UploadForm {
            file: body,
            album: None,
        });
    };
    let unreadable =
        |e: multer::Error| ApiError::bad_request(format!("the upload form cannot be read: {e}"));
    let boundary = multer::parse_boundary(content_type).map_err(unreadable)?;
    let chunks =
        futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(chunks, boundary);
    let mut file = None;
    let mut album = None;
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        let name = field.name().unwrap_or_default().to_owned();
        let data = field.bytes().await.map_err(unreadable)?;
        match name.as_str() {
            "album" => album = Some(String::from_utf8_lossy(&data).into_owned()),
            "file" if file.is_none() => file = Some(data),
            "file" => {
                return Err(ApiError::bad_request(
                    "send one file per request (the form has more than one)",
                ));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "the form has a field `{}` Glimpse does not take: send the image as `file` \
                     and, if you like, an `album`",
                    other.chars().take(40).collect::<String>()
                )));
            }
        }
    }
    let file = file.ok_or_else(|| {
        ApiError::bad_request("the form has no file: send it in a field named `file`")
    })?;
    Ok(UploadForm { file, album })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn form(boundary: &str, parts: &[(&str, &[u8])]) -> Bytes {
        let mut body = Vec::new();
        for (name, data) in parts {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                     filename=\"x\"\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        body.into()
    }

    #[test]
    fn a_form_gives_its_one_file_and_album() {
        let body = form("b1", &[("album", b"Trips"), ("file", b"\xff\xd8bytes")]);
        let parsed =
            pollster::block_on(upload_form(Some("multipart/form-data; boundary=b1"), body))
                .expect("a good form");
        assert_eq!(&parsed.file[..], b"\xff\xd8bytes");
        assert_eq!(parsed.album.as_deref(), Some("Trips"));
    }

    #[test]
    fn forms_with_two_files_none_or_no_boundary_are_refused() {
        let two = form("b", &[("file", b"a"), ("file", b"b")]);
        let other = form("b", &[("file", b"a"), ("photo", b"b")]);
        let none = form("b", &[("album", b"x")]);
        for (content_type, body) in [
            ("multipart/form-data; boundary=b", two),
            ("multipart/form-data; boundary=b", other),
            ("multipart/form-data; boundary=b", none),
            ("multipart/form-data", Bytes::from_static(b"--b--")),
        ] {
            let refused =
                pollster::block_on(upload_form(Some(content_type), body)).expect_err("refused");
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
        }
    }

    #[test]
    fn a_json_body_is_an_object_not_the_array_serde_would_also_read() {
        #[derive(serde::Deserialize, Debug)]
        struct Scan {
            #[serde(default)]
            _forget: bool,
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let read = |json: &'static str| {
            pollster::block_on(json_body::<Scan, _>(
                &headers,
                Full::new(Bytes::from_static(json.as_bytes())),
                "{}",
            ))
        };
        assert!(read("{}").is_ok());
        for json in ["[]", "[false]", "1", "null"] {
            let refused = read(json).expect_err(json);
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{json}");
        }
    }

    #[test]
    fn bodies_over_their_limit_are_413_and_name_the_setting() {
        let headers = HeaderMap::new();
        let body = Full::new(Bytes::from(vec![0u8; 11]));
        let refused = pollster::block_on(read_body(&headers, body, 10, "--max-upload-mb"))
            .expect_err("too large");
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(refused.message.contains("--max-upload-mb"), "{refused:?}");
    }
}
