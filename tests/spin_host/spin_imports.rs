//! The Spin interfaces the edge components import, provided by the test host: `spin:variables`
//! (the component's resolved variables) and `spin:postgres` (tokio-postgres, pooled per address
//! like Spin pools its connections; only hosts the manifest allows).

// The errors are the WIT's own types, handed to the guest as they are.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

use super::manifest::AllowedHost;

wasmtime::component::bindgen!({
    path: "spin_host/wit",
    world: "spin-imports",
    imports: { default: async | trappable },
    with: {
        "spin:postgres/postgres.connection": PgConnection,
        "spin:postgres/postgres.connection-builder": PgBuilder,
    },
});

use spin::postgres::postgres::{
    self as pg, Column, DbDataType, DbError, DbValue, Error as PgError, ParameterValue, QueryError,
};
use spin::variables::variables;

/// An open connection: a pooled client, held until the guest drops the resource.
pub struct PgConnection {
    session: Arc<PgSession>,
}

/// A pooled client and whether the guest has begun a transaction on it that it has not ended.
pub struct PgSession {
    client: Object,
    in_transaction: AtomicBool,
}

impl PgSession {
    /// Follows the transaction state through the statements the guest ran.
    fn track(&self, statement: &str) {
        let verb = statement.split_whitespace().next().unwrap_or_default();
        if ["BEGIN", "START"]
            .iter()
            .any(|v| verb.eq_ignore_ascii_case(v))
        {
            self.in_transaction.store(true, Ordering::Relaxed);
        } else if ["COMMIT", "ROLLBACK", "END", "ABORT"]
            .iter()
            .any(|v| verb.eq_ignore_ascii_case(v))
        {
            self.in_transaction.store(false, Ordering::Relaxed);
        }
    }
}

/// Pooled connections are recycled without a reset round trip; one the guest left inside a
/// transaction (it trapped between BEGIN and COMMIT) is rolled back before the pool has it again.
impl Drop for PgConnection {
    fn drop(&mut self) {
        if self.session.in_transaction.load(Ordering::Relaxed) {
            let session = Arc::clone(&self.session);
            tokio::spawn(async move {
                let _ = session.client.batch_execute("ROLLBACK").await;
            });
        }
    }
}

/// A connection being configured.
pub struct PgBuilder {
    address: String,
    ca_root: Option<String>,
}

/// Connection pools by address, shared by every request of a host.
#[derive(Default)]
pub struct PgPools {
    pools: Mutex<HashMap<String, Pool>>,
}

/// What the Spin interfaces of one request see.
pub struct SpinState {
    /// The component's variables.
    pub variables: Arc<HashMap<String, String>>,
    /// Where it may connect.
    pub allowed_hosts: Arc<Vec<AllowedHost>>,
    /// The host's Postgres pools.
    pub pools: Arc<PgPools>,
}

/// The view the generated bindings work on.
pub struct SpinView<'a> {
    /// This request's state.
    pub state: &'a mut SpinState,
    /// The store's resources.
    pub table: &'a mut ResourceTable,
}

/// The `HasData` of the Spin interfaces.
pub struct Spin;

impl HasData for Spin {
    type Data<'a> = SpinView<'a>;
}

/// Adds both interfaces to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> SpinView<'_>,
) -> wasmtime::Result<()> {
    pg::add_to_linker::<T, Spin>(linker, view)?;
    variables::add_to_linker::<T, Spin>(linker, view)?;
    Ok(())
}

impl variables::Host for SpinView<'_> {}

