//! `--metrics`: both binaries serve Prometheus text with the families of
//! `docs/metrics.md`, with values that match what happened.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use integration_tests::{
    etcd_endpoints, free_port,
    process::{PATIENCE, start_client, start_server},
    unique_env,
};

/// `GET /metrics` on `addr`: the body.
pub(crate) fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of the sample whose line starts with `series` (name and
/// labels as rendered), if there is one.
pub(crate) fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn both_binaries_serve_the_documented_families_with_plausible_values() {
    let etcd = etcd_endpoints();
    let env = unique_env("metrics");
    let target = format!("discovery/{env}/game");
    let server_metrics = format!("127.0.0.1:{}", free_port());
    let (mut server1, addr1) = start_server("1", &env, &etcd, &["--metrics", &server_metrics]);
    let (mut server2, addr2) = start_server("2", &env, &etcd, &[]);
    let client_metrics = format!("127.0.0.1:{}", free_port());
    let mut client = start_client(
        "load",
        &env,
        &etcd,
        &[
            "--concurrency",
            "4",
            "--duration",
            "4s",
            "--metrics",
            &client_metrics,
        ],
    );
    client.wait_log(&format!("instances of {target} found"));

    // Wait (bounded) until both servers are ready and have been called.
    let t = format!("{{grpc_target=\"{target}\"");
    let deadline = Instant::now() + PATIENCE;
    let body = loop {
        let body = scrape(&client_metrics);
        let picked = |addr: &str| {
            value(&body, &format!("balancer_picks{t},endpoint=\"{addr}\"}}")).unwrap_or(0.0)
        };
        // Picks count at send, the latency histogram when an attempt ends:
        // under load the first scrape can see picks and no finished call yet.
        let finished = value(
            &body,
            &format!("grpc_client_attempt_duration_count{t},grpc_status=\"OK\"}}"),
        )
        .unwrap_or(0.0);
        if picked(&addr1) > 0.0 && picked(&addr2) > 0.0 && finished > 0.0 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no finished calls on both servers:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Ready endpoints = servers started.
    assert_eq!(
        value(&body, &format!("balancer_endpoints{t},state=\"ready\"}}")),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        value(&body, &format!("grpc_subchannel_open_connections{t}}}")),
        Some(2.0),
        "{body}"
    );
    assert!(
        value(
            &body,
            &format!("grpc_subchannel_connection_attempts_succeeded{t}}}")
        )
        .is_some_and(|n| n >= 2.0),
        "{body}"
    );
    for family in [
        format!("balancer_failures{t},endpoint=\"{addr1}\"}}"),
        format!("balancer_sticky_fallbacks{t}}}"),
        format!("balancer_retries{t}}}"),
        format!("balancer_ejections{t}}}"),
        format!("grpc_subchannel_connection_attempts_failed{t}}}"),
        format!("resolver_relists{{prefix=\"{target}\",reason=\"compacted\"}}"),
    ] {
        assert_eq!(value(&body, &family), Some(0.0), "{family}:\n{body}");
    }
    let calls = value(
        &body,
        &format!("grpc_client_attempt_duration_count{t},grpc_status=\"OK\"}}"),
    )
    .expect("latency histogram");
    assert!(calls > 0.0, "{body}");
    assert!(
        body.contains(&format!(
            "grpc_client_attempt_duration_bucket{t},grpc_status=\"OK\",le=\"0.001\"}}"
        )),
        "{body}"
    );

    // The server: its registration.
    let body = scrape(&server_metrics);
    let key = format!("{{key=\"{target}/{addr1}\"");
    assert_eq!(
        value(
            &body,
            &format!("registry_state{key},state=\"registered\"}}")
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(
            &body,
            &format!("registry_state{key},state=\"reconnecting\"}}")
        ),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        value(&body, &format!("registry_reregistrations{key}}}")),
        Some(0.0),
        "{body}"
    );

    assert!(
        client.wait_exit(PATIENCE).success(),
        "{}",
        client.transcript()
    );
    for server in [&mut server1, &mut server2] {
        server.signal(libc::SIGINT);
        assert!(server.wait_exit(PATIENCE).success());
    }
}
