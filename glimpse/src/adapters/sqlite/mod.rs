//! The embedded Catalog: one SQLite file in WAL mode, schema versioned by `PRAGMA user_version`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use glimpse_core::EncoderId;
use glimpse_core::browse::{AlbumSummary, BrowseCursor};
use glimpse_core::photo::{
    GeoPoint, ImageFormat, Origin, Photo, PhotoId, PhotoStatus, StagedUpload, UploadId,
};
use glimpse_core::ports::{
    Added, Catalog, CatalogCounts, ClaimedJob, ClickedResult, JobClaim, JobOutcome, PortError,
    Requeue, SearchFilter,
};
use glimpse_core::search::{
    LoggedResult, LoggedResultWithClick, LoggedSearch, QueryId, SearchLog, SearchLogEntry,
    StageTimings,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::blocking::off_runtime;

mod learning;

/// The migrations, in order; `user_version` counts how many are applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE encoders (
    id            TEXT PRIMARY KEY,
    dimension     INTEGER NOT NULL,
    first_used_at INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL
);
CREATE TABLE photos (
    id          INTEGER PRIMARY KEY,
    sha256      TEXT NOT NULL UNIQUE,
    origin_kind TEXT NOT NULL CHECK (origin_kind IN ('library', 'upload')),
    origin_key  TEXT NOT NULL,
    format      TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    taken_at    INTEGER,
    dated_at    INTEGER NOT NULL,
    camera      TEXT,
    latitude    REAL,
    longitude   REAL,
    album       TEXT,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'indexed', 'failed')),
    last_error  TEXT,
    added_at    INTEGER NOT NULL,
    modified_at INTEGER
);
CREATE UNIQUE INDEX photos_by_origin ON photos (origin_kind, origin_key);
CREATE INDEX photos_by_status ON photos (status);
CREATE TABLE feature_jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    photo_id    INTEGER NOT NULL REFERENCES photos (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL DEFAULT 'embed',
    state       TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    run_after   INTEGER NOT NULL,
    lease_until INTEGER,
    error       TEXT,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX feature_jobs_runnable ON feature_jobs (state, run_after);
CREATE INDEX feature_jobs_by_photo ON feature_jobs (photo_id);
CREATE TABLE searches (
    id              TEXT PRIMARY KEY,
    text            TEXT NOT NULL,
    parsed          TEXT NOT NULL,
    encoder         TEXT NOT NULL,
    parse_ms        REAL NOT NULL,
    embed_ms        REAL NOT NULL,
    retrieve_ms     REAL NOT NULL,
    rerank_ms       REAL NOT NULL,
    log_ms          REAL NOT NULL,
    total_ms        REAL NOT NULL,
    rerank_fallback TEXT,
    created_at      INTEGER NOT NULL
);
CREATE TABLE search_results (
    query_id           TEXT NOT NULL REFERENCES searches (id) ON DELETE CASCADE,
    rank               INTEGER NOT NULL,
    photo_id           INTEGER NOT NULL,
    score              REAL NOT NULL,
    rerank_probability REAL,
    clicked            INTEGER NOT NULL DEFAULT 0,
    clicked_at         INTEGER,
    PRIMARY KEY (query_id, rank)
);
"#,
    r#"
CREATE INDEX photos_by_date ON photos (dated_at DESC, id DESC);
CREATE INDEX photos_by_album ON photos (lower(album));
"#,
    // Never lose a photo: a photo may be at several library paths (copies, a move in progress),
    // a claim that never ended is counted, and the engine records transitions it must finish.
    r#"
ALTER TABLE feature_jobs ADD COLUMN unfinished_claims INTEGER NOT NULL DEFAULT 0;
CREATE TABLE library_files (
    path        TEXT PRIMARY KEY,
    photo_id    INTEGER NOT NULL REFERENCES photos (id) ON DELETE CASCADE,
    bytes       INTEGER NOT NULL,
    modified_at INTEGER
);
CREATE INDEX library_files_by_photo ON library_files (photo_id);
INSERT INTO library_files (path, photo_id, bytes, modified_at)
    SELECT origin_key, id, bytes, modified_at FROM photos WHERE origin_kind = 'library';
DROP INDEX photos_by_origin;
CREATE INDEX photos_by_origin ON photos (origin_kind, origin_key);
CREATE TABLE engine_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE INDEX searches_by_time ON searches (created_at);
INSERT INTO engine_state (key, value)
    SELECT 'active_encoder', id FROM encoders ORDER BY last_used_at DESC LIMIT 1;
"#,
    // Uploads straight to storage, as the pool's catalog records them (the port's contract).
    r#"
CREATE TABLE staged_uploads (
    id         TEXT PRIMARY KEY,
    bytes      INTEGER NOT NULL,
    started_at INTEGER NOT NULL
);
CREATE INDEX staged_uploads_by_age ON staged_uploads (started_at);
"#,
    // Learning from clicks: what ranked each search, exploration swaps, adapter versions and the
    // training lease.
    r#"
ALTER TABLE searches ADD COLUMN adapter_version INTEGER;
ALTER TABLE searches ADD COLUMN swapped_with INTEGER;
CREATE INDEX search_results_clicks ON search_results (clicked_at) WHERE clicked;
CREATE TABLE query_adapters (
    encoder    TEXT NOT NULL,
    version    INTEGER NOT NULL,
    adapter    TEXT NOT NULL,
    evaluation TEXT NOT NULL,
    trained_at INTEGER NOT NULL,
    PRIMARY KEY (encoder, version)
);
CREATE TABLE training_lease (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    holder      TEXT,
    lease_until INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    clicks      INTEGER NOT NULL
);
"#,
    // The vision-language reranker learns too: a lease per learner, and its adapters' versions
    // (their files are in the blob store).
    r#"
CREATE TABLE training_leases (
    learner     TEXT PRIMARY KEY,
    holder      TEXT,
    lease_until INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    clicks      INTEGER NOT NULL
);
INSERT INTO training_leases (learner, holder, lease_until, started_at, clicks)
    SELECT 'query_adapter', holder, lease_until, started_at, clicks FROM training_lease;
DROP TABLE training_lease;
CREATE TABLE reranker_adapters (
    model      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    blobs      TEXT NOT NULL,
    evaluation TEXT NOT NULL,
    trained_at INTEGER NOT NULL,
    PRIMARY KEY (model, version)
);
"#,
];

