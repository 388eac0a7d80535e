//! Security end to end, with the real binaries: gRPC TLS between
//! `echo-server` and `echo-client`, and both binaries against an etcd with
//! TLS and client certificate authentication or with user/password
//! authentication. Certificates are made at test time (rcgen, through
//! `integration_tests::pki`); each secured etcd is private to its test.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use echo_proto::{EchoRequest, echo_client::EchoClient};
use integration_tests::{
    etcd_endpoints,
    pki::{Certs, SecureEtcd},
    process::{PATIENCE, Proc, Stream, bin_path, start_client, start_server},
    unique_env,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const PASSWORD: &str = "s3cret-Pa55word";
const ROOT_PASSWORD: &str = "r00t-Pa55word";

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// `--tls-cert`/`--tls-key` of `certs`' server certificate (127.0.0.1,
/// localhost).
fn server_tls(certs: &Certs) -> [&str; 4] {
    [
        "--tls-cert",
        path(&certs.server_cert),
        "--tls-key",
        path(&certs.server_key),
    ]
}

/// The error line (`error: …`) a process printed before exiting, which it
/// must have done with a non-zero code within [`PATIENCE`].
fn failure_line(proc: &mut Proc) -> String {
    let status = proc.wait_exit(PATIENCE);
    let transcript = proc.transcript();
    assert!(
        !status.success(),
        "should have failed, exited with {status}:\n{transcript}"
    );
    proc.history()
        .iter()
        .find(|l| l.stream == Stream::Err && l.text.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{transcript}"))
        .text
        .clone()
}

fn assert_no_password(procs: &mut [&mut Proc], password: &str) {
    for proc in procs {
        let transcript = proc.transcript();
        assert!(
            !transcript.contains(password),
            "the password appears in the output:\n{transcript}"
        );
    }
}

/// Runs `bin args` with `ETCD_PASSWORD` removed from its environment and
/// returns `(exit code, stdout, stderr)`; kills it after [`PATIENCE`].
fn run_without_password(bin: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(bin_path(bin))
        .args(args)
        .env_remove("ETCD_PASSWORD")
        .env_remove("ETCD_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{bin} {args:?} did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    (status.code(), out, err)
}

#[test]
fn a_tls_server_answers_a_client_with_its_ca_and_keeps_health_and_reflection() {
    let certs = Certs::generate();
    let etcd = etcd_endpoints();
    let env = unique_env("grpc_tls");
    let (mut server, addr) = start_server("1", &env, &etcd, &server_tls(&certs));

    let mut client = start_client(
        "client",
        &env,
        &etcd,
        &[
            "--tls-ca",
            path(&certs.ca),
            "--count",
            "2",
            "--interval",
            "50ms",
        ],
    );
    assert_eq!(client.next_stdout().text, "hi (from 1)");
    assert_eq!(client.next_stdout().text, "hi (from 1)");
    assert!(
        client.wait_exit(PATIENCE).success(),
        "{}",
        client.transcript()
    );

    // Health and reflection are served over TLS too.
    let ca = std::fs::read(&certs.ca).expect("CA");
    runtime().block_on(async {
        let channel = Channel::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .expect("TLS config")
            .connect()
            .await
            .expect("connect over TLS");
        let reply = EchoClient::new(channel.clone())
            .unary_echo(EchoRequest {
                message: "direct".into(),
            })
            .await
            .expect("unary over TLS");
        assert_eq!(reply.into_inner().message, "direct (from 1)");
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: echo_proto::SERVICE_NAME.into(),
            })
            .await
            .expect("health over TLS");
        assert_eq!(health.into_inner().status(), ServingStatus::Serving);
        let names = crate::server::reflected_services(&channel).await;
        assert!(
            names.iter().any(|n| n == echo_proto::SERVICE_NAME),
            "{names:?}"
        );
    });

    server.signal(libc::SIGINT);
    assert!(server.wait_exit(PATIENCE).success());
}

#[test]
fn tls_domain_names_the_certificate_when_the_address_is_not_in_it() {
    let certs = Certs::generate();
    let (cert, key) = certs.server_cert_for("echo-internal", &["echo.internal"]);
    let etcd = etcd_endpoints();
    let env = unique_env("grpc_tls_domain");
    let (_server, _) = start_server(
        "1",
        &env,
        &etcd,
        &["--tls-cert", path(&cert), "--tls-key", path(&key)],
    );

    let mut client = start_client(
        "client",
        &env,
        &etcd,
        &[
            "--tls-ca",
            path(&certs.ca),
            "--tls-domain",
            "echo.internal",
            "--count",
            "1",
        ],
    );
    assert_eq!(client.next_stdout().text, "hi (from 1)");
    assert!(client.wait_exit(PATIENCE).success());

    // Without --tls-domain, 127.0.0.1 is not a name of the certificate.
    let mut client = start_client("no domain", &env, &etcd, &["--tls-ca", path(&certs.ca)]);
    let line = client.wait_log("cannot use instance 127.0.0.1:");
    assert!(
        line.text.contains("invalid peer certificate") && line.text.contains("--tls-domain"),
        "{}",
        line.text
    );
}

#[test]
fn a_plaintext_client_of_a_tls_server_says_the_server_serves_tls() {
    let certs = Certs::generate();
    let etcd = etcd_endpoints();
    let env = unique_env("plain_vs_tls");
    let (_server, addr) = start_server("1", &env, &etcd, &server_tls(&certs));

    let mut client = start_client("client", &env, &etcd, &["--count", "1"]);
    client.wait_log(&format!("waiting for instances of discovery/{env}/game"));
    let line = client.wait_log(&format!("cannot use instance {addr} (id 1)"));
    assert!(
        line.text.ends_with(
            "the server answered with TLS; this client is configured for plaintext (set a TLS \
             CA) (the server serves TLS: give the CA that signed its certificate with --tls-ca)"
        ),
        "{}",
        line.text
    );
    assert!(
        client.is_running(),
        "the client waits for a usable instance"
    );
}

#[test]
fn a_client_with_the_wrong_ca_says_the_certificate_is_not_trusted() {
    let certs = Certs::generate();
    let etcd = etcd_endpoints();
    let env = unique_env("wrong_grpc_ca");
    let (_server, addr) = start_server("1", &env, &etcd, &server_tls(&certs));

    let mut client = start_client("client", &env, &etcd, &["--tls-ca", path(&certs.other_ca)]);
    let line = client.wait_log(&format!("cannot use instance {addr} (id 1)"));
    assert!(
        line.text
            .contains("TLS: invalid peer certificate: UnknownIssuer (--tls-ca must be the CA"),
        "{}",
        line.text
    );
}

#[test]
fn a_tls_client_of_a_plaintext_server_says_the_server_does_not_serve_tls() {
    let certs = Certs::generate();
    let etcd = etcd_endpoints();
    let env = unique_env("tls_vs_plain");
    let (_server, addr) = start_server("1", &env, &etcd, &[]);

    let mut client = start_client("client", &env, &etcd, &["--tls-ca", path(&certs.ca)]);
    let line = client.wait_log(&format!("cannot use instance {addr} (id 1)"));
    assert!(
        line.text.ends_with(
            "TLS: received corrupt message of type InvalidContentType (the server does not seem \
             to serve TLS: was it started with --tls-cert?)"
        ),
        "{}",
        line.text
    );
}

#[test]
fn a_server_with_a_key_that_is_not_its_certificates_is_a_usage_error() {
    let certs = Certs::generate();
    let args = [
        "--id",
        "1",
        "--tls-cert",
        path(&certs.server_cert),
        "--tls-key",
        path(&certs.client_key),
    ];
    let (code, out, err) = run_without_password("echo-server", &args);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "error: the TLS certificate {:?} and key {:?} cannot be used together: ",
            path(&certs.server_cert),
            path(&certs.client_key)
        )),
        "{err}"
    );
}

