//! The command line of the `echo-client` binary, as a library item so that
//! its parsing (and its error messages) can be tested and reused.
//!
//! ```
//! use clap::Parser;
//! use echo_client::cli::Args;
//!
//! let args = Args::try_parse_from(["echo-client", "--id", "1", "--count", "3"]).unwrap();
//! assert_eq!(args.count, Some(3));
//! assert_eq!(args.config().prefix(), "discovery/dev/game");
//!
//! let err = Args::try_parse_from(["echo-client", "--concurrency", "0", "--duration", "1s"]);
//! assert_eq!(err.unwrap_err().exit_code(), 2);
//!
//! // The etcd password comes from the environment (ETCD_PASSWORD), never
//! // from a flag; a user without it is a usage error.
//! let err = Args::try_parse_with_password(["echo-client", "--etcd-user", "game"], None);
//! assert_eq!(err.unwrap_err().exit_code(), 2);
//! ```

use std::{path::PathBuf, time::Duration};

use balancer::Fallback;
use clap::{CommandFactory, Parser, ValueEnum};
use cli_support::{EtcdAuth, Password, key_segment, non_empty};
pub use cli_support::{
    PASSWORD_ENV, cert_file, duration, etcd_url, exit_on_usage_error, key_file, one_line,
};
use rustls_pki_types::ServerName;

use crate::{Config, DEFAULT_ETCD_ENDPOINT, Lb};

/// The flags of `echo-client`; see the [module docs](self) for an example.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "echo-client",
    about = "Calls grpc.examples.echo.Echo on the instances registered in etcd under \
             discovery/<env>/<service>, round robin or pinned to one instance (--id); \
             load mode with --concurrency and --duration.",
    version,
    long_about = None
)]
pub struct Args {
    /// Serve Prometheus metrics at http://ADDR/metrics while running.
    #[arg(long, value_name = "ADDR", value_parser = cli_support::socket_addr)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Pin every call to this instance id (sticky).
    #[arg(long, value_parser = non_empty)]
    pub id: Option<String>,
    /// Environment: the key prefix is discovery/ENV/SERVICE.
    #[arg(long, default_value = "dev", value_parser = key_segment)]
    pub env: String,
    /// Service name: the key prefix is discovery/ENV/SERVICE.
    #[arg(long, default_value = "game", value_parser = key_segment)]
    pub service: String,
    /// etcd client URL; repeat for several (or a comma list).
    #[arg(
        long = "etcd",
        value_name = "URL",
        env = "ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = DEFAULT_ETCD_ENDPOINT,
        value_parser = etcd_url,
    )]
    pub etcd: Vec<String>,
    /// The message to send.
    #[arg(long, default_value = "hi")]
    pub message: String,
    /// Pause between two calls.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub interval: Duration,
    /// Stop after this many calls (default: run until killed).
    #[arg(long, value_parser = count, conflicts_with = "concurrency")]
    pub count: Option<u64>,
    /// What a sticky call does when its instance is unavailable: go round
    /// robin (rr) or fail (fail).
    #[arg(long, value_enum, default_value = "rr")]
    pub fallback: FallbackArg,
    /// Client-side health checking: watch grpc.health.v1 for SERVICE on
    /// every server (default grpc.examples.echo.Echo); a server reporting
    /// NOT_SERVING (e.g. draining) gets no new calls at once.
    #[arg(long, value_name = "SERVICE", num_args = 0..=1, default_missing_value = "grpc.examples.echo.Echo")]
    pub health_check: Option<String>,
    /// Balancing policy of the calls that are not sticky: round-robin,
    /// least-request (fewest calls in flight of two random instances) or
    /// ring-hash (consistent hash of --hash-key).
    #[arg(long, value_enum, default_value = "round-robin")]
    pub lb: LbArg,
    /// The key ring-hash hashes to pick the instance (required with
    /// --lb ring-hash, refused otherwise).
    #[arg(long, value_name = "KEY", value_parser = non_empty, required_if_eq("lb", "ring-hash"))]
    pub hash_key: Option<String>,
    /// Send --hash-key as this request header (e.g. x-player-id) and let
    /// ring-hash hash the header (gRFC A76's request_hash_header) instead
    /// of a request extension; the instance is the same.
    #[arg(long, value_name = "NAME", value_parser = header_name, requires = "hash_key")]
    pub hash_header: Option<String>,
    /// Load mode: this many calls in flight at all times (closed loop).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..10_000), requires = "duration")]
    pub concurrency: Option<u64>,
    /// Load mode: how long to run.
    #[arg(long, value_parser = positive_duration, requires = "concurrency")]
    pub duration: Option<Duration>,
    /// etcd TLS: PEM file of the CA that signed etcd's certificate (use
    /// https:// endpoints).
    #[arg(long, value_name = "PEM", value_parser = cert_file)]
    pub etcd_ca: Option<PathBuf>,
    /// etcd TLS: PEM file of a client certificate, for an etcd started with
    /// --client-cert-auth (with --etcd-key and --etcd-ca).
    #[arg(long, value_name = "PEM", value_parser = cert_file, requires = "etcd_key", requires = "etcd_ca")]
    pub etcd_cert: Option<PathBuf>,
    /// etcd TLS: PEM file of the private key of --etcd-cert.
    #[arg(long, value_name = "PEM", value_parser = key_file, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user to authenticate as; the password is read from the
    /// environment variable ETCD_PASSWORD (never from a flag).
    #[arg(long, value_name = "USER", value_parser = non_empty)]
    pub etcd_user: Option<String>,
    /// The password of --etcd-user, from ETCD_PASSWORD (see
    /// [`Args::try_parse_with_password`]); never printed.
    #[arg(skip)]
    pub etcd_password: Option<Password>,
    /// gRPC TLS: PEM file of the CA that signed the servers' certificates;
    /// without it the client speaks plaintext HTTP/2.
    #[arg(long, value_name = "PEM", value_parser = tls_ca_file)]
    pub tls_ca: Option<PathBuf>,
    /// gRPC TLS: the name the servers' certificates must hold (default: the
    /// host of each registered address).
    #[arg(long, value_name = "NAME", value_parser = tls_domain, requires = "tls_ca")]
    pub tls_domain: Option<String>,
}