/// A library file as the catalog last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibraryEntry {
    /// The photo.
    pub id: PhotoId,
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time, seconds.
    pub modified_at: Option<i64>,
}

/// What [`SqliteCatalog::settle_library_photo`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Settled {
    /// The photo's original is where the catalog says (or it is an upload).
    Kept,
    /// The photo's file went away from its path but the photo is at another: it now points
    /// there (same id, vector, clicks).
    Moved {
        /// The photo as it is now.
        photo: Photo,
        /// Whether the new path's folder gave it another album (the index's filter fields need
        /// the change too).
        album_changed: bool,
    },
    /// No library file holds the photo any more.
    NoFileLeft(Photo),
}

/// The album of a library path: the name of the folder holding the file (none at the root).
pub fn album_of(path: &str) -> Option<String> {
    let mut parts = path.rsplit('/');
    parts.next();
    parts.next().map(str::to_owned)
}

/// A `staged_uploads` row: id, bytes, started_at.
fn staged_row(row: &Row<'_>) -> rusqlite::Result<(String, i64, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn staged_upload((id, bytes, started_at): (String, i64, i64)) -> Result<StagedUpload, PortError> {
    Ok(StagedUpload {
        id: id
            .parse()
            .map_err(|_| internal(format!("a staged upload's id `{id}`")))?,
        bytes: u64::try_from(bytes).map_err(|_| internal("a staged upload's size"))?,
        started_at,
    })
}

/// The SQLite catalog.
pub struct SqliteCatalog {
    connection: Mutex<Connection>,
}

fn internal(error: impl std::fmt::Display) -> PortError {
    PortError::Internal(format!("catalog: {error}"))
}

