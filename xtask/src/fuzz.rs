//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (nightly, libFuzzer),
//! each run for a few seconds. Installs cargo-fuzz when missing (minutes of
//! compiling), so it stays out of `cargo xtask test`, which has a quick
//! property test of the same reader instead.

use std::process::Command;

use anyhow::Result;

use crate::{root, run, setup};

/// Fuzz targets in fuzz/fuzz_targets/.
const TARGETS: &[&str] = &["journal_line"];

/// rustup's `cargo` (it understands `+nightly`), with the eBPF tools on PATH.
fn rustup_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.env("PATH", setup::path_with_tools())
        .env_remove("CARGO")
        .env_remove("RUSTC");
    cmd
}

/// Runs every target for `secs` seconds.
pub fn run_all(secs: u64) -> Result<()> {
    setup::ensure()?;
    let have =
        std::env::split_paths(&setup::path_with_tools()).any(|d| d.join("cargo-fuzz").is_file());
    if !have {
        eprintln!("xtask: installing cargo-fuzz");
        run(rustup_cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    for target in TARGETS {
        run(rustup_cargo()
            .current_dir(root().join("fuzz"))
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={secs}")))?;
    }
    Ok(())
}
