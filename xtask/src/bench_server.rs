//! `cargo xtask bench --only server`: what a busy server pays for
//! portwatch. Every TCP connection passes `sock/inet_sock_set_state`
//! several times on each end, and on the tracepoint backend every syscall
//! takes the slow path; this times both on three loads: a connect + accept +
//! close loop on loopback (the client closes with RST, so no TIME_WAIT piles
//! up), and Debian's nginx serving a 512-byte file to `wrk`, with
//! `Connection: close` and with keep-alive. Each runs untraced, with the
//! bare probe (`floor`), with it and a bare raw tracepoint on
//! `inet_sock_set_state` (the floor of a tracer that also sees TCP state
//! changes), with `portwatch watch` and with `watch --record`, in rounds
//! whose order rotates so that every mode sees the same noise.
//! A second pass, with kernel.bpf_stats_enabled=1, gives the ns per run and
//! the runs per connection of each program.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use portwatch_test_support::{Netns, Scratch};

use crate::{
    floor::{self, Floor},
    load::Tracer,
};

/// Connections per run of the connection loop.
const CONNECTIONS: u32 = 20_000;
/// The loop's listening port (in its own network namespace).
pub(crate) const LOOP_PORT: u16 = 47100;
/// nginx's port (in its own network namespace).
const NGINX_PORT: u16 = 47180;
/// Seconds of each wrk run.
const WRK_SECS: u32 = 3;
/// Pause after each run, for what its tracer's exit leaves to the kernel.
const SETTLE: Duration = Duration::from_millis(500);
/// wrk's connections.
const WRK_CONNS: u32 = 8;

/// One of the loads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// connect + accept + close, client closing with RST.
    Loop,
    /// nginx under wrk, a new connection per request.
    Close,
    /// nginx under wrk, keep-alive.
    KeepAlive,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Loop => "connect+accept+close loop (RST), 20,000 connections",
            Load::Close => "nginx 512 B, wrk -t1 -c8 -d3s, Connection: close",
            Load::KeepAlive => "nginx 512 B, wrk -t1 -c8 -d3s, keep-alive",
        }
    }

    /// Cost per unit of work, lower is better: µs per connection for the
    /// loop, µs per request (the inverse of wrk's rate) for nginx; and the
    /// connections made (requests, for keep-alive).
    fn measure(self, nginx: &Nginx) -> Result<(f64, u64)> {
        match self {
            Load::Loop => Ok((
                nginx.ns.run(|| connection_loop(CONNECTIONS)),
                u64::from(CONNECTIONS),
            )),
            Load::Close | Load::KeepAlive => {
                // Keep-alive: per request (8 connections carry them all).
                let (rate, requests) = nginx.wrk(self == Load::Close)?;
                Ok((1e6 / rate, requests))
            }
        }
    }
}

/// How the kernel is traced during a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Untraced,
    Probe,
    /// The bare probe as a raw tracepoint on `inet_sock_set_state`: the
    /// floor of any program there (per-program pass only).
    StateProbe,
    /// Both bare probes: the floor of a tracer of bind() failures that also
    /// sees TCP state changes, as portwatch does.
    BothProbes,
    Watch,
    Record,
    /// `watch --record` with the loads' ports named by `--port`, so that
    /// their state changes are counted (per-program pass only).
    RecordPorts,
}

const MODES: [Mode; 5] = [
    Mode::Untraced,
    Mode::Probe,
    Mode::BothProbes,
    Mode::Watch,
    Mode::Record,
];

