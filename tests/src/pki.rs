//! Test-time certificates (rcgen) and secured etcds: one with TLS and
//! client certificate authentication, one with user/password
//! authentication. Used by the registry's, the resolver's and the
//! end-to-end tests.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use etcd_client::{Client, ConnectOptions, Identity, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// How long etcd may take to answer after being started.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// PEM files made for one test: a CA, a server certificate for
/// `127.0.0.1` / `localhost`, a client certificate, and a second CA with its
/// own client certificate that etcd does not trust. Removed on drop.
pub struct Certs {
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA that signed every certificate below (etcd's `--trusted-ca-file`).
    pub ca: PathBuf,
    /// Server certificate for `127.0.0.1` and `localhost`.
    pub server_cert: PathBuf,
    /// Its private key.
    pub server_key: PathBuf,
    /// Client certificate (client auth) signed by [`ca`](Self::ca).
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
    /// A CA that signed nothing etcd or the servers use.
    pub other_ca: PathBuf,
    /// A client certificate signed by [`other_ca`](Self::other_ca).
    pub other_client_cert: PathBuf,
    /// Its private key.
    pub other_client_key: PathBuf,
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert")
}

/// A leaf certificate and its key, PEM.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf cert");
    (cert.pem(), key.serialize_pem())
}

impl Certs {
    /// Generates everything into a fresh temp dir.
    pub fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("etcd-certs-")
            .tempdir()
            .expect("temp dir");
        let write = |name: &str, pem: &str| -> PathBuf {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        let ca = make_ca("test etcd CA");
        let other = make_ca("some other CA");
        let (server_cert, server_key) = leaf(
            &ca,
            "etcd",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&ca, "client", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let (other_cert, other_key) =
            leaf(&other, "client", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let ca_pem = ca.pem();
        Self {
            issuer: ca,
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            other_ca: write("other-ca.pem", &other.pem()),
            other_client_cert: write("other-client.pem", &other_cert),
            other_client_key: write("other-client-key.pem", &other_key),
            dir,
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A further server certificate signed by [`ca`](Self::ca), valid for
    /// `names` (DNS names or IP addresses), written as `<file>.pem` and
    /// `<file>-key.pem`; returns the two paths.
    pub fn server_cert_for(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = leaf(
            &self.issuer,
            names.first().copied().unwrap_or("server"),
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}-key.pem"));
        std::fs::write(&cert_path, cert).expect("write PEM");
        std::fs::write(&key_path, key).expect("write PEM");
        (cert_path, key_path)
    }

    /// etcd-client options that pass etcd's TLS checks.
    pub fn client_options(&self) -> ConnectOptions {
        let read = |p: &Path| std::fs::read(p).expect("read PEM");
        ConnectOptions::new().with_tls(
            TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)))
                .identity(Identity::from_pem(
                    read(&self.client_cert),
                    read(&self.client_key),
                )),
        )
    }
}

/// An etcd process of this test, killed (and its data dir removed) on drop.
pub struct SecureEtcd {
    child: Child,
    _dir: tempfile::TempDir,
    /// The client URL (`https://127.0.0.1:<port>` with TLS).
    pub endpoint: String,
    /// A client with every right (TLS identity or root user).
    pub admin: Client,
}

impl Drop for SecureEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd_binary() -> PathBuf {
    etcd_provision::find_etcd_binary().unwrap_or_else(|| {
        panic!(
            "the etcd TLS/auth tests start their own etcd and need an etcd binary \
             (ETCD_BIN or PATH); run `cargo xtask etcd` to see how to install one"
        )
    })
}

/// Starts etcd on free ports; `tls` makes its client URL HTTPS with client
/// certificate authentication.
fn spawn(tls: Option<&Certs>) -> (Child, tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("etcd-secure-")
        .tempdir()
        .expect("temp dir");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client = format!("{scheme}://127.0.0.1:{}", crate::free_port());
    let peer = format!("http://127.0.0.1:{}", crate::free_port());
    let log = File::create(dir.path().join("etcd.log")).expect("etcd log");
    // Without our ETCD_* variables, which etcd would read as flags.
    let mut cmd = etcd_provision::etcd_command(&etcd_binary());
    cmd.arg("--name")
        .arg("secure")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .arg("--initial-cluster")
        .arg(format!("secure={peer}"))
        .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    if let Some(certs) = tls {
        cmd.arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(&certs.ca)
            .arg("--cert-file")
            .arg(&certs.server_cert)
            .arg("--key-file")
            .arg(&certs.server_key);
    }
    let child = cmd.spawn().expect("spawn etcd");
    (child, dir, client)
}

impl SecureEtcd {
    /// etcd with `--client-cert-auth`, `--trusted-ca-file`, `--cert-file`
    /// and `--key-file` from `certs`, healthy when this returns.
    pub async fn tls(certs: &Certs) -> Self {
        let (child, dir, endpoint) = spawn(Some(certs));
        let admin = wait_ready(&endpoint, Some(certs.client_options()), &dir).await;
        Self {
            child,
            _dir: dir,
            endpoint,
            admin,
        }
    }

    /// Plain-HTTP etcd with authentication enabled; `root` has
    /// `root_password`. Also adds `user`/`user_password` with read-write
    /// access to the keys under `test/` (where
    /// [`unique_prefix`](crate::unique_prefix) puts them) and under
    /// `discovery/` (where the echo binaries put theirs).
    pub async fn auth(root_password: &str, user: &str, user_password: &str) -> Self {
        let (child, dir, endpoint) = spawn(None);
        let mut setup = wait_ready(&endpoint, None, &dir).await;
        setup
            .user_add("root", root_password, None)
            .await
            .expect("add root");
        setup
            .user_grant_role("root", "root")
            .await
            .expect("grant root");
        setup.role_add("rw").await.expect("add role");
        setup
            .role_grant_permission(
                "rw",
                etcd_client::Permission::read_write("test/").with_prefix(),
            )
            .await
            .expect("grant rw");
        setup
            .role_grant_permission(
                "rw",
                etcd_client::Permission::read_write("discovery/").with_prefix(),
            )
            .await
            .expect("grant rw on discovery/");
        setup
            .user_add(user, user_password, None)
            .await
            .expect("add user");
        setup.user_grant_role(user, "rw").await.expect("grant user");
        setup.auth_enable().await.expect("enable auth");
        let admin = Client::connect(
            [&endpoint],
            Some(ConnectOptions::new().with_user("root", root_password)),
        )
        .await
        .expect("root client");
        Self {
            child,
            _dir: dir,
            endpoint,
            admin,
        }
    }
}

async fn wait_ready(
    endpoint: &str,
    options: Option<ConnectOptions>,
    dir: &tempfile::TempDir,
) -> Client {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        match Client::connect([endpoint], options.clone()).await {
            Ok(mut c) => match c.status().await {
                Ok(_) => return c,
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    panic!("etcd at {endpoint} not ready within {START_TIMEOUT:?}: {last}; log tail: {tail:?}");
}
