//! What the `echo-server` and `echo-client` command lines share: value
//! parsers for clap (durations, etcd URLs, PEM files, key segments), usage
//! errors printed as one line with exit code 2, the parsing and tokio
//! runtime steps of `main`, the logging setup, and the
//! Prometheus endpoint of `--metrics` ([`serve_metrics`]).
//!
//! One job: keep the two binaries' flags behaving and failing alike. Must
//! not depend on etcd, tonic or the other crates of this workspace.
//!
//! ```
//! assert_eq!(cli_support::duration("200ms"), Ok(std::time::Duration::from_millis(200)));
//! assert!(cli_support::etcd_url("not-a-url").is_err());
//! assert_eq!(cli_support::key_segment("dev"), Ok("dev".to_string()));
//! ```

use std::{
    fmt,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::Duration,
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tracing_subscriber::EnvFilter;

/// The environment variable the etcd password is read from (never a flag).
pub const PASSWORD_ENV: &str = "ETCD_PASSWORD";

/// An etcd user and its password. `Debug` never shows the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdAuth {
    /// The user name.
    pub user: String,
    /// Its password.
    pub password: Password,
}

/// A password: kept out of `Debug` output (shown as `<redacted>`) and
/// without `Display`, so that it is not logged by mistake.
///
/// ```
/// let p = cli_support::Password::new("hunter2");
/// assert_eq!(format!("{p:?}"), "<redacted>");
/// assert_eq!(p.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps `password`.
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password itself, to hand to the etcd client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The value of [`PASSWORD_ENV`]; `Err` with a message when it is not
/// UTF-8.
pub fn password_from_env() -> Result<Option<String>, String> {
    match std::env::var_os(PASSWORD_ENV).map(std::ffi::OsString::into_string) {
        None => Ok(None),
        Some(Ok(password)) => Ok(Some(password)),
        Some(Err(_)) => Err(format!("{PASSWORD_ENV} is not valid UTF-8")),
    }
}

/// The password of `--etcd-user`, from `password` (the value of
/// [`PASSWORD_ENV`]): a user without a password, or with an empty one, is a
/// usage error (the message says which); a password without a user is
/// ignored.
pub fn etcd_password(
    user: Option<&str>,
    password: Option<String>,
) -> Result<Option<Password>, String> {
    let Some(user) = user else {
        return Ok(None);
    };
    let state = match password {
        Some(p) if !p.is_empty() => return Ok(Some(Password::new(p))),
        Some(_) => "empty",
        None => "not set",
    };
    Err(format!(
        "--etcd-user {user} needs its password in the environment variable {PASSWORD_ENV}, \
         which is {state}"
    ))
}

/// A usage error of `command` (exit code 2), shown as `error: <message>`.
pub fn usage_error(mut command: clap::Command, message: impl fmt::Display) -> clap::Error {
    command.error(clap::error::ErrorKind::ArgumentConflict, message)
}

/// Logs with `tracing` to stderr, at `RUST_LOG` or `info`, colored only on a
/// terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// `grpc.client.attempt.duration` buckets in seconds: gRFC A66's latency
/// boundaries.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// Installs the Prometheus exporter as the `metrics` recorder and serves the
/// text format on `addr` (`GET /metrics`, any path but `/health`), on the
/// current tokio runtime. The libraries only record through the `metrics`
/// facade; this is where a program picks the exporter. Fails (one line)
/// when `addr` cannot be bound or a recorder is already installed.
pub fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full("grpc.client.attempt.duration".into()),
            LATENCY_BUCKETS,
        )
        .and_then(PrometheusBuilder::install)
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    tracing::info!("metrics on http://{addr}/metrics");
    Ok(())
}

/// A socket address, `127.0.0.1:9100` or `[::1]:9100`: what `--metrics`
/// takes.
///
/// ```
/// assert!(cli_support::socket_addr("127.0.0.1:9100").is_ok());
/// assert!(cli_support::socket_addr("localhost").is_err());
/// ```
pub fn socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        "expected an IP address and a port, such as 127.0.0.1:9100 or [::1]:9100".into()
    })
}

