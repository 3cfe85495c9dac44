//! Image decoding and preprocessing equal to transformers' `CLIPImageProcessor` on PIL:
//! EXIF orientation applied, any colour type converted to RGB the way `PIL.Image.convert("RGB")`
//! does, the shortest side resized (long side rounded down), a centre crop (offset rounded down,
//! zero padding when the image is smaller than the crop), rescale and normalise.

use std::io::Cursor;

use fast_image_resize as fr;
use glimpse_core::photo::MAX_PIXELS;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::EncoderError;
use super::decode_budget::{self, decode_cost};

/// A size in preprocessor_config.json: `224`, `{"shortest_edge": 224}` or
/// `{"height": 224, "width": 224}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeSpec {
    /// Resize so that the shorter side has this length, keeping the aspect ratio.
    ShortestEdge(u32),
    /// An exact height and width.
    Exact {
        /// Rows.
        height: u32,
        /// Columns.
        width: u32,
    },
}

impl<'de> Deserialize<'de> for SizeSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u32),
            Shortest { shortest_edge: u32 },
            Exact { height: u32, width: u32 },
        }
        Ok(match Raw::deserialize(deserializer)? {
            // A bare number means "shortest edge" for `size` and "square" for `crop_size`; the
            // caller resolves which (see `ImageProcessorConfig::crop`).
            Raw::Number(n) | Raw::Shortest { shortest_edge: n } => Self::ShortestEdge(n),
            Raw::Exact { height, width } => Self::Exact { height, width },
        })
    }
}

/// PIL's resampling filters by their numeric code in preprocessor_config.json.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// 0
    Nearest,
    /// 1
    Lanczos,
    /// 2
    Bilinear,
    /// 3: CLIP's filter (a = −0.5).
    Bicubic,
    /// 4
    Box,
    /// 5
    Hamming,
}

impl<'de> Deserialize<'de> for Resample {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match u8::deserialize(deserializer)? {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            other => {
                return Err(de::Error::custom(format!(
                    "unknown PIL resampling filter {other} (expected 0 to 5)"
                )));
            }
        })
    }
}

impl Resample {
    fn algorithm(self) -> fr::ResizeAlg {
        use fr::FilterType as F;
        match self {
            Self::Nearest => fr::ResizeAlg::Nearest,
            Self::Lanczos => fr::ResizeAlg::Convolution(F::Lanczos3),
            Self::Bilinear => fr::ResizeAlg::Convolution(F::Bilinear),
            Self::Bicubic => fr::ResizeAlg::Convolution(F::CatmullRom),
            Self::Box => fr::ResizeAlg::Convolution(F::Box),
            Self::Hamming => fr::ResizeAlg::Convolution(F::Hamming),
        }
    }
}

/// preprocessor_config.json of a CLIP-family checkpoint; defaults are CLIPImageProcessor's.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ImageProcessorConfig {
    /// Resize before cropping.
    pub do_resize: bool,
    /// The resize target.
    pub size: SizeSpec,
    /// The resize filter.
    pub resample: Resample,
    /// Centre-crop after resizing.
    pub do_center_crop: bool,
    /// The crop; a bare number means a square.
    pub crop_size: SizeSpec,
    /// Multiply by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Subtract the mean and divide by the standard deviation, per channel.
    pub do_normalize: bool,
    /// Per-channel mean.
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation.
    pub image_std: [f32; 3],
}

impl Default for ImageProcessorConfig {
    // OpenAI's mean and standard deviation exactly as published.
    #[allow(clippy::excessive_precision)]
    fn default() -> Self {
        Self {
            do_resize: true,
            size: SizeSpec::ShortestEdge(224),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: SizeSpec::Exact {
                height: 224,
                width: 224,
            },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_58, 0.275_777_11],
        }
    }
}

impl ImageProcessorConfig {
    /// The `(height, width)` that preprocessing produces for an image of `(height, width)`.
    pub fn output_size(&self, height: u32, width: u32) -> (u32, u32) {
        let resized = self.resized_size(height, width);
        match self.crop() {
            Some(crop) => crop,
            None => resized,
        }
    }

