//! The game end to end: three `game-server` processes on the `serve`
//! lifecycle, a client on resolver + balancer. Players join round robin and
//! play sticky on the instance that holds them; another instance drains
//! (SIGINT) under load and restarts: no call fails, and the players stay
//! where they are.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use etcdlb::client::{Balancer, Resolver, ServedBy, ServedByExt, StickyExt};
use game_example::pb::{JoinRequest, PlayRequest, game_client::GameClient};
use integration_tests::{
    etcd_endpoints,
    process::{PATIENCE, Proc, Stream},
    unique_prefix,
};
use tokio::sync::Notify;

const SERVER: &str = env!("CARGO_BIN_EXE_game-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_game-client");

/// A `game-server` with `id`, waited for until it is registered.
fn start(id: &str, prefix: &str) -> Proc {
    let etcd = etcd_endpoints().join(",");
    let args = ["--id", id, "--prefix", prefix, "--etcd", &etcd];
    let mut server = Proc::spawn_exe(&format!("game {id}"), Path::new(SERVER), &args, &[]);
    let listening = server.wait_log("listening on ").text;
    let addr = listening
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {listening:?}"))
        .to_owned();
    server.wait_log(&format!("registered {prefix}/{addr}"));
    server
}

fn join(player: &str) -> JoinRequest {
    JoinRequest {
        player: player.into(),
    }
}

fn play(player: &str, instance: &str) -> tonic::Request<PlayRequest> {
    tonic::Request::new(PlayRequest {
        player: player.into(),
        points: 1,
    })
    .sticky(instance)
}

fn served_by<T>(response: &tonic::Response<T>) -> String {
    response
        .served_by()
        .and_then(ServedBy::instance_id)
        .expect("the balancer names the instance that served")
        .to_owned()
}

