//! The web page both shapes serve: `web/index.html` at `/` and its files at `/assets/{file}`,
//! compiled in (the embedded binary stays one file; a Spin component carries its own copy).
//! Browsers revalidate every file (`Cache-Control: no-cache`) and get a `304` while its `ETag`
//! still matches, so a new release shows at once and an unchanged one costs no bytes. The
//! Content-Security-Policy keeps the page to its own origin, and to the storage its originals
//! are redirected to where the shape has one.

use bytes::Bytes;
use glimpse_contracts::api::ApiError;
use glimpse_core::flows::FlowError;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::{Reply, empty_reply, error_reply};

/// One file of the page.
struct PageFile {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// The 64-bit FNV-1a hash of `body`, its entity tag: computed when the binary is built.
    hash: u64,
}

impl PageFile {
    const fn new(path: &'static str, content_type: &'static str, body: &'static str) -> Self {
        let bytes = body.as_bytes();
        let mut hash = 0xcbf2_9ce4_8422_2325_u64;
        let mut at = 0;
        while at < bytes.len() {
            hash = (hash ^ bytes[at] as u64).wrapping_mul(0x0000_0100_0000_01b3);
            at += 1;
        }
        Self {
            path,
            content_type,
            body,
            hash,
        }
    }

    /// Its strong entity tag, quoted.
    fn entity_tag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

const FILES: &[PageFile] = &[
    PageFile::new(
        "/",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    PageFile::new(
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    PageFile::new(
        "/assets/app.css",
        "text/css; charset=utf-8",
        include_str!("../../web/app.css"),
    ),
    PageFile::new(
        "/assets/icon.svg",
        "image/svg+xml",
        include_str!("../../web/icon.svg"),
    ),
];

/// Where the page's files are: `/` and below this prefix.
pub const ASSETS_PREFIX: &str = "/assets/";

/// Whether `path` is the page's (`/` or under [`ASSETS_PREFIX`]) rather than the API's.
pub fn is_page_path(path: &str) -> bool {
    path == "/" || path.starts_with(ASSETS_PREFIX)
}

/// The names of the page's files under [`ASSETS_PREFIX`].
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    FILES
        .iter()
        .filter_map(|file| file.path.strip_prefix(ASSETS_PREFIX))
}

/// Where a shape's originals are served from, as the page's Content-Security-Policy names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Originals {
    /// The page's own origin (the embedded server sends the bytes).
    SameOrigin,
    /// Storage at another origin (`scheme://host[:port]`) that originals are redirected to.
    Storage(String),
}

impl Originals {
    /// The origin of the storage at `endpoint` (an `http` or `https` URL, any path dropped).
    /// Refused, with what is wrong, when `endpoint` is not such a URL.
    pub fn storage_at(endpoint: &str) -> Result<Self, FlowError> {
        let refused = || {
            FlowError::Internal(format!(
                "the storage endpoint `{endpoint}` is not an http(s)://host[:port] URL, so the \
                 web page cannot be allowed to show originals from it"
            ))
        };
        let (scheme, rest) = endpoint.split_once("://").ok_or_else(refused)?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let valid_authority = !authority.is_empty()
            && authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        if !matches!(scheme, "http" | "https") || !valid_authority {
            return Err(refused());
        }
        Ok(Self::Storage(format!(
            "{scheme}://{}",
            authority.to_ascii_lowercase()
        )))
    }

