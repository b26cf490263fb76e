//! Test harness: run the real portwatch binary, make real sockets in private
//! network namespaces, and read what portwatch printed.
//!
//! Nothing here is mocked. Tests need root (they load eBPF and unshare
//! network namespaces) and fail loudly without it.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses a different part of the harness"
)]

pub mod apache;
pub mod containerd;
pub mod cri;
pub mod docker;
pub mod preflight;
pub mod prometheus;

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

pub use portwatch_test_support::{inode_of, recv_fd, send_fd, Cgroup, Netns, Process, Scratch};
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

/// How long to wait for portwatch to start or an event to arrive.
pub const WAIT: Duration = Duration::from_secs(20);

/// The portwatch binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portwatch")
}

/// A running `portwatch watch --json`.
pub struct Tracer {
    child: Option<Child>,
    events: Receiver<Value>,
    notices: Receiver<Value>,
    /// Every stderr line so far, for failure messages.
    pub seen: Vec<Value>,
}

impl Tracer {
    /// Starts `portwatch watch --json ARGS` and waits for its `ready` line.
    pub fn start(args: &[&str]) -> Tracer {
        Tracer::try_start(args)
            .unwrap_or_else(|refusal| panic!("portwatch refused to start: {refusal}"))
    }

    /// Like `start`, but when portwatch exits with status 3 (this system
    /// cannot run it, e.g. a backend the kernel refuses) returns its stderr.
    pub fn try_start(args: &[&str]) -> Result<Tracer, String> {
        let mut cmd = Command::new(bin());
        cmd.arg("watch").arg("--json").args(args);
        // `cargo xtask vm-test` runs every test once per backend.
        if let Ok(backend) = std::env::var("PORTWATCH_TEST_BACKEND") {
            if !args.contains(&"--backend") {
                cmd.args(["--backend", &backend]);
            }
        }
        Tracer::try_spawn(cmd)
    }

    /// Like `try_start`, for a command made elsewhere that runs
    /// `portwatch watch --json` (e.g. in a container).
    pub fn try_spawn(mut cmd: Command) -> Result<Tracer, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portwatch");
        let (etx, events) = mpsc::channel();
        let (ntx, notices) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                let _ = etx.send(v);
            }
        });
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or_else(|_| Value::String(line.clone()));
                let _ = ntx.send(v);
            }
        });
        let mut tracer = Tracer {
            child: Some(child),
            events,
            notices,
            seen: Vec::new(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tracer.notices.recv_timeout(left) {
                Ok(v) => {
                    tracer.seen.push(v.clone());
                    if v["type"] == "ready" {
                        return Ok(tracer);
                    }
                }
                // stderr closed: portwatch exited before it was ready.
                Err(RecvTimeoutError::Disconnected) => {
                    let status = tracer.child.as_mut().unwrap().wait().unwrap();
                    let text: Vec<String> = tracer
                        .seen
                        .iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .collect();
                    if status.code() == Some(3) {
                        return Err(text.join("\n"));
                    }
                    panic!("portwatch exited before ready ({status}): {text:?}");
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "portwatch not ready within {WAIT:?}; stderr: {:?}",
                        tracer.seen
                    )
                }
            }
        }
    }

    /// Waits for a stderr object with this `type`.
    pub fn wait_notice(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.notices.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["type"] == kind {
                        return v;
                    }
                }
                Err(_) => {
                    let status = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    panic!(
                        "no '{kind}' from portwatch (exit {status:?}); stderr: {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// The backend notice (always printed before `ready`).
    pub fn backend(&self) -> &Value {
        self.seen
            .iter()
            .find(|v| v["type"] == "backend")
            .expect("backend notice")
    }

    /// The next event, if one arrives within `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<Value> {
        self.events.recv_timeout(timeout).ok()
    }

    /// The next event; panics if none arrives in time.
    pub fn event(&self) -> Value {
        self.next_event(WAIT)
            .expect("no event from portwatch in time")
    }

    /// Stops portwatch with SIGINT (or SIGTERM), returns its exit status and
    /// any events that were still on their way, and the stderr lines after `ready`.
    pub fn stop_with(
        mut self,
        signal: nix::sys::signal::Signal,
    ) -> (ExitStatus, Vec<Value>, Vec<Value>) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "portwatch did not exit after {signal}"
            );
            thread::sleep(Duration::from_millis(10));
        };
        let events = self.events.try_iter().collect::<Vec<_>>();
        // The reader threads finish once the pipes close.
        let mut rest = Vec::new();
        while let Ok(v) = self.notices.recv_timeout(Duration::from_secs(2)) {
            rest.push(v);
        }
        let mut events = events;
        events.extend(self.events.try_iter());
        (status, events, rest)
    }

    /// portwatch's pid (to signal it, e.g. SIGKILL in crash tests).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Stops with SIGINT.
    pub fn stop(self) -> (ExitStatus, Vec<Value>, Vec<Value>) {
        self.stop_with(nix::sys::signal::Signal::SIGINT)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Only our own child, by handle, never by name.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP or UDP socket, unbound.
pub fn socket(v6: bool, udp: bool) -> Socket {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let (ty, proto) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    Socket::new(domain, ty, Some(proto)).unwrap()
}

/// A free port: the namespaces are private, so any fixed choice would do,
/// but a random one keeps runs from seeing each other's folded state.
pub fn port() -> u16 {
    20000 + (std::process::id() as u16 % 20000) + (rand_u16() % 5000)
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos ^ (nanos >> 16)) as u16
}

