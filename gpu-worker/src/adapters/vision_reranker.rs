//! The vision-language reranker behind core's `Reranker` port: each candidate photo is read from
//! the blob store (its thumbnail where one was made, else the original), and the model scores them
//! on tokio's blocking pool, one query's candidates as one batch. A LoRA adapter it carries is
//! followed on disk and swapped in when a new one is written there.

use std::path::Path;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::future::try_join_all;
use glimpse_core::photo::Photo;
use glimpse_core::ports::{BlobStore, PortError, RerankCandidate, Reranker};

use super::local_encoder::{join_error, port_error};
use crate::encoder::EncoderError;
use crate::reranker::VlmReranker;
use crate::reranker::lora::LoraAdapter;

/// Qwen2-VL over the photos of a blob store.
pub struct VisionReranker {
    model: Arc<RwLock<VlmReranker>>,
    max_candidates: usize,
    blobs: Arc<dyn BlobStore>,
    name: String,
}

/// How often a followed adapter directory is looked at.
const ADAPTER_POLL: Duration = Duration::from_secs(2);

impl VisionReranker {
    /// Scores photos read from `blobs` with `model`.
    pub fn new(model: VlmReranker, blobs: Arc<dyn BlobStore>) -> Self {
        Self {
            max_candidates: model.settings().max_candidates,
            model: Arc::new(RwLock::new(model)),
            blobs,
            name: "qwen2-vl".to_owned(),
        }
    }

    /// Puts the LoRA adapter in `directory` (PEFT layout) on the model, names it in
    /// [`Reranker::name`] (`qwen2-vl+lora:<directory name>`), and follows the directory: when its
    /// files change (a newer adapter written there), the next searches use the new adapter,
    /// without a restart. A change that does not load (half written, of another model) keeps
    /// the adapter in use, and is logged.
    pub fn with_adapter(mut self, directory: &Path) -> Result<Self, EncoderError> {
        let stamp = adapter_stamp(directory);
        attach_from(&self.model, directory)?;
        let name = directory.file_name().map_or_else(
            || directory.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        self.name = format!("qwen2-vl+lora:{name}");
        let model = Arc::downgrade(&self.model);
        let directory = directory.to_path_buf();
        std::thread::spawn(move || follow_adapter(&model, &directory, stamp));
        Ok(self)
    }
}

/// The modification times of an adapter's two files: a change means a new adapter.
fn adapter_stamp(directory: &Path) -> Vec<Option<SystemTime>> {
    ["adapter_config.json", "adapter_model.safetensors"]
        .iter()
        .map(|file| {
            std::fs::metadata(directory.join(file))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect()
}

fn attach_from(model: &RwLock<VlmReranker>, directory: &Path) -> Result<(), EncoderError> {
    let mut model = model
        .write()
        .map_err(|_| EncoderError::Internal("the reranker's lock is poisoned".into()))?;
    let (device, dtype) = (model.model().device().clone(), model.model().dtype());
    LoraAdapter::load(directory, &device, dtype)?.attach(model.model_mut(), false)
}

/// Reloads the adapter in `directory` whenever its files change, until the reranker is gone.
fn follow_adapter(
    model: &Weak<RwLock<VlmReranker>>,
    directory: &Path,
    mut stamp: Vec<Option<SystemTime>>,
) {
    loop {
        std::thread::sleep(ADAPTER_POLL);
        let Some(model) = model.upgrade() else {
            return;
        };
        let now = adapter_stamp(directory);
        if now == stamp {
            continue;
        }
        match attach_from(&model, directory) {
            Ok(()) => {
                eprintln!(
                    "glimpse: the reranker now uses the adapter written to {}",
                    directory.display()
                );
                stamp = now;
            }
            // Perhaps still being written: tried again at the next look.
            Err(error) => eprintln!(
                "glimpse: the adapter in {} does not load ({error}); the reranker keeps the one it had",
                directory.display()
            ),
        }
    }
}

/// The bytes the reranker looks at for `photo`: the thumbnail the indexer made (small and already
/// oriented), else the original.
pub async fn reranker_image(blobs: &dyn BlobStore, photo: &Photo) -> Result<Vec<u8>, PortError> {
    if let Some(thumbnail) = blobs.get(&photo.id.thumbnail_key()).await? {
        return Ok(thumbnail);
    }
    let key = photo.origin.blob_key();
    blobs.get(&key).await?.ok_or_else(|| {
        PortError::Rejected(format!(
            "photo {} has no original in storage ({key})",
            photo.id
        ))
    })
}

#[async_trait]
impl Reranker for VisionReranker {
    fn name(&self) -> &str {
        &self.name
    }

    /// `P(yes)` of the first `max_candidates` candidates (see [`VlmReranker`]); a photo that cannot
    /// be read or decoded fails the call, and the search keeps its retrieval order.
    async fn rerank(
        &self,
        query: &str,
        candidates: &[RerankCandidate],
    ) -> Result<Vec<f32>, PortError> {
        let head = &candidates[..candidates.len().min(self.max_candidates)];
        let images =
            try_join_all(head.iter().map(|c| reranker_image(&*self.blobs, &c.photo))).await?;
        let model = Arc::clone(&self.model);
        let query = query.to_owned();
        let relevance = tokio::task::spawn_blocking(move || {
            let model = model
                .read()
                .map_err(|_| EncoderError::Internal("the reranker's lock is poisoned".into()))?;
            let prepared = images
                .iter()
                .map(|bytes| model.prepare(bytes))
                .collect::<Result<Vec<_>, _>>()?;
            model.score(&query, &prepared)
        })
        .await
        .map_err(join_error)?
        .map_err(port_error)?;
        Ok(relevance.probabilities)
    }
}
