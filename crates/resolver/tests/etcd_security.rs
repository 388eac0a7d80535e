//! Resolving from an etcd that requires TLS with client certificates, and
//! from one that requires a user and password: a server registered with the
//! same settings is found; wrong settings fail `connect` with a message that
//! says what is wrong.

use integration_tests::pki as support;

use std::time::Duration;

use discover::Change;
use etcdlb_resolver::{ConnectError, ConnectErrorKind, EtcdTls, Resolver, ResolverBuilder};
use futures::StreamExt;
use integration_tests::unique_prefix;
use support::{Certs, SecureEtcd};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn builder(prefix: &str, endpoint: &str) -> ResolverBuilder {
    Resolver::builder(prefix)
        .etcd_endpoints([endpoint])
        .connect_timeout(CONNECT_TIMEOUT)
}

async fn fails(b: ResolverBuilder, kinds: &[ConnectErrorKind], fragments: &[&str]) -> ConnectError {
    let err = b.connect().await.expect_err("must fail");
    let text = err.to_string();
    eprintln!("{:?}: {text}", err.kind());
    assert!(kinds.contains(&err.kind()), "{:?}: {text}", err.kind());
    for f in fragments {
        assert!(text.contains(f), "{text:?} lacks {f:?}");
    }
    err
}

/// Registers `127.0.0.1:41234` with id `1` and resolves it.
async fn registered_server_is_resolved(
    prefix: &str,
    registration: registry::Registration,
    resolver: ResolverBuilder,
) {
    let registered = registration.register().await.expect("register");
    let mut changes = resolver.connect().await.expect("connect").resolve();
    let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .expect("a change within 10 s")
        .expect("stream open");
    let Change::Insert(key, endpoint) = change else {
        panic!("{change:?}")
    };
    assert_eq!(key, format!("{prefix}/127.0.0.1:41234"));
    assert_eq!(endpoint.addr(), "127.0.0.1:41234");
    assert_eq!(endpoint.instance_id(), Some("1"));
    registered.deregister().await.expect("deregister");
    let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .expect("a removal within 10 s");
    assert_eq!(change, Some(Change::Remove(key)));
}

#[tokio::test]
async fn resolves_over_tls_with_the_right_ca_and_client_certificate() {
    let certs = Certs::generate();
    let etcd = SecureEtcd::tls(&certs).await;
    let prefix = unique_prefix("resolve_tls");
    let tls = || {
        (
            EtcdTls::ca_file(&certs.ca).client_cert_files(&certs.client_cert, &certs.client_key),
            registry::EtcdTls::ca_file(&certs.ca)
                .client_cert_files(&certs.client_cert, &certs.client_key),
        )
    };
    let (resolver_tls, registry_tls) = tls();
    registered_server_is_resolved(
        &prefix,
        registry::Registration::new(&prefix, "127.0.0.1:41234")
            .etcd_endpoints([&etcd.endpoint])
            .instance_id("1")
            .etcd_tls(registry_tls),
        builder(&prefix, &etcd.endpoint).etcd_tls(resolver_tls),
    )
    .await;
}

#[tokio::test]
async fn resolves_with_the_right_user_and_password() {
    let etcd = SecureEtcd::auth("rootpw", "game", "gamepw").await;
    let prefix = unique_prefix("resolve_auth");
    registered_server_is_resolved(
        &prefix,
        registry::Registration::new(&prefix, "127.0.0.1:41234")
            .etcd_endpoints([&etcd.endpoint])
            .instance_id("1")
            .etcd_auth("game", "gamepw"),
        builder(&prefix, &etcd.endpoint).etcd_auth("game", "gamepw"),
    )
    .await;
}