/// `--fallback` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FallbackArg {
    /// Where --lb picks (round robin by default: the Go seed's behaviour).
    Rr,
    /// Fail the call with UNAVAILABLE, naming the id.
    Fail,
}

/// `--lb` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LbArg {
    /// Round robin over the ready instances (the default).
    RoundRobin,
    /// The instance with fewer calls in flight of two picked at random.
    LeastRequest,
    /// Consistent hashing of --hash-key: one key, one instance.
    RingHash,
}

impl From<LbArg> for Lb {
    fn from(lb: LbArg) -> Self {
        match lb {
            LbArg::RoundRobin => Lb::RoundRobin,
            LbArg::LeastRequest => Lb::LeastRequest,
            LbArg::RingHash => Lb::RingHash,
        }
    }
}

impl From<FallbackArg> for Fallback {
    fn from(f: FallbackArg) -> Self {
        match f {
            FallbackArg::Rr => Fallback::RoundRobin,
            FallbackArg::Fail => Fallback::Fail,
        }
    }
}

impl Args {
    /// Parses the process arguments; on a bad flag or value prints one line
    /// on stderr and exits with code 2 (`--help` and `--version` print and
    /// exit 0).
    pub fn parse_or_exit() -> Self {
        cli_support::parse_or_exit(Self::try_parse_with_password)
    }

    /// Parses `args` like [`Parser::try_parse_from`], then takes the etcd
    /// password of `--etcd-user` from `password` (the value of
    /// `ETCD_PASSWORD`).
    ///
    /// `--etcd-user` without a password, or with an empty one, is a usage
    /// error (exit code 2); a password without `--etcd-user` is ignored.
    pub fn try_parse_with_password<I, T>(
        args: I,
        password: Option<String>,
    ) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args = Self::try_parse_from(args)?;
        if args.hash_key.is_some() && args.lb != LbArg::RingHash {
            return Err(usage_error(
                "--hash-key is only used by --lb ring-hash (it picks the instance by the key)",
            ));
        }
        args.etcd_password =
            cli_support::etcd_password(args.etcd_user.as_deref(), password).map_err(usage_error)?;
        Ok(args)
    }

    /// The client [`Config`] these arguments describe.
    pub fn config(&self) -> Config {
        Config {
            id: self.id.clone(),
            env: self.env.clone(),
            service: self.service.clone(),
            etcd: self.etcd.clone(),
            fallback: self.fallback.into(),
            lb: self.lb.into(),
            hash_key: self.hash_key.clone(),
            hash_header: self.hash_header.clone(),
            etcd_ca: self.etcd_ca.clone(),
            etcd_client_cert: self.etcd_cert.clone().zip(self.etcd_key.clone()),
            etcd_auth: self
                .etcd_user
                .clone()
                .zip(self.etcd_password.clone())
                .map(|(user, password)| EtcdAuth { user, password }),
            tls_ca: self.tls_ca.clone(),
            tls_domain: self.tls_domain.clone(),
            health_check: self.health_check.clone(),
            ..Config::default()
        }
    }

    /// `Some((concurrency, duration))` in load mode.
    pub fn load(&self) -> Option<(usize, Duration)> {
        let c = usize::try_from(self.concurrency?).ok()?;
        Some((c, self.duration?))
    }
}

