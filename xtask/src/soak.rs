//! `cargo xtask soak`: weeks of churn compressed into minutes. Short-lived
//! processes, each listening on a port and then failing to bind it again a
//! few times, on thousands of ports, with a storm from a fresh process after
//! every tenth of the run, holders on. Reports portwatch's resident memory
//! every 10%, how full the kernel's maps are, lookups done and timed out,
//! and events lost; checks that a storm after the churn folds like the one
//! at start-up. A benchmark, not a test: it prints a Markdown report.

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use portwatch_test_support::Netns;

use crate::load::Tracer;

/// Options of `cargo xtask soak`.
#[derive(clap::Args)]
pub struct SoakArgs {
    /// Short-lived processes in all.
    #[arg(long, default_value_t = 100_000)]
    processes: u32,
    /// Failing binds each process makes before it exits.
    #[arg(long, default_value_t = 10)]
    failures: u32,
    /// Distinct ports the processes use.
    #[arg(long, default_value_t = 20_000)]
    ports: u16,
    /// Failures in each storm (paced at 100 k/s).
    #[arg(long, default_value_t = 100_000)]
    storm: u64,
    /// Extra arguments for `portwatch watch`.
    #[arg(long, allow_hyphen_values = true)]
    tracer_args: Vec<String>,
    /// Also record: `watch --record` into a fresh directory under /tmp
    /// (removed afterwards; its size is reported).
    #[arg(long)]
    record: bool,
    /// Also serve metrics: `watch --metrics 127.0.0.1:PORT` (a free port),
    /// scraped once every tenth of the run.
    #[arg(long)]
    metrics: bool,
}

/// What a sample of portwatch's process says beyond RSS: threads, and the
/// anonymous memory (the heap) in kB.
fn threads_and_anon(pid: u32) -> (usize, u64) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    let anon = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (threads, anon)
}

/// One GET /metrics on loopback; the body's size in bytes, 0 on failure.
fn scrape(addr: std::net::SocketAddr) -> usize {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut body = Vec::new();
    let _ = s.read_to_end(&mut body);
    body.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| body.len() - at - 4)
}

/// One GET /metrics on loopback: the body ("" on failure).
fn scrape_text(addr: std::net::SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// What the metrics say of the lookups themselves (time from the start of
/// the lookup to its answer, queueing excluded): count, mean, the bucket
/// bounds p50 and p99 fall under, and the results.
fn lookup_cost(text: &str) -> String {
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let (mut count, mut sum, mut buckets, mut results) = (0.0, 0.0, Vec::new(), Vec::new());
    for line in text.lines() {
        if let Some(rest) =
            line.strip_prefix("portwatch_holder_lookup_duration_seconds_bucket{le=\"")
        {
            let le = rest.split('"').next().unwrap_or("");
            if let (Ok(le), Some(n)) = (le.parse::<f64>(), value(line)) {
                buckets.push((le, n));
            } else if let Some(n) = value(line) {
                buckets.push((f64::INFINITY, n));
            }
        } else if line.starts_with("portwatch_holder_lookup_duration_seconds_count") {
            count = value(line).unwrap_or(0.0);
        } else if line.starts_with("portwatch_holder_lookup_duration_seconds_sum") {
            sum = value(line).unwrap_or(0.0);
        } else if line.starts_with("portwatch_holder_lookups_total{") {
            results.push(
                line.trim_start_matches("portwatch_holder_lookups_total")
                    .to_owned(),
            );
        }
    }
    let under = |q: f64| {
        buckets
            .iter()
            .find(|(_, n)| *n >= q * count)
            .map_or("?".into(), |(le, _)| format!("{:.1} ms", le * 1000.0))
    };
    format!(
        "lookups measured by --metrics: {count} (own time, queueing excluded: mean {:.1} ms, p50 ≤ {}, p99 ≤ {}); results {}",
        if count > 0.0 { sum / count * 1000.0 } else { 0.0 },
        under(0.5),
        under(0.99),
        results.join(", ")
    )
}

/// Bytes in the files of `dir` (not recursive: the journal is flat).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

const BASE: u16 = 20000;
const STORM_PORT: u16 = 19000;

fn sockaddr(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Forks a child that runs `f` (plain system calls only) and exits with
/// its status; returns the child's pid.
fn spawn(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child makes plain system calls only, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = f();
        unsafe { libc::_exit(code) };
    }
    pid
}

fn reap(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child by pid.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    status
}

/// One churn process: listen on `port`, fail `n` binds to it, exit.
fn churn_child(port: u16, n: u32) -> i32 {
    let addr = sockaddr(port);
    let len = size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: plain system calls on sockets this child owns.
    unsafe {
        let a = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if libc::bind(a, (&raw const addr).cast(), len) != 0 || libc::listen(a, 1) != 0 {
            return 2;
        }
        let b = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        for _ in 0..n {
            if libc::bind(b, (&raw const addr).cast(), len) != -1 {
                return 3;
            }
        }
    }
    0
}

/// A storm from a fresh process: `n` failing binds paced at 100 k/s.
fn storm_child(n: u64) -> i32 {
    let addr = sockaddr(STORM_PORT);
    let len = size_of::<libc::sockaddr_in>() as u32;
    let start = Instant::now();
    // SAFETY: plain system calls on a socket this child owns.
    unsafe {
        let b = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let mut i = 0;
        while i < n {
            let due = start + Duration::from_nanos(i * 10_000);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            for _ in 0..100 {
                if libc::bind(b, (&raw const addr).cast(), len) != -1 {
                    return 3;
                }
            }
            i += 100;
        }
    }
    0
}

/// (entries, max_entries) of portwatch's fold table (a hash, counted key by
/// key) and holder table (an array, counted by the slots in use).
fn map_fill(pid: u32) -> Vec<(String, u64, u32)> {
    let mut ids = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for entry in dir.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if let Some(id) = text
                .lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
            {
                ids.push(id);
            }
        }
    }
    let mut out = Vec::new();
    for info in aya::maps::loaded_maps().flatten() {
        let name = info.name_as_str().unwrap_or("").to_owned();
        if !ids.contains(&info.id()) || !matches!(name.as_str(), "FOLDS" | "HOLDERS") {
            continue;
        }
        let Ok(fd) = info.fd() else { continue };
        let used = if name == "HOLDERS" {
            // An array (every index is a key): count the slots holding a port.
            count_used_slots(&fd, info.max_entries(), info.value_size())
        } else {
            count_keys(&fd, info.key_size())
        };
        out.push((name, used, info.max_entries()));
    }
    out.sort();
    out
}