    fn crop(&self) -> Option<(u32, u32)> {
        self.do_center_crop.then_some(match self.crop_size {
            SizeSpec::ShortestEdge(side) => (side, side),
            SizeSpec::Exact { height, width } => (height, width),
        })
    }

    fn resized_size(&self, height: u32, width: u32) -> (u32, u32) {
        if !self.do_resize {
            return (height, width);
        }
        match self.size {
            SizeSpec::Exact { height, width } => (height, width),
            SizeSpec::ShortestEdge(size) => {
                let (short, long) = (height.min(width), height.max(width));
                // transformers: int(size * long / short), a float division rounded down.
                let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
                if height <= width {
                    (size, new_long)
                } else {
                    (new_long, size)
                }
            }
        }
    }
}

/// Pixels ready for the image tower: `channels × height × width` f32, normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedImage {
    /// Channel-major values.
    pub pixels: Vec<f32>,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

pub(super) fn refuse_bombs(width: u32, height: u32) -> Result<u64, EncoderError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS {
        return Err(EncoderError::BadImage(format!(
            "the image is {width}×{height} pixels ({} megapixels); images over {} megapixels are \
             refused as possible decompression bombs",
            pixels / 1_000_000,
            MAX_PIXELS / 1_000_000
        )));
    }
    Ok(pixels)
}

pub(super) fn undecodable(error: impl std::fmt::Display) -> EncoderError {
    EncoderError::BadImage(format!("cannot decode the image: {error}"))
}

/// How JPEG photos are decoded before preprocessing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JpegDecode {
    /// Every pixel, as transformers (PIL) does: preprocessing equal to the reference.
    #[default]
    Full,
    /// PIL's `draft` mode: the decoder scales by 1/2, 1/4 or 1/8 in the DCT domain as long as the
    /// shorter side stays at least 1.5 times the resize target, then the usual bicubic resize
    /// runs. A 12-megapixel photo decodes at 1/8 (500×375 for a 224 target) in about half the
    /// time of every pixel, at a small, measured deviation from the reference
    /// (docs/BENCHMARKS.md). What [`crate::encoder::Precision::Auto`] does.
    Draft,
}

/// Decodes an encoded image (format sniffed from its bytes), applies its EXIF orientation and
/// converts it to 8-bit RGB as PIL's `convert("RGB")` does (alpha dropped, grey replicated,
/// palettes expanded, CMYK by Pillow's formula). Images over [`MAX_PIXELS`] are refused before any
/// pixel is allocated, and every decode holds its share of the process's decode memory (see
/// [`decode_budget`]): an image that needs more than all of it is refused.
///
/// JPEG goes through libjpeg-turbo, the decoder PIL uses (`jpeg-decoder` for what it refuses, see
/// [`super::jpeg`]); other formats through the `image` crate. With `draft_short_side`, a JPEG may
/// be decoded at a reduced scale whose shorter side is still at least that many pixels.
pub fn decode_rgb(bytes: &[u8], draft_short_side: Option<u32>) -> Result<RgbImage, EncoderError> {
    crate::crash_points::crash_while_decoding(bytes);
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| EncoderError::BadImage(format!("cannot read the image: {e}")))?;
    let (image, orientation) = match reader.format() {
        None => {
            return Err(EncoderError::BadImage(
                "not an image in a supported format (JPEG, PNG, WebP, GIF, BMP or TIFF)".into(),
            ));
        }
        Some(ImageFormat::Jpeg) => super::jpeg::decode(bytes, draft_short_side)?,
        Some(_) => {
            let mut decoder = reader.into_decoder().map_err(undecodable)?;
            let (width, height) = decoder.dimensions();
            let pixels = refuse_bombs(width, height)?;
            let bytes_per_pixel = u64::from(decoder.color_type().bytes_per_pixel());
            let _memory =
                decode_budget::reserve(decode_cost(pixels, bytes_per_pixel), width, height)?;
            let mut limits = Limits::default();
            // Room for the decoded image in its widest colour type, plus decoder scratch.
            limits.max_alloc = Some(pixels * 16 + (64 << 20));
            decoder.set_limits(limits).map_err(undecodable)?;
            let orientation = decoder.orientation().ok();
            let image = DynamicImage::from_decoder(decoder).map_err(undecodable)?;
            (image.into_rgb8(), orientation)
        }
    };
    let mut image = DynamicImage::ImageRgb8(image);
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(image.into_rgb8())
}

