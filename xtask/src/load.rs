//! The load the benchmarks put on the kernel and the tracer they measure:
//! failing binds in a private network namespace, and `portwatch watch` run
//! as a child whose notices and events are read back; and the median every
//! bench reports. Shared by the `bench*` modules and `soak`.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use portwatch_test_support::in_fresh_netns;

pub(crate) const PORT: u16 = 47000;

/// The middle value (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub(crate) fn tcp_socket() -> i32 {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    fd
}

pub(crate) fn bind(fd: i32, port: u16) -> i32 {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    unsafe {
        libc::bind(
            fd,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        )
    }
}

/// A listener on PORT and a socket whose binds to PORT fail.
pub(crate) fn conflict() -> (i32, i32) {
    let holder = tcp_socket();
    assert_eq!(bind(holder, PORT), 0);
    assert_eq!(unsafe { libc::listen(holder, 1) }, 0);
    (holder, tcp_socket())
}

/// Events as they reach the reader, with the wall time they arrived.
pub(crate) type Events = mpsc::Receiver<(SystemTime, serde_json::Value)>;

/// A running tracer; its stdout goes to /dev/null unless captured.
pub(crate) struct Tracer {
    pub(crate) child: Child,
    pub(crate) notices: mpsc::Receiver<serde_json::Value>,
    pub(crate) events: Option<Events>,
    pub(crate) startup: Duration,
    pub(crate) backend: String,
}

impl Tracer {
    pub(crate) fn start(bin: &Path, extra: &[String]) -> Result<Tracer> {
        Tracer::spawn(bin, extra, false)
    }

    pub(crate) fn spawn(bin: &Path, extra: &[String], capture: bool) -> Result<Tracer> {
        let t0 = Instant::now();
        let mut child = Command::new(bin)
            .args(["watch", "--json"])
            .args(extra)
            .stdout(if capture {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()?;
        let events = child.stdout.take().map(|stdout| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let at = SystemTime::now();
                    if let Ok(v) = serde_json::from_str(&line) {
                        let _ = tx.send((at, v));
                    }
                }
            });
            rx
        });
        let (tx, notices) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut backend = String::new();
        loop {
            let v: serde_json::Value = notices
                .recv_timeout(Duration::from_secs(30))
                .context("portwatch did not become ready")?;
            if v["type"] == "ready" {
                backend = v["backend"].as_str().unwrap_or(&backend).to_owned();
                break;
            }
        }
        Ok(Tracer {
            child,
            notices,
            events,
            startup: t0.elapsed(),
            backend,
        })
    }

    /// (current, peak) resident set in KiB.
    pub(crate) fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGINT, then the summary object.
    pub(crate) fn stop(mut self) -> Result<serde_json::Value> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )?;
        self.child.wait()?;
        while let Ok(v) = self.notices.recv_timeout(Duration::from_secs(5)) {
            if v["type"] == "summary" {
                return Ok(v);
            }
        }
        bail!("no summary from portwatch")
    }
}

impl Drop for Tracer {
    /// A bench that fails midway leaves no tracer running: ours, by handle.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Failing binds at full speed (or `per_sec` paced) for `secs`; returns how many.
pub(crate) fn storm(secs: u64, per_sec: Option<u64>) -> u64 {
    in_fresh_netns(move || {
        let (holder, loser) = conflict();
        let start = Instant::now();
        let end = start + Duration::from_secs(secs);
        let mut n = 0u64;
        while Instant::now() < end {
            // Paced: stay on the schedule n / per_sec, in batches of 100.
            if let Some(rate) = per_sec {
                let due = start + Duration::from_nanos(n * 1_000_000_000 / rate);
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
            }
            for _ in 0..100 {
                assert_eq!(bind(loser, PORT), -1);
            }
            n += 100;
        }
        unsafe {
            libc::close(holder);
            libc::close(loser);
        }
        n
    })
}
