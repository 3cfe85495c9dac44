//! The public API's endpoints: every path that either shape serves through [`crate::serve`], the
//! methods each answers and who may call it.

use http::Method;

/// One endpoint of the public API; ids are the path's text, checked by the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `GET /healthz`: the process answers.
    Health,
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

impl<'a> Endpoint<'a> {
    /// The endpoint a path names, if any.
    pub fn of(path: &'a str) -> Option<Self> {
        if path == "/healthz" {
            return Some(Self::Health);
        }
        let parts: Vec<&str> = path.strip_prefix("/api/")?.split('/').collect();
        Some(match parts.as_slice() {
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
            Self::Health => Access::Open,
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
            "/api/status",
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