/// Binds `s`, returning the errno on failure.
pub fn bind(s: &Socket, addr: SocketAddr) -> Result<(), i32> {
    s.bind(&addr.into()).map_err(|e| e.raw_os_error().unwrap())
}

/// A listener on `addr` plus a second socket whose bind fails with
/// EADDRINUSE; returns (listener, failed socket's fd).
pub fn conflict(addr: SocketAddr, udp: bool) -> (Socket, Socket) {
    let holder = socket(addr.is_ipv6(), udp);
    bind(&holder, addr).expect("first bind");
    if !udp {
        holder.listen(16).unwrap();
    }
    (holder, refused(addr, udp))
}

/// A socket whose bind to `addr` fails with EADDRINUSE.
pub fn refused(addr: SocketAddr, udp: bool) -> Socket {
    let loser = socket(addr.is_ipv6(), udp);
    assert_eq!(bind(&loser, addr), Err(libc::EADDRINUSE));
    loser
}

/// 127.0.0.1:port.
pub fn v4(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Debian's python3: reachable for every uid, unlike a per-user install.
const PYTHON: &str = "/usr/bin/python3";

/// Runs a python3 snippet in the caller's network namespace (call it inside
/// `Netns::run`), optionally as another uid; returns its pid once it exited.
pub fn python(code: &str, uid: Option<u32>) -> u32 {
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                PYTHON.into(),
            ]);
            c
        }
        None => Command::new(PYTHON),
    };
    let mut child = cmd
        .arg("-c")
        .arg(code)
        .spawn()
        .expect("python3 is needed for multi-process tests");
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "python3 snippet failed: {code}");
    pid
}

/// Python code that holds `port` on 127.0.0.1 and fails to bind it again.
pub fn py_conflict(port: u16) -> String {
    format!(
        "import socket,errno\n\
         a=socket.socket(); a.bind(('127.0.0.1',{port})); a.listen()\n\
         b=socket.socket()\n\
         try:\n  b.bind(('127.0.0.1',{port})); raise SystemExit('bind succeeded')\n\
         except OSError as e:\n  assert e.errno==errno.EADDRINUSE, e\n"
    )
}

/// Asserts that `ev` is the failed bind this process's netns thread made.
pub fn assert_ours(ev: &Value, ns: &Netns) {
    assert_eq!(ev["pid"], std::process::id(), "{ev}");
    assert_eq!(ev["tid"], ns.tid, "{ev}");
    assert_eq!(ev["comm"], ns.comm.as_str(), "{ev}");
    assert_eq!(ev["netns"], ns.inode, "{ev}");
    assert_eq!(ev["ppid"], nix::unistd::getppid().as_raw(), "{ev}");
    assert_eq!(ev["uid"], 0, "{ev}");
}

/// A socket bound to `addr` (and listening, for TCP), for `Process::fork`
/// setups; leaked on purpose, as the child holds it until it is killed.
pub fn hold(addr: SocketAddr, udp: bool, prep: impl FnOnce(&Socket)) -> bool {
    let s = socket(addr.is_ipv6(), udp);
    prep(&s);
    if bind(&s, addr).is_err() || (!udp && s.listen(16).is_err()) {
        return false;
    }
    std::mem::forget(s);
    true
}

/// Like `hold`, bound to `device` (SO_BINDTODEVICE) first.
pub fn hold_on(device: &[u8], addr: SocketAddr, udp: bool) -> bool {
    let s = socket(addr.is_ipv6(), udp);
    if s.bind_device(Some(device)).is_err()
        || bind(&s, addr).is_err()
        || (!udp && s.listen(16).is_err())
    {
        return false;
    }
    std::mem::forget(s);
    true
}

/// A real bind of `addr` on `device` (none: unbound): the kernel's answer,
/// to check a prediction against. The socket is returned, bound.
pub fn bind_on(device: Option<&str>, addr: SocketAddr, udp: bool) -> Result<Socket, i32> {
    let s = socket(addr.is_ipv6(), udp);
    if let Some(d) = device {
        s.bind_device(Some(d.as_bytes()))
            .unwrap_or_else(|e| panic!("SO_BINDTODEVICE {d}: {e}"));
    }
    bind(&s, addr).map(|()| s)
}

/// Runs `ip ARGS` (iproute2 on the host, busybox in the VM) in the calling
/// thread's network namespace; panics if it fails.
pub fn ip(args: &str) {
    let status = Command::new("ip")
        .args(args.split(' '))
        .status()
        .expect("run ip");
    assert!(status.success(), "ip {args}: {status}");
}

