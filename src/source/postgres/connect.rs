//! Connecting to Postgres: the connection string, the standard `PG*` environment
//! variables for what it leaves out, the password from a variable or a file, TLS with
//! rustls, and which server errors are worth retrying.
//!
//! Messages built here name the host, port, database and user, never the password.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Deserialize;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;

use crate::source::{ErrorClass, SourceError};
use crate::value::{EnvVar, SecretFile, SecretRef};

/// `sslmode`, as libpq spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without checking its certificate (libpq's default).
    Prefer,
    /// TLS or nothing, without checking the certificate (as libpq does without a root
    /// certificate).
    Require,
    /// TLS, with the certificate checked against the trusted roots and the host name.
    VerifyFull,
}

impl TlsMode {
    fn parse(text: &str) -> Option<TlsMode> {
        match text {
            "disable" => Some(TlsMode::Disable),
            "allow" | "prefer" => Some(TlsMode::Prefer),
            "require" => Some(TlsMode::Require),
            "verify-full" => Some(TlsMode::VerifyFull),
            _ => None,
        }
    }
}

/// What the source config says about the connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectSettings {
    pub connection: Option<String>,
    pub password_env: Option<EnvVar>,
    pub password_file: Option<SecretFile>,
    pub sslmode: Option<TlsMode>,
    pub sslrootcert: Option<std::path::PathBuf>,
}

/// A resolved connection: the driver's config plus how to do TLS.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: TlsMode,
    pub rootcert: Option<std::path::PathBuf>,
}

impl Target {
    /// `user@host:port/dbname`, for messages.
    pub fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{}@{host}:{port}/{}",
            self.config.get_user().unwrap_or("?"),
            self.config.get_dbname().unwrap_or("?")
        )
    }
}

/// Takes `sslmode` out of a connection string: the driver knows only disable, prefer
/// and require, and the source does certificate checks itself. Returns the string the
/// driver can parse and the mode found, if any.
fn split_sslmode(connection: &str) -> (String, Option<String>) {
    let is_url = connection.starts_with("postgres://") || connection.starts_with("postgresql://");
    if is_url {
        let Some((base, query)) = connection.split_once('?') else {
            return (connection.to_string(), None);
        };
        let mut mode = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.strip_prefix("sslmode=") {
                Some(m) => {
                    mode = Some(m.to_string());
                    false
                }
                None => true,
            })
            .collect();
        let rebuilt = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        (rebuilt, mode)
    } else {
        // Cut only the `sslmode=value` pair, so that quoted values elsewhere (a
        // password with spaces) stay exactly as written.
        let bytes = connection.as_bytes();
        let mut at = 0;
        while let Some(found) = connection[at..].find("sslmode") {
            let start = at + found;
            at = start + "sslmode".len();
            if start > 0 && !bytes[start - 1].is_ascii_whitespace() {
                continue;
            }
            let rest = connection[at..].trim_start();
            let Some(value) = rest.strip_prefix('=') else { continue };
            let value = value.trim_start();
            let len = value.find(char::is_whitespace).unwrap_or(value.len());
            let end = connection.len() - value.len() + len;
            let mode = value[..len].trim_matches('\'').to_string();
            let rebuilt = format!("{} {}", connection[..start].trim_end(), connection[end..].trim_start());
            return (rebuilt.trim().to_string(), Some(mode));
        }
        (connection.to_string(), None)
    }
}

/// Checks the connection settings without touching the network or the environment.
pub fn validate(settings: &ConnectSettings) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    if let Some(connection) = &settings.connection {
        let (rest, mode) = split_sslmode(connection);
        if let Some(mode) = mode
            && TlsMode::parse(&mode).is_none()
        {
            errors.push((
                "connection".into(),
                format!("sslmode `{mode}` is not supported (use disable, prefer, require or verify-full)"),
            ));
        }
        // The driver's parse errors name the option, never its value.
        if let Err(e) = rest.parse::<tokio_postgres::Config>() {
            errors.push(("connection".into(), format!("not a valid connection string or URL: {e}")));
        }
    }
    errors.extend(SecretRef::validate_pair(
        "password",
        settings.password_env.as_ref(),
        settings.password_file.as_ref(),
    ));
    errors
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Builds the connection from the settings and the environment (read at every connect,
/// so a rotated password file is picked up on reconnect).
pub fn resolve(settings: &ConnectSettings) -> Result<Target, SourceError> {
    let (rest, string_mode) = settings.connection.as_deref().map_or((String::new(), None), split_sslmode);
    let mut config: tokio_postgres::Config = if rest.trim().is_empty() {
        tokio_postgres::Config::new()
    } else {
        rest.parse().map_err(|e| {
            SourceError::needs_attention(format!("connection string is not valid: {e}")).with_source(e)
        })?
    };
    // What the string leaves out comes from the standard libpq variables.
    if config.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(hosts) => {
                for host in hosts.split(',') {
                    config.host(host);
                }
            }
            None => {
                config.host("localhost");
            }
        }
    }
    if config.get_ports().is_empty()
        && let Some(port) = env("PGPORT")
    {
        let port: u16 = port
            .parse()
            .map_err(|_| SourceError::needs_attention(format!("PGPORT `{port}` is not a port number")))?;
        config.port(port);
    }
    if config.get_user().is_none() {
        let user = env("PGUSER").or_else(|| env("USER")).unwrap_or_else(|| "postgres".into());
        config.user(&user);
    }
    if config.get_dbname().is_none() {
        let db = env("PGDATABASE").or_else(|| config.get_user().map(str::to_string)).unwrap_or_default();
        config.dbname(&db);
    }
    if let Some(password) =
        SecretRef::from_pair("password", settings.password_env.as_ref(), settings.password_file.as_ref())
    {
        let password = password.read().map_err(|e| SourceError::needs_attention(e.to_string()))?;
        config.password(password.expose());
    } else if config.get_password().is_none()
        && let Some(password) = env("PGPASSWORD")
    {
        config.password(password);
    }
    if config.get_connect_timeout().is_none() {
        let seconds = env("PGCONNECT_TIMEOUT").and_then(|s| s.parse().ok()).unwrap_or(10);
        config.connect_timeout(Duration::from_secs(seconds));
    }
    // A server that vanishes without closing the connection (a network partition, a
    // host that died) is noticed within about a minute instead of the kernel's two
    // hours, so the watcher reconnects rather than waiting on a dead socket.
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(30));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(10));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    if config.get_application_name().is_none() {
        config.application_name("highwater");
    }
    let mode_text = string_mode.or_else(|| env("PGSSLMODE"));
    let tls = match settings.sslmode {
        Some(mode) => mode,
        None => match mode_text {
            Some(text) => TlsMode::parse(&text).ok_or_else(|| {
                SourceError::needs_attention(format!(
                    "sslmode `{text}` is not supported (use disable, prefer, require or verify-full)"
                ))
            })?,
            None => TlsMode::Prefer,
        },
    };
    config.ssl_mode(match tls {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyFull => SslMode::Require,
    });
    let rootcert = settings.sslrootcert.clone().or_else(|| env("PGSSLROOTCERT").map(Into::into));
    Ok(Target { config, tls, rootcert })
}

