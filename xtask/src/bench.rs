//! `cargo xtask bench`: what portwatch costs and how much it can carry.
//!
//! Every figure is a median over rounds in which runs without and with the
//! tracer alternate, so both sides see the same machine noise. Load runs in a
//! private network namespace on loopback.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use portwatch_test_support::{in_fresh_netns, Netns, Process};

use crate::{
    floor::{self, Floor},
    load::{bind, conflict, median, storm, tcp_socket, Tracer, PORT},
};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Rounds per figure (each round measures without and with the tracer).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds each storm lasts.
    #[arg(long, default_value_t = 3)]
    storm_secs: u64,
    /// Extra arguments for `portwatch watch`, e.g. `--backend fexit`.
    #[arg(long, allow_hyphen_values = true)]
    tracer_args: Vec<String>,
    /// Run one section only: `who` (portwatch who against ss, fuser, lsof).
    /// `check` (check -f on a 50-service compose file against one who).
    /// `cost` (the syscall loops against the floor probe, per-program ns).
    /// `burst` (bursts of distinct failures: lost, written, metrics).
    /// `server` (connection loop and nginx under wrk, per-program ns).
    /// `vm` (the connection loop on Debian's kernels under qemu, fexit and
    /// tracepoint: runs per connection, instructions, ns per run).
    #[arg(long, value_name = "SECTION", value_parser = ["who", "check", "cost", "burst", "server", "vm", "vm-who"])]
    only: Option<String>,
    /// Measure this portwatch binary instead of building the release one
    /// (e.g. the tests' build, whose hidden flags `--tracer-args` may use).
    #[arg(long, value_name = "BIN")]
    tracer_bin: Option<std::path::PathBuf>,
    /// Another portwatch binary to measure beside this build (`burst`,
    /// `who`, `vm-who`).
    #[arg(long, value_name = "BIN")]
    baseline: Option<std::path::PathBuf>,
    /// Only the post-mortem section (report throughput, recording cost).
    #[arg(long)]
    report_only: bool,
}

#[derive(Clone, Copy)]
enum Loop {
    SocketBindClose,
    FailingBind,
    Getppid,
}

impl Loop {
    fn name(self) -> &'static str {
        match self {
            Loop::SocketBindClose => "socket+bind+close",
            Loop::FailingBind => "failing bind (EADDRINUSE)",
            Loop::Getppid => "getppid (unrelated syscall)",
        }
    }

    fn iterations(self) -> u32 {
        match self {
            Loop::SocketBindClose => 100_000,
            Loop::FailingBind => 500_000,
            Loop::Getppid => 2_000_000,
        }
    }

    /// Nanoseconds per iteration.
    fn measure(self) -> f64 {
        in_fresh_netns(move || {
            let n = self.iterations();
            let (holder, loser) = conflict();
            let start = Instant::now();
            match self {
                Loop::SocketBindClose => {
                    for _ in 0..n {
                        let fd = tcp_socket();
                        let r = bind(fd, PORT + 1);
                        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
                        unsafe { libc::close(fd) };
                    }
                }
                Loop::FailingBind => {
                    for _ in 0..n {
                        assert_eq!(bind(loser, PORT), -1);
                    }
                }
                Loop::Getppid => {
                    for _ in 0..n {
                        std::hint::black_box(unsafe { libc::getppid() });
                    }
                }
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
            unsafe {
                libc::close(holder);
                libc::close(loser);
            }
            ns
        })
    }
}