impl<U> variables::HostWithStore<U> for Spin {
    async fn get(
        accessor: &Accessor<U, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, variables::Error>> {
        Ok(accessor.with(|mut access| {
            let view = access.get();
            view.state
                .variables
                .get(&name)
                .cloned()
                .ok_or(variables::Error::Undefined(format!(
                    "the component has no variable `{name}`"
                )))
        }))
    }
}

fn other(message: impl Into<String>) -> PgError {
    PgError::Other(message.into())
}

/// The pooled connection to `address` if the manifest allows its host.
async fn connect(
    address: &str,
    allowed: &[AllowedHost],
    pools: &PgPools,
) -> Result<PgConnection, PgError> {
    let config: tokio_postgres::Config = address
        .parse()
        .map_err(|e| PgError::ConnectionFailed(format!("the address does not parse: {e}")))?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => {
            return Err(PgError::ConnectionFailed(
                "only TCP hosts are supported".into(),
            ));
        }
    };
    let port = config.get_ports().first().copied();
    if !allowed.iter().any(|a| a.allows("postgres", &host, port)) {
        return Err(PgError::ConnectionFailed(format!(
            "postgres://{host}:{} is not in the component's allowed_outbound_hosts",
            port.unwrap_or(5432)
        )));
    }
    let pool = {
        let mut pools = pools
            .pools
            .lock()
            .map_err(|_| other("pool lock poisoned"))?;
        pools
            .entry(address.to_owned())
            .or_insert_with(|| {
                let manager = Manager::from_config(
                    config,
                    tokio_postgres::NoTls,
                    ManagerConfig {
                        // No reset round trip: see `Drop for PgConnection`.
                        recycling_method: RecyclingMethod::Fast,
                    },
                );
                Pool::builder(manager)
                    .max_size(8)
                    .build()
                    .unwrap_or_else(|e| panic!("a pool of a parsed config builds: {e}"))
            })
            .clone()
    };
    let client = pool
        .get()
        .await
        .map_err(|e| PgError::ConnectionFailed(e.to_string()))?;
    Ok(PgConnection {
        session: Arc::new(PgSession {
            client,
            in_transaction: AtomicBool::new(false),
        }),
    })
}

/// A NULL of whatever type the statement wants (Spin's `db-null`).
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn bind(value: ParameterValue) -> Result<Box<dyn ToSql + Send + Sync>, PgError> {
    Ok(match value {
        ParameterValue::Boolean(v) => Box::new(v),
        ParameterValue::Int8(v) => Box::new(v),
        ParameterValue::Int16(v) => Box::new(v),
        ParameterValue::Int32(v) => Box::new(v),
        ParameterValue::Int64(v) => Box::new(v),
        ParameterValue::Floating32(v) => Box::new(v),
        ParameterValue::Floating64(v) => Box::new(v),
        ParameterValue::Str(v) => Box::new(v),
        ParameterValue::Binary(v) => Box::new(v),
        ParameterValue::ArrayInt32(v) => Box::new(v),
        ParameterValue::ArrayInt64(v) => Box::new(v),
        ParameterValue::ArrayStr(v) => Box::new(v),
        ParameterValue::DbNull => Box::new(Null),
        other => {
            return Err(PgError::BadParameter(format!(
                "the test host does not bind {other:?}"
            )));
        }
    })
}

fn data_type(ty: &Type) -> DbDataType {
    match *ty {
        Type::BOOL => DbDataType::Boolean,
        Type::CHAR => DbDataType::Int8,
        Type::INT2 => DbDataType::Int16,
        Type::INT4 => DbDataType::Int32,
        Type::INT8 => DbDataType::Int64,
        Type::FLOAT4 => DbDataType::Floating32,
        Type::FLOAT8 => DbDataType::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DbDataType::Str,
        Type::BYTEA => DbDataType::Binary,
        ref other => DbDataType::Other(other.name().to_owned()),
    }
}

