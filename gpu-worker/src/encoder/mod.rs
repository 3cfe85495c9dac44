//! Image–text encoders: texts and images to unit vectors in one shared space.

mod clip;
pub mod decode_budget;
mod image;
mod jpeg;
mod text;

pub(crate) use self::clip::compute_device;
pub use self::clip::{ClipEncoder, Precision, TowerPrecisions};
pub use self::image::{
    ImageProcessor, ImageProcessorConfig, JpegDecode, PreparedImage, Resample, SizeSpec,
    decode_rgb, thumbnail_jpeg,
};
pub use self::text::TextTokenizer;

use glimpse_core::ports::EmbeddedImage;
use glimpse_core::{Embedding, EncoderId};
use rayon::prelude::*;

/// What went wrong in an encoder; the variant says what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// This input cannot be encoded (not an image, corrupt, too large): reject it, keep the rest.
    #[error("{0}")]
    BadImage(String),
    /// The model files are missing, malformed or inconsistent: fix the model configuration.
    #[error("{0}")]
    BadModel(String),
    /// The model is not on this machine and could not be downloaded: retry online, or point at a
    /// local copy.
    #[error("{0}")]
    Unavailable(String),
    /// A computation failed where it should not: a bug, report it.
    #[error("internal encoder error: {0}")]
    Internal(String),
}

impl From<candle_core::Error> for EncoderError {
    fn from(error: candle_core::Error) -> Self {
        Self::Internal(error.to_string())
    }
}

/// Texts and images → unit vectors of one model, comparable by dot product.
///
/// Implementations are shared between threads: image preparation (decode, resize, normalise)
/// may run on many threads while another thread encodes batches.
pub trait ImageTextEncoder: Send + Sync {
    /// The exact model; vectors are comparable only between equal ids.
    fn id(&self) -> &EncoderId;

    /// Length of every vector this encoder returns.
    fn dimension(&self) -> usize;

    /// One unit vector per text, in order. Any text is accepted: long texts are truncated to the
    /// model's context, the empty text encodes as well.
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Embedding>, EncoderError>;

    /// Decodes and preprocesses an encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF). CPU-bound and
    /// independent of the model weights: run it on worker threads, ahead of the encoder.
    fn prepare_image(&self, encoded: &[u8]) -> Result<PreparedImage, EncoderError>;

    /// [`Self::prepare_image`], and a JPEG thumbnail at most `thumbnail_size` pixels on its
    /// longer side made from the same decode.
    fn prepare_image_with_thumbnail(
        &self,
        encoded: &[u8],
        thumbnail_size: u32,
    ) -> Result<(PreparedImage, Vec<u8>), EncoderError>;

    /// One unit vector per prepared image, in order, encoded as one batch.
    fn embed_prepared(&self, images: &[PreparedImage]) -> Result<Vec<Embedding>, EncoderError>;

    /// Frees the image tower's memory until the next image needs it (it is then read again from
    /// its file), for a process that searches far more often than it indexes. Returns whether
    /// memory was freed: `false` when it was released already, or cannot be read again.
    fn release_image_tower(&self) -> bool {
        false
    }

    /// Prepares `encoded` images on parallel threads, then encodes them as one batch. The first
    /// image that cannot be decoded fails the call; use [`Self::prepare_image`] to handle images
    /// one by one.
    fn embed_images(&self, encoded: &[&[u8]]) -> Result<Vec<Embedding>, EncoderError> {
        let prepared = encoded
            .par_iter()
            .map(|bytes| self.prepare_image(bytes))
            .collect::<Result<Vec<_>, _>>()?;
        self.embed_prepared(&prepared)
    }
}

/// Encodes many images with decoding overlapped with encoding: while one batch of `batch_size`
/// runs through the model, the next is decoded and preprocessed on the rayon pool. Returns one
/// result per input, in order; an image that cannot be decoded gets its own error and does not
/// affect the others. With `thumbnail_size`, each also gets a thumbnail from the same decode.
pub fn embed_pipelined(
    encoder: &dyn ImageTextEncoder,
    encoded: &[&[u8]],
    batch_size: usize,
    thumbnail_size: Option<u32>,
) -> Vec<Result<EmbeddedImage, EncoderError>> {
    let batch_size = batch_size.max(1);
    let mut results = Vec::with_capacity(encoded.len());
    let prepare = |bytes: &&[u8]| match thumbnail_size {
        None => encoder.prepare_image(bytes).map(|image| (image, None)),
        Some(size) => encoder
            .prepare_image_with_thumbnail(bytes, size)
            .map(|(image, thumbnail)| (image, Some(thumbnail))),
    };
    std::thread::scope(|scope| {
        let (prepared_tx, prepared_rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for chunk in encoded.chunks(batch_size) {
                let prepared: Vec<_> = chunk.par_iter().map(prepare).collect();
                if prepared_tx.send(prepared).is_err() {
                    return;
                }
            }
        });
        for prepared in prepared_rx {
            // The thumbnail where the image is in `images`, the decoding error where it is not.
            let mut decoded = Vec::with_capacity(prepared.len());
            let mut images = Vec::with_capacity(prepared.len());
            for result in prepared {
                decoded.push(result.map(|(image, thumbnail)| {
                    images.push(image);
                    thumbnail
                }));
            }
            let mut embedded = encoder.embed_prepared(&images).map(Vec::into_iter);
            for thumbnail in decoded {
                results.push(match (thumbnail, &mut embedded) {
                    (Err(error), _) => Err(error),
                    (Ok(thumbnail), Ok(vectors)) => vectors
                        .next()
                        .map(|vector| EmbeddedImage { vector, thumbnail })
                        .ok_or_else(|| {
                            EncoderError::Internal("fewer embeddings than images".into())
                        }),
                    (Ok(_), Err(error)) => Err(EncoderError::Internal(error.to_string())),
                });
            }
        }
    });
    results
}
