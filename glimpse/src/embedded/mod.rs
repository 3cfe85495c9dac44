//! The embedded engine: everything under one data directory, in one process — the SQLite catalog,
//! the qdrant-edge index, uploaded originals, the in-process encoder — plus the library scanner
//! and the indexing loop.

pub mod background;
mod learning;
mod library;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use glimpse_core::flows::{
    self, FlowError, IndexRound, Ports, Reconciliation, RetrievalOrder, RetryPolicy,
};
use glimpse_core::learning::{
    AdapterVersion, ExplorationSettings, LearningSettings, RerankerAdapterVersion, TrainingRuns,
};
use glimpse_core::ports::{Catalog, PortError, Requeue, Reranker, RerankerLearner, VectorIndex};
use glimpse_core::search::{SearchRequest, SearchResponse};
use glimpse_core::{CachedTextEmbedder, EncoderId};
use serde::{Deserialize, Serialize};

pub use self::library::ScanReport;
use crate::adapters::sqlite::now_seconds;
use crate::adapters::{
    IndexOpenError, IndexTuning, LocalBlobStore, LocalIndex, MemoryQueryCache, RewriteStage,
    SqliteCatalog,
};
use crate::blocking::off_runtime;
use crate::memory::{MemoryBudget, MemoryRecord};
use glimpse_worker::adapters::LocalEncoder;
use glimpse_worker::crash_points::crash_point;
use glimpse_worker::encoder::{
    ClipEncoder, EncoderError, ImageTextEncoder, Precision, TowerPrecisions,
};
use glimpse_worker::hub;

/// Jobs claimed per indexing round.
const INDEX_BATCH: usize = 32;

/// What an embedded data directory remembers between runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The photo library folder, read in place.
    pub library: Option<PathBuf>,
    /// The model: a directory or a Hub repository id.
    pub model: Option<String>,
    /// The memory Glimpse may use (the default when not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<MemoryBudget>,
    /// How precisely the CPU runs the model (auto when not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
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
    /// The memory budget; `None` keeps the remembered one, else the default.
    pub memory_budget: Option<MemoryBudget>,
    /// The precision; `None` keeps the remembered one, else auto.
    pub precision: Option<Precision>,
}

/// The embedded engine.
pub struct Engine {
    data_dir: PathBuf,
    settings: Settings,
    /// The catalog.
    pub catalog: SqliteCatalog,
    /// Originals (library in place, uploads in the data directory) and thumbnails.
    pub blobs: Arc<LocalBlobStore>,
    /// The vector index.
    pub index: LocalIndex,
    /// The encoder.
    pub encoder: LocalEncoder,
    reranker: Arc<dyn Reranker>,
    policy: RetryPolicy,
    last_scan: Mutex<Option<ScanReport>>,
    /// Held while a library scan runs: scans never overlap.
    scanning: tokio::sync::Mutex<()>,
    /// What opening found wrong with the index and did about it, for the log and `status`.
    index_repairs: Vec<String>,
    /// The last comparison of catalog and index.
    last_check: Mutex<Option<Reconciliation>>,
    /// Query embeddings, so that repeated queries skip the text tower.
    query_cache: MemoryQueryCache,
    /// How precisely each tower of the model runs; `None` for an encoder of another kind.
    precision: Option<TowerPrecisions>,
    /// The query adapter searches use: the catalog's active one, reloaded when it changes.
    adapter: RwLock<Option<Arc<AdapterVersion>>>,
    /// Learning from clicks, when on.
    learning: Option<LearningSettings>,
    /// Counts the clicks since start; each learning loop watches it to wake.
    clicked: tokio::sync::watch::Sender<u64>,
    /// The query adapter's training runs since start, by outcome.
    query_training_runs: TrainingRuns,
    /// The reranker's training runs since start, by outcome.
    reranker_training_runs: TrainingRuns,
    /// The vision-language reranker, when it learns from clicks.
    reranker_learner: Option<Arc<dyn RerankerLearner>>,
    /// The reranker adapter in use (the catalog's active one, put on when it changes).
    reranker_adapter: Mutex<Option<RerankerAdapterVersion>>,
    _lock: File,
}

/// How many query embeddings the engine keeps (about 2 KB each at 512 dimensions).
const QUERY_CACHE_ENTRIES: usize = 4096;

