//! The catalog in Postgres, written once: the schema and its migrations, every statement, and
//! [`SqlCatalog`], the [`Catalog`] and [`QueryEmbeddingCache`] over any [`SqlConnection`]. A
//! driver (tokio-postgres in the worker, Spin's Postgres interface at the edge) only connects,
//! converts [`Param`]s and [`Cell`]s, and says which errors are worth retrying.
//!
//! Every statement is one SQL command (Spin's interface prepares each; multi-command strings are
//! refused there), and every change that must be atomic is one statement.

use std::time::Duration;

use glimpse_core::browse::{AlbumSummary, BrowseCursor};
use glimpse_core::photo::{
    GeoPoint, ImageFormat, Origin, Photo, PhotoId, PhotoStatus, StagedUpload, UploadId,
};
use glimpse_core::ports::{
    Added, Catalog, CatalogCounts, ClaimedJob, ClickedResult, JobClaim, JobOutcome, MaybeSendSync,
    PortError, QueryEmbeddingCache, Requeue, SearchFilter,
};
use glimpse_core::search::{
    LoggedResult, LoggedResultWithClick, LoggedSearch, QueryId, SearchLog, SearchLogEntry,
    StageTimings,
};
use glimpse_core::{Embedding, EncoderId};

/// The migrations, in order, each a list of single-command statements; `glimpse_migrations`
/// records which are applied.
pub const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE encoders (
            id            TEXT PRIMARY KEY,
            dimension     INTEGER NOT NULL,
            first_used_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            last_used_at  TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
        "CREATE TABLE photos (
            id          BIGINT PRIMARY KEY,
            sha256      TEXT NOT NULL UNIQUE,
            origin_kind TEXT NOT NULL CHECK (origin_kind IN ('library', 'upload')),
            origin_key  TEXT NOT NULL,
            format      TEXT NOT NULL,
            bytes       BIGINT NOT NULL,
            width       INTEGER NOT NULL,
            height      INTEGER NOT NULL,
            taken_at    BIGINT,
            dated_at    BIGINT NOT NULL,
            camera      TEXT,
            latitude    DOUBLE PRECISION,
            longitude   DOUBLE PRECISION,
            album       TEXT,
            status      TEXT NOT NULL CHECK (status IN ('pending', 'indexed', 'failed')),
            last_error  TEXT,
            added_at    BIGINT NOT NULL,
            modified_at BIGINT
        )",
        "CREATE UNIQUE INDEX photos_by_origin ON photos (origin_kind, origin_key)",
        "CREATE INDEX photos_by_status ON photos (status)",
        "CREATE INDEX photos_by_date ON photos (dated_at DESC, id DESC)",
        "CREATE INDEX photos_by_album ON photos (lower(album))",
        "CREATE TABLE feature_jobs (
            id          BIGSERIAL PRIMARY KEY,
            photo_id    BIGINT NOT NULL REFERENCES photos (id) ON DELETE CASCADE,
            kind        TEXT NOT NULL DEFAULT 'embed',
            state       TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done', 'failed')),
            attempts    INTEGER NOT NULL DEFAULT 0,
            run_after   TIMESTAMPTZ NOT NULL DEFAULT now(),
            lease_until TIMESTAMPTZ,
            error       TEXT,
            updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
        "CREATE INDEX feature_jobs_runnable ON feature_jobs (state, run_after)",
        "CREATE INDEX feature_jobs_by_photo ON feature_jobs (photo_id)",
        "CREATE TABLE searches (
            id              TEXT PRIMARY KEY,
            text            TEXT NOT NULL,
            parsed          TEXT NOT NULL,
            encoder         TEXT NOT NULL,
            parse_ms        DOUBLE PRECISION NOT NULL,
            embed_ms        DOUBLE PRECISION NOT NULL,
            retrieve_ms     DOUBLE PRECISION NOT NULL,
            rerank_ms       DOUBLE PRECISION NOT NULL,
            log_ms          DOUBLE PRECISION NOT NULL,
            total_ms        DOUBLE PRECISION NOT NULL,
            rerank_fallback TEXT,
            created_at      BIGINT NOT NULL
        )",
        "CREATE TABLE search_results (
            query_id           TEXT NOT NULL REFERENCES searches (id) ON DELETE CASCADE,
            rank               INTEGER NOT NULL,
            photo_id           BIGINT NOT NULL,
            score              REAL NOT NULL,
            rerank_probability REAL,
            clicked            BOOLEAN NOT NULL DEFAULT false,
            clicked_at         BIGINT,
            PRIMARY KEY (query_id, rank)
        )",
    ],
    // The query-embedding cache: repeated queries are answered while the encoders sleep.
    &[
        "CREATE TABLE query_embeddings (
            encoder    TEXT NOT NULL,
            text       TEXT NOT NULL,
            vector     BYTEA NOT NULL,
            used_at_ms BIGINT NOT NULL,
            PRIMARY KEY (encoder, text)
        )",
        "CREATE INDEX query_embeddings_by_use ON query_embeddings (encoder, used_at_ms)",
        "CREATE INDEX searches_by_fallback ON searches (created_at) \
         WHERE rerank_fallback IS NOT NULL",
    ],
    // Claims that never ended are counted (a photo that kills its workers is failed), the
    // search log is pruned by age and size, and the pool's encoder is chosen.
    &[
        "ALTER TABLE feature_jobs ADD COLUMN unfinished_claims INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX searches_by_time ON searches (created_at)",
        // The pool's active encoder is a setting an operator changes, not the last one started.
        "CREATE TABLE pool_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO pool_state (key, value) \
         SELECT 'active_encoder', id FROM encoders ORDER BY last_used_at DESC LIMIT 1",
    ],
    // Uploads straight to storage are recorded when their URL is handed out, so that the
    // declared size is checked on completion and uploads never completed expire.
    &[
        "CREATE TABLE staged_uploads (
            id         TEXT PRIMARY KEY,
            bytes      BIGINT NOT NULL,
            started_at BIGINT NOT NULL
        )",
        "CREATE INDEX staged_uploads_by_age ON staged_uploads (started_at)",
    ],
    // What ranked each search (the query adapter learned from clicks) and exploration swaps.
    &["ALTER TABLE searches ADD COLUMN adapter_version INTEGER, \
         ADD COLUMN swapped_with INTEGER"],
    // Learning from clicks in the pool: adapter versions (the vision-language reranker's files
    // are in storage) and one training lease per learner.
    &[
        "CREATE TABLE query_adapters (
            encoder    TEXT NOT NULL,
            version    INTEGER NOT NULL,
            adapter    TEXT NOT NULL,
            evaluation TEXT NOT NULL,
            trained_at BIGINT NOT NULL,
            PRIMARY KEY (encoder, version)
        )",
        "CREATE TABLE reranker_adapters (
            model      TEXT NOT NULL,
            version    INTEGER NOT NULL,
            blobs      TEXT NOT NULL,
            evaluation TEXT NOT NULL,
            trained_at BIGINT NOT NULL,
            PRIMARY KEY (model, version)
        )",
        "CREATE TABLE training_leases (
            learner     TEXT PRIMARY KEY,
            holder      TEXT,
            lease_until BIGINT NOT NULL,
            started_at  BIGINT NOT NULL,
            clicks      BIGINT NOT NULL
        )",
        "CREATE INDEX search_results_clicked ON search_results (query_id) WHERE clicked",
    ],
];

