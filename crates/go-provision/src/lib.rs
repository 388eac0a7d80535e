//! Finds or installs Go, and builds the project's Go peer (`interop/go`).
//!
//! One job: hand back the path of a built `go-peer` binary. Shared by
//! `xtask` (bench) and the `integration-tests` fixture (interop tests), so
//! it depends on nothing that needs `protoc` (no `etcd-client`).
//!
//! The peer is built in GOPATH mode (`GO111MODULE=off`) against Debian
//! bookworm's packages, with no module proxy: `golang-go` (Go 1.19),
//! `golang-google-grpc-dev` (grpc-go 1.33) and `golang-etcd-server-dev`
//! (etcd 3.4's Go client), whose sources live under `/usr/share/gocode`.
//!
//! Go is found in this order ([`go_binary`]):
//! 1. `GO` (path of a `go` binary) when set;
//! 2. `go` on `PATH`;
//! 3. on Debian/Ubuntu as root, `apt-get install` of the three packages
//!    (announced on stderr);
//! 4. otherwise an [`Error`] naming what to install.
//!
//! The Go sources must be under `/usr/share/gocode` (or a `GOPATH` entry);
//! when they are missing they are installed the same way.
//!
//! [`go_peer`] caches the binary at `<target>/go-peer/go-peer` with a stamp
//! of the sources' contents and the Go version, and rebuilds when either
//! changes.
//!
//! ```no_run
//! let peer = go_provision::go_peer(std::path::Path::new("target")).expect("a Go peer");
//! let status = std::process::Command::new(&peer).arg("list").status().unwrap();
//! # let _ = status;
//! ```

use std::{
    env, fmt, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Debian's packages the peer is built from.
pub const PACKAGES: [&str; 3] = [
    "golang-go",
    "golang-google-grpc-dev",
    "golang-etcd-server-dev",
];

/// Where Debian puts Go library sources.
pub const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// What to tell a user who has no Go (or not the sources).
pub const HOW_TO_GET_GO: &str = "the Go peer (interop/go) needs Go and the Go sources of \
grpc-go and etcd's client. On Debian/Ubuntu: `apt-get install golang-go golang-google-grpc-dev \
golang-etcd-server-dev` (cargo xtask does this itself when run as root); elsewhere set GO to a \
go binary and GOPATH to a tree holding google.golang.org/grpc (1.33) and go.etcd.io/etcd/clientv3 \
(3.4) sources";

/// Why no Go peer could be provided: one line for a human.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(msg: impl Into<String>) -> Error {
    Error(msg.into())
}

/// The directory of the Go peer's sources in this workspace.
pub fn peer_sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/go")
}

/// A `go` binary, installing Debian's packages when that is possible.
pub fn go_binary() -> Result<PathBuf, Error> {
    if let Some(go) = find_go() {
        return Ok(go);
    }
    apt_install()?;
    find_go()
        .or_else(|| Some(PathBuf::from("/usr/bin/go")).filter(|p| p.is_file()))
        .ok_or_else(|| err(format!("no go binary found: {HOW_TO_GET_GO}")))
}

