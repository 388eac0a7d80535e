//! Fuzz-style test of the flag parser: random flag lines (real flags, junk,
//! values of every shape) never panic; every rejection is one line starting
//! with `error: `, with exit code 2.

use echo_server::cli::{Args, one_line};
use proptest::prelude::*;

const FLAGS: &[&str] = &[
    "--id",
    "--env",
    "--service",
    "--etcd",
    "--etcd-ca",
    "--etcd-cert",
    "--etcd-key",
    "--etcd-user",
    "--addr",
    "--advertise",
    "--ttl",
    "--drain",
    "--shutdown-timeout",
    "--tls-cert",
    "--tls-key",
    "-x",
    "--",
    "--bogus",
    "=",
];

fn arg() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(FLAGS).prop_map(String::from),
        2 => "[0-9]{0,6}(ms|s|m|h|x)?",
        2 => "[ -~]{0,16}",
        1 => "(http|https|ftp)://[a-z0-9.:]{0,12}",
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_flag_lines_parse_or_fail_in_one_line(
        args in prop::collection::vec(arg(), 0..8),
        password in prop::option::of("[a-z]{0,4}"),
    ) {
        let argv = std::iter::once("echo-server".to_string()).chain(args);
        if let Err(e) = Args::try_parse_with_password(argv, password) {
            use clap::error::ErrorKind;
            if !matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let line = one_line(&e);
                prop_assert!(!line.contains('\n'), "{line}");
                prop_assert!(line.starts_with("error: "), "{line}");
                prop_assert_eq!(e.exit_code(), 2);
            }
        }
    }
}
