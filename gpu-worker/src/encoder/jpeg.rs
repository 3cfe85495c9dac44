//! JPEG decoding. libjpeg-turbo's decoder (the one PIL uses, built from source by `mozjpeg-sys`)
//! decodes the 8-bit YCbCr, RGB and greyscale JPEGs that cameras and phones write, and scales by
//! 1/2, 1/4 or 1/8 in the DCT domain for draft decoding. Whatever it refuses or warns about —
//! CMYK, 12-bit samples, truncated or corrupt data, a marker it does not know — is decoded by
//! `jpeg-decoder` as before, so every JPEG that decoded still decodes the same way and a broken
//! one is still refused with `jpeg-decoder`'s reason.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use image::RgbImage;
use image::metadata::Orientation;
use jpeg_decoder::PixelFormat;
use mozjpeg::{ColorSpace, Decompress, Marker};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr};

use super::EncoderError;
use super::decode_budget::{self, decode_cost};
use super::image::{refuse_bombs, undecodable};

/// A decoded JPEG and the orientation its EXIF data asks for.
pub(super) type DecodedJpeg = (RgbImage, Option<Orientation>);

/// Decodes a JPEG to RGB. With `draft_short_side`, it may be decoded at 1/2, 1/4 or 1/8 scale:
/// the smallest whose shorter side is still at least that many pixels. Images over
/// [`glimpse_core::photo::MAX_PIXELS`] are refused from their header, and the decoded pixels hold
/// their share of the decode memory (see [`decode_budget`]).
pub(super) fn decode(
    bytes: &[u8],
    draft_short_side: Option<u32>,
) -> Result<DecodedJpeg, EncoderError> {
    match with_libjpeg(bytes, draft_short_side) {
        Some(decoded) => decoded,
        None => with_jpeg_decoder(bytes, draft_short_side),
    }
}

/// libjpeg-turbo's decode, or `None` where `jpeg-decoder` should decode instead: a colour space
/// other than YCbCr, RGB or grey, or any error or warning of libjpeg's (which unwinds out of it).
fn with_libjpeg(
    bytes: &[u8],
    draft_short_side: Option<u32>,
) -> Option<Result<DecodedJpeg, EncoderError>> {
    catch_unwind(AssertUnwindSafe(|| {
        let decoder = Decompress::builder()
            .with_err(errors_and_warnings_unwind())
            .with_markers(&[Marker::APP(1)])
            .from_mem(bytes)
            .ok()?;
        if !matches!(
            decoder.color_space(),
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB | ColorSpace::JCS_GRAYSCALE
        ) {
            return None;
        }
        decode_started(decoder, draft_short_side).transpose()
    }))
    .ok()
    .flatten()
}

/// The decode once the header is read: `Err` for a refusal that stands whatever the decoder (too
/// many pixels, no decode memory), `Ok(None)` where `jpeg-decoder` should try.
fn decode_started(
    mut decoder: Decompress<&[u8]>,
    draft_short_side: Option<u32>,
) -> Result<Option<DecodedJpeg>, EncoderError> {
    let (width, height) = (decoder.width() as u32, decoder.height() as u32);
    refuse_bombs(width, height)?;
    let eighths = draft_eighths(width, height, draft_short_side);
    let (out_width, out_height) = (scaled(width, eighths), scaled(height, eighths));
    let _memory = decode_budget::reserve(
        decode_cost(u64::from(out_width) * u64::from(out_height), 3),
        out_width,
        out_height,
    )?;
    let orientation = decoder
        .markers()
        .find_map(|marker| marker.data.strip_prefix(b"Exif\0\0"))
        .and_then(Orientation::from_exif_chunk);
    decoder.scale(eighths);
    let Ok(mut started) = decoder.rgb() else {
        return Ok(None);
    };
    let Ok(pixels) = started.read_scanlines::<u8>() else {
        return Ok(None);
    };
    let (out_width, out_height) = (started.width() as u32, started.height() as u32);
    if started.finish().is_err() {
        return Ok(None);
    }
    Ok(RgbImage::from_raw(out_width, out_height, pixels).map(|image| (image, orientation)))
}

