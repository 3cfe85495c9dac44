//! The managed Catalog: Postgres through a connection pool, shared by any number of workers and
//! edge functions. Versioned migrations run at start under an advisory lock; jobs are claimed with
//! `FOR UPDATE SKIP LOCKED` and leases on the database's clock, so workers on machines with skewed
//! clocks agree on when a lease has run out.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use glimpse_core::EncoderId;
use glimpse_core::browse::{AlbumSummary, BrowseCursor};
use glimpse_core::photo::{GeoPoint, ImageFormat, Origin, Photo, PhotoId, PhotoStatus};
use glimpse_core::ports::{
    Added, Catalog, CatalogCounts, ClaimedJob, ClickedResult, JobClaim, JobOutcome, PortError,
    SearchFilter,
};
use glimpse_core::search::{
    LoggedResult, LoggedResultWithClick, LoggedSearch, QueryId, SearchLog, SearchLogEntry,
    StageTimings,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::sqlite::now_seconds;

/// The migrations, in order; `glimpse_migrations` records which are applied.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE encoders (
    id            TEXT PRIMARY KEY,
    dimension     INTEGER NOT NULL,
    first_used_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE photos (
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
);
CREATE UNIQUE INDEX photos_by_origin ON photos (origin_kind, origin_key);
CREATE INDEX photos_by_status ON photos (status);
CREATE INDEX photos_by_date ON photos (dated_at DESC, id DESC);
CREATE INDEX photos_by_album ON photos (lower(album));
CREATE TABLE feature_jobs (
    id          BIGSERIAL PRIMARY KEY,
    photo_id    BIGINT NOT NULL REFERENCES photos (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL DEFAULT 'embed',
    state       TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    run_after   TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until TIMESTAMPTZ,
    error       TEXT,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX feature_jobs_runnable ON feature_jobs (state, run_after);
CREATE INDEX feature_jobs_by_photo ON feature_jobs (photo_id);
CREATE TABLE searches (
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
);
CREATE TABLE search_results (
    query_id           TEXT NOT NULL REFERENCES searches (id) ON DELETE CASCADE,
    rank               INTEGER NOT NULL,
    photo_id           BIGINT NOT NULL,
    score              REAL NOT NULL,
    rerank_probability REAL,
    clicked            BOOLEAN NOT NULL DEFAULT false,
    clicked_at         BIGINT,
    PRIMARY KEY (query_id, rank)
);
"#];

/// The schema version this build migrates to.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Any number 64 bits wide, the same for every Glimpse: migrations run under this advisory lock.
const MIGRATION_LOCK: i64 = 0x6c69_6d70_7365_0001;

const PHOTO_COLUMNS: &str = "id, sha256, origin_kind, origin_key, format, bytes, width, height, \
     taken_at, dated_at, camera, latitude, longitude, album, status, last_error, added_at, \
     modified_at";

/// The Postgres catalog.
pub struct PostgresCatalog {
    pool: Pool,
    location: String,
}

/// Whether an error means "try again later" (the server is away, restarting or overloaded) rather
/// than a bug: the connection broke or the server said so with a class 08, 53, 57P or 40 code.
fn port_error(error: &tokio_postgres::Error) -> PortError {
    let transient = match error.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            ["08", "53", "57P", "40"]
                .iter()
                .any(|class| code.starts_with(class))
        }
    };
    if transient {
        PortError::Unavailable(format!("catalog database unavailable: {error}"))
    } else {
        PortError::Internal(format!("catalog database: {error}"))
    }
}

fn pool_error(error: deadpool_postgres::PoolError) -> PortError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => port_error(&error),
        other => PortError::Unavailable(format!("catalog database unavailable: {other}")),
    }
}

fn corrupt(what: &str) -> PortError {
    PortError::Internal(format!("catalog database holds an unknown {what}"))
}