/// Runs the benchmarks and prints a Markdown report.
pub fn run(opts: &BenchArgs) -> Result<()> {
    let bin = match &opts.tracer_bin {
        Some(bin) => bin.clone(),
        None => crate::build_release()?,
    };
    if opts.report_only {
        let lines = crate::bench_report::run(&bin, opts.storm_secs, &opts.tracer_args)?;
        println!("{}", lines.join("\n"));
        return Ok(());
    }
    let rounds = opts.rounds.max(1);
    if opts.only.as_deref() == Some("burst") {
        let lines = crate::bench_burst::run(&bin, opts.baseline.as_ref(), rounds)?;
        println!("{}", lines.join("\n"));
        return Ok(());
    }
    if opts.only.as_deref() == Some("server") {
        let lines = crate::bench_server::run(&bin, rounds, &opts.tracer_args)?;
        println!("{}", lines.join("\n"));
        return Ok(());
    }
    if opts.only.as_deref() == Some("vm") {
        println!("{}", crate::bench_vm::run(&bin)?.join("\n"));
        return Ok(());
    }
    if opts.only.as_deref() == Some("check") {
        println!(
            "{}",
            crate::bench_check::check_speed(&bin, rounds)?.join("\n")
        );
        return Ok(());
    }
    if opts.only.as_deref() == Some("vm-who") {
        let base = opts.baseline.as_deref();
        println!("{}", crate::bench_vm::run_who(&bin, base)?.join("\n"));
        return Ok(());
    }
    if opts.only.as_deref() == Some("who") {
        let base = opts.baseline.as_deref();
        println!(
            "{}",
            crate::bench_who::who_speed(&bin, base, rounds)?.join("\n")
        );
        return Ok(());
    }
    let mut report = Vec::new();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()?;
    report.push(format!(
        "Run {} on Linux {} ({} CPUs), {rounds} rounds, medians.",
        String::from_utf8_lossy(&date.stdout).trim(),
        host.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));

    // Syscall overhead: nothing attached, the bare probe (the floor of any
    // tracer on sys_exit_bind), and portwatch, alternating in each round.
    let mut backend = String::new();
    let mut startups = Vec::new();
    report.push(String::new());
    report.push(
        "| loop | nothing (ns/op) | bare probe (ns/op) | portwatch (ns/op) | probe / nothing | portwatch / nothing | portwatch / probe |"
            .into(),
    );
    report.push("|---|---|---|---|---|---|---|".into());
    for lp in [Loop::SocketBindClose, Loop::FailingBind, Loop::Getppid] {
        let (mut off, mut floor, mut on) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            off.push(lp.measure());
            let f = Floor::attach()?;
            floor.push(lp.measure());
            drop(f);
            let t = Tracer::start(&bin, &opts.tracer_args)?;
            startups.push(t.startup.as_secs_f64() * 1000.0);
            backend = t.backend.clone();
            on.push(lp.measure());
            t.stop()?;
        }
        let (off, floor, on) = (median(off), median(floor), median(on));
        eprintln!("bench: {} {off:.0} / {floor:.0} / {on:.0} ns/op", lp.name());
        report.push(format!(
            "| {} | {off:.0} | {floor:.0} | {on:.0} | {:.2}x | {:.2}x | {:.2}x |",
            lp.name(),
            floor / off,
            on / off,
            on / floor
        ));
    }
    report.push(String::new());
    report.extend(per_program(&bin, opts)?);
    report.push(String::new());
    report.push(format!("Backend: {backend}."));
    report.push(format!(
        "Start-up (spawn to `ready`, release build): median {:.0} ms over {} starts.",
        median(startups.clone()),
        startups.len()
    ));
    if opts.only.as_deref() == Some("cost") {
        println!("{}", report.join("\n"));
        return Ok(());
    }

    // Storms: full speed with and without folding, then paced at 100 k/s.
    report.push(String::new());
    report.push(
        "| storm | failures | failures/s | events shown | folded | lost | unaccounted | RSS after storm | peak RSS (start-up) |"
            .into(),
    );
    report.push("|---|---|---|---|---|---|---|---|---|".into());
    let cases: [(&str, Option<u64>, &[&str]); 3] = [
        ("full speed, default folding", None, &[]),
        ("full speed, --fold-window 0", None, &["--fold-window", "0"]),
        (
            "paced 100 k/s, --fold-window 0",
            Some(100_000),
            &["--fold-window", "0"],
        ),
    ];
    for (name, rate, args) in cases {
        let mut extra: Vec<String> = opts.tracer_args.clone();
        extra.extend(args.iter().map(|s| s.to_string()));
        let t = Tracer::start(&bin, &extra)?;
        let n = storm(opts.storm_secs, rate);
        // Let the reader drain before reading its memory and stopping it.
        std::thread::sleep(Duration::from_millis(500));
        let (rss, peak) = t.rss_kib();
        let s = t.stop()?;
        let get = |k: &str| s[k].as_u64().unwrap_or(0);
        let folded = get("folded_shown") + get("folded_tail");
        // Host noise (other binds on the machine) can only add to "matched".
        let unaccounted = n as i64 - (get("shown") + folded + get("lost")) as i64;
        eprintln!("bench: {name}: {s}");
        report.push(format!(
            "| {name} | {n} | {:.0} | {} | {folded} | {} | {unaccounted} | {:.1} MiB | {:.1} MiB |",
            n as f64 / opts.storm_secs as f64,
            get("shown"),
            get("lost"),
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        ));
    }
    report.push(String::new());
    report.extend(enrichment(&bin, opts)?);
    report.push(String::new());
    report.extend(crate::bench_burst::run(
        &bin,
        opts.baseline.as_ref(),
        rounds.min(3),
    )?);
    report.push(String::new());
    report.extend(crate::bench_who::who_speed(&bin, None, rounds)?);
    report.extend(crate::bench_report::run(
        &bin,
        opts.storm_secs,
        &opts.tracer_args,
    )?);
    println!("{}", report.join("\n"));
    Ok(())
}

