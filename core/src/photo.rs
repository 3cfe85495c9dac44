//! Photos: identity, where the original lives, what its header and EXIF say.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A photo's identity: the first 64 bits of the SHA-256 of its bytes, written as 16 lowercase hex
/// digits. Identical bytes have the same id, so re-indexing is idempotent everywhere (catalog rows,
/// vector-index points, blob keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhotoId(u64);

impl PhotoId {
    /// The id of a photo whose SHA-256 is `digest`.
    pub fn from_sha256(digest: &[u8; 32]) -> Self {
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self(u64::from_be_bytes(first))
    }

    /// The id as a number (vector-index point id).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id from its number.
    pub fn from_u64(value: u64) -> Self {
        Self(value)
    }

    /// The same 64 bits as a signed number, for databases without unsigned integers.
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }

    /// The id from [`Self::as_i64`]'s number.
    pub fn from_i64(value: i64) -> Self {
        Self(value as u64)
    }
}

impl fmt::Display for PhotoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A string that is not a photo id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a photo id: ids are 16 hexadecimal digits, as the API returns them")]
pub struct PhotoIdError(pub String);

impl FromStr for PhotoId {
    type Err = PhotoIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PhotoIdError(text.chars().take(40).collect()));
        }
        u64::from_str_radix(text, 16)
            .map(Self)
            .map_err(|_| PhotoIdError(text.to_owned()))
    }
}

/// What a photo id looks like: what [`PhotoId`]'s `FromStr` accepts.
pub const PHOTO_ID_PATTERN: &str = "^[0-9a-fA-F]{16}$";

crate::serde_as_text!(
    PhotoId,
    PHOTO_ID_PATTERN,
    "A photo id: 16 hexadecimal digits (the start of the SHA-256 of its bytes)."
);

/// What album names (and every text the catalog keeps from a request) match: no NUL character,
/// which Postgres cannot store.
pub const TEXT_PATTERN: &str = "^[^\\x00]*$";

/// The JSON Schema of an album name: text without NUL ([`TEXT_PATTERN`]).
pub struct AlbumName;

crate::inline_schema!(AlbumName, {
    crate::text_schema(
        schemars::schema::StringValidation {
            pattern: Some(TEXT_PATTERN.to_owned()),
            ..Default::default()
        },
        None,
        "The album to file the photo in (blank for none); no NUL character.",
    )
});

/// The JSON Schema of a media type Glimpse indexes: one of [`ImageFormat::media_type`]'s.
pub struct IndexedMediaType;

crate::inline_schema!(IndexedMediaType, {
    schemars::schema::SchemaObject {
        instance_type: Some(schemars::schema::InstanceType::String.into()),
        enum_values: Some(
            ImageFormat::ALL
                .iter()
                .map(|format| format.media_type().into())
                .collect(),
        ),
        ..Default::default()
    }
    .into()
});

/// Where a photo's original is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", content = "key", rename_all = "snake_case")]
pub enum Origin {
    /// A file of the user's library, read in place; the key is its path relative to the library
    /// root, with `/` separators.
    Library(String),
    /// Bytes uploaded through the API, kept in the blob store under this key.
    Upload(String),
}

impl Origin {
    /// The blob-store key of the original.
    pub fn blob_key(&self) -> String {
        match self {
            Self::Library(path) => format!("{LIBRARY_PREFIX}{path}"),
            Self::Upload(key) => key.clone(),
        }
    }

    /// The key under which an upload with this id is stored.
    pub fn upload_key(id: PhotoId) -> String {
        format!("originals/{id}")
    }

    /// The stable kind name (`library` or `upload`) and the key, as catalogs store them.
    pub fn kind_and_key(&self) -> (&'static str, &str) {
        match self {
            Self::Library(key) => ("library", key),
            Self::Upload(key) => ("upload", key),
        }
    }

