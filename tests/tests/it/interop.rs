//! Go interop: the real Go peer (`interop/go`: grpc-go 1.33 with etcd's
//! naming resolver, endpoints.Manager and the seed's `custom_round_robin`
//! Picker) against our real binaries and crates, on the fixture's etcd.
//! Each test has its own `--env`.

use std::collections::BTreeMap;

use integration_tests::{
    etcd_client, etcd_endpoints,
    go::{self, run_client, start_client as start_go_client, start_server as start_go_server},
    process::{PATIENCE, from_id, parse_load_output, start_client, start_server},
    unique_env,
};

fn ids(lines: &[String]) -> Vec<&str> {
    lines.iter().map(|r| from_id(r).unwrap_or("?")).collect()
}

/// Replies of a Go client making `count` unary calls, `interval` apart.
fn go_calls_every(
    interval: &str,
    env: &str,
    etcd: &[String],
    count: usize,
    extra: &[&str],
) -> Vec<String> {
    let count = count.to_string();
    let mut args = vec!["--count", count.as_str(), "--interval", interval];
    args.extend_from_slice(extra);
    run_client("go client", "client", env, etcd, &args)
}

/// 20 sticky calls of a Go client; how many reached `id`. The seed picker's
/// known race: calls picked before instance `id` is READY go round robin,
/// so the calls are spaced to let the connections come up.
fn go_sticky_hits(env: &str, etcd: &[String], id: &str, extra: &[&str]) -> (usize, Vec<String>) {
    let mut args = vec!["--id", id];
    args.extend_from_slice(extra);
    let got = go_calls_every("50ms", env, etcd, 20, &args);
    let hits = ids(&got).iter().filter(|got| **got == id).count();
    (hits, got)
}

/// Replies of a Go client making `count` unary calls.
fn go_calls(env: &str, etcd: &[String], count: usize, extra: &[&str]) -> Vec<String> {
    go_calls_every("5ms", env, etcd, count, extra)
}

/// Whether `got` alternates between two ids once both are in it (the
/// first calls may all go to whichever server was READY first).
fn alternates(got: &[&str]) -> bool {
    let Some(start) = got.windows(2).position(|w| w[0] != w[1]) else {
        return false;
    };
    got[start..].windows(2).all(|w| w[0] != w[1])
}

#[test]
fn go_client_alternates_over_two_rust_servers_and_sticks_for_every_authority_form() {
    let etcd = etcd_endpoints();
    let env = unique_env("go_to_rust");
    let (_s1, _) = start_server("1", &env, &etcd, &[]);
    let (_s2, _) = start_server("2", &env, &etcd, &[]);
    // encoded: grpc-go >= 1.57 (the seed); raw: grpc-go < 1.57; a valid one.
    for authority in ["encoded", "raw", "game"] {
        let got = go_calls(&env, &etcd, 12, &["--authority", authority]);
        let got = ids(&got);
        assert!(
            alternates(&got) && got.iter().all(|id| ["1", "2"].contains(id)),
            "--authority {authority}: round robin over 1 and 2 should alternate: {got:?}"
        );
        let (on_2, got) = go_sticky_hits(&env, &etcd, "2", &["--authority", authority]);
        assert!(on_2 >= 19, "--authority {authority} --id 2: {got:?}");
    }
}

#[test]
fn strict_authority_rejects_the_encoded_form_and_warns_naming_the_go_fix() {
    let etcd = etcd_endpoints();
    let env = unique_env("strict_authority");
    let (mut server, _) = start_server("1", &env, &etcd, &["--strict-authority"]);

    let mut client = start_go_client("go client", "client", &env, &etcd, &["--count", "1"]);
    let status = client.wait_exit(PATIENCE);
    let transcript = client.transcript();
    assert_eq!(
        status.code(),
        Some(1),
        "the call should fail:\n{transcript}"
    );
    assert!(transcript.contains("PROTOCOL_ERROR"), "{transcript}");
    let warn = server.wait_log("grpc.WithAuthority");
    assert!(
        warn.text.contains("WARN") && warn.text.contains(&format!("discovery%2F{env}%2Fgame")),
        "{}",
        warn.text
    );

    // The Go-side fix works against the same server.
    let got = go_calls(&env, &etcd, 3, &["--authority", "game"]);
    assert_eq!(ids(&got), ["1"; 3]);
    // One WARN for the one rejected connection.
    let warns = server.count_stderr("grpc.WithAuthority");
    assert_eq!(warns, 1, "{}", server.transcript());
}

