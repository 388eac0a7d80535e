//! Finds Go and builds the project's Go programs from Go modules: the
//! interop peer (`interop/go`), `grpc-health-probe`, and (for
//! `etcd-provision`) etcd itself.
//!
//! One job: hand back the path of a built Go binary. Shared by `xtask`, the
//! `integration-tests` fixture and `etcd-provision`, so it depends on nothing
//! that needs `protoc` (no `etcd-client`).
//!
//! Every program is a Go module committed in this repository with its
//! `go.mod` and `go.sum` (`interop/go`: grpc-go 1.85 and etcd's
//! `client/v3` 3.6; `tools/go/*`: grpc-health-probe 0.4.63, etcd's
//! `server/v3` 3.6 and 3.7). Their dependencies come from the Go module
//! proxy on the first build (the `GOPROXY` in force, `go env` says which) and
//! from Go's module cache after that; `GOTOOLCHAIN=local`, so the Go found is
//! the Go used.
//!
//! Go is found in this order ([`go_binary`]):
//! 1. `GO` (path of a `go` binary) when set;
//! 2. `go` on `PATH`;
//! 3. `/usr/local/go/bin/go` (where the official archive installs it);
//! 4. otherwise an [`Error`] saying how to get Go.
//!
//! [`build`] caches each binary under the given directory with a stamp of
//! the module's sources (`*.go`, `go.mod`, `go.sum`) and the Go version, and
//! rebuilds when either changes; builds are renamed into place, so parallel
//! callers are safe.
//!
//! ```no_run
//! let peer = go_provision::go_peer(std::path::Path::new("target")).expect("a Go peer");
//! let status = std::process::Command::new(&peer).arg("list").status().unwrap();
//! # let _ = status;
//! ```

use std::{
    env, fmt, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

/// The oldest Go the modules build with (their `go` directive).
pub const MIN_GO: &str = "1.26";

/// What to tell a user who has no Go.
pub const HOW_TO_GET_GO: &str = "the Go programs of the tests (interop/go, tools/go) need Go \
1.26 or newer with access to the Go module proxy: install it from go.dev/dl into /usr/local/go \
(or any directory on PATH), or set GO to a go binary";

/// `grpc-health-probe`'s version, pinned in `tools/go/grpc-health-probe/go.mod`.
pub const HEALTH_PROBE_VERSION: &str = "v0.4.63";

/// Why no Go binary could be provided: one line for a human.
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

/// The workspace root (this crate lives in `tools/go-provision`).
fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    fs::canonicalize(&root).unwrap_or(root)
}

/// The directory of the Go peer's module in this workspace.
pub fn peer_sources() -> PathBuf {
    workspace_root().join("interop/go")
}

/// The directory of one of the Go tool modules (`tools/go/<name>`).
pub fn tool_sources(name: &str) -> PathBuf {
    workspace_root().join("tools/go").join(name)
}