fn photo_from_row(row: &Row) -> Result<Photo, PortError> {
    let origin_kind: String = row.get(2);
    let format: String = row.get(4);
    let status: String = row.get(14);
    let latitude: Option<f64> = row.get(11);
    let longitude: Option<f64> = row.get(12);
    Ok(Photo {
        id: PhotoId::from_i64(row.get(0)),
        sha256: row.get(1),
        origin: Origin::from_kind_and_key(&origin_kind, row.get(3))
            .ok_or_else(|| corrupt("origin kind"))?,
        format: ImageFormat::parse(&format).ok_or_else(|| corrupt("format"))?,
        bytes: row.get::<_, i64>(5) as u64,
        width: row.get::<_, i32>(6) as u32,
        height: row.get::<_, i32>(7) as u32,
        taken_at: row.get(8),
        dated_at: row.get(9),
        camera: row.get(10),
        location: latitude
            .zip(longitude)
            .map(|(latitude, longitude)| GeoPoint {
                latitude,
                longitude,
            }),
        album: row.get(13),
        status: PhotoStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        last_error: row.get(15),
        added_at: row.get(16),
        modified_at: row.get(17),
    })
}

fn photos_from_rows(rows: &[Row]) -> Result<Vec<Photo>, PortError> {
    rows.iter().map(photo_from_row).collect()
}

fn location(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl PostgresCatalog {
    /// Connects to the database at `url` (a `postgres://` URL or key=value string) with up to
    /// `connections` pooled connections, and applies pending migrations. Errors never repeat the
    /// URL (it may hold a password).
    pub async fn connect(url: &str, connections: usize) -> Result<Self, PortError> {
        let config: tokio_postgres::Config = url.parse().map_err(|_| {
            PortError::Rejected(
                "the database URL does not parse: expected postgres://user:password@host:port/db"
                    .to_owned(),
            )
        })?;
        Self::connect_config(config, connections).await
    }

    /// [`connect`](Self::connect) with a parsed configuration.
    pub async fn connect_config(
        config: tokio_postgres::Config,
        connections: usize,
    ) -> Result<Self, PortError> {
        let location = location(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(connections.max(1))
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| PortError::Internal(format!("catalog pool: {e}")))?;
        let catalog = Self { pool, location };
        catalog.migrate().await?;
        Ok(catalog)
    }

    /// Where the database is, `host:port/database`, without user or password (for logs).
    pub fn describe(&self) -> &str {
        &self.location
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PortError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Applies the migrations not yet recorded, one transaction under an advisory lock, so
    /// workers starting together apply each exactly once.
    async fn migrate(&self) -> Result<(), PortError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| port_error(&e))?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| port_error(&e))?;
        transaction
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS glimpse_migrations (
                     version    INTEGER PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )
            .await
            .map_err(|e| port_error(&e))?;
        let applied: i32 = transaction
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM glimpse_migrations",
                &[],
            )
            .await
            .map_err(|e| port_error(&e))?
            .get(0);
        if applied as usize > MIGRATIONS.len() {
            return Err(PortError::Internal(format!(
                "the catalog database is at schema version {applied}, newer than this Glimpse \
                 ({}): upgrade Glimpse",
                MIGRATIONS.len()
            )));
        }
        for (number, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            transaction
                .batch_execute(migration)
                .await
                .map_err(|e| port_error(&e))?;
            transaction
                .execute(
                    "INSERT INTO glimpse_migrations (version) VALUES ($1)",
                    &[&(number as i32 + 1)],
                )
                .await
                .map_err(|e| port_error(&e))?;
        }
        transaction.commit().await.map_err(|e| port_error(&e))
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<usize, PortError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT MAX(version) FROM glimpse_migrations", &[])
            .await
            .map_err(|e| port_error(&e))?;
        Ok(row.get::<_, Option<i32>>(0).unwrap_or(0) as usize)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PortError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| port_error(&e))?;
        client
            .query(&statement, params)
            .await
            .map_err(|e| port_error(&e))
    }
}

#[async_trait]
impl Catalog for PostgresCatalog {
    async fn register_encoder(
        &self,
        encoder: &EncoderId,
        dimension: usize,
    ) -> Result<(), PortError> {
        self.query(
            "INSERT INTO encoders (id, dimension) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET last_used_at = now()",
            &[&encoder.to_string(), &(dimension as i32)],
        )
        .await
        .map(drop)
    }