/// A JPEG of `image` scaled down (never up) to fit `size`×`size`, its aspect ratio kept: what a
/// photo grid shows.
pub fn thumbnail_jpeg(image: &RgbImage, size: u32) -> Result<Vec<u8>, EncoderError> {
    let (width, height) = image.dimensions();
    let longer = width.max(height);
    let scaled = |side: u32| {
        if longer <= size {
            side
        } else {
            (u64::from(side) * u64::from(size)).div_ceil(u64::from(longer)) as u32
        }
    };
    let small = image::imageops::thumbnail(image, scaled(width), scaled(height));
    let mut jpeg = Vec::new();
    small
        .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
        .map_err(|e| EncoderError::Internal(format!("the thumbnail cannot be encoded: {e}")))?;
    Ok(jpeg)
}

/// The CLIP image processor for one checkpoint.
#[derive(Clone, Debug)]
pub struct ImageProcessor {
    config: ImageProcessorConfig,
    jpeg_decode: JpegDecode,
    /// value → normalised value, per channel: rescale in f64 then normalise in f32, as numpy does.
    lookup: [[f32; 256]; 3],
}

impl ImageProcessor {
    /// A processor for `config`.
    pub fn new(config: ImageProcessorConfig) -> Self {
        let mut lookup = [[0.0; 256]; 3];
        for (channel, table) in lookup.iter_mut().enumerate() {
            for (value, slot) in table.iter_mut().enumerate() {
                let mut x = if config.do_rescale {
                    (value as f64 * config.rescale_factor) as f32
                } else {
                    value as f32
                };
                if config.do_normalize {
                    x = (x - config.image_mean[channel]) / config.image_std[channel];
                }
                *slot = x;
            }
        }
        Self {
            config,
            jpeg_decode: JpegDecode::Full,
            lookup,
        }
    }

    /// Chooses how JPEG photos are decoded (default [`JpegDecode::Full`]).
    pub fn with_jpeg_decode(mut self, jpeg_decode: JpegDecode) -> Self {
        self.jpeg_decode = jpeg_decode;
        self
    }

    /// The shorter side a draft-decoded JPEG keeps: 1.5 times the resize target, so that the
    /// bicubic filter still averages over several decoded pixels per output pixel (each of them
    /// the average of its block at 1/8 scale).
    fn draft_short_side(&self) -> Option<u32> {
        if self.jpeg_decode == JpegDecode::Full || !self.config.do_resize {
            return None;
        }
        Some(match self.config.size {
            SizeSpec::ShortestEdge(side) => 3 * side / 2,
            SizeSpec::Exact { height, width } => 3 * height.max(width) / 2,
        })
    }

    /// The configuration this processor follows.
    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// Decodes and preprocesses an encoded image.
    pub fn prepare(&self, bytes: &[u8]) -> Result<PreparedImage, EncoderError> {
        self.prepare_rgb(&decode_rgb(bytes, self.draft_short_side())?)
    }

    /// Decodes an encoded image once for both preprocessing and a JPEG thumbnail at most
    /// `thumbnail_size` pixels on its longer side (see [`thumbnail_jpeg`]).
    pub fn prepare_with_thumbnail(
        &self,
        bytes: &[u8],
        thumbnail_size: u32,
    ) -> Result<(PreparedImage, Vec<u8>), EncoderError> {
        let draft = self.draft_short_side().map(|side| side.max(thumbnail_size));
        let image = decode_rgb(bytes, draft)?;
        Ok((
            self.prepare_rgb(&image)?,
            thumbnail_jpeg(&image, thumbnail_size)?,
        ))
    }