    /// The origin stored as this kind and key; `None` for an unknown kind.
    pub fn from_kind_and_key(kind: &str, key: String) -> Option<Self> {
        match kind {
            "library" => Some(Self::Library(key)),
            "upload" => Some(Self::Upload(key)),
            _ => None,
        }
    }
}

/// The id of an upload that goes straight to storage (too large to pass through a request):
/// 128 random bits, 32 hex digits. The client puts the original under
/// [`staged_key`](Self::staged_key), then completes the upload naming the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UploadId([u8; 16]);

impl UploadId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(crate::random_id::fresh())
    }

    /// Where the original waits, and stays once the upload is complete.
    pub fn staged_key(&self) -> String {
        format!("{STAGED_PREFIX}{self}")
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::random_id::write_hex(&self.0, f)
    }
}

/// A string that is not an upload id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an upload id: upload ids are the 32 hexadecimal digits POST /api/uploads returns")]
pub struct UploadIdError;

impl FromStr for UploadId {
    type Err = UploadIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        crate::random_id::parse_hex(text)
            .map(Self)
            .ok_or(UploadIdError)
    }
}

crate::serde_as_text!(
    UploadId,
    crate::random_id::PATTERN,
    "An upload id: the 32 hexadecimal digits POST /api/uploads returns."
);

/// An upload a client was handed a storage URL for, from then until it is completed, refused or
/// expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedUpload {
    /// Its id.
    pub id: UploadId,
    /// The size the client declared, which the URL binds.
    pub bytes: u64,
    /// When the URL was handed out, seconds since 1970.
    pub started_at: i64,
}

/// The longest side of a photo's thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 320;

impl PhotoId {
    /// The blob-store key of this photo's thumbnail (a JPEG at most [`THUMBNAIL_SIZE`] on its
    /// longer side), made while indexing or on first request, and removed with the photo.
    pub fn thumbnail_key(self) -> String {
        format!("thumbnails/{self}-{THUMBNAIL_SIZE}.jpg")
    }
}

/// Blob keys under this prefix hold originals uploaded straight to storage.
pub const STAGED_PREFIX: &str = "staged/";

/// Blob keys under this prefix name files of the library (read-only, in place).
pub const LIBRARY_PREFIX: &str = "library/";

/// Where a photo is in the indexing pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PhotoStatus {
    /// Waiting for (or in) feature extraction.
    Pending,
    /// Its embedding is in the vector index.
    Indexed,
    /// Feature extraction gave up; `last_error` says why.
    Failed,
}

impl PhotoStatus {
    /// The stable lowercase name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Indexed => "indexed",
            Self::Failed => "failed",
        }
    }

    /// The status with this name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(Self::Pending),
            "indexed" => Some(Self::Indexed),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A latitude/longitude pair in degrees (WGS 84), from EXIF.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GeoPoint {
    /// Degrees north (negative: south).
    pub latitude: f64,
    /// Degrees east (negative: west).
    pub longitude: f64,
}

/// The encoded image formats Glimpse accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// WebP.
    Webp,
    /// GIF (the first frame is indexed).
    Gif,
    /// Windows bitmap.
    Bmp,
    /// TIFF.
    Tiff,
}

impl ImageFormat {
    /// The format these bytes start with, from their magic number.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [0xFF, 0xD8, 0xFF, ..] => Some(Self::Jpeg),
            [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(Self::Png),
            [
                b'R',
                b'I',
                b'F',
                b'F',
                _,
                _,
                _,
                _,
                b'W',
                b'E',
                b'B',
                b'P',
                ..,
            ] => Some(Self::Webp),
            [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(Self::Gif),
            [b'B', b'M', ..] => Some(Self::Bmp),
            [b'I', b'I', 42, 0, ..] | [b'M', b'M', 0, 42, ..] => Some(Self::Tiff),
            _ => None,
        }
    }

    /// Every accepted format.
    pub const ALL: [Self; 6] = [
        Self::Jpeg,
        Self::Png,
        Self::Webp,
        Self::Gif,
        Self::Bmp,
        Self::Tiff,
    ];

