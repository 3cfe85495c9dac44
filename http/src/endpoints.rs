//! The public API's endpoints: every path that either shape serves through [`crate::serve`], the
//! methods each answers and who may call it.

use http::Method;

/// One endpoint of the public API; ids are the path's text, checked by the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `GET /healthz`: the process answers.
    Health,
    /// `GET /api/openapi.json`: the shape's OpenAPI document.
    OpenApi,
    /// `GET /api/status`: the photos by indexing state (what waits for the workers).
    Status,
    /// `GET /api/albums`: albums with their photo counts.
    Albums,
    /// `GET /api/photos` (browse), `POST /api/photos` (upload in the body).
    Photos,
    /// `GET`, `DELETE /api/photos/{id}`.
    Photo(&'a str),
    /// `GET /api/photos/{id}/original`.
    Original(&'a str),
    /// `GET /api/photos/{id}/thumbnail`.
    Thumbnail(&'a str),
    /// `GET /api/photos/{id}/similar`.
    Similar(&'a str),
    /// `POST /api/photos/{id}/retry`.
    Retry(&'a str),
    /// `POST /api/uploads`: a staged upload straight to storage.
    Uploads,
    /// `POST /api/uploads/{id}`: completes a staged upload.
    Upload(&'a str),
    /// `GET`, `POST /api/search`.
    Search,
    /// `GET /api/search/{id}`: a logged search.
    SearchLog(&'a str),
    /// `POST /api/search/{id}/clicks`.
    Clicks(&'a str),
}

/// Who may call an endpoint with a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the endpoint holds no data.
    Open,
    /// Anyone unless reads are kept private.
    Read,
    /// Holders of the token: the request changes photos, settings or models.
    Write,
}

impl Endpoint<'static> {
    /// Every endpoint, ids as the path templates' parameters.
    pub const ALL: [Self; 15] = [
        Self::Health,
        Self::OpenApi,
        Self::Status,
        Self::Albums,
        Self::Photos,
        Self::Photo(ID),
        Self::Original(ID),
        Self::Thumbnail(ID),
        Self::Similar(ID),
        Self::Retry(ID),
        Self::Uploads,
        Self::Upload(ID),
        Self::Search,
        Self::SearchLog(ID),
        Self::Clicks(ID),
    ];
}

/// The id parameter of the path templates.
pub(crate) const ID: &str = "{id}";

impl<'a> Endpoint<'a> {
    /// The endpoint's path, with its id.
    pub fn template(&self) -> String {
        match self {
            Self::Health => "/healthz".to_owned(),
            Self::OpenApi => "/api/openapi.json".to_owned(),
            Self::Status => "/api/status".to_owned(),
            Self::Albums => "/api/albums".to_owned(),
            Self::Photos => "/api/photos".to_owned(),
            Self::Photo(id) => format!("/api/photos/{id}"),
            Self::Original(id) => format!("/api/photos/{id}/original"),
            Self::Thumbnail(id) => format!("/api/photos/{id}/thumbnail"),
            Self::Similar(id) => format!("/api/photos/{id}/similar"),
            Self::Retry(id) => format!("/api/photos/{id}/retry"),
            Self::Uploads => "/api/uploads".to_owned(),
            Self::Upload(id) => format!("/api/uploads/{id}"),
            Self::Search => "/api/search".to_owned(),
            Self::SearchLog(id) => format!("/api/search/{id}"),
            Self::Clicks(id) => format!("/api/search/{id}/clicks"),
        }
    }

    /// The endpoint a path names, if any.
    pub fn of(path: &'a str) -> Option<Self> {
        if path == "/healthz" {
            return Some(Self::Health);
        }
        let parts: Vec<&str> = path.strip_prefix("/api/")?.split('/').collect();
        Some(match parts.as_slice() {
            ["openapi.json"] => Self::OpenApi,
            ["status"] => Self::Status,
            ["albums"] => Self::Albums,
            ["photos"] => Self::Photos,
            ["photos", id] => Self::Photo(id),
            ["photos", id, "original"] => Self::Original(id),
            ["photos", id, "thumbnail"] => Self::Thumbnail(id),
            ["photos", id, "similar"] => Self::Similar(id),
            ["photos", id, "retry"] => Self::Retry(id),
            ["uploads"] => Self::Uploads,
            ["uploads", id] => Self::Upload(id),
            ["search"] => Self::Search,
            ["search", id] => Self::SearchLog(id),
            ["search", id, "clicks"] => Self::Clicks(id),
            _ => return None,
        })
    }

    /// The methods the endpoint answers.
    pub fn methods(&self) -> &'static [Method] {
        match self {
            Self::Health
            | Self::OpenApi
            | Self::Status
            | Self::Albums
            | Self::Original(_)
            | Self::Thumbnail(_)
            | Self::Similar(_)
            | Self::SearchLog(_) => &[Method::GET],
            Self::Photos | Self::Search => &[Method::GET, Method::POST],
            Self::Photo(_) => &[Method::GET, Method::DELETE],
            Self::Retry(_) | Self::Uploads | Self::Upload(_) | Self::Clicks(_) => &[Method::POST],
        }
    }

    /// Who may call the endpoint with `method`. A search (also by POST) and a click are reads:
    /// they change no photo, setting or model, and a click is accepted for a real result only.
    pub fn access(&self, method: &Method) -> Access {
        match self {
            Self::Health | Self::OpenApi => Access::Open,
            Self::Search | Self::Clicks(_) => Access::Read,
            _ => Access::of_method(method),
        }
    }
}

impl Access {
    /// Safe methods read; the others write.
    pub fn of_method(method: &Method) -> Self {
        if method.is_safe() {
            Self::Read
        } else {
            Self::Write
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_listed_once_and_its_template_routes_back_to_it() {
        for (i, endpoint) in Endpoint::ALL.iter().enumerate() {
            assert!(!Endpoint::ALL[..i].contains(endpoint), "{endpoint:?} twice");
            assert_eq!(Endpoint::of(&endpoint.template()), Some(*endpoint));
        }
    }

    #[test]
    fn paths_name_their_endpoint_and_nothing_else() {
        assert_eq!(Endpoint::of("/healthz"), Some(Endpoint::Health));
        assert_eq!(
            Endpoint::of("/api/photos/abc/original"),
            Some(Endpoint::Original("abc"))
        );
        assert_eq!(
            Endpoint::of("/api/search/q1/clicks"),
            Some(Endpoint::Clicks("q1"))
        );
        for path in [
            "/",
            "/api",
            "/api/",
            "/api/photos/a/b/c",
            "/apiphotos",
            "/api/stats",
        ] {
            assert_eq!(Endpoint::of(path), None, "{path}");
        }
    }

    #[test]
    fn searches_and_clicks_are_reads_deletes_are_writes() {
        assert_eq!(Endpoint::Search.access(&Method::POST), Access::Read);
        assert_eq!(Endpoint::Clicks("q").access(&Method::POST), Access::Read);
        assert_eq!(Endpoint::Photo("p").access(&Method::DELETE), Access::Write);
        assert_eq!(Endpoint::Photos.access(&Method::GET), Access::Read);
        assert_eq!(Endpoint::Health.access(&Method::GET), Access::Open);
    }
}
