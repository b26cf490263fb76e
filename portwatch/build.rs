//! Builds the eBPF programs (crate portwatch-ebpf) with nightly + bpf-linker
//! through aya-build, into OUT_DIR, where src/capture/loader.rs embeds them.

use std::{env, path::PathBuf};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("no workspace directory")?;
    // `cargo xtask setup` installs bpf-linker here; put it on PATH for the
    // nested eBPF build so a plain `cargo build` works after setup.
    let tools = workspace.join(".tools/bin");
    println!("cargo:rerun-if-changed={}", tools.display());
    if tools.is_dir() {
        let path = env::var_os("PATH").unwrap_or_default();
        let joined = env::join_paths(std::iter::once(tools).chain(env::split_paths(&path)))?;
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PATH", joined) };
    }
    let ebpf_dir = workspace.join("portwatch-ebpf");
    let root_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [Package {
            name: "portwatch-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs (run `cargo xtask setup` once if bpf-linker or nightly rust-src is missing)")
}
