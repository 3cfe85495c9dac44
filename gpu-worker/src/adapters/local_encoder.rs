//! The embedded TextEmbedder and ImageEmbedder: the candle encoder in-process, run on tokio's
//! blocking pool so that encoding never stalls the HTTP server's threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use glimpse_core::ports::{EmbeddedImage, ImageEmbedder, PortError, TextEmbedder};
use glimpse_core::{Embedding, EncoderId};

use crate::encoder::{EncoderError, ImageTextEncoder, embed_pipelined};

/// Images per encoder batch while indexing.
const IMAGE_BATCH: usize = 16;

/// An in-process encoder behind the embedder ports. Clones share the encoder and its count.
#[derive(Clone)]
pub struct LocalEncoder {
    encoder: Arc<dyn ImageTextEncoder>,
    images_embedded: Arc<AtomicU64>,
}

impl LocalEncoder {
    /// Serves `encoder` through the ports.
    pub fn new(encoder: Arc<dyn ImageTextEncoder>) -> Self {
        Self {
            encoder,
            images_embedded: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The encoder's output dimension.
    pub fn dimension(&self) -> usize {
        self.encoder.dimension()
    }

    /// Frees the image tower until the next image (see
    /// [`ImageTextEncoder::release_image_tower`]).
    pub fn release_image_tower(&self) -> bool {
        self.encoder.release_image_tower()
    }

    /// How many images this process has run through the image tower (embedded, or refused by
    /// the decoder), all clones together.
    pub fn images_embedded(&self) -> u64 {
        self.images_embedded.load(Ordering::Relaxed)
    }
}

pub(crate) fn port_error(error: EncoderError) -> PortError {
    match error {
        EncoderError::BadImage(message) => PortError::Rejected(message),
        EncoderError::Unavailable(message) => PortError::Unavailable(message),
        EncoderError::BadModel(message) | EncoderError::Internal(message) => {
            PortError::Internal(message)
        }
    }
}

pub(crate) fn join_error(error: tokio::task::JoinError) -> PortError {
    PortError::Internal(format!("the encoder thread failed: {error}"))
}

#[async_trait]
impl TextEmbedder for LocalEncoder {
    fn encoder(&self) -> &EncoderId {
        self.encoder.id()
    }

    async fn embed_texts(&self, texts: &[String]) -> Result<Vec<Embedding>, PortError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encoder = Arc::clone(&self.encoder);
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            encoder.embed_texts(&texts)
        })
        .await
        .map_err(join_error)?
        .map_err(port_error)
    }
}

#[async_trait]
impl ImageEmbedder for LocalEncoder {
    fn encoder(&self) -> &EncoderId {
        self.encoder.id()
    }

    async fn embed_images(
        &self,
        images: Vec<Vec<u8>>,
        thumbnail_size: Option<u32>,
    ) -> Result<Vec<Result<EmbeddedImage, String>>, PortError> {
        let encoder = Arc::clone(&self.encoder);
        self.images_embedded
            .fetch_add(images.len() as u64, Ordering::Relaxed);
        let results = tokio::task::spawn_blocking(move || {
            let slices: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
            embed_pipelined(encoder.as_ref(), &slices, IMAGE_BATCH, thumbnail_size)
        })
        .await
        .map_err(join_error)?;
        results
            .into_iter()
            .map(|result| match result {
                Ok(image) => Ok(Ok(image)),
                Err(EncoderError::BadImage(message)) => Ok(Err(message)),
                Err(other) => Err(port_error(other)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::encoder::{ClipEncoder, Precision};

    fn encoder() -> LocalEncoder {
        let directory =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/checkpoints/clip-odd");
        let id: EncoderId = "clip:test/clip-odd@1".parse().unwrap();
        LocalEncoder::new(Arc::new(
            ClipEncoder::load(&directory, id, Precision::Auto).unwrap(),
        ))
    }

    #[tokio::test]
    async fn honours_the_text_embedder_contract() {
        let encoder = encoder();
        let dimension = encoder.dimension();
        glimpse_core::contract::text_embedder_suite(&encoder, dimension).await;
    }

    #[tokio::test]
    async fn honours_the_image_embedder_contract() {
        let encoder = encoder();
        let jpeg = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/images/noise.jpg"),
        )
        .unwrap();
        let dimension = encoder.dimension();
        glimpse_core::contract::image_embedder_suite(&encoder, jpeg, dimension).await;
    }

    #[test]
    fn a_released_image_tower_is_read_again_and_embeds_the_same() {
        let encoder = encoder();
        let jpeg = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/images/noise.jpg"),
        )
        .unwrap();
        let before = encoder.encoder.embed_images(&[&jpeg]).unwrap();
        assert!(encoder.release_image_tower());
        assert!(!encoder.release_image_tower(), "released already");
        let texts = encoder.encoder.embed_texts(&["a red sled"]).unwrap();
        assert_eq!(texts.len(), 1, "the text tower stays");
        assert_eq!(encoder.encoder.embed_images(&[&jpeg]).unwrap(), before);
        assert!(
            encoder.release_image_tower(),
            "read again, so released again"
        );
    }
}