#[test]
fn rust_client_round_robins_and_sticks_over_two_go_servers() {
    let etcd = etcd_endpoints();
    let env = unique_env("rust_to_go");
    let (_g1, _) = start_go_server("11", &env, &etcd, &[]);
    let (_g2, _) = start_go_server("12", &env, &etcd, &[]);

    let mut client = start_client(
        "client",
        &env,
        &etcd,
        &["--interval", "5ms", "--count", "12"],
    );
    assert!(
        client.wait_exit(PATIENCE).success(),
        "{}",
        client.transcript()
    );
    let got = go::stdout_lines(&client);
    let got = ids(&got);
    assert!(
        alternates(&got) && got.iter().all(|id| ["11", "12"].contains(id)),
        "round robin over the Go servers should alternate: {got:?}"
    );

    let mut sticky = start_client(
        "sticky",
        &env,
        &etcd,
        &["--interval", "5ms", "--count", "10", "--id", "12"],
    );
    assert!(
        sticky.wait_exit(PATIENCE).success(),
        "{}",
        sticky.transcript()
    );
    assert_eq!(ids(&go::stdout_lines(&sticky)), ["12"; 10]);
}

#[test]
fn sigint_of_a_go_server_under_load_fails_no_call_of_a_rust_client() {
    let etcd = etcd_endpoints();
    let env = unique_env("go_sigint_load");
    let (_g1, addr1) = start_go_server("21", &env, &etcd, &["--ttl", "5s"]);
    let (mut g2, addr2) = start_go_server("22", &env, &etcd, &["--ttl", "5s"]);

    let mut client = start_client(
        "load",
        &env,
        &etcd,
        &["--concurrency", "16", "--duration", "3s"],
    );
    // Both connections READY: the load is spread over both servers.
    let mut ready = Vec::new();
    while ready.len() < 2 {
        let line = client.wait_for("an endpoint ready", PATIENCE, |l| {
            l.text.contains("endpoint ready")
        });
        for addr in [&addr1, &addr2] {
            if line.text.contains(&format!("endpoint={addr}#")) && !ready.contains(addr) {
                ready.push(addr.clone());
            }
        }
    }
    g2.signal(libc::SIGINT);
    g2.wait_log("go-peer: stopped");
    assert!(g2.wait_exit(PATIENCE).success());

    assert!(
        client.wait_exit(PATIENCE).success(),
        "{}",
        client.transcript()
    );
    let (summary, per_instance) = parse_load_output(&mut client);
    assert_eq!(summary["errs"], 0, "{}", client.transcript());
    assert!(
        per_instance.get("21").is_some_and(|n| *n > 0)
            && per_instance.get("22").is_some_and(|n| *n > 0),
        "both Go servers should have served: {per_instance:?}"
    );
}

