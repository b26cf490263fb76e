//! `cargo xtask bench --only burst`: bursts of distinct failures, each port
//! failing once, under `watch --json --metrics` with default settings: what
//! is lost in the kernel, what is written, when the metrics add up, and how
//! fast the endpoint answers during the burst. With `--baseline BIN` the same
//! bursts run against another build in the same session, alternating.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use portwatch_test_support::Netns;

use crate::load::{bind, median, tcp_socket, Tracer};

/// Distinct ports of the raw-syscall burst (the C loop).
const C_PORTS: u16 = 16_000;
/// Distinct ports of the Python UDP burst.
const PY_PORTS: u16 = 10_000;
/// Below the ephemeral range, where the scrapes' own connections take ports.
const BASE: u16 = 10_000;
const METRICS: &str = "127.0.0.1:9464";

/// A burst: (failures made, seconds its failing loop took, the holders'
/// fds to close once its events are in).
type Burst = fn() -> (u64, f64, Vec<i32>);

/// One burst against one build.
struct Outcome {
    failures: u64,
    secs: f64,
    lost: u64,
    written: u64,
    metrics: f64,
    /// From the burst's end to the metrics summing to `failures`.
    metrics_after: Option<f64>,
    /// Slowest scrape that started during the burst.
    slowest_scrape_ms: f64,
    shed: String,
    timeouts: u64,
    /// Events named in full: holders looked up (not the kernel's record
    /// alone), the holder's command line read, or its exit known.
    named: u64,
    /// Events written.
    events: u64,
    /// From the burst's end to the last event named in full.
    last_named: Option<f64>,
}

/// Whether `ev` names its holder in full: looked up, with the command line
/// of the process that holds the port, or the kernel's record of one that
/// has exited.
fn named_in_full(ev: &serde_json::Value) -> bool {
    let h = &ev["holders"][0];
    ev["enriched"] == true
        && (h["cmdline"].as_str().is_some_and(|c| !c.is_empty()) || h["exited"] == true)
}