/// The schema version this build migrates to.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Any number 64 bits wide, the same for every Glimpse: migrations run under this advisory lock.
const MIGRATION_LOCK: i64 = 0x6c69_6d70_7365_0001;

const PHOTO_COLUMNS: &str = "id, sha256, origin_kind, origin_key, format, bytes, width, height, \
     taken_at, dated_at, camera, latitude, longitude, album, status, last_error, added_at, \
     modified_at";
/// How many columns [`PHOTO_COLUMNS`] names.
const PHOTO_WIDTH: usize = 18;

/// A staged upload from `id, bytes, started_at`.
fn staged_from_row(row: &[Cell]) -> Result<StagedUpload, PortError> {
    let cells = Cells(row);
    Ok(StagedUpload {
        id: cells
            .text(0)?
            .parse()
            .map_err(|_| corrupt("staged upload id"))?,
        bytes: u64::try_from(cells.i64(1)?).map_err(|_| corrupt("staged upload size"))?,
        started_at: cells.i64(2)?,
    })
}

/// A statement parameter, as the drivers bind them. The SQL casts every parameter whose type
/// Postgres cannot infer, so a driver binds each variant as the type its name says.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    /// `INTEGER` or NULL.
    I32(Option<i32>),
    /// `BIGINT` or NULL.
    I64(Option<i64>),
    /// `DOUBLE PRECISION` or NULL.
    F64(Option<f64>),
    /// `TEXT` or NULL.
    Text(Option<String>),
    /// `BYTEA`.
    Bytes(Vec<u8>),
    /// `INTEGER[]`.
    I32s(Vec<i32>),
    /// `BIGINT[]`.
    I64s(Vec<i64>),
    /// `TEXT[]` (with NULLs; also how `REAL[]` travels, as decimal text).
    Texts(Vec<Option<String>>),
}

pub(crate) fn text(value: impl Into<String>) -> Param {
    Param::Text(Some(value.into()))
}

/// One value of a result row, as the drivers decode them.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// `BOOLEAN`.
    Bool(bool),
    /// `INTEGER`.
    I32(i32),
    /// `BIGINT`.
    I64(i64),
    /// `REAL`.
    F32(f32),
    /// `DOUBLE PRECISION`.
    F64(f64),
    /// `TEXT`.
    Text(String),
    /// `BYTEA`.
    Bytes(Vec<u8>),
}

/// One SQL command with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// The command, with `$1`… placeholders.
    pub sql: String,
    /// The parameters, in placeholder order.
    pub params: Vec<Param>,
}

impl Statement {
    pub(crate) fn new(sql: impl Into<String>, params: Vec<Param>) -> Self {
        Self {
            sql: sql.into(),
            params,
        }
    }
}

/// What a Postgres driver provides.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait SqlConnection: MaybeSendSync {
    /// Runs one statement and returns its rows (none for a command without `RETURNING`).
    async fn query(&self, statement: &Statement) -> Result<Vec<Vec<Cell>>, PortError>;
    /// Runs the statements in order in one transaction on one connection: all or none.
    async fn atomically(&self, statements: &[Statement]) -> Result<(), PortError>;
}

pub(crate) fn corrupt(what: &str) -> PortError {
    PortError::Internal(format!("catalog database holds an unexpected {what}"))
}

/// Typed reads of a row's cells; a cell of another type is corrupt state.
pub(crate) struct Cells<'a>(pub(crate) &'a [Cell]);