#[test]
fn mixed_fleet_both_clients_reach_all_four_and_stick_both_ways() {
    let etcd = etcd_endpoints();
    let env = unique_env("mixed_fleet");
    let (_r1, _) = start_server("1", &env, &etcd, &[]);
    let (_r2, _) = start_server("2", &env, &etcd, &[]);
    let (_g1, _) = start_go_server("3", &env, &etcd, &[]);
    let (_g2, _) = start_go_server("4", &env, &etcd, &[]);
    let all = ["1", "2", "3", "4"];

    let reached = |per_instance: &BTreeMap<String, u64>| {
        all.iter()
            .all(|id| per_instance.get(*id).is_some_and(|n| *n > 0))
    };
    let mut go_load = start_go_client(
        "go load",
        "load",
        &env,
        &etcd,
        &["--concurrency", "4", "--duration", "1s"],
    );
    assert!(
        go_load.wait_exit(PATIENCE).success(),
        "{}",
        go_load.transcript()
    );
    let (summary, per_instance) = parse_load_output(&mut go_load);
    assert_eq!(summary["errs"], 0, "{}", go_load.transcript());
    assert!(reached(&per_instance), "the Go client: {per_instance:?}");

    let mut load = start_client(
        "load",
        &env,
        &etcd,
        &["--concurrency", "4", "--duration", "1s"],
    );
    assert!(load.wait_exit(PATIENCE).success(), "{}", load.transcript());
    let (summary, per_instance) = parse_load_output(&mut load);
    assert_eq!(summary["errs"], 0, "{}", load.transcript());
    assert!(reached(&per_instance), "our client: {per_instance:?}");

    // Go client sticky to a Rust server, our client sticky to a Go server.
    let (on_2, got) = go_sticky_hits(&env, &etcd, "2", &[]);
    assert!(on_2 >= 19, "Go client --id 2: {got:?}");
    let mut sticky = start_client(
        "sticky",
        &env,
        &etcd,
        &["--interval", "5ms", "--count", "10", "--id", "4"],
    );
    assert!(
        sticky.wait_exit(PATIENCE).success(),
        "{}",
        sticky.transcript()
    );
    assert_eq!(ids(&go::stdout_lines(&sticky)), ["4"; 10]);
}

#[test]
fn etcd_values_are_byte_identical_and_each_side_decodes_the_other() {
    let etcd = etcd_endpoints();
    let go_env = unique_env("bytes_go");
    let rust_env = unique_env("bytes_rust");
    let (mut g, addr) = start_go_server("7", &go_env, &etcd, &[]);

    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let (go_value, rust_value) = rt.block_on(async {
        let mut kv = etcd_client().await;
        let go_key = format!("discovery/{go_env}/game/{addr}");
        let go_value = kv.get(go_key.as_str(), None).await.expect("get").kvs()[0]
            .value()
            .to_vec();
        // Our registry, for the same address and id, under another prefix.
        let registered =
            registry::Registration::new(format!("discovery/{rust_env}/game"), addr.as_str())
                .etcd_endpoints(etcd.iter().cloned())
                .instance_id("7")
                .ttl(std::time::Duration::from_secs(10))
                .register()
                .await
                .expect("registered");
        let rust_value = kv.get(registered.key(), None).await.expect("get").kvs()[0]
            .value()
            .to_vec();
        (go_value, rust_value)
    });
    assert_eq!(
        String::from_utf8_lossy(&rust_value),
        String::from_utf8_lossy(&go_value)
    );
    assert_eq!(
        go_value,
        format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":"7"}}"#).into_bytes()
    );

    // Our resolver decodes Go's value ...
    match resolver::decode_value(&go_value) {
        Ok(resolver::Decoded::Endpoint(entry)) => {
            assert_eq!(entry.endpoint().addr(), addr);
            assert_eq!(entry.endpoint().instance_id(), Some("7"));
        }
        other => panic!("our resolver on Go's value: {other:?}"),
    }
    // ... and Go's endpoints.Manager decodes ours.
    let listed = run_client("go list", "list", &rust_env, &etcd, &[]);
    assert_eq!(
        listed,
        [format!(
            "discovery/{rust_env}/game/{addr} addr={addr} metadata=7"
        )]
    );
    g.signal(libc::SIGINT);
    assert!(g.wait_exit(PATIENCE).success());
}

