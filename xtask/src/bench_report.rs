//! `cargo xtask bench`, post-mortem section: `portwatch report` throughput
//! and memory on generated journals (100,000 and 1,000,000 events), and the
//! cost of `watch --record` (storms with it off and on, side by side).

use std::{
    io::Write as _,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};

use crate::load::{storm, Tracer};

/// A private temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("pw-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `events` journal lines in `watch --record`'s schema into rotated
/// 64 MiB files: restart races on 50 ports by 5,000 pids, one port life
/// line per nine failures. Returns the bytes written.
fn journal(dir: &Path, events: u64) -> Result<u64> {
    const T0: u64 = 1_795_000_000_000_000_000;
    let (mut seq, mut size, mut total) = (1u32, 0u64, 0u64);
    let open = |seq: u32| -> Result<std::io::BufWriter<std::fs::File>> {
        Ok(std::io::BufWriter::new(std::fs::File::create(
            dir.join(format!("portwatch-{seq:010}.ndjson")),
        )?))
    };
    let mut f = open(seq)?;
    for i in 0..events {
        let ts =
            humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(T0 + i * 1_000_000));
        let port = 8000 + i % 50;
        let pid = 10_000 + i % 5000;
        let holder = pid - 1;
        let line = if i % 10 == 9 {
            format!(
                "{{\"type\":\"port\",\"ts\":\"{ts}\",\"event\":\"closed\",\"port\":{port},\"proto\":\"tcp\",\"family\":\"ipv4\",\"addr\":\"127.0.0.1\",\"netns\":4026531840,\"pid\":{holder},\"comm\":\"nginx\",\"holder_pid\":{holder},\"socket\":{holder}}}\n"
            )
        } else {
            format!(
                "{{\"ts\":\"{ts}\",\"pid\":{pid},\"tid\":{pid},\"ppid\":1,\"uid\":0,\"gid\":0,\"comm\":\"nginx\",\"cgroup_id\":1,\"syscall\":\"bind\",\"errno\":\"EADDRINUSE\",\"ret\":-98,\"proto\":\"tcp\",\"family\":\"ipv4\",\"addr\":\"127.0.0.1\",\"port\":{port},\"netns\":4026531840,\"fd\":6,\"ifindex\":null,\"opts\":{{\"reuseaddr\":true,\"reuseport\":false,\"v6only\":false,\"freebind\":false,\"transparent\":false,\"bind_address_no_port\":false}},\"folded\":0,\"source\":\"tracepoint\",\"holders\":[{{\"pid\":{holder},\"comm\":\"nginx\",\"cmdline\":\"nginx: master process /usr/sbin/nginx\",\"uid\":0,\"state\":\"LISTEN\",\"addr\":\"127.0.0.1\",\"port\":{port},\"exited\":false,\"unit\":null,\"container\":null,\"pids\":[{holder},{pid}],\"sockets\":1,\"time_left_ms\":null,\"remote\":null,\"v6only\":null,\"reuseaddr\":true,\"reuseport\":false,\"cross_family\":false,\"seen\":\"kernel_and_sock_diag\"}}],\"reason\":\"listener\",\"diagnosis\":\"tcp 127.0.0.1:{port} is taken by another instance of nginx (pid {holder}) listening\",\"fix\":\"Stop the old instance first (kill {holder})\"}}\n"
            )
        };
        if size + line.len() as u64 > 64 << 20 {
            f.flush()?;
            seq += 1;
            size = 0;
            f = open(seq)?;
        }
        f.write_all(line.as_bytes())?;
        size += line.len() as u64;
        total += line.len() as u64;
    }
    f.flush()?;
    Ok(total)
}

