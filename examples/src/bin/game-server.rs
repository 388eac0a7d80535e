//! `game-server --id ID [--prefix discovery/dev/game] [--etcd URL] [--addr 127.0.0.1:0]`:
//! the game on the `serve` lifecycle (SIGINT/SIGTERM drain without failing a call).

use clap::Parser;
use etcdlb::server::{Registration, Server, shutdown_signal};
use game_example::{Game, pb::game_server::GameServer};
use tonic::server::NamedService;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    id: String,
    #[arg(long, default_value = "discovery/dev/game")]
    prefix: String,
    #[arg(long, env = "ETCD_ENDPOINTS", default_value = "http://127.0.0.1:2379")]
    etcd: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> Result<(), etcdlb::server::Error> {
    let args = Args::parse();
    etcdlb::init_logging();
    let shutdown = shutdown_signal()?; // the first signal drains, a second exits
    let registration = Registration::new(args.prefix, "") // "": the bound address
        .etcd_endpoints(args.etcd.split(','))
        .instance_id(args.id.as_str());
    let router =
        tonic::transport::Server::builder().add_service(GameServer::new(Game::new(args.id)));
    Server::new(registration)
        .health_for(GameServer::<Game>::NAME)
        .reflection(game_example::FILE_DESCRIPTOR_SET)
        .bind(args.addr)
        .await?
        .serve(router, shutdown)
        .await
}
