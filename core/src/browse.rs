//! Browsing: photos in date order with filters and no ranking, page by page, and the albums.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::photo::{Photo, PhotoId};

/// The most photos one page holds.
pub const MAX_PAGE: usize = 200;
/// Photos per page when the request does not say.
pub const DEFAULT_PAGE: usize = 60;

/// Where the next page starts: just after this photo in browse order (newest `dated_at` first).
/// Its text form, `<dated_at>_<photo id>`, is what clients pass back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrowseCursor {
    /// The last photo's `dated_at`.
    pub dated_at: i64,
    /// The last photo.
    pub id: PhotoId,
}

impl BrowseCursor {
    /// The cursor that continues after `photo`.
    pub fn after(photo: &Photo) -> Self {
        Self {
            dated_at: photo.dated_at,
            id: photo.id,
        }
    }
}

impl fmt::Display for BrowseCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.dated_at, self.id)
    }
}

/// A string that is not a cursor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a page cursor: pass back the `next_cursor` of the previous page unchanged")]
pub struct BrowseCursorError;

impl FromStr for BrowseCursor {
    type Err = BrowseCursorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (dated_at, id) = text.split_once('_').ok_or(BrowseCursorError)?;
        let digits = dated_at.strip_prefix('-').unwrap_or(dated_at);
        if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BrowseCursorError);
        }
        Ok(Self {
            dated_at: dated_at.parse().map_err(|_| BrowseCursorError)?,
            id: id.parse().map_err(|_| BrowseCursorError)?,
        })
    }
}

crate::serde_as_text!(
    BrowseCursor,
    "^-?[0-9]{1,18}_[0-9a-fA-F]{16}$",
    "Where the next page starts: the `next_cursor` of the previous page, unchanged."
);

/// One page of browsed photos.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct BrowsePage {
    /// The photos, newest first.
    pub photos: Vec<Photo>,
    /// Pass this back for the next page; absent on the last page.
    pub next_cursor: Option<BrowseCursor>,
}

/// An album and how many photos it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AlbumSummary {
    /// Its name (albums differing only in case are one album).
    pub name: String,
    /// How many photos are in it.
    pub photos: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = BrowseCursor {
            dated_at: -86_400,
            id: PhotoId::from_u64(0xdead_beef),
        };
        assert_eq!(cursor.to_string(), "-86400_00000000deadbeef");
        assert_eq!(cursor.to_string().parse(), Ok(cursor));
        for bad in ["", "12", "x_00000000deadbeef", "12_nothex", "12_"] {
            assert_eq!(bad.parse::<BrowseCursor>(), Err(BrowseCursorError), "{bad}");
        }
    }
}