#[test]
fn the_binaries_work_against_a_tls_etcd_with_client_certificates() {
    let certs = Certs::generate();
    let rt = runtime();
    let etcd = rt.block_on(SecureEtcd::tls(&certs));
    let endpoints = vec![etcd.endpoint.clone()];
    let env = unique_env("etcd_tls");
    let security = [
        "--etcd-ca",
        path(&certs.ca),
        "--etcd-cert",
        path(&certs.client_cert),
        "--etcd-key",
        path(&certs.client_key),
    ];
    let (mut server, _) = start_server("1", &env, &endpoints, &security);
    let mut args = security.to_vec();
    args.extend(["--count", "2", "--interval", "50ms"]);
    let mut client = start_client("client", &env, &endpoints, &args);
    assert_eq!(client.next_stdout().text, "hi (from 1)");
    assert_eq!(client.next_stdout().text, "hi (from 1)");
    assert!(
        client.wait_exit(PATIENCE).success(),
        "{}",
        client.transcript()
    );

    server.signal(libc::SIGINT);
    assert!(
        server.wait_exit(PATIENCE).success(),
        "{}",
        server.transcript()
    );
    drop(etcd);
}

#[test]
fn a_wrong_etcd_ca_or_client_certificate_is_a_clear_error() {
    let certs = Certs::generate();
    let rt = runtime();
    let etcd = rt.block_on(SecureEtcd::tls(&certs));
    let endpoint = etcd.endpoint.clone();
    let env = unique_env("etcd_tls_wrong");
    let spawn = |bin: &str, flags: &[&str]| {
        let mut args = vec!["--env", env.as_str(), "--etcd", endpoint.as_str()];
        if bin == "echo-server" {
            args.extend(["--id", "1"]);
        } else {
            args.extend(["--count", "1"]);
        }
        args.extend_from_slice(flags);
        Proc::spawn(&format!("{bin} {flags:?}"), bin, &args)
    };

    // Wrong CA: etcd's certificate is not trusted.
    let wrong_ca = [
        "--etcd-ca",
        path(&certs.other_ca),
        "--etcd-cert",
        path(&certs.client_cert),
        "--etcd-key",
        path(&certs.client_key),
    ];
    // No client certificate, or one from a CA etcd does not trust.
    let no_cert = ["--etcd-ca", path(&certs.ca)];
    let other_cert = [
        "--etcd-ca",
        path(&certs.ca),
        "--etcd-cert",
        path(&certs.other_client_cert),
        "--etcd-key",
        path(&certs.other_client_key),
    ];
    let mut procs = Vec::new();
    for bin in ["echo-server", "echo-client"] {
        procs.push((bin, "wrong CA", spawn(bin, &wrong_ca)));
        procs.push((bin, "no cert", spawn(bin, &no_cert)));
        procs.push((bin, "other cert", spawn(bin, &other_cert)));
    }
    for (bin, case, proc) in &mut procs {
        let line = failure_line(proc);
        let expected = match *case {
            "wrong CA" => {
                "etcd's TLS certificate is not trusted: give the CA that signed it (--etcd-ca)"
            }
            "no cert" => {
                "etcd closed the TLS connection: it probably requires a client certificate \
                 (--etcd-cert, --etcd-key)"
            }
            _ => {
                "etcd closed the TLS connection: it probably does not trust the client \
                 certificate (--etcd-cert)"
            }
        };
        assert!(
            line.contains(expected) && line.contains(&etcd.endpoint),
            "{bin}, {case}: {line:?} should name {} and say {expected:?}",
            etcd.endpoint
        );
    }
    drop(etcd);
}

