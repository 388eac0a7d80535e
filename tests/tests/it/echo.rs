//! The seed scenario and its failure cases, with the real `echo-server` and
//! `echo-client` binaries against the fixture's etcd. Each test has its own
//! `--env`, so its servers and clients see nobody else's.

use std::time::{Duration, Instant};

use integration_tests::{
    etcd_client, etcd_endpoints, free_port, private_etcd,
    process::{PATIENCE, Proc, Stream, from_id, parse_load_output, start_client, start_server},
    unique_env,
};

fn replies(client: &mut Proc, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| client.next_stdout().text)
        .collect::<Vec<_>>()
}

fn ids(replies: &[String]) -> Vec<&str> {
    replies.iter().map(|r| from_id(r).unwrap_or("?")).collect()
}

fn errors_of(proc: &mut Proc) -> Vec<String> {
    proc.drain_available();
    proc.history()
        .iter()
        .filter(|l| l.stream == Stream::Err && l.text.contains("call failed"))
        .map(|l| l.text.clone())
        .collect()
}

#[test]
fn seed_scenario_waits_alternates_sticks_and_drains_without_an_error() {
    let etcd = etcd_endpoints();
    let env = unique_env("seed");

    // 1. A client started first waits for instances.
    let mut client = start_client("client", &env, &etcd, &["--interval", "100ms"]);
    client.wait_log(&format!("waiting for instances of discovery/{env}/game"));

    // 2. Server 1 appears: the client proceeds, on 1.
    let (mut server1, _) = start_server("1", &env, &etcd, &[]);
    let first = client.next_stdout().text;
    assert_eq!(first, "hi (from 1)");

    // 3. Server 2 appears: the client alternates.
    let (mut server2, _) = start_server("2", &env, &etcd, &[]);
    client.wait_for("a reply from 2", PATIENCE, |l| {
        l.stream == Stream::Out && l.text == "hi (from 2)"
    });
    let got = replies(&mut client, 6);
    let got = ids(&got);
    assert!(
        got.windows(2).all(|w| w[0] != w[1]) && got.iter().all(|id| ["1", "2"].contains(id)),
        "round robin over 1 and 2 should alternate: {got:?}"
    );

    // 4. A sticky client reaches only 1.
    let mut sticky = start_client("sticky", &env, &etcd, &["--id", "1", "--interval", "50ms"]);
    let got = replies(&mut sticky, 5);
    assert_eq!(ids(&got), ["1"; 5], "{got:?}");

    // 5. Server 2 drains on SIGINT; the first client goes on, on 1, without an error.
    server2.signal(libc::SIGINT);
    let status = server2.wait_exit(PATIENCE);
    assert!(status.success(), "server 2 exited with {status}");
    client.skip_pending();
    let got = replies(&mut client, 5);
    assert_eq!(ids(&got), ["1"; 5], "{got:?}");
    assert!(
        client.is_running(),
        "the client stopped:\n{}",
        client.transcript()
    );
    assert_eq!(errors_of(&mut client), Vec::<String>::new());

    server1.signal(libc::SIGINT);
    assert!(server1.wait_exit(PATIENCE).success());
}

#[test]
fn sigint_on_a_server_under_load_fails_no_call() {
    let etcd = etcd_endpoints();
    let env = unique_env("sigint_load");
    let (_server1, _) = start_server("1", &env, &etcd, &[]);
    let (mut server2, _) = start_server("2", &env, &etcd, &[]);

    let mut client = start_client(
        "load",
        &env,
        &etcd,
        &["--concurrency", "16", "--duration", "6s"],
    );
    client.wait_log(&format!("instances of discovery/{env}/game found"));
    // Let the load reach both servers, then stop one in the middle of it.
    std::thread::sleep(Duration::from_millis(1500));
    server2.signal(libc::SIGINT);
    assert!(server2.wait_exit(PATIENCE).success());

    assert!(client.wait_exit(PATIENCE).success());
    let (summary, per_instance) = parse_load_output(&mut client);
    assert_eq!(summary["errs"], 0, "{}", client.transcript());
    assert!(summary["ok"] > 0);
    assert!(
        per_instance.get("1").is_some_and(|n| *n > 0)
            && per_instance.get("2").is_some_and(|n| *n > 0),
        "both servers should have served: {per_instance:?}"
    );
}

#[test]
fn sigkill_on_a_server_loses_at_most_the_calls_in_flight_and_recovers_within_a_second() {
    const CONCURRENCY: u64 = 8;
    let etcd = etcd_endpoints();
    let env = unique_env("sigkill");
    let (_server1, _) = start_server("1", &env, &etcd, &[]);
    let (server2, _) = start_server("2", &env, &etcd, &[]);

    let mut client = start_client(
        "load",
        &env,
        &etcd,
        &[
            "--concurrency",
            &CONCURRENCY.to_string(),
            "--duration",
            "5s",
        ],
    );
    client.wait_log(&format!("instances of discovery/{env}/game found"));
    std::thread::sleep(Duration::from_millis(1500));
    // The key stays in etcd (the lease outlives the process): only the
    // balancer's connection state can take server 2 out.
    server2.signal(libc::SIGKILL);
    let killed = Instant::now();

    assert!(client.wait_exit(PATIENCE).success());
    let (summary, per_instance) = parse_load_output(&mut client);
    let transcript = client.transcript();
    assert!(
        summary["errs"] <= CONCURRENCY,
        "more failures than calls in flight: {summary:?}\n{transcript}"
    );
    let late: Vec<_> = client
        .history()
        .iter()
        .filter(|l| l.stream == Stream::Err && l.text.contains("call failed"))
        .filter(|l| l.at > killed + Duration::from_secs(1))
        .map(|l| l.text.clone())
        .collect();
    assert!(
        late.is_empty(),
        "calls still failing 1 s after the kill: {late:?}"
    );
    assert!(
        per_instance.get("1").is_some_and(|n| *n > 0),
        "{per_instance:?}"
    );
    assert!(summary["ok"] > 0);
    drop(server2);
}