/// Runs `portwatch report --json DIR` under GNU time: (seconds, peak KiB).
fn timed_report(bin: &Path, dir: &Path) -> Result<(f64, u64)> {
    let stats = dir.with_extension("time");
    let status = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&stats)
        .arg(bin)
        .args(["report", "--json"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .context("GNU time (Debian package `time`)")?;
    if !status.success() {
        bail!("portwatch report failed: {status}");
    }
    let text = std::fs::read_to_string(&stats)?;
    let _ = std::fs::remove_file(&stats);
    let mut it = text.split_whitespace();
    let secs: f64 = it.next().context("time output")?.parse()?;
    let kib: u64 = it.next().context("time output")?.parse()?;
    Ok((secs, kib))
}

/// Event lines (not port life or notice lines) in a journal directory.
fn journalled_events(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .map(|b| {
            b.split(|&c| c == b'\n')
                // Events only: not port life lines, nor the fold tail.
                .filter(|l| !l.is_empty() && !l.starts_with(b"{\"type\":"))
                .count() as u64
        })
        .sum()
}

/// The section's Markdown lines.
pub fn run(bin: &Path, storm_secs: u64, tracer_args: &[String]) -> Result<Vec<String>> {
    let mut out = vec![
        String::new(),
        "Post-mortem: `portwatch report --json` on generated journals (64 MiB files), GNU time:"
            .into(),
        String::new(),
        "| journal | events | size | seconds | events/s | MB/s | peak RSS |".into(),
        "|---|---|---|---|---|---|---|".into(),
    ];
    for events in [100_000u64, 1_000_000] {
        let scratch = Scratch::new("journal")?;
        let bytes = journal(&scratch.0, events)?;
        let (secs, kib) = timed_report(bin, &scratch.0)?;
        eprintln!("bench: report {events} events: {secs} s, {kib} KiB");
        out.push(format!(
            "| {events} events | {events} | {:.0} MB | {secs:.2} | {:.0} | {:.0} | {:.1} MiB |",
            bytes as f64 / 1e6,
            events as f64 / secs.max(0.001),
            bytes as f64 / 1e6 / secs.max(0.001),
            kib as f64 / 1024.0
        ));
    }
    out.push(String::new());
    out.push(format!(
        "Recording cost: failing binds for {storm_secs} s, `watch --json` (stdout to /dev/null) without and with `--record DIR` (tmp):"
    ));
    out.push(String::new());
    out.push("| storm | --record | failures | failures/s | events shown | folded | lost | journalled | journal loss |".into());
    out.push("|---|---|---|---|---|---|---|---|---|".into());
    let cases: [(&str, &[&str]); 2] = [
        ("full speed, default folding", &[]),
        ("full speed, --fold-window 0", &["--fold-window", "0"]),
    ];
    for (name, args) in cases {
        for record in [false, true] {
            let scratch = Scratch::new("record")?;
            let dir = scratch.0.join("j");
            let mut extra: Vec<String> = tracer_args.to_vec();
            extra.extend(args.iter().map(|s| s.to_string()));
            if record {
                extra.extend([
                    "--record".into(),
                    dir.display().to_string(),
                    "--max-files".into(),
                    "1000".into(),
                ]);
            }
            let t = Tracer::start(bin, &extra)?;
            let n = storm(storm_secs, None);
            std::thread::sleep(Duration::from_millis(500));
            let s = t.stop()?;
            let get = |k: &str| s[k].as_u64().unwrap_or(0);
            let folded = get("folded_shown") + get("folded_tail");
            let (journalled, loss) = if record {
                let j = journalled_events(&dir);
                (j.to_string(), (get("shown") as i64 - j as i64).to_string())
            } else {
                ("-".into(), "-".into())
            };
            eprintln!("bench: {name} record={record}: {s}");
            out.push(format!(
                "| {name} | {} | {n} | {:.0} | {} | {folded} | {} | {journalled} | {loss} |",
                if record { "on" } else { "off" },
                n as f64 / storm_secs as f64,
                get("shown"),
                get("lost"),
            ));
        }
    }
    Ok(out)
}
