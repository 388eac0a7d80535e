//! The command line of the `echo-server` binary, as a library item so that
//! its parsing (and its error messages) can be tested and reused.
//!
//! ```
//! use clap::Parser;
//! use echo_server::cli::Args;
//!
//! let args = Args::try_parse_from(["echo-server", "--id", "1", "--ttl", "10s"]).unwrap();
//! let config = args.into_config();
//! assert_eq!(config.prefix(), "discovery/dev/game");
//! assert_eq!(config.ttl, std::time::Duration::from_secs(10));
//!
//! let err = Args::try_parse_from(["echo-server", "--id", "1", "--ttl", "0"]).unwrap_err();
//! assert_eq!(err.exit_code(), 2);
//!
//! // The etcd password comes from the environment (ETCD_PASSWORD), never
//! // from a flag; a user without it is a usage error.
//! let err = Args::try_parse_with_password(["echo-server", "--id", "1", "--etcd-user", "game"], None)
//!     .unwrap_err();
//! assert_eq!(err.exit_code(), 2);
//! ```

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{CommandFactory, Parser};
use cli_support::{EtcdAuth, Password, key_segment, non_empty};
pub use cli_support::{
    PASSWORD_ENV, cert_file, duration, etcd_url, exit_on_usage_error, key_file, one_line,
};

use crate::{Advertise, Config};

/// Smallest accepted `--ttl` (etcd leases are whole seconds; the registry
/// wants at least 2 s so that a keepalive fits in).
pub const MIN_TTL: Duration = registry::MIN_TTL;

/// The flags of `echo-server`; see the [module docs](self) for an example.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "echo-server",
    about = "Serves grpc.examples.echo.Echo, registers itself in etcd under \
             discovery/<env>/<service>/<addr>, drains on SIGINT/SIGTERM.",
    version,
    long_about = None
)]
pub struct Args {
    /// Instance id: named in every reply ("hi (from ID)") and registered as
    /// the endpoint metadata, for sticky clients.
    #[arg(long, value_parser = non_empty)]
    pub id: String,
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
        default_value = crate::DEFAULT_ETCD_ENDPOINT,
        value_parser = etcd_url,
    )]
    pub etcd: Vec<String>,
    /// Address to listen on (port 0: any free port); the bound address is
    /// registered.
    #[arg(long, default_value = "127.0.0.1:0", value_parser = listen_addr)]
    pub addr: SocketAddr,
    /// The address to register, HOST[:PORT] (no port: the bound one);
    /// default: the bound address, or for a wildcard bind (0.0.0.0, ::) a
    /// detected address of this host, never the wildcard.
    #[arg(long, value_name = "HOST[:PORT]", value_parser = advertise)]
    pub advertise: Option<Advertise>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR", value_parser = cli_support::socket_addr)]
    pub metrics: Option<SocketAddr>,
    /// Lease TTL: how long the key outlives a crashed server (at least 2s).
    #[arg(long, default_value = "60s", value_parser = ttl)]
    pub ttl: Duration,
    /// On SIGINT/SIGTERM: time between deregistering and stopping.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub drain: Duration,
    /// On SIGINT/SIGTERM: how long in-flight calls may take to finish.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub shutdown_timeout: Duration,
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
    /// gRPC TLS: PEM file of the server's certificate chain (with
    /// --tls-key); clients then need the CA that signed it.
    #[arg(long, value_name = "PEM", value_parser = cert_file, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// gRPC TLS: PEM file of the private key of --tls-cert.
    #[arg(long, value_name = "PEM", value_parser = key_file, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Share of calls to fail on purpose with UNAVAILABLE, 0.0–1.0 (for
    /// tests and demos of client-side outlier ejection).
    #[arg(
        long,
        value_name = "P",
        default_value = "0",
        allow_negative_numbers = true
    )]
    pub fail_rate: crate::FailRate,
    /// Wait this long before every reply (for demos and tests of slow
    /// servers).
    #[arg(long, default_value = "0ms", value_parser = duration)]
    pub delay: Duration,
    /// Do not rewrite the :authority grpc-go clients send (e.g.
    /// discovery%2Fdev%2Fgame): h2 then rejects their calls, and the server
    /// logs one WARN per such connection naming the Go-side fix
    /// (grpc.WithAuthority).
    #[arg(long)]
    pub strict_authority: bool,
    /// Serve without the :authority adapter at all (no rewrite, no WARN):
    /// for measuring its cost (cargo xtask bench).
    #[arg(long, conflicts_with = "strict_authority")]
    pub no_authority_adapter: bool,
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
    /// `ETCD_PASSWORD`) and checks the settings that span several flags.
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
        args.etcd_password =
            cli_support::etcd_password(args.etcd_user.as_deref(), password).map_err(usage_error)?;
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            serve::Tls::from_pem_files(cert, key).map_err(|e| usage_error(e.to_string()))?;
        }
        Ok(args)
    }

    /// The [`Config`] these arguments describe.
    pub fn into_config(self) -> Config {
        Config {
            id: self.id,
            env: self.env,
            service: self.service,
            etcd: self.etcd,
            addr: self.addr,
            advertise: self.advertise,
            ttl: self.ttl,
            drain: self.drain,
            shutdown_timeout: self.shutdown_timeout,
            etcd_ca: self.etcd_ca,
            etcd_client_cert: self.etcd_cert.zip(self.etcd_key),
            etcd_auth: self
                .etcd_user
                .zip(self.etcd_password)
                .map(|(user, password)| EtcdAuth { user, password }),
            tls: self.tls_cert.zip(self.tls_key),
            fail_rate: self.fail_rate,
            delay: self.delay,
            strict_authority: self.strict_authority,
            authority_adapter: !self.no_authority_adapter,
            ..Config::new("")
        }
    }
}

