//! The `echo-server` binary on its own: the four Echo RPCs, health,
//! reflection, the order of its shutdown, and its accept loop out of file
//! descriptors.

use echo_proto::{EchoRequest, echo_client::EchoClient};
use std::{net::TcpStream, path::Path};

use integration_tests::{
    etcd_client, etcd_endpoints, free_port,
    process::{PATIENCE, Proc, bin_path, start_registered, start_server},
    unique_env,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

fn hi(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
    }
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let reply = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check");
    reply.into_inner().status()
}

#[test]
fn a_server_answers_the_four_echo_rpcs_health_and_reflection() {
    let etcd = etcd_endpoints();
    let (_server, addr) = start_server("7", &unique_env("rpcs"), &etcd, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let channel = channel(&addr).await;
        let mut echo = EchoClient::new(channel.clone());

        let unary = echo.unary_echo(hi("a")).await.expect("unary").into_inner();
        assert_eq!(unary.message, "a (from 7)");

        let mut stream = echo
            .server_streaming_echo(hi("b"))
            .await
            .expect("server streaming")
            .into_inner();
        let mut got = Vec::new();
        while let Some(reply) = stream.message().await.expect("stream") {
            got.push(reply.message);
        }
        assert_eq!(got, ["b (from 7)"]);

        let requests = futures::stream::iter([hi("c1"), hi("c2")]);
        let reply = echo
            .client_streaming_echo(requests)
            .await
            .expect("client streaming")
            .into_inner();
        assert_eq!(reply.message, "c2 (from 7)");

        let requests = futures::stream::iter([hi("d1"), hi("d2"), hi("d3")]);
        let mut stream = echo
            .bidirectional_streaming_echo(requests)
            .await
            .expect("bidi")
            .into_inner();
        let mut got = Vec::new();
        while let Some(reply) = stream.message().await.expect("stream") {
            got.push(reply.message);
        }
        assert_eq!(got, ["d1 (from 7)", "d2 (from 7)", "d3 (from 7)"]);

        assert_eq!(health(&channel, "").await, ServingStatus::Serving);
        assert_eq!(
            health(&channel, echo_proto::SERVICE_NAME).await,
            ServingStatus::Serving
        );

        let names = reflected_services(&channel).await;
        assert!(
            names.iter().any(|n| n == echo_proto::SERVICE_NAME),
            "{names:?}"
        );
    });
}

/// The services a server lists through reflection (v1 `ListServices`).
pub(crate) async fn reflected_services(channel: &Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let reply = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner()
        .message()
        .await
        .expect("reflection reply")
        .expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[test]
fn a_stopping_server_reports_not_serving_and_leaves_etcd_before_it_stops() {
    let etcd = etcd_endpoints();
    let env = unique_env("not_serving");
    let (mut server, addr) = start_server("1", &env, &etcd, &["--drain", "3s"]);
    let key = format!("discovery/{env}/game/{addr}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let channel = rt.block_on(async {
        let channel = channel(&addr).await;
        assert_eq!(health(&channel, "").await, ServingStatus::Serving);
        let value = etcd_client()
            .await
            .get(key.as_str(), None)
            .await
            .expect("get");
        let value = std::str::from_utf8(value.kvs()[0].value())
            .expect("utf-8")
            .to_owned();
        assert_eq!(
            value,
            format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":"1"}}"#)
        );
        channel
    });

    server.signal(libc::SIGINT);
    // Not "signal received: draining", logged before the health change.
    server.wait_log("etcdlb_serve::server: draining");
    rt.block_on(async {
        assert_eq!(health(&channel, "").await, ServingStatus::NotServing);
        assert_eq!(
            health(&channel, echo_proto::SERVICE_NAME).await,
            ServingStatus::NotServing
        );
        let left = etcd_client()
            .await
            .get(key.as_str(), None)
            .await
            .expect("get");
        assert!(left.kvs().is_empty(), "the key is still there");
        // Still answering while draining.
        let reply = EchoClient::new(channel.clone())
            .unary_echo(hi("late"))
            .await
            .expect("a call while draining");
        assert_eq!(reply.into_inner().message, "late (from 1)");
    });
    assert!(server.wait_exit(PATIENCE).success());
}

#[test]
fn a_second_signal_ends_the_drain_at_once() {
    let etcd = etcd_endpoints();
    let env = unique_env("second_signal");
    let (mut server, _) = start_server("1", &env, &etcd, &["--drain", "60s"]);
    server.signal(libc::SIGTERM);
    server.wait_log("etcdlb_serve::server: draining");
    server.signal(libc::SIGINT);
    let status = server.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(130), "{}", server.transcript());
}

/// A real EMFILE: the server runs with `ulimit -n 64` and gets more
/// connections than that. Without a pause, a failed accept is retried at
/// once while the listener stays readable: measured on the unpatched
/// server, a core busy for as long as it lasts. With it, failures come 5 ms,
/// 10 ms, 20 ms, … apart (warned once, then at debug), and accepting
/// resumes once descriptors are free again.
#[test]
fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    let etcd = etcd_endpoints();
    let env = unique_env("emfile");
    let metrics = format!("127.0.0.1:{}", free_port());
    let echo_server = bin_path("echo-server");
    let (mut server, addr) = start_registered(
        "server 1 (ulimit -n 64)",
        "1",
        &env,
        &etcd,
        &["--metrics", &metrics],
        |name, args| {
            // `sh` lowers the limit for the server alone, then becomes it.
            let mut all = vec!["-c", "ulimit -n 64 && exec \"$0\" \"$@\""];
            all.push(echo_server.to_str().expect("utf-8 path"));
            all.extend_from_slice(args);
            Proc::spawn_exe(
                name,
                Path::new("/bin/sh"),
                &all,
                &[("RUST_LOG", "info,etcdlb_serve=debug")],
            )
        },
    );

    let clients: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&addr).expect("connect (the kernel completes it)"))
        .collect();
    server.wait_log("cannot accept connections; pausing accepts");
    // The 6th failure comes after pauses of 5 + 10 + 20 + 40 + 80 ms: a
    // spinning loop would have logged thousands of failures by then.
    let sixth = server.wait_log("failed_accepts=6 ");
    assert!(sixth.text.contains("retry_in_ms=160"), "{}", sixth.text);
    assert!(sixth.text.contains("Too many open files"), "{}", sixth.text);

    // Freeing descriptors: the server closes the connections we close.
    drop(clients);
    let again = server.wait_log("accepting connections again");
    let failed: u32 = again
        .text
        .split("failed_accepts=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {:?}", again.text));
    assert!((6..=30).contains(&failed), "{failed} failed accepts");

    // At least this burst (freeing may cause a short second one: the
    // server accepts the waiting connections faster than it closes ours).
    let body = crate::metrics::scrape(&metrics);
    let counted = crate::metrics::value(&body, "serve_accept_errors ")
        .unwrap_or_else(|| panic!("no serve_accept_errors in\n{body}"));
    assert!(
        counted >= f64::from(failed) && counted <= 60.0,
        "{counted} counted, {failed} in the first burst"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let reply = EchoClient::new(channel(&addr).await)
            .unary_echo(hi("back"))
            .await
            .expect("a call once accepting again");
        assert_eq!(reply.into_inner().message, "back (from 1)");
    });
}