#[test]
fn the_binaries_work_against_etcd_with_auth_and_never_show_the_password() {
    let rt = runtime();
    let etcd = rt.block_on(SecureEtcd::auth(ROOT_PASSWORD, "game", PASSWORD));
    let env = unique_env("etcd_auth");
    let endpoint = etcd.endpoint.clone();
    let password = [("ETCD_PASSWORD", PASSWORD), ("RUST_LOG", "debug")];

    let mut server = Proc::spawn_with(
        "server",
        "echo-server",
        &[
            "--id",
            "1",
            "--env",
            &env,
            "--etcd",
            &endpoint,
            "--etcd-user",
            "game",
        ],
        &password,
    );
    server.wait_log(&format!("registered discovery/{env}/game/"));
    let mut client = Proc::spawn_with(
        "client",
        "echo-client",
        &[
            "--env",
            &env,
            "--etcd",
            &endpoint,
            "--etcd-user",
            "game",
            "--count",
            "2",
            "--interval",
            "50ms",
        ],
        &password,
    );
    assert_eq!(client.next_stdout().text, "hi (from 1)");
    assert_eq!(client.next_stdout().text, "hi (from 1)");
    assert!(
        client.wait_exit(PATIENCE).success(),
        "{}",
        client.transcript()
    );
    server.signal(libc::SIGINT);
    assert!(
        server.wait_exit(PATIENCE).success(),
        "{}",
        server.transcript()
    );
    assert_no_password(&mut [&mut server, &mut client], PASSWORD);
    drop(etcd);
}