fn get(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

fn port_failures(page: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with("portwatch_port_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrapes from a thread of its own in `ns` until `stop`; the slowest
/// scrape in ms.
fn scraper(ns: &Netns, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<f64> {
    let path = format!("/proc/self/task/{}/ns/net", ns.tid);
    std::thread::spawn(move || {
        let Ok(f) = File::open(&path) else {
            return f64::NAN;
        };
        // SAFETY: setns on this thread only, with a namespace fd.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return f64::NAN;
        }
        let addr: SocketAddr = METRICS.parse().expect("address");
        let mut slowest: f64 = 0.0;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let ok = get(addr).is_ok();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            slowest = slowest.max(if ok { ms } else { f64::INFINITY });
            std::thread::sleep(Duration::from_millis(5));
        }
        slowest
    })
}

/// Runs `burst` (which returns how many failures it made) in `ns` under
/// `bin`, then follows the metrics and stops the tracer.
fn measure(
    bin: &Path,
    ns: &Netns,
    burst: impl FnOnce() -> (u64, f64, Vec<i32>) + Send + 'static,
) -> Result<Outcome> {
    let bin = bin.to_owned();
    // Only this namespace: other failures on the machine are not the burst's.
    let args = [
        "--metrics".into(),
        METRICS.into(),
        "--netns".into(),
        ns.arg(),
    ];
    let t = ns.run(move || Tracer::spawn(&bin, &args, true))?;
    let addr: SocketAddr = METRICS.parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = scraper(ns, stop.clone());
    let (failures, secs, held) = ns.run(burst);
    let ended = Instant::now();
    let ended_at = std::time::SystemTime::now();
    stop.store(true, Ordering::Relaxed);
    let slowest_scrape_ms = scrapes.join().unwrap_or(f64::NAN);
    let (mut metrics, mut metrics_after) = (0.0, None);
    while ended.elapsed() < Duration::from_secs(15) {
        // An endpoint that does not answer within get()'s 10 s is a scrape
        // that failed, not a failed benchmark.
        if let Ok(page) = ns.run(move || get(addr)) {
            metrics = port_failures(&page);
        }
        if metrics >= failures as f64 {
            metrics_after = Some(ended.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every event, named or not, before the holders close (a lookup after
    // that would find them gone).
    let (mut events, mut named, mut last_named) = (0, 0, None);
    if let Some(rx) = &t.events {
        while events < failures && ended.elapsed() < Duration::from_secs(30) {
            let Ok((at, ev)) = rx.recv_timeout(Duration::from_secs(5)) else {
                break;
            };
            events += 1;
            if named_in_full(&ev) {
                named += 1;
                last_named = Some(at.duration_since(ended_at).map_or(0.0, |d| d.as_secs_f64()));
            }
        }
    }
    for fd in held {
        // SAFETY: closing fds the burst opened and left to us.
        unsafe { libc::close(fd) };
    }
    let s = t.stop()?;
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    Ok(Outcome {
        failures,
        secs,
        lost: n("lost"),
        written: n("shown") + n("folded_shown") + n("folded_tail"),
        metrics,
        metrics_after,
        slowest_scrape_ms,
        shed: s
            .get("lookups_shed")
            .map_or_else(|| "-".into(), ToString::to_string),
        timeouts: n("lookup_timeouts"),
        named,
        events,
        last_named,
    })
}

/// One listener per port, then one failing bind per port, raw syscalls
/// as fast as they go (the speed of a C loop). Returns the failures made and
/// the seconds the failing loop took.
fn c_burst() -> (u64, f64, Vec<i32>) {
    let holders: Vec<i32> = (0..C_PORTS)
        .map(|i| {
            let fd = tcp_socket();
            assert_eq!(
                bind(fd, BASE + i),
                0,
                "holder bind: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: a listen on a socket this thread owns.
            assert_eq!(unsafe { libc::listen(fd, 1) }, 0);
            fd
        })
        .collect();
    let loser = tcp_socket();
    let start = Instant::now();
    for i in 0..C_PORTS {
        assert_eq!(bind(loser, BASE + i), -1);
    }
    let took = start.elapsed().as_secs_f64();
    // SAFETY: closing an fd this thread opened.
    unsafe { libc::close(loser) };
    (u64::from(C_PORTS), took, holders)
}

/// The Python loop: 10,000 UDP sockets held, then one failing bind
/// per port, each from a new socket (python times its failing loop).
fn py_burst() -> (u64, f64, Vec<i32>) {
    let code = format!(
        "import resource, socket\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))\n\
         held = []\n\
         for p in range({BASE}, {BASE} + {PY_PORTS}):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   s.bind(('127.0.0.1', p))\n\
         \x20   held.append(s)\n\
         import time\n\
         t = time.monotonic()\n\
         n = 0\n\
         for p in range({BASE}, {BASE} + {PY_PORTS}):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   try:\n\
         \x20       s.bind(('127.0.0.1', p))\n\
         \x20   except OSError:\n\
         \x20       n += 1\n\
         \x20   s.close()\n\
         print(n, time.monotonic() - t)\n"
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-c", &code])
        .stderr(Stdio::inherit())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let mut next = || words.next().and_then(|w| w.parse::<f64>().ok());
    let n = next().expect("python printed its count");
    // Python has exited: its events name it by the kernel's record.
    (
        n as u64,
        next().expect("python printed its time"),
        Vec::new(),
    )
}

fn raise_nofile() -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if lim.rlim_max < libc::rlim_t::from(C_PORTS) + 100 {
            bail!(
                "the burst holds {C_PORTS} sockets; the open-file hard limit is {}",
                lim.rlim_max
            );
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The burst section, as Markdown lines: every run, then medians.
pub fn run(bin: &Path, baseline: Option<&PathBuf>, rounds: usize) -> Result<Vec<String>> {
    raise_nofile()?;
    let mut builds = vec![("this build", bin.to_owned())];
    if let Some(b) = baseline {
        builds.insert(0, ("baseline", b.clone()));
    }
    let mut report = vec![
        format!("Bursts of distinct failures under `watch --json --metrics {METRICS} --netns NS` (defaults otherwise), each port failing once, {rounds} rounds, builds alternating:"),
        String::new(),
        "| burst | build | run | failures | failures/s | lost | written | metrics | metrics complete after (s) | slowest scrape while the burst ran (ms) | lookups shed | lookup timeouts | named in full / total | last named event after (s) |".into(),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    let bursts: [(&str, Burst); 2] = [
        ("16,000 TCP ports, raw syscalls (C speed)", c_burst),
        ("10,000 UDP ports, Python", py_burst),
    ];
    for (name, burst) in bursts {
        let mut lost: Vec<Vec<f64>> = vec![Vec::new(); builds.len()];
        for round in 0..rounds {
            for (b, (label, path)) in builds.iter().enumerate() {
                let ns = Netns::new("pw-burst");
                let o = measure(path, &ns, burst).with_context(|| format!("{name}, {label}"))?;
                eprintln!(
                    "bench: {name} {label} run {}: lost {} written {} metrics {} after {:?} scrape {:.0} ms shed {} named {}/{} last {:?}",
                    round + 1,
                    o.lost,
                    o.written,
                    o.metrics,
                    o.metrics_after,
                    o.slowest_scrape_ms,
                    o.shed,
                    o.named,
                    o.events,
                    o.last_named
                );
                lost[b].push(o.lost as f64);
                report.push(format!(
                    "| {name} | {label} | {} | {} | {:.0} | {} | {} | {} | {} | {:.0} | {} | {} | {} / {} | {} |",
                    round + 1,
                    o.failures,
                    o.failures as f64 / o.secs,
                    o.lost,
                    o.written,
                    o.metrics,
                    o.metrics_after
                        .map_or_else(|| "not within 15 s".into(), |s| format!("{s:.2}")),
                    o.slowest_scrape_ms,
                    o.shed,
                    o.timeouts,
                    o.named,
                    o.events,
                    o.last_named.map_or_else(|| "-".into(), |s| format!("{s:.2}"))
                ));
            }
        }
        for (b, (label, _)) in builds.iter().enumerate() {
            report.push(format!(
                "| {name} | {label} | median | | | {:.0} | | | | | | | | |",
                median(lost[b].clone())
            ));
        }
    }
    Ok(report)
}