fn value(row: &tokio_postgres::Row, i: usize) -> Result<DbValue, PgError> {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        i: usize,
        wrap: impl FnOnce(T) -> DbValue,
    ) -> Result<DbValue, PgError> {
        row.try_get::<_, Option<T>>(i)
            .map(|v| v.map_or(DbValue::DbNull, wrap))
            .map_err(|e| PgError::ValueConversionFailed(e.to_string()))
    }
    match *row.columns()[i].type_() {
        Type::BOOL => get(row, i, DbValue::Boolean),
        Type::INT2 => get(row, i, DbValue::Int16),
        Type::INT4 => get(row, i, DbValue::Int32),
        Type::INT8 => get(row, i, DbValue::Int64),
        Type::FLOAT4 => get(row, i, DbValue::Floating32),
        Type::FLOAT8 => get(row, i, DbValue::Floating64),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => get(row, i, DbValue::Str),
        Type::BYTEA => get(row, i, DbValue::Binary),
        _ => Ok(DbValue::Unsupported(Vec::new())),
    }
}

fn query_error(error: tokio_postgres::Error) -> PgError {
    match error.as_db_error() {
        Some(db) => PgError::QueryFailed(QueryError::DbError(DbError {
            as_text: error.to_string(),
            severity: db.severity().to_owned(),
            code: db.code().code().to_owned(),
            message: db.message().to_owned(),
            detail: db.detail().map(str::to_owned),
            extras: Vec::new(),
        })),
        None if error.is_closed() => PgError::ConnectionFailed(error.to_string()),
        None => PgError::QueryFailed(QueryError::Text(error.to_string())),
    }
}

type Bound = Vec<Box<dyn ToSql + Send + Sync>>;

fn bind_all(params: Vec<ParameterValue>) -> Result<Bound, PgError> {
    params.into_iter().map(bind).collect()
}

fn as_refs(params: &Bound) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

async fn run(
    session: &PgSession,
    statement: &str,
    params: Vec<ParameterValue>,
) -> Result<(Vec<Column>, Vec<Vec<DbValue>>), PgError> {
    let params = bind_all(params)?;
    let refs = as_refs(&params);
    let client = &session.client;
    let prepared = client
        .prepare_cached(statement)
        .await
        .map_err(query_error)?;
    let columns = prepared
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_owned(),
            data_type: data_type(c.type_()),
        })
        .collect();
    let rows = client.query(&prepared, &refs).await.map_err(query_error)?;
    session.track(statement);
    let values = rows
        .iter()
        .map(|row| (0..row.len()).map(|i| value(row, i)).collect())
        .collect::<Result<_, _>>()?;
    Ok((columns, values))
}

async fn execute(
    session: &PgSession,
    statement: &str,
    params: Vec<ParameterValue>,
) -> Result<u64, PgError> {
    let params = bind_all(params)?;
    let refs = as_refs(&params);
    let count = session
        .client
        .execute(statement, &refs)
        .await
        .map_err(query_error)?;
    session.track(statement);
    Ok(count)
}

impl SpinView<'_> {
    fn session(&mut self, connection: &Resource<PgConnection>) -> wasmtime::Result<Arc<PgSession>> {
        Ok(Arc::clone(&self.table.get(connection)?.session))
    }

    fn connection_settings(&self) -> (Arc<Vec<AllowedHost>>, Arc<PgPools>) {
        (
            Arc::clone(&self.state.allowed_hosts),
            Arc::clone(&self.state.pools),
        )
    }

    async fn open_connection(
        &mut self,
        address: &str,
    ) -> wasmtime::Result<Result<Resource<PgConnection>, PgError>> {
        let (allowed, pools) = self.connection_settings();
        match connect(address, &allowed, &pools).await {
            Ok(connection) => Ok(Ok(self.table.push(connection)?)),
            Err(error) => Ok(Err(error)),
        }
    }
}

impl pg::Host for SpinView<'_> {}

