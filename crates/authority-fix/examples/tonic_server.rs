//! A tonic server that grpc-go clients of any version can call: every
//! accepted connection goes through `etcdlb_authority_fix::wrap` before tonic.
//!
//! ```sh
//! cargo run -p authority-fix --features tonic --example tonic_server -- 127.0.0.1:50051
//! ```
//!
//! Serves `grpc.health.v1.Health` (try `grpc_health_probe` or a grpc-go
//! client dialing with a target whose endpoint has a `/`).

use futures::TryStreamExt;
use tonic::transport::{Server, server::TcpIncoming};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "serving grpc.health.v1.Health on {}",
        listener.local_addr()?
    );
    let (_health, health_service) = tonic_health::server::health_reporter();
    let incoming = TcpIncoming::from(listener).map_ok(etcdlb_authority_fix::wrap);
    Server::builder()
        .add_service(health_service)
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