/// The scale, in eighths, at which a `width`×`height` JPEG decodes: the smallest of 1/8, 1/4 and
/// 1/2 whose shorter side keeps `draft_short_side` pixels, else every pixel.
fn draft_eighths(width: u32, height: u32, draft_short_side: Option<u32>) -> u8 {
    draft_short_side.map_or(8, |short_side| {
        [1, 2, 4]
            .into_iter()
            .find(|&eighths| scaled(width.min(height), eighths) >= short_side)
            .unwrap_or(8)
    })
}

/// A side's length decoded at `eighths`/8, rounded up as libjpeg (jpeg_calc_output_dimensions)
/// and jpeg-decoder do.
fn scaled(side: u32, eighths: u8) -> u32 {
    (u64::from(side) * u64::from(eighths)).div_ceil(8) as u32
}

/// libjpeg's error manager with its errors and its warnings (corrupt data, a premature end of
/// the data) both unwinding out of the decoder instead of exiting or printing.
#[allow(unsafe_code)]
fn errors_and_warnings_unwind() -> jpeg_error_mgr {
    extern "C-unwind" fn give_up(_: &mut jpeg_common_struct) {
        resume_unwind(Box::new("libjpeg error"));
    }
    extern "C-unwind" fn give_up_on_warnings(
        _: &mut jpeg_common_struct,
        level: std::os::raw::c_int,
    ) {
        // Negative levels are warnings; the others are trace messages.
        if level < 0 {
            resume_unwind(Box::new("libjpeg warning"));
        }
    }
    // SAFETY: an all-zero jpeg_error_mgr is its C initial state (null handlers and tables), and
    // jpeg_std_error fills every field of it before anything reads one.
    let mut errors: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    // SAFETY: `errors` is a valid, exclusively borrowed jpeg_error_mgr.
    unsafe { mozjpeg_sys::jpeg_std_error(&mut errors) };
    errors.error_exit = Some(give_up);
    errors.emit_message = Some(give_up_on_warnings);
    errors
}

