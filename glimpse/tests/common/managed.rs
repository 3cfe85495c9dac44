//! The real servers the managed adapters are tested against: Postgres (a schema per test on the
//! machine's server, or a private server the test can restart), the s3s-fs S3 server on loopback,
//! and Qdrant when `QDRANT_URL` names one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use glimpse_worker::adapters::{PostgresCatalog, QdrantSettings, S3BlobStore, S3Settings};
use tokio_postgres::NoTls;

/// The machine's Postgres, key=value form (on loopback, without TLS: say so, since the worker
/// verifies TLS unless told otherwise).
pub fn postgres_server() -> String {
    std::env::var("GLIMPSE_TEST_POSTGRES").unwrap_or_else(|_| {
        "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=disable".to_owned()
    })
}

/// A random lowercase suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).unwrap();
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{suffix}")
}

/// Runs SQL on a server (`url` in key=value form).
pub async fn run_sql(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("the tests need Postgres at 127.0.0.1:5432 (or GLIMPSE_TEST_POSTGRES)");
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = driver.await;
}

/// A schema of its own for one test on the machine's Postgres, dropped when the test ends (pass
/// or fail).
pub struct Schema {
    name: String,
}

impl Schema {
    pub async fn new() -> Self {
        let name = unique("glimpse_test");
        run_sql(&postgres_server(), &format!("CREATE SCHEMA {name}")).await;
        Self { name }
    }

    /// The URL of the schema (key=value form).
    pub fn url(&self) -> String {
        format!(
            "{} options='-c search_path={}'",
            postgres_server(),
            self.name
        )
    }

    pub async fn catalog(&self) -> PostgresCatalog {
        glimpse_worker::adapters::postgres::connect(&self.url(), 4)
            .await
            .unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        run_sql_from_drop(format!("DROP SCHEMA {} CASCADE", self.name));
    }
}

/// [`run_sql`] on the test server from a `Drop` (on a thread of its own, as a drop may run inside
/// an async runtime).
pub fn run_sql_from_drop(sql: String) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_sql(&postgres_server(), &sql));
    })
    .join()
    .unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Postgres server of the test's own (initdb in a temporary folder, a free port), so a test
/// can stop and restart it without disturbing the others. Run as the `postgres` user when the
/// tests run as root (Postgres refuses root).
pub struct PrivatePostgres {
    root: tempfile::TempDir,
    port: u16,
    server: Option<Child>,
    /// Settings passed to the server (`-c name=value`) on every start.
    settings: Vec<String>,
}

fn postgres_bin(program: &str) -> PathBuf {
    let bindir = std::env::var_os("GLIMPSE_TEST_PG_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let output = Command::new("pg_config").arg("--bindir").output().ok()?;
            Some(PathBuf::from(String::from_utf8(output.stdout).ok()?.trim()))
        })
        .filter(|dir| dir.join(program).exists())
        .or_else(|| {
            std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
                .find(|dir| dir.join(program).exists())
        });
    bindir
        .map(|dir| dir.join(program))
        .expect("the restart test runs a Postgres server of its own: install PostgreSQL's server binaries (initdb, postgres) or set GLIMPSE_TEST_PG_BIN")
}

