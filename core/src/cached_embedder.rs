//! A [`TextEmbedder`] that remembers: texts embedded before come from a [`QueryEmbeddingCache`],
//! the others from the encoder, and are stored for next time.

use crate::ports::{PortError, QueryEmbeddingCache, TextEmbedder};
use crate::{Embedding, EncoderId};

/// Answers from the cache what it can and asks `encoder` for the rest. The cache is an aid, not a
/// source of truth: when it cannot be read or written, texts are embedded as if it were empty.
/// When the encoder is needed and fails, so does the call (the encoder's error).
pub struct CachedTextEmbedder<'a> {
    encoder: &'a dyn TextEmbedder,
    cache: &'a dyn QueryEmbeddingCache,
}

impl<'a> CachedTextEmbedder<'a> {
    /// `encoder` behind `cache`.
    pub fn new(encoder: &'a dyn TextEmbedder, cache: &'a dyn QueryEmbeddingCache) -> Self {
        Self { encoder, cache }
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl TextEmbedder for CachedTextEmbedder<'_> {
    fn encoder(&self) -> &EncoderId {
        self.encoder.encoder()
    }

    async fn embed_texts(&self, texts: &[String]) -> Result<Vec<Embedding>, PortError> {
        let encoder = self.encoder.encoder();
        let mut found = self
            .cache
            .cached_embeddings(encoder, texts)
            .await
            .ok()
            .filter(|found| found.len() == texts.len())
            .unwrap_or_else(|| vec![None; texts.len()]);
        let missing: Vec<String> = texts
            .iter()
            .zip(&found)
            .filter(|(_, cached)| cached.is_none())
            .map(|(text, _)| text.clone())
            .collect();
        if !missing.is_empty() {
            let embedded = self.encoder.embed_texts(&missing).await?;
            if embedded.len() != missing.len() {
                return Err(PortError::Internal(format!(
                    "the encoder returned {} embeddings for {} texts",
                    embedded.len(),
                    missing.len()
                )));
            }
            let entries: Vec<(String, Embedding)> = missing.into_iter().zip(embedded).collect();
            // Best effort: a cache that cannot be written only costs a later query a round trip.
            let _ = self.cache.store_embeddings(encoder, &entries).await;
            let mut fresh = entries.into_iter().map(|(_, vector)| vector);
            for slot in found.iter_mut().filter(|slot| slot.is_none()) {
                *slot = fresh.next();
            }
        }
        found
            .into_iter()
            .map(|vector| {
                vector.ok_or_else(|| PortError::Internal("an embedding went missing".to_owned()))
            })
            .collect()
    }
}
