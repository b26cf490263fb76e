//! `watch --record` and `report` end to end, with the real kernel: a real
//! nginx restart race read back in text, JSON and HTML (rendered by headless
//! Chromium), a recorder killed mid-storm, and a full disk (a real tmpfs).

mod common;

use std::{
    net::TcpStream,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant, SystemTime},
};

use common::*;
use serde_json::Value;

/// Runs `portwatch report ARGS`.
fn report(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("report")
        .args(args)
        .output()
        .expect("run portwatch report")
}

fn journal_lines(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn nginx_config(dir: &Path, name: &str, port: u16) -> PathBuf {
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process on; worker_processes 1;\n\
         pid {d}/{name}.pid; error_log stderr notice;\n\
         events {{ worker_connections 16; }}\n\
         http {{ access_log off;\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
           uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           server {{ listen 127.0.0.1:{port}; return 204; }} }}\n"
    );
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, conf).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn nginx(conf: &Path) -> Child {
    Command::new("/usr/sbin/nginx")
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg("stderr")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is needed (cargo xtask test installs Debian's package)")
}

/// SIGQUIT (nginx's graceful stop) to a child we started, then wait.
fn quit(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGQUIT,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromium is needed (cargo xtask test installs Debian's package)")
}

/// Headless Chromium on `page`: (DOM as rendered, screenshot bytes).
fn render(page: &Path, scratch: &Path, tag: &str) -> (String, Vec<u8>) {
    let profile = scratch.join(format!("chromium-{tag}"));
    let shot = scratch.join(format!("{tag}.png"));
    let url = format!("file://{}", page.display());
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1000,900",
    ];
    let run = |extra: &str| {
        let out = Command::new(chromium())
            .args(flags)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(extra)
            .arg(&url)
            .stdin(Stdio::null())
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium {extra}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let dom = String::from_utf8(run("--dump-dom").stdout).unwrap();
    run(&format!("--screenshot={}", shot.display()));
    (
        dom,
        std::fs::read(&shot).expect("chromium wrote no screenshot"),
    )
}

/// The restart race of a real nginx: the old master still listens when the
/// new one starts; the new one's bind() fails and it retries every 500 ms;
/// then the old one stops and a retry succeeds. The report must name both
/// pids, the overlap and the release time, in text, JSON and HTML.
#[test]
fn nginx_restart_race_is_reported() {
    let ns = Netns::new("pw-rec-nginx");
    let scratch = Scratch::new("nginx");
    let journal = scratch.0.join("journal");
    let port = port();
    let (old_conf, new_conf) = (
        nginx_config(&scratch.0, "old", port),
        nginx_config(&scratch.0, "new", port),
    );
    let tracer = Tracer::start(&["--netns", &ns.arg(), "--record", journal.to_str().unwrap()]);
    let mut old = ns.run(move || {
        let old = nginx(&old_conf);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(v4(port)).is_err() {
            assert!(Instant::now() < deadline, "old nginx never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        old
    });
    let mut new = ns.run(move || nginx(&new_conf));
    let (old_pid, new_pid) = (old.id(), new.id());
    let ev = tracer.event();
    assert_eq!(ev["pid"], new_pid, "{ev}");
    // Let it retry twice more, then stop the old one: a retry succeeds.
    std::thread::sleep(Duration::from_millis(1100));
    quit(&mut old);
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(new.try_wait().unwrap().is_none(), "new nginx gave up");
        let up = ns.run(move || TcpStream::connect(v4(port)).is_ok());
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "new nginx never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    quit(&mut new);
    let (status, _, notices) = tracer.stop();
    assert!(status.success(), "{notices:?}");
    let recorded = notices
        .iter()
        .find(|n| n["type"] == "recorded")
        .expect("recorded notice");
    assert_eq!(recorded["lost_queue"], 0, "{recorded}");
    assert_eq!(recorded["lost_write"], 0, "{recorded}");

    // The journal: 0700 directory, 0600 files, every line JSON.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&journal), 0o700);
    let lines = journal_lines(&journal);
    for f in std::fs::read_dir(&journal).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600);
    }
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let closed = parsed
        .iter()
        .find(|v| v["type"] == "port" && v["event"] == "closed" && v["port"] == port)
        .unwrap_or_else(|| panic!("no closed line in {lines:#?}"));
    assert_eq!(closed["holder_pid"], old_pid, "{closed}");
    let relisten = parsed
        .iter()
        .find(|v| v["type"] == "port" && v["event"] == "listen" && v["pid"] == new_pid);
    assert!(
        relisten.is_some(),
        "no listen line of the new nginx: {lines:#?}"
    );
    let released: SystemTime = humantime::parse_rfc3339(closed["ts"].as_str().unwrap()).unwrap();
    let released_text = humantime::format_rfc3339_millis(released).to_string();

    // Text.
    let dir = journal.to_str().unwrap();
    let out = report(&[dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("{text}");
    let overlap = text
        .lines()
        .find(|l| l.contains("=> overlap"))
        .unwrap_or_else(|| panic!("no overlap in:\n{text}"));
    assert!(
        overlap.contains(&format!("new instance pid {new_pid} (nginx)")),
        "{overlap}"
    );
    assert!(
        overlap.contains(&format!("old instance pid {old_pid} (nginx)")),
        "{overlap}"
    );
    assert!(
        overlap.contains(&format!("closed its listener at {released_text}")),
        "{overlap}"
    );
    assert!(overlap.contains("its retry succeeded"), "{overlap}");
    assert!(text.contains(&format!("PORT {port}:")), "{text}");
    assert!(text.contains("FAILURES BY REASON"), "{text}");

    // JSON.
    let out = report(&[dir, "--json", "--port", &port.to_string()]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let story = &v["ports"][port.to_string()];
    let pat = story["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "overlap")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(pat["pids"], serde_json::json!([old_pid, new_pid]), "{pat}");
    assert_eq!(pat["released"], closed["ts"], "{pat}");
    assert!(pat["gap_ms"].as_f64().unwrap() > 900.0, "{pat}");
    assert_eq!(v["input"]["corrupt"], 0);
    let holders: Vec<u64> = story["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        holders,
        vec![u64::from(old_pid), u64::from(new_pid)],
        "{story:#}"
    );

    // HTML, rendered by a real browser.
    let page = scratch.0.join("report.html");
    let out = report(&[dir, "--html", page.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(mode(&page), 0o600);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<script"), "no scripts");
    assert!(!html.contains("http://") || html.contains("http://www.w3.org/2000/svg"));
    let (dom, shot) = render(&page, &scratch.0, "report");
    for needle in [
        format!("Port {port}"),
        format!("pid {old_pid} nginx listening"),
        format!("pid {new_pid} nginx"),
        format!("closed its listener at {released_text}"),
    ] {
        assert!(dom.contains(&needle), "DOM lacks {needle:?}:\n{dom}");
    }
    let blank = scratch.0.join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let (_, blank_shot) = render(&blank, &scratch.0, "blank");
    assert!(shot.starts_with(b"\x89PNG"), "not a PNG");
    // A page of text, bars and tables compresses far worse than a blank one.
    assert!(
        shot.len() > 4 * blank_shot.len(),
        "screenshot looks blank: {} bytes vs {} for a blank page",
        shot.len(),
        blank_shot.len()
    );
}

/// Failing binds from this thread, as fast as it can, for `secs`.
fn storm(port: u16, secs: f64) -> u64 {
    let _holder = {
        let s = socket(false, false);
        bind(&s, v4(port)).unwrap();
        s.listen(4).unwrap();
        s
    };
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed().as_secs_f64() < secs {
        let _ = refused(v4(port), false);
        n += 1;
    }
    n
}

/// SIGKILL of the recorder in the middle of a storm: every line written is
/// whole (at most a cut last line), and at most about a second is missing.
#[test]
fn sigkill_mid_storm_reads_back_clean() {
    let ns = Netns::new("pw-rec-kill");
    let scratch = Scratch::new("kill");
    let journal = scratch.0.join("j");
    let port = port();
    let tracer = Tracer::start(&[
        "--netns",
        &ns.arg(),
        "--record",
        journal.to_str().unwrap(),
        "--fold-window",
        "0",
        "--max-size",
        "1",
        "--max-files",
        "1000",
    ]);
    let pid = tracer.pid();
    // Every event portwatch printed, with when it arrived here.
    let mut printed: Vec<(Instant, String)> = Vec::new();
    let n = std::thread::scope(|scope| {
        let storming = scope.spawn(|| ns.run(move || storm(port, 3.0)));
        while !storming.is_finished() {
            if let Some(ev) = tracer.next_event(Duration::from_millis(20)) {
                printed.push((Instant::now(), ev["ts"].as_str().unwrap().to_owned()));
            }
        }
        storming.join().unwrap()
    });
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(tracer);
    assert!(n > 1000, "storm too small: {n}");
    let out = report(&[journal.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["input"]["corrupt"], 0, "{}", v["input"]);
    assert!(
        v["input"]["truncated"].as_u64().unwrap() <= 1,
        "{}",
        v["input"]
    );
    // The journal gets each line when stdout does and writes it within a
    // second: whatever was printed over 1.2 s before the kill is in it.
    let journalled: std::collections::HashSet<String> = journal_lines(&journal)
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["ts"].as_str().map(str::to_owned))
        .collect();
    let early: Vec<&String> = printed
        .iter()
        .filter(|(at, _)| killed.duration_since(*at) > Duration::from_millis(1200))
        .map(|(_, ts)| ts)
        .collect();
    assert!(
        early.len() > 100,
        "too few events printed early: {}",
        early.len()
    );
    let missing = early.iter().filter(|ts| !journalled.contains(**ts)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} events printed over 1.2 s before the SIGKILL are not in the journal ({} journalled, {} printed)",
        early.len(),
        journalled.len(),
        printed.len()
    );
    // Rotated at 1 MiB: files in order, each whole lines.
    for f in std::fs::read_dir(&journal).unwrap() {
        let f = f.unwrap().path();
        assert!(std::fs::metadata(&f).unwrap().len() <= (1 << 20) + 4096);
    }
}

/// A small tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "pw-rec-tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk: reported once on stderr, the live stream goes on, and
/// recording resumes (with the loss counted) once space returns.
#[test]
fn full_disk_is_reported_and_recording_resumes() {
    let ns = Netns::new("pw-rec-full");
    let scratch = Scratch::new("full");
    let fs = Tmpfs::new(scratch.0.join("fs"), "1m");
    // Ballast leaves a little room: the journal fills it within a second.
    let ballast = fs.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 900 * 1024]).unwrap();
    let journal = fs.0.join("j");
    let port = port();
    let mut tracer = Tracer::start(&[
        "--netns",
        &ns.arg(),
        "--record",
        journal.to_str().unwrap(),
        "--fold-window",
        "0",
    ]);
    ns.run(move || storm(port, 2.5));
    let failing = tracer.wait_notice("record_failing");
    assert!(
        failing["why"].as_str().unwrap().contains("No space left"),
        "{failing}"
    );
    // The live stream goes on: events still arrive after the failure.
    let before = std::iter::from_fn(|| tracer.next_event(Duration::from_millis(200))).count();
    assert!(before > 0);
    std::fs::remove_file(&ballast).unwrap();
    ns.run(move || storm(port, 2.5));
    let resumed = tracer.wait_notice("record_resumed");
    assert!(resumed["lost"].as_u64().unwrap() > 0, "{resumed}");
    let said = tracer_notices_of(&tracer.seen, "record_failing");
    let tracer_seen = tracer.seen.clone();
    let (status, _, notices) = tracer.stop();
    assert!(status.success());
    let said = said + tracer_notices_of(&notices, "record_failing");
    let resumes = tracer_notices_of(&tracer_seen, "record_resumed")
        + tracer_notices_of(&notices, "record_resumed");
    // Said once per episode (the second storm may fill the 1 MiB again),
    // never once per lost line.
    assert!(
        said >= 1 && said <= resumes + 1,
        "{said} failing, {resumes} resumed: {notices:?}"
    );
    let recorded = notices.iter().find(|n| n["type"] == "recorded").unwrap();
    assert!(recorded["lost_write"].as_u64().unwrap() > 0, "{recorded}");
    assert!(recorded["lines"].as_u64().unwrap() > 0, "{recorded}");
    // Whole lines only: the report skips nothing.
    let out = report(&[journal.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["input"]["corrupt"], 0, "{}", v["input"]);
    assert_eq!(v["input"]["truncated"], 0, "{}", v["input"]);
    drop(fs);
}

fn tracer_notices_of(notices: &[Value], kind: &str) -> usize {
    notices.iter().filter(|n| n["type"] == kind).count()
}

/// A symlink planted at the journal's path is refused, not written through.
#[test]
fn symlink_at_the_journal_is_refused() {
    let scratch = Scratch::new("link");
    let journal = scratch.0.join("j");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&journal)
        .unwrap();
    let victim = scratch.0.join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    std::os::unix::fs::symlink(&victim, journal.join("portwatch-0000000001.ndjson")).unwrap();
    let out = Command::new(bin())
        .args(["watch", "--record"])
        .arg(&journal)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symlink"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("portwatch: --record ") && last.contains("symlink"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
}

/// Raw tracepoint programs (BPF_PROG_TYPE_RAW_TRACEPOINT) process `pid` holds.
fn raw_tracepoints_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter(|e| {
            let text = std::fs::read_to_string(e.as_ref().unwrap().path()).unwrap_or_default();
            text.lines()
                .any(|l| l.split_whitespace().eq(["prog_type:", "17"]))
        })
        .count()
}

/// A server that closes its connections first leaves TIME_WAIT behind; its
/// restart without SO_REUSEADDR fails. The report says so, with the
/// TIME_WAIT leftovers the kernel counted on the port. Seen by the raw
/// tracepoint, which this kernel allows.
#[test]
fn time_wait_without_reuseaddr_is_recognised() {
    time_wait_case("pw-rec-tw", &[], 1);
}

/// The same through the classic tracepoint, as on a kernel that refuses the
/// raw one.
#[test]
fn time_wait_is_counted_through_the_classic_tracepoint_too() {
    time_wait_case("pw-rec-twc", &["--test-kernel-quirks", "no_raw_state"], 0);
}

fn time_wait_case(name: &str, extra: &[&str], raw_programs: usize) {
    let ns = Netns::new(name);
    let scratch = Scratch::new(name);
    let journal = scratch.0.join("j");
    let port = port();
    let mut args = vec![
        "--netns".to_owned(),
        ns.arg(),
        "--port".to_owned(),
        port.to_string(),
        "--record".to_owned(),
        journal.to_str().unwrap().to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let tracer = Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(raw_tracepoints_of(tracer.pid()), raw_programs);
    let code = format!(
        "import socket, time\n\
         a = socket.socket(); a.bind(('127.0.0.1', {port})); a.listen()\n\
         for _ in range(3):\n\
         \x20   c = socket.create_connection(('127.0.0.1', {port})); s, _ = a.accept()\n\
         \x20   s.close(); time.sleep(0.05); c.close()\n\
         a.close(); time.sleep(0.1)\n\
         b = socket.socket()\n\
         try:\n\
         \x20   b.bind(('127.0.0.1', {port})); print('bound')\n\
         except OSError as e:\n\
         \x20   print(e.errno)\n"
    );
    let (pid, out) = ns.run(move || {
        let child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(code)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (Debian's)");
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        (pid, String::from_utf8(out.stdout).unwrap())
    });
    assert_eq!(out.trim(), "98", "the restart should hit TIME_WAIT");
    let ev = tracer.event();
    assert_eq!(ev["reason"], "time_wait", "{ev:#}");
    let (status, _, _) = tracer.stop();
    assert!(status.success());
    let out = report(&[journal.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let story = &v["ports"][port.to_string()];
    assert!(
        story["time_wait"]["count"].as_u64().unwrap() >= 1,
        "{story:#}"
    );
    let pat = story["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "time_wait")
        .unwrap_or_else(|| panic!("{story:#}"));
    assert_eq!(pat["pids"], serde_json::json!([pid]), "{pat}");
    assert!(
        pat["text"].as_str().unwrap().contains("SO_REUSEADDR"),
        "{pat}"
    );
}

/// The names of the eBPF programs process `pid` holds, by a program's or a
/// link's fd (their ids from its fdinfo, their names from the kernel's
/// list; names are cut at 15 bytes).
fn programs_of(pid: u32) -> Vec<String> {
    let mut ids = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .map(|id| id.trim().parse::<u32>().unwrap()),
        );
    }
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .collect()
}

/// Whether a program name is one of port life's (raw or classic).
fn sees_state_changes(name: &String) -> bool {
    name == "sock_state_raw" || "inet_sock_set_state".starts_with(name.as_str())
}

/// Every TCP connection passes `inet_sock_set_state` several times: without
/// `--record` portwatch attaches nothing there (listeners enter the holder
/// table as their listen() returns); with it, port life's program is.
#[test]
fn state_changes_are_hooked_only_when_recording() {
    let ns = Netns::new("pw-rec-hook");
    let scratch = Scratch::new("hook");
    let journal = scratch.0.join("journal");
    let plain = Tracer::start(&["--netns", &ns.arg()]);
    let names = programs_of(plain.pid());
    assert!(
        names
            .iter()
            .any(|n| n == "sys_exit_bind" || n == "inet_bind_exit"),
        "the tracer holds no bind program: {names:?}"
    );
    assert!(
        !names.iter().any(sees_state_changes),
        "watch without --record hooks TCP state changes: {names:?}"
    );
    drop(plain);
    let recording = Tracer::start(&["--netns", &ns.arg(), "--record", journal.to_str().unwrap()]);
    let names = programs_of(recording.pid());
    assert!(
        names.iter().any(sees_state_changes),
        "watch --record does not hook TCP state changes: {names:?}"
    );
}
