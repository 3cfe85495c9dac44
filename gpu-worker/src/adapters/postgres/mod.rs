//! The managed Catalog: Postgres through a connection pool, shared by any number of workers and
//! edge functions. Versioned migrations run at start under an advisory lock; jobs are claimed with
//! `FOR UPDATE SKIP LOCKED` and leases on the database's clock, so workers on machines with skewed
//! clocks agree on when a lease has run out.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use glimpse_contracts::catalog_sql::{Cell, Param, SqlCatalog, SqlConnection, Statement};
use glimpse_core::ports::PortError;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

pub use glimpse_contracts::catalog_sql::SCHEMA_VERSION;

/// The managed catalog: [`SqlCatalog`] over a tokio-postgres pool.
pub type PostgresCatalog = SqlCatalog<PostgresPool>;

mod tls;

pub use self::tls::{DatabaseUrl, SecureWith};

/// Connects to the database at `url` (a `postgres://` URL or key=value string; TLS verified
/// unless it says `sslmode=disable`, see [`DatabaseUrl`]) with up to `connections` pooled
/// connections, and applies pending migrations. Errors never repeat the URL (it may hold a
/// password).
pub async fn connect(url: &str, connections: usize) -> Result<PostgresCatalog, PortError> {
    connect_to(url.parse()?, connections).await
}

/// [`connect`] with a parsed URL.
pub async fn connect_to(
    url: DatabaseUrl,
    connections: usize,
) -> Result<PostgresCatalog, PortError> {
    let location = location(&url.config);
    let connector = url.connector()?;
    let manager = Manager::from_config(
        url.config,
        connector,
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
    let catalog = SqlCatalog::new(PostgresPool { pool, location });
    catalog.migrate().await?;
    Ok(catalog)
}

/// A pool of tokio-postgres connections: the driver of the worker's catalog.
pub struct PostgresPool {
    pool: Pool,
    location: String,
}

impl PostgresPool {
    /// Where the database is, `host:port/database`, without user or password (for logs).
    pub fn describe(&self) -> &str {
        &self.location
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PortError> {
        self.pool.get().await.map_err(pool_error)
    }
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
    // tokio-postgres keeps the reason (a certificate that does not verify, a refused
    // connection) in the error's sources.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message = format!("{message}: {cause_text}");
        }
        source = cause.source();
    }
    if transient {
        PortError::Unavailable(format!("catalog database unavailable: {message}"))
    } else {
        PortError::Internal(format!("catalog database: {message}"))
    }
}

fn pool_error(error: deadpool_postgres::PoolError) -> PortError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => port_error(&error),
        other => PortError::Unavailable(format!("catalog database unavailable: {other}")),
    }
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

/// A parameter as tokio-postgres binds it (borrowed: nothing is copied).
fn bind(param: &Param) -> &(dyn ToSql + Sync) {
    match param {
        Param::I32(v) => v,
        Param::I64(v) => v,
        Param::F64(v) => v,
        Param::Text(v) => v,
        Param::Bytes(v) => v,
        Param::I32s(v) => v,
        Param::I64s(v) => v,
        Param::Texts(v) => v,
    }
}

fn cell(row: &Row, i: usize) -> Result<Cell, PortError> {
    let column = &row.columns()[i];
    let decoded = match *column.type_() {
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map(|v| v.map(Cell::Bool)),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map(|v| v.map(Cell::I32)),
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map(|v| v.map(Cell::I64)),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(i).map(|v| v.map(Cell::F32)),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map(|v| v.map(Cell::F64)),
        Type::TEXT | Type::VARCHAR => row
            .try_get::<_, Option<String>>(i)
            .map(|v| v.map(Cell::Text)),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map(|v| v.map(Cell::Bytes)),
        ref other => {
            return Err(PortError::Internal(format!(
                "catalog database: column {} has the unexpected type {other}",
                column.name()
            )));
        }
    };
    decoded
        .map(|v| v.unwrap_or(Cell::Null))
        .map_err(|e| PortError::Internal(format!("catalog database: {e}")))
}

fn cells(row: &Row) -> Result<Vec<Cell>, PortError> {
    (0..row.len()).map(|i| cell(row, i)).collect()
}

async fn run(
    client: &tokio_postgres::Client,
    prepared: &tokio_postgres::Statement,
    params: &[Param],
) -> Result<Vec<Vec<Cell>>, PortError> {
    let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(bind).collect();
    client
        .query(prepared, &params)
        .await
        .map_err(|e| port_error(&e))?
        .iter()
        .map(cells)
        .collect()
}

#[async_trait]
impl SqlConnection for PostgresPool {
    async fn query(&self, statement: &Statement) -> Result<Vec<Vec<Cell>>, PortError> {
        let client = self.client().await?;
        // Prepared statements are cached per pooled connection.
        let prepared = client
            .prepare_cached(&statement.sql)
            .await
            .map_err(|e| port_error(&e))?;
        run(&client, &prepared, &statement.params).await
    }

    async fn atomically(&self, statements: &[Statement]) -> Result<(), PortError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| port_error(&e))?;
        for statement in statements {
            let prepared = transaction
                .prepare(&statement.sql)
                .await
                .map_err(|e| port_error(&e))?;
            run(transaction.client(), &prepared, &statement.params).await?;
        }
        transaction.commit().await.map_err(|e| port_error(&e))
    }
}