/// A busy database, a full disk and I/O errors pass: the caller waits them out.
fn storage(error: rusqlite::Error) -> PortError {
    use rusqlite::ErrorCode as Code;
    match error.sqlite_error_code() {
        Some(Code::DatabaseBusy | Code::DatabaseLocked) => {
            PortError::Unavailable(format!("catalog busy: {error}"))
        }
        Some(Code::DiskFull | Code::SystemIoFailure | Code::CannotOpen | Code::OutOfMemory) => {
            PortError::Unavailable(format!("catalog storage: {error}"))
        }
        _ => internal(error),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Seconds since 1970, now.
pub fn now_seconds() -> i64 {
    now_ms() / 1000
}

/// The `searches` columns of the stage timings, in [`StageTimings::STAGES`] order.
fn timing_columns() -> String {
    StageTimings::STAGES
        .iter()
        .map(|stage| format!("{stage}_ms"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The engine-state key of the active encoder.
const ACTIVE_ENCODER: &str = "active_encoder";

/// A job that is no suspect: every claim of it ended (its lease did not run out under a claimer).
const SQLITE_CLEAN_JOB: &str = "unfinished_claims = 0 AND state = 'queued'";

const PHOTO_COLUMNS: &str = "id, sha256, origin_kind, origin_key, format, bytes, width, height, \
     taken_at, dated_at, camera, latitude, longitude, album, status, last_error, added_at, \
     modified_at";

fn corrupt(column: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("unknown {what}").into(),
    )
}

fn photo_from_row(row: &Row<'_>) -> rusqlite::Result<Photo> {
    let origin_kind: String = row.get(2)?;
    let origin = Origin::from_kind_and_key(&origin_kind, row.get(3)?)
        .ok_or_else(|| corrupt(2, "origin kind"))?;
    let format: String = row.get(4)?;
    let status: String = row.get(14)?;
    let latitude: Option<f64> = row.get(11)?;
    let longitude: Option<f64> = row.get(12)?;
    Ok(Photo {
        id: PhotoId::from_i64(row.get(0)?),
        sha256: row.get(1)?,
        origin,
        format: ImageFormat::parse(&format).ok_or_else(|| corrupt(4, "format"))?,
        bytes: row.get::<_, i64>(5)? as u64,
        width: row.get(6)?,
        height: row.get(7)?,
        taken_at: row.get(8)?,
        dated_at: row.get(9)?,
        camera: row.get(10)?,
        location: latitude
            .zip(longitude)
            .map(|(latitude, longitude)| GeoPoint {
                latitude,
                longitude,
            }),
        album: row.get(13)?,
        status: PhotoStatus::parse(&status).ok_or_else(|| corrupt(14, "status"))?,
        last_error: row.get(15)?,
        added_at: row.get(16)?,
        modified_at: row.get(17)?,
    })
}

/// Inserts a photo row, and its queued feature job if it is pending.
fn insert_photo(transaction: &rusqlite::Transaction<'_>, photo: &Photo) -> rusqlite::Result<()> {
    let (kind, key) = photo.origin.kind_and_key();
    transaction
        .prepare_cached(&format!(
            "INSERT INTO photos ({PHOTO_COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
        ))?
        .execute(params![
            photo.id.as_i64(),
            photo.sha256,
            kind,
            key,
            photo.format.as_str(),
            photo.bytes as i64,
            photo.width,
            photo.height,
            photo.taken_at,
            photo.dated_at,
            photo.camera,
            photo.location.map(|l| l.latitude),
            photo.location.map(|l| l.longitude),
            photo.album,
            photo.status.as_str(),
            photo.last_error,
            photo.added_at,
            photo.modified_at,
        ])?;
    if photo.status == PhotoStatus::Pending {
        let now = now_ms();
        transaction
            .prepare_cached(
                "INSERT INTO feature_jobs (photo_id, state, run_after, updated_at) \
                 VALUES (?1, 'queued', ?2, ?2)",
            )?
            .execute(params![photo.id.as_i64(), now])?;
    }
    Ok(())
}

/// Adds the photo with its job, unless its bytes are in the catalog (then the existing photo).
fn add_in(transaction: &rusqlite::Transaction<'_>, photo: &Photo) -> rusqlite::Result<Added> {
    let existing: Option<i64> = transaction
        .prepare_cached("SELECT id FROM photos WHERE sha256 = ?1")?
        .query_row(params![photo.sha256], |row| row.get(0))
        .optional()?;
    if let Some(id) = existing {
        return Ok(Added {
            id: PhotoId::from_i64(id),
            created: false,
        });
    }
    insert_photo(transaction, photo)?;
    Ok(Added {
        id: photo.id,
        created: true,
    })
}

impl SqliteCatalog {
    /// Adds many photos in one transaction (an import); photos whose bytes are already in the
    /// catalog are skipped. Returns how many were added.
    pub fn import(&self, photos: &[Photo]) -> Result<u64, PortError> {
        self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut added = 0;
            for photo in photos {
                if add_in(&transaction, photo)?.created {
                    added += 1;
                }
            }
            transaction.commit()?;
            Ok(added)
        })
    }

    /// Opens (creating if needed) the catalog at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, PortError> {
        let connection = Connection::open(path).map_err(storage)?;
        Self::configure(connection)
    }

    fn configure(mut connection: Connection) -> Result<Self, PortError> {
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(storage)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(storage)?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(storage)?;
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(storage)?;
        let version: usize = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(storage)?;
        if version > MIGRATIONS.len() {
            return Err(PortError::Internal(format!(
                "the catalog has schema version {version}, newer than this Glimpse knows ({}); \
                 upgrade Glimpse",
                MIGRATIONS.len()
            )));
        }
        for (number, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Exclusive)
                .map_err(storage)?;
            transaction.execute_batch(migration).map_err(storage)?;
            transaction
                .pragma_update(None, "user_version", number + 1)
                .map_err(storage)?;
            transaction.commit().map_err(storage)?;
        }
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    /// Runs `work` on the connection, off the async runtime's worker threads.
    fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, PortError> {
        off_runtime(|| {
            let mut connection = self
                .connection
                .lock()
                .map_err(|_| internal("a previous catalog operation panicked"))?;
            work(&mut connection).map_err(storage)
        })
    }

    /// Releases every lease: only for a process that owns the data directory exclusively, at
    /// start, so the jobs a crashed run held are runnable at once instead of after their lease.
    /// Each released claim never ended, and is counted as such.
    pub fn release_leases(&self) -> Result<u64, PortError> {
        self.with(|c| {
            c.execute(
                "UPDATE feature_jobs SET state = 'queued', lease_until = NULL, run_after = ?1, \
                 unfinished_claims = unfinished_claims + 1 WHERE state = 'leased'",
                params![now_ms()],
            )
            .map(|n| n as u64)
        })
    }

    /// Every library file the catalog holds, by path relative to the library root (a photo with
    /// copies at several paths appears once per path).
    pub fn library_files(&self) -> Result<HashMap<String, LibraryEntry>, PortError> {
        self.with(|c| {
            let mut statement =
                c.prepare("SELECT path, photo_id, bytes, modified_at FROM library_files")?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    LibraryEntry {
                        id: PhotoId::from_i64(row.get(1)?),
                        bytes: row.get::<_, i64>(2)? as u64,
                        modified_at: row.get(3)?,
                    },
                ))
            })?;
            rows.collect()
        })
    }

    /// Records library files, all in one transaction: each file's photo is added with its job
    /// unless its bytes are already in the catalog, and the file's path is linked to that photo.
    /// For each file: what adding did, and the photo the path held before if it was another one.
    pub fn add_library_files(
        &self,
        files: &[(&str, Photo)],
    ) -> Result<Vec<(Added, Option<PhotoId>)>, PortError> {
        self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut recorded = Vec::with_capacity(files.len());
            for (path, photo) in files {
                let added = add_in(&transaction, photo)?;
                let before: Option<i64> = transaction
                    .prepare_cached("SELECT photo_id FROM library_files WHERE path = ?1")?
                    .query_row(params![path], |row| row.get(0))
                    .optional()?;
                transaction
                    .prepare_cached(
                        "INSERT INTO library_files (path, photo_id, bytes, modified_at) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (path) DO UPDATE SET \
                         photo_id = excluded.photo_id, bytes = excluded.bytes, \
                         modified_at = excluded.modified_at",
                    )?
                    .execute(params![
                        path,
                        added.id.as_i64(),
                        photo.bytes as i64,
                        photo.modified_at
                    ])?;
                let previous = before
                    .map(PhotoId::from_i64)
                    .filter(|previous| *previous != added.id);
                recorded.push((added, previous));
            }
            transaction.commit()?;
            Ok(recorded)
        })
    }

    /// Forgets the library file at `path`; returns the photo it held.
    pub fn unlink_library_file(&self, path: &str) -> Result<Option<PhotoId>, PortError> {
        self.with(|c| {
            c.query_row(
                "DELETE FROM library_files WHERE path = ?1 RETURNING photo_id",
                params![path],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|id| id.map(PhotoId::from_i64))
        })
    }

    /// Brings a library photo's original in line with the library files that hold it: kept
    /// where it is while its file is still linked; moved to another linked path (with the album
    /// of that path's folder) when its own went away; reported as having no file left otherwise.
    /// Uploads are always kept.
    pub fn settle_library_photo(&self, id: PhotoId) -> Result<Settled, PortError> {
        self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(photo) = transaction
                .query_row(
                    &format!("SELECT {PHOTO_COLUMNS} FROM photos WHERE id = ?1"),
                    params![id.as_i64()],
                    photo_from_row,
                )
                .optional()?
            else {
                return Ok(Settled::Kept);
            };
            let Origin::Library(current) = &photo.origin else {
                return Ok(Settled::Kept);
            };
            let paths: Vec<(String, Option<i64>)> = {
                let mut statement = transaction.prepare_cached(
                    "SELECT path, modified_at FROM library_files WHERE photo_id = ?1 \
                     ORDER BY path",
                )?;
                statement
                    .query_map(params![id.as_i64()], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            if paths.iter().any(|(path, _)| path == current) {
                return Ok(Settled::Kept);
            }
            let Some((to, modified_at)) = paths.into_iter().next() else {
                return Ok(Settled::NoFileLeft(photo));
            };
            let album = album_of(&to);
            transaction.execute(
                "UPDATE photos SET origin_key = ?2, album = ?3, modified_at = ?4 WHERE id = ?1",
                params![id.as_i64(), to, album, modified_at],
            )?;
            transaction.commit()?;
            Ok(Settled::Moved {
                album_changed: album != photo.album,
                photo: Photo {
                    origin: Origin::Library(to),
                    album,
                    modified_at,
                    ..photo
                },
            })
        })
    }

    /// A value the engine recorded under `key`.
    pub fn engine_state(&self, key: &str) -> Result<Option<String>, PortError> {
        self.with(|c| {
            c.query_row(
                "SELECT value FROM engine_state WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()
        })
    }

    /// Records (`Some`) or clears (`None`) a value under `key`, durably.
    pub fn set_engine_state(&self, key: &str, value: Option<&str>) -> Result<(), PortError> {
        self.with(|c| {
            match value {
                Some(value) => c.execute(
                    "INSERT INTO engine_state (key, value) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                ),
                None => c.execute("DELETE FROM engine_state WHERE key = ?1", params![key]),
            }
            .map(drop)
        })
    }

    /// The most recent photos that failed, with their errors.
    pub fn failed_photos(&self, limit: usize) -> Result<Vec<Photo>, PortError> {
        self.with(|c| {
            let mut statement = c.prepare(&format!(
                "SELECT {PHOTO_COLUMNS} FROM photos WHERE status = 'failed' \
                 ORDER BY added_at DESC LIMIT ?1"
            ))?;
            let rows = statement.query_map(params![limit as i64], photo_from_row)?;
            rows.collect()
        })
    }
}

#[async_trait]
impl Catalog for SqliteCatalog {
    async fn register_encoder(
        &self,
        encoder: &EncoderId,
        dimension: usize,
    ) -> Result<(), PortError> {
        let now = now_seconds();
        self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            transaction.execute(
                "INSERT INTO encoders (id, dimension, first_used_at, last_used_at) \
                 VALUES (?1, ?2, ?3, ?3) \
                 ON CONFLICT (id) DO UPDATE SET last_used_at = excluded.last_used_at",
                params![encoder.to_string(), dimension as i64, now],
            )?;
            transaction.execute(
                "INSERT INTO engine_state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                params![ACTIVE_ENCODER, encoder.to_string()],
            )?;
            transaction.commit()
        })
    }

    async fn active_encoder(&self) -> Result<Option<EncoderId>, PortError> {
        self.engine_state(ACTIVE_ENCODER)?
            .map(|id| id.parse().map_err(internal))
            .transpose()
    }

    async fn activate_encoder(&self, encoder: &EncoderId) -> Result<bool, PortError> {
        let id = encoder.to_string();
        self.with(|c| {
            c.execute(
                "INSERT INTO engine_state (key, value) SELECT ?1, id FROM encoders WHERE id = ?2 \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![ACTIVE_ENCODER, id],
            )
            .map(|changed| changed == 1)
        })
    }

    async fn add_photo(&self, photo: &Photo) -> Result<Added, PortError> {
        self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let added = add_in(&transaction, photo)?;
            transaction.commit()?;
            Ok(added)
        })
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, PortError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {PHOTO_COLUMNS} FROM photos WHERE id = ?1"),
                params![id.as_i64()],
                photo_from_row,
            )
            .optional()
        })
    }

    async fn photos(&self, ids: &[PhotoId]) -> Result<Vec<Photo>, PortError> {
        self.with(|c| {
            let mut statement =
                c.prepare_cached(&format!("SELECT {PHOTO_COLUMNS} FROM photos WHERE id = ?1"))?;
            let mut photos = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(photo) = statement
                    .query_row(params![id.as_i64()], photo_from_row)
                    .optional()?
                {
                    photos.push(photo);
                }
            }
            Ok(photos)
        })
    }

    async fn browse(
        &self,
        filter: &SearchFilter,
        after: Option<BrowseCursor>,
        limit: usize,
    ) -> Result<Vec<Photo>, PortError> {
        use rusqlite::types::Value;
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        if let Some(album) = &filter.album {
            conditions.push("lower(album) = ?".to_owned());
            values.push(Value::Text(album.to_lowercase()));
        }
        if let Some(camera) = &filter.camera {
            conditions.push("instr(lower(camera), ?) > 0".to_owned());
            values.push(Value::Text(camera.to_lowercase()));
        }
        if let Some(from) = filter.from {
            conditions.push("dated_at >= ?".to_owned());
            values.push(Value::Integer(from));
        }
        if let Some(until) = filter.until {
            conditions.push("dated_at < ?".to_owned());
            values.push(Value::Integer(until));
        }
        if !filter.exclude.is_empty() {
            let marks = vec!["?"; filter.exclude.len()].join(", ");
            conditions.push(format!("id NOT IN ({marks})"));
            values.extend(filter.exclude.iter().map(|id| Value::Integer(id.as_i64())));
        }
        if let Some(cursor) = after {
            conditions.push("(dated_at, id) < (?, ?)".to_owned());
            values.push(Value::Integer(cursor.dated_at));
            values.push(Value::Integer(cursor.id.as_i64()));
        }
        let clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        values.push(Value::Integer(limit as i64));
        self.with(|c| {
            let mut statement = c.prepare(&format!(
                "SELECT {PHOTO_COLUMNS} FROM photos {clause} \
                 ORDER BY dated_at DESC, id DESC LIMIT ?"
            ))?;
            statement
                .query_map(rusqlite::params_from_iter(values), photo_from_row)?
                .collect()
        })
    }

    async fn albums(&self) -> Result<Vec<AlbumSummary>, PortError> {
        self.with(|c| {
            let mut statement = c.prepare_cached(
                "SELECT min(album), COUNT(*) FROM photos WHERE album IS NOT NULL \
                 GROUP BY lower(album) ORDER BY lower(album)",
            )?;
            statement
                .query_map([], |row| {
                    Ok(AlbumSummary {
                        name: row.get(0)?,
                        photos: row.get::<_, i64>(1)? as u64,
                    })
                })?
                .collect()
        })
    }

    async fn remove_photo(&self, id: PhotoId) -> Result<Option<Photo>, PortError> {
        self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let photo = transaction
                .query_row(
                    &format!("SELECT {PHOTO_COLUMNS} FROM photos WHERE id = ?1"),
                    params![id.as_i64()],
                    photo_from_row,
                )
                .optional()?;
            transaction.execute("DELETE FROM photos WHERE id = ?1", params![id.as_i64()])?;
            transaction.commit()?;
            Ok(photo)
        })
    }

    async fn claim_jobs(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, PortError> {
        let now = now_ms();
        let lease_until = now.saturating_add(lease.as_millis() as i64);
        self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let runnable = |suspect: &str, limit: usize| -> rusqlite::Result<Vec<(i64, i64)>> {
                let mut statement = transaction.prepare_cached(&format!(
                    "SELECT id, photo_id FROM feature_jobs \
                     WHERE ((state = 'queued' AND run_after <= ?1) \
                            OR (state = 'leased' AND lease_until <= ?1)) \
                       AND ({suspect}) \
                     ORDER BY id LIMIT ?2"
                ))?;
                let rows = statement.query_map(params![now, limit as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
                rows.collect()
            };
            // Suspects (claims that never ended) go alone, after everything else.
            let mut claimed = runnable(SQLITE_CLEAN_JOB, limit)?;
            if claimed.is_empty() && limit > 0 {
                claimed = runnable(&format!("NOT ({SQLITE_CLEAN_JOB})"), 1)?;
            }
            let mut jobs = Vec::with_capacity(claimed.len());
            for (job_id, photo) in claimed {
                let (attempts, unfinished) = transaction.query_row(
                    "UPDATE feature_jobs SET \
                     unfinished_claims = unfinished_claims + (state = 'leased'), \
                     state = 'leased', lease_until = ?2, attempts = attempts + 1, updated_at = ?3 \
                     WHERE id = ?1 RETURNING attempts - 1, unfinished_claims",
                    params![job_id, lease_until, now],
                    |row| Ok((row.get::<_, u32>(0)?, row.get::<_, u32>(1)?)),
                )?;
                let photo = transaction.query_row(
                    &format!("SELECT {PHOTO_COLUMNS} FROM photos WHERE id = ?1"),
                    params![photo],
                    photo_from_row,
                )?;
                jobs.push(ClaimedJob {
                    job_id,
                    photo,
                    previous_attempts: attempts,
                    unfinished_claims: unfinished,
                });
            }
            transaction.commit()?;
            Ok(jobs)
        })
    }

    async fn finish_job(&self, claim: JobClaim, outcome: &JobOutcome) -> Result<bool, PortError> {
        let now = now_ms();
        self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (job_state, run_after, error, photo_status) = match outcome {
                JobOutcome::Done => ("done", now, None, Some(PhotoStatus::Indexed)),
                JobOutcome::Retry { error, after } => (
                    "queued",
                    now.saturating_add(after.as_millis() as i64),
                    Some(error.as_str()),
                    None,
                ),
                JobOutcome::Failed { error } => (
                    "failed",
                    now,
                    Some(error.as_str()),
                    Some(PhotoStatus::Failed),
                ),
            };
            let ended = transaction.execute(
                "UPDATE feature_jobs SET state = ?2, run_after = ?3, lease_until = NULL, \
                 error = ?4, updated_at = ?5 WHERE id = ?1 AND state = 'leased' AND attempts = ?6",
                params![
                    claim.job_id,
                    job_state,
                    run_after,
                    error,
                    now,
                    claim.attempt
                ],
            )?;
            if ended == 0 {
                return Ok(false);
            }
            let status_sql = match photo_status {
                Some(_) => {
                    "UPDATE photos SET status = ?2, last_error = ?3 \
                     WHERE id = (SELECT photo_id FROM feature_jobs WHERE id = ?1)"
                }
                None => {
                    "UPDATE photos SET last_error = ?3 \
                     WHERE id = (SELECT photo_id FROM feature_jobs WHERE id = ?1)"
                }
            };
            transaction.execute(
                status_sql,
                params![claim.job_id, photo_status.map(PhotoStatus::as_str), error],
            )?;
            transaction.commit().map(|()| true)
        })
    }

    async fn requeue(&self, which: &Requeue) -> Result<u64, PortError> {
        let now = now_ms();
        self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            transaction.execute("CREATE TEMP TABLE IF NOT EXISTS requeued (id INTEGER)", [])?;
            transaction.execute("DELETE FROM requeued", [])?;
            match which {
                Requeue::Everything => {
                    transaction.execute("INSERT INTO requeued SELECT id FROM photos", [])?
                }
                Requeue::Failed => transaction.execute(
                    "INSERT INTO requeued SELECT id FROM photos WHERE status = 'failed'",
                    [],
                )?,
                Requeue::Photos(ids) => {
                    let mut statement = transaction.prepare_cached(
                        "INSERT INTO requeued SELECT id FROM photos WHERE id = ?1",
                    )?;
                    for id in ids {
                        statement.execute(params![id.as_i64()])?;
                    }
                    0
                }
            };
            transaction.execute(
                "DELETE FROM feature_jobs WHERE photo_id IN (SELECT id FROM requeued)",
                [],
            )?;
            let photos = transaction.execute(
                "UPDATE photos SET status = 'pending', last_error = NULL \
                 WHERE id IN (SELECT id FROM requeued)",
                [],
            )?;
            transaction.execute(
                "INSERT INTO feature_jobs (photo_id, state, run_after, updated_at) \
                 SELECT DISTINCT id, 'queued', ?1, ?1 FROM requeued",
                params![now],
            )?;
            transaction.execute("DELETE FROM requeued", [])?;
            transaction.commit()?;
            Ok(photos as u64)
        })
    }

    async fn photo_states(
        &self,
        after: Option<PhotoId>,
        limit: usize,
    ) -> Result<Vec<(PhotoId, PhotoStatus)>, PortError> {
        self.with(|c| {
            let mut statement = c.prepare_cached(
                "SELECT id, status FROM photos WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows =
                statement.query_map(params![after.map(PhotoId::as_i64), limit as i64], |row| {
                    let status: String = row.get(1)?;
                    Ok((
                        PhotoId::from_i64(row.get(0)?),
                        PhotoStatus::parse(&status).ok_or_else(|| corrupt(1, "status"))?,
                    ))
                })?;
            rows.collect()
        })
    }

    async fn counts(&self) -> Result<CatalogCounts, PortError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*), \
                        COALESCE(SUM(status = 'pending'), 0), \
                        COALESCE(SUM(status = 'indexed'), 0), \
                        COALESCE(SUM(status = 'failed'), 0) FROM photos",
                [],
                |row| {
                    Ok(CatalogCounts {
                        photos: row.get::<_, i64>(0)? as u64,
                        pending: row.get::<_, i64>(1)? as u64,
                        indexed: row.get::<_, i64>(2)? as u64,
                        failed: row.get::<_, i64>(3)? as u64,
                    })
                },
            )
        })
    }

    async fn log_search(&self, log: &SearchLog) -> Result<(), PortError> {
        let now = now_seconds();
        let search = &log.search;
        let query_id = search.query_id.to_string();
        self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut values: Vec<rusqlite::types::Value> = vec![
                query_id.clone().into(),
                search.text.clone().into(),
                search.parsed.clone().into(),
                search.encoder.to_string().into(),
                search.rerank_fallback.clone().into(),
                now.into(),
                search.adapter_version.map(i64::from).into(),
                search.swapped_with.map(i64::from).into(),
            ];
            values.extend(search.timings.values().map(rusqlite::types::Value::from));
            transaction.execute(
                &format!(
                    "INSERT INTO searches (id, text, parsed, encoder, rerank_fallback, created_at, \
                     adapter_version, swapped_with, {}) VALUES ({})",
                    timing_columns(),
                    vec!["?"; values.len()].join(", ")
                ),
                rusqlite::params_from_iter(values),
            )?;
            {
                let mut statement = transaction.prepare_cached(
                    "INSERT INTO search_results (query_id, rank, photo_id, score, \
                     rerank_probability) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for result in &log.results {
                    statement.execute(params![
                        query_id,
                        result.rank,
                        result.photo_id.as_i64(),
                        result.score,
                        result.rerank_probability,
                    ])?;
                }
            }
            transaction.commit()
        })
    }

    async fn search_log(&self, query_id: &QueryId) -> Result<Option<SearchLogEntry>, PortError> {
        let key = query_id.to_string();
        let found = self.with(|c| {
            let sql = format!(
                "SELECT text, parsed, encoder, rerank_fallback, created_at, adapter_version, \
                 swapped_with, {} FROM searches WHERE id = ?1",
                timing_columns()
            );
            let Some(row) = c
                .query_row(&sql, params![key], |row| {
                    let mut timings = [0.0; 6];
                    for (i, value) in timings.iter_mut().enumerate() {
                        *value = row.get(7 + i)?;
                    }
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, i64>(4)?,
                        (row.get::<_, Option<u32>>(5)?, row.get::<_, Option<u32>>(6)?),
                        StageTimings::from_values(timings),
                    ))
                })
                .optional()?
            else {
                return Ok(None);
            };
            let mut statement = c.prepare_cached(
                "SELECT rank, photo_id, score, rerank_probability, clicked, clicked_at \
                 FROM search_results WHERE query_id = ?1 ORDER BY rank",
            )?;
            let results = statement
                .query_map(params![key], |row| {
                    Ok(LoggedResultWithClick {
                        result: LoggedResult {
                            rank: row.get(0)?,
                            photo_id: PhotoId::from_i64(row.get(1)?),
                            score: row.get(2)?,
                            rerank_probability: row.get(3)?,
                        },
                        clicked: row.get(4)?,
                        clicked_at: row.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some((row, results)))
        })?;
        let Some((
            (
                text,
                parsed,
                encoder,
                rerank_fallback,
                created_at,
                (adapter_version, swapped_with),
                timings,
            ),
            results,
        )) = found
        else {
            return Ok(None);
        };
        Ok(Some(SearchLogEntry {
            search: LoggedSearch {
                query_id: *query_id,
                text,
                parsed,
                encoder: encoder.parse().map_err(internal)?,
                timings,
                rerank_fallback,
                adapter_version,
                swapped_with,
            },
            created_at,
            results,
        }))
    }

    async fn prune_search_log(&self, before: i64, keep: u64) -> Result<u64, PortError> {
        self.with(|c| {
            let transaction = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let old = transaction.execute(
                "DELETE FROM searches WHERE created_at < ?1 AND NOT EXISTS \
                 (SELECT 1 FROM search_results r WHERE r.query_id = searches.id AND r.clicked)",
                params![before],
            )?;
            let over = transaction.execute(
                "DELETE FROM searches WHERE id IN \
                 (SELECT id FROM searches ORDER BY created_at DESC, id LIMIT -1 OFFSET ?1)",
                params![i64::try_from(keep).unwrap_or(i64::MAX)],
            )?;
            transaction.commit()?;
            Ok((old + over) as u64)
        })
    }

    async fn stage_upload(&self, upload: &StagedUpload) -> Result<(), PortError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO staged_uploads (id, bytes, started_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (id) DO UPDATE SET bytes = excluded.bytes, \
                 started_at = excluded.started_at",
                params![
                    upload.id.to_string(),
                    i64::try_from(upload.bytes).unwrap_or(i64::MAX),
                    upload.started_at
                ],
            )
            .map(drop)
        })
    }

    async fn staged_upload(&self, id: &UploadId) -> Result<Option<StagedUpload>, PortError> {
        let row = self.with(|c| {
            c.query_row(
                "SELECT id, bytes, started_at FROM staged_uploads WHERE id = ?1",
                params![id.to_string()],
                staged_row,
            )
            .optional()
        })?;
        row.map(staged_upload).transpose()
    }

    async fn end_staged_upload(&self, id: &UploadId) -> Result<(), PortError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM staged_uploads WHERE id = ?1",
                params![id.to_string()],
            )
            .map(drop)
        })
    }

    async fn stale_uploads(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<StagedUpload>, PortError> {
        let rows = self.with(|c| {
            c.prepare(
                "SELECT id, bytes, started_at FROM staged_uploads WHERE started_at < ?1 \
                 ORDER BY started_at, id LIMIT ?2",
            )?
            .query_map(
                params![before, i64::try_from(limit).unwrap_or(i64::MAX)],
                staged_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(staged_upload).collect()
    }

    async fn record_click(
        &self,
        query_id: &QueryId,
        rank: u32,
    ) -> Result<Option<ClickedResult>, PortError> {
        let now = now_seconds();
        self.with(|c| {
            c.query_row(
                "UPDATE search_results SET clicked = 1, clicked_at = COALESCE(clicked_at, ?3) \
                 WHERE query_id = ?1 AND rank = ?2 RETURNING photo_id",
                params![query_id.to_string(), rank, now],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|id| {
                id.map(|id| ClickedResult {
                    photo_id: PhotoId::from_i64(id),
                    rank,
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn honours_the_catalog_contract() {
        let directory = tempfile::tempdir().unwrap();
        let catalog = SqliteCatalog::open(&directory.path().join("catalog.sqlite3")).unwrap();
        glimpse_core::contract::catalog_suite(&catalog).await;
    }

    #[tokio::test]
    async fn honours_the_learning_store_contract() {
        let directory = tempfile::tempdir().unwrap();
        let catalog = SqliteCatalog::open(&directory.path().join("catalog.sqlite3")).unwrap();
        glimpse_core::contract::learning_store_suite(&catalog, &catalog).await;
    }

    #[tokio::test]
    async fn runs_the_reranker_learning_loop() {
        let directory = tempfile::tempdir().unwrap();
        let catalog = SqliteCatalog::open(&directory.path().join("catalog.sqlite3")).unwrap();
        let blobs =
            crate::adapters::LocalBlobStore::open(&directory.path().join("blobs"), None).unwrap();
        glimpse_core::contract::reranker_loop_suite(&catalog, &catalog, &blobs).await;
    }

    #[tokio::test]
    async fn reopening_keeps_the_rows_and_the_schema_version() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("catalog.sqlite3");
        let encoder: EncoderId = "clip:test/reopen@1".parse().unwrap();
        SqliteCatalog::open(&path)
            .unwrap()
            .register_encoder(&encoder, 4)
            .await
            .unwrap();
        let reopened = SqliteCatalog::open(&path).unwrap();
        let version: usize = reopened
            .with(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let encoders: i64 = reopened
            .with(|c| c.query_row("SELECT COUNT(*) FROM encoders", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(encoders, 1);
    }
}