/// The interface index of `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("a device name");
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no device {name}");
    index
}

/// A listener on 127.0.0.1:`port` (SO_REUSEADDR as `reuse` says), a
/// client connected to it, and the connection it accepted.
pub fn connected(port: u16, reuse: bool) -> (Socket, std::net::TcpStream, Socket) {
    let listener = socket(false, false);
    listener.set_reuse_address(reuse).unwrap();
    bind(&listener, v4(port)).unwrap();
    listener.listen(1).unwrap();
    let client = std::net::TcpStream::connect(v4(port)).unwrap();
    let (served, _) = listener.accept().unwrap();
    (listener, client, served)
}

/// Like `hold`, without listen().
pub fn hold_bound(addr: SocketAddr) -> bool {
    let s = socket(addr.is_ipv6(), false);
    if bind(&s, addr).is_err() {
        return false;
    }
    std::mem::forget(s);
    true
}

/// The event's first holder.
pub fn holder(ev: &Value) -> &Value {
    ev["holders"]
        .as_array()
        .and_then(|h| h.first())
        .unwrap_or_else(|| panic!("no holder in {ev:#}"))
}

/// The event's first holder in `state` (`"TIME_WAIT"`, `"CLOSED"`, ...).
pub fn holder_in<'a>(ev: &'a Value, state: &str) -> &'a Value {
    ev["holders"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["state"] == state))
        .unwrap_or_else(|| panic!("no {state} holder in {ev:#}"))
}

/// TIME_WAIT from a real connection whose server side closed first; the
/// listener had SO_REUSEADDR or not (`reuse`), which TIME_WAIT keeps.
pub fn time_wait(port: u16, reuse: bool) {
    let (listener, client, served) = connected(port, reuse);
    drop(listener);
    drop(served);
    thread::sleep(Duration::from_millis(50));
    drop(client);
    until_time_wait(port);
}

/// Waits until every TCP socket on `port` in the calling thread's
/// namespace is in TIME_WAIT, and one is (a slow or loaded machine may show
/// FIN_WAIT2 for a moment after both ends closed).
pub fn until_time_wait(port: u16) {
    const TCP_TIME_WAIT: u8 = 6;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let on_port =
            portwatch_core::holders::sockdiag::dump(6, Some(port), false).expect("sock_diag");
        if !on_port.is_empty() && on_port.iter().all(|s| s.state == TCP_TIME_WAIT) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no TIME_WAIT on port {port}: {on_port:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// `portwatch who ARGS --json`, from the namespace's thread (so the default
/// namespace is `ns`'s); returns the exit status and the object printed.
pub fn who(ns: &Netns, args: &[&str]) -> (i32, Value) {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    let out = ns.run(move || {
        Command::new(bin())
            .arg("who")
            .args(&args)
            .arg("--json")
            .output()
            .expect("run portwatch who")
    });
    parse(&out)
}

/// The exit status and the JSON object a `who --json` printed.
pub fn parse(out: &Output) -> (i32, Value) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (out.status.code().expect("exit status"), v)
}

/// A tracer on `ns` whose lookups start 300 ms after each failure (the
/// flaky-restart race, held open): a holder gone right after the failure is
/// gone by the lookup, and only the kernel's record can name it. A generous
/// timeout: the VM's emulated CPU is slow.
pub fn late_lookup_tracer(ns: &Netns) -> Tracer {
    late_lookup_tracer_with(ns, &[])
}

/// `late_lookup_tracer` with more arguments for `watch`.
pub fn late_lookup_tracer_with(ns: &Netns, extra: &[&str]) -> Tracer {
    let netns = ns.arg();
    let mut args = vec![
        "--netns",
        &netns,
        "--enrich-delay",
        "300",
        "--lookup-timeout",
        "10000",
    ];
    args.extend_from_slice(extra);
    Tracer::start(&args)
}

/// Adds a PREROUTING DNAT rule for TCP `port` to `to` with the real
/// iptables, in the calling thread's network namespace (a test's own).
pub fn dnat_to(port: u16, to: &str) {
    let status = Command::new("iptables")
        .args(["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport"])
        .arg(port.to_string())
        .args(["-j", "DNAT", "--to-destination", to])
        .status()
        .expect("run iptables");
    assert!(status.success(), "iptables: {status}");
}

/// Runs `program ARGS` with `text` on its stdin (iptables-restore, nft -f -)
/// in the calling thread's network namespace; asserts that it succeeds.
pub fn feed(program: &str, args: &[&str], text: &str) {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "{program}");
}

/// In a forked child: forks `n` workers that inherit its sockets and are
/// killed with it (plain system calls only, as a forked child must);
/// whether every fork worked.
pub fn fork_workers(n: usize) -> bool {
    (0..n).all(|_| {
        // SAFETY: fork, prctl and pause in a single-threaded child.
        match unsafe { libc::fork() } {
            0 => unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                loop {
                    libc::pause();
                }
            },
            pid => pid > 0,
        }
    })
}
