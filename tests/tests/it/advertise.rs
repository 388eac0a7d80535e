//! The address `echo-server` registers: `--advertise` wins, a wildcard bind
//! registers a detected address of this host (never the wildcard), bad
//! values are one-line usage errors. Traffic goes to loopback only: the
//! detected address is checked against this host's interfaces, not called.

use std::net::{IpAddr, SocketAddr};

use integration_tests::{
    etcd_client, etcd_endpoints,
    process::{PATIENCE, Proc, Stream, start_client},
    unique_env,
};

/// Spawns `echo-server` with `extra` and returns it with the bound address
/// (from its "listening on" line) and the key it registered.
fn spawn_server(env: &str, extra: &[&str]) -> (Proc, SocketAddr, String) {
    let etcd = etcd_endpoints().join(",");
    let mut args = vec!["--id", "1", "--env", env, "--etcd", &etcd];
    args.extend_from_slice(extra);
    let mut server = Proc::spawn("server", "echo-server", &args);
    let listening = server.wait_log("listening on ").text;
    let bound = listening
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening:?}"));
    let prefix = format!("registered discovery/{env}/game/");
    let registered = server.wait_log(&prefix).text;
    let key = registered
        .split("registered ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no key in {registered:?}"))
        .to_owned();
    (server, bound, key)
}

/// The keys under `discovery/<env>/game/`, without the prefix.
fn registered_addresses(env: &str) -> Vec<String> {
    let prefix = format!("discovery/{env}/game/");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let reply = etcd_client()
            .await
            .get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .expect("get");
        reply
            .kvs()
            .iter()
            .map(|kv| kv.key_str().expect("utf-8")[prefix.len()..].to_owned())
            .collect()
    })
}

#[test]
fn a_wildcard_bind_registers_an_address_of_this_host_never_the_wildcard() {
    let env = unique_env("wildcard");
    let (mut server, bound, key) = spawn_server(&env, &["--addr", "0.0.0.0:0"]);
    assert!(bound.ip().is_unspecified(), "{bound}");
    let registered = registered_addresses(&env);
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert_eq!(key, format!("discovery/{env}/game/{}", registered[0]));
    let addr: SocketAddr = registered[0].parse().expect("an IP address and a port");
    assert_eq!(addr.port(), bound.port());
    assert!(!addr.ip().is_unspecified(), "{addr}");
    let interfaces: Vec<IpAddr> = if_addrs::get_if_addrs()
        .expect("list interfaces")
        .into_iter()
        .map(|i| i.ip())
        .collect();
    assert!(
        interfaces.contains(&addr.ip()),
        "{addr} is not one of this host's addresses {interfaces:?}"
    );
    if interfaces
        .iter()
        .any(|ip| !ip.is_loopback() && ip.is_ipv4() && !ip.to_string().starts_with("169.254."))
    {
        assert!(!addr.ip().is_loopback(), "{addr}");
    }
    let logged = format!("wildcard bind: registering this host's address {addr}");
    assert!(
        server.history().iter().any(|l| l.text.contains(&logged)),
        "{}",
        server.transcript()
    );
    server.signal(libc::SIGINT);
    assert!(server.wait_exit(PATIENCE).success());
}

#[test]
fn advertise_wins_over_a_wildcard_bind_and_clients_reach_it() {
    let env = unique_env("advertise");
    let (mut server, bound, key) =
        spawn_server(&env, &["--addr", "0.0.0.0:0", "--advertise", "127.0.0.1"]);
    let expected = format!("127.0.0.1:{}", bound.port());
    assert_eq!(key, format!("discovery/{env}/game/{expected}"));
    assert_eq!(registered_addresses(&env), [expected]);

    let mut client = start_client("client", &env, &etcd_endpoints(), &["--count", "2"]);
    assert!(
        client.wait_exit(PATIENCE).success(),
        "{}",
        client.transcript()
    );
    let replies: Vec<_> = client
        .history()
        .iter()
        .filter(|l| l.stream == Stream::Out)
        .map(|l| l.text.clone())
        .collect();
    assert_eq!(replies, ["hi (from 1)"; 2]);
    server.signal(libc::SIGINT);
    assert!(server.wait_exit(PATIENCE).success());
}

#[test]
fn advertise_with_a_port_registers_that_port() {
    let env = unique_env("advertise_port");
    let (mut server, _, key) = spawn_server(&env, &["--advertise", "localhost:7"]);
    assert_eq!(key, format!("discovery/{env}/game/localhost:7"));
    server.signal(libc::SIGINT);
    assert!(server.wait_exit(PATIENCE).success());
}

#[test]
fn bad_advertise_values_are_one_line_usage_errors() {
    for (value, why) in [
        (
            "0.0.0.0",
            "0.0.0.0 is a wildcard, where a server listens, not an address clients can connect to",
        ),
        (
            "[::]:50051",
            ":: is a wildcard, where a server listens, not an address clients can connect to",
        ),
        ("h:0", "port 0 is not a port clients can connect to"),
        ("h:port", "the port must be a number from 1 to 65535"),
        (
            "not a host",
            "not a host name or an IP address (IPv6 with a port needs brackets)",
        ),
    ] {
        let mut proc = Proc::spawn(
            "echo-server",
            "echo-server",
            &["--id", "1", "--advertise", value],
        );
        let status = proc.wait_exit(PATIENCE);
        let transcript = proc.transcript();
        assert_eq!(status.code(), Some(2), "{value}:\n{transcript}");
        let lines: Vec<_> = proc.history().iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            lines,
            [format!(
                "error: invalid value '{value}' for '--advertise <HOST[:PORT]>': {why}: expected \
                 HOST or HOST:PORT, such as 10.0.0.5, game-1.internal:50051 or [2001:db8::1]:50051"
            )],
            "{transcript}"
        );
    }
}
