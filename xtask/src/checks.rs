//! Checks of the tree itself that `cargo xtask test` runs before any test:
//! the format (nightly rustfmt, as `rustfmt.toml` asks), the layering
//! (portwatch-core builds without eBPF: no aya under it) and clippy on the
//! eBPF crate (every `unsafe` block there explains itself).

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{cargo, output, root, run};

/// Installs nightly's `component` (rustfmt, clippy) unless `probe`, one of
/// its commands, already answers `+nightly --version`.
fn ensure_nightly_component(probe: &str, component: &str) -> Result<()> {
    let have = Command::new(probe)
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask: installing {component} for nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// `cargo +nightly fmt --all --check`, installing nightly's rustfmt if needed.
pub fn format() -> Result<()> {
    ensure_nightly_component("rustfmt", "rustfmt")?;
    // rustup's `cargo` proxy, not $CARGO (stable's own binary knows no `+nightly`).
    run(Command::new("cargo")
        .current_dir(root())
        .args(["+nightly", "fmt", "--all", "--check"]))
    .context("the tree is not formatted: run `cargo +nightly fmt --all`")
}

/// Fails when aya (or anything of the eBPF toolchain) is a dependency of
/// portwatch-core: the core must build and test on stable Rust alone.
pub fn layers() -> Result<()> {
    let tree = output(cargo().args([
        "tree",
        "--package",
        "portwatch-core",
        "--edges",
        "normal,build",
        "--prefix",
        "none",
    ]))?;
    if let Some(line) = tree
        .lines()
        .find(|l| l.starts_with("aya") || l.starts_with("portwatch-ebpf"))
    {
        bail!("portwatch-core depends on {line}: it must build without eBPF");
    }
    Ok(())
}

/// Clippy on portwatch-ebpf, for the BPF target it is built for (nightly,
/// `core` from rust-src, as aya-build builds it in portwatch/build.rs):
/// fails on an `unsafe` block without its `// SAFETY:` line. The crate
/// denies the lint itself; the flag keeps the check honest if that line goes.
/// A check, not a build: no bpf-linker needed.
pub fn ebpf_clippy() -> Result<()> {
    ensure_nightly_component("cargo-clippy", "clippy")?;
    run(Command::new("cargo").current_dir(root()).args([
        "+nightly",
        "clippy",
        "--package",
        "portwatch-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "clippy::undocumented_unsafe_blocks",
    ]))
    .context("clippy on the eBPF crate: every `unsafe` block there needs a `// SAFETY:` line")
}
