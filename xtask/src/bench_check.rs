//! `cargo xtask bench --only check`: `portwatch check -f` on a 50-service
//! compose file with 10 taken ports, against one `portwatch who` of a
//! taken port, side by side in one run, on a namespace where 1,000 extra
//! processes hold 5,000 TCP sockets (issue 31's target: at most 1.5x).
//! Both must name the same holders.

use std::{fmt::Write as _, path::Path, process::Command, time::Instant};

use anyhow::{bail, Result};
use portwatch_test_support::{Netns, Process};

use crate::{bench_who::listener, load::median};

const PROCESSES: u16 = 1000;
const SOCKETS: u16 = 5;
const BASE: u16 = 30000;
/// Compose services, each publishing one port.
const SERVICES: u16 = 50;
/// Of which this many are held by the processes above.
const TAKEN: u16 = 10;
/// The services' ports: free ones start here, clear of BASE's range.
const FREE_BASE: u16 = 40000;

/// The port of service `i`: the first TAKEN are held (spread over the
/// processes), the others free.
fn service_port(i: u16) -> u16 {
    if i < TAKEN {
        BASE + i * 100 * SOCKETS + 1
    } else {
        FREE_BASE + i
    }
}

/// Runs the comparison; returns the lines for BENCHMARKS.md.
pub fn check_speed(bin: &Path, rounds: usize) -> Result<Vec<String>> {
    let dir = tempfile_dir()?;
    let mut compose = String::from("services:\n");
    for i in 0..SERVICES {
        let _ = write!(
            compose,
            "  svc{i}:\n    image: busybox\n    ports:\n      - \"{}:80\"\n",
            service_port(i)
        );
    }
    let file = dir.join("compose.yml");
    std::fs::write(&file, compose)?;
    let ns = Netns::new("pw-bench-check");
    let holders: Vec<Process> = ns.run(|| {
        (0..PROCESSES)
            .map(|i| Process::fork(move || (0..SOCKETS).all(|k| listener(BASE + i * SOCKETS + k))))
            .collect()
    });
    let taken: Vec<u32> = (0..TAKEN)
        .map(|i| holders[usize::from(i) * 100].pid)
        .collect();
    let bin = bin.display().to_string();
    let who_port = service_port(0).to_string();
    let runs: Vec<(&str, Vec<String>)> = vec![
        (
            "portwatch who P (one taken port)",
            vec![bin.clone(), "who".into(), who_port],
        ),
        (
            "portwatch check -f (50 services, 10 taken)",
            vec![
                bin.clone(),
                "check".into(),
                "-f".into(),
                file.display().to_string(),
                "-p".into(),
                "bench".into(),
            ],
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    for _ in 0..rounds.max(3) {
        for (i, (name, argv)) in runs.iter().enumerate() {
            let argv = argv.clone();
            let (ms, out) = ns.run(move || {
                let t = Instant::now();
                let out = Command::new(&argv[0]).args(&argv[1..]).output();
                (t.elapsed().as_secs_f64() * 1000.0, out)
            });
            let out = out?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            let want: &[u32] = if i == 0 { &taken[..1] } else { &taken };
            if let Some(pid) = want.iter().find(|p| !text.contains(&format!("pid {p}"))) {
                bail!("{name} did not name pid {pid}: {text}");
            }
            times[i].push(ms);
        }
    }
    drop(holders);
    let _ = std::fs::remove_dir_all(&dir);
    let who = median(times[0].clone());
    let mut report = vec![
        format!(
            "`check -f`, a compose file of {SERVICES} services with {TAKEN} ports taken, against one `who` of a taken port; {PROCESSES} extra processes holding {} TCP listeners in one network namespace, {} rounds, every holder named by pid:",
            u32::from(PROCESSES) * u32::from(SOCKETS),
            rounds.max(3)
        ),
        String::new(),
        "| command | median (ms) | min (ms) | / portwatch who |".into(),
        "|---|---|---|---|".into(),
    ];
    for (i, (name, _)) in runs.iter().enumerate() {
        let med = median(times[i].clone());
        let min = times[i].iter().copied().fold(f64::MAX, f64::min);
        report.push(format!(
            "| `{name}` | {med:.1} | {min:.1} | {:.2}x |",
            med / who
        ));
        eprintln!("bench: check: {name} {med:.1} ms");
    }
    Ok(report)
}

/// A private directory for the compose file.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("pw-bench-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