fn with_jpeg_decoder(
    bytes: &[u8],
    draft_short_side: Option<u32>,
) -> Result<DecodedJpeg, EncoderError> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().map_err(undecodable)?;
    let header = decoder
        .info()
        .ok_or_else(|| undecodable("no frame header"))?;
    let (width, height) = (u32::from(header.width), u32::from(header.height));
    let pixels = refuse_bombs(width, height)?;
    let eighths = draft_eighths(width, height, draft_short_side);
    if eighths < 8 {
        // Asking for exactly that size makes jpeg-decoder pick the same scale; it is no larger
        // than the u16 header's.
        decoder
            .scale(
                scaled(width, eighths) as u16,
                scaled(height, eighths) as u16,
            )
            .map_err(undecodable)?;
    }
    let info = decoder
        .info()
        .ok_or_else(|| undecodable("no frame header"))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    let bytes_per_pixel = info.pixel_format.pixel_bytes() as u64;
    let _memory = decode_budget::reserve(
        decode_cost(u64::from(width) * u64::from(height), bytes_per_pixel),
        width,
        height,
    )?;
    decoder.set_max_decoding_buffer_size(usize::try_from(pixels * 4).unwrap_or(usize::MAX));
    let data = decoder.decode().map_err(undecodable)?;
    let orientation = decoder.exif_data().and_then(Orientation::from_exif_chunk);
    let rgb: Vec<u8> = match info.pixel_format {
        PixelFormat::RGB24 => data,
        PixelFormat::L8 => data.iter().flat_map(|&l| [l, l, l]).collect(),
        // 16-bit samples (big-endian) rounded to 8 bits.
        PixelFormat::L16 => data
            .chunks_exact(2)
            .flat_map(|s| {
                let l = ((u32::from(u16::from_be_bytes([s[0], s[1]])) + 128) / 257) as u8;
                [l, l, l]
            })
            .collect(),
        PixelFormat::CMYK32 => data
            .chunks_exact(4)
            .flat_map(|p| {
                // Pillow's cmyk2rgb: channel = (255 − k) − round(c · (255 − k) / 255).
                let nk = 255 - u32::from(p[3]);
                let mul_div_255 = |c: u8| {
                    let t = u32::from(c) * nk + 128;
                    ((t >> 8) + t) >> 8
                };
                [p[0], p[1], p[2]].map(|c| (nk - mul_div_255(c)) as u8)
            })
            .collect(),
    };
    let image = RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| undecodable("decoded buffer has the wrong size"))?;
    Ok((image, orientation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_image(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/reference/images")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn photo_jpeg(width: u32, height: u32) -> Vec<u8> {
        let photo = RgbImage::from_fn(width, height, |x, y| {
            let noise = ((x.wrapping_mul(7919) ^ y.wrapping_mul(104_729)) % 9) as u8;
            image::Rgb([(x / 7) as u8, (y / 5) as u8 + noise, ((x + y) / 11) as u8])
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&photo)
            .unwrap();
        jpeg
    }

    fn largest_difference(a: &RgbImage, b: &RgbImage) -> u8 {
        assert_eq!(a.dimensions(), b.dimensions());
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn libjpeg_decodes_what_cameras_write_as_jpeg_decoder_does_at_every_scale() {
        let odd_sized = photo_jpeg(1203, 901);
        let grey = reference_image("grayscale.jpg");
        let rotated = reference_image("exif-rotated.jpg");
        for (bytes, draft) in [
            (&odd_sized, None),
            (&odd_sized, Some(448)),
            (&odd_sized, Some(224)),
            (&odd_sized, Some(100)),
            (&grey, None),
            (&rotated, None),
        ] {
            let (fast, fast_orientation) = with_libjpeg(bytes, draft)
                .expect("libjpeg decodes an 8-bit YCbCr or grey JPEG")
                .unwrap();
            let (slow, slow_orientation) = with_jpeg_decoder(bytes, draft).unwrap();
            assert_eq!(fast.dimensions(), slow.dimensions(), "draft {draft:?}");
            assert_eq!(fast_orientation, slow_orientation);
            // jpeg-decoder follows libjpeg's IDCTs and chroma upsampling to within rounding.
            let diff = largest_difference(&fast, &slow);
            assert!(diff <= 3, "draft {draft:?}: they differ by {diff}/255");
        }
        assert_eq!(
            with_libjpeg(&odd_sized, Some(448))
                .unwrap()
                .unwrap()
                .0
                .dimensions(),
            (602, 451),
            "1/2 keeps 451 ≥ 448 rows, 1/4 would not"
        );
        assert!(with_libjpeg(&rotated, None).unwrap().unwrap().1.is_some());
    }

    #[test]
    fn what_libjpeg_refuses_or_warns_about_goes_to_jpeg_decoder() {
        // CMYK: jpeg-decoder decodes it, with Pillow's conversion.
        let cmyk = reference_image("cmyk.jpg");
        assert!(with_libjpeg(&cmyk, None).is_none());
        assert!(decode(&cmyk, None).is_ok());
        // Truncated data: libjpeg would fill the rest with grey and warn; the photo is refused.
        let mut truncated = photo_jpeg(640, 480);
        truncated.truncate(truncated.len() / 3);
        assert!(with_libjpeg(&truncated, None).is_none());
        assert!(matches!(
            decode(&truncated, None),
            Err(EncoderError::BadImage(_))
        ));
        // Garbage after the start-of-image marker: neither decodes it.
        let mut garbage = b"\xff\xd8\xff".to_vec();
        garbage.extend(std::iter::repeat_n(0x5a_u8, 4096));
        assert!(with_libjpeg(&garbage, None).is_none());
        assert!(matches!(
            decode(&garbage, None),
            Err(EncoderError::BadImage(_))
        ));
    }

    #[test]
    fn a_jpeg_with_too_many_pixels_is_refused_before_decoding() {
        // An 8×8 baseline JPEG whose frame header is rewritten to 60000×60000.
        let mut bomb = photo_jpeg(8, 8);
        let frame = bomb
            .windows(2)
            .position(|w| w == [0xff, 0xc0])
            .expect("a baseline frame header");
        bomb[frame + 5..frame + 9].copy_from_slice(&[0xea, 0x60, 0xea, 0x60]);
        let refused = with_libjpeg(&bomb, None).expect("refused by libjpeg's path, not handed on");
        assert!(
            matches!(&refused, Err(EncoderError::BadImage(m)) if m.contains("megapixels")),
            "{refused:?}"
        );
    }
}