/// What is attached for one run; dropping it detaches.
enum Attached {
    Nothing,
    Probe(Floor),
    Probes(#[allow(dead_code, reason = "held: dropping detaches")] [Floor; 2]),
    Tracer(Tracer, Scratch),
}

impl Attached {
    fn start(mode: Mode, bin: &Path, args: &[String]) -> Result<Attached> {
        Ok(match mode {
            Mode::Untraced => Attached::Nothing,
            Mode::Probe => Attached::Probe(Floor::attach()?),
            Mode::StateProbe => Attached::Probe(Floor::attach_raw(c"inet_sock_set_state")?),
            Mode::BothProbes => {
                Attached::Probes([Floor::attach()?, Floor::attach_raw(c"inet_sock_set_state")?])
            }
            Mode::Watch | Mode::Record | Mode::RecordPorts => {
                let scratch = Scratch::new("bench-record");
                let mut extra = args.to_vec();
                if mode != Mode::Watch {
                    extra.push("--record".into());
                    extra.push(scratch.0.join("journal").display().to_string());
                }
                if mode == Mode::RecordPorts {
                    extra.push("--port".into());
                    extra.push(format!("{LOOP_PORT},{NGINX_PORT}"));
                }
                Attached::Tracer(Tracer::start(bin, &extra)?, scratch)
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

/// µs per connection of `connections` connect + accept + close on loopback
/// port `LOOP_PORT`, in the calling thread's network namespace (here nginx's:
/// one namespace for every run, none torn down while another is timed). The
/// client sets SO_LINGER 0: its close sends RST, so neither end leaves
/// TIME_WAIT behind.
pub(crate) fn connection_loop(connections: u32) -> f64 {
    let listener = crate::load::tcp_socket();
    let one: libc::c_int = 1;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: plain system calls on sockets this thread owns; the
    // option values outlive the calls.
    unsafe {
        libc::setsockopt(
            listener,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            4,
        );
        assert_eq!(crate::load::bind(listener, LOOP_PORT), 0);
        assert_eq!(libc::listen(listener, 128), 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: LOOP_PORT.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let start = Instant::now();
        for _ in 0..connections {
            let c = crate::load::tcp_socket();
            libc::setsockopt(
                c,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as u32,
            );
            let r = libc::connect(
                c,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
            let s = libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut());
            assert!(s >= 0, "accept: {}", std::io::Error::last_os_error());
            libc::close(c);
            libc::close(s);
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(connections);
        libc::close(listener);
        us
    }
}

/// Debian's nginx serving a 512-byte file on loopback in a network
/// namespace of its own (where the connection loop runs too); stopped (by
/// its pid) on drop.
struct Nginx {
    ns: Netns,
    child: Child,
    _dir: Scratch,
}

impl Nginx {
    fn start() -> Result<Nginx> {
        let dir = Scratch::new("bench-nginx");
        dir.write("www/index.html", &format!("{}\n", "x".repeat(511)));
        let d = dir.0.display();
        // Workers as root: the scratch directory is 0700.
        let conf = format!(
            "daemon off; master_process on; worker_processes 1; user root root;\n\
             pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
               uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{NGINX_PORT}; root {d}/www; }} }}\n"
        );
        let path = dir.0.join("nginx.conf");
        std::fs::write(&path, conf)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let ns = Netns::new("pw-bench-nginx");
        let child = ns.run(move || {
            Command::new("/usr/sbin/nginx")
                .arg("-c")
                .arg(&path)
                .arg("-e")
                .arg("stderr")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })?;
        let nginx = Nginx {
            ns,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !nginx
            .ns
            .run(|| std::net::TcpStream::connect(("127.0.0.1", NGINX_PORT)).is_ok())
        {
            if Instant::now() > deadline {
                bail!("nginx did not listen on 127.0.0.1:{NGINX_PORT}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    /// (requests per second, requests) of one wrk run.
    fn wrk(&self, close: bool) -> Result<(f64, u64)> {
        let out = self.ns.run(move || {
            let mut cmd = Command::new("wrk");
            cmd.args(["-t1", &format!("-c{WRK_CONNS}"), &format!("-d{WRK_SECS}s")]);
            if close {
                cmd.args(["-H", "Connection: close"]);
            }
            cmd.arg(format!("http://127.0.0.1:{NGINX_PORT}/index.html"))
                .output()
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
            bail!("wrk failed or saw errors:\n{text}");
        }
        let rate = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
        let requests = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        Ok((rate, requests))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: nginx's graceful stop, to the master this bench started.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGQUIT,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs the server benchmarks: `rounds` rounds of every load in every mode.
pub fn run(bin: &Path, rounds: usize, tracer_args: &[String]) -> Result<Vec<String>> {
    crate::setup::ensure_packages(&[("/usr/sbin/nginx", "nginx"), ("wrk", "wrk")])?;
    let nginx = Nginx::start()?;
    let loads = [Load::Loop, Load::Close, Load::KeepAlive];
    let mut report = vec![
        format!(
            "Server loads, {rounds} rounds ({} for the loop; the modes' order rotating and reversing round by round), medians; \
             time per connection (loop) or per request (nginx, 1 / wrk's rate):",
            rounds * 5
        ),
        String::new(),
        "| load | untraced | bare probe | both probes | watch | watch --record | watch / untraced | --record / untraced | watch / probe | --record / probe | watch / both probes | --record / both probes |".into(),
        "|---|---|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    let mut backend = String::new();
    for load in loads {
        let mut times: [Vec<f64>; 5] = Default::default();
        // The loop is short (about 0.3 s a run) and noisier than wrk's 3 s:
        // five times the rounds, after one run that warms it up.
        let rounds = if load == Load::Loop {
            load.measure(&nginx)?;
            rounds * 5
        } else {
            rounds
        };
        for round in 0..rounds {
            for k in 0..MODES.len() {
                // Rotated, and reversed every other round, so that no mode
                // always follows the same one.
                let k = if round % 2 == 0 {
                    k
                } else {
                    MODES.len() - 1 - k
                };
                let i = (round / 2 + k) % MODES.len();
                let attached = Attached::start(MODES[i], bin, tracer_args)?;
                if let Attached::Tracer(t, _) = &attached {
                    backend = t.backend.clone();
                }
                times[i].push(load.measure(&nginx)?.0);
                attached.stop()?;
                // A tracer's exit leaves the kernel freeing its maps and
                // programs for a while: not on the next run's time.
                std::thread::sleep(SETTLE);
            }
        }
        let [off, probe, both, watch, record] = times.map(crate::load::median);
        eprintln!(
            "bench: server {}: {off:.2} / {probe:.2} / {both:.2} / {watch:.2} / {record:.2} µs",
            load.name()
        );
        report.push(format!(
            "| {} | {off:.2} µs | {probe:.2} µs | {both:.2} µs | {watch:.2} µs | {record:.2} µs | {:.3}x | {:.3}x | {:.3}x | {:.3}x | {:.3}x | {:.3}x |",
            load.name(),
            watch / off,
            record / off,
            watch / probe,
            record / probe,
            watch / both,
            record / both
        ));
    }
    report.push(String::new());
    report.push(format!("Backend: {backend}."));
    report.push(String::new());
    report.extend(per_program(bin, tracer_args, &nginx)?);
    Ok(report)
}

/// The kernel's accounting of each program over one run of each load
/// (kernel.bpf_stats_enabled=1 adds two clock reads per run, so a pass of
/// its own): runs, runs per connection and ns per run.
fn per_program(bin: &Path, tracer_args: &[String], nginx: &Nginx) -> Result<Vec<String>> {
    let _stats = floor::Stats::enable()?;
    let mut report = vec![
        "Per program, kernel.bpf_stats_enabled=1, one run of each load (run counts include the rest of the machine):".into(),
        String::new(),
        "| load | mode | program | runs | runs per connection (keep-alive: per request) | ns per run |".into(),
        "|---|---|---|---|---|---|".into(),
    ];
    for load in [Load::Loop, Load::Close, Load::KeepAlive] {
        for mode in [
            Mode::Probe,
            Mode::StateProbe,
            Mode::Watch,
            Mode::Record,
            Mode::RecordPorts,
        ] {
            let attached = Attached::start(mode, bin, tracer_args)?;
            let (ran, conns) = match &attached {
                Attached::Probe(f) => {
                    let before = f.program_stats();
                    let (_, conns) = load.measure(nginx)?;
                    (floor::since(&before, f.program_stats()), conns)
                }
                Attached::Tracer(t, _) => {
                    let pid = t.child.id();
                    let before = floor::programs_of(pid);
                    let (_, conns) = load.measure(nginx)?;
                    (floor::since(&before, floor::programs_of(pid)), conns)
                }
                Attached::Nothing | Attached::Probes(_) => {
                    unreachable!("the per-program pass runs each probe alone")
                }
            };
            attached.stop()?;
            std::thread::sleep(SETTLE);
            let mode_name = match mode {
                Mode::Probe => "bare probe (sys_exit_bind)",
                Mode::StateProbe => "bare raw probe (inet_sock_set_state)",
                Mode::Watch => "watch",
                Mode::Record => "watch --record",
                _ => "watch --record --port (the load's)",
            };
            for p in ran {
                report.push(format!(
                    "| {} | {mode_name} | {} | {} | {:.2} | {:.0} |",
                    load.name(),
                    p.name,
                    p.runs,
                    p.runs as f64 / conns.max(1) as f64,
                    p.run_ns as f64 / p.runs as f64
                ));
            }
        }
    }
    Ok(report)
}
