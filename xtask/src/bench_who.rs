//! `cargo xtask bench`'s `who` section: `portwatch who P` against the tools
//! it replaces, side by side in one run, on a namespace where 1,000 extra
//! processes hold 5,000 TCP sockets, then one where 10,000 hold 50,000 (a
//! busy Kubernetes node's count). Every tool must name the same holder.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Result};
use portwatch_test_support::{Netns, Process};

use crate::{load::median, setup};

/// (processes, listeners each): the two sizes measured.
const SIZES: [(u16, u16); 2] = [(1000, 5), (10_000, 5)];
/// The first port held: 50,000 listeners take 10000..=59999.
const BASE: u16 = 10000;

/// Binds and listens on 127.0.0.1:`port` (in a forked child).
pub(crate) fn listener(port: u16) -> bool {
    // SAFETY: plain system calls on fds this (forked) child owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        fd >= 0
            && libc::bind(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            ) == 0
            && libc::listen(fd, 1) == 0
    }
}

/// CPU time (user + system, ms) of every child reaped so far.
fn children_cpu_ms() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(u.ru_utime) + ms(u.ru_stime)
}

/// Runs the comparison at each size; returns the lines for BENCHMARKS.md.
/// `baseline`: another portwatch build whose `who` runs beside this one's.
pub fn who_speed(bin: &Path, baseline: Option<&Path>, rounds: usize) -> Result<Vec<String>> {
    setup::ensure_packages(&[("lsof", "lsof"), ("fuser", "psmisc"), ("ss", "iproute2")])?;
    let mut report = Vec::new();
    for (processes, sockets) in SIZES {
        if !report.is_empty() {
            report.push(String::new());
        }
        report.extend(one_size(bin, baseline, rounds, processes, sockets)?);
    }
    Ok(report)
}

/// `processes` extra processes, each holding `sockets` listeners; the port
/// asked about is held by the middle one (its third socket). A tool that is
/// not installed (the VM's busybox has no `lsof`) is left out.
pub(crate) fn one_size(
    bin: &Path,
    baseline: Option<&Path>,
    rounds: usize,
    processes: u16,
    sockets: u16,
) -> Result<Vec<String>> {
    let ns = Netns::new("pw-bench-who");
    let started = Instant::now();
    let holders: Vec<Process> = ns.run(move || {
        (0..processes)
            .map(|i| {
                Process::fork(move || {
                    (0..sockets).all(|k| listener(BASE + (i * sockets + k) % 50_000))
                })
            })
            .collect()
    });
    eprintln!(
        "bench: who: {processes} processes holding {} listeners started in {:.1} s",
        u32::from(processes) * u32::from(sockets),
        started.elapsed().as_secs_f64()
    );
    let middle = processes / 2;
    let expected = holders[usize::from(middle)].pid;
    let port = BASE + middle * sockets + 2;
    let p = port.to_string();
    let sport = format!("sport = :{port}");
    let fuser_arg = format!("{port}/tcp");
    let lsof_arg = format!("-iTCP:{port}");
    let bin = bin.to_owned();
    let mut tools: Vec<(&str, Vec<String>)> = vec![
        (
            "ss -Htanp 'sport = :P'",
            vec!["ss".into(), "-Htanp".into(), sport.clone()],
        ),
        ("fuser P/tcp", vec!["fuser".into(), fuser_arg]),
        (
            "lsof -nP -iTCP:P",
            vec!["lsof".into(), "-nP".into(), lsof_arg],
        ),
        (
            "portwatch who P",
            vec![bin.display().to_string(), "who".into(), p.clone()],
        ),
        (
            "ss -Htan (no -p, no holders)",
            vec!["ss".into(), "-Htan".into(), sport],
        ),
        // The walk of /proc beside the iterator `auto` picks where it loads.
        (
            "portwatch who P --lookup walk",
            vec![
                bin.display().to_string(),
                "who".into(),
                p.clone(),
                "--lookup".into(),
                "walk".into(),
            ],
        ),
    ];
    tools.retain(|(_, argv)| installed(&argv[0]));
    if let Some(base) = baseline {
        tools.push((
            "portwatch who P (baseline build)",
            vec![base.display().to_string(), "who".into(), p],
        ));
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    // CPU time (user + system) of each run: what the tool did, apart from
    // waiting for a CPU on a shared machine.
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    for _ in 0..rounds.max(3) {
        for (i, (name, argv)) in tools.iter().enumerate() {
            let argv = argv.clone();
            let (ms, cpu_ms, out) = ns.run(move || {
                let c = children_cpu_ms();
                let t = Instant::now();
                let out = Command::new(&argv[0]).args(&argv[1..]).output();
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                (ms, children_cpu_ms() - c, out)
            });
            let out = out?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            // Same answer from every tool that names holders.
            if !name.contains("no -p") && !text.contains(&expected.to_string()) {
                bail!("{name} did not name pid {expected}: {text}");
            }
            times[i].push(ms);
            cpu[i].push(cpu_ms);
        }
    }
    drop(holders);
    let at = tools
        .iter()
        .position(|(name, _)| *name == "portwatch who P")
        .unwrap_or_default();
    let who = median(times[at].clone());
    let who_cpu = median(cpu[at].clone());
    let mut report = vec![
        format!(
            "`who`, {processes} extra processes holding {} TCP listeners in one network namespace, {} rounds, the same holder (pid) named by each:",
            u32::from(processes) * u32::from(sockets),
            rounds.max(3)
        ),
        String::new(),
        "| tool | median (ms) | min (ms) | / portwatch who | CPU, user + system, median (ms) | CPU / portwatch who |".into(),
        "|---|---|---|---|---|---|".into(),
    ];
    for (i, (name, _)) in tools.iter().enumerate() {
        let med = median(times[i].clone());
        let min = times[i].iter().copied().fold(f64::MAX, f64::min);
        let c = median(cpu[i].clone());
        report.push(format!(
            "| `{name}` | {med:.1} | {min:.1} | {:.2}x | {c:.1} | {:.2}x |",
            med / who,
            c / who_cpu
        ));
        eprintln!("bench: who ({processes} processes): {name} {med:.1} ms");
    }
    Ok(report)
}

/// Whether `program` (a path, or a name looked up on PATH) exists.
fn installed(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).exists()))
}
