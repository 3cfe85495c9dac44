//! The `glimpse` subcommands, one module each, and what several of them share.

pub mod adapters;
pub mod bench;
pub mod check;
pub mod embed;
pub mod encoders;
pub mod index;
pub mod retry;
pub mod search;
pub mod serve;
pub mod status;
pub mod train;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use glimpse::embedded::{Engine, OpenOptions};
use glimpse::memory::MemoryBudget;
use glimpse_core::ports::BlobStore;
use glimpse_worker::adapters::postgres::PostgresCatalog;
use glimpse_worker::adapters::{QdrantSettings, VisionReranker};
use glimpse_worker::encoder::{ClipEncoder, Precision};
use glimpse_worker::hub;
use glimpse_worker::reranker::{VlmReranker, VlmSettings};
use glimpse_worker::worker::settings::WorkerSettings;

#[derive(Args, Clone)]
pub struct DataDirArgs {
    /// Where Glimpse keeps its catalog, index, uploads and token.
    #[arg(long, env = "GLIMPSE__DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
}

#[derive(Args, Clone, Default)]
pub struct ModelArgs {
    /// A model directory (Hugging Face layout) or Hub repository id, optionally `@revision`;
    /// default: the one this data directory used last, else openai/clip-vit-base-patch32.
    #[arg(long, env = "GLIMPSE__MODEL")]
    pub model: Option<String>,
    /// How precisely the CPU runs the model: auto (bf16 weights where the CPU has AVX2 and FMA
    /// or AVX-512 BF16 and they measure faster, else f32), f32 (embeddings equal to
    /// transformers'), bf16, or int8 (AVX-512 VNNI: fastest, least exact; see the README).
    /// Remembered in the data directory; default: the remembered one, else auto.
    #[arg(long, env = "GLIMPSE__PRECISION")]
    pub precision: Option<Precision>,
}

#[derive(Args)]
pub struct MemoryArgs {
    /// The memory Glimpse may use, like 2GB or 1.5GB: the index is built in slices that fit in
    /// it, image decoding gets a quarter of it, and `glimpse status` reports against it.
    /// Remembered in the data directory; default: the remembered one, else 2GB.
    #[arg(long, env = "GLIMPSE__MEMORY_BUDGET")]
    pub memory_budget: Option<MemoryBudget>,
    /// Memory that image decoding may use at once, in MB (default: a quarter of the budget):
    /// decodes wait their turn within it, and an image that needs more is refused (failed with
    /// the reason) instead of exhausting memory.
    #[arg(long, env = "GLIMPSE__DECODE_MEMORY_MB")]
    pub decode_memory_mb: Option<u64>,
}

impl MemoryArgs {
    /// Sets the decoding memory from the budget `engine` runs under; call it before the first
    /// photo is indexed.
    fn apply(&self, engine: &Engine) {
        let decode_memory_mb = self
            .decode_memory_mb
            .unwrap_or(engine.memory_budget().bytes() / DECODING_SHARE / (1024 * 1024));
        glimpse_worker::encoder::decode_budget::set_decode_memory_mb(decode_memory_mb);
    }
}

/// The part of the memory budget image decoding gets by default.
const DECODING_SHARE: u64 = 4;

pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME").or_else(|| std::env::var_os("HOME")) {
        Some(base) if std::env::var_os("XDG_DATA_HOME").is_some() => {
            PathBuf::from(base).join("glimpse")
        }
        Some(home) => PathBuf::from(home).join(".local/share/glimpse"),
        None => PathBuf::from("glimpse-data"),
    }
}

pub async fn open_engine(
    data: &DataDirArgs,
    library: Option<PathBuf>,
    model: ModelArgs,
    memory_budget: Option<MemoryBudget>,
) -> Result<Engine> {
    Engine::open(OpenOptions {
        data_dir: data.data_dir.clone(),
        library,
        model: model.model,
        precision: model.precision,
        rebuild_on_encoder_change: true,
        memory_budget,
    })
    .await
    .map_err(anyhow::Error::from)
}

pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}

pub fn load_encoder(spec: &str, precision: Precision) -> Result<ClipEncoder> {
    let model = hub::resolve(spec)?;
    ClipEncoder::load(&model.directory, model.id, precision)
        .with_context(|| format!("loading the model in {}", model.directory.display()))
}

pub fn print_report<T: serde::Serialize>(report: &T, json_output: bool) -> Result<()> {
    if json_output {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    Ok(())
}

/// The worker pool's catalog and Qdrant settings, from a worker's settings file.
pub async fn connect_pool(config: &Path) -> Result<(PostgresCatalog, QdrantSettings)> {
    let settings = WorkerSettings::load(Some(config), std::env::vars())?;
    let Some(backends) = settings.backends() else {
        bail!(
            "{} has no [database], [s3] and [qdrant] settings",
            config.display()
        );
    };
    let catalog = glimpse_worker::adapters::postgres::connect(
        backends.database.url.expose(),
        backends.database.connections,
    )
    .await
    .context("cannot open the catalog database ([database] url)")?;
    Ok((catalog, backends.qdrant))
}

/// The vision-language reranker of `spec` (a directory or a Hub repository id, downloaded on
/// first use), with the LoRA adapter in `adapter` (PEFT layout) if one is given, over the photos
/// of `blobs`.
pub async fn load_vision_reranker(
    spec: &str,
    adapter: Option<&Path>,
    settings: VlmSettings,
    blobs: Arc<dyn BlobStore>,
) -> Result<Arc<VisionReranker>> {
    let owned = spec.to_owned();
    let (candidates, tokens) = (settings.max_candidates, settings.image_tokens);
    let model = tokio::task::spawn_blocking(move || -> Result<VlmReranker> {
        let directory = hub::resolve_reranker(&owned)?;
        Ok(VlmReranker::load(&directory, settings)?)
    })
    .await??;
    let mut reranker = VisionReranker::new(model, blobs, spec);
    if let Some(dir) = adapter {
        reranker = reranker.with_adapter(dir)?;
    }
    println!(
        "Reranking the first {candidates} results of each search with {spec} ({tokens} image \
         tokens per photo{})",
        adapter.map_or_else(String::new, |dir| format!(", adapter {}", dir.display()))
    );
    Ok(Arc::new(reranker))
}
