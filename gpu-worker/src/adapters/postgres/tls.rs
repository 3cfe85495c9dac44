//! TLS to the catalog database: rustls, certificates verified against the system's roots (or the
//! URL's `sslrootcert`), the host name checked unless the URL says `sslmode=verify-ca`.
//!
//! The URL speaks libpq's words, `sslmode` and `sslrootcert`, which tokio-postgres does not know
//! past `require`: they are taken out here, and the rest of the URL is left as written.

use std::path::PathBuf;
use std::sync::Arc;

use glimpse_core::ports::PortError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

/// How the connection to the database is secured: `sslmode` in the URL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecureWith {
    /// `verify-full` (the default): TLS, the certificate chains to a trusted root and names the
    /// host connected to.
    #[default]
    VerifiedHost,
    /// `verify-ca`: TLS, the certificate chains to a trusted root (for a server reached by an
    /// address its certificate does not name).
    VerifiedChain,
    /// `disable`: no TLS, for a database on this machine or a private network one trusts.
    Nothing,
}

/// A database URL split into what tokio-postgres reads and how to secure the connection.
#[derive(Clone, Debug)]
pub struct DatabaseUrl {
    /// Host, port, user, password, database, options.
    pub config: tokio_postgres::Config,
    /// `sslmode`.
    pub secure_with: SecureWith,
    /// `sslrootcert`: a PEM file of the certificates to trust instead of the system's.
    pub root_certificates: Option<PathBuf>,
}

/// The URL's form; messages never repeat the URL (it may hold a password).
const EXPECTED: &str = "expected postgres://user:password@host:port/db?sslmode=verify-full \
                        (or the key=value form)";

impl std::str::FromStr for DatabaseUrl {
    type Err = PortError;

    fn from_str(url: &str) -> Result<Self, PortError> {
        let (rest, tls) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            take_from_query(url)
        } else {
            take_from_pairs(url)
        }?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|_| {
            PortError::Rejected(format!("the database URL does not parse: {EXPECTED}"))
        })?;
        let mut secure_with = SecureWith::default();
        let mut root_certificates = None;
        for (key, value) in tls {
            match key {
                TlsKey::Mode => secure_with = secure_with_mode(&value)?,
                TlsKey::RootCertificates => root_certificates = Some(PathBuf::from(value)),
            }
        }
        config.ssl_mode(match secure_with {
            SecureWith::Nothing => SslMode::Disable,
            SecureWith::VerifiedHost | SecureWith::VerifiedChain => SslMode::Require,
        });
        Ok(Self {
            config,
            secure_with,
            root_certificates,
        })
    }
}

fn secure_with_mode(mode: &str) -> Result<SecureWith, PortError> {
    match mode {
        "verify-full" => Ok(SecureWith::VerifiedHost),
        "verify-ca" => Ok(SecureWith::VerifiedChain),
        "disable" => Ok(SecureWith::Nothing),
        "allow" | "prefer" | "require" => Err(PortError::Rejected(format!(
            "sslmode={mode} would accept a server without checking who it is (or without \
             TLS at all); use sslmode=verify-full (the default; add sslrootcert=FILE for a \
             private CA), verify-ca, or disable for a database on this machine"
        ))),
        other => Err(PortError::Rejected(format!(
            "sslmode={other} is not a mode: use verify-full, verify-ca or disable"
        ))),
    }
}

#[derive(Clone, Copy)]
enum TlsKey {
    Mode,
    RootCertificates,
}

fn tls_key(key: &str) -> Option<TlsKey> {
    match key {
        "sslmode" => Some(TlsKey::Mode),
        "sslrootcert" => Some(TlsKey::RootCertificates),
        _ => None,
    }
}

type Taken = (String, Vec<(TlsKey, String)>);

/// `postgres://…?a=b&sslmode=…`: the TLS parameters out of the query.
fn take_from_query(url: &str) -> Result<Taken, PortError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match tls_key(key) {
            Some(tls) => {
                let value = percent_encoding::percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|_| {
                        PortError::Rejected(format!(
                            "the database URL's {key} is not UTF-8 once decoded"
                        ))
                    })?;
                taken.push((tls, value.into_owned()));
            }
            None => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

/// `host=… sslmode=… options='…'`: the TLS pairs cut out, the others left as written.
fn take_from_pairs(url: &str) -> Result<Taken, PortError> {
    let malformed = || PortError::Rejected(format!("the database URL does not parse: {EXPECTED}"));
    let mut rest = String::with_capacity(url.len());
    let mut taken = Vec::new();
    let mut chars = url.char_indices().peekable();
    let mut copied_to = 0;
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=').ok_or_else(malformed)?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next().ok_or_else(malformed)? {
                    (_, '\'') => break,
                    (_, '\\') => value.push(chars.next().ok_or_else(malformed)?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                value.push(c);
            }
        }
        if let Some(tls) = tls_key(&key) {
            let end = chars.peek().map_or(url.len(), |(at, _)| *at);
            rest.push_str(&url[copied_to..start]);
            copied_to = end;
            taken.push((tls, value));
        }
    }
    rest.push_str(&url[copied_to..]);
    Ok((rest, taken))
}