    /// The stable lowercase name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Gif => "gif",
            Self::Bmp => "bmp",
            Self::Tiff => "tiff",
        }
    }

    /// The format with this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The media type, for `Content-Type`.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
            Self::Bmp => "image/bmp",
            Self::Tiff => "image/tiff",
        }
    }

    /// Whether a file name has the extension of an accepted format (any case).
    pub fn has_image_extension(name: &str) -> bool {
        let Some((_, extension)) = name.rsplit_once('.') else {
            return false;
        };
        matches!(
            extension.to_ascii_lowercase().as_str(),
            "jpg" | "jpeg" | "png" | "webp" | "gif" | "bmp" | "tif" | "tiff"
        )
    }
}

/// The most pixels an image may have (Pillow's decompression-bomb limit, 2 × 89,478,485).
pub const MAX_PIXELS: u64 = 178_956_970;

/// What the bytes of an image say about it, read from the header and EXIF only.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageFacts {
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// The id these bytes get.
    pub id: PhotoId,
    /// The encoded format.
    pub format: ImageFormat,
    /// Width in pixels, as stored (before EXIF orientation).
    pub width: u32,
    /// Height in pixels, as stored.
    pub height: u32,
    /// EXIF `DateTimeOriginal` (or `DateTime`), seconds since 1970 of the camera's wall clock.
    pub taken_at: Option<i64>,
    /// EXIF make and model, e.g. "Google Pixel 8".
    pub camera: Option<String>,
    /// EXIF GPS position.
    pub location: Option<GeoPoint>,
}

/// Why bytes cannot be accepted as a photo.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectedImage {
    /// Not one of the accepted formats.
    #[error(
        "this is not an image Glimpse can index (accepted: JPEG, PNG, WebP, GIF, BMP, TIFF){0}"
    )]
    UnsupportedType(String),
    /// The header cannot be read.
    #[error("the image header cannot be read: {0}")]
    Unreadable(String),
    /// The image has more pixels than any photo (a decompression bomb).
    #[error(
        "the image claims {width}×{height} pixels, more than the {MAX_PIXELS}-pixel limit; \
         it was refused without being decoded"
    )]
    TooManyPixels {
        /// Declared width.
        width: u64,
        /// Declared height.
        height: u64,
    },
}

/// Reads what can be known about an image without decoding its pixels, refusing what cannot be
/// indexed: unknown formats, unreadable headers and decompression bombs.
pub fn inspect(bytes: &[u8]) -> Result<ImageFacts, RejectedImage> {
    inspect_head(bytes, Sha256::digest(bytes).into())
}

/// [`inspect`] for an image read in parts: `head` is its start (the whole image when it is
/// small; header and EXIF are read from it, so [`HEAD_BYTES`] of a larger one), `sha256` the
/// digest of all its bytes.
pub fn inspect_head(head: &[u8], sha256: [u8; 32]) -> Result<ImageFacts, RejectedImage> {
    let Some(format) = ImageFormat::sniff(head) else {
        let detail = if head.is_empty() {
            ": the body is empty".to_owned()
        } else {
            String::new()
        };
        return Err(RejectedImage::UnsupportedType(detail));
    };
    let size = imagesize::blob_size(head).map_err(|e| RejectedImage::Unreadable(e.to_string()))?;
    let (width, height) = (size.width as u64, size.height as u64);
    if width == 0 || height == 0 {
        return Err(RejectedImage::Unreadable(format!(
            "it declares {width}×{height} pixels"
        )));
    }
    if width.saturating_mul(height) > MAX_PIXELS {
        return Err(RejectedImage::TooManyPixels { width, height });
    }
    let exif = read_exif(head);
    Ok(ImageFacts {
        sha256: sha256.iter().map(|b| format!("{b:02x}")).collect(),
        id: PhotoId::from_sha256(&sha256),
        format,
        width: width as u32,
        height: height as u32,
        taken_at: exif.as_ref().and_then(exif_taken_at),
        camera: exif.as_ref().and_then(exif_camera),
        location: exif.as_ref().and_then(exif_location),
    })
}