    async fn add_photo(&self, photo: &Photo) -> Result<Added, PortError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| port_error(&e))?;
        let (kind, key) = photo.origin.kind_and_key();
        let inserted = transaction
            .query_opt(
                &format!(
                    "INSERT INTO photos ({PHOTO_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
                     $18) ON CONFLICT (sha256) DO NOTHING RETURNING id"
                ),
                &[
                    &photo.id.as_i64(),
                    &photo.sha256,
                    &kind,
                    &key,
                    &photo.format.as_str(),
                    &(photo.bytes as i64),
                    &(photo.width as i32),
                    &(photo.height as i32),
                    &photo.taken_at,
                    &photo.dated_at,
                    &photo.camera,
                    &photo.location.map(|l| l.latitude),
                    &photo.location.map(|l| l.longitude),
                    &photo.album,
                    &photo.status.as_str(),
                    &photo.last_error,
                    &photo.added_at,
                    &photo.modified_at,
                ],
            )
            .await
            .map_err(|e| port_error(&e))?;
        if inserted.is_none() {
            let existing = transaction
                .query_one("SELECT id FROM photos WHERE sha256 = $1", &[&photo.sha256])
                .await
                .map_err(|e| port_error(&e))?;
            return Ok(Added {
                id: PhotoId::from_i64(existing.get(0)),
                created: false,
            });
        }
        if photo.status == PhotoStatus::Pending {
            transaction
                .execute(
                    "INSERT INTO feature_jobs (photo_id, state) VALUES ($1, 'queued')",
                    &[&photo.id.as_i64()],
                )
                .await
                .map_err(|e| port_error(&e))?;
        }
        transaction.commit().await.map_err(|e| port_error(&e))?;
        Ok(Added {
            id: photo.id,
            created: true,
        })
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, PortError> {
        let rows = self
            .query(
                &format!("SELECT {PHOTO_COLUMNS} FROM photos WHERE id = $1"),
                &[&id.as_i64()],
            )
            .await?;
        rows.first().map(photo_from_row).transpose()
    }

    async fn photos(&self, ids: &[PhotoId]) -> Result<Vec<Photo>, PortError> {
        let ids: Vec<i64> = ids.iter().map(|id| id.as_i64()).collect();
        let rows = self
            .query(
                &format!("SELECT {PHOTO_COLUMNS} FROM photos WHERE id = ANY($1)"),
                &[&ids],
            )
            .await?;
        photos_from_rows(&rows)
    }

    async fn browse(
        &self,
        filter: &SearchFilter,
        after: Option<BrowseCursor>,
        limit: usize,
    ) -> Result<Vec<Photo>, PortError> {
        // One statement for every combination: absent conditions are NULL parameters.
        let album = filter.album.as_deref().map(str::to_lowercase);
        let camera = filter.camera.as_deref().map(str::to_lowercase);
        let exclude: Vec<i64> = filter.exclude.iter().map(|id| id.as_i64()).collect();
        let (after_date, after_id) = after.map(|c| (c.dated_at, c.id.as_i64())).unzip();
        let rows = self
            .query(
                &format!(
                    "SELECT {PHOTO_COLUMNS} FROM photos \
                     WHERE ($1::TEXT IS NULL OR lower(album) = $1) \
                       AND ($2::TEXT IS NULL OR strpos(lower(camera), $2) > 0) \
                       AND ($3::BIGINT IS NULL OR dated_at >= $3) \
                       AND ($4::BIGINT IS NULL OR dated_at < $4) \
                       AND NOT (id = ANY($5)) \
                       AND ($6::BIGINT IS NULL OR (dated_at, id) < ($6, $7::BIGINT)) \
                     ORDER BY dated_at DESC, id DESC LIMIT $8"
                ),
                &[
                    &album,
                    &camera,
                    &filter.from,
                    &filter.until,
                    &exclude,
                    &after_date,
                    &after_id,
                    &(limit as i64),
                ],
            )
            .await?;
        photos_from_rows(&rows)
    }

    async fn albums(&self) -> Result<Vec<AlbumSummary>, PortError> {
        let rows = self
            .query(
                "SELECT min(album), COUNT(*) FROM photos WHERE album IS NOT NULL \
                 GROUP BY lower(album) ORDER BY lower(album)",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| AlbumSummary {
                name: row.get(0),
                photos: row.get::<_, i64>(1) as u64,
            })
            .collect())
    }

    async fn remove_photo(&self, id: PhotoId) -> Result<Option<Photo>, PortError> {
        let rows = self
            .query(
                &format!("DELETE FROM photos WHERE id = $1 RETURNING {PHOTO_COLUMNS}"),
                &[&id.as_i64()],
            )
            .await?;
        rows.first().map(photo_from_row).transpose()
    }

    async fn claim_jobs(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, PortError> {
        let rows = self
            .query(
                &format!(
                    "WITH claimable AS ( \
                         SELECT id FROM feature_jobs \
                         WHERE (state = 'queued' AND run_after <= now()) \
                            OR (state = 'leased' AND lease_until <= now()) \
                         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED), \
                     claimed AS ( \
                         UPDATE feature_jobs AS j SET state = 'leased', \
                             lease_until = now() + $2 * interval '1 millisecond', \
                             attempts = j.attempts + 1, updated_at = now() \
                         FROM claimable WHERE j.id = claimable.id \
                         RETURNING j.id AS job_id, j.photo_id, j.attempts - 1 AS previous) \
                     SELECT {}, claimed.job_id, claimed.previous \
                     FROM claimed JOIN photos p ON p.id = claimed.photo_id \
                     ORDER BY claimed.job_id",
                    PHOTO_COLUMNS
                        .split(", ")
                        .map(|c| format!("p.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                &[&(limit as i64), &millis(lease)],
            )
            .await?;
        rows.iter()
            .map(|row| {
                // The job's two columns follow the photo's.
                let columns = row.len();
                Ok(ClaimedJob {
                    job_id: row.get(columns - 2),
                    photo: photo_from_row(row)?,
                    previous_attempts: row.get::<_, i32>(columns - 1) as u32,
                })
            })
            .collect()
    }

    async fn finish_job(&self, claim: JobClaim, outcome: &JobOutcome) -> Result<bool, PortError> {
        let (state, delay, error, photo_status) = match outcome {
            JobOutcome::Done => ("done", 0.0, None, Some(PhotoStatus::Indexed)),
            JobOutcome::Retry { error, after } => {
                ("queued", millis(*after), Some(error.as_str()), None)
            }
            JobOutcome::Failed { error } => (
                "failed",
                0.0,
                Some(error.as_str()),
                Some(PhotoStatus::Failed),
            ),
        };
        let rows = self
            .query(
                "WITH finished AS ( \
                     UPDATE feature_jobs SET state = $2, \
                         run_after = now() + $3 * interval '1 millisecond', lease_until = NULL, \
                         error = $4, updated_at = now() \
                     WHERE id = $1 AND state = 'leased' AND attempts = $6 RETURNING photo_id), \
                 photo AS ( \
                     UPDATE photos SET status = COALESCE($5, status), last_error = $4 \
                     WHERE id = (SELECT photo_id FROM finished) RETURNING id) \
                 SELECT COUNT(*) FROM finished",
                &[
                    &claim.job_id,
                    &state,
                    &delay,
                    &error,
                    &photo_status.map(PhotoStatus::as_str),
                    &(claim.attempt as i32),
                ],
            )
            .await?;
        Ok(rows.first().is_some_and(|row| row.get::<_, i64>(0) == 1))
    }

    async fn requeue_all(&self) -> Result<u64, PortError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| port_error(&e))?;
        transaction
            .execute("DELETE FROM feature_jobs", &[])
            .await
            .map_err(|e| port_error(&e))?;
        let photos = transaction
            .execute(
                "UPDATE photos SET status = 'pending', last_error = NULL",
                &[],
            )
            .await
            .map_err(|e| port_error(&e))?;
        transaction
            .execute(
                "INSERT INTO feature_jobs (photo_id, state) SELECT id, 'queued' FROM photos",
                &[],
            )
            .await
            .map_err(|e| port_error(&e))?;
        transaction.commit().await.map_err(|e| port_error(&e))?;
        Ok(photos)
    }

    async fn counts(&self) -> Result<CatalogCounts, PortError> {
        let rows = self
            .query(
                "SELECT COUNT(*), \
                        COUNT(*) FILTER (WHERE status = 'pending'), \
                        COUNT(*) FILTER (WHERE status = 'indexed'), \
                        COUNT(*) FILTER (WHERE status = 'failed') FROM photos",
                &[],
            )
            .await?;
        let row = rows.first().ok_or_else(|| corrupt("count"))?;
        Ok(CatalogCounts {
            photos: row.get::<_, i64>(0) as u64,
            pending: row.get::<_, i64>(1) as u64,
            indexed: row.get::<_, i64>(2) as u64,
            failed: row.get::<_, i64>(3) as u64,
        })
    }

    async fn log_search(&self, log: &SearchLog) -> Result<(), PortError> {
        let search = &log.search;
        let query_id = search.query_id.to_string();
        let [parse, embed, retrieve, rerank, log_ms, total] = search.timings.values();
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| port_error(&e))?;
        transaction
            .execute(
                "INSERT INTO searches (id, text, parsed, encoder, rerank_fallback, created_at, \
                 parse_ms, embed_ms, retrieve_ms, rerank_ms, log_ms, total_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &query_id,
                    &search.text,
                    &search.parsed,
                    &search.encoder.to_string(),
                    &search.rerank_fallback,
                    &now_seconds(),
                    &parse,
                    &embed,
                    &retrieve,
                    &rerank,
                    &log_ms,
                    &total,
                ],
            )
            .await
            .map_err(|e| port_error(&e))?;
        let ranks: Vec<i32> = log.results.iter().map(|r| r.rank as i32).collect();
        let photos: Vec<i64> = log.results.iter().map(|r| r.photo_id.as_i64()).collect();
        let scores: Vec<f32> = log.results.iter().map(|r| r.score).collect();
        let probabilities: Vec<Option<f32>> =
            log.results.iter().map(|r| r.rerank_probability).collect();
        transaction
            .execute(
                "INSERT INTO search_results (query_id, rank, photo_id, score, rerank_probability) \
                 SELECT $1, * FROM unnest($2::INTEGER[], $3::BIGINT[], $4::REAL[], $5::REAL[])",
                &[&query_id, &ranks, &photos, &scores, &probabilities],
            )
            .await
            .map_err(|e| port_error(&e))?;
        transaction.commit().await.map_err(|e| port_error(&e))
    }

    async fn search_log(&self, query_id: &QueryId) -> Result<Option<SearchLogEntry>, PortError> {
        let key = query_id.to_string();
        let searches = self
            .query(
                "SELECT text, parsed, encoder, rerank_fallback, created_at, parse_ms, embed_ms, \
                 retrieve_ms, rerank_ms, log_ms, total_ms FROM searches WHERE id = $1",
                &[&key],
            )
            .await?;
        let Some(row) = searches.first() else {
            return Ok(None);
        };
        let mut timings = [0.0; 6];
        for (i, value) in timings.iter_mut().enumerate() {
            *value = row.get(5 + i);
        }
        let encoder: String = row.get(2);
        let results = self
            .query(
                "SELECT rank, photo_id, score, rerank_probability, clicked, clicked_at \
                 FROM search_results WHERE query_id = $1 ORDER BY rank",
                &[&key],
            )
            .await?
            .iter()
            .map(|r| LoggedResultWithClick {
                result: LoggedResult {
                    rank: r.get::<_, i32>(0) as u32,
                    photo_id: PhotoId::from_i64(r.get(1)),
                    score: r.get(2),
                    rerank_probability: r.get(3),
                },
                clicked: r.get(4),
                clicked_at: r.get(5),
            })
            .collect();
        Ok(Some(SearchLogEntry {
            search: LoggedSearch {
                query_id: *query_id,
                text: row.get(0),
                parsed: row.get(1),
                encoder: encoder.parse().map_err(|_| corrupt("encoder id"))?,
                timings: StageTimings::from_values(timings),
                rerank_fallback: row.get(3),
            },
            created_at: row.get(4),
            results,
        }))
    }

    async fn record_click(
        &self,
        query_id: &QueryId,
        rank: u32,
    ) -> Result<Option<ClickedResult>, PortError> {
        let rows = self
            .query(
                "UPDATE search_results SET clicked = true, \
                 clicked_at = COALESCE(clicked_at, $3) \
                 WHERE query_id = $1 AND rank = $2 RETURNING photo_id",
                &[&query_id.to_string(), &(rank as i32), &now_seconds()],
            )
            .await?;
        Ok(rows.first().map(|row| ClickedResult {
            photo_id: PhotoId::from_i64(row.get(0)),
            rank,
        }))
    }
}