/// A usage error (exit code 2) with `message`, shown as
/// `error: <message>`.
fn usage_error(message: impl std::fmt::Display) -> clap::Error {
    cli_support::usage_error(Args::command(), message)
}

/// A listen address: an IP address and a port, `127.0.0.1:0`, `[::1]:50051`.
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        "expected an IP address and a port, such as 127.0.0.1:50051, 0.0.0.0:0 or [::1]:50051"
            .into()
    })
}

/// An address to register: `HOST[:PORT]`, never a wildcard.
pub fn advertise(s: &str) -> Result<Advertise, String> {
    Advertise::parse(s).map_err(|e| e.to_string())
}

fn ttl(s: &str) -> Result<Duration, String> {
    let ttl = duration(s)?;
    if ttl < MIN_TTL {
        Err(format!(
            "the lease TTL must be at least {}",
            humantime::format_duration(MIN_TTL)
        ))
    } else {
        Ok(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::try_parse_from(std::iter::once("echo-server").chain(args.iter().copied()))
            .map_err(|e| one_line(&e))
    }

    #[test]
    fn defaults_match_the_design() {
        let mut config = parse(&["--id", "1"]).unwrap().into_config();
        // `--etcd` falls back to ETCD_ENDPOINTS, which `cargo xtask test` sets.
        if std::env::var_os("ETCD_ENDPOINTS").is_none() {
            assert_eq!(config.etcd, Config::new("1").etcd);
        }
        config.etcd = Config::new("1").etcd;
        assert_eq!(config, Config::new("1"));
    }

    #[test]
    fn delay_is_a_duration_added_to_every_reply() {
        assert_eq!(parse(&["--id", "1"]).unwrap().delay, Duration::ZERO);
        let config = parse(&["--id", "1", "--delay", "20ms"])
            .unwrap()
            .into_config();
        assert_eq!(config.delay, Duration::from_millis(20));
        let err = parse(&["--id", "1", "--delay", "slow"]).unwrap_err();
        assert!(
            err.starts_with("error: invalid value 'slow' for '--delay <DELAY>'"),
            "{err}"
        );
    }

    #[test]
    fn ttl_zero_is_rejected_in_one_line() {
        let err = parse(&["--id", "1", "--ttl", "0"]).unwrap_err();
        assert_eq!(
            err,
            "error: invalid value '0' for '--ttl <TTL>': the lease TTL must be at least 2s"
        );
    }

    #[test]
    fn etcd_must_be_a_url() {
        let err = parse(&["--id", "1", "--etcd", "not-a-url"]).unwrap_err();
        assert_eq!(
            err,
            "error: invalid value 'not-a-url' for '--etcd <URL>': not an etcd URL: \
             expected one such as http://127.0.0.1:2379"
        );
        for ok in [
            "http://127.0.0.1:2379",
            "https://etcd.local",
            "http://[::1]:2379/",
        ] {
            assert!(etcd_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1:2379",
            "http://",
            "http://h:port",
            "ftp://h:1",
            "http://h:1/x",
        ] {
            assert!(etcd_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_duration_says_what_is_expected() {
        let err = parse(&["--id", "1", "--drain", "soon"]).unwrap_err();
        assert!(
            err.starts_with("error: invalid value 'soon' for '--drain <DRAIN>': "),
            "{err}"
        );
        assert!(
            err.ends_with("expected a duration such as 200ms, 1s or 2m"),
            "{err}"
        );
    }

    #[test]
    fn addr_must_be_an_ip_and_a_port() {
        let err = parse(&["--id", "1", "--addr", "nope"]).unwrap_err();
        assert_eq!(
            err,
            "error: invalid value 'nope' for '--addr <ADDR>': expected an IP address and a port, \
             such as 127.0.0.1:50051, 0.0.0.0:0 or [::1]:50051"
        );
        assert!(parse(&["--id", "1", "--addr", "127.0.0.1:99999"]).is_err());
        assert!(parse(&["--id", "1", "--addr", "[::1]:0"]).is_ok());
    }

    #[test]
    fn advertise_takes_a_host_and_an_optional_port_but_never_a_wildcard() {
        let config = parse(&["--id", "1", "--advertise", "game-1.internal"])
            .unwrap()
            .into_config();
        assert_eq!(
            config.advertise.map(|a| a.address(7)),
            Some("game-1.internal:7".to_owned())
        );
        let err = parse(&["--id", "1", "--advertise", "0.0.0.0:50051"]).unwrap_err();
        assert_eq!(
            err,
            "error: invalid value '0.0.0.0:50051' for '--advertise <HOST[:PORT]>': 0.0.0.0 is a \
             wildcard, where a server listens, not an address clients can connect to: expected \
             HOST or HOST:PORT, such as 10.0.0.5, game-1.internal:50051 or [2001:db8::1]:50051"
        );
        let err = parse(&["--id", "1", "--advertise", "h:0"]).unwrap_err();
        assert!(
            err.starts_with(
                "error: invalid value 'h:0' for '--advertise <HOST[:PORT]>': port 0 is not a port"
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_id_is_one_line() {
        let err = parse(&[]).unwrap_err();
        assert_eq!(
            err,
            "error: the following required arguments were not provided: --id <ID>"
        );
    }

    fn parse_pw(args: &[&str], password: Option<&str>) -> Result<Args, String> {
        Args::try_parse_with_password(
            std::iter::once("echo-server").chain(args.iter().copied()),
            password.map(str::to_owned),
        )
        .map_err(|e| one_line(&e))
    }

    #[test]
    fn etcd_user_needs_a_password_from_the_environment() {
        let err = parse_pw(&["--id", "1", "--etcd-user", "game"], None).unwrap_err();
        assert_eq!(
            err,
            "error: --etcd-user game needs its password in the environment variable \
             ETCD_PASSWORD, which is not set"
        );
        let err = parse_pw(&["--id", "1", "--etcd-user", "game"], Some("")).unwrap_err();
        assert!(err.ends_with("which is empty"), "{err}");
        let args = parse_pw(&["--id", "1", "--etcd-user", "game"], Some("hunter2")).unwrap();
        assert!(!format!("{args:?}").contains("hunter2"));
        assert!(!format!("{:?}", args.clone().into_config()).contains("hunter2"));
        let err = parse(&["--id", "1", "--etcd-password", "x"]).unwrap_err();
        assert!(
            err.starts_with("error: unexpected argument '--etcd-password'"),
            "{err}"
        );
    }

    #[test]
    fn pem_files_are_checked_when_parsing() {
        let err = parse(&["--id", "1", "--etcd-ca", "/nonexistent/ca.pem"]).unwrap_err();
        assert_eq!(
            err,
            "error: invalid value '/nonexistent/ca.pem' for '--etcd-ca <PEM>': cannot read it: \
             No such file or directory (os error 2)"
        );
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let err = parse(&["--id", "1", "--etcd-ca", manifest]).unwrap_err();
        assert!(
            err.ends_with(
                "no certificate in it: expected a PEM file with a \"-----BEGIN CERTIFICATE-----\" block"
            ),
            "{err}"
        );
        let err = parse(&["--id", "1", "--etcd-key", manifest]).unwrap_err();
        assert!(err.contains("no private key in it"), "{err}");
    }

    #[test]
    fn fail_rate_is_a_share_between_0_and_1() {
        let config = parse(&["--id", "1", "--fail-rate", "0.25"])
            .unwrap()
            .into_config();
        assert_eq!(config.fail_rate.get(), 0.25);
        assert_eq!(parse(&["--id", "1"]).unwrap().fail_rate.get(), 0.0);
        for (bad, why) in [
            ("1.5", "the fail rate must be between 0.0 and 1.0, not 1.5"),
            (
                "-0.1",
                "the fail rate must be between 0.0 and 1.0, not -0.1",
            ),
            ("lots", "expected a number between 0.0 and 1.0, such as 0.1"),
        ] {
            assert_eq!(
                parse(&["--id", "1", "--fail-rate", bad]).unwrap_err(),
                format!("error: invalid value '{bad}' for '--fail-rate <P>': {why}")
            );
        }
    }
}
