//! Pick cost (choosing the endpoint: snapshot load, the policy's picker,
//! index; what `Balancer::pick_with` does): round robin and sticky (a
//! different instance id per pick, cycling through all of them) at 1 to
//! 10 000 READY endpoints, single-threaded and with 2 threads contending on
//! one balancer; least request (`lr`) and ring hash (`rh`, a
//! key per request) at 1, 1 000 and 10 000; the ring's build time
//! (`ring_build`) at 1 000 and 10 000.
//!
//! Every endpoint is a real HTTP/2 connection made by the balancer itself,
//! so the snapshot, its `Vec` of READY entries and the per-endpoint handles
//! are exactly what a request reads. The server side runs in a child process
//! (this same binary, re-executed with `BALANCER_BENCH_SERVE=1`) so that
//! 10 000 connections fit in each process's file-descriptor limit.
//!
//! `cargo bench -p balancer --bench pick` (add `-- --output-format bencher`
//! for one line per benchmark, as `cargo xtask bench` reads it).

use std::{
    io::{BufRead as _, BufReader},
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::Barrier,
    time::{Duration, Instant},
};

use etcdlb_balancer::{
    Balancer, Change, Endpoint, HashKey, LeastRequest, Policy, RingHash, RoundRobin, Sticky,
};
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use echo_proto::{
    EchoRequest, EchoResponse,
    echo_server::{Echo, EchoServer},
};
use futures::{Stream, StreamExt as _, stream};
use tonic::{Request, Response, Status, Streaming};

const SIZES: [usize; 5] = [1, 10, 100, 1_000, 10_000];
/// Sizes at which every policy's pick is measured.
const POLICY_SIZES: [usize; 3] = [1, 1_000, 10_000];
const SERVER_PORTS: usize = 16;

fn main() {
    if std::env::var_os("BALANCER_BENCH_SERVE").is_some() {
        serve();
        return;
    }
    let server = Server::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group("pick");
    for n in SIZES {
        let balancer = runtime.block_on(connect(&server.addrs, n, RoundRobin));
        group.bench_with_input(BenchmarkId::new("rr", n), &n, |b, _| {
            b.iter(|| black_box(balancer.pick_with(None, |e| e.addr().len())))
        });
        group.bench_with_input(BenchmarkId::new("rr_2threads", n), &n, |b, _| {
            b.iter_custom(|iters| {
                contended(&balancer, iters, |b, _| {
                    b.pick_with(None, |e| e.addr().len())
                })
            })
        });
        {
            let ids: Vec<Sticky> = (0..n).map(|i| Sticky::new(i.to_string())).collect();
            group.bench_with_input(BenchmarkId::new("sticky", n), &n, |b, _| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) % ids.len();
                    black_box(balancer.pick_with(Some(&ids[i]), |e| e.addr().len()))
                })
            });
            group.bench_with_input(BenchmarkId::new("sticky_2threads", n), &n, |b, _| {
                b.iter_custom(|iters| {
                    contended(&balancer, iters, |b, i| {
                        b.pick_with(Some(&ids[i as usize % ids.len()]), |e| e.addr().len())
                    })
                })
            });
        }
        if n == 10_000 || n == 1_000 {
            // The ring over READY endpoints, as the owner task builds it.
            let ready = balancer.ready_endpoints();
            group.bench_with_input(BenchmarkId::new("ring_build", n), &n, |b, _| {
                b.iter(|| black_box(RingHash::new().build(&ready)))
            });
        }
        // Close this size's connections before opening the next size's.
        runtime.block_on(async move { drop(balancer) });
        if POLICY_SIZES.contains(&n) {
            let lr = runtime.block_on(connect(&server.addrs, n, LeastRequest::new()));
            group.bench_with_input(BenchmarkId::new("lr", n), &n, |b, _| {
                b.iter(|| black_box(lr.pick_with(None, |e| e.addr().len())))
            });
            runtime.block_on(async move { drop(lr) });
            let rh = runtime.block_on(connect(&server.addrs, n, RingHash::new()));
            // Requests with a key each, as a caller would send them.
            let heads: Vec<http::request::Parts> = (0..1024)
                .map(|i| {
                    let (mut head, ()) = http::Request::new(()).into_parts();
                    head.extensions.insert(HashKey::new(format!("player-{i}")));
                    head
                })
                .collect();
            group.bench_with_input(BenchmarkId::new("rh", n), &n, |b, _| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) % heads.len();
                    black_box(rh.pick_for(&heads[i], |e| e.addr().len()))
                })
            });
            runtime.block_on(async move { drop(rh) });
        }
    }
    group.finish();
    c.final_summary();
    drop(server);
}

