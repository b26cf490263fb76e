//! Checks of the tree itself that `cargo xtask test` runs before any test:
//! the format (nightly rustfmt, as `rustfmt.toml` asks) and the layering
//! (portwatch-core builds without eBPF: no aya under it).

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{cargo, output, root, run};

/// `cargo +nightly fmt --all --check`, installing nightly's rustfmt if needed.
pub fn format() -> Result<()> {
    let have = Command::new("rustfmt")
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask: installing rustfmt for nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rustfmt",
            "--toolchain",
            "nightly",
        ]))?;
    }
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