impl DatabaseUrl {
    /// The TLS connector for this URL. Under `sslmode=disable` it is never used (tokio-postgres
    /// starts no TLS), reads no certificate and would refuse every server.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PortError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| PortError::Internal(format!("TLS setup: {e}")))?;
        let builder = match self.secure_with {
            SecureWith::Nothing => {
                let schemes = provider
                    .signature_verification_algorithms
                    .supported_schemes();
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(TlsDisabled(schemes)))
            }
            SecureWith::VerifiedChain => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyNameOf(self.verifier(provider)?))),
            SecureWith::VerifiedHost => builder.with_webpki_verifier(self.verifier(provider)?),
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
            builder.with_no_client_auth(),
        ))
    }

    /// Checks a server's certificate chain against [`Self::roots`], and its name.
    fn verifier(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<WebPkiServerVerifier>, PortError> {
        WebPkiServerVerifier::builder_with_provider(Arc::new(self.roots()?), provider)
            .build()
            .map_err(|e| PortError::Rejected(format!("the trusted certificates: {e}")))
    }

    /// The roots a server's certificate must chain to.
    fn roots(&self) -> Result<RootCertStore, PortError> {
        let mut roots = RootCertStore::empty();
        match &self.root_certificates {
            Some(path) => {
                let shown = path.display();
                let certificates = CertificateDer::pem_file_iter(path)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| {
                        PortError::Rejected(format!(
                            "sslrootcert={shown} cannot be read as PEM certificates: {e}"
                        ))
                    })?;
                let (added, _) = roots.add_parsable_certificates(certificates);
                if added == 0 {
                    return Err(PortError::Rejected(format!(
                        "sslrootcert={shown} holds no usable certificate"
                    )));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(PortError::Rejected(
                        "this system trusts no certificate authority (install ca-certificates), \
                         or name the database's CA with sslrootcert=FILE in the URL"
                            .to_owned(),
                    ));
                }
            }
        }
        Ok(roots)
    }
}

/// A verifier that checks the chain and signatures, and accepts any host name (`verify-ca`).
#[derive(Debug)]
struct AnyNameOf(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyNameOf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The verifier under `sslmode=disable`: tokio-postgres starts no TLS then, and were it to, no
/// server would pass.
#[derive(Debug)]
struct TlsDisabled(Vec<SignatureScheme>);

impl TlsDisabled {
    fn refusal() -> rustls::Error {
        rustls::Error::General("sslmode=disable: TLS is off and no server is trusted".to_owned())
    }
}

impl ServerCertVerifier for TlsDisabled {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(Self::refusal())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::refusal())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::refusal())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> DatabaseUrl {
        url.parse().unwrap()
    }

    #[test]
    fn verifies_the_host_unless_the_url_says_otherwise() {
        let url = parse("postgres://u:p@db.example.com:5432/glimpse");
        assert_eq!(url.secure_with, SecureWith::VerifiedHost);
        assert_eq!(url.config.get_ssl_mode(), SslMode::Require);
        let url = parse("host=127.0.0.1 user=postgres");
        assert_eq!(url.secure_with, SecureWith::VerifiedHost);
    }

    #[test]
    fn takes_the_tls_parameters_out_of_both_forms_and_keeps_the_rest() {
        let url = parse(
            "postgresql://u:p@db:5432/glimpse?application_name=w&sslmode=verify-ca\
             &sslrootcert=%2Fetc%2Frds%20bundle.pem&connect_timeout=5",
        );
        assert_eq!(url.secure_with, SecureWith::VerifiedChain);
        assert_eq!(
            url.root_certificates,
            Some(PathBuf::from("/etc/rds bundle.pem"))
        );
        assert_eq!(url.config.get_application_name(), Some("w"));
        assert_eq!(
            url.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );

        let url = parse(
            "host=127.0.0.1 sslmode = disable options='-c search_path=a\\'b' \
             sslrootcert='/etc/my ca.pem' dbname=test",
        );
        assert_eq!(url.secure_with, SecureWith::Nothing);
        assert_eq!(url.config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(url.root_certificates, Some(PathBuf::from("/etc/my ca.pem")));
        assert_eq!(url.config.get_options(), Some("-c search_path=a'b"));
        assert_eq!(url.config.get_dbname(), Some("test"));
    }

    #[test]
    fn refuses_modes_that_trust_any_server_and_says_what_to_use() {
        for mode in ["prefer", "require", "allow"] {
            let error = format!("postgres://u@db/g?sslmode={mode}")
                .parse::<DatabaseUrl>()
                .unwrap_err()
                .to_string();
            assert!(error.contains("verify-full"), "{error}");
        }
        let error = "host=db sslmode=verify"
            .parse::<DatabaseUrl>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a mode"), "{error}");
        let error = "host=db password='unterminated"
            .parse::<DatabaseUrl>()
            .unwrap_err()
            .to_string();
        assert!(
            !error.contains("unterminated"),
            "never repeats the URL: {error}"
        );
    }

    /// libpq ignores certificates under `sslmode=disable`, and a machine without a CA bundle (a
    /// slim container beside its database) still connects.
    #[test]
    fn with_tls_disabled_no_certificate_is_read() {
        let url = parse("host=db sslmode=disable sslrootcert=/nonexistent/ca.pem");
        assert!(url.connector().is_ok());
    }

    #[test]
    fn a_root_certificate_file_that_is_not_one_is_a_clear_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "not a certificate").unwrap();
        let url = parse(&format!("host=db sslrootcert='{}'", file.path().display()));
        let error = url.connector().err().unwrap().to_string();
        assert!(error.contains("sslrootcert="), "{error}");
        let missing = parse("host=db sslrootcert=/nonexistent/ca.pem");
        let error = missing.connector().err().unwrap().to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
