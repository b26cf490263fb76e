//! `cargo xtask bench --only vm`: the connection loop of `--only server` on
//! Debian's kernels under qemu, where fexit loads (this project's machines
//! refuse it), with both backends. Under TCG absolute times mean little;
//! what carries over is how often each program runs per connection, its size
//! as the kernel runs it (instructions after the verifier's rewrite), and
//! ratios taken side by side in one guest.
//!
//! The host side boots each kernel with an initramfs holding busybox, this
//! xtask binary and the release portwatch; the guest side (`xtask
//! bench-guest`, hidden) measures and prints Markdown rows marked `VMBENCH`
//! on the console, which the host collects.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use portwatch_test_support::Scratch;

use crate::{
    bench_server::{connection_loop, LOOP_PORT},
    floor::{self, Floor},
    kernels,
    load::{median, Tracer},
    qemu::{self, Qemu},
    root, setup,
};

/// Connections per timed run (TCG runs them ~100x slower than the host).
const CONNECTIONS: u32 = 5_000;
/// Timed runs per mode, the modes' order rotating round by round.
const ROUNDS: usize = 5;
/// Boot to power-off.
const TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The console marker of the guest's rows.
const MARK: &str = "VMBENCH ";

/// How the guest's kernel is traced during a run.
#[derive(Clone, Copy)]
enum Mode {
    Untraced,
    /// A two-instruction raw tracepoint on `inet_sock_set_state`: the floor
    /// of any program there.
    StateProbe,
    /// `portwatch watch [ARGS]` on `backend`.
    Portwatch {
        backend: &'static str,
        record: Record,
    },
}

/// Which `--record` a portwatch mode runs with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Record {
    No,
    /// `--record DIR`: the loop's port is of no interest.
    Plain,
    /// `--record DIR --port LOOP_PORT`: every counted change of the loop's
    /// port is counted (the most the state program does).
    Port,
}

const MODES: [Mode; 8] = [
    Mode::Untraced,
    Mode::StateProbe,
    Mode::Portwatch {
        backend: "fexit",
        record: Record::No,
    },
    Mode::Portwatch {
        backend: "fexit",
        record: Record::Plain,
    },
    Mode::Portwatch {
        backend: "fexit",
        record: Record::Port,
    },
    Mode::Portwatch {
        backend: "tracepoint",
        record: Record::No,
    },
    Mode::Portwatch {
        backend: "tracepoint",
        record: Record::Plain,
    },
    Mode::Portwatch {
        backend: "tracepoint",
        record: Record::Port,
    },
];

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::Untraced => "untraced".into(),
            Mode::StateProbe => "bare raw probe (inet_sock_set_state)".into(),
            Mode::Portwatch { backend, record } => format!(
                "watch{} ({backend})",
                match record {
                    Record::No => "",
                    Record::Plain => " --record",
                    Record::Port => " --record --port (the loop's)",
                }
            ),
        }
    }
}

/// What is attached for one run; dropping it detaches.
enum Attached {
    Nothing,
    Probe(Floor),
    Tracer(Tracer, Scratch),
}

impl Attached {
    fn start(mode: Mode, portwatch: &Path) -> Result<Attached> {
        Ok(match mode {
            Mode::Untraced => Attached::Nothing,
            Mode::StateProbe => Attached::Probe(Floor::attach_raw(c"inet_sock_set_state")?),
            Mode::Portwatch { backend, record } => {
                let scratch = Scratch::new("bench-vm");
                let mut args = vec!["--backend".to_owned(), backend.to_owned()];
                if record != Record::No {
                    args.push("--record".into());
                    args.push(scratch.0.join("journal").display().to_string());
                }
                if record == Record::Port {
                    args.push("--port".into());
                    args.push(LOOP_PORT.to_string());
                }
                let tracer = Tracer::start(portwatch, &args)?;
                if tracer.backend != backend {
                    bail!(
                        "asked for backend {backend}, portwatch runs {}",
                        tracer.backend
                    );
                }
                Attached::Tracer(tracer, scratch)
            }
        })
    }

    fn stop(self) -> Result<()> {
        if let Attached::Tracer(t, scratch) = self {
            t.stop()?;
            let _ = std::fs::remove_dir_all(&scratch.0);
        }
        Ok(())
    }
}

/// Where the host puts `--baseline`'s binary in the guest.
const GUEST_BASELINE: &str = "/baseline";

/// The guest side of `--only vm-who`: `who` against `ss` at 1,000
/// processes (fewer tools than on the host: busybox has no `lsof`), and
/// the baseline build's `who` when the host put one in; its table's rows
/// marked on stdout.
fn guest_who(portwatch: &Path) -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let baseline = Path::new(GUEST_BASELINE);
    let baseline = baseline.exists().then_some(baseline);
    for line in crate::bench_who::one_size(portwatch, baseline, 5, 1000, 5)? {
        println!("{MARK}who {} | {line}", release.trim());
    }
    Ok(())
}