fn find_go() -> Option<PathBuf> {
    if let Some(go) = env::var_os("GO").filter(|g| !g.is_empty()) {
        return Some(PathBuf::from(go));
    }
    find_on_path("go")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `GOPATH` for the build: the user's entries, then Debian's.
fn gopath() -> String {
    let mut entries: Vec<PathBuf> = env::var_os("GOPATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    entries.push(PathBuf::from(DEBIAN_GOPATH));
    env::join_paths(entries)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| DEBIAN_GOPATH.to_owned())
}

/// Whether the Go sources the peer imports are on `GOPATH`.
fn sources_present() -> bool {
    let needed = [
        "src/google.golang.org/grpc/balancer/base",
        "src/go.etcd.io/etcd/clientv3/naming/resolver",
        "src/github.com/golang/protobuf/ptypes/wrappers",
    ];
    env::split_paths(&gopath()).any(|root| needed.iter().all(|n| root.join(n).is_dir()))
}

/// On Debian/Ubuntu as root, `apt-get install` of [`PACKAGES`]; otherwise
/// an error saying what to install.
fn apt_install() -> Result<(), Error> {
    let debian = Path::new("/etc/debian_version").exists();
    if !debian || !is_root() || find_on_path("apt-get").is_none() {
        return Err(err(HOW_TO_GET_GO));
    }
    eprintln!(
        "go-provision: installing Debian's {} with apt-get (for the Go interop peer)",
        PACKAGES.join(" ")
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        eprintln!("go-provision: apt-get install failed; running apt-get update and retrying");
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(Stdio::null())
            .status();
        if !install() {
            return Err(err(format!(
                "apt-get install {} failed; {HOW_TO_GET_GO}",
                PACKAGES.join(" ")
            )));
        }
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The Go peer, built into `<target_dir>/go-peer/go-peer` unless a build of
/// the same sources with the same Go is there already. Installs Go and the
/// sources first when needed and possible.
///
/// Safe to call from several processes at once: each build goes to a file
/// of its own and is renamed into place.
pub fn go_peer(target_dir: &Path) -> Result<PathBuf, Error> {
    let go = go_binary()?;
    if !sources_present() {
        apt_install()?;
        if !sources_present() {
            return Err(err(format!(
                "the Go sources are not under GOPATH={}: {HOW_TO_GET_GO}",
                gopath()
            )));
        }
    }
    let src = peer_sources();
    let version = Command::new(&go)
        .arg("version")
        .output()
        .map_err(|e| err(format!("cannot run {}: {e}", go.display())))?;
    let stamp = stamp(&src, &version.stdout)?;
    let dir = target_dir.join("go-peer");
    let bin = dir.join("go-peer");
    let stamp_file = dir.join("go-peer.stamp");
    if bin.is_file() && fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(bin);
    }
    fs::create_dir_all(&dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(format!("go-peer.tmp.{}", std::process::id()));
    let output = Command::new(&go)
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath())
        .env("GOCACHE", target_dir.join("go-cache"))
        .env("GOFLAGS", "")
        .output()
        .map_err(|e| err(format!("cannot run {} build: {e}", go.display())))?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(err(format!(
            "building the Go peer in {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&output.stderr)
                .trim()
                .replace('\n', " | ")
        )));
    }
    fs::rename(&tmp, &bin).map_err(|e| err(format!("cannot move the Go peer into place: {e}")))?;
    fs::write(&stamp_file, &stamp)
        .map_err(|e| err(format!("cannot write {}: {e}", stamp_file.display())))?;
    Ok(bin)
}

/// A digest of the `.go` files of `src` (names and contents) and the Go
/// version: FNV-1a, enough to notice a change.
fn stamp(src: &Path, go_version: &[u8]) -> Result<String, Error> {
    let mut files: Vec<PathBuf> = fs::read_dir(src)
        .map_err(|e| {
            err(format!(
                "cannot read the Go peer's sources {}: {e}",
                src.display()
            ))
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "go"))
        .collect();
    files.sort();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(go_version);
    for f in &files {
        feed(
            f.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        feed(&fs::read(f).map_err(|e| err(format!("cannot read {}: {e}", f.display())))?);
    }
    Ok(format!("{hash:016x} {} files\n", files.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_changes_with_the_sources_and_the_go_version() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("main.go"), "package main\n").unwrap();
        fs::write(dir.path().join("README.md"), "ignored").unwrap();
        let a = stamp(dir.path(), b"go1.19").unwrap();
        assert_eq!(a, stamp(dir.path(), b"go1.19").unwrap());
        assert_ne!(a, stamp(dir.path(), b"go1.20").unwrap());
        fs::write(dir.path().join("README.md"), "still ignored").unwrap();
        assert_eq!(a, stamp(dir.path(), b"go1.19").unwrap());
        fs::write(dir.path().join("main.go"), "package main // changed\n").unwrap();
        assert_ne!(a, stamp(dir.path(), b"go1.19").unwrap());
        assert!(a.ends_with(" 1 files\n"));
    }

    #[test]
    fn the_peer_sources_are_in_the_workspace() {
        assert!(peer_sources().join("main.go").is_file());
    }
}