    /// The page's Content-Security-Policy: scripts, styles and requests of its own origin only;
    /// images also from `blob:` (fetched with the token) and from the storage of originals.
    fn content_security_policy(&self) -> String {
        let storage = match self {
            Self::SameOrigin => String::new(),
            Self::Storage(origin) => format!(" {origin}"),
        };
        format!(
            "default-src 'self'; img-src 'self' blob:{storage}; style-src 'self'; \
             script-src 'self'; connect-src 'self'{storage}; object-src 'none'; \
             base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
        )
    }
}

/// The answer to `method` on the page's `path` (one [`is_page_path`] accepts): the file with its
/// headers, `304` when `If-None-Match` names its current `ETag`, no body for `HEAD`; `404` for a
/// file the page does not have, `405` for a method other than GET and HEAD.
pub fn serve_page(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    originals: &Originals,
) -> Reply {
    if method != Method::GET && method != Method::HEAD {
        let error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not served on {path}; the web page answers GET, HEAD"),
        );
        let mut reply = error_reply(&error);
        reply
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return reply;
    }
    let Some(file) = FILES.iter().find(|file| file.path == path) else {
        return error_reply(
            &FlowError::NotFound(format!("the web page has no file {path}")).into(),
        );
    };
    let etag = file.entity_tag();
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let mut reply = if unchanged {
        empty_reply(StatusCode::NOT_MODIFIED)
    } else if method == Method::HEAD {
        let mut reply = empty_reply(StatusCode::OK);
        reply
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(file.body.len()));
        reply
    } else {
        http::Response::new(Bytes::from_static(file.body.as_bytes()))
    };
    let headers = reply.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if !unchanged {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        );
    }
    if let Ok(policy) = HeaderValue::from_str(&originals.content_security_policy()) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, headers: &HeaderMap) -> Reply {
        serve_page(&Method::GET, path, headers, &Originals::SameOrigin)
    }

    fn header_of(reply: &Reply, name: header::HeaderName) -> &str {
        reply
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    #[test]
    fn every_file_the_page_names_is_served_with_its_type() {
        let page = get("/", &HeaderMap::new());
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            header_of(&page, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        let html = std::str::from_utf8(page.body()).unwrap();
        for reference in html
            .split('"')
            .filter(|part| part.starts_with(ASSETS_PREFIX))
        {
            let asset = get(reference, &HeaderMap::new());
            assert_eq!(asset.status(), StatusCode::OK, "{reference}");
            assert!(!asset.body().is_empty(), "{reference}");
        }
        assert_eq!(
            get("/assets/app.js", &HeaderMap::new())
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/javascript; charset=utf-8")
        );
    }

    #[test]
    fn an_unchanged_file_is_a_304_without_a_body() {
        let first = get("/assets/app.css", &HeaderMap::new());
        let etag = header_of(&first, header::ETAG).to_owned();
        assert!(etag.starts_with('"') && etag.len() == 18, "{etag}");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"other\", W/{etag}")).unwrap(),
        );
        let again = get("/assets/app.css", &headers);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(again.body().is_empty());
        assert_eq!(header_of(&again, header::ETAG), etag);
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"stale\""));
        assert_eq!(get("/assets/app.css", &headers).status(), StatusCode::OK);
        assert_eq!(header_of(&first, header::CACHE_CONTROL), "no-cache");
    }

    #[test]
    fn head_has_the_headers_and_no_body_and_writes_are_refused() {
        let head = serve_page(
            &Method::HEAD,
            "/",
            &HeaderMap::new(),
            &Originals::SameOrigin,
        );
        assert_eq!(head.status(), StatusCode::OK);
        assert!(head.body().is_empty());
        assert_eq!(
            header_of(&head, header::CONTENT_LENGTH),
            get("/", &HeaderMap::new()).body().len().to_string()
        );
        let post = serve_page(
            &Method::POST,
            "/",
            &HeaderMap::new(),
            &Originals::SameOrigin,
        );
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header_of(&post, header::ALLOW), "GET, HEAD");
        let missing = get("/assets/missing.js", &HeaderMap::new());
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(
            std::str::from_utf8(missing.body())
                .unwrap()
                .contains("the web page has no file /assets/missing.js")
        );
    }

    #[test]
    fn the_policy_admits_the_storage_of_originals_and_nothing_else() {
        let own = header_of(
            &get("/", &HeaderMap::new()),
            header::CONTENT_SECURITY_POLICY,
        )
        .to_owned();
        assert!(own.contains("img-src 'self' blob:;"), "{own}");
        assert!(own.contains("connect-src 'self';"), "{own}");
        let storage =
            Originals::storage_at("https://S3.eu-west-1.amazonaws.com/bucket?x=1").unwrap();
        assert_eq!(
            storage,
            Originals::Storage("https://s3.eu-west-1.amazonaws.com".to_owned())
        );
        let edge = serve_page(&Method::GET, "/", &HeaderMap::new(), &storage);
        let policy = header_of(&edge, header::CONTENT_SECURITY_POLICY);
        assert!(
            policy.contains("img-src 'self' blob: https://s3.eu-west-1.amazonaws.com;"),
            "{policy}"
        );
        assert!(
            policy.contains("connect-src 'self' https://s3.eu-west-1.amazonaws.com;"),
            "{policy}"
        );
        for bad in [
            "s3.amazonaws.com",
            "ftp://host",
            "https://",
            "https://host; script-src *",
            "https://ho st",
        ] {
            assert!(Originals::storage_at(bad).is_err(), "{bad}");
        }
    }
}
