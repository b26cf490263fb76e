//! `portwatch report` on journals made here: empty, corrupt, truncated and
//! huge (>= 100 MB, generated into a temp dir and deleted after), with the
//! report's peak memory measured by the kernel (ru_maxrss, through GNU time); and a
//! hostile command line (`<script>`) shown as text in a real browser.
//!
//! The journals are written by this test in the exact schema `watch`
//! writes (the same lines `tests/record.rs` gets from a live capture), so
//! sizes and contents can be chosen; nothing else is mocked.

mod common;

use std::{
    io::Write as _,
    os::unix::fs::DirBuilderExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, UNIX_EPOCH},
};

use common::{bin, Scratch};
use serde_json::Value;

fn ts(ns: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// One failure line as `watch --json`/`--record` writes it.
fn failure(at_ns: u64, pid: u32, holder: u32, port: u16, cmdline: &str) -> String {
    let h = serde_json::json!([{
        "pid": holder, "comm": "nginx", "cmdline": cmdline, "uid": 0, "state": "LISTEN",
        "addr": "127.0.0.1", "port": port, "exited": false, "unit": null, "container": null,
        "pids": [holder, holder + 1], "sockets": 1, "time_left_ms": null, "remote": null,
        "v6only": null, "reuseaddr": true, "reuseport": false, "cross_family": false,
        "seen": "kernel_and_sock_diag"
    }]);
    format!(
        "{{\"ts\":\"{}\",\"pid\":{pid},\"tid\":{pid},\"ppid\":1,\"uid\":0,\"gid\":0,\"comm\":\"nginx\",\"cgroup_id\":1,\"syscall\":\"bind\",\"errno\":\"EADDRINUSE\",\"ret\":-98,\"proto\":\"tcp\",\"family\":\"ipv4\",\"addr\":\"127.0.0.1\",\"port\":{port},\"netns\":4026531840,\"fd\":6,\"ifindex\":null,\"opts\":{{\"reuseaddr\":true,\"reuseport\":false,\"v6only\":false,\"freebind\":false,\"transparent\":false,\"bind_address_no_port\":false}},\"folded\":0,\"source\":\"tracepoint\",\"holders\":{h},\"reason\":\"listener\",\"diagnosis\":\"tcp 127.0.0.1:{port} is taken by another instance of nginx (pid {holder}) listening\",\"fix\":\"Stop the old instance first (kill {holder})\"}}",
        ts(at_ns)
    )
}

fn life(at_ns: u64, event: &str, pid: u32, port: u16) -> String {
    format!(
        "{{\"type\":\"port\",\"ts\":\"{}\",\"event\":\"{event}\",\"port\":{port},\"proto\":\"tcp\",\"family\":\"ipv4\",\"addr\":\"127.0.0.1\",\"netns\":4026531840,\"pid\":{pid},\"comm\":\"nginx\",\"holder_pid\":{pid},\"socket\":{pid}}}",
        ts(at_ns)
    )
}

const T0: u64 = 1_795_000_000_000_000_000;

/// Runs `portwatch report ARGS`; returns (status, stdout, stderr, peak RSS KiB).
fn report(args: &[&str]) -> (i32, String, String, u64) {
    let dir = std::env::temp_dir();
    // Unique per call: tests may run in parallel.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path = dir.join(format!("pw-report-out-{}-{run}", std::process::id()));
    let err_path = out_path.with_extension("err");
    let rss_path = out_path.with_extension("rss");
    // GNU time reports the child's peak RSS (ru_maxrss) from a small
    // process of its own: measuring from this test process would count
    // its own pages, shared with the child between fork and exec.
    let status = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_path)
        .arg(bin())
        .arg("report")
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .expect("GNU time is needed (cargo xtask test installs Debian's package)");
    let rss = std::fs::read_to_string(&rss_path).unwrap();
    let _ = std::fs::remove_file(&rss_path);
    let rss: u64 = rss
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("GNU time said {rss:?}"));
    let code = status.code().unwrap_or(-1);
    let out = std::fs::read_to_string(&out_path).unwrap();
    let err = std::fs::read_to_string(&err_path).unwrap();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    (code, out, err, rss)
}