    /// Preprocesses decoded RGB pixels.
    pub fn prepare_rgb(&self, image: &RgbImage) -> Result<PreparedImage, EncoderError> {
        let (height, width) = (image.height(), image.width());
        if height == 0 || width == 0 {
            return Err(EncoderError::BadImage("the image has no pixels".into()));
        }
        let (resized_h, resized_w) = self.config.resized_size(height, width);
        let resized;
        let source = if (resized_h, resized_w) == (height, width) {
            image
        } else {
            resized = self.resize(image, resized_h.max(1), resized_w.max(1))?;
            &resized
        };
        let (out_h, out_w) = self.config.crop().unwrap_or((resized_h, resized_w));
        Ok(self.crop_and_normalise(source, out_h, out_w))
    }

    /// Resizes like Pillow: a horizontal pass, its result rounded and clamped to 8 bits, then a
    /// vertical pass. (One combined call may run the passes in the other order, which clamps the
    /// overshoot of the bicubic filter differently at corners.)
    fn resize(&self, image: &RgbImage, height: u32, width: u32) -> Result<RgbImage, EncoderError> {
        let horizontal = self.resize_pass(image, image.height(), width)?;
        self.resize_pass(&horizontal, height, width)
    }

    fn resize_pass(
        &self,
        image: &RgbImage,
        height: u32,
        width: u32,
    ) -> Result<RgbImage, EncoderError> {
        if (image.height(), image.width()) == (height, width) {
            return Ok(image.clone());
        }
        let internal = |e: &dyn std::fmt::Display| EncoderError::Internal(format!("resize: {e}"));
        let src = fr::images::ImageRef::new(
            image.width(),
            image.height(),
            image.as_raw(),
            fr::PixelType::U8x3,
        )
        .map_err(|e| internal(&e))?;
        let mut dst = fr::images::Image::new(width, height, fr::PixelType::U8x3);
        let options = fr::ResizeOptions::new().resize_alg(self.config.resample.algorithm());
        fr::Resizer::new()
            .resize(&src, &mut dst, &options)
            .map_err(|e| internal(&e))?;
        RgbImage::from_raw(width, height, dst.into_vec())
            .ok_or_else(|| internal(&"resized buffer has the wrong size"))
    }

