//! `cargo xtask bench`'s `who` section: `portwatch who P` against the tools
//! it replaces, side by side in one run, on a namespace where 1,000 extra
//! processes hold 5,000 TCP sockets. Every tool must name the same holder.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Result};
use portwatch_test_support::{Netns, Process};

use crate::{load::median, setup};

const PROCESSES: u16 = 1000;
const SOCKETS: u16 = 5;
const BASE: u16 = 30000;

/// The port asked about: held by the 501st process, its third socket.
const PORT: u16 = BASE + 500 * SOCKETS + 2;

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

/// Runs the comparison; returns the lines for BENCHMARKS.md.
pub fn who_speed(bin: &Path, rounds: usize) -> Result<Vec<String>> {
    setup::ensure_packages(&[("lsof", "lsof"), ("fuser", "psmisc"), ("ss", "iproute2")])?;
    let ns = Netns::new("pw-bench-who");
    let holders: Vec<Process> = ns.run(|| {
        (0..PROCESSES)
            .map(|i| Process::fork(move || (0..SOCKETS).all(|k| listener(BASE + i * SOCKETS + k))))
            .collect()
    });
    let expected = holders[500].pid;
    let p = PORT.to_string();
    let sport = format!("sport = :{PORT}");
    let fuser_arg = format!("{PORT}/tcp");
    let lsof_arg = format!("-iTCP:{PORT}");
    let bin = bin.to_owned();
    let tools: Vec<(&str, Vec<String>)> = vec![
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
            vec![bin.display().to_string(), "who".into(), p],
        ),
        (
            "ss -Htan (no -p, no holders)",
            vec!["ss".into(), "-Htan".into(), sport],
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    for _ in 0..rounds.max(3) {
        for (i, (name, argv)) in tools.iter().enumerate() {
            let argv = argv.clone();
            let (ms, out) = ns.run(move || {
                let t = Instant::now();
                let out = Command::new(&argv[0]).args(&argv[1..]).output();
                (t.elapsed().as_secs_f64() * 1000.0, out)
            });
            let out = out?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            // Same answer from every tool that names holders.
            if !name.contains("no -p") && !text.contains(&expected.to_string()) {
                bail!("{name} did not name pid {expected}: {text}");
            }
            times[i].push(ms);
        }
    }
    drop(holders);
    let who = median(times[3].clone());
    let mut report = vec![
        format!(
            "`who`, {PROCESSES} extra processes holding {} TCP listeners in one network namespace, {} rounds, the same holder (pid) named by each:",
            u32::from(PROCESSES) * u32::from(SOCKETS),
            rounds.max(3)
        ),
        String::new(),
        "| tool | median (ms) | min (ms) | / portwatch who |".into(),
        "|---|---|---|---|".into(),
    ];
    for (i, (name, _)) in tools.iter().enumerate() {
        let med = median(times[i].clone());
        let min = times[i].iter().copied().fold(f64::MAX, f64::min);
        report.push(format!(
            "| `{name}` | {med:.1} | {min:.1} | {:.2}x |",
            med / who
        ));
        eprintln!("bench: who: {name} {med:.1} ms");
    }
    Ok(report)
}