/// How much of a large image's start [`inspect_head`] needs: its header, and the EXIF block
/// that cameras write near the start (JPEG's APP1 segment is at most 64 KB).
pub const HEAD_BYTES: usize = 4 * 1024 * 1024;

fn read_exif(bytes: &[u8]) -> Option<exif::Exif> {
    exif::Reader::new()
        .read_from_container(&mut std::io::Cursor::new(bytes))
        .ok()
}

fn exif_text(exif: &exif::Exif, tag: exif::Tag) -> Option<String> {
    let field = exif.get_field(tag, exif::In::PRIMARY)?;
    match &field.value {
        exif::Value::Ascii(parts) => {
            let text: String = parts
                .iter()
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            // NUL pads EXIF strings, and no catalog keeps it inside a text.
            let text = text.replace('\0', " ");
            let text = text.trim();
            (!text.is_empty()).then(|| text.to_owned())
        }
        _ => None,
    }
}

fn exif_taken_at(exif: &exif::Exif) -> Option<i64> {
    [exif::Tag::DateTimeOriginal, exif::Tag::DateTime]
        .into_iter()
        .find_map(|tag| {
            let field = exif.get_field(tag, exif::In::PRIMARY)?;
            let exif::Value::Ascii(parts) = &field.value else {
                return None;
            };
            let time = exif::DateTime::from_ascii(parts.first()?).ok()?;
            let days = days_from_civil(i64::from(time.year), time.month, time.day)?;
            Some(
                days * 86_400
                    + i64::from(time.hour) * 3600
                    + i64::from(time.minute) * 60
                    + i64::from(time.second),
            )
        })
}

fn exif_camera(exif: &exif::Exif) -> Option<String> {
    let make = exif_text(exif, exif::Tag::Make);
    let model = exif_text(exif, exif::Tag::Model);
    match (make, model) {
        (Some(make), Some(model)) if model.to_lowercase().starts_with(&make.to_lowercase()) => {
            Some(model)
        }
        (Some(make), Some(model)) => Some(format!("{make} {model}")),
        (make, model) => make.or(model),
    }
}

fn exif_location(exif: &exif::Exif) -> Option<GeoPoint> {
    let degrees = |tag, reference_tag, negative: &str| -> Option<f64> {
        let field = exif.get_field(tag, exif::In::PRIMARY)?;
        let exif::Value::Rational(parts) = &field.value else {
            return None;
        };
        let [d, m, s] = parts.as_slice() else {
            return None;
        };
        let value = d.to_f64() + m.to_f64() / 60.0 + s.to_f64() / 3600.0;
        let reference = exif_text(exif, reference_tag).unwrap_or_default();
        let value = if reference.eq_ignore_ascii_case(negative) {
            -value
        } else {
            value
        };
        value.is_finite().then_some(value)
    };
    let latitude = degrees(exif::Tag::GPSLatitude, exif::Tag::GPSLatitudeRef, "S")?;
    let longitude = degrees(exif::Tag::GPSLongitude, exif::Tag::GPSLongitudeRef, "W")?;
    ((-90.0..=90.0).contains(&latitude) && (-180.0..=180.0).contains(&longitude)).then_some(
        GeoPoint {
            latitude,
            longitude,
        },
    )
}

/// Days from 1970-01-01 to a proleptic Gregorian date, or `None` for an impossible date.
pub fn days_from_civil(year: i64, month: u8, day: u8) -> Option<i64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = i64::from(month);
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