#[test]
fn players_stay_on_their_instance_while_another_drains_under_load_and_restarts() {
    let prefix = unique_prefix("game");
    let mut servers: HashMap<&str, Proc> =
        ["1", "2", "3"].map(|id| (id, start(id, &prefix))).into();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let balancer = rt.block_on(async {
        let changes = Resolver::builder(prefix.as_str())
            .etcd_endpoints(etcd_endpoints())
            .connect()
            .await
            .expect("resolver")
            .resolve();
        let balancer = Balancer::builder().name(prefix.as_str()).build(changes);
        tokio::time::timeout(PATIENCE, balancer.wait_for_ready(3))
            .await
            .expect("three instances ready");
        balancer
    });
    let mut game = GameClient::new(balancer.clone());

    // Join round robin: the served-by extension and the reply agree on the
    // instance holding the player; six joins over three instances use all.
    let mut holder = HashMap::new();
    for n in 0..6 {
        let player = format!("p{n}");
        let reply = rt.block_on(game.join(join(&player))).expect("join");
        let instance = served_by(&reply);
        assert_eq!(reply.into_inner().instance, instance);
        holder.insert(player, instance);
    }
    let used: HashSet<_> = holder.values().cloned().collect();
    assert_eq!(
        used.len(),
        3,
        "round robin should use every instance: {holder:?}"
    );

    // Sticky plays reach the holder, which keeps the score.
    for round in 1..=3u64 {
        for (player, instance) in &holder {
            let reply = rt
                .block_on(game.play(play(player, instance)))
                .unwrap_or_else(|e| panic!("{player} on {instance}: {e}"))
                .into_inner();
            assert_eq!(
                (reply.instance.as_str(), reply.score),
                (instance.as_str(), round)
            );
        }
    }

    // Another instance than p0's drains under load and comes back.
    let keeper = holder["p0"].clone();
    let victim = ["1", "2", "3"]
        .into_iter()
        .find(|id| *id != keeper)
        .expect("another instance");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, on_victim) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let victim_busy = Arc::new(Notify::new());
    let mut load = Vec::new();
    for worker in 0..8 {
        let (mut game, stop, ok, on_victim, errors, victim_busy) = (
            game.clone(),
            stop.clone(),
            ok.clone(),
            on_victim.clone(),
            errors.clone(),
            victim_busy.clone(),
        );
        load.push(rt.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                n += 1;
                match game.join(join(&format!("load-{worker}-{n}"))).await {
                    Ok(reply) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if served_by(&reply) == victim
                            && on_victim.fetch_add(1, Ordering::Relaxed) == 50
                        {
                            victim_busy.notify_one();
                        }
                    }
                    Err(e) => errors.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    let keeper_plays = {
        let (mut game, stop, errors, keeper) =
            (game.clone(), stop.clone(), errors.clone(), keeper.clone());
        rt.spawn(async move {
            let mut score = 3;
            while !stop.load(Ordering::Relaxed) && score < 100_000 {
                match game.play(play("p0", &keeper)).await {
                    Ok(reply) => {
                        score += 1;
                        let reply = reply.into_inner();
                        assert_eq!((reply.instance, reply.score), (keeper.clone(), score));
                    }
                    Err(e) => errors.lock().unwrap().push(format!("p0: {e}")),
                }
            }
            score
        })
    };
    rt.block_on(async {
        tokio::time::timeout(PATIENCE, victim_busy.notified())
            .await
            .expect("the load reaches the victim")
    });
    let mut drained = servers.remove(victim).expect("victim");
    drained.signal(libc::SIGINT);
    let status = drained.wait_exit(PATIENCE);
    assert!(
        status.success(),
        "{victim}: {status}\n{}",
        drained.transcript()
    );
    servers.insert(victim, start(victim, &prefix));
    rt.block_on(async {
        tokio::time::timeout(PATIENCE, balancer.wait_for_ready(3))
            .await
            .expect("the restarted instance is ready")
    });
    stop.store(true, Ordering::Relaxed);
    for task in load {
        rt.block_on(task).expect("load task");
    }
    let final_score = rt.block_on(keeper_plays).expect("p0's plays");
    let errors = errors.lock().unwrap().clone();
    assert_eq!(errors, Vec::<String>::new(), "no call may fail");
    let (ok, on_victim) = (
        ok.load(Ordering::Relaxed),
        on_victim.load(Ordering::Relaxed),
    );
    eprintln!(
        "load: {ok} joins ({on_victim} on instance {victim}), p0 played {} times",
        final_score - 3
    );
    assert!(ok > 50 && final_score > 3);

    // p0 is still on its instance with its whole score; the restarted
    // instance forgot its players (it is stateful), and says so.
    let reply = rt
        .block_on(game.play(play("p0", &keeper)))
        .expect("p0 still plays")
        .into_inner();
    assert_eq!((reply.instance, reply.score), (keeper, final_score + 1));
    let lost = holder
        .iter()
        .find(|(_, instance)| instance.as_str() == victim)
        .map(|(player, _)| player.clone())
        .expect("a player of the restarted instance");
    let status = rt
        .block_on(game.play(play(&lost, victim)))
        .expect_err("the restarted instance does not know the player");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status}");

    // The client program: one join, then its plays on that instance.
    let etcd = etcd_endpoints().join(",");
    let args = [
        "--player", "ann", "--rounds", "3", "--prefix", &prefix, "--etcd", &etcd,
    ];
    let mut client = Proc::spawn_exe("client", Path::new(CLIENT), &args, &[]);
    assert!(
        client.wait_exit(PATIENCE).success(),
        "{}",
        client.transcript()
    );
    let lines: Vec<String> = client
        .history()
        .iter()
        .filter(|l| l.stream == Stream::Out)
        .map(|l| l.text.clone())
        .collect();
    let instance = lines
        .first()
        .and_then(|l| l.split(" on ").nth(1))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("unexpected output {lines:?}"));
    assert_eq!(
        lines,
        (1..=3)
            .map(|n| format!("ann on {instance}: score {n}"))
            .collect::<Vec<_>>()
    );

    for server in servers.values_mut() {
        server.signal(libc::SIGINT);
    }
    for (id, server) in &mut servers {
        let status = server.wait_exit(PATIENCE);
        assert!(status.success(), "{id}: {status}");
    }
}
