//! Installing the eBPF toolchain and test dependencies, idempotently.
//!
//! bpf-linker has no prebuilt binary we can fetch, so it is built from its
//! crate against the nightly toolchain's own libLLVM (the LLVM that emits our
//! bitcode), into `.tools/` inside the workspace; so is cargo-deb, which
//! builds the Debian package.

use std::{ffi::OsString, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{output, root, run};

/// bpf-linker release known to work with this setup.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-deb release known to work with this setup (`cargo xtask deb`).
const CARGO_DEB_VERSION: &str = "3.8.0";

fn tools() -> PathBuf {
    root().join(".tools")
}

/// PATH with `.tools/bin` first.
pub fn path_with_tools() -> OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(tools().join("bin")).chain(std::env::split_paths(&path)))
        .unwrap_or(path)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "a nightly toolchain is needed to build eBPF (rustup toolchain install nightly)",
    )?;
    Ok(PathBuf::from(out.trim()))
}

fn ensure_rust_src(sysroot: &std::path::Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for nightly");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn ensure_bpf_linker(sysroot: &std::path::Path) -> Result<()> {
    let bin = tools().join("bin/bpf-linker");
    if bin.exists() {
        return Ok(());
    }
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("nightly rustc does not say its LLVM version")?;
    let major = llvm.split('.').next().unwrap_or_default();
    // Link against the very libLLVM that nightly rustc uses.
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("nightly toolchain has no libLLVM.so.*")?;
    let prefix = tools().join("llvm");
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir)?;
    for name in ["libLLVM.so".into(), lib.file_name().unwrap().to_owned()] {
        let link = libdir.join::<&std::ffi::OsStr>(name.as_ref());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm} (about a minute)");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .arg("--root")
        .arg(tools())
        .env("LLVM_PREFIX", &prefix))
    .context("building bpf-linker")
}

/// Makes nightly rust-src and bpf-linker available. Cheap when they are.
pub fn ensure() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)
}

/// Installs cargo-deb into `.tools/` (about 4 minutes on a 2-core machine)
/// and the Debian tools the package build and its test use. Cheap when they
/// are there.
pub fn ensure_cargo_deb() -> Result<()> {
    ensure_packages(&[
        // cargo-deb's `depends = "$auto"`.
        ("dpkg-shlibdeps", "dpkg-dev"),
        // The package test renders every man page and checks the unit.
        ("man", "man-db"),
        ("systemd-analyze", "systemd"),
    ])?;
    let installed = Command::new(tools().join("bin/cargo-deb"))
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).trim() == format!("cargo-deb {CARGO_DEB_VERSION}")
        });
    if installed {
        return Ok(());
    }
    eprintln!("xtask: building cargo-deb {CARGO_DEB_VERSION} (a few minutes)");
    run(Command::new("cargo")
        .args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ])
        .arg("--root")
        .arg(tools()))
    .context("building cargo-deb")
}

/// cargo-nextest runs each test in a process of its own (so each starts
/// from a new machine's mounts); machines of this kind ship it, and it is
/// built from its crate where they do not.
pub fn ensure_nextest() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["nextest", "--version"])
        .env("PATH", path_with_tools())
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    eprintln!("xtask: building cargo-nextest (a few minutes)");
    run(Command::new("cargo")
        .args(["install", "cargo-nextest", "--locked", "--root"])
        .arg(tools()))
    .context("building cargo-nextest")
}

/// The variable that sets cargo's runner for host binaries:
/// `CARGO_TARGET_<HOST TRIPLE>_RUNNER`.
pub fn runner_variable() -> Result<String> {
    let version = output(Command::new("rustc").arg("-vV"))?;
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("rustc -vV names no host")?;
    Ok(format!(
        "CARGO_TARGET_{}_RUNNER",
        host.to_uppercase().replace(['-', '.'], "_")
    ))
}

fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return std::path::Path::new(cmd).is_file();
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(cmd).is_file())
}

/// Debian packages the integration tests use: nginx (a real server that
/// fails to bind), iproute2, python3 (other processes and uids), and the
/// tools that extract and check a second kernel's BTF.
pub fn ensure_test_packages() -> Result<()> {
    ensure_packages(&[
        ("nginx", "nginx"),
        // `portwatch man --dir`'s pages are rendered with man -l.
        ("man", "man-db"),
        // report --html is checked in a real browser.
        ("chromium", "chromium"),
        // Peak memory of `report` in its tests.
        ("/usr/bin/time", "time"),
        ("/usr/sbin/apache2", "apache2"),
        ("ip", "iproute2"),
        ("objcopy", "binutils"),
        ("xz", "xz-utils"),
        ("setpriv", "util-linux"),
        ("bpftool", "bpftool"),
        // Debian's, not a per-user install: tests run it as other uids too.
        ("/usr/bin/python3", "python3"),
        // Real Prometheus and promtool for the --metrics tests, and
        // promtool for the alert rules' tests (deploy.rs).
        ("prometheus", "prometheus"),
        ("promtool", "prometheus"),
        // Real containers: dockerd (with its containerd and runc), an image
        // made of busybox-static, and the nat table's rules for `who`.
        ("dockerd", "docker.io"),
        ("/bin/busybox", "busybox-static"),
        ("/usr/sbin/iptables-save", "iptables"),
        // Rootful podman; crun refuses this host's hybrid cgroups, runc works.
        ("podman", "podman"),
        ("runc", "runc"),
        ("conmon", "conmon"),
        // Kubernetes pods under any containerd state directory: a containerd
        // of the tests' own, laid out as k3s lays it out, driven with ctr.
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("nsenter", "util-linux"),
        // A hostPort as kubelet makes one: CNI's bridge, host-local, portmap.
        ("/usr/lib/cni/portmap", "containernetworking-plugins"),
        // kube-proxy's rules loaded into a test's namespace.
        ("/usr/sbin/iptables-restore", "iptables"),
        ("/usr/sbin/iptables-legacy-restore", "iptables"),
        ("/usr/sbin/ip6tables-legacy-restore", "iptables"),
        ("/usr/sbin/nft", "nftables"),
        // A capability left out, as a pod's manifest leaves it out.
        ("capsh", "libcap2-bin"),
        // Compose v1, the only one Debian 12 ships: fixes must name it.
        ("docker-compose", "docker-compose"),
    ])
}

/// Installs the Debian packages whose commands (name on PATH, or absolute
/// path) are missing.
pub fn ensure_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|&(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    // policy-rc.d keeps packages such as nginx from starting services (port 80).
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let wrote_policy = !policy.exists();
    if wrote_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        run(Command::new("chmod").arg("755").arg(policy))?;
    }
    let result = run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if wrote_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}
