//! A small Spin-like host for testing the edge components: wasmtime with WASIp2 and WASIp3
//! (`wasi:http/handler@0.3.0` exported, `wasi:http/client` imported), `spin:variables` and
//! `spin:postgres`, routes, variables and `allowed_outbound_hosts` from the real spin.toml. One
//! fresh instance per request, as Spin does. A test harness: production runs the components on
//! Spin.

pub mod manifest;
mod spin_imports;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p3::{WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use self::manifest::{AllowedHost, Manifest};
use self::spin_imports::{PgPools, SpinState, SpinView};

/// Refuses outbound HTTP the manifest does not allow, and sends the rest.
struct Outbound {
    allowed: Arc<Vec<AllowedHost>>,
}

type OutgoingBody = UnsyncBoxBody<Bytes, ErrorCode>;
type SendError = wasmtime_wasi::TrappableError<ErrorCode>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<OutgoingBody>,
        options: Option<wasmtime_wasi_http::p3::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), ErrorCode>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<OutgoingBody>,
                        Box<dyn Future<Output = Result<(), ErrorCode>> + Send>,
                    ),
                    SendError,
                >,
            > + Send,
    > {
        drop(fut);
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_owned();
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16();
        let allowed = self.allowed.iter().any(|a| a.allows(&scheme, &host, port));
        Box::new(async move {
            if !allowed {
                eprintln!("spin host: refused {scheme}://{host}:{port:?} (not allowed)");
                return Err(ErrorCode::HttpRequestDenied.into());
            }
            let (response, io) =
                wasmtime_wasi_http::p3::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// One request's store data.
struct Ctx {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outbound: Outbound,
    spin: SpinState,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Ctx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.outbound,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

fn spin_view(ctx: &mut Ctx) -> SpinView<'_> {
    SpinView {
        state: &mut ctx.spin,
        table: &mut ctx.table,
    }
}

/// A component ready to instantiate, with its settings.
struct Loaded {
    pre: ServicePre<Ctx>,
    variables: Arc<HashMap<String, String>>,
    allowed: Arc<Vec<AllowedHost>>,
}

/// The host: serves the manifest's routes on a local port until dropped.
pub struct SpinHost {
    address: SocketAddr,
    runtime: Arc<Runtime>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SpinHost {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The runtime's engine (compiled components are cached per engine).
fn engine() -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model_async(true);
    Ok(Engine::new(&config)?)
}

/// Everything the routes need, shared by the connections.
struct Runtime {
    engine: Engine,
    manifest: Manifest,
    components: HashMap<String, Loaded>,
    pools: Arc<PgPools>,
}

impl Runtime {
    fn load(manifest: Manifest) -> anyhow::Result<Self> {
        let engine = engine()?;
        let mut linker = Linker::<Ctx>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
        spin_imports::add_to_linker(&mut linker, spin_view)?;
        let mut components = HashMap::new();
        for (name, config) in &manifest.components {
            let component = Component::from_file(&engine, &config.source)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                format!(
                    "cannot load {} (build the components: cd functions && cargo build --release)",
                    config.source.display()
                )
            })?;
            let pre = ServicePre::new(linker.instantiate_pre(&component)?)?;
            components.insert(
                name.clone(),
                Loaded {
                    pre,
                    variables: Arc::new(config.variables.clone()),
                    allowed: Arc::new(config.allowed_hosts.clone()),
                },
            );
        }
        Ok(Self {
            engine,
            manifest,
            components,
            pools: Arc::new(PgPools::default()),
        })
    }

    /// Runs `request` in a fresh instance of the component its path routes to.
    async fn handle(&self, request: http::Request<Bytes>) -> anyhow::Result<http::Response<Bytes>> {
        let Some(name) = self.manifest.route(request.uri().path()) else {
            return Ok(http::Response::builder().status(404).body(Bytes::new())?);
        };
        let loaded = &self.components[name];
        let mut store = Store::new(
            &self.engine,
            Ctx {
                table: ResourceTable::new(),
                wasi: WasiCtxBuilder::new().inherit_stderr().build(),
                http: WasiHttpCtx::new(),
                outbound: Outbound {
                    allowed: Arc::clone(&loaded.allowed),
                },
                spin: SpinState {
                    variables: Arc::clone(&loaded.variables),
                    allowed_hosts: Arc::clone(&loaded.allowed),
                    pools: Arc::clone(&self.pools),
                },
            },
        );
        let service = loaded.pre.instantiate_async(&mut store).await?;
        let request = request.map(|body| {
            Full::new(body).map_err(|never: Infallible| -> ErrorCode { match never {} })
        });
        let (request, io) = wasmtime_wasi_http::p3::Request::from_http(request);
        store
            .run_concurrent(async |accessor| {
                let respond = async {
                    let response = service.handle(accessor, request).await??;
                    let response =
                        accessor.with(|access| response.into_http(access, async { Ok(()) }))?;
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await?.to_bytes();
                    anyhow::Ok(http::Response::from_parts(parts, body))
                };
                let (response, ()) = tokio::try_join!(respond, async {
                    io.await.map_err(|e| anyhow::anyhow!("request body: {e:?}"))
                })?;
                anyhow::Ok(response)
            })
            .await?
    }
}

impl SpinHost {
    /// Loads the manifest at `path` with these variable values (by name, as from
    /// `SPIN_VARIABLE_*`) and serves it on a free local port.
    pub async fn start(path: &Path, variables: &HashMap<String, String>) -> anyhow::Result<Self> {
        let runtime = Arc::new(Runtime::load(Manifest::load(path, variables)?)?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let serving = Arc::clone(&runtime);
        let server = tokio::spawn(async move {
            let runtime = serving;
            while let Ok((stream, _)) = listener.accept().await {
                let runtime = Arc::clone(&runtime);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let runtime = Arc::clone(&runtime);
                        async move { Ok::<_, Infallible>(serve(&runtime, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            address,
            runtime,
            server,
        })
    }

    /// Runs one request in the component its path routes to, without the HTTP server (what the
    /// benchmark times). A component that traps is an error.
    #[allow(dead_code)] // used by the benchmark, not by every test target
    pub async fn handle(
        &self,
        request: http::Request<Bytes>,
    ) -> anyhow::Result<http::Response<Bytes>> {
        self.runtime.handle(request).await
    }

    /// The base URL, `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

async fn serve(runtime: &Runtime, request: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let outcome = match body.collect().await {
        Ok(body) => {
            runtime
                .handle(http::Request::from_parts(parts, body.to_bytes()))
                .await
        }
        Err(error) => Err(error.into()),
    };
    match outcome {
        Ok(response) => response.map(Full::new),
        Err(error) => {
            eprintln!("spin host: the component failed: {error:?}");
            http::Response::builder()
                .status(500)
                .body(Full::new(Bytes::from(format!(
                    "component trapped: {error}"
                ))))
                .unwrap_or_default()
        }
    }
}