fn as_postgres_user(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A certificate authority made for one test with the `openssl` command, and a server
/// certificate it signed.
pub struct TestAuthority {
    folder: tempfile::TempDir,
}

impl TestAuthority {
    /// A fresh CA and a certificate for a server named by `names` (`IP:127.0.0.1`,
    /// `DNS:localhost`).
    pub fn new(names: &[&str]) -> Self {
        let folder = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(folder.path())
                .output()
                .expect("the TLS tests make their certificates with the openssl command");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let run = |words: String| openssl(&words.split_whitespace().collect::<Vec<_>>());
        run(format!(
            "req -x509 -days 2 -subj /CN=glimpse-test-ca {key} -keyout ca.key -out ca.pem \
             -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ));
        run(format!(
            "req -subj /CN=glimpse-test-database {key} -keyout server.key -out server.csr"
        ));
        std::fs::write(
            folder.path().join("server.ext"),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                 extendedKeyUsage=serverAuth\n",
                names.join(",")
            ),
        )
        .unwrap();
        run(
            "x509 -req -days 2 -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -extfile server.ext -out server.pem"
                .to_owned(),
        );
        Self { folder }
    }

    /// The CA's certificate (PEM): what a client trusts.
    pub fn certificate(&self) -> PathBuf {
        self.folder.path().join("ca.pem")
    }
}

impl PrivatePostgres {
    pub fn start() -> Self {
        Self::start_with(&[], None)
    }

    /// A server that speaks only TLS on TCP, with the certificate `authority` signed.
    pub fn start_tls_only(authority: &TestAuthority) -> Self {
        Self::start_with(
            &[
                "ssl=on",
                "ssl_cert_file=server.pem",
                "ssl_key_file=server.key",
            ],
            Some(authority),
        )
    }

    fn start_with(settings: &[&str], authority: Option<&TestAuthority>) -> Self {
        let root = tempfile::tempdir().unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(root.path())
            .status();
        let data = root.path().join("data");
        let status = as_postgres_user(&postgres_bin("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        if let Some(authority) = authority {
            for file in ["server.pem", "server.key"] {
                let to = data.join(file);
                std::fs::copy(authority.folder.path().join(file), &to).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
                let _ = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&to)
                    .status();
            }
            // Plaintext connections over TCP are refused: only TLS gets in.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
        }
        let mut server = Self {
            root,
            port: free_port(),
            server: None,
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.resume();
        server
    }

    /// The URL of its `postgres` database (key=value form, without TLS).
    pub fn url(&self) -> String {
        format!("{} sslmode=disable", self.address())
    }

    /// Its address, user and database (key=value form, nothing said of TLS).
    pub fn address(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Starts the server (again), on the same port and data.
    pub fn resume(&mut self) {
        let child = as_postgres_user(&postgres_bin("postgres"))
            .arg("-D")
            .arg(self.root.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .args(self.settings.iter().flat_map(|setting| ["-c", setting]))
            .arg("-k")
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.server = Some(child);
        wait_for_port(self.port, "the private Postgres");
        // The port opens before the server takes sessions ("the database system is starting up").
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Command::new(postgres_bin("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|status| status.success())
        {
            assert!(
                Instant::now() < deadline,
                "the private Postgres did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server as an operator would for a restart (fast shutdown: sessions are cut).
    pub fn halt(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = as_postgres_user(&postgres_bin("pg_ctl"))
                .args(["stop", "-m", "fast", "-w", "-D"])
                .arg(self.root.path().join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.halt();
    }
}

pub const S3_ACCESS_KEY: &str = "glimpse-test";
pub const S3_SECRET_KEY: &str = "glimpse-test-secret-key";

/// The S3 server binary: `S3S_FS`, else where `tests/run` installs it.
fn s3s_fs() -> PathBuf {
    let path = std::env::var_os("S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/s3s-fs")
        });
    assert!(
        path.exists(),
        "the S3 tests need the s3s-fs server at {}: run tests/run (it installs it with \
         `cargo install s3s-fs --features binary`), or set S3S_FS",
        path.display()
    );
    path
}

/// An S3-protocol server on loopback over a temporary folder, stopped when dropped; it can be
/// stopped and started again on the same port and folder.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    root: tempfile::TempDir,
}

impl S3Server {
    pub fn start() -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            root: tempfile::tempdir().unwrap(),
        };
        server.resume();
        server
    }

    /// Starts the server (again).
    pub fn resume(&mut self) {
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port, "s3s-fs");
    }

    /// Stops the server: requests fail to connect until [`resume`](Self::resume).
    pub fn halt(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint()),
            bucket: "glimpse-test".to_owned(),
            region: "us-east-1".to_owned(),
            access_key_id: S3_ACCESS_KEY.to_owned(),
            secret_access_key: S3_SECRET_KEY.to_owned(),
            path_style: true,
            presign_expiry: glimpse_worker::adapters::s3::DEFAULT_PRESIGN_EXPIRY,
        }
    }

    pub async fn store(&self, settings: &S3Settings) -> S3BlobStore {
        let store = S3BlobStore::new(settings);
        store.ensure_bucket().await.unwrap();
        store
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The Qdrant server named by `QDRANT_URL`, with a collection prefix of this test's own; `None`
/// (after saying so loudly) when there is none.
pub fn qdrant(test: &str) -> Option<QdrantSettings> {
    match std::env::var("QDRANT_URL") {
        Ok(url) if !url.trim().is_empty() => Some(QdrantSettings {
            url,
            api_key: std::env::var("QDRANT_API_KEY").ok(),
            collection_prefix: unique("glimpse_test"),
            ..QdrantSettings::default()
        }),
        _ => {
            eprintln!(
                "SKIPPED {test}: it needs a Qdrant server (>= 1.15); set \
                 QDRANT_URL=http://127.0.0.1:6334 to run it"
            );
            None
        }
    }
}
