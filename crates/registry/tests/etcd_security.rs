//! Registration against an etcd that requires TLS with client certificates,
//! and one that requires a user and password: the right settings work, the
//! wrong ones fail with a message that says what is wrong (at once when
//! retrying cannot help).

use integration_tests::pki as support;

use std::time::{Duration, Instant};

use etcdlb_registry::{Error, ErrorKind, EtcdTls, Registration};
use integration_tests::unique_prefix;
use support::{Certs, SecureEtcd};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn registration(test: &str, endpoint: &str) -> Registration {
    Registration::new(unique_prefix(test), "127.0.0.1:41234")
        .etcd_endpoints([endpoint])
        .instance_id("1")
        .ttl(Duration::from_secs(10))
        .connect_timeout(CONNECT_TIMEOUT)
}

async fn value_of(etcd: &SecureEtcd, key: &str) -> Option<String> {
    let resp = etcd.admin.clone().get(key, None).await.expect("get");
    resp.kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_owned())
}

/// Registers, expecting an error of `kind` containing every fragment.
async fn fails(reg: Registration, kind: ErrorKind, fragments: &[&str]) -> (Error, Duration) {
    fails_with(reg, &[kind], fragments).await
}

/// Registers, expecting an error of one of `kinds` containing every fragment.
async fn fails_with(
    reg: Registration,
    kinds: &[ErrorKind],
    fragments: &[&str],
) -> (Error, Duration) {
    let started = Instant::now();
    let err = reg.register().await.expect_err("must fail");
    let took = started.elapsed();
    let text = err.to_string();
    eprintln!("{:?} after {took:?}: {text}", err.kind());
    assert!(kinds.contains(&err.kind()), "{:?}: {text}", err.kind());
    for f in fragments {
        assert!(text.contains(f), "{text:?} lacks {f:?}");
    }
    (err, took)
}