/// Opens a connection and runs its driver task. The client errors with `is_closed()`
/// once the connection is gone.
pub async fn connect(target: &Target) -> Result<tokio_postgres::Client, SourceError> {
    let place = target.describe();
    let fail = |e: tokio_postgres::Error| {
        let class = classify(&e);
        SourceError {
            class,
            message: format!("cannot connect to {place}: {}", message(&e)),
            source: Some(Box::new(e)),
        }
    };
    if target.tls == TlsMode::Disable {
        let (client, connection) = target.config.connect(tokio_postgres::NoTls).await.map_err(fail)?;
        spawn(connection);
        return Ok(client);
    }
    crate::init_tls();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(target)?);
    let (client, connection) = target.config.connect(tls).await.map_err(fail)?;
    spawn(connection);
    Ok(client)
}

fn spawn<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "Postgres connection ended.");
        }
    });
}

fn client_config(target: &Target) -> Result<rustls::ClientConfig, SourceError> {
    let builder = rustls::ClientConfig::builder();
    if target.tls != TlsMode::VerifyFull {
        // libpq's prefer and require encrypt without checking who answers.
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &target.rootcert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                SourceError::needs_attention(format!("cannot read sslrootcert {}: {e}", path.display()))
            })?;
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    SourceError::needs_attention(format!("sslrootcert {} is not PEM: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    SourceError::needs_attention(format!("sslrootcert {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err(SourceError::needs_attention(
            "sslmode verify-full: no trusted root certificates (set sslrootcert)",
        ));
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Accepts any server certificate (sslmode prefer/require), still checking the
/// handshake signatures so the session keys are sound.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// The server's own message for a failed query or connection (the driver's Display
/// says only "db error"), plus its detail and hint when there are any.
pub fn message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_string();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                text.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            text
        }
    }
}

/// Which failures pass by themselves: a lost connection, a server shutting down or
/// starting, too many connections, a cancelled (`statement_timeout`) or conflicting
/// query; a lock another session holds past `lock_timeout` is waited out the same way,
/// but shown as its own state. Everything the server rejects for a reason an operator
/// must fix (a missing table, column or database, a privilege, a password, bad SQL in
/// `where`) needs attention.
pub fn classify(error: &tokio_postgres::Error) -> ErrorClass {
    let Some(code) = error.code() else {
        return ErrorClass::Transient; // I/O, closed connection, timeout
    };
    let class = &code.code()[..2];
    if *code == SqlState::LOCK_NOT_AVAILABLE {
        ErrorClass::Waiting
    } else if matches!(class, "08" | "57" | "53" | "40" | "58") {
        ErrorClass::Transient
    } else {
        ErrorClass::NeedsAttention
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_urls_and_keyword_strings() {
        assert_eq!(
            split_sslmode("postgres://u@h/db?sslmode=verify-full&connect_timeout=5"),
            ("postgres://u@h/db?connect_timeout=5".to_string(), Some("verify-full".into()))
        );
        assert_eq!(
            split_sslmode("host=h sslmode=require dbname=x"),
            ("host=h dbname=x".to_string(), Some("require".into()))
        );
        assert_eq!(split_sslmode("postgres://h/db"), ("postgres://h/db".to_string(), None));
        assert_eq!(
            split_sslmode("password='a  b' sslmode = 'verify-full'"),
            ("password='a  b'".to_string(), Some("verify-full".into()))
        );
    }

    #[test]
    fn bad_settings_are_reported_without_the_password() {
        let settings = ConnectSettings {
            connection: Some("postgres://u:sekret@h/db?sslmode=verify-ca".into()),
            password_env: Some(EnvVar::new("A").unwrap()),
            password_file: Some(SecretFile::parse("/x").unwrap()),
            sslmode: None,
            sslrootcert: None,
        };
        let errors = validate(&settings);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|(_, m)| !m.contains("sekret")));
    }
}