/// The kernel's own accounting of each program (kernel.bpf_stats_enabled=1,
/// which adds two clock reads per run: so these are a separate pass, not the
/// runs above): ns per run of every program portwatch attached, and of the
/// bare probe, over one loop each.
fn per_program(bin: &Path, opts: &BenchArgs) -> Result<Vec<String>> {
    let _stats = floor::Stats::enable()?;
    let mut report = vec![
        "Per program, kernel.bpf_stats_enabled=1 (run_time_ns / run_cnt over one loop; run counts include other binds on the machine):".into(),
        String::new(),
        "| loop | program | runs | ns per run |".into(),
        "|---|---|---|---|".into(),
    ];
    for lp in [Loop::SocketBindClose, Loop::FailingBind] {
        let f = Floor::attach()?;
        let before = f.stats();
        lp.measure();
        let after = f.stats();
        drop(f);
        let runs = after.1 - before.1;
        report.push(format!(
            "| {} | bare probe | {runs} | {:.0} |",
            lp.name(),
            (after.0 - before.0) as f64 / runs.max(1) as f64
        ));
        let t = Tracer::start(bin, &opts.tracer_args)?;
        let pid = t.child.id();
        let before = floor::programs_of(pid);
        lp.measure();
        let ran = floor::since(&before, floor::programs_of(pid));
        t.stop()?;
        for p in ran {
            eprintln!(
                "bench: {} {}: {} runs {} ns",
                lp.name(),
                p.name,
                p.runs,
                p.run_ns
            );
            report.push(format!(
                "| {} | {} | {} | {:.0} |",
                lp.name(),
                p.name,
                p.runs,
                p.run_ns as f64 / p.runs as f64
            ));
        }
    }
    Ok(report)
}

const HOLDER_BASE: u16 = 30000;

/// `n` processes in the caller's namespace: process i listens on
/// HOLDER_BASE + i and also holds a UDP socket. Killed (by pid) on drop.
fn holders(n: u16) -> Vec<Process> {
    (0..n)
        .map(|i| {
            Process::fork(|| {
                let fd = tcp_socket();
                // SAFETY: plain system calls on an fd this child owns.
                unsafe {
                    bind(fd, HOLDER_BASE + i) == 0
                        && libc::listen(fd, 8) == 0
                        && libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) >= 0
                }
            })
        })
        .collect()
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Enrichment latency with 1,000 extra processes holding sockets: from the
/// failure (the event's kernel timestamp) to its diagnosed line reaching a
/// reader, for holders that predate the tracer (found through /proc) and
/// holders it saw bind (named by the kernel's record); then a storm across
/// all their ports while lookups run, which must lose nothing.
fn enrichment(bin: &Path, opts: &BenchArgs) -> Result<Vec<String>> {
    const HOLDERS: u16 = 1000;
    const PROBES: usize = 200;
    let mut report = vec![
        format!("Enrichment, {HOLDERS} extra processes each holding a TCP listener and a UDP socket, {PROBES} failures on distinct held ports 10 ms apart:"),
        String::new(),
        "| holders started | p50 (ms) | p99 (ms) | max (ms) | right holder | lookup timeouts | lost |".into(),
        "|---|---|---|---|---|---|---|".into(),
    ];
    for before in [true, false] {
        let ns = Netns::new("pw-bench");
        let early = if before {
            None
        } else {
            Some(Tracer::spawn(bin, &opts.tracer_args, true)?)
        };
        let holders = ns.run(|| holders(HOLDERS));
        let t = match early {
            Some(t) => t,
            None => Tracer::spawn(bin, &opts.tracer_args, true)?,
        };
        // Let the tracer's start-up walk of /proc finish first.
        std::thread::sleep(Duration::from_millis(500));
        let pids: Vec<u32> = holders.iter().map(|p| p.pid).collect();
        let picks: Vec<u16> = (0..PROBES)
            .map(|k| ((k * 7919) % HOLDERS as usize) as u16)
            .collect();
        ns.run({
            let picks = picks.clone();
            move || {
                let fd = tcp_socket();
                for i in picks {
                    assert_eq!(bind(fd, HOLDER_BASE + i), -1);
                    std::thread::sleep(Duration::from_millis(10));
                }
                unsafe { libc::close(fd) };
            }
        });
        let events = t.events.as_ref().unwrap();
        let (mut lat, mut right) = (Vec::new(), 0);
        for &i in &picks {
            let (at, ev) = events
                .recv_timeout(Duration::from_secs(10))
                .context("an event did not arrive")?;
            let ts = humantime::parse_rfc3339(ev["ts"].as_str().unwrap_or_default())?;
            lat.push(at.duration_since(ts).unwrap_or_default().as_secs_f64() * 1000.0);
            if ev["holders"][0]["pid"] == pids[i as usize] && ev["port"] == HOLDER_BASE + i {
                right += 1;
            }
        }
        // A storm over every held port while lookups run: nothing lost.
        ns.run(|| {
            let fd = tcp_socket();
            for k in 0..50_000u32 {
                assert_eq!(bind(fd, HOLDER_BASE + (k % u32::from(HOLDERS)) as u16), -1);
            }
            unsafe { libc::close(fd) };
        });
        std::thread::sleep(Duration::from_secs(1));
        let s = t.stop()?;
        drop(holders);
        drop(ns);
        let label = if before {
            "before portwatch (found via /proc)"
        } else {
            "after portwatch (kernel record)"
        };
        eprintln!("bench: enrichment {label}: {s}");
        report.push(format!(
            "| {label} | {:.2} | {:.2} | {:.2} | {right}/{PROBES} | {} | {} |",
            percentile(lat.clone(), 0.5),
            percentile(lat.clone(), 0.99),
            percentile(lat, 1.0),
            s["lookup_timeouts"],
            s["lost"]
        ));
    }
    Ok(report)
}