    /// Centre crop at offset `floor((size - crop) / 2)`; rows and columns outside the image are
    /// zero before normalisation, as transformers pads.
    fn crop_and_normalise(&self, image: &RgbImage, out_h: u32, out_w: u32) -> PreparedImage {
        let (h, w) = (i64::from(image.height()), i64::from(image.width()));
        let top = (h - i64::from(out_h)).div_euclid(2);
        let left = (w - i64::from(out_w)).div_euclid(2);
        let plane = out_h as usize * out_w as usize;
        let mut pixels = vec![0.0f32; 3 * plane];
        let raw = image.as_raw();
        for y in 0..i64::from(out_h) {
            let sy = y + top;
            for x in 0..i64::from(out_w) {
                let sx = x + left;
                let inside = (0..h).contains(&sy) && (0..w).contains(&sx);
                let at = (y * i64::from(out_w) + x) as usize;
                for c in 0..3 {
                    let value = if inside {
                        raw[((sy * w + sx) * 3) as usize + c]
                    } else {
                        0
                    };
                    pixels[c * plane + at] = self.lookup[c][usize::from(value)];
                }
            }
        }
        PreparedImage {
            pixels,
            height: out_h,
            width: out_w,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_config_styles() {
        let old: ImageProcessorConfig =
            serde_json::from_str(r#"{"size": 224, "crop_size": 224, "resample": 3}"#).unwrap();
        assert_eq!(old.crop(), Some((224, 224)));
        assert_eq!(old.resized_size(3000, 4000), (224, 298));
        let new: ImageProcessorConfig = serde_json::from_str(
            r#"{"size": {"shortest_edge": 72}, "crop_size": {"height": 64, "width": 48}}"#,
        )
        .unwrap();
        assert_eq!(new.resized_size(100, 50), (144, 72));
        assert_eq!(new.output_size(100, 50), (64, 48));
        assert!(serde_json::from_str::<ImageProcessorConfig>(r#"{"resample": 9}"#).is_err());
    }

    #[test]
    fn refuses_a_decompression_bomb_from_its_header() {
        // A PNG claiming 50000×50000 pixels (7.5 GB of RGB), with almost no data behind it.
        let chunk = |png: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = png.len();
            png.extend_from_slice(kind);
            png.extend_from_slice(data);
            let crc = crc32fast::hash(&png[start..]);
            png.extend_from_slice(&crc.to_be_bytes());
        };
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut header = Vec::new();
        header.extend_from_slice(&50_000u32.to_be_bytes());
        header.extend_from_slice(&50_000u32.to_be_bytes());
        header.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut png, b"IHDR", &header);
        chunk(
            &mut png,
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        chunk(&mut png, b"IEND", &[]);
        let error = decode_rgb(&png, None).unwrap_err().to_string();
        assert!(error.contains("decompression bomb"), "{error}");
    }

    #[test]
    fn refuses_bytes_that_are_not_an_image() {
        let error = decode_rgb(b"%PDF-1.7 not an image", None).unwrap_err();
        assert!(matches!(error, EncoderError::BadImage(_)), "{error:?}");
    }

    #[test]
    fn draft_decoding_scales_large_jpegs_and_stays_close_to_full_decoding() {
        // Smooth gradients, hard edges and sensor-like noise, as photos have.
        let photo = |width: u32, height: u32| {
            let image = RgbImage::from_fn(width, height, |x, y| {
                let noise = (x.wrapping_mul(7919) ^ y.wrapping_mul(104_729)) % 25;
                let edge = if (x / 250 + y / 250) % 2 == 0 { 60 } else { 0 };
                let channel = |base: u32| (base + edge + noise).min(255) as u8;
                image::Rgb([
                    channel(x * 180 / width),
                    channel(y * 180 / height),
                    channel((x + y) * 90 / (width + height) + 40),
                ])
            });
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
                .encode_image(&image)
                .unwrap();
            jpeg
        };
        let config = ImageProcessorConfig::default();
        let full = ImageProcessor::new(config.clone());
        let draft = ImageProcessor::new(config.clone()).with_jpeg_decode(JpegDecode::Draft);
        // For a 224 target the draft keeps a shorter side of at least 336: 1/2 of 1200 rows
        // (1/4 would leave 300), 1/8 of a 12-megapixel-class 3584×2688.
        for ((width, height), drafted) in [((1600, 1200), (800, 600)), ((3584, 2688), (448, 336))] {
            let jpeg = photo(width, height);
            assert_eq!(
                decode_rgb(&jpeg, draft.draft_short_side())
                    .unwrap()
                    .dimensions(),
                drafted
            );
            assert_eq!(
                decode_rgb(&jpeg, None).unwrap().dimensions(),
                (width, height)
            );
            let (exact, fast) = (full.prepare(&jpeg).unwrap(), draft.prepare(&jpeg).unwrap());
            let plane = exact.pixels.len() / 3;
            let diffs: Vec<f32> = exact
                .pixels
                .iter()
                .zip(&fast.pixels)
                .enumerate()
                .map(|(i, (a, b))| (a - b).abs() * config.image_std[i / plane] * 255.0)
                .collect();
            let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
            let max = diffs.iter().copied().fold(0.0, f32::max);
            println!("{width}×{height}: draft differs by mean {mean:.3}/255, max {max:.2}/255");
            assert!(
                mean < 1.0 && max <= 8.0,
                "{width}×{height}: draft differs by mean {mean}/255, max {max}/255"
            );
        }
    }
}
