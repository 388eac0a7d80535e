//! The 20 s chaos run (`cargo xtask chaos` runs longer ones). A test binary
//! of its own: the run counts file descriptors process-wide.

use std::time::Duration;

use integration_tests::process::bin_path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_seconds_of_faults_break_no_invariant() {
    let etcd_bin = etcd_provision::find_etcd_binary().unwrap_or_else(|| {
        panic!(
            "the chaos test kills and restarts its own etcd and needs an etcd binary (ETCD_BIN or PATH): {}",
            etcd_provision::HOW_TO_GET_ETCD
        )
    });
    let mut config = chaos::Config::new(bin_path("echo-server"), etcd_bin);
    config.duration = Duration::from_secs(20);
    // On a 3-member cluster: member and leader kills besides whole restarts.
    config.members = 3;
    let report = chaos::run(config).await.expect("chaos run");
    eprintln!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert!(report.ok > 0, "{report}");
    assert!(report.key_samples > 0, "{report}");
}
