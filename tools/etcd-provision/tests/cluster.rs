//! A real 3-member cluster: started on free ports, it elects a leader, a
//! killed leader is replaced, a restarted member rejoins.

use std::time::Duration;

use etcd_provision::{Cluster, health, member_status};

#[test]
fn a_three_member_cluster_survives_its_leaders_death_and_the_member_rejoins() {
    let mut cluster = Cluster::start_default(3).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cluster.len(), 3);
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<u64> = endpoints
        .iter()
        .map(|e| {
            member_status(e.trim_start_matches("http://"))
                .expect("status")
                .member_id
        })
        .collect();
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );

    let other = (leader + 1) % 3;
    cluster.move_leader(other).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cluster.leader(), Some(other));
    let leader = other;
    cluster.kill(leader);
    assert!(!cluster.is_running(leader));
    let next = cluster
        .wait_for_leader(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(next, leader, "a dead member cannot lead");
    assert!(cluster.follower().is_some_and(|f| f != next));

    cluster.restart(leader).unwrap_or_else(|e| panic!("{e}"));
    assert!(cluster.is_running(leader));
    health(cluster.endpoint(leader).trim_start_matches("http://")).expect("rejoined and healthy");
}