#[test]
fn a_wrong_etcd_password_is_a_clear_error_without_the_password() {
    const WRONG: &str = "not-the-Pa55word";
    let rt = runtime();
    let etcd = rt.block_on(SecureEtcd::auth(ROOT_PASSWORD, "game", PASSWORD));
    let env = unique_env("etcd_auth_wrong");
    let endpoint = etcd.endpoint.clone();
    let env_vars = [("ETCD_PASSWORD", WRONG)];
    let common = ["--env", &env, "--etcd", &endpoint, "--etcd-user", "game"];

    let mut server_args = vec!["--id", "1"];
    server_args.extend_from_slice(&common);
    let mut server = Proc::spawn_with("server", "echo-server", &server_args, &env_vars);
    let mut client_args = vec!["--count", "1"];
    client_args.extend_from_slice(&common);
    let mut client = Proc::spawn_with("client", "echo-client", &client_args, &env_vars);

    for proc in [&mut server, &mut client] {
        let line = failure_line(proc);
        assert!(
            line.ends_with(
                "etcdserver: authentication failed, invalid user ID or password: wrong etcd \
                 user name or password"
            ) && line.contains(&endpoint),
            "{line}"
        );
    }
    assert_no_password(&mut [&mut server, &mut client], WRONG);
    drop(etcd);
}

#[test]
fn security_flag_mistakes_are_one_line_usage_errors() {
    let certs = Certs::generate();
    let missing = certs.dir().join("missing.pem");
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        (
            "echo-server",
            vec!["--id", "1", "--etcd-user", "game"],
            "error: --etcd-user game needs its password in the environment variable \
             ETCD_PASSWORD, which is not set"
                .into(),
        ),
        (
            "echo-client",
            vec!["--etcd-user", "game"],
            "error: --etcd-user game needs its password in the environment variable \
             ETCD_PASSWORD, which is not set"
                .into(),
        ),
        (
            "echo-server",
            vec!["--id", "1", "--etcd-ca", path(&missing)],
            format!(
                "error: invalid value '{}' for '--etcd-ca <PEM>': cannot read it: No such file \
                 or directory (os error 2)",
                path(&missing)
            ),
        ),
        (
            "echo-client",
            vec!["--etcd-ca", path(&certs.client_key)],
            format!(
                "error: invalid value '{}' for '--etcd-ca <PEM>': no certificate in it: \
                 expected a PEM file with a \"-----BEGIN CERTIFICATE-----\" block",
                path(&certs.client_key)
            ),
        ),
        (
            "echo-server",
            vec![
                "--id",
                "1",
                "--etcd-ca",
                path(&certs.ca),
                "--etcd-cert",
                path(&certs.client_cert),
            ],
            "error: the following required arguments were not provided: --etcd-key <PEM>".into(),
        ),
        (
            "echo-client",
            vec!["--etcd-key", path(&certs.client_key)],
            "error: the following required arguments were not provided: --etcd-ca <PEM> \
             --etcd-cert <PEM>"
                .into(),
        ),
        (
            "echo-server",
            vec!["--id", "1", "--etcd-key", path(&certs.ca)],
            format!(
                "error: invalid value '{}' for '--etcd-key <PEM>': no private key in it: \
                 expected a PEM file with a \"-----BEGIN PRIVATE KEY-----\" (or RSA/EC PRIVATE \
                 KEY) block",
                path(&certs.ca)
            ),
        ),
        (
            "echo-server",
            vec!["--id", "1", "--tls-cert", path(&certs.server_cert)],
            "error: the following required arguments were not provided: --tls-key <PEM>".into(),
        ),
        (
            "echo-client",
            vec!["--tls-ca", path(&missing)],
            format!(
                "error: invalid value '{}' for '--tls-ca <PEM>': cannot read it: No such file \
                 or directory (os error 2)",
                path(&missing)
            ),
        ),
        (
            "echo-client",
            vec!["--tls-domain", "echo.internal"],
            "error: the following required arguments were not provided: --tls-ca <PEM>".into(),
        ),
        (
            "echo-client",
            vec!["--tls-ca", path(&certs.ca), "--tls-domain", "not a name"],
            "error: invalid value 'not a name' for '--tls-domain <NAME>': expected a DNS name \
             or an IP address, such as echo.internal"
                .into(),
        ),
        (
            "echo-client",
            vec!["--etcd-password", PASSWORD],
            "error: unexpected argument '--etcd-password' found".into(),
        ),
    ];
    for (bin, args, expected) in &cases {
        let (code, out, err) = run_without_password(bin, args);
        assert_eq!(code, Some(2), "{bin} {args:?}: {err}");
        assert_eq!(out, "", "{bin} {args:?}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines, [expected.as_str()], "{bin} {args:?}");
    }
}
