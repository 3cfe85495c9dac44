//! Images to Qwen2-VL patches, as `Qwen2VLImageProcessor` makes them: a size that both sides
//! divide by the patch size times the merge size, a bicubic resize, CLIP's normalisation, and the
//! patches laid out merge block by merge block, each repeated over the temporal patch.

use image::RgbImage;

use crate::encoder::{EncoderError, ImageProcessor, ImageProcessorConfig, PreparedImage, SizeSpec};
use crate::models::qwen2_vl::VisionConfig;

/// The most elongated image the processor accepts (longer side over shorter side).
const MAX_ASPECT_RATIO: f64 = 200.0;

/// `smart_resize` of transformers' Qwen2-VL processor: the `(height, width)` closest to the
/// image's, each a multiple of `factor`, with an area between `min_pixels` and `max_pixels`.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), EncoderError> {
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    if h.max(w) / h.min(w).max(1.0) > MAX_ASPECT_RATIO {
        return Err(EncoderError::BadImage(format!(
            "the image is {width}×{height} pixels: longer than {MAX_ASPECT_RATIO} times its width \
             or height"
        )));
    }
    // Python's round() rounds halves to even.
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// Resizes `image` to exactly `height × width` (Pillow's bicubic) and normalises it as CLIP does.
pub fn resize_and_normalise(
    image: &RgbImage,
    height: u32,
    width: u32,
) -> Result<PreparedImage, EncoderError> {
    let processor = ImageProcessor::new(ImageProcessorConfig {
        size: SizeSpec::Exact { height, width },
        do_center_crop: false,
        ..ImageProcessorConfig::default()
    });
    processor.prepare_rgb(image)
}

/// The patches of a prepared image: `(rows · columns, channels · temporal · patch²)` values in
/// the processor's order, and the grid `[1, rows, columns]` of patches.
pub fn to_patches(
    image: &PreparedImage,
    cfg: &VisionConfig,
) -> Result<(Vec<f32>, [usize; 3]), EncoderError> {
    let (p, m, t) = (
        cfg.patch_size,
        cfg.spatial_merge_size,
        cfg.temporal_patch_size,
    );
    let (height, width) = (image.height as usize, image.width as usize);
    if height % (p * m) != 0 || width % (p * m) != 0 {
        return Err(EncoderError::Internal(format!(
            "a {width}×{height} image does not divide into {}-pixel merge blocks",
            p * m
        )));
    }
    let channels = image.pixels.len() / (height * width);
    let (rows, columns) = (height / p, width / p);
    let mut values = Vec::with_capacity(rows * columns * channels * t * p * p);
    for block_row in 0..rows / m {
        for block_column in 0..columns / m {
            for r in 0..m {
                for c in 0..m {
                    let (top, left) = ((block_row * m + r) * p, (block_column * m + c) * p);
                    for channel in 0..channels {
                        let plane = &image.pixels[channel * height * width..];
                        for _ in 0..t {
                            for y in top..top + p {
                                values.extend_from_slice(&plane[y * width + left..][..p]);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((values, [1, rows, columns]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_the_processor_on_its_edge_cases() {
        // Values computed with transformers' smart_resize.
        assert_eq!(smart_resize(3, 5, 28, 3136, 3136).unwrap(), (56, 84));
        assert_eq!(smart_resize(61, 97, 28, 3136, 12544).unwrap(), (56, 84));
        assert_eq!(smart_resize(14, 14, 28, 3136, 12544).unwrap(), (56, 56));
        // 42 / 28 = 1.5 rounds to 2 (even); 70 / 28 = 2.5 rounds to 2 (even).
        assert_eq!(smart_resize(42, 70, 28, 56, 1 << 30).unwrap(), (56, 56));
        assert!(matches!(
            smart_resize(1, 300, 28, 3136, 12544),
            Err(EncoderError::BadImage(_))
        ));
    }
}