/// Keys in a hash map, by BPF_MAP_GET_NEXT_KEY.
fn count_keys(fd: &aya::maps::MapFd, key_size: u32) -> u64 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let raw = fd.as_fd().as_raw_fd();
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0;
    let mut first = true;
    loop {
        // union bpf_attr: map_fd, pad, key, next_key.
        let mut attr = [0u64; 4];
        attr[0] = raw as u64;
        attr[1] = if first { 0 } else { key.as_ptr() as u64 };
        attr[2] = next.as_mut_ptr() as u64;
        // SAFETY: attr points at buffers of the map's key size.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                attr.as_ptr(),
                size_of_val(&attr) as u32,
            )
        };
        if rc != 0 || n > 10_000_000 {
            return n;
        }
        n += 1;
        first = false;
        key.copy_from_slice(&next);
    }
}

/// Slots of the holder table (`portwatch_common::HolderSlot`: a sequence,
/// then the port key at byte 8) that hold a port, by BPF_MAP_LOOKUP_ELEM.
fn count_used_slots(fd: &aya::maps::MapFd, slots: u32, value_size: u32) -> u64 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let raw = fd.as_fd().as_raw_fd();
    let mut value = vec![0u8; value_size as usize];
    let mut n = 0;
    for index in 0..slots {
        // union bpf_attr: map_fd, pad, key, value, flags.
        let attr = [
            raw as u64,
            (&raw const index) as u64,
            value.as_mut_ptr() as u64,
            0,
        ];
        // SAFETY: attr points at a u32 key and a buffer of the value's size.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                attr.as_ptr(),
                size_of_val(&attr) as u32,
            )
        };
        if rc == 0 && value.get(8..16).is_some_and(|k| k.iter().any(|&b| b != 0)) {
            n += 1;
        }
    }
    n
}

/// Events (and folded repeats) a storm process got, from the event stream.
fn storm_events(t: &Tracer, pid: i32) -> (u64, u64, u64) {
    let events = t.events.as_ref().expect("events captured");
    let (mut n, mut folded, mut all) = (0, 0, 0);
    // The reader may still be behind: wait until it has been quiet a while.
    while let Ok((_, v)) = events.recv_timeout(Duration::from_millis(1500)) {
        all += 1;
        if v["pid"] == pid {
            n += 1;
            folded += v["folded"].as_u64().unwrap_or(0);
        }
    }
    (n, folded, all)
}