/// A usage error (exit code 2) with `message`, shown as
/// `error: <message>`.
fn usage_error(message: impl std::fmt::Display) -> clap::Error {
    cli_support::usage_error(Args::command(), message)
}

fn count(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number of calls, at least 1".into()),
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        Err("must be more than zero".into())
    } else {
        Ok(d)
    }
}

/// [`cert_file`] whose certificates rustls accepts as trust anchors
/// (`--tls-ca`).
pub fn tls_ca_file(s: &str) -> Result<PathBuf, String> {
    let path = cert_file(s)?;
    let pem = std::fs::read(&path).map_err(|e| format!("cannot read it: {e}"))?;
    balancer::TlsConfig::from_pem(&pem).map_err(|e| e.to_string())?;
    Ok(path)
}

/// A TLS server name: a DNS name or an IP address (`--tls-domain`).
pub fn tls_domain(s: &str) -> Result<String, String> {
    ServerName::try_from(s)
        .map(|_| s.to_owned())
        .map_err(|_| "expected a DNS name or an IP address, such as echo.internal".into())
}

/// A request header name ring hash can read: lower-case, no pseudo-header.
fn header_name(value: &str) -> Result<String, String> {
    match http::HeaderName::from_bytes(value.as_bytes()) {
        Ok(name) if !name.as_str().starts_with("grpc-") => Ok(name.as_str().to_owned()),
        Ok(_) => Err(format!(
            "{value:?} is reserved by gRPC (grpc-*): choose e.g. x-player-id"
        )),
        Err(_) => Err(format!(
            "{value:?} is not a valid header name (e.g. x-player-id)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::try_parse_from(std::iter::once("echo-client").chain(args.iter().copied()))
            .map_err(|e| one_line(&e))
    }

    #[test]
    fn defaults_match_the_design() {
        let args = parse(&[]).unwrap();
        let mut config = args.config();
        // `--etcd` falls back to ETCD_ENDPOINTS, which `cargo xtask test` sets.
        if std::env::var_os("ETCD_ENDPOINTS").is_none() {
            assert_eq!(config.etcd, Config::default().etcd);
        }
        config.etcd = Config::default().etcd;
        assert_eq!(config, Config::default());
        assert_eq!(args.message, "hi");
        assert_eq!(args.interval, Duration::from_secs(1));
        assert_eq!((args.count, args.load()), (None, None));
    }

    #[test]
    fn concurrency_zero_is_rejected_in_one_line() {
        let err = parse(&["--concurrency", "0", "--duration", "1s"]).unwrap_err();
        assert_eq!(
            err,
            "error: invalid value '0' for '--concurrency <CONCURRENCY>': 0 is not in 1..10000"
        );
    }

    #[test]
    fn count_must_be_at_least_one() {
        let err = parse(&["--count", "0"]).unwrap_err();
        assert_eq!(
            err,
            "error: invalid value '0' for '--count <COUNT>': must be at least 1"
        );
        let err = parse(&["--count", "many"]).unwrap_err();
        assert!(
            err.ends_with("expected a whole number of calls, at least 1"),
            "{err}"
        );
    }

    #[test]
    fn load_mode_needs_both_flags() {
        let err = parse(&["--concurrency", "4"]).unwrap_err();
        assert!(err.contains("--duration <DURATION>"), "{err}");
        let args = parse(&["--concurrency", "4", "--duration", "2s"]).unwrap();
        assert_eq!(args.load(), Some((4, Duration::from_secs(2))));
    }

    #[test]
    fn fallback_takes_rr_or_fail() {
        assert_eq!(
            parse(&["--fallback", "fail"]).unwrap().config().fallback,
            Fallback::Fail
        );
        let err = parse(&["--fallback", "random"]).unwrap_err();
        assert!(
            err.starts_with("error: invalid value 'random' for '--fallback <FALLBACK>'"),
            "{err}"
        );
    }

    #[test]
    fn lb_takes_a_policy_and_ring_hash_needs_a_key() {
        assert_eq!(parse(&[]).unwrap().config().lb, Lb::RoundRobin);
        let config = parse_pw(&["--lb", "least-request"], None).unwrap().config();
        assert_eq!((config.lb, config.hash_key), (Lb::LeastRequest, None));
        let config = parse_pw(&["--lb", "ring-hash", "--hash-key", "p1"], None)
            .unwrap()
            .config();
        assert_eq!(config.lb, Lb::RingHash);
        assert_eq!(config.hash_key.as_deref(), Some("p1"));
        let config = parse_pw(
            &[
                "--lb",
                "ring-hash",
                "--hash-key",
                "p1",
                "--hash-header",
                "X-Player-Id",
            ],
            None,
        )
        .expect("header")
        .config();
        assert_eq!(config.hash_header.as_deref(), Some("x-player-id"));
        for (bad, says) in [
            ("bad header", "is not a valid header name"),
            ("grpc-timeout", "is reserved by gRPC"),
        ] {
            let err = parse_pw(
                &[
                    "--lb",
                    "ring-hash",
                    "--hash-key",
                    "p1",
                    "--hash-header",
                    bad,
                ],
                None,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(says), "{err}");
        }
        let err = parse_pw(&["--lb", "ring-hash", "--hash-header", "x-p"], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--hash-key"), "{err}");

        let err = parse_pw(&["--lb", "ring-hash"], None).unwrap_err();
        assert_eq!(
            err,
            "error: the following required arguments were not provided: --hash-key <KEY>"
        );
        let err = parse_pw(&["--hash-key", "p1"], None).unwrap_err();
        assert_eq!(
            err,
            "error: --hash-key is only used by --lb ring-hash (it picks the instance by the key)"
        );
        let err = parse(&["--lb", "random"]).unwrap_err();
        assert!(
            err.starts_with("error: invalid value 'random' for '--lb <LB>'"),
            "{err}"
        );
        for bad in [&["--lb", "ring-hash"][..], &["--hash-key", "p1"]] {
            let err = Args::try_parse_with_password(
                std::iter::once("echo-client").chain(bad.iter().copied()),
                None,
            )
            .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn etcd_must_be_a_url() {
        let err = parse(&["--etcd", "not-a-url"]).unwrap_err();
        assert_eq!(
            err,
            "error: invalid value 'not-a-url' for '--etcd <URL>': not an etcd URL: \
             expected one such as http://127.0.0.1:2379"
        );
    }

    #[test]
    fn bad_interval_says_what_is_expected() {
        let err = parse(&["--interval", "5 parsecs"]).unwrap_err();
        assert!(
            err.ends_with("expected a duration such as 200ms, 1s or 2m"),
            "{err}"
        );
    }

    fn parse_pw(args: &[&str], password: Option<&str>) -> Result<Args, String> {
        Args::try_parse_with_password(
            std::iter::once("echo-client").chain(args.iter().copied()),
            password.map(str::to_owned),
        )
        .map_err(|e| one_line(&e))
    }

    #[test]
    fn etcd_user_needs_a_password_from_the_environment() {
        let err = parse_pw(&["--etcd-user", "game"], None).unwrap_err();
        assert_eq!(
            err,
            "error: --etcd-user game needs its password in the environment variable \
             ETCD_PASSWORD, which is not set"
        );
        let err = parse_pw(&["--etcd-user", "game"], Some("")).unwrap_err();
        assert!(err.ends_with("which is empty"), "{err}");
        let args = parse_pw(&["--etcd-user", "game"], Some("hunter2")).unwrap();
        assert!(!format!("{args:?}").contains("hunter2"));
        assert!(!format!("{:?}", args.clone().config()).contains("hunter2"));
        let err = parse(&["--etcd-password", "x"]).unwrap_err();
        assert!(
            err.starts_with("error: unexpected argument '--etcd-password'"),
            "{err}"
        );
    }

    #[test]
    fn pem_files_are_checked_when_parsing() {
        let err = parse(&["--etcd-ca", "/nonexistent/ca.pem"]).unwrap_err();
        assert_eq!(
            err,
            "error: invalid value '/nonexistent/ca.pem' for '--etcd-ca <PEM>': cannot read it: \
             No such file or directory (os error 2)"
        );
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let err = parse(&["--etcd-ca", manifest]).unwrap_err();
        assert!(
            err.ends_with(
                "no certificate in it: expected a PEM file with a \"-----BEGIN CERTIFICATE-----\" block"
            ),
            "{err}"
        );
        let err = parse(&["--etcd-key", manifest]).unwrap_err();
        assert!(err.contains("no private key in it"), "{err}");
    }

    #[test]
    fn health_check_takes_an_optional_service_name() {
        let parse = |args: &[&str]| {
            Args::try_parse_from(std::iter::once("echo-client").chain(args.iter().copied()))
                .expect("parse")
                .config()
                .health_check
        };
        assert_eq!(parse(&[]), None);
        assert_eq!(
            parse(&["--health-check"]).as_deref(),
            Some("grpc.examples.echo.Echo")
        );
        assert_eq!(parse(&["--health-check", ""]).as_deref(), Some(""));
        assert_eq!(
            parse(&["--health-check", "game.Game"]).as_deref(),
            Some("game.Game")
        );
    }
}
