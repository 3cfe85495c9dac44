//! The embedded QueryEmbeddingCache: query embeddings in memory, the least recently used
//! forgotten past a fixed number of entries, so that a repeated query (or one typed again while
//! searching as you type) skips the text tower. Hits and misses are counted for `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use glimpse_core::ports::{PortError, QueryEmbeddingCache};
use glimpse_core::{Embedding, EncoderId};

/// Query embeddings of one encoder, at most `capacity` of them.
pub struct MemoryQueryCache {
    capacity: usize,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The entries and their recency: `by_use` orders texts by the tick of their last use.
#[derive(Default)]
struct Entries {
    encoder: Option<EncoderId>,
    by_text: HashMap<String, (Embedding, u64)>,
    by_use: BTreeMap<u64, String>,
    tick: u64,
}

impl Entries {
    /// Marks `text` used now; returns its embedding.
    fn touch(&mut self, text: &str) -> Option<Embedding> {
        self.tick += 1;
        let tick = self.tick;
        let (embedding, used) = self.by_text.get_mut(text)?;
        self.by_use.remove(used);
        *used = tick;
        self.by_use.insert(tick, text.to_owned());
        Some(embedding.clone())
    }

    fn insert(&mut self, text: &str, embedding: Embedding, capacity: usize) {
        self.tick += 1;
        if let Some((_, used)) = self.by_text.insert(text.to_owned(), (embedding, self.tick)) {
            self.by_use.remove(&used);
        }
        self.by_use.insert(self.tick, text.to_owned());
        while self.by_text.len() > capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.by_text.remove(&oldest);
        }
    }
}

impl MemoryQueryCache {
    /// A cache of at most `capacity` embeddings (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::new(Entries::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Texts found in the cache since it was made.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Texts asked for and not found since it was made.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    fn entries(&self) -> Result<std::sync::MutexGuard<'_, Entries>, PortError> {
        self.entries
            .lock()
            .map_err(|_| PortError::Internal("the query cache's lock is poisoned".to_owned()))
    }
}

#[async_trait]
impl QueryEmbeddingCache for MemoryQueryCache {
    async fn cached_embeddings(
        &self,
        encoder: &EncoderId,
        texts: &[String],
    ) -> Result<Vec<Option<Embedding>>, PortError> {
        let mut entries = self.entries()?;
        let found: Vec<Option<Embedding>> = if entries.encoder.as_ref() == Some(encoder) {
            texts.iter().map(|text| entries.touch(text)).collect()
        } else {
            vec![None; texts.len()]
        };
        let hits = found.iter().filter(|f| f.is_some()).count() as u64;
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses
            .fetch_add(texts.len() as u64 - hits, Ordering::Relaxed);
        Ok(found)
    }

    async fn store_embeddings(
        &self,
        encoder: &EncoderId,
        stored: &[(String, Embedding)],
    ) -> Result<(), PortError> {
        let mut entries = self.entries()?;
        if entries.encoder.as_ref() != Some(encoder) {
            *entries = Entries {
                encoder: Some(encoder.clone()),
                ..Entries::default()
            };
        }
        for (text, embedding) in stored {
            entries.insert(text, embedding.clone(), self.capacity);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn honours_the_query_embedding_cache_contract() {
        glimpse_core::contract::query_embedding_cache_suite(&MemoryQueryCache::new(8)).await;
    }

    #[tokio::test]
    async fn forgets_the_least_recently_used_past_its_capacity_and_counts_hits() {
        let cache = MemoryQueryCache::new(2);
        let clip: EncoderId = "clip:test/a@1".parse().unwrap();
        let vector = |x: f32| Embedding::normalized(vec![x, 1.0]).unwrap();
        let texts = |list: &[&str]| list.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        cache
            .store_embeddings(
                &clip,
                &[("a".to_owned(), vector(1.0)), ("b".to_owned(), vector(2.0))],
            )
            .await
            .unwrap();
        // `a` is used again, so `b` is the least recently used when `c` arrives.
        cache
            .cached_embeddings(&clip, &texts(&["a"]))
            .await
            .unwrap();
        cache
            .store_embeddings(&clip, &[("c".to_owned(), vector(3.0))])
            .await
            .unwrap();
        let found = cache
            .cached_embeddings(&clip, &texts(&["a", "b", "c"]))
            .await
            .unwrap();
        assert_eq!(
            found.iter().map(Option::is_some).collect::<Vec<_>>(),
            vec![true, false, true]
        );
        assert_eq!((cache.hits(), cache.misses()), (3, 1));
    }
}