/// The guest side: prints the kernel's rows, marked, on stdout (the console).
pub fn guest(portwatch: &Path) -> Result<()> {
    if std::env::var_os("PORTWATCH_BENCH_VM_WHO").is_some() {
        return guest_who(portwatch);
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let release = release.trim();
    // Warm-up, then the timed rounds.
    connection_loop(CONNECTIONS);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for round in 0..ROUNDS {
        for k in 0..MODES.len() {
            let i = (round + k) % MODES.len();
            let attached = Attached::start(MODES[i], portwatch)?;
            times[i].push(connection_loop(CONNECTIONS));
            attached.stop()?;
        }
    }
    let untraced = median(times[0].clone());
    for (mode, t) in MODES.iter().zip(times) {
        let t = median(t);
        println!(
            "{MARK}time | {release} | {} | {t:.1} µs | {:.3}x |",
            mode.name(),
            t / untraced
        );
    }
    // The kernel's accounting, a pass of its own (it adds two clock reads
    // per run).
    let _stats = floor::Stats::enable()?;
    for mode in &MODES[1..] {
        let attached = Attached::start(*mode, portwatch)?;
        let ran = match &attached {
            Attached::Probe(f) => {
                let before = f.program_stats();
                connection_loop(CONNECTIONS);
                floor::since(&before, f.program_stats())
            }
            Attached::Tracer(t, _) => {
                let pid = t.child.id();
                let before = floor::programs_of(pid);
                connection_loop(CONNECTIONS);
                floor::since(&before, floor::programs_of(pid))
            }
            Attached::Nothing => unreachable!("not in the accounting pass"),
        };
        attached.stop()?;
        for p in ran {
            println!(
                "{MARK}prog | {release} | {} | {} | {} | {} | {:.2} | {:.0} |",
                mode.name(),
                p.name,
                p.insns,
                p.runs,
                p.runs as f64 / f64::from(CONNECTIONS),
                p.run_ns as f64 / p.runs as f64
            );
        }
    }
    Ok(())
}

/// The host side: boots each kernel of [`kernels::KERNELS`] (one after
/// another: a second TCG guest would share the host's cores) and returns the
/// section for BENCHMARKS.md.
pub fn run(portwatch: &Path) -> Result<Vec<String>> {
    run_with(portwatch, false, None)
}

/// `--only vm-who`: `portwatch who` against `ss -Htan` and `ss -Htanp` in
/// Debian's 6.12 VM (where the BPF iterator loads), side by side, and
/// `baseline`'s `who` beside them when given.
pub fn run_who(portwatch: &Path, baseline: Option<&Path>) -> Result<Vec<String>> {
    run_with(portwatch, true, baseline)
}

fn run_with(portwatch: &Path, who: bool, baseline: Option<&Path>) -> Result<Vec<String>> {
    setup::ensure_packages(qemu::PACKAGES)?;
    let work = root().join(".cache/bench-vm");
    let xtask = std::env::current_exe().context("this xtask binary")?;
    let tree = work.join("root");
    let mut programs = vec![
        (xtask, PathBuf::from("/xtask")),
        (portwatch.to_path_buf(), PathBuf::from("/portwatch")),
    ];
    if who {
        // iproute2's ss, with its libraries (busybox has none).
        setup::ensure_packages(&[("ss", "iproute2")])?;
        programs.push((PathBuf::from("/usr/bin/ss"), PathBuf::from("/bin/ss")));
        if let Some(base) = baseline {
            programs.push((base.to_path_buf(), PathBuf::from(GUEST_BASELINE)));
        }
    }
    qemu::busybox_tree(&tree, &programs)?;
    let common = work.join("common.cpio.gz");
    qemu::cpio(&tree, &common)?;
    std::fs::remove_dir_all(&tree)?;
    let (mut time_rows, mut prog_rows, mut who_rows) = (Vec::new(), Vec::new(), Vec::new());
    for package in kernels::KERNELS {
        if who && !package.contains("6.12") {
            continue;
        }
        let kernel = kernels::image(package)?;
        let env = if who { "PORTWATCH_BENCH_VM_WHO=1" } else { "" };
        let mut init = qemu::init_start(&kernel.modules, env);
        init.push_str(&format!(
            "/xtask bench-guest /portwatch; echo \"{MARK}rc=$?\"\npoweroff -f\n"
        ));
        let initrd = qemu::kernel_initramfs(&kernel, &common, &work, &init)?;
        let log = initrd.with_file_name("serial.log");
        eprintln!("bench: booting {} under qemu (TCG)", kernel.release);
        let mut rc = None;
        let qemu = Qemu {
            vmlinuz: &kernel.vmlinuz,
            initrd: &initrd,
            memory_mib: 2048,
            append: "console=ttyS0 quiet panic=-1",
            timeout: TIMEOUT,
        };
        qemu.run(&log, |line| {
            let Some(at) = line.find(MARK) else {
                return Ok(());
            };
            let row = &line[at + MARK.len()..];
            eprintln!("bench: vm {}: {row}", kernel.release);
            if let Some(code) = row.strip_prefix("rc=") {
                rc = code.trim().parse::<i32>().ok();
            } else if let Some(r) = row.strip_prefix("time ") {
                time_rows.push(r.to_owned());
            } else if let Some(r) = row.strip_prefix("prog ") {
                prog_rows.push(r.to_owned());
            } else if let Some(r) = row.strip_prefix("who ") {
                who_rows.push(r.to_owned());
            }
            Ok(())
        })?;
        if rc != Some(0) {
            bail!(
                "the benchmark in the {} VM did not finish (exit {rc:?}); console log {}",
                kernel.release,
                log.display()
            );
        }
    }
    if who {
        return Ok(who_rows);
    }
    let mut report = vec![
        format!(
            "Connection loop in the VMs (qemu TCG, 2 vCPUs), {CONNECTIONS} connections a run, \
             median of {ROUNDS} runs per mode, the modes' order rotating:"
        ),
        String::new(),
        "| kernel | mode | time per connection | / untraced |".into(),
        "|---|---|---|---|".into(),
    ];
    report.extend(time_rows);
    report.push(String::new());
    report.push(
        "Per program, kernel.bpf_stats_enabled=1, one run of the loop per mode \
         (instructions: as the kernel runs them, after the verifier's rewrite):"
            .into(),
    );
    report.push(String::new());
    report.push(
        "| kernel | mode | program | instructions | runs | runs per connection | ns per run |"
            .into(),
    );
    report.push("|---|---|---|---|---|---|---|".into());
    report.extend(prog_rows);
    Ok(report)
}
