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

/// The etcd binary found is the version `ETCD_VERSION` names (default
/// 3.6; `ETCD_BIN` alone may be any version), as its `--version` says, and
/// it serves that version (its `/version` endpoint).
#[test]
fn the_etcd_found_is_the_version_asked_for() {
    let bin = etcd_provision::find_etcd_binary().expect("an etcd binary");
    let reported = etcd_provision::binary_version(&bin).unwrap_or_else(|e| panic!("{e}"));
    let asked = std::env::var("ETCD_VERSION").ok();
    if asked.is_some() || std::env::var_os("ETCD_BIN").is_none() {
        let asked = asked.unwrap_or_else(|| etcd_provision::DEFAULT_VERSION.to_owned());
        assert!(
            reported.starts_with(&format!("{asked}.")),
            "asked for {asked}, got {reported} ({})",
            bin.display()
        );
    }
    let etcd = etcd_provision::Etcd::spawn(&bin).unwrap_or_else(|e| panic!("{e}"));
    let host = etcd.endpoints()[0].trim_start_matches("http://").to_owned();
    let served = get(&host, "/version");
    assert!(
        served.contains(&format!("\"etcdserver\":\"{reported}\"")),
        "{served}"
    );
}

/// `GET path` over HTTP/1.0: the body.
fn get(host: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(host).expect("connect");
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("request");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("response");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(text)
}
