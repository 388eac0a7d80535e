//! The command line of the `echo-client` binary, as a library item so that
//! its parsing (and its error messages) can be tested and reused.

use std::time::Duration;

use balancer::Fallback;
use clap::{Parser, ValueEnum};

use crate::{Config, DEFAULT_ETCD_ENDPOINT};

/// `echo-client [--id <ID>] [--env dev] [--service game] [--etcd URL]...
/// [--message hi] [--interval 1s] [--count N] [--fallback rr|fail]
/// [--concurrency C --duration D]`
///
/// ```
/// use clap::Parser;
/// use echo_client::cli::Args;
///
/// let args = Args::try_parse_from(["echo-client", "--id", "1", "--count", "3"]).unwrap();
/// assert_eq!(args.count, Some(3));
/// assert_eq!(args.config().prefix(), "discovery/dev/game");
///
/// let err = Args::try_parse_from(["echo-client", "--concurrency", "0", "--duration", "1s"]);
/// assert_eq!(err.unwrap_err().exit_code(), 2);
/// ```
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
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "concurrency")]
    pub count: Option<u64>,
    /// What a sticky call does when its instance is unavailable: go round
    /// robin (rr) or fail (fail).
    #[arg(long, value_enum, default_value = "rr")]
    pub fallback: FallbackArg,
    /// Load mode: this many calls in flight at all times (closed loop).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..10_000), requires = "duration")]
    pub concurrency: Option<u64>,
    /// Load mode: how long to run.
    #[arg(long, value_parser = positive_duration, requires = "concurrency")]
    pub duration: Option<Duration>,
}

/// `--fallback` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FallbackArg {
    /// Round robin over the ready instances (the Go seed's behaviour).
    Rr,
    /// Fail the call with UNAVAILABLE, naming the id.
    Fail,
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
        Self::try_parse().unwrap_or_else(|e| exit_on_usage_error(&e))
    }

    /// The client [`Config`] these arguments describe.
    pub fn config(&self) -> Config {
        Config {
            id: self.id.clone(),
            env: self.env.clone(),
            service: self.service.clone(),
            etcd: self.etcd.clone(),
            fallback: self.fallback.into(),
            ..Config::default()
        }
    }

    /// `Some((concurrency, duration))` in load mode.
    pub fn load(&self) -> Option<(usize, Duration)> {
        let c = usize::try_from(self.concurrency?).ok()?;
        Some((c, self.duration?))
    }
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

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

fn key_segment(s: &str) -> Result<String, String> {
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

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        Err("must be more than zero".into())
    } else {
        Ok(d)
    }
}

/// An etcd client URL: `http://host:port` or `https://host:port`.
pub fn etcd_url(s: &str) -> Result<String, String> {
    let bad = || format!("not an etcd URL: expected one such as {DEFAULT_ETCD_ENDPOINT}");
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
        assert_eq!(args.config(), Config::default());
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
}