#[test]
fn all_four_echo_rpcs_go_to_rust_and_rust_to_go() {
    let etcd = etcd_endpoints();
    let env = unique_env("four_rpcs");
    let (_r, _) = start_server("1", &env, &etcd, &[]);
    // Go -> Rust (through etcd and the adapter, the seed's :authority).
    let expect = [
        ("unary", vec!["hi (from 1)"]),
        ("server-stream", vec!["hi (from 1)"]),
        ("client-stream", vec!["hi (from 1)"]),
        (
            "bidi",
            vec!["hi 1 (from 1)", "hi 2 (from 1)", "hi (from 1)"],
        ),
    ];
    for (rpc, want) in &expect {
        let got = run_client(
            "go client",
            "client",
            &env,
            &etcd,
            &["--count", "1", "--rpc", rpc],
        );
        assert_eq!(&got, want, "Go -> Rust {rpc}");
    }

    // Rust -> Go, straight to a Go server.
    let go_env = unique_env("four_rpcs_go");
    let (_g, addr) = start_go_server("9", &go_env, &etcd, &[]);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        use echo_proto::{EchoRequest, echo_client::EchoClient};
        use tokio_stream::StreamExt;
        let mut c = EchoClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let req = |m: &str| EchoRequest {
            message: m.to_owned(),
        };
        let unary = c.unary_echo(req("hi")).await.expect("unary").into_inner();
        assert_eq!(unary.message, "hi (from 9)");
        let mut stream = c
            .server_streaming_echo(req("hi"))
            .await
            .expect("server streaming")
            .into_inner();
        let mut got = Vec::new();
        while let Some(r) = stream.next().await {
            got.push(r.expect("reply").message);
        }
        assert_eq!(got, ["hi (from 9)"]);
        let msgs = || tokio_stream::iter(["a", "b", "c"].map(req));
        let last = c
            .client_streaming_echo(msgs())
            .await
            .expect("client streaming")
            .into_inner();
        assert_eq!(last.message, "c (from 9)");
        let mut bidi = c
            .bidirectional_streaming_echo(msgs())
            .await
            .expect("bidi")
            .into_inner();
        let mut got = Vec::new();
        while let Some(r) = bidi.next().await {
            got.push(r.expect("reply").message);
        }
        assert_eq!(got, ["a (from 9)", "b (from 9)", "c (from 9)"]);
    });
}

/// The seed's client as it is: percent-encoded `:authority`, no
/// WithAuthority, against `echo-server` with its defaults.
#[test]
fn the_seeds_client_shape_gets_replies_from_a_default_echo_server() {
    let etcd = etcd_endpoints();
    let env = unique_env("seed_shape");
    let (mut server, _) = start_server("1", &env, &etcd, &[]);
    let got = go_calls(&env, &etcd, 3, &[]);
    assert_eq!(got, ["hi (from 1)"; 3]);
    server.drain_available();
    let transcript = server.transcript();
    assert!(!transcript.contains("WARN"), "{transcript}");
}

