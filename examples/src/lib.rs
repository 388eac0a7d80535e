//! An example service that is not echo: a stateful game.
//!
//! A player [`Join`](pb::game_server::Game::join)s one instance (round
//! robin), which holds its score; every later
//! [`Play`](pb::game_server::Game::play) must reach that instance, so the
//! client makes it sticky to the instance the balancer says served the
//! `Join` ([`etcdlb::client::ServedBy`]). An instance that does not hold the player
//! answers `NOT_FOUND`.
//!
//! The server (`src/bin/game-server.rs`) is [`serve`] around [`Game`]; the
//! client (`src/bin/game-client.rs`) is [`resolver`] + [`balancer`] around the
//! generated [`GameClient`](pb::game_client::GameClient). Both are the
//! README's "Use it for your own service".
//!
//! ```
//! use game_example::{Game, pb::{JoinRequest, PlayRequest, game_server::Game as _}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tonic::Status> {
//! let game = Game::new("1");
//! let joined = game.join(tonic::Request::new(JoinRequest { player: "ann".into() })).await?;
//! assert_eq!(joined.into_inner().instance, "1");
//! let play = |points| tonic::Request::new(PlayRequest { player: "ann".into(), points });
//! game.play(play(2)).await?;
//! assert_eq!(game.play(play(3)).await?.into_inner().score, 5);
//! # Ok(()) }
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tonic::{Request, Response, Status};

/// Generated code of `proto/game.proto` (package `game.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("game.v1");
}

use pb::{JoinReply, JoinRequest, PlayReply, PlayRequest};

/// Encoded `FileDescriptorSet` of `proto/game.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/game_descriptor.bin"));

/// The game of one instance: the scores of the players who joined it.
#[derive(Clone, Debug)]
pub struct Game {
    instance: Arc<str>,
    scores: Arc<Mutex<HashMap<String, u64>>>,
}

impl Game {
    /// The game of instance `instance` (named in every reply), with no
    /// player yet.
    pub fn new(instance: impl Into<Arc<str>>) -> Self {
        Self {
            instance: instance.into(),
            scores: Arc::default(),
        }
    }

    fn scores(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // A panic while holding the lock cannot leave a score half-written.
        self.scores.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[tonic::async_trait]
impl pb::game_server::Game for Game {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let player = request.into_inner().player;
        if player.is_empty() {
            return Err(Status::invalid_argument("a player needs a name"));
        }
        self.scores().entry(player).or_insert(0);
        Ok(Response::new(JoinReply {
            instance: self.instance.to_string(),
        }))
    }

    async fn play(&self, request: Request<PlayRequest>) -> Result<Response<PlayReply>, Status> {
        let PlayRequest { player, points } = request.into_inner();
        let mut scores = self.scores();
        let Some(score) = scores.get_mut(&player) else {
            return Err(Status::not_found(format!(
                "player {player:?} is not on instance {}: join first",
                self.instance
            )));
        };
        *score += u64::from(points);
        Ok(Response::new(PlayReply {
            instance: self.instance.to_string(),
            score: *score,
        }))
    }
}