#[tokio::test]
async fn registers_over_tls_with_the_right_ca_and_client_certificate() {
    let certs = Certs::generate();
    let etcd = SecureEtcd::tls(&certs).await;
    let registered = registration("tls_ok", &etcd.endpoint)
        .etcd_tls(
            EtcdTls::ca_file(&certs.ca).client_cert_files(&certs.client_cert, &certs.client_key),
        )
        .register()
        .await
        .expect("register over TLS");
    assert_eq!(
        value_of(&etcd, registered.key()).await.as_deref(),
        Some(r#"{"Op":0,"Addr":"127.0.0.1:41234","Metadata":"1"}"#)
    );
    registered.deregister().await.expect("deregister");
    assert_eq!(value_of(&etcd, registered.key()).await, None);
}

#[tokio::test]
async fn tls_with_in_memory_pem_and_a_domain_name_works() {
    let certs = Certs::generate();
    let etcd = SecureEtcd::tls(&certs).await;
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let registered = registration("tls_pem", &etcd.endpoint)
        .etcd_tls(
            EtcdTls::ca_pem(read(&certs.ca))
                .client_cert_pem(read(&certs.client_cert), read(&certs.client_key))
                .domain("localhost"),
        )
        .register()
        .await
        .expect("register over TLS");
    registered.deregister().await.expect("deregister");
}

#[tokio::test]
async fn a_wrong_ca_fails_at_once_saying_the_certificate_is_not_trusted() {
    let certs = Certs::generate();
    let etcd = SecureEtcd::tls(&certs).await;
    let reg = registration("tls_wrong_ca", &etcd.endpoint).etcd_tls(
        EtcdTls::ca_file(&certs.other_ca).client_cert_files(&certs.client_cert, &certs.client_key),
    );
    let (_, took) = fails(
        reg,
        ErrorKind::Security,
        &[
            "invalid peer certificate: UnknownIssuer",
            "etcd's TLS certificate is not trusted: give the CA that signed it (--etcd-ca)",
        ],
    )
    .await;
    assert!(took < CONNECT_TIMEOUT, "retried for {took:?}");
}

#[tokio::test]
async fn a_domain_the_certificate_does_not_name_fails() {
    let certs = Certs::generate();
    let etcd = SecureEtcd::tls(&certs).await;
    let reg = registration("tls_wrong_domain", &etcd.endpoint).etcd_tls(
        EtcdTls::ca_file(&certs.ca)
            .client_cert_files(&certs.client_cert, &certs.client_key)
            .domain("etcd.example.com"),
    );
    fails(
        reg,
        ErrorKind::Security,
        &["invalid peer certificate", "names"],
    )
    .await;
}

#[tokio::test]
async fn a_missing_client_certificate_fails_saying_etcd_wants_one() {
    let certs = Certs::generate();
    let etcd = SecureEtcd::tls(&certs).await;
    let reg = registration("tls_no_cert", &etcd.endpoint).etcd_tls(EtcdTls::ca_file(&certs.ca));
    // Whether etcd's TLS alert reaches the client is a race: if it does the
    // error is immediate, otherwise the connection just closes and the
    // registration retries until its connect timeout. The hint is the same.
    fails_with(
        reg,
        &[ErrorKind::Security, ErrorKind::Unavailable],
        &[
            "etcd closed the TLS connection: it probably requires a client certificate \
             (--etcd-cert, --etcd-key)",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_client_certificate_of_another_ca_fails_saying_etcd_does_not_trust_it() {
    let certs = Certs::generate();
    let etcd = SecureEtcd::tls(&certs).await;
    let reg = registration("tls_other_cert", &etcd.endpoint).etcd_tls(
        EtcdTls::ca_file(&certs.ca)
            .client_cert_files(&certs.other_client_cert, &certs.other_client_key),
    );
    fails_with(
        reg,
        &[ErrorKind::Security, ErrorKind::Unavailable],
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
        registration("tls_plain", &endpoint),
        ErrorKind::Unavailable,
        &["if etcd serves TLS, use an https:// endpoint and its CA (--etcd-ca)"],
    )
    .await;
}

#[tokio::test]
async fn unreadable_or_mismatched_tls_settings_are_invalid_config() {
    let certs = Certs::generate();
    let missing = certs.dir().join("missing.pem");
    let reg = registration("tls_missing_file", "https://127.0.0.1:1")
        .etcd_tls(EtcdTls::ca_file(&missing));
    fails(
        reg,
        ErrorKind::InvalidConfig,
        &[
            "cannot read the etcd CA file",
            "missing.pem",
            "No such file",
        ],
    )
    .await;
    let reg = registration("tls_key_as_ca", "https://127.0.0.1:1")
        .etcd_tls(EtcdTls::ca_file(&certs.client_key));
    fails(
        reg,
        ErrorKind::InvalidConfig,
        &["client-key.pem\" holds no PEM CERTIFICATE"],
    )
    .await;
    let reg = registration("tls_http", "http://127.0.0.1:1").etcd_tls(EtcdTls::ca_file(&certs.ca));
    fails(
        reg,
        ErrorKind::InvalidConfig,
        &["is plain http:// but TLS settings were given: use https://"],
    )
    .await;
    fails(
        registration("tls_https_no_ca", "https://127.0.0.1:1"),
        ErrorKind::InvalidConfig,
        &["is https:// but no TLS settings were given"],
    )
    .await;
}

#[tokio::test]
async fn registers_with_the_right_password() {
    let etcd = SecureEtcd::auth("rootpw", "game", "gamepw").await;
    let registered = registration("auth_ok", &etcd.endpoint)
        .etcd_auth("game", "gamepw")
        .register()
        .await
        .expect("register with auth");
    assert!(value_of(&etcd, registered.key()).await.is_some());
    registered
        .update_metadata(serde_json::json!("2"))
        .await
        .expect("update with auth");
    registered.deregister().await.expect("deregister");
    assert_eq!(value_of(&etcd, registered.key()).await, None);
}

#[tokio::test]
async fn a_wrong_password_fails_at_once_without_showing_it() {
    let etcd = SecureEtcd::auth("rootpw", "game", "gamepw").await;
    let reg = registration("auth_wrong", &etcd.endpoint).etcd_auth("game", "nope-secret");
    let (err, took) = fails(
        reg,
        ErrorKind::Security,
        &[
            "authentication failed, invalid user ID or password",
            "wrong etcd user name or password",
        ],
    )
    .await;
    assert!(took < CONNECT_TIMEOUT, "retried for {took:?}");
    assert!(!format!("{err} {err:?}").contains("nope-secret"));
}

#[tokio::test]
async fn no_credentials_for_an_etcd_with_auth_fails_saying_so() {
    let etcd = SecureEtcd::auth("rootpw", "game", "gamepw").await;
    fails(
        registration("auth_none", &etcd.endpoint),
        ErrorKind::Security,
        &["etcd requires authentication: give a user (--etcd-user) and its password (ETCD_PASSWORD)"],
    )
    .await;
}

#[tokio::test]
async fn a_user_without_permission_on_the_prefix_gets_permission_denied() {
    let etcd = SecureEtcd::auth("rootpw", "game", "gamepw").await;
    let reg = Registration::new("elsewhere/dev/game", "127.0.0.1:41234")
        .etcd_endpoints([&etcd.endpoint])
        .connect_timeout(CONNECT_TIMEOUT)
        .etcd_auth("game", "gamepw");
    fails(
        reg,
        ErrorKind::Etcd,
        &[
            "cannot register elsewhere/dev/game/127.0.0.1:41234",
            "permission denied",
        ],
    )
    .await;
}