impl pg::HostConnectionBuilder for SpinView<'_> {
    async fn new(&mut self, address: String) -> wasmtime::Result<Resource<PgBuilder>> {
        Ok(self.table.push(PgBuilder {
            address,
            ca_root: None,
        })?)
    }

    async fn set_ca_root(
        &mut self,
        builder: Resource<PgBuilder>,
        certificate: String,
    ) -> wasmtime::Result<Result<(), PgError>> {
        self.table.get_mut(&builder)?.ca_root = Some(certificate);
        Ok(Ok(()))
    }

    async fn build(
        &mut self,
        builder: Resource<PgBuilder>,
    ) -> wasmtime::Result<Result<Resource<PgConnection>, PgError>> {
        let builder = self.table.get(&builder)?;
        if builder.ca_root.is_some() {
            return Ok(Err(other("the test host connects without TLS")));
        }
        let address = builder.address.clone();
        self.open_connection(&address).await
    }

    async fn drop(&mut self, builder: Resource<PgBuilder>) -> wasmtime::Result<()> {
        self.table.delete(builder)?;
        Ok(())
    }
}

impl pg::HostConnection for SpinView<'_> {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<PgConnection>, PgError>> {
        self.open_connection(&address).await
    }

    async fn query(
        &mut self,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<pg::RowSet, PgError>> {
        let session = self.session(&connection)?;
        Ok(run(&session, &statement, params)
            .await
            .map(|(columns, rows)| pg::RowSet { columns, rows }))
    }

    async fn execute(
        &mut self,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<u64, PgError>> {
        let session = self.session(&connection)?;
        Ok(execute(&session, &statement, params).await)
    }

    async fn drop(&mut self, connection: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

type QueryStreams = (
    Vec<Column>,
    StreamReader<Vec<DbValue>>,
    FutureReader<Result<(), PgError>>,
);

impl<U> pg::HostConnectionBuilderWithStore<U> for Spin {
    async fn build_async(
        accessor: &Accessor<U, Self>,
        builder: Resource<PgBuilder>,
    ) -> wasmtime::Result<Result<Resource<PgConnection>, PgError>> {
        let (address, tls, allowed, pools) = accessor.with(|mut access| {
            let view = access.get();
            let builder = view.table.get(&builder)?;
            let (allowed, pools) = view.connection_settings();
            wasmtime::Result::<_>::Ok((
                builder.address.clone(),
                builder.ca_root.is_some(),
                allowed,
                pools,
            ))
        })?;
        if tls {
            return Ok(Err(other("the test host connects without TLS")));
        }
        let connection = match connect(&address, &allowed, &pools).await {
            Ok(connection) => connection,
            Err(error) => return Ok(Err(error)),
        };
        accessor.with(|mut access| Ok(Ok(access.get().table.push(connection)?)))
    }
}

impl<U> pg::HostConnectionWithStore<U> for Spin {
    async fn open_async(
        accessor: &Accessor<U, Self>,
        address: String,
    ) -> wasmtime::Result<Result<Resource<PgConnection>, PgError>> {
        let (allowed, pools) = accessor.with(|mut access| access.get().connection_settings());
        let connection = match connect(&address, &allowed, &pools).await {
            Ok(connection) => connection,
            Err(error) => return Ok(Err(error)),
        };
        accessor.with(|mut access| Ok(Ok(access.get().table.push(connection)?)))
    }

    async fn query_async(
        accessor: &Accessor<U, Self>,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<QueryStreams, PgError>> {
        let session = accessor.with(|mut access| access.get().session(&connection))?;
        // The rows are read whole, then streamed to the guest.
        let (columns, rows) = match run(&session, &statement, params).await {
            Ok(result) => result,
            Err(error) => return Ok(Err(error)),
        };
        accessor.with(|mut access| {
            let rows = StreamReader::new(&mut access, rows)?;
            let done = FutureReader::new(&mut access, async {
                wasmtime::Result::<Result<(), PgError>>::Ok(Ok(()))
            })?;
            Ok(Ok((columns, rows, done)))
        })
    }

    async fn execute_async(
        accessor: &Accessor<U, Self>,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<u64, PgError>> {
        let session = accessor.with(|mut access| access.get().session(&connection))?;
        Ok(execute(&session, &statement, params).await)
    }
}