#[test]
fn a_handwritten_etcdctl_value_is_discovered_and_sticky_id_reaches_it() {
    let etcd = etcd_endpoints();
    let env = unique_env("handwritten");
    // Instance 9 registers itself elsewhere; we describe it by hand, the way
    // an etcdctl user would, under our env.
    let (_nine, addr) = start_server("9", &unique_env("elsewhere"), &etcd, &[]);
    let (_one, _) = start_server("1", &env, &etcd, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut etcd = etcd_client().await;
        let key = format!("discovery/{env}/game/{addr}");
        let value = format!(r#"{{"Addr":"{addr}","Metadata":"9"}}"#);
        etcd.put(key, value, None).await.expect("put");
    });

    let mut client = start_client(
        "sticky",
        &env,
        &etcd,
        &[
            "--id",
            "9",
            "--fallback",
            "fail",
            "--count",
            "3",
            "--interval",
            "50ms",
        ],
    );
    let got = replies(&mut client, 3);
    assert_eq!(got, ["hi (from 9)"; 3]);
    assert!(client.wait_exit(PATIENCE).success());
}

#[test]
fn bad_flags_print_one_clear_line_and_exit_2() {
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "echo-server",
            &["--id", "1", "--ttl", "0"],
            "error: invalid value '0' for '--ttl <TTL>': the lease TTL must be at least 2s",
        ),
        (
            "echo-server",
            &["--id", "1", "--etcd", "not-a-url"],
            "error: invalid value 'not-a-url' for '--etcd <URL>': not an etcd URL: expected one such as http://127.0.0.1:2379",
        ),
        (
            "echo-server",
            &["--id", "1", "--drain", "soon"],
            "error: invalid value 'soon' for '--drain <DRAIN>': ",
        ),
        (
            "echo-server",
            &[],
            "error: the following required arguments were not provided: --id <ID>",
        ),
        (
            "echo-client",
            &["--concurrency", "0", "--duration", "1s"],
            "error: invalid value '0' for '--concurrency <CONCURRENCY>': 0 is not in 1..10000",
        ),
        (
            "echo-client",
            &["--etcd", "not-a-url"],
            "error: invalid value 'not-a-url' for '--etcd <URL>': not an etcd URL: expected one such as http://127.0.0.1:2379",
        ),
        (
            "echo-client",
            &["--interval", "1 fortnight"],
            "error: invalid value '1 fortnight' for '--interval <INTERVAL>': ",
        ),
        (
            "echo-client",
            &["--fallback", "random"],
            "error: invalid value 'random' for '--fallback <FALLBACK>' [possible values: rr, fail]",
        ),
        (
            "echo-client",
            &["--lb", "ring-hash"],
            "error: the following required arguments were not provided: --hash-key <KEY>",
        ),
        (
            "echo-client",
            &["--hash-key", "p1"],
            "error: --hash-key is only used by --lb ring-hash (it picks the instance by the key)",
        ),
        (
            "echo-client",
            &["--lb", "random"],
            "error: invalid value 'random' for '--lb <LB>' [possible values: round-robin, least-request, ring-hash]",
        ),
        (
            "echo-server",
            &["--id", "1", "--delay", "slow"],
            "error: invalid value 'slow' for '--delay <DELAY>': ",
        ),
    ];
    for (bin, args, expected) in cases {
        let mut proc = Proc::spawn(bin, bin, args);
        let status = proc.wait_exit(PATIENCE);
        let transcript = proc.transcript();
        assert_eq!(status.code(), Some(2), "{bin} {args:?}:\n{transcript}");
        let lines: Vec<_> = proc.history().iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            lines.len(),
            1,
            "{bin} {args:?} should print one line:\n{transcript}"
        );
        assert_eq!(proc.history()[0].stream, Stream::Err);
        assert!(
            lines[0].starts_with(expected),
            "{bin} {args:?}: {:?} should start with {expected:?}",
            lines[0]
        );
    }
}

#[test]
fn a_server_started_with_etcd_down_exits_non_zero_with_a_clear_error() {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut server = Proc::spawn(
        "server",
        "echo-server",
        &[
            "--id",
            "1",
            "--env",
            &unique_env("etcd_down"),
            "--etcd",
            &nowhere,
        ],
    );
    let status = server.wait_exit(PATIENCE);
    let transcript = server.transcript();
    assert!(!status.success(), "{transcript}");
    let error = server
        .history()
        .iter()
        .find(|l| l.text.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{transcript}"));
    assert!(
        error.text.contains("cannot register") && error.text.contains(&nowhere),
        "{}",
        error.text
    );
}

#[test]
fn a_client_started_with_etcd_down_waits_then_works_when_etcd_comes_up() {
    let mut etcd = private_etcd();
    let endpoints = vec![etcd.endpoint()];
    etcd.kill();
    let env = unique_env("client_etcd_down");

    let mut client = start_client(
        "client",
        &env,
        &endpoints,
        &["--count", "2", "--interval", "100ms"],
    );
    client.wait_log(&format!("waiting for instances of discovery/{env}/game"));
    assert!(client.is_running());

    etcd.start().expect("etcd restarts");
    let (_server, _) = start_server("1", &env, &endpoints, &[]);
    let got = replies(&mut client, 2);
    assert_eq!(got, ["hi (from 1)"; 2]);
    assert!(client.wait_exit(PATIENCE).success());
}