/// The engine-state key under which an index rebuild for an encoder is recorded before it
/// starts, and cleared once every photo is queued for the new encoder: a crash in between is
/// finished by the next start.
const REBUILD_KEY: &str = "index_rebuild_for";

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
        restrict_to_owner(data_dir, true)?;
        let data_dir = &std::fs::canonicalize(data_dir).map_err(|e| storage(data_dir, e))?;
        let remembered = Self::settings(data_dir)?;
        let library = match options.library.or(remembered.library.clone()) {
            Some(library) => Some(match std::fs::canonicalize(&library) {
                Ok(library) => library,
                // The library of earlier runs is not there now (its disk is not mounted): start
                // anyway; the scan reports it unavailable and removes nothing.
                Err(_) if remembered.library.as_ref() == Some(&library) => library,
                Err(e) => {
                    return Err(storage(&library, format!("cannot open the library: {e}")));
                }
            }),
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
            memory_budget: options.memory_budget.or(remembered.memory_budget),
            precision: options.precision.or(remembered.precision),
        };
        let spec = settings.model.as_deref().unwrap_or(hub::DEFAULT_MODEL);
        let model = hub::resolve(spec)?;
        let clip = ClipEncoder::load(
            &model.directory,
            model.id,
            settings.precision.unwrap_or_default(),
        )?;
        let precision = clip.precision();
        let mut engine = Self::with_encoder(
            data_dir.clone(),
            settings,
            Arc::new(clip),
            options.rebuild_on_encoder_change,
            lock,
        )
        .await?;
        engine.precision = Some(precision);
        Ok(engine)
    }

    async fn with_encoder(
        data_dir: PathBuf,
        settings: Settings,
        clip: Arc<dyn ImageTextEncoder>,
        rebuild: bool,
        lock: File,
    ) -> Result<Self, EngineError> {
        let encoder = LocalEncoder::new(clip);
        let catalog_path = data_dir.join("catalog.sqlite3");
        let catalog = SqliteCatalog::open(&catalog_path)?;
        restrict_to_owner(&catalog_path, false)?;
        let blobs = Arc::new(LocalBlobStore::open(
            &data_dir.join("blobs"),
            settings.library.as_deref(),
        )?);
        restrict_to_owner(&data_dir.join("blobs"), true)?;
        // The model is remembered before the index changes for it, so a crash during a rebuild
        // is finished by the next start with the same model.
        save_settings(&data_dir, &settings)?;
        let id = glimpse_core::ports::TextEmbedder::encoder(&encoder).clone();
        let dimension = encoder.dimension();
        let budget = settings.memory_budget.unwrap_or_default();
        let (index, index_repairs) =
            open_index(&data_dir, &catalog, &id, dimension, rebuild, budget).await?;
        catalog.register_encoder(&id, dimension).await?;
        // One engine, one encoder: the one it opened with is the one that indexes.
        catalog.activate_encoder(&id).await?;
        catalog.release_leases()?;
        for repair in &index_repairs {
            eprintln!("glimpse: {repair}");
        }
        let engine = Self {
            data_dir,
            settings,
            catalog,
            blobs,
            index,
            encoder,
            reranker: Arc::new(RetrievalOrder),
            policy: RetryPolicy::default(),
            last_scan: Mutex::new(None),
            scanning: tokio::sync::Mutex::new(()),
            index_repairs,
            last_check: Mutex::new(None),
            query_cache: MemoryQueryCache::new(QUERY_CACHE_ENTRIES),
            precision: None,
            adapter: RwLock::new(None),
            learning: None,
            clicked: tokio::sync::watch::Sender::new(0),
            query_training_runs: TrainingRuns::default(),
            reranker_training_runs: TrainingRuns::default(),
            reranker_learner: None,
            reranker_adapter: Mutex::new(None),
            _lock: lock,
        };
        engine.refresh_adapter().await?;
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

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The library folder, if any.
    pub fn library(&self) -> Option<&Path> {
        self.settings.library.as_deref()
    }

    /// The memory Glimpse may use.
    pub fn memory_budget(&self) -> MemoryBudget {
        self.settings.memory_budget.unwrap_or_default()
    }

    /// Records what this process holds now, for `glimpse status` (`process` names it, as in
    /// "glimpse serve"), and returns it.
    pub fn record_memory(&self, process: &str) -> Result<MemoryRecord, EngineError> {
        let record = MemoryRecord::now(process, self.memory_budget(), now_seconds());
        record
            .save(&self.data_dir)
            .map_err(|e| storage(&self.data_dir, e))?;
        Ok(record)
    }

    /// Reranks the first results of every search with `reranker` (retrieval order by default).
    pub fn with_reranker(mut self, reranker: Arc<dyn Reranker>) -> Self {
        self.reranker = reranker;
        self
    }

    /// The adapters, for core's flows, with the active query adapter.
    pub fn ports<'a>(&'a self, adapter: Option<&'a AdapterVersion>) -> Ports<'a> {
        Ports {
            catalog: &self.catalog,
            index: &self.index,
            text: &self.encoder,
            reranker: &*self.reranker,
            adapter,
            exploration: self
                .learning
                .as_ref()
                .map_or(ExplorationSettings::OFF, |l| l.exploration),
        }
    }

    /// A search (see [`flows::search`]), its query's texts embedded through the query cache and
    /// its results scored with the active query adapter.
    pub async fn search(&self, request: &SearchRequest) -> Result<SearchResponse, FlowError> {
        let text = CachedTextEmbedder::new(&self.encoder, &self.query_cache);
        let adapter = self.active_adapter();
        let ports = Ports {
            text: &text,
            ..self.ports(adapter.as_deref())
        };
        flows::search(ports, request).await
    }

    /// The query embedding cache, for its counters.
    pub fn query_cache(&self) -> &MemoryQueryCache {
        &self.query_cache
    }

    /// One indexing round (see [`flows::index_round`]).
    pub async fn index_round(&self) -> Result<IndexRound, FlowError> {
        flows::index_round(
            &self.catalog,
            &*self.blobs,
            &self.encoder,
            &self.index,
            INDEX_BATCH,
            &self.policy,
        )
        .await
    }

    /// Scans the library (if any; one scan at a time) and records the report for `status`. With
    /// `forget_missing`, photos missing from a library or folder that reads empty are removed
    /// too (for one emptied on purpose); otherwise that marks the library unavailable.
    pub async fn scan_library(
        &self,
        forget_missing: bool,
    ) -> Result<Option<ScanReport>, EngineError> {
        let Some(library) = self.library() else {
            return Ok(None);
        };
        let _scanning = self.scanning.lock().await;
        let report = library::scan(self, library, forget_missing).await?;
        if let Some(problem) = &report.problem {
            eprintln!("glimpse: library unavailable: {problem}");
        }
        if let Ok(mut last) = self.last_scan.lock() {
            *last = Some(report.clone());
        }
        Ok(Some(report))
    }

    /// Compares the catalog with the index and, with `repair`, re-queues photos whose vector is
    /// missing and removes vectors without a photo (see [`flows::reconcile`]); the result is
    /// kept for `status`.
    pub async fn check(&self, repair: bool) -> Result<Reconciliation, EngineError> {
        let report = flows::reconcile(&self.catalog, &self.index, repair).await?;
        Ok(self.remember_check(report))
    }

    /// [`check`](Self::check) with repair, at start: ids are compared only when the counts of
    /// indexed photos and vectors differ.
    pub async fn check_at_start(&self) -> Result<Reconciliation, EngineError> {
        let report = flows::reconcile_if_counts_differ(&self.catalog, &self.index, true).await?;
        Ok(self.remember_check(report))
    }

    fn remember_check(&self, report: Reconciliation) -> Reconciliation {
        if let Ok(mut last) = self.last_check.lock() {
            *last = Some(report.clone());
        }
        report
    }

    /// The last comparison of catalog and index, if one ran.
    pub fn last_check(&self) -> Option<Reconciliation> {
        self.last_check.lock().ok().and_then(|last| last.clone())
    }

    /// What opening found wrong with the index and did about it.
    pub fn index_repairs(&self) -> &[String] {
        &self.index_repairs
    }

    /// How precisely each tower of the model runs: what `--precision` came to on this machine.
    pub fn precision(&self) -> Option<TowerPrecisions> {
        self.precision
    }

    /// Puts every failed photo back in the indexing queue; returns how many.
    pub async fn retry_failed(&self) -> Result<u64, PortError> {
        self.catalog.requeue(&Requeue::Failed).await
    }

    /// Whether the library can be read: `None` without a library, `true` until a scan finds it
    /// missing, unreadable or empty (then nothing is removed until it is back).
    pub fn library_available(&self) -> Option<bool> {
        self.library()?;
        Some(self.last_scan().is_none_or(|scan| scan.available))
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

/// Remembers `settings` (atomically; nothing is written when they did not change, so a full disk
/// does not stop a start).
fn save_settings(data_dir: &Path, settings: &Settings) -> Result<(), EngineError> {
    let path = data_dir.join(SETTINGS_FILE);
    let text = serde_json::to_string_pretty(settings).map_err(|e| storage(&path, e))?;
    if std::fs::read_to_string(&path).is_ok_and(|saved| saved == text) {
        return restrict_to_owner(&path, false);
    }
    let temporary = data_dir.join(format!("{SETTINGS_FILE}.partial"));
    std::fs::write(&temporary, text).map_err(|e| storage(&temporary, e))?;
    restrict_to_owner(&temporary, false)?;
    std::fs::rename(&temporary, &path).map_err(|e| storage(&path, e))
}

/// Makes a file (0600) or folder (0700) of the data directory private to its owner: it holds
/// where photos were taken and what was searched.
fn restrict_to_owner(path: &Path, folder: bool) -> Result<(), EngineError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if folder { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| storage(path, e))
}

/// Opens the index for `id`, finishing or starting a rebuild where one is due, and setting aside
/// (never deleting) an index that cannot be opened. Returns the index and what was repaired; the
/// photos an emptied index lacks are re-queued by the start-up check that compares it with the
/// catalog.
async fn open_index(
    data_dir: &Path,
    catalog: &SqliteCatalog,
    id: &EncoderId,
    dimension: usize,
    rebuild: bool,
    budget: MemoryBudget,
) -> Result<(LocalIndex, Vec<String>), EngineError> {
    let directory = data_dir.join("index");
    let tuning = IndexTuning::within(budget, dimension);
    let mut repairs = Vec::new();
    let resuming = catalog.engine_state(REBUILD_KEY)?.as_deref() == Some(&*id.to_string());
    if LocalIndex::finish_rewrite(&directory)? {
        repairs.push("finished converting the index that an earlier run started".to_owned());
    }
    let existed = LocalIndex::exists(&directory);
    let index = match LocalIndex::open(&directory, id, dimension, tuning) {
        Ok(index) if resuming => {
            repairs.push(format!(
                "finished the index rebuild for {id} that an earlier run started"
            ));
            queue_everything(catalog).await?;
            index
        }
        Ok(index) => index,
        Err(IndexOpenError::OtherEncoder { found, .. }) if rebuild || resuming => {
            repairs.push(format!(
                "the index was built with {found}; rebuilding it for {id}"
            ));
            catalog.set_engine_state(REBUILD_KEY, Some(&id.to_string()))?;
            crash_point("rebuild:recorded");
            LocalIndex::destroy(&directory).map_err(|e| storage(&directory, e))?;
            crash_point("rebuild:destroyed");
            let index = LocalIndex::open(&directory, id, dimension, tuning)?;
            crash_point("rebuild:created");
            queue_everything(catalog).await?;
            index
        }
        Err(error @ IndexOpenError::OtherEncoder { .. }) => return Err(error.into()),
        Err(IndexOpenError::Storage { message, .. }) => {
            let aside = data_dir.join(format!("index.unreadable-{}", now_seconds()));
            std::fs::rename(&directory, &aside).map_err(|e| storage(&directory, e))?;
            repairs.push(format!(
                "the index could not be opened ({message}); it was set aside as {} and a new \
                 one is built from the catalog (delete the old one once you no longer need it)",
                aside.display()
            ));
            LocalIndex::open(&directory, id, dimension, tuning)?
        }
    };
    let index = if index.originals() == tuning.originals {
        index
    } else {
        convert_index(index, &directory, tuning, &mut repairs)?
    };
    if !existed && !resuming && catalog.counts().await?.indexed > 0 {
        repairs.push(
            "the index folder was missing although photos were indexed; it is rebuilt from \
             the catalog"
                .to_owned(),
        );
    }
    Ok((index, repairs))
}

/// Rewrites an index whose originals are not of `tuning.originals`' number type (f32, made before
/// half floats) into one whose are: the same vectors, in half the bytes at the default. The
/// progress goes to stderr; if the rewrite fails (a full disk), the old index is kept and used,
/// and the next start tries again.
fn convert_index(
    index: LocalIndex,
    directory: &Path,
    tuning: IndexTuning,
    repairs: &mut Vec<String>,
) -> Result<LocalIndex, EngineError> {
    let (from, to) = (index.originals(), tuning.originals);
    let (encoder, dimension) = (index.encoder().clone(), index.dimension());
    eprintln!(
        "glimpse: converting the index from {from} to {to} originals (once; the vectors are \
         copied, no photo is read again)"
    );
    let mut told = (RewriteStage::Exporting, 0);
    let converted = off_runtime(|| {
        index.rewrite(directory, tuning, |stage, done, total| {
            // About every tenth of each stage, and its end.
            if stage != told.0 || done == total || done - told.1 >= total.div_ceil(10) {
                told = (stage, done);
                eprintln!("glimpse: converting the index, {stage}: {done} of {total} vectors");
            }
        })
    });
    Ok(match converted {
        Ok(index) => {
            repairs.push(format!("converted the index from {from} to {to} originals"));
            index
        }
        Err(error) => {
            repairs.push(format!(
                "the index could not be converted from {from} to {to} originals ({error}); it \
                 keeps {from} and the next start tries again"
            ));
            LocalIndex::open(directory, &encoder, dimension, tuning)?
        }
    })
}

/// The last steps of a rebuild: every photo queued for the new encoder, then the rebuild record
/// cleared. Both are safe to repeat.
async fn queue_everything(catalog: &SqliteCatalog) -> Result<(), EngineError> {
    catalog.requeue(&Requeue::Everything).await?;
    crash_point("rebuild:queued");
    catalog.set_engine_state(REBUILD_KEY, None)?;
    Ok(())
}
