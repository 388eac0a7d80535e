//! A third-party Go tool against our server: grpc-ecosystem's
//! `grpc-health-probe` (v0.4.63, built from the Go module proxy) asks
//! `echo-server`'s `grpc.health.v1` what Kubernetes probes would ask.

use std::process::Command;

use integration_tests::{
    etcd_endpoints, go::health_probe, pki::Certs, process::start_server, unique_env,
};

/// Runs the probe with `args`; its exit code and output.
fn probe(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(health_probe())
        .args(args)
        .output()
        .expect("run grpc-health-probe");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text.trim().to_owned())
}

#[test]
fn grpc_health_probe_sees_serving_then_not_serving_while_the_server_drains() {
    let etcd = etcd_endpoints();
    let env = unique_env("health_probe");
    let (mut server, addr) = start_server("1", &env, &etcd, &["--drain", "3s"]);
    let (code, text) = probe(&["-addr", &addr]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("status: SERVING"), "{text}");
    // The echo service by name, as a probe of one service would ask.
    let (code, text) = probe(&["-addr", &addr, "-service", "grpc.examples.echo.Echo"]);
    assert_eq!(code, Some(0), "{text}");

    server.signal(libc::SIGINT);
    server.wait_log("etcdlb_serve::server: draining");
    let (code, text) = probe(&["-addr", &addr]);
    // grpc-health-probe exits 4 for a status other than SERVING.
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("NOT_SERVING"), "{text}");
}

#[test]
fn grpc_health_probe_checks_a_tls_server() {
    let etcd = etcd_endpoints();
    let env = unique_env("health_probe_tls");
    let certs = Certs::generate();
    let (cert, key) = certs.server_cert_for("probe-tls", &["localhost"]);
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    let (cert, key, ca) = (path(&cert), path(&key), path(&certs.ca));
    let (_server, addr) = start_server("1", &env, &etcd, &["--tls-cert", &cert, "--tls-key", &key]);
    let tls = [
        "-tls",
        "-tls-ca-cert",
        ca.as_str(),
        "-tls-server-name",
        "localhost",
    ];
    let mut args = vec!["-addr", addr.as_str()];
    args.extend(tls);
    let (code, text) = probe(&args);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("status: SERVING"), "{text}");
    // Without TLS the plaintext probe cannot talk to it (exit 2: the
    // connection failed).
    let (code, text) = probe(&[
        "-addr",
        &addr,
        "-connect-timeout",
        "2s",
        "-rpc-timeout",
        "2s",
    ]);
    assert_ne!(code, Some(0), "{text}");
}