/// Runs the soak and prints a Markdown report.
pub fn run(opts: &SoakArgs) -> Result<()> {
    let bin = crate::build_release()?;
    let ns = Netns::new("pw-soak");
    let mut extra = vec!["--netns".to_owned(), ns.arg()];
    extra.extend(opts.tracer_args.iter().cloned());
    let record_dir = std::env::temp_dir().join(format!("pw-soak-record-{}", std::process::id()));
    if opts.record {
        // portwatch makes the directory itself (0700); a leftover of an
        // earlier run with this pid would mix two journals.
        let _ = std::fs::remove_dir_all(&record_dir);
        extra.push("--record".into());
        extra.push(record_dir.display().to_string());
    }
    let metrics_addr = if opts.metrics {
        // A free loopback port: the kernel picks it, we let it go, portwatch takes it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        extra.push("--metrics".into());
        extra.push(addr.to_string());
        Some(addr)
    } else {
        None
    };
    let t = Tracer::spawn(&bin, &extra, true)?;
    let pid = t.child.id();
    let holder = ns.run(|| {
        // SAFETY: plain system calls; the fd is handed to an OwnedFd.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let addr = sockaddr(STORM_PORT);
            assert_eq!(
                libc::bind(
                    fd,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in>() as u32
                ),
                0
            );
            assert_eq!(libc::listen(fd, 1), 0);
            OwnedFd::from_raw_fd(fd)
        }
    });
    let storm = opts.storm;
    let first_pid = ns.run(move || {
        let pid = spawn(|| storm_child(storm));
        assert_eq!(reap(pid), 0);
        pid
    });
    let first = storm_events(&t, first_pid);
    eprintln!("soak: first storm: {first:?}");

    let start = Instant::now();
    let mut rows = Vec::new();
    let mut events_seen = first.2;
    let per_tenth = opts.processes / 10;
    let (ports, failures) = (opts.ports, opts.failures);
    let mut last_storm = first;
    for tenth in 1..=10u32 {
        let done = (tenth - 1) * per_tenth;
        let t0 = Instant::now();
        let bad = ns.run(move || {
            let mut bad = 0;
            for i in done..done + per_tenth {
                let port = BASE + (i % u32::from(ports)) as u16;
                let pid = spawn(|| churn_child(port, failures));
                if reap(pid) != 0 {
                    bad += 1;
                }
            }
            bad
        });
        if bad > 0 {
            bail!("{bad} churn processes did not fail as planned");
        }
        let churn_secs = t0.elapsed().as_secs_f64();
        let storm_pid = ns.run(move || {
            let pid = spawn(|| storm_child(storm));
            assert_eq!(reap(pid), 0);
            pid
        });
        let s = storm_events(&t, storm_pid);
        events_seen += s.2;
        last_storm = s;
        let scraped = metrics_addr.map_or(0, scrape);
        let (rss, _) = t.rss_kib();
        let (threads, anon) = threads_and_anon(pid);
        let fill = map_fill(pid);
        let fill = fill
            .iter()
            .map(|(n, e, m)| format!("{n} {e}/{m}"))
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!(
            "soak: {}0%: {:.1} MiB (anon {:.1}, {threads} threads), {fill}, churn {:.0} processes/s, storm {s:?}, metrics {scraped} bytes",
            tenth,
            rss as f64 / 1024.0,
            anon as f64 / 1024.0,
            f64::from(per_tenth) / churn_secs
        );
        rows.push(format!(
            "| {}0% | {} | {:.1} | {:.1} | {threads} | {fill} | {:.0} | {} events, {} folded | {} |",
            tenth,
            tenth * per_tenth,
            rss as f64 / 1024.0,
            anon as f64 / 1024.0,
            f64::from(per_tenth) / churn_secs,
            s.0,
            s.1,
            if opts.metrics { scraped.to_string() } else { "-".into() }
        ));
    }
    let (rss_end, peak) = t.rss_kib();
    let lookups = metrics_addr.map(|a| lookup_cost(&scrape_text(a)));
    let summary = t.stop()?;
    let recorded = opts.record.then(|| dir_bytes(&record_dir));
    if opts.record {
        let _ = std::fs::remove_dir_all(&record_dir);
    }
    drop(holder);
    drop(ns);
    let get = |k: &str| summary[k].as_u64().unwrap_or(0);
    let failures_total =
        u64::from(opts.processes / 10 * 10) * u64::from(opts.failures) + 11 * opts.storm;
    let mut report = vec![
        format!(
            "Soak: {} short-lived processes on {} ports, {} failing binds each, a {}-failure storm (100 k/s) from a fresh process before the churn and after each tenth; holders on{}{}; {:.0} s.",
            opts.processes / 10 * 10,
            opts.ports,
            opts.failures,
            opts.storm,
            if opts.record { ", --record" } else { "" },
            if opts.metrics { ", --metrics (scraped every tenth)" } else { "" },
            start.elapsed().as_secs_f64()
        ),
        String::new(),
        "| done | processes | RSS (MiB) | anonymous (MiB) | threads | kernel maps (entries/max) | churn processes/s | storm after it | /metrics bytes |".into(),
        "|---|---|---|---|---|---|---|---|---|".into(),
    ];
    report.extend(rows);
    report.push(String::new());
    report.push(format!(
        "Failures made: {failures_total}; matched {}, shown {}, folded {} (+{} pending at exit), lost {}, fold table full {}, swept {}; lookups {} timed out of {} events; peak RSS {:.1} MiB, at exit {:.1} MiB. First storm {} events ({} folded), last {} events ({} folded). Events read by the bench: {events_seen}.",
        get("matched"),
        get("shown"),
        get("folded_shown"),
        get("folded_tail"),
        get("lost"),
        get("fold_table_full"),
        get("fold_swept"),
        get("lookup_timeouts"),
        get("shown"),
        peak as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        first.0,
        first.1,
        last_storm.0,
        last_storm.1,
    ));
    if let Some(lookups) = lookups {
        report.push(format!("Lookups: {lookups}."));
    }
    if let Some(bytes) = recorded {
        report.push(format!(
            "Journal (`--record`): {:.1} MiB at exit.",
            bytes as f64 / 1048576.0
        ));
    }
    eprintln!("soak: summary {summary}");
    println!("{}", report.join("\n"));
    Ok(())
}