impl Cells<'_> {
    fn cell(&self, i: usize) -> Result<&Cell, PortError> {
        self.0.get(i).ok_or_else(|| corrupt("row width"))
    }

    pub(crate) fn i64(&self, i: usize) -> Result<i64, PortError> {
        self.opt_i64(i)?.ok_or_else(|| corrupt("NULL"))
    }

    pub(crate) fn opt_i64(&self, i: usize) -> Result<Option<i64>, PortError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::I64(v) => Ok(Some(*v)),
            Cell::I32(v) => Ok(Some(i64::from(*v))),
            _ => Err(corrupt("integer")),
        }
    }

    pub(crate) fn i32(&self, i: usize) -> Result<i32, PortError> {
        match self.cell(i)? {
            Cell::I32(v) => Ok(*v),
            _ => Err(corrupt("integer")),
        }
    }

    fn f64(&self, i: usize) -> Result<f64, PortError> {
        self.opt_f64(i)?.ok_or_else(|| corrupt("NULL"))
    }

    fn opt_f64(&self, i: usize) -> Result<Option<f64>, PortError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::F64(v) => Ok(Some(*v)),
            Cell::F32(v) => Ok(Some(f64::from(*v))),
            _ => Err(corrupt("number")),
        }
    }

    pub(crate) fn text(&self, i: usize) -> Result<String, PortError> {
        self.opt_text(i)?.ok_or_else(|| corrupt("NULL"))
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, PortError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Text(v) => Ok(Some(v.clone())),
            _ => Err(corrupt("text")),
        }
    }

    fn bool(&self, i: usize) -> Result<bool, PortError> {
        match self.cell(i)? {
            Cell::Bool(v) => Ok(*v),
            _ => Err(corrupt("boolean")),
        }
    }

    fn bytes(&self, i: usize) -> Result<&[u8], PortError> {
        match self.cell(i)? {
            Cell::Bytes(v) => Ok(v),
            _ => Err(corrupt("byte string")),
        }
    }

    fn photo(&self) -> Result<Photo, PortError> {
        let latitude = self.opt_f64(11)?;
        let longitude = self.opt_f64(12)?;
        Ok(Photo {
            id: PhotoId::from_i64(self.i64(0)?),
            sha256: self.text(1)?,
            origin: Origin::from_kind_and_key(&self.text(2)?, self.text(3)?)
                .ok_or_else(|| corrupt("origin kind"))?,
            format: ImageFormat::parse(&self.text(4)?).ok_or_else(|| corrupt("format"))?,
            bytes: self.i64(5)? as u64,
            width: self.i32(6)? as u32,
            height: self.i32(7)? as u32,
            taken_at: self.opt_i64(8)?,
            dated_at: self.i64(9)?,
            camera: self.opt_text(10)?,
            location: latitude
                .zip(longitude)
                .map(|(latitude, longitude)| GeoPoint {
                    latitude,
                    longitude,
                }),
            album: self.opt_text(13)?,
            status: PhotoStatus::parse(&self.text(14)?).ok_or_else(|| corrupt("status"))?,
            last_error: self.opt_text(15)?,
            added_at: self.i64(16)?,
            modified_at: self.opt_i64(17)?,
        })
    }
}