/// A grpc-go client over TLS, served by `serve` (rustls, then the
/// `:authority` fix). grpc-go checks the certificate against, and sends as
/// SNI, the name it sends as `:authority`: with a DNS name (`--authority
/// localhost`, i.e. `credentials.NewClientTLSFromFile(ca, "localhost")`) the
/// calls are served. Without one, that name is the target's endpoint
/// (`discovery%2F<env>%2Fgame` in grpc-go >= 1.57, `discovery/<env>/game` in
/// 1.33): not a DNS name, so rustls refuses the handshake ("illegal
/// parameter") before any HTTP/2, and the `:authority` fix cannot help
/// (docs/interop-go.md says so; Go's own TLS server would accept it).
#[test]
fn go_client_over_tls_is_served_with_a_dns_server_name_and_refused_with_its_target_as_name() {
    let etcd = etcd_endpoints();
    let env = unique_env("go_tls");
    let certs = integration_tests::pki::Certs::generate();
    let encoded = format!("discovery%2F{env}%2Fgame");
    let raw = format!("discovery/{env}/game");
    // Valid for the target forms too, so only the SNI can make them fail.
    let (cert, key) = certs.server_cert_for("go-tls", &["localhost", &encoded, &raw]);
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    let (cert, key, ca) = (path(&cert), path(&key), path(&certs.ca));
    let (_server, _) = start_server("1", &env, &etcd, &["--tls-cert", &cert, "--tls-key", &key]);
    let got = go_calls(
        &env,
        &etcd,
        3,
        &["--tls-ca", &ca, "--authority", "localhost"],
    );
    assert_eq!(got, ["hi (from 1)"; 3]);

    for form in ["encoded", "raw"] {
        let mut client = start_go_client(
            "go client (TLS)",
            "client",
            &env,
            &etcd,
            &["--count", "1", "--tls-ca", &ca, "--authority", form],
        );
        let status = client.wait_exit(PATIENCE);
        let transcript = client.transcript();
        assert_eq!(status.code(), Some(1), "--authority {form}:\n{transcript}");
        assert!(
            transcript.contains("tls: illegal parameter"),
            "--authority {form}:\n{transcript}"
        );
    }
}

/// The seed's client, call for call, on today's grpc-go (1.85) and etcd
/// client (3.6.16): etcd's resolver reports endpoints only as
/// `State.Endpoints` (from client/v3 v3.6.0), grpc-go's `balancer/base`
/// reads only `State.Addresses`, so the seed's `custom_round_robin` sees no
/// address and every call fails. Our registrations are not the cause: the
/// same client with the addresses filled in is served (the default of the
/// peer, `withAddresses` in interop/go/addresses.go).
#[test]
fn the_seeds_client_verbatim_gets_no_address_from_etcd_3_6s_resolver() {
    let etcd = etcd_endpoints();
    let env = unique_env("seed_verbatim");
    let (_s1, _) = start_server("1", &env, &etcd, &[]);
    let mut client = start_go_client(
        "go client, seed verbatim",
        "client",
        &env,
        &etcd,
        &["--seed-verbatim", "--count", "1"],
    );
    let status = client.wait_exit(PATIENCE);
    let transcript = client.transcript();
    assert_eq!(status.code(), Some(1), "the call must fail:\n{transcript}");
    assert!(
        transcript.contains("produced zero addresses"),
        "{transcript}"
    );
    let served = go_calls(&env, &etcd, 3, &[]);
    assert_eq!(
        ids(&served),
        ["1", "1", "1"],
        "with the addresses filled in"
    );
}

/// etcd's resolver stopped filling `resolver.Address.Metadata` in client/v3
/// v3.6.8: the seed's picker, which reads it, never finds the ServiceID's
/// instance and sends sticky calls round robin, silently. Reading the
/// instance id from etcd (the endpoint whose Addr is the connection's, as
/// `endpoints.Manager` lists it: the peer's default) sticks.
#[test]
fn a_go_picker_reading_address_metadata_no_longer_sticks_one_reading_etcd_does() {
    let etcd = etcd_endpoints();
    let env = unique_env("sticky_from");
    let (_s1, _) = start_server("1", &env, &etcd, &[]);
    let (_s2, _) = start_server("2", &env, &etcd, &[]);
    let (on_2, got) = go_sticky_hits(&env, &etcd, "2", &["--sticky-from", "metadata"]);
    let on_1 = ids(&got).iter().filter(|id| **id == "1").count();
    assert!(
        on_1 >= 5 && on_2 >= 5,
        "Address.Metadata is empty, so --id 2 goes round robin: {got:?}"
    );
    // (The seed picker's race: a first call picked before 2 is READY goes
    // round robin.)
    let (on_2, got) = go_sticky_hits(&env, &etcd, "2", &["--sticky-from", "etcd"]);
    assert!(on_2 >= 19, "reading the id from etcd sticks: {got:?}");
}
