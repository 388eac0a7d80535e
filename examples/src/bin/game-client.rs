//! `game-client --player NAME [--rounds 3] [--prefix discovery/dev/game] [--etcd URL]`:
//! joins one instance (round robin), then plays there (sticky to it).

use clap::Parser;
use etcdlb::client::{Balancer, Resolver, ServedBy};
use etcdlb::prelude::*; // ServedByExt, StickyExt
use game_example::pb::{JoinRequest, PlayRequest, game_client::GameClient};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    player: String,
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    #[arg(long, default_value = "discovery/dev/game")]
    prefix: String,
    #[arg(long, env = "ETCD_ENDPOINTS", default_value = "http://127.0.0.1:2379")]
    etcd: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    etcdlb::init_logging();
    let resolver = Resolver::builder(args.prefix.as_str()).etcd_endpoints(args.etcd.split(','));
    let changes = resolver.connect().await?.resolve();
    let mut game = GameClient::new(Balancer::builder().name(args.prefix).build(changes));
    let joined = game
        .join(JoinRequest {
            player: args.player.clone(),
        })
        .await?;
    // The balancer tells which instance served the call: stay there.
    let instance = joined
        .served_by()
        .and_then(ServedBy::instance_id)
        .unwrap_or_default()
        .to_owned();
    for _ in 0..args.rounds {
        let play = PlayRequest {
            player: args.player.clone(),
            points: 1,
        };
        let reply = game
            .play(tonic::Request::new(play).sticky(instance.as_str()))
            .await?
            .into_inner();
        println!(
            "{} on {}: score {}",
            args.player, reply.instance, reply.score
        );
    }
    Ok(())
}