/// Parses the process arguments with `parse(args, password)` (the value of
/// [`PASSWORD_ENV`] as `password`); on a bad flag or value prints one line
/// on stderr and exits with code 2 (`--help` and `--version` print and exit
/// 0). A password that is not UTF-8 is a usage error too, reported after
/// the flags' own errors.
///
/// ```no_run
/// #[derive(clap::Parser)]
/// struct Args {
///     #[arg(long)]
///     etcd_user: Option<String>,
/// }
///
/// let args: Args = cli_support::parse_or_exit(|args, password| {
///     use clap::Parser as _;
///     let parsed = Args::try_parse_from(args)?;
///     cli_support::etcd_password(parsed.etcd_user.as_deref(), password)
///         .map_err(|m| cli_support::usage_error(<Args as clap::CommandFactory>::command(), m))?;
///     Ok(parsed)
/// });
/// ```
pub fn parse_or_exit<A: clap::Parser>(
    parse: impl FnOnce(std::env::ArgsOs, Option<String>) -> Result<A, clap::Error>,
) -> A {
    let parsed = match password_from_env() {
        Ok(password) => parse(std::env::args_os(), password),
        Err(message) => A::try_parse().and_then(|_| Err(usage_error(A::command(), message))),
    };
    parsed.unwrap_or_else(|e| exit_on_usage_error(&e))
}

/// A multi-threaded tokio runtime for a binary's `main`; when there is
/// none to be had, prints one line on stderr and exits with code 1.
///
/// ```
/// let runtime = cli_support::runtime_or_exit();
/// assert_eq!(runtime.block_on(async { 1 + 1 }), 2);
/// ```
pub fn runtime_or_exit() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap_or_else(|e| {
        eprintln!("error: cannot start the tokio runtime: {e}");
        std::process::exit(1)
    })
}

/// Prints a clap error as one line on stderr (help and version as they are)
/// and exits with its code: 2 for usage errors.
pub fn exit_on_usage_error(e: &clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    eprintln!("{}", one_line(e));
    std::process::exit(e.exit_code());
}

/// The first paragraph of a clap error on one line, without the usage and
/// the "try --help" footer.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    text.lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value that is not blank.
pub fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

/// One segment of an etcd key (`--env`, `--service`): no `/`, no spaces.
pub fn key_segment(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains('/') || s.chars().any(char::is_whitespace) {
        Err("expected a non-empty name without '/' or spaces, such as dev or game".into())
    } else {
        Ok(s.to_owned())
    }
}

/// A humantime duration: `0ms`, `200ms`, `1s`, `2m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}: expected a duration such as 200ms, 1s or 2m"))
}

/// A readable PEM file holding at least one certificate (`--etcd-ca`,
/// `--etcd-cert`, `--tls-cert`, `--tls-ca`).
pub fn cert_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    let pem = read(&path)?;
    let mut certs = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| format!("not a valid PEM file: {e}"))?;
        certs += 1;
    }
    if certs == 0 {
        return Err(
            "no certificate in it: expected a PEM file with a \"-----BEGIN CERTIFICATE-----\" block"
                .into(),
        );
    }
    Ok(path)
}

/// A readable PEM file holding a private key (`--etcd-key`, `--tls-key`).
pub fn key_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    let pem = read(&path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(path),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(
            "no private key in it: expected a PEM file with a \"-----BEGIN PRIVATE KEY-----\" \
             (or RSA/EC PRIVATE KEY) block"
                .into(),
        ),
        Err(e) => Err(format!("not a valid PEM file: {e}")),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))
}

/// An etcd client URL: `http://host:port` or `https://host:port`.
pub fn etcd_url(s: &str) -> Result<String, String> {
    let bad = || "not an etcd URL: expected one such as http://127.0.0.1:2379".to_string();
    let s = s.trim();
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', ' ', '@']) {
        return Err(bad());
    }
    // host, host:port, [v6]:port
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (authority, None),
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(bad());
    }
    Ok(s.to_owned())
}
