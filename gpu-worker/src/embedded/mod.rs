//! The embedded engine: everything under one data directory, in one process — the SQLite catalog,
//! the qdrant-edge index, uploaded originals, the in-process encoder — plus the library scanner
//! and the indexing loop.

pub mod background;
mod library;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use glimpse_core::flows::{self, FlowError, IndexRound, Ports, RetrievalOrder, RetryPolicy};
use glimpse_core::ports::{Catalog, PortError, VectorIndex};
use serde::{Deserialize, Serialize};

pub use self::library::ScanReport;
use crate::adapters::{
    EdgeIndex, IndexOpenError, IndexTuning, LocalBlobStore, LocalEncoder, SqliteCatalog,
};
use crate::encoder::{ClipEncoder, EncoderError, ImageTextEncoder};
use crate::hub;

/// Jobs claimed per indexing round.
const INDEX_BATCH: usize = 32;

/// What an embedded data directory remembers between runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The photo library folder, read in place.
    pub library: Option<PathBuf>,
    /// The model: a directory or a Hub repository id.
    pub model: Option<String>,
}

const SETTINGS_FILE: &str = "settings.json";
const LOCK_FILE: &str = "lock";

/// Why the engine cannot start or run; named for what the person at the keyboard should do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Another process uses this data directory.
    #[error(
        "another Glimpse process is using {0}; stop it (or use its HTTP API), or pass another \
         --data-dir"
    )]
    DataDirectoryBusy(String),
    /// A file or folder cannot be read or written.
    #[error("{path}: {message}")]
    Storage {
        /// What.
        path: String,
        /// Why.
        message: String,
    },
    /// The model cannot be loaded or downloaded.
    #[error(transparent)]
    Model(#[from] EncoderError),
    /// The index belongs to another encoder and rebuilding was not allowed.
    #[error(transparent)]
    Index(#[from] IndexOpenError),
    /// A port failed.
    #[error(transparent)]
    Port(#[from] PortError),
    /// A flow failed.
    #[error(transparent)]
    Flow(#[from] FlowError),
}

fn storage(path: &Path, error: impl std::fmt::Display) -> EngineError {
    EngineError::Storage {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

/// What to open.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// The data directory (created if needed).
    pub data_dir: PathBuf,
    /// The library folder; `None` keeps the one remembered in the data directory.
    pub library: Option<PathBuf>,
    /// The model; `None` keeps the remembered one, else the default.
    pub model: Option<String>,
    /// Rebuild the index when it was built by another encoder (else that is an error).
    pub rebuild_on_encoder_change: bool,
}

/// The embedded engine.
pub struct Engine {
    data_dir: PathBuf,
    settings: Settings,
    /// The catalog.
    pub catalog: SqliteCatalog,
    /// Originals (library in place, uploads in the data directory).
    pub blobs: LocalBlobStore,
    /// The vector index.
    pub index: EdgeIndex,
    /// The encoder.
    pub encoder: LocalEncoder,
    reranker: RetrievalOrder,
    policy: RetryPolicy,
    last_scan: Mutex<Option<ScanReport>>,
    _lock: File,
}

impl Engine {
    /// Opens the data directory: takes its lock, loads the model, opens (or rebuilds) the index
    /// and the catalog, and makes jobs a crashed run held runnable again.
    pub async fn open(options: OpenOptions) -> Result<Self, EngineError> {
        let data_dir = &options.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|e| storage(data_dir, e))?;
        let lock_path = data_dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| storage(&lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(EngineError::DataDirectoryBusy(
                data_dir.display().to_string(),
            ));
        }
        let remembered = Self::settings(data_dir)?;
        let library = match options.library.or(remembered.library) {
            Some(library) => Some(
                std::fs::canonicalize(&library)
                    .map_err(|e| storage(&library, format!("cannot open the library: {e}")))?,
            ),
            None => None,
        };
        let model = options
            .model
            .map(|spec| match std::fs::canonicalize(&spec) {
                Ok(directory) if directory.is_dir() => directory.display().to_string(),
                _ => spec,
            });
        let settings = Settings {
            library,
            model: model.or(remembered.model),
        };
        let spec = settings.model.as_deref().unwrap_or(hub::DEFAULT_MODEL);
        let model = hub::resolve(spec)?;
        let clip: Arc<dyn ImageTextEncoder> =
            Arc::new(ClipEncoder::load(&model.directory, model.id)?);
        Self::with_encoder(
            options.data_dir,
            settings,
            clip,
            options.rebuild_on_encoder_change,
            lock,
        )
        .await
    }

    async fn with_encoder(
        data_dir: PathBuf,
        settings: Settings,
        clip: Arc<dyn ImageTextEncoder>,
        rebuild: bool,
        lock: File,
    ) -> Result<Self, EngineError> {
        let encoder = LocalEncoder::new(clip);
        let catalog = SqliteCatalog::open(&data_dir.join("catalog.sqlite3"))?;
        let blobs = LocalBlobStore::open(&data_dir.join("blobs"), settings.library.as_deref())?;
        let index_dir = data_dir.join("index");
        let id = glimpse_core::ports::TextEmbedder::encoder(&encoder).clone();
        let dimension = encoder.dimension();
        let index = match EdgeIndex::open(&index_dir, &id, dimension, IndexTuning::default()) {
            Err(IndexOpenError::OtherEncoder { found, .. }) if rebuild => {
                eprintln!("glimpse: the index was built with {found}; rebuilding it for {id}");
                EdgeIndex::destroy(&index_dir).map_err(|e| storage(&index_dir, e))?;
                let index = EdgeIndex::open(&index_dir, &id, dimension, IndexTuning::default())?;
                catalog.requeue_all().await?;
                index
            }
            other => other?,
        };
        catalog.register_encoder(&id, dimension).await?;
        catalog.release_leases()?;
        let engine = Self {
            data_dir,
            settings,
            catalog,
            blobs,
            index,
            encoder,
            reranker: RetrievalOrder,
            policy: RetryPolicy::default(),
            last_scan: Mutex::new(None),
            _lock: lock,
        };
        engine.save_settings()?;
        Ok(engine)
    }

    /// The settings remembered in a data directory (defaults when there are none).
    pub fn settings(data_dir: &Path) -> Result<Settings, EngineError> {
        let path = data_dir.join(SETTINGS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| storage(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(storage(&path, e)),
        }
    }

    fn save_settings(&self) -> Result<(), EngineError> {
        let path = self.data_dir.join(SETTINGS_FILE);
        let text = serde_json::to_string_pretty(&self.settings).map_err(|e| storage(&path, e))?;
        std::fs::write(&path, text).map_err(|e| storage(&path, e))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The library folder, if any.
    pub fn library(&self) -> Option<&Path> {
        self.settings.library.as_deref()
    }

    /// The adapters, for core's flows.
    pub fn ports(&self) -> Ports<'_> {
        Ports {
            catalog: &self.catalog,
            index: &self.index,
            text: &self.encoder,
            reranker: &self.reranker,
        }
    }

    /// One indexing round (see [`flows::index_round`]).
    pub async fn index_round(&self) -> Result<IndexRound, FlowError> {
        flows::index_round(
            &self.catalog,
            &self.blobs,
            &self.encoder,
            &self.index,
            INDEX_BATCH,
            &self.policy,
        )
        .await
    }

    /// Scans the library (if any) and records the report for `status`.
    pub async fn scan_library(&self) -> Result<Option<ScanReport>, EngineError> {
        let Some(library) = self.library() else {
            return Ok(None);
        };
        let report = library::scan(self, library).await?;
        if let Ok(mut last) = self.last_scan.lock() {
            *last = Some(report.clone());
        }
        Ok(Some(report))
    }

    /// The report of the last library scan.
    pub fn last_scan(&self) -> Option<ScanReport> {
        self.last_scan.lock().ok().and_then(|last| last.clone())
    }

    /// How many vectors the index holds.
    pub async fn indexed_vectors(&self) -> Result<u64, PortError> {
        self.index.count().await
    }

    /// Catalog counts.
    pub async fn counts(&self) -> Result<glimpse_core::ports::CatalogCounts, PortError> {
        self.catalog.counts().await
    }
}