/// A photo as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Photo {
    /// Its id.
    pub id: PhotoId,
    /// SHA-256 of the original, lowercase hex.
    pub sha256: String,
    /// Where the original is.
    pub origin: Origin,
    /// The encoded format.
    pub format: ImageFormat,
    /// Size of the original in bytes.
    pub bytes: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// When it was taken (EXIF), seconds since 1970 of the camera's wall clock.
    pub taken_at: Option<i64>,
    /// The date searches filter on: `taken_at`, else the file's modification time, else when it
    /// was added.
    pub dated_at: i64,
    /// Camera make and model (EXIF).
    pub camera: Option<String>,
    /// Where it was taken (EXIF GPS).
    pub location: Option<GeoPoint>,
    /// Album: the library folder it is in, or the album given at upload.
    pub album: Option<String>,
    /// Indexing state.
    pub status: PhotoStatus,
    /// Why indexing failed (or last went wrong), in words.
    pub last_error: Option<String>,
    /// When it was added to the catalog, seconds since 1970 (UTC).
    pub added_at: i64,
    /// The library file's modification time, seconds since 1970 (how rescans notice changes).
    pub modified_at: Option<i64>,
}

impl Photo {
    /// Builds the catalog record of a new photo from its facts.
    pub fn new(facts: ImageFacts, details: NewPhotoDetails, now: i64) -> Self {
        Self {
            id: facts.id,
            sha256: facts.sha256,
            origin: details.origin,
            format: facts.format,
            bytes: details.bytes,
            width: facts.width,
            height: facts.height,
            taken_at: facts.taken_at,
            dated_at: facts.taken_at.or(details.modified_at).unwrap_or(now),
            camera: facts.camera,
            location: facts.location,
            album: details.album,
            status: PhotoStatus::Pending,
            last_error: None,
            added_at: now,
            modified_at: details.modified_at,
        }
    }

    /// What the vector index stores beside the photo's vector, for filtering.
    pub fn facets(&self) -> Facets {
        Facets {
            album: self.album.as_deref().map(str::to_lowercase),
            camera: self.camera.as_deref().map(str::to_lowercase),
            dated_at: self.dated_at,
        }
    }
}

/// What the caller knows of a new photo beyond its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct NewPhotoDetails {
    /// Where the original is.
    pub origin: Origin,
    /// Size in bytes.
    pub bytes: u64,
    /// The album.
    pub album: Option<String>,
    /// The file's modification time, for library files.
    pub modified_at: Option<i64>,
}

/// The filterable fields stored with a vector (lowercased for case-insensitive matching).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facets {
    /// Album, lowercase.
    pub album: Option<String>,
    /// Camera, lowercase.
    pub camera: Option<String>,
    /// [`Photo::dated_at`].
    pub dated_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = PhotoId::from_sha256(&[0xab; 32]);
        assert_eq!(id.to_string(), "abababababababab");
        assert_eq!(id.to_string().parse::<PhotoId>(), Ok(id));
        assert!("abc".parse::<PhotoId>().is_err());
        assert!("zzzzzzzzzzzzzzzz".parse::<PhotoId>().is_err());
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(2024, 2, 29), Some(19_782));
        assert_eq!(days_from_civil(2024, 13, 1), None);
    }

    #[test]
    fn sniffing_knows_the_accepted_formats_only() {
        assert_eq!(
            ImageFormat::sniff(b"\xFF\xD8\xFF\xE0"),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(ImageFormat::sniff(b"GIF89a.."), Some(ImageFormat::Gif));
        assert_eq!(ImageFormat::sniff(b"%PDF-1.7"), None);
        assert!(ImageFormat::has_image_extension("IMG_0001.JPG"));
        assert!(!ImageFormat::has_image_extension("notes.txt"));
    }

    #[test]
    fn a_bomb_header_is_refused_before_decoding() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&50_000u32.to_be_bytes());
        png.extend_from_slice(&50_000u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            inspect(&png),
            Err(RejectedImage::TooManyPixels {
                width: 50_000,
                height: 50_000
            })
        );
        assert!(matches!(
            inspect(b"hello"),
            Err(RejectedImage::UnsupportedType(_))
        ));
    }
}