fn photos(rows: &[Vec<Cell>]) -> Result<Vec<Photo>, PortError> {
    rows.iter().map(|row| Cells(row).photo()).collect()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn seconds_now() -> i64 {
    milliseconds_now() / 1000
}

fn milliseconds_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The little-endian bytes of a vector (how the embedding cache stores it).
fn vector_bytes(vector: &Embedding) -> Vec<u8> {
    vector
        .as_slice()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn vector_from_bytes(bytes: &[u8]) -> Result<Embedding, PortError> {
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Embedding::normalized(values).map_err(|_| corrupt("cached embedding"))
}

/// How many query embeddings the cache keeps by default: 20 000 (about 40 MB at 512
/// dimensions), far more distinct queries than one library sees in months.
pub const QUERY_CACHE_CAPACITY: usize = 20_000;

/// The catalog over a Postgres driver.
pub struct SqlCatalog<C> {
    connection: C,
    query_cache_capacity: usize,
}

impl<C: SqlConnection> SqlCatalog<C> {
    /// The catalog over `connection` (call [`migrate`](Self::migrate) or
    /// [`check_schema`](Self::check_schema) before use), keeping [`QUERY_CACHE_CAPACITY`] query
    /// embeddings.
    pub fn new(connection: C) -> Self {
        Self {
            connection,
            query_cache_capacity: QUERY_CACHE_CAPACITY,
        }
    }

    /// Keeps at most `capacity` query embeddings, the most recently used (stored or read).
    pub fn with_query_cache_capacity(mut self, capacity: usize) -> Self {
        self.query_cache_capacity = capacity;
        self
    }

    /// The driver.
    pub fn connection(&self) -> &C {
        &self.connection
    }

    /// The schema version the database is at (0 for an empty database).
    pub async fn schema_version(&self) -> Result<usize, PortError> {
        let exists = self
            .connection
            .query(&Statement::new(
                "SELECT to_regclass('glimpse_migrations') IS NOT NULL",
                Vec::new(),
            ))
            .await?;
        if !exists
            .first()
            .map(|row| Cells(row).bool(0))
            .transpose()?
            .unwrap_or(false)
        {
            return Ok(0);
        }
        let rows = self
            .connection
            .query(&Statement::new(
                "SELECT COALESCE(MAX(version), 0) FROM glimpse_migrations",
                Vec::new(),
            ))
            .await?;
        let row = rows.first().ok_or_else(|| corrupt("schema version"))?;
        Ok(Cells(row).i32(0)? as usize)
    }

    /// Applies the migrations not yet recorded, each in one transaction under an advisory lock,
    /// so processes starting together apply each exactly once. A database newer than this build
    /// is refused.
    pub async fn migrate(&self) -> Result<(), PortError> {
        let lock = || {
            Statement::new(
                "SELECT 1 FROM pg_advisory_xact_lock($1::BIGINT)",
                vec![Param::I64(Some(MIGRATION_LOCK))],
            )
        };
        self.connection
            .atomically(&[
                lock(),
                Statement::new(
                    "CREATE TABLE IF NOT EXISTS glimpse_migrations (
                         version    INTEGER PRIMARY KEY,
                         applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                     )",
                    Vec::new(),
                ),
            ])
            .await?;
        let applied = self.check_version().await?;
        for (number, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
            // The version row goes first: a process that waited for the lock while another
            // applied this migration fails on it and changes nothing.
            let mut statements = vec![
                lock(),
                Statement::new(
                    "INSERT INTO glimpse_migrations (version) VALUES ($1)",
                    vec![Param::I32(Some(number as i32 + 1))],
                ),
            ];
            statements.extend(migration.iter().map(|sql| Statement::new(*sql, Vec::new())));
            if let Err(error) = self.connection.atomically(&statements).await
                && self.schema_version().await? <= number
            {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Refuses a database at another schema version than this build's (after an upgrade of
    /// one side only); [`migrate`](Self::migrate) brings an older one up to date.
    pub async fn check_schema(&self) -> Result<(), PortError> {
        let version = self.check_version().await?;
        if version < SCHEMA_VERSION {
            return Err(PortError::Unavailable(format!(
                "the catalog database is at schema version {version}, older than this Glimpse \
                 ({SCHEMA_VERSION}): start a worker of this version to migrate it"
            )));
        }
        Ok(())
    }

    async fn check_version(&self) -> Result<usize, PortError> {
        let version = self.schema_version().await?;
        if version > SCHEMA_VERSION {
            return Err(PortError::Internal(format!(
                "the catalog database is at schema version {version}, newer than this Glimpse \
                 ({SCHEMA_VERSION}): upgrade Glimpse"
            )));
        }
        Ok(version)
    }

    /// The pool's active encoder with its dimension: the first one registered, or the one an
    /// operator activated since (see [`Catalog::activate_encoder`]).
    pub async fn current_encoder(&self) -> Result<Option<(EncoderId, usize)>, PortError> {
        self.encoder_rows(
            "SELECT e.id, e.dimension, true FROM pool_state s JOIN encoders e ON e.id = s.value \
             WHERE s.key = 'active_encoder'",
            Vec::new(),
        )
        .await
        .map(|mut rows| rows.pop().map(|(id, dimension, _)| (id, dimension)))
    }

    /// Every encoder that ever registered, with its dimension and whether it is the active one,
    /// most recently used first.
    pub async fn encoders(&self) -> Result<Vec<(EncoderId, usize, bool)>, PortError> {
        self.encoder_rows(
            "SELECT e.id, e.dimension, s.value IS NOT NULL FROM encoders e \
             LEFT JOIN pool_state s ON s.key = 'active_encoder' AND s.value = e.id \
             ORDER BY e.last_used_at DESC",
            Vec::new(),
        )
        .await
    }

    async fn encoder_rows(
        &self,
        sql: &str,
        params: Vec<Param>,
    ) -> Result<Vec<(EncoderId, usize, bool)>, PortError> {
        let rows = self.connection.query(&Statement::new(sql, params)).await?;
        rows.iter()
            .map(|row| {
                let cells = Cells(row);
                let id = cells.text(0)?.parse().map_err(|_| corrupt("encoder id"))?;
                Ok((id, cells.i32(1)? as usize, cells.bool(2)?))
            })
            .collect()
    }

    async fn photo_rows(&self, statement: Statement) -> Result<Vec<Photo>, PortError> {
        photos(&self.connection.query(&statement).await?)
    }

    async fn count(&self, statement: Statement) -> Result<i64, PortError> {
        let rows = self.connection.query(&statement).await?;
        Cells(rows.first().ok_or_else(|| corrupt("count"))?).i64(0)
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl<C: SqlConnection> Catalog for SqlCatalog<C> {
    async fn register_encoder(
        &self,
        encoder: &EncoderId,
        dimension: usize,
    ) -> Result<(), PortError> {
        // The first encoder ever registered becomes the active one; later ones wait to be
        // activated by an operator (concurrent first registrations: one wins).
        self.connection
            .query(&Statement::new(
                "WITH registered AS (INSERT INTO encoders (id, dimension) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE SET last_used_at = now() RETURNING id) \
                 INSERT INTO pool_state (key, value) SELECT 'active_encoder', id FROM registered \
                 ON CONFLICT (key) DO NOTHING",
                vec![
                    text(encoder.to_string()),
                    Param::I32(Some(dimension as i32)),
                ],
            ))
            .await
            .map(drop)
    }

    async fn active_encoder(&self) -> Result<Option<EncoderId>, PortError> {
        Ok(self.current_encoder().await?.map(|(id, _)| id))
    }

    async fn activate_encoder(&self, encoder: &EncoderId) -> Result<bool, PortError> {
        let activated = self
            .count(Statement::new(
                "WITH active AS (INSERT INTO pool_state (key, value) \
                     SELECT 'active_encoder', id FROM encoders WHERE id = $1::TEXT \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value RETURNING 1) \
                 SELECT COUNT(*) FROM active",
                vec![text(encoder.to_string())],
            ))
            .await?;
        Ok(activated == 1)
    }

    async fn add_photo(&self, photo: &Photo) -> Result<Added, PortError> {
        let (kind, key) = photo.origin.kind_and_key();
        // The photo and its job in one statement (one transaction); `created` says which row
        // the id comes from.
        let rows = self
            .connection
            .query(&Statement::new(
                format!(
                    "WITH inserted AS ( \
                         INSERT INTO photos ({PHOTO_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, \
                         $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
                         ON CONFLICT (sha256) DO NOTHING RETURNING id), \
                     job AS ( \
                         INSERT INTO feature_jobs (photo_id, state) \
                         SELECT id, 'queued' FROM inserted WHERE $15::TEXT = 'pending') \
                     SELECT id, true FROM inserted \
                     UNION ALL \
                     SELECT id, false FROM photos WHERE sha256 = $2::TEXT"
                ),
                vec![
                    Param::I64(Some(photo.id.as_i64())),
                    text(&photo.sha256),
                    text(kind),
                    text(key),
                    text(photo.format.as_str()),
                    Param::I64(Some(photo.bytes as i64)),
                    Param::I32(Some(photo.width as i32)),
                    Param::I32(Some(photo.height as i32)),
                    Param::I64(photo.taken_at),
                    Param::I64(Some(photo.dated_at)),
                    Param::Text(photo.camera.clone()),
                    Param::F64(photo.location.map(|l| l.latitude)),
                    Param::F64(photo.location.map(|l| l.longitude)),
                    Param::Text(photo.album.clone()),
                    text(photo.status.as_str()),
                    Param::Text(photo.last_error.clone()),
                    Param::I64(Some(photo.added_at)),
                    Param::I64(photo.modified_at),
                ],
            ))
            .await?;
        // The statement's snapshot may miss a row another transaction committed meanwhile.
        let rows = if rows.is_empty() {
            self.connection
                .query(&Statement::new(
                    "SELECT id, false FROM photos WHERE sha256 = $1",
                    vec![text(&photo.sha256)],
                ))
                .await?
        } else {
            rows
        };
        let row = rows.first().ok_or_else(|| corrupt("insert result"))?;
        let cells = Cells(row);
        Ok(Added {
            id: PhotoId::from_i64(cells.i64(0)?),
            created: cells.bool(1)?,
        })
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, PortError> {
        Ok(self
            .photo_rows(Statement::new(
                format!("SELECT {PHOTO_COLUMNS} FROM photos WHERE id = $1"),
                vec![Param::I64(Some(id.as_i64()))],
            ))
            .await?
            .pop())
    }

    async fn photos(&self, ids: &[PhotoId]) -> Result<Vec<Photo>, PortError> {
        self.photo_rows(Statement::new(
            format!("SELECT {PHOTO_COLUMNS} FROM photos WHERE id = ANY($1::BIGINT[])"),
            vec![Param::I64s(ids.iter().map(|id| id.as_i64()).collect())],
        ))
        .await
    }

    async fn browse(
        &self,
        filter: &SearchFilter,
        after: Option<BrowseCursor>,
        limit: usize,
    ) -> Result<Vec<Photo>, PortError> {
        // One statement for every combination: absent conditions are NULL parameters.
        let (after_date, after_id) = after.map(|c| (c.dated_at, c.id.as_i64())).unzip();
        self.photo_rows(Statement::new(
            format!(
                "SELECT {PHOTO_COLUMNS} FROM photos \
                 WHERE ($1::TEXT IS NULL OR lower(album) = $1::TEXT) \
                   AND ($2::TEXT IS NULL OR strpos(lower(camera), $2::TEXT) > 0) \
                   AND ($3::BIGINT IS NULL OR dated_at >= $3::BIGINT) \
                   AND ($4::BIGINT IS NULL OR dated_at < $4::BIGINT) \
                   AND NOT (id = ANY($5::BIGINT[])) \
                   AND ($6::BIGINT IS NULL OR (dated_at, id) < ($6::BIGINT, $7::BIGINT)) \
                 ORDER BY dated_at DESC, id DESC LIMIT $8::BIGINT"
            ),
            vec![
                Param::Text(filter.album.as_deref().map(str::to_lowercase)),
                Param::Text(filter.camera.as_deref().map(str::to_lowercase)),
                Param::I64(filter.from),
                Param::I64(filter.until),
                Param::I64s(filter.exclude.iter().map(|id| id.as_i64()).collect()),
                Param::I64(after_date),
                Param::I64(after_id),
                Param::I64(Some(limit as i64)),
            ],
        ))
        .await
    }

    async fn albums(&self) -> Result<Vec<AlbumSummary>, PortError> {
        let rows = self
            .connection
            .query(&Statement::new(
                "SELECT min(album), COUNT(*) FROM photos WHERE album IS NOT NULL \
                 GROUP BY lower(album) ORDER BY lower(album)",
                Vec::new(),
            ))
            .await?;
        rows.iter()
            .map(|row| {
                let cells = Cells(row);
                Ok(AlbumSummary {
                    name: cells.text(0)?,
                    photos: cells.i64(1)? as u64,
                })
            })
            .collect()
    }

    async fn remove_photo(&self, id: PhotoId) -> Result<Option<Photo>, PortError> {
        Ok(self
            .photo_rows(Statement::new(
                format!("DELETE FROM photos WHERE id = $1 RETURNING {PHOTO_COLUMNS}"),
                vec![Param::I64(Some(id.as_i64()))],
            ))
            .await?
            .pop())
    }

    async fn claim_jobs(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, PortError> {
        let photo_columns: Vec<String> = PHOTO_COLUMNS
            .split(", ")
            .map(|c| format!("p.{c}"))
            .collect();
        // Jobs whose every claim ended come first; a suspect (a claim that never ended: its
        // lease ran out, or it was counted so before) is claimed alone when none is left.
        let rows = self
            .connection
            .query(&Statement::new(
                format!(
                    "WITH clean AS ( \
                         SELECT id FROM feature_jobs \
                         WHERE state = 'queued' AND run_after <= now() \
                           AND unfinished_claims = 0 \
                         ORDER BY id LIMIT $1::BIGINT FOR UPDATE SKIP LOCKED), \
                     suspect AS ( \
                         SELECT id FROM feature_jobs \
                         WHERE ((state = 'queued' AND run_after <= now() \
                                 AND unfinished_claims > 0) \
                                OR (state = 'leased' AND lease_until <= now())) \
                           AND $1::BIGINT > 0 AND NOT EXISTS (SELECT 1 FROM clean) \
                         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED), \
                     claimable AS (SELECT id FROM clean UNION ALL SELECT id FROM suspect), \
                     claimed AS ( \
                         UPDATE feature_jobs AS j SET state = 'leased', \
                             lease_until = now() + $2::DOUBLE PRECISION * interval '1 millisecond', \
                             attempts = j.attempts + 1, updated_at = now(), \
                             unfinished_claims = j.unfinished_claims \
                                 + CASE WHEN j.state = 'leased' THEN 1 ELSE 0 END \
                         FROM claimable WHERE j.id = claimable.id \
                         RETURNING j.id AS job_id, j.photo_id, j.attempts - 1 AS previous, \
                             j.unfinished_claims AS unfinished) \
                     SELECT {}, claimed.job_id, claimed.previous, claimed.unfinished \
                     FROM claimed JOIN photos p ON p.id = claimed.photo_id \
                     ORDER BY claimed.job_id",
                    photo_columns.join(", ")
                ),
                vec![
                    Param::I64(Some(limit as i64)),
                    Param::F64(Some(millis(lease))),
                ],
            ))
            .await?;
        rows.iter()
            .map(|row| {
                // The job's three columns follow the photo's.
                let cells = Cells(row);
                Ok(ClaimedJob {
                    job_id: cells.i64(PHOTO_WIDTH)?,
                    photo: cells.photo()?,
                    previous_attempts: cells.i32(PHOTO_WIDTH + 1)? as u32,
                    unfinished_claims: cells.i32(PHOTO_WIDTH + 2)? as u32,
                })
            })
            .collect()
    }

    async fn finish_job(&self, claim: JobClaim, outcome: &JobOutcome) -> Result<bool, PortError> {
        let (state, delay, error, photo_status) = match outcome {
            JobOutcome::Done => ("done", 0.0, None, Some(PhotoStatus::Indexed)),
            JobOutcome::Retry { error, after } => ("queued", millis(*after), Some(error), None),
            JobOutcome::Failed { error } => ("failed", 0.0, Some(error), Some(PhotoStatus::Failed)),
        };
        let finished = self
            .count(Statement::new(
                "WITH finished AS ( \
                     UPDATE feature_jobs SET state = $2::TEXT, \
                         run_after = now() + $3::DOUBLE PRECISION * interval '1 millisecond', \
                         lease_until = NULL, error = $4::TEXT, updated_at = now() \
                     WHERE id = $1::BIGINT AND state = 'leased' AND attempts = $6::INTEGER \
                     RETURNING photo_id), \
                 photo AS ( \
                     UPDATE photos SET status = COALESCE($5::TEXT, status), last_error = $4::TEXT \
                     WHERE id = (SELECT photo_id FROM finished) RETURNING id) \
                 SELECT COUNT(*) FROM finished",
                vec![
                    Param::I64(Some(claim.job_id)),
                    text(state),
                    Param::F64(Some(delay)),
                    Param::Text(error.cloned()),
                    Param::Text(photo_status.map(|s| s.as_str().to_owned())),
                    Param::I32(Some(claim.attempt as i32)),
                ],
            ))
            .await?;
        Ok(finished == 1)
    }

    async fn requeue(&self, which: &Requeue) -> Result<u64, PortError> {
        let (selection, params) = match which {
            Requeue::Everything => ("SELECT id FROM photos", Vec::new()),
            Requeue::Failed => ("SELECT id FROM photos WHERE status = 'failed'", Vec::new()),
            Requeue::Photos(ids) => (
                "SELECT id FROM photos WHERE id = ANY($1::BIGINT[])",
                vec![Param::I64s(ids.iter().map(|id| id.as_i64()).collect())],
            ),
        };
        // One statement: the photos' old jobs go and each gets a new one, atomically.
        let photos = self
            .count(Statement::new(
                format!(
                    "WITH chosen AS ({selection} FOR UPDATE), \
                     old AS (DELETE FROM feature_jobs WHERE photo_id IN (SELECT id FROM chosen)), \
                     reset AS (UPDATE photos SET status = 'pending', last_error = NULL \
                               WHERE id IN (SELECT id FROM chosen) RETURNING id), \
                     queued AS (INSERT INTO feature_jobs (photo_id, state) \
                                SELECT id, 'queued' FROM reset) \
                     SELECT COUNT(*) FROM reset"
                ),
                params,
            ))
            .await?;
        Ok(photos as u64)
    }

    async fn photo_states(
        &self,
        after: Option<PhotoId>,
        limit: usize,
    ) -> Result<Vec<(PhotoId, PhotoStatus)>, PortError> {
        let rows = self
            .connection
            .query(&Statement::new(
                "SELECT id, status FROM photos WHERE $1::BIGINT IS NULL OR id > $1::BIGINT \
                 ORDER BY id LIMIT $2::BIGINT",
                vec![
                    Param::I64(after.map(PhotoId::as_i64)),
                    Param::I64(Some(limit as i64)),
                ],
            ))
            .await?;
        rows.iter()
            .map(|row| {
                let cells = Cells(row);
                let status = cells.text(1)?;
                Ok((
                    PhotoId::from_i64(cells.i64(0)?),
                    PhotoStatus::parse(&status).ok_or_else(|| corrupt("photo status"))?,
                ))
            })
            .collect()
    }

    async fn counts(&self) -> Result<CatalogCounts, PortError> {
        let rows = self
            .connection
            .query(&Statement::new(
                "SELECT COUNT(*), \
                        COUNT(*) FILTER (WHERE status = 'pending'), \
                        COUNT(*) FILTER (WHERE status = 'indexed'), \
                        COUNT(*) FILTER (WHERE status = 'failed') FROM photos",
                Vec::new(),
            ))
            .await?;
        let cells = Cells(rows.first().ok_or_else(|| corrupt("count"))?);
        Ok(CatalogCounts {
            photos: cells.i64(0)? as u64,
            pending: cells.i64(1)? as u64,
            indexed: cells.i64(2)? as u64,
            failed: cells.i64(3)? as u64,
        })
    }

    async fn log_search(&self, log: &SearchLog) -> Result<(), PortError> {
        let search = &log.search;
        let [parse, embed, retrieve, rerank, log_ms, total] = search.timings.values();
        // Scores travel as decimal text: Rust prints the shortest text that reads back as the
        // same f32, and Postgres reads it so.
        let reals = |values: Vec<Option<f32>>| {
            Param::Texts(
                values
                    .into_iter()
                    .map(|v| v.map(|v| v.to_string()))
                    .collect(),
            )
        };
        self.connection
            .query(&Statement::new(
                "WITH search AS ( \
                     INSERT INTO searches (id, text, parsed, encoder, rerank_fallback, \
                         created_at, parse_ms, embed_ms, retrieve_ms, rerank_ms, log_ms, total_ms, \
                         adapter_version, swapped_with) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $17, $18) \
                     RETURNING id) \
                 INSERT INTO search_results (query_id, rank, photo_id, score, rerank_probability) \
                 SELECT search.id, r.* FROM search, \
                     unnest($13::INTEGER[], $14::BIGINT[], $15::TEXT[]::REAL[], \
                            $16::TEXT[]::REAL[]) AS r",
                vec![
                    text(search.query_id.to_string()),
                    text(&search.text),
                    text(&search.parsed),
                    text(search.encoder.to_string()),
                    Param::Text(search.rerank_fallback.clone()),
                    Param::I64(Some(seconds_now())),
                    Param::F64(Some(parse)),
                    Param::F64(Some(embed)),
                    Param::F64(Some(retrieve)),
                    Param::F64(Some(rerank)),
                    Param::F64(Some(log_ms)),
                    Param::F64(Some(total)),
                    Param::I32s(log.results.iter().map(|r| r.rank as i32).collect()),
                    Param::I64s(log.results.iter().map(|r| r.photo_id.as_i64()).collect()),
                    reals(log.results.iter().map(|r| Some(r.score)).collect()),
                    reals(log.results.iter().map(|r| r.rerank_probability).collect()),
                    Param::I32(search.adapter_version.map(|v| v as i32)),
                    Param::I32(search.swapped_with.map(|v| v as i32)),
                ],
            ))
            .await
            .map(drop)
    }

    async fn search_log(&self, query_id: &QueryId) -> Result<Option<SearchLogEntry>, PortError> {
        let key = query_id.to_string();
        let searches = self
            .connection
            .query(&Statement::new(
                "SELECT text, parsed, encoder, rerank_fallback, created_at, parse_ms, embed_ms, \
                 retrieve_ms, rerank_ms, log_ms, total_ms, adapter_version, swapped_with \
                 FROM searches WHERE id = $1",
                vec![text(&key)],
            ))
            .await?;
        let Some(row) = searches.first() else {
            return Ok(None);
        };
        let search = Cells(row);
        let mut timings = [0.0; 6];
        for (i, value) in timings.iter_mut().enumerate() {
            *value = search.f64(5 + i)?;
        }
        let results = self
            .connection
            .query(&Statement::new(
                "SELECT rank, photo_id, score::DOUBLE PRECISION, \
                     rerank_probability::DOUBLE PRECISION, clicked, clicked_at \
                 FROM search_results WHERE query_id = $1 ORDER BY rank",
                vec![text(&key)],
            ))
            .await?
            .iter()
            .map(|row| {
                let cells = Cells(row);
                Ok(LoggedResultWithClick {
                    result: LoggedResult {
                        rank: cells.i32(0)? as u32,
                        photo_id: PhotoId::from_i64(cells.i64(1)?),
                        score: cells.f64(2)? as f32,
                        rerank_probability: cells.opt_f64(3)?.map(|p| p as f32),
                    },
                    clicked: cells.bool(4)?,
                    clicked_at: cells.opt_i64(5)?,
                })
            })
            .collect::<Result<Vec<_>, PortError>>()?;
        Ok(Some(SearchLogEntry {
            search: LoggedSearch {
                query_id: *query_id,
                text: search.text(0)?,
                parsed: search.text(1)?,
                encoder: search.text(2)?.parse().map_err(|_| corrupt("encoder id"))?,
                timings: StageTimings::from_values(timings),
                rerank_fallback: search.opt_text(3)?,
                adapter_version: search.opt_i64(11)?.map(|v| v as u32),
                swapped_with: search.opt_i64(12)?.map(|v| v as u32),
            },
            created_at: search.i64(4)?,
            results,
        }))
    }

    async fn prune_search_log(&self, before: i64, keep: u64) -> Result<u64, PortError> {
        // Two statements: a search deleted by the first is simply not there for the second.
        let old = self
            .count(Statement::new(
                "WITH gone AS (DELETE FROM searches s WHERE created_at < $1::BIGINT AND NOT EXISTS \
                 (SELECT 1 FROM search_results r WHERE r.query_id = s.id AND r.clicked) \
                 RETURNING 1) SELECT COUNT(*) FROM gone",
                vec![Param::I64(Some(before))],
            ))
            .await?;
        let over = self
            .count(Statement::new(
                "WITH gone AS (DELETE FROM searches WHERE id IN (SELECT id FROM searches \
                 ORDER BY created_at DESC, id OFFSET $1::BIGINT) RETURNING 1) \
                 SELECT COUNT(*) FROM gone",
                vec![Param::I64(Some(i64::try_from(keep).unwrap_or(i64::MAX)))],
            ))
            .await?;
        Ok((old + over) as u64)
    }

    async fn stage_upload(&self, upload: &StagedUpload) -> Result<(), PortError> {
        self.connection
            .query(&Statement::new(
                "INSERT INTO staged_uploads (id, bytes, started_at) \
                 VALUES ($1::TEXT, $2::BIGINT, $3::BIGINT) ON CONFLICT (id) DO UPDATE \
                 SET bytes = excluded.bytes, started_at = excluded.started_at",
                vec![
                    text(upload.id.to_string()),
                    Param::I64(Some(i64::try_from(upload.bytes).unwrap_or(i64::MAX))),
                    Param::I64(Some(upload.started_at)),
                ],
            ))
            .await?;
        Ok(())
    }

    async fn staged_upload(&self, id: &UploadId) -> Result<Option<StagedUpload>, PortError> {
        let rows = self
            .connection
            .query(&Statement::new(
                "SELECT id, bytes, started_at FROM staged_uploads WHERE id = $1::TEXT",
                vec![text(id.to_string())],
            ))
            .await?;
        rows.first().map(|row| staged_from_row(row)).transpose()
    }

    async fn end_staged_upload(&self, id: &UploadId) -> Result<(), PortError> {
        self.connection
            .query(&Statement::new(
                "DELETE FROM staged_uploads WHERE id = $1::TEXT",
                vec![text(id.to_string())],
            ))
            .await?;
        Ok(())
    }

    async fn stale_uploads(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<StagedUpload>, PortError> {
        let rows = self
            .connection
            .query(&Statement::new(
                "SELECT id, bytes, started_at FROM staged_uploads WHERE started_at < $1::BIGINT \
                 ORDER BY started_at, id LIMIT $2::BIGINT",
                vec![
                    Param::I64(Some(before)),
                    Param::I64(Some(i64::try_from(limit).unwrap_or(i64::MAX))),
                ],
            ))
            .await?;
        rows.iter().map(|row| staged_from_row(row)).collect()
    }

    async fn record_click(
        &self,
        query_id: &QueryId,
        rank: u32,
    ) -> Result<Option<ClickedResult>, PortError> {
        let rows = self
            .connection
            .query(&Statement::new(
                "UPDATE search_results SET clicked = true, \
                 clicked_at = COALESCE(clicked_at, $3::BIGINT) \
                 WHERE query_id = $1::TEXT AND rank = $2::INTEGER RETURNING photo_id",
                vec![
                    text(query_id.to_string()),
                    Param::I32(Some(rank as i32)),
                    Param::I64(Some(seconds_now())),
                ],
            ))
            .await?;
        rows.first()
            .map(|row| {
                Ok(ClickedResult {
                    photo_id: PhotoId::from_i64(Cells(row).i64(0)?),
                    rank,
                })
            })
            .transpose()
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl<C: SqlConnection> QueryEmbeddingCache for SqlCatalog<C> {
    async fn cached_embeddings(
        &self,
        encoder: &EncoderId,
        texts: &[String],
    ) -> Result<Vec<Option<Embedding>>, PortError> {
        // Reading an entry is a use: it moves to the back of the eviction order.
        let rows = self
            .connection
            .query(&Statement::new(
                "UPDATE query_embeddings SET used_at_ms = $3::BIGINT \
                 WHERE encoder = $1::TEXT AND text = ANY($2::TEXT[]) \
                 RETURNING text, vector",
                vec![
                    text(encoder.to_string()),
                    Param::Texts(texts.iter().cloned().map(Some).collect()),
                    Param::I64(Some(milliseconds_now())),
                ],
            ))
            .await?;
        let mut found = vec![None; texts.len()];
        for row in &rows {
            let cells = Cells(row);
            let stored = cells.text(0)?;
            let vector = vector_from_bytes(cells.bytes(1)?)?;
            for (slot, text) in found.iter_mut().zip(texts) {
                if *text == stored {
                    *slot = Some(vector.clone());
                }
            }
        }
        Ok(found)
    }

    async fn store_embeddings(
        &self,
        encoder: &EncoderId,
        entries: &[(String, Embedding)],
    ) -> Result<(), PortError> {
        for (query, vector) in entries {
            self.connection
                .query(&Statement::new(
                    "INSERT INTO query_embeddings (encoder, text, vector, used_at_ms) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (encoder, text) DO UPDATE SET vector = excluded.vector, \
                         used_at_ms = excluded.used_at_ms",
                    vec![
                        text(encoder.to_string()),
                        text(query),
                        Param::Bytes(vector_bytes(vector)),
                        Param::I64(Some(milliseconds_now())),
                    ],
                ))
                .await?;
        }
        // Bounded: another encoder's entries can never be used again, and of this encoder's the
        // most recently used are kept.
        self.connection
            .query(&Statement::new(
                "DELETE FROM query_embeddings WHERE encoder <> $1::TEXT OR text IN ( \
                     SELECT text FROM query_embeddings WHERE encoder = $1::TEXT \
                     ORDER BY used_at_ms DESC, text OFFSET $2::BIGINT)",
                vec![
                    text(encoder.to_string()),
                    Param::I64(Some(
                        i64::try_from(self.query_cache_capacity).unwrap_or(i64::MAX),
                    )),
                ],
            ))
            .await?;
        Ok(())
    }
}
