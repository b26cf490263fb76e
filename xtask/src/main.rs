//! Developer tasks: `cargo xtask setup | run | test | bench`.
//!
//! Every task that needs the eBPF toolchain installs it first (idempotent), so
//! a fresh clone needs nothing but rustup and this command.

mod bench;
mod bench_burst;
mod bench_check;
mod bench_report;
mod bench_server;
mod bench_vm;
mod bench_who;
mod checks;
mod deb;
mod floor;
mod fresh;
mod fuzz;
mod image;
mod kernels;
mod load;
mod qemu;
mod setup;
mod soak;
mod vm;
mod vm_systemd;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "portwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// What `cargo xtask vm-test` boots.
#[derive(Clone, Copy, clap::ValueEnum)]
enum VmTarget {
    /// Debian 12 with systemd as PID 1 and portwatch's .deb installed.
    Systemd,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (nightly rust-src, bpf-linker) and cargo-deb
    /// into .tools/.
    Setup,
    /// Build portwatch (release) and run it with the given arguments, e.g.
    /// `cargo xtask run -- watch --port 80`.
    Run {
        /// Arguments for portwatch.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit, BTF of a second kernel, eBPF integration (as
    /// root), then the integration tests again on Debian's kernels under
    /// qemu. First the tree's checks: format, layering, and clippy on the
    /// eBPF crate (a `// SAFETY:` line on every `unsafe` block). Each test
    /// is a process of its own (cargo-nextest), started as on a new machine:
    /// a private mount namespace without tracefs, debugfs or bpffs.
    Test {
        /// Extra arguments for `cargo nextest run`, e.g. a test name filter;
        /// with any, only the host suites run.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a command in a private mount namespace without tracefs, debugfs
    /// or bpffs, as on a new machine (the test runner `test` uses), e.g.
    /// `cargo xtask fresh-machine -- target/debug/portwatch watch`.
    FreshMachine {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<std::ffi::OsString>,
    },
    /// Measure overhead, start-up, throughput and memory; prints a table for BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Inside a VM of `bench --only vm`: measure and print the rows.
    #[command(hide = true)]
    BenchGuest {
        /// The portwatch binary.
        portwatch: PathBuf,
    },
    /// Soak: 100,000 short-lived failing processes and storms; memory, map fill, loss.
    Soak(soak::SoakArgs),
    /// Run the integration tests on Debian's kernels under qemu, once with
    /// each backend (fexit loads there, unlike on this project's machines);
    /// `vm-test systemd` runs only the suite under systemd as PID 1.
    VmTest {
        /// `systemd`: only the VM with systemd as PID 1.
        target: Option<VmTarget>,
        /// Only this suite (repeat for more), e.g. `--suite kube_proxy`;
        /// a narrowed run leaves the systemd VM out.
        #[arg(long = "suite", value_name = "SUITE")]
        suites: Vec<String>,
        /// Only the kernels whose release contains this, e.g. `--kernel 6.1.0`.
        #[arg(long, value_name = "RELEASE")]
        kernel: Option<String>,
    },
    /// Build the Debian package (target/debian/); with --test, install it
    /// into a scratch root with dpkg, run it, verify the unit, and purge it.
    Deb(deb::DebArgs),
    /// Build the OCI image (target/image/: an OCI layout and a tar that
    /// `podman load` and `ctr images import` read), without a registry.
    Image(image::ImageArgs),
    /// Run the cargo-fuzz targets in fuzz/ briefly (nightly; installs
    /// cargo-fuzz when missing).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command, failing with its name when it does not succeed.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, failing with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo` with the eBPF tools on PATH.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root())
        .env("PATH", setup::path_with_tools());
    cmd
}

/// Builds the release binary and returns its path.
pub fn build_release() -> Result<PathBuf> {
    setup::ensure()?;
    run(cargo().args(["build", "--release", "--package", "portwatch"]))?;
    Ok(root().join("target/release/portwatch"))
}

fn test(extra: &[String]) -> Result<()> {
    checks::format()?;
    checks::layers()?;
    setup::ensure()?;
    // After `setup`, which installs nightly's rust-src (build-std needs it).
    checks::ebpf_clippy()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the eBPF integration tests load programs and make network namespaces: run as root");
    }
    setup::ensure_test_packages()?;
    setup::ensure_nextest()?;
    let other_btf = kernels::second_kernel_btf()?;
    // Every test process starts through `fresh-machine`: what an earlier
    // test or run mounted is gone, as on CI's new machine.
    let runner = format!(
        "{} fresh-machine --",
        std::env::current_exe().context("where is xtask")?.display()
    );
    let mut cmd = cargo();
    cmd.args([
        "nextest",
        "run",
        "--workspace",
        "--exclude",
        "portwatch-ebpf",
    ])
    // The tests share kernel state (the ring buffer's readers see every
    // failure on the host), so one at a time, as in the VMs.
    .args(["--test-threads", "1", "--no-fail-fast"])
    .env(setup::runner_variable()?, runner)
    .env("PORTWATCH_OTHER_BTF", &other_btf)
    .args(extra);
    run(&mut cmd)?;
    if extra.is_empty() {
        vm::run_all()?;
        deb::build_and_test()?;
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => {
            setup::ensure()?;
            setup::ensure_cargo_deb()
        }
        Task::Run { args } => {
            let bin = build_release()?;
            // Ctrl-C reaches portwatch too (same process group): let it stop
            // and print its summary before this wrapper exits. A handler, not
            // SIG_IGN, so the child does not inherit the disposition.
            extern "C" fn wait_for_child(_: libc::c_int) {}
            // SAFETY: the handler does nothing, so it is async-signal-safe.
            unsafe {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGINT,
                    nix::sys::signal::SigHandler::Handler(wait_for_child),
                )
            }?;
            let status = Command::new(bin).args(args).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { args } => test(&args),
        Task::FreshMachine { cmd } => fresh::exec(&cmd).map(|never| match never {}),
        Task::Bench(opts) => bench::run(&opts),
        Task::BenchGuest { portwatch } => bench_vm::guest(&portwatch),
        Task::Soak(opts) => soak::run(&opts),
        Task::VmTest {
            target: None,
            suites,
            kernel,
        } => vm::run_selected(&vm::Selection { suites, kernel }),
        Task::VmTest {
            target: Some(VmTarget::Systemd),
            ..
        } => vm_systemd::run_alone(),
        Task::Deb(opts) => deb::run_deb(&opts),
        Task::Image(opts) => image::run(&opts),
        Task::Fuzz { secs } => fuzz::run_all(secs),
    }
}
