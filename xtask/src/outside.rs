//! `cargo package` of every crate a user links, then a project outside the
//! workspace (`tests/outside-project`) built on those packages as a user
//! would build it, and run against etcd.

use std::{path::Path, process::Command};

use crate::{Result, cargo, workspace_root};

/// The crates users link, dependencies first (the order `cargo package`
/// needs no registry for: each one's dependencies are packaged before it).
pub(crate) const PUBLISHED: [&str; 10] = [
    "etcdlb-backoff",
    "etcdlb-discover",
    "etcdlb-write-coalesce",
    "etcdlb-authority-fix",
    "etcdlb-balancer",
    "etcdlb-etcd",
    "etcdlb-registry",
    "etcdlb-resolver",
    "etcdlb-serve",
    "etcdlb",
];

/// `cargo package` of [`PUBLISHED`], each verified (built from its packaged
/// sources, its workspace dependencies taken from the packages just made).
pub(crate) fn package(protoc: &Path) -> Result<()> {
    // Packages of an earlier run have the same versions: cargo would verify
    // against what it unpacked then, not against what it packs now.
    let old = workspace_root().join("target/package");
    if old.exists() {
        std::fs::remove_dir_all(&old)
            .map_err(|e| format!("cannot remove the old packages in {}: {e}", old.display()))?;
    }
    // Cargo also keeps what it unpacked from that local registry under
    // $CARGO_HOME/registry/{src,cache}/<its id>/ and reuses it for the same
    // version: remove our crates there (they are on no real registry).
    forget_unpacked_packages();
    eprintln!(
        "xtask: cargo package (verified) of {}",
        PUBLISHED.join(", ")
    );
    let mut cmd = cargo();
    cmd.arg("package").env("PROTOC", protoc);
    if std::env::var_os("XTASK_PACKAGE_ALLOW_DIRTY").is_some() {
        cmd.arg("--allow-dirty");
    }
    for name in PUBLISHED {
        cmd.args(["-p", name]);
    }
    let status = cmd.status()?;
    if !status.success() {
        return Err(format!("cargo package failed ({status}): the packages are above").into());
    }
    Ok(())
}

/// Removes `etcdlb*` sources and archives under `$CARGO_HOME/registry`.
fn forget_unpacked_packages() {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
    let Some(home) = home else { return };
    for kind in ["src", "cache"] {
        let Ok(registries) = std::fs::read_dir(home.join("registry").join(kind)) else {
            continue;
        };
        for registry in registries.flatten() {
            let Ok(entries) = std::fs::read_dir(registry.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("etcdlb") {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
        }
    }
}

/// Builds `tests/outside-project` against the packages [`package`] left in
/// `target/package/<name>-<version>/` (crates.io's `etcdlb*` patched to
/// them, as a user's `etcdlb = "0.1"` would resolve once published) and runs
/// it against `etcd`.
pub(crate) fn build_and_run(protoc: &Path, etcd: &[String]) -> Result<()> {
    let root = workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    let project = root.join("tests/outside-project");
    // The workspace's lock as a start: the same versions of tokio, tonic and
    // the rest, so the build reuses what the workspace compiled.
    std::fs::copy(root.join("Cargo.lock"), project.join("Cargo.lock"))?;
    let mut build = cargo();
    build
        .current_dir(&project)
        .args(["build", "--quiet", "--target-dir"])
        .arg(root.join("target"))
        .env("PROTOC", protoc);
    for name in PUBLISHED {
        let dir = root.join(format!("target/package/{name}-{version}"));
        if !dir.join("Cargo.toml").is_file() {
            return Err(format!(
                "no packaged {name} at {}: run the packaging first",
                dir.display()
            )
            .into());
        }
        build.arg("--config").arg(format!(
            "patch.crates-io.{name}.path={:?}",
            dir.display().to_string()
        ));
    }
    eprintln!("xtask: building tests/outside-project on the packaged crates");
    let status = build.status()?;
    if !status.success() {
        return Err(
            format!("the outside project does not build on the packages ({status})").into(),
        );
    }
    let bin = root.join("target/debug/outside-project");
    eprintln!("xtask: running {}", bin.display());
    let status = Command::new(&bin)
        .env("ETCD_ENDPOINTS", etcd.join(","))
        .status()?;
    if !status.success() {
        return Err(format!("the outside project failed against etcd ({status})").into());
    }
    Ok(())
}