/// Two threads each pick `iters` times at once; the time of the slower one,
/// i.e. the time per pick while the other thread picks too.
fn contended(
    balancer: &Balancer,
    iters: u64,
    pick: impl Fn(&Balancer, u64) -> Option<usize> + Sync,
) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let run = || {
            barrier.wait();
            let started = Instant::now();
            for i in 0..iters {
                black_box(pick(balancer, i));
            }
            started.elapsed()
        };
        let other = s.spawn(run);
        let mine = run();
        mine.max(other.join().expect("bench thread"))
    })
}

/// A balancer with `policy` over `n` endpoints, all READY.
async fn connect(addrs: &[String], n: usize, policy: impl Policy) -> Balancer {
    let changes: Vec<Change> = (0..n)
        .map(|i| {
            let addr = &addrs[i % addrs.len()];
            let endpoint = Endpoint::new(addr)
                .expect("server address")
                .with_instance_id(i.to_string());
            Change::Insert(format!("bench/{i}"), endpoint)
        })
        .collect();
    let balancer = Balancer::builder()
        .name("bench")
        .policy(policy)
        .build(stream::iter(changes).chain(stream::pending()));
    let started = Instant::now();
    // Poll rather than `wait_for_ready`, which lists (and sorts) every
    // endpoint on every change: O(n²) over the initial connects.
    while balancer.ready_count() < n {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} of {n} READY after 600 s",
            balancer.ready_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "pick bench: {n} endpoints READY in {:.1?}",
        started.elapsed()
    );
    balancer
}

/// The child process serving the endpoints.
struct Server {
    child: Child,
    addrs: Vec<String>,
}

impl Server {
    fn start() -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .env("BALANCER_BENCH_SERVE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the bench server");
        let stdout = child.stdout.take().expect("child stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's addresses");
        let addrs: Vec<String> = line.split_whitespace().map(String::from).collect();
        assert_eq!(addrs.len(), SERVER_PORTS, "bench server said {line:?}");
        Self { child, addrs }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Child: serve the echo service on `SERVER_PORTS` ports until stdin closes
/// (the parent exited or dropped us).
fn serve() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut addrs = Vec::new();
        let mut incoming = Vec::new();
        for _ in 0..SERVER_PORTS {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addrs.push(listener.local_addr().expect("addr").to_string());
            incoming.push(Box::pin(stream::unfold(listener, |l| async move {
                let conn = l.accept().await.map(|(tcp, _)| tcp);
                Some((conn, l))
            })));
        }
        println!("{}", addrs.join(" "));
        let server = tonic::transport::Server::builder()
            .add_service(EchoServer::new(Host))
            .serve_with_incoming(stream::select_all(incoming));
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        });
        tokio::select! {
            _ = server => {}
            _ = stdin_closed => {}
        }
    });
}

struct Host;

type BoxStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Host {
    async fn unary_echo(&self, r: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            message: r.into_inner().message,
        }))
    }

    type ServerStreamingEchoStream = BoxStream;

    async fn server_streaming_echo(
        &self,
        _: Request<EchoRequest>,
    ) -> Result<Response<BoxStream>, Status> {
        Err(Status::unimplemented("bench"))
    }

    async fn client_streaming_echo(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        Err(Status::unimplemented("bench"))
    }

    type BidirectionalStreamingEchoStream = BoxStream;

    async fn bidirectional_streaming_echo(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<BoxStream>, Status> {
        Err(Status::unimplemented("bench"))
    }
}