#[tokio::test]
async fn a_wrong_ca_fails_saying_the_certificate_is_not_trusted() {
    let certs = Certs::generate();
    let etcd = SecureEtcd::tls(&certs).await;
    let b = builder("discovery/dev/game", &etcd.endpoint).etcd_tls(
        EtcdTls::ca_file(&certs.other_ca).client_cert_files(&certs.client_cert, &certs.client_key),
    );
    fails(
        b,
        &[ConnectErrorKind::Security],
        &[
            "cannot resolve discovery/dev/game from etcd at https://127.0.0.1:",
            "invalid peer certificate: UnknownIssuer",
            "etcd's TLS certificate is not trusted: give the CA that signed it (--etcd-ca)",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_missing_client_certificate_fails_saying_etcd_wants_one() {
    let certs = Certs::generate();
    let etcd = SecureEtcd::tls(&certs).await;
    let b = builder("discovery/dev/game", &etcd.endpoint).etcd_tls(EtcdTls::ca_file(&certs.ca));
    // Whether etcd's TLS alert reaches us is a race; the hint is the same.
    fails(
        b,
        &[ConnectErrorKind::Security, ConnectErrorKind::Unavailable],
        &["it probably requires a client certificate (--etcd-cert, --etcd-key)"],
    )
    .await;
}

#[tokio::test]
async fn a_client_certificate_of_another_ca_fails_saying_etcd_does_not_trust_it() {
    let certs = Certs::generate();
    let etcd = SecureEtcd::tls(&certs).await;
    let b = builder("discovery/dev/game", &etcd.endpoint).etcd_tls(
        EtcdTls::ca_file(&certs.ca)
            .client_cert_files(&certs.other_client_cert, &certs.other_client_key),
    );
    fails(
        b,
        &[ConnectErrorKind::Security, ConnectErrorKind::Unavailable],
        &["it probably does not trust the client certificate (--etcd-cert)"],
    )
    .await;
}

#[tokio::test]
async fn plain_http_to_a_tls_etcd_fails_suggesting_https() {
    let certs = Certs::generate();
    let etcd = SecureEtcd::tls(&certs).await;
    let endpoint = etcd.endpoint.replace("https://", "http://");
    fails(
        builder("discovery/dev/game", &endpoint),
        &[ConnectErrorKind::Unavailable],
        &["if etcd serves TLS, use an https:// endpoint and its CA (--etcd-ca)"],
    )
    .await;
}

#[tokio::test]
async fn a_wrong_password_fails_without_showing_it() {
    let etcd = SecureEtcd::auth("rootpw", "game", "gamepw").await;
    let b = builder("discovery/dev/game", &etcd.endpoint).etcd_auth("game", "nope-secret");
    assert!(!format!("{b:?}").contains("nope-secret"));
    let err = fails(
        b,
        &[ConnectErrorKind::Security],
        &[
            "authentication failed, invalid user ID or password",
            "wrong etcd user name or password",
        ],
    )
    .await;
    assert!(!format!("{err} {err:?}").contains("nope-secret"));
}

#[tokio::test]
async fn no_credentials_for_an_etcd_with_auth_fails_saying_so() {
    let etcd = SecureEtcd::auth("rootpw", "game", "gamepw").await;
    fails(
        builder("test/x", &etcd.endpoint),
        &[ConnectErrorKind::Security],
        &["etcd requires authentication: give a user (--etcd-user) and its password (ETCD_PASSWORD)"],
    )
    .await;
}

#[tokio::test]
async fn a_user_without_read_permission_on_the_prefix_gets_permission_denied() {
    let etcd = SecureEtcd::auth("rootpw", "game", "gamepw").await;
    fails(
        builder("elsewhere/dev/game", &etcd.endpoint).etcd_auth("game", "gamepw"),
        &[ConnectErrorKind::Etcd],
        &["cannot resolve elsewhere/dev/game", "permission denied"],
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_etcd_without_a_user_is_not_an_error() {
    let port = integration_tests::free_port();
    let resolver = builder("discovery/dev/game", &format!("http://127.0.0.1:{port}"))
        .connect()
        .await
        .expect("lazy: etcd may come up later");
    drop(resolver);
}

#[tokio::test]
async fn invalid_settings_fail_before_contacting_etcd() {
    let certs = Certs::generate();
    fails(
        builder("discovery/dev/game", "https://127.0.0.1:1")
            .etcd_tls(EtcdTls::ca_file(certs.dir().join("missing.pem"))),
        &[ConnectErrorKind::InvalidConfig],
        &[
            "cannot read the etcd CA file",
            "missing.pem",
            "No such file or directory",
        ],
    )
    .await;
    fails(
        builder("discovery/dev/game", "http://127.0.0.1:1").etcd_tls(EtcdTls::ca_file(&certs.ca)),
        &[ConnectErrorKind::InvalidConfig],
        &["is plain http:// but TLS settings were given: use https://"],
    )
    .await;
    fails(
        builder("discovery/dev/game", "https://127.0.0.1:1"),
        &[ConnectErrorKind::InvalidConfig],
        &["is https:// but no TLS settings were given"],
    )
    .await;
    fails(
        Resolver::builder("discovery/dev/game").etcd_endpoints(Vec::<String>::new()),
        &[ConnectErrorKind::InvalidConfig],
        &["no etcd endpoint given"],
    )
    .await;
    fails(
        builder("", "http://127.0.0.1:1"),
        &[ConnectErrorKind::InvalidConfig],
        &["empty key prefix"],
    )
    .await;
    fails(
        builder("discovery/dev/game", "http://127.0.0.1:1").etcd_auth("game", ""),
        &[ConnectErrorKind::InvalidConfig],
        &["empty etcd password for user \"game\""],
    )
    .await;
}