#[test]
fn empty_journal_is_a_clear_empty_report() {
    let s = Scratch::new("empty");
    let f = s.0.join("empty.ndjson");
    std::fs::write(&f, "").unwrap();
    let (code, out, err, _) = report(&[f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("read 1 file(s), 0 line(s)"), "{out}");
    assert!(out.contains("nothing recorded"), "{out}");
    // A directory without journals, a missing path: one line, status 1.
    let (code, _, err, _) = report(&[s.0.join("nope").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.starts_with("portwatch: cannot read "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, err, _) = report(&[s.0.to_str().unwrap(), "--since", "yesterday-ish"]);
    assert_eq!(code, 2, "{err}");
    // Times that exclude each other are a bad command line too.
    let (code, _, err, _) = report(&[s.0.to_str().unwrap(), "--since", "1h", "--until", "2h"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err, "portwatch: --since is after --until\n");
}

#[test]
fn corrupt_and_truncated_lines_are_skipped_and_counted() {
    let s = Scratch::new("corrupt");
    let dir = s.0.join("j");
    std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    let port = 8080;
    let mut a = String::new();
    a += &failure(T0, 912, 808, port, "nginx: master process");
    a += "\n{\"ts\":\"garbage\"\n\u{0}\u{1}binary\n";
    a += &failure(T0 + 500_000_000, 912, 808, port, "nginx: master process");
    a += "\n[1,2,3]\n";
    std::fs::write(dir.join("portwatch-0000000001.ndjson"), a).unwrap();
    let mut b = String::new();
    b += &life(T0 + 1_700_000_000, "closed", 808, port);
    b += "\n";
    b += &life(T0 + 2_000_000_000, "listen", 912, port);
    b += "\n";
    // A crash mid-line.
    b += &failure(T0 + 3_000_000_000, 913, 912, port, "x")[..150];
    std::fs::write(dir.join("portwatch-0000000002.ndjson"), b).unwrap();
    let (code, out, err, _) = report(&[dir.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("skipped 4 unreadable line(s): 3 corrupt, 1 truncated"),
        "{err}"
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["input"]["files"], 2);
    assert_eq!(v["input"]["events"], 2);
    assert_eq!(v["input"]["port_lines"], 2);
    assert_eq!(v["input"]["corrupt"], 3);
    assert_eq!(v["input"]["truncated"], 1);
    let pat = &v["ports"]["8080"]["patterns"][0];
    assert_eq!(pat["kind"], "overlap", "{v:#}");
    assert_eq!(pat["pids"], serde_json::json!([808, 912]));
    assert_eq!(pat["gap_ms"].as_f64().unwrap().round(), 1700.0);
    assert!(
        pat["text"]
            .as_str()
            .unwrap()
            .contains("listened at +300 ms after the release"),
        "{pat}"
    );
    // --since/--until/--port filter.
    let since = ts(T0 + 1_000_000_000);
    let (_, out, _, _) = report(&[dir.to_str().unwrap(), "--json", "--since", &since]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["failures"], 0);
    assert_eq!(v["input"]["filtered"], 2);
    let (_, out, _, _) = report(&[dir.to_str().unwrap(), "--json", "--port", "9999"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ports"], serde_json::json!({}));
}

/// Writes a journal of about `bytes` in `dir`: restart races on 50 ports,
/// repeated by 5,000 pids, with port life lines between.
fn big_journal(dir: &Path, bytes: u64) -> u64 {
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("big.ndjson")).unwrap());
    let (mut written, mut lines, mut i) = (0u64, 0u64, 0u64);
    while written < bytes {
        let port = 8000 + (i % 50) as u16;
        let pid = 10_000 + (i % 5000) as u32;
        let line = if i % 10 == 9 {
            life(T0 + i * 1_000_000, "closed", pid - 1, port)
        } else {
            failure(
                T0 + i * 1_000_000,
                pid,
                pid - 1,
                port,
                "nginx: master process /usr/sbin/nginx",
            )
        };
        f.write_all(line.as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
        written += line.len() as u64 + 1;
        lines += 1;
        i += 1;
    }
    f.flush().unwrap();
    lines
}

/// Memory does not grow with the journal: once the per-port caps are
/// reached (as in the 25 MB journal), a 100 MB journal is read in the same
/// peak RSS, give or take.
#[test]
fn huge_journal_in_bounded_memory() {
    let s = Scratch::new("huge");
    let small = s.0.join("small");
    let huge = s.0.join("huge");
    for d in [&small, &huge] {
        std::fs::DirBuilder::new().mode(0o700).create(d).unwrap();
    }
    let small_lines = big_journal(&small, 25 << 20);
    let huge_lines = big_journal(&huge, 100 << 20);
    let (code, out, err, rss_small) = report(&[small.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["input"]["lines"], small_lines);
    let started = std::time::Instant::now();
    let (code, out, err, rss_huge) = report(&[huge.to_str().unwrap(), "--json"]);
    let took = started.elapsed();
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["input"]["lines"], huge_lines);
    assert_eq!(v["input"]["corrupt"], 0);
    assert!(v["input"]["bytes"].as_u64().unwrap() >= 100 << 20);
    assert_eq!(v["ports"].as_object().unwrap().len(), 50);
    eprintln!(
        "report: {small_lines} lines in {rss_small} KiB peak; {huge_lines} lines in {rss_huge} KiB peak, {took:?}"
    );
    assert!(
        rss_huge < rss_small + 8 * 1024,
        "peak RSS grew with the journal: {rss_small} KiB for 25 MB, {rss_huge} KiB for 100 MB"
    );
    assert!(rss_huge < 128 * 1024, "{rss_huge} KiB");
}

/// Every journal string is escaped in the HTML: a `<script>` command line
/// is text in a real browser, not a script.
#[test]
fn html_escapes_hostile_strings() {
    let s = Scratch::new("html");
    let f = s.0.join("j.ndjson");
    let evil = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>";
    let mut j = failure(T0, 912, 808, 8080, evil);
    j.push('\n');
    j += &failure(T0 + 1_000_000, 912, 808, 8080, evil);
    j.push('\n');
    std::fs::write(&f, j).unwrap();
    let page = s.0.join("r.html");
    let (code, _, err, _) = report(&[f.to_str().unwrap(), "--html", page.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("&lt;script&gt;document.title="), "{html}");
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromium is needed (cargo xtask test installs Debian's package)");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", s.0.join("profile").display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let dom = String::from_utf8(out.stdout).unwrap();
    assert!(
        dom.contains("<title>portwatch report</title>"),
        "the script ran: {dom}"
    );
    assert!(!dom.contains("<script"), "{dom}");
    assert!(dom.contains("&lt;script&gt;document.title"), "{dom}");
    assert!(dom.contains("pid 808"), "{dom}");
}

/// `report --help` teaches; `--max-size`/`--max-files` need `--record`.
#[test]
fn help_and_usage_errors() {
    let out = Command::new(bin())
        .args(["report", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in ["EXAMPLES:", "EXIT STATUS:", "--since", "--html", "overlap"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let out = Command::new(bin()).args(["report"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin())
        .args(["watch", "--max-files", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("portwatch: ") && err.contains("--record"),
        "{err}"
    );
    let out = Command::new(bin())
        .args(["watch", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("--record"));
}
