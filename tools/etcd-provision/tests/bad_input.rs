//! Each way provisioning can fail gives one clear line and leaves nothing
//! behind.

use std::path::Path;

use etcd_provision::{Etcd, EtcdProcess, free_port};

#[test]
fn unreachable_etcd_endpoints_is_a_clear_error() {
    let url = format!("http://127.0.0.1:{}", free_port().expect("port"));
    let error = Etcd::external(&url).expect_err("nothing listens there");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("ETCD_ENDPOINTS: {url} is not a usable etcd: ")),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
}

#[test]
fn empty_etcd_endpoints_is_a_clear_error() {
    let error = Etcd::external(" , ").expect_err("empty");
    assert_eq!(error.to_string(), "ETCD_ENDPOINTS is set but empty");
}

#[test]
fn an_etcd_binary_that_exits_at_start_is_reported_and_cleaned_up() {
    let parent = tempfile::tempdir().expect("parent dir");
    let error =
        EtcdProcess::start_new_in(Path::new("/bin/false"), parent.path()).expect_err("exits");
    let message = error.to_string();
    assert!(
        message.starts_with("etcd (/bin/false) exited at start with exit status: 1"),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
    let left: Vec<_> = std::fs::read_dir(parent.path()).expect("read").collect();
    assert!(left.is_empty(), "temp dirs left behind: {left:?}");
}

#[test]
fn a_missing_etcd_binary_is_reported() {
    let error = EtcdProcess::start_new(Path::new("/nonexistent/etcd")).expect_err("missing");
    assert!(
        error
            .to_string()
            .starts_with("cannot run /nonexistent/etcd: "),
        "{error}"
    );
}

#[test]
fn data_dirs_of_dead_processes_are_swept() {
    let parent = tempfile::tempdir().expect("parent dir");
    // pid 0 never names a process of ours: /proc/0 does not exist.
    let stale = parent.path().join("etcd-provision-0-abc");
    std::fs::create_dir_all(stale.join("data")).expect("stale dir");
    let mine = parent
        .path()
        .join(format!("etcd-provision-{}-xyz", std::process::id()));
    std::fs::create_dir_all(&mine).expect("live dir");
    let _ = EtcdProcess::start_new_in(Path::new("/bin/false"), parent.path());
    assert!(!stale.exists(), "stale dir kept");
    assert!(mine.exists(), "a live process's dir was removed");
}

#[test]
fn a_cluster_of_zero_members_is_refused() {
    let error = etcd_provision::Cluster::start(Path::new("/bin/false"), 0).expect_err("zero");
    assert_eq!(error.to_string(), "a cluster needs at least one member");
}
