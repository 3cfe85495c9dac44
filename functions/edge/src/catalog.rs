//! The catalog at the edge: `glimpse_contracts`' [`SqlCatalog`] over Spin's Postgres interface
//! (`spin:postgres/postgres@4.2.0`), one connection per request (Spin pools them in the host).

use glimpse_contracts::catalog_sql::{Cell, Param, SqlCatalog, SqlConnection, Statement};
use glimpse_core::ports::PortError;
use spin_sdk::pg::{self, Connection, DbValue, ParameterValue, PgError, QueryError};

/// The edge's catalog.
pub type EdgeCatalog = SqlCatalog<SpinPostgres>;

/// Opens the catalog at `address` and checks the database is at this build's schema version (the
/// workers migrate it).
pub async fn open(address: &str) -> Result<EdgeCatalog, PortError> {
    let connection = Connection::open(address)
        .await
        .map_err(|e| port_error(&e))?;
    let catalog = SqlCatalog::new(SpinPostgres(connection));
    catalog.check_schema().await?;
    Ok(catalog)
}

/// A Spin Postgres connection: the driver of the edge's catalog.
pub struct SpinPostgres(Connection);

/// Connection trouble, and the server's "try later" classes (08 connection, 53 resources, 57P
/// shutdown, 40 serialisation) are worth retrying; the rest are bugs. Never repeats the address.
fn port_error(error: &pg::Error) -> PortError {
    let transient = match error {
        pg::Error::PgError(PgError::ConnectionFailed(_)) => true,
        pg::Error::PgError(PgError::QueryFailed(QueryError::DbError(db))) => {
            ["08", "53", "57P", "40"]
                .iter()
                .any(|class| db.code.starts_with(class))
        }
        _ => false,
    };
    let message = match error {
        pg::Error::PgError(PgError::ConnectionFailed(_)) => {
            "the connection failed (is the database up, and are database_host, database_name and \
             database_user right?)"
                .to_owned()
        }
        other => other.to_string(),
    };
    if transient {
        PortError::Unavailable(format!("catalog database unavailable: {message}"))
    } else {
        PortError::Internal(format!("catalog database: {message}"))
    }
}

fn parameter(param: &Param) -> ParameterValue {
    fn or_null<T>(value: Option<T>, wrap: impl FnOnce(T) -> ParameterValue) -> ParameterValue {
        value.map_or(ParameterValue::DbNull, wrap)
    }
    match param.clone() {
        Param::I32(v) => or_null(v, ParameterValue::Int32),
        Param::I64(v) => or_null(v, ParameterValue::Int64),
        Param::F64(v) => or_null(v, ParameterValue::Floating64),
        Param::Text(v) => or_null(v, ParameterValue::Str),
        Param::Bytes(v) => ParameterValue::Binary(v),
        Param::I32s(v) => ParameterValue::ArrayInt32(v.into_iter().map(Some).collect()),
        Param::I64s(v) => ParameterValue::ArrayInt64(v.into_iter().map(Some).collect()),
        Param::Texts(v) => ParameterValue::ArrayStr(v),
    }
}

fn cell(value: &DbValue) -> Result<Cell, PortError> {
    Ok(match value {
        DbValue::DbNull => Cell::Null,
        DbValue::Boolean(v) => Cell::Bool(*v),
        DbValue::Int32(v) => Cell::I32(*v),
        DbValue::Int64(v) => Cell::I64(*v),
        DbValue::Floating32(v) => Cell::F32(*v),
        DbValue::Floating64(v) => Cell::F64(*v),
        DbValue::Str(v) => Cell::Text(v.clone()),
        DbValue::Binary(v) => Cell::Bytes(v.clone()),
        other => {
            return Err(PortError::Internal(format!(
                "catalog database: a value of an unexpected type ({other:?})"
            )));
        }
    })
}

impl SpinPostgres {
    async fn execute(&self, sql: &str) -> Result<(), PortError> {
        self.0
            .execute(sql, Vec::new())
            .await
            .map(drop)
            .map_err(|e| port_error(&e))
    }
}

#[async_trait::async_trait(?Send)]
impl SqlConnection for SpinPostgres {
    async fn query(&self, statement: &Statement) -> Result<Vec<Vec<Cell>>, PortError> {
        let params: Vec<ParameterValue> = statement.params.iter().map(parameter).collect();
        let mut result = self
            .0
            .query(statement.sql.as_str(), params)
            .await
            .map_err(|e| port_error(&e))?;
        let mut rows = Vec::new();
        while let Some(row) = result.rows().next().await {
            rows.push(row.iter().map(cell).collect::<Result<Vec<_>, _>>()?);
        }
        result.result().await.map_err(|e| port_error(&e))?;
        Ok(rows)
    }

    async fn atomically(&self, statements: &[Statement]) -> Result<(), PortError> {
        self.execute("BEGIN").await?;
        for statement in statements {
            if let Err(error) = self.query(statement).await {
                // The connection is this request's alone; a failed rollback dies with it.
                let _ = self.execute("ROLLBACK").await;
                return Err(error);
            }
        }
        self.execute("COMMIT").await
    }
}