/// A `go` binary: `GO`, else `go` on `PATH`, else `/usr/local/go/bin/go`.
pub fn go_binary() -> Result<PathBuf, Error> {
    if let Some(go) = env::var_os("GO").filter(|g| !g.is_empty()) {
        return Ok(PathBuf::from(go));
    }
    find_on_path("go")
        .or_else(|| Some(PathBuf::from("/usr/local/go/bin/go")).filter(|p| p.is_file()))
        .ok_or_else(|| err(format!("no go binary found: {HOW_TO_GET_GO}")))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The Go peer, built into `<target_dir>/go-peer/go-peer` unless a build of
/// the same sources with the same Go is there already.
pub fn go_peer(target_dir: &Path) -> Result<PathBuf, Error> {
    build(
        &peer_sources(),
        ".",
        &target_dir.join("go-peer/go-peer"),
        target_dir,
    )
}

/// `grpc-health-probe` ([`HEALTH_PROBE_VERSION`]), built into
/// `<target_dir>/go-tools/grpc-health-probe`.
pub fn health_probe(target_dir: &Path) -> Result<PathBuf, Error> {
    build(
        &tool_sources("grpc-health-probe"),
        "github.com/grpc-ecosystem/grpc-health-probe",
        &target_dir.join("go-tools/grpc-health-probe"),
        target_dir,
    )
}

/// Builds package `package` of the Go module in `module` into `out`, unless
/// `out` holds a build of the same sources with the same Go already. Go's
/// build cache goes to `<target_dir>/go-cache`. Logs a line on stderr when it
/// builds (the first build downloads modules and can take a minute or more).
pub fn build(
    module: &Path,
    package: &str,
    out: &Path,
    target_dir: &Path,
) -> Result<PathBuf, Error> {
    let go = go_binary()?;
    let version = Command::new(&go)
        .arg("version")
        .env("GOTOOLCHAIN", "local")
        .output()
        .map_err(|e| {
            err(format!(
                "cannot run {}: {e} ({HOW_TO_GET_GO})",
                go.display()
            ))
        })?;
    if !version.status.success() {
        return Err(err(format!(
            "{} version failed: {}",
            go.display(),
            String::from_utf8_lossy(&version.stderr).trim()
        )));
    }
    let stamp = stamp(module, &version.stdout)?;
    let stamp_file = out.with_extension("stamp");
    if out.is_file() && fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(out.to_path_buf());
    }
    let dir = out
        .parent()
        .ok_or_else(|| err(format!("{} has no parent directory", out.display())))?;
    fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let name = out
        .file_name()
        .map_or_else(|| "go-program".into(), |n| n.to_string_lossy().into_owned());
    eprintln!(
        "go-provision: building {name} from {} with {} (the first build downloads its modules)",
        module.display(),
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let started = Instant::now();
    let tmp = dir.join(format!("{name}.tmp.{}", std::process::id()));
    let output = Command::new(&go)
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(package)
        .current_dir(module)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .env("GOCACHE", target_dir.join("go-cache"))
        .output()
        .map_err(|e| err(format!("cannot run {} build: {e}", go.display())))?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(err(format!(
            "building {name} in {} failed (it needs the Go module proxy the first time): {}",
            module.display(),
            String::from_utf8_lossy(&output.stderr)
                .trim()
                .replace('\n', " | ")
        )));
    }
    fs::rename(&tmp, out).map_err(|e| err(format!("cannot move {name} into place: {e}")))?;
    fs::write(&stamp_file, &stamp)
        .map_err(|e| err(format!("cannot write {}: {e}", stamp_file.display())))?;
    eprintln!(
        "go-provision: built {} in {:.1?}",
        out.display(),
        started.elapsed()
    );
    Ok(out.to_path_buf())
}

/// A digest of the module's `*.go`, `go.mod` and `go.sum` (names and
/// contents) and the Go version: FNV-1a, enough to notice a change.
fn stamp(src: &Path, go_version: &[u8]) -> Result<String, Error> {
    let mut files: Vec<PathBuf> = fs::read_dir(src)
        .map_err(|e| err(format!("cannot read the Go sources {}: {e}", src.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "go")
                || p.file_name()
                    .is_some_and(|n| n == "go.mod" || n == "go.sum")
        })
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
    fn the_stamp_changes_with_the_sources_go_mod_and_the_go_version() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("main.go"), "package main\n").unwrap();
        fs::write(dir.path().join("go.mod"), "module x\n").unwrap();
        fs::write(dir.path().join("README.md"), "ignored").unwrap();
        let a = stamp(dir.path(), b"go1.26").unwrap();
        assert_eq!(a, stamp(dir.path(), b"go1.26").unwrap());
        assert_ne!(a, stamp(dir.path(), b"go1.27").unwrap());
        fs::write(dir.path().join("README.md"), "still ignored").unwrap();
        assert_eq!(a, stamp(dir.path(), b"go1.26").unwrap());
        fs::write(dir.path().join("main.go"), "package main // changed\n").unwrap();
        let b = stamp(dir.path(), b"go1.26").unwrap();
        assert_ne!(a, b);
        fs::write(dir.path().join("go.mod"), "module x\n\ngo 1.26\n").unwrap();
        assert_ne!(b, stamp(dir.path(), b"go1.26").unwrap());
        assert!(a.ends_with(" 2 files\n"));
    }

    #[test]
    fn the_go_modules_are_in_the_workspace() {
        assert!(peer_sources().join("go.mod").is_file());
        assert!(peer_sources().join("go.sum").is_file());
        for tool in ["grpc-health-probe", "etcd-3.6", "etcd-3.7"] {
            assert!(tool_sources(tool).join("go.sum").is_file(), "{tool}");
        }
    }
}
