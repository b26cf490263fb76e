//! The bind-rule model against the kernel: for each row of a matrix of
//! holder sockets (options, state, family, address, uid) and requested
//! binds (option, family, address, IPV6_V6ONLY, uid), a real holder is made
//! in a private network namespace, the verdict engine is asked with no
//! trial bind (the rules and the holder's options, read from its socket),
//! then the real bind is made there and the two must agree.
//!
//! "unknown" is allowed only where it must be: TIME_WAIT leftovers have no
//! file descriptor, so their SO_REUSEADDR/SO_REUSEPORT cannot be read; the
//! row then checks that the model names the option the answer hangs on,
//! and that the kernel's answer follows it. A TCP socket bound without
//! listen() is listed only by kernels with TCP_BOUND_INACTIVE (6.10+): on
//! the others the row checks that the model says it may be unseen.
//!
//! The table (rows, agreement) is written to stderr unbuffered, so it shows
//! in the VM console and under `--nocapture`; `PORTWATCH_MATRIX=FILE`
//! also writes it to FILE (for BENCHMARKS.md).

mod common;

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    thread,
    time::Duration,
};

use common::*;
use portwatch_core::{
    bindcheck::Variant,
    engine::{self, Answer, Batch, UNSEEN_BOUND},
    holders::sockopts::OptionsFrom,
    request::{Binding, Proto},
};
use socket2::Socket;

/// The other uid of the matrix (nobody).
const OTHER: u32 = 65534;

/// What holds the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TCP, listening.
    Listen,
    /// TCP, bound, never listened.
    Bound,
    /// TCP TIME_WAIT leftover of a connection its listener accepted.
    TimeWait,
    /// UDP, bound.
    Udp,
}

/// One side of a row: a socket's address, options and owner.
#[derive(Debug, Clone, Copy)]
struct Side {
    addr: &'static str,
    v6only: bool,
    reuseaddr: bool,
    reuseport: bool,
    uid: u32,
}

const fn side(addr: &'static str) -> Side {
    Side {
        addr,
        v6only: false,
        reuseaddr: false,
        reuseport: false,
        uid: 0,
    }
}

impl Side {
    const fn ra(mut self) -> Self {
        self.reuseaddr = true;
        self
    }
    const fn rp(mut self) -> Self {
        self.reuseport = true;
        self
    }
    const fn v6only(mut self) -> Self {
        self.v6only = true;
        self
    }
    const fn uid(mut self, uid: u32) -> Self {
        self.uid = uid;
        self
    }
    fn ip(&self) -> IpAddr {
        self.addr.parse().expect("row address")
    }
    fn variant(&self) -> Variant {
        match (self.reuseaddr, self.reuseport) {
            (_, true) => Variant::Reuseport,
            (true, false) => Variant::Reuseaddr,
            _ => Variant::Plain,
        }
    }
    /// "plain", "SO_REUSEADDR", "SO_REUSEPORT uid 65534", with v6only.
    fn label(&self) -> String {
        let mut s = format!("{} {}", self.addr, self.variant().label());
        if self.v6only {
            s.push_str(" v6only");
        }
        if self.uid != 0 {
            s.push_str(&format!(" uid {}", self.uid));
        }
        s
    }
}

/// A row: the holder (kind and side) and the requested bind.
#[derive(Debug, Clone, Copy)]
struct Row {
    kind: Kind,
    holder: Side,
    req: Side,
}

const fn row(kind: Kind, holder: Side, req: Side) -> Row {
    Row { kind, holder, req }
}

fn rows() -> Vec<Row> {
    use Kind::*;
    let any4 = side("0.0.0.0");
    let any6 = side("::");
    let lo = side("127.0.0.1");
    let lo2 = side("127.0.0.2");
    let mut rows = Vec::new();
    // Each holder against every requested option: plain, SO_REUSEADDR,
    // SO_REUSEPORT of the same uid and of another.
    let holders = [
        (Listen, any4),
        (Listen, any4.ra()),
        (Listen, any4.rp()),
        (Listen, any4.rp().uid(OTHER)),
        (Bound, any4),
        (Bound, any4.ra()),
        (Bound, any4.rp()),
        (Bound, any4.rp().uid(OTHER)),
        (TimeWait, lo),
        (TimeWait, lo.ra()),
        (TimeWait, lo.rp()),
        (Udp, any4),
        (Udp, any4.ra()),
        (Udp, any4.rp()),
        (Udp, any4.rp().uid(OTHER)),
    ];
    for (kind, h) in holders {
        let at = if kind == TimeWait { lo } else { any4 };
        for req in [at, at.ra(), at.rp().uid(h.uid), at.rp().uid(OTHER - h.uid)] {
            rows.push(row(kind, h, req));
        }
    }
    // IPV6_V6ONLY both ways, IPv4 against IPv6.
    rows.extend([
        row(Listen, any6, any4),
        row(Listen, any6.v6only(), any4),
        row(Listen, any4, any6),
        row(Listen, any4, any6.v6only()),
        row(Listen, any6.v6only(), any6.v6only()),
        row(Listen, any6, lo),
        row(Udp, any6, any4),
        row(Udp, any6.v6only(), any4),
        row(Bound, any6.ra(), any4.ra()),
    ]);
    // A wildcard against a specific address, and two specific ones.
    rows.extend([
        row(Listen, lo, any4),
        row(Listen, any4, lo),
        row(Listen, lo, lo2),
        row(Listen, lo.ra(), lo.ra()),
        row(Bound, lo.ra(), any4.ra()),
        row(Bound, lo, lo2),
        row(Udp, lo.ra(), any4.ra()),
        row(Udp, lo, lo2),
    ]);
    rows
}

/// What a row found.
struct Outcome {
    model: String,
    kernel: String,
    agree: &'static str,
}

#[test]
fn model_agrees_with_the_kernel() {
    let ns = Netns::new("pw-model");
    let base = port();
    let rows = rows();
    let listed = portwatch_core::holders::inactive::listed();
    let mut table = format!(
        "bind-rule model against the kernel ({}, bound-but-inactive TCP listed: {listed})\n\n\
         | # | holder | state | request | model | kernel | agree |\n|---|---|---|---|---|---|---|\n",
        kernel_release()
    );
    let mut bad = Vec::new();
    let (mut agreed, mut unknown, mut unseen) = (0, 0, 0);
    for (i, r) in rows.iter().enumerate() {
        let port = base + i as u16;
        let o = check(&ns, *r, port, listed);
        match o.agree {
            "yes" => agreed += 1,
            "unknown, as it must" => unknown += 1,
            "unseen, as it says" => unseen += 1,
            _ => bad.push(format!(
                "row {i} {r:?}: model {} kernel {}",
                o.model, o.kernel
            )),
        }
        table.push_str(&format!(
            "| {i} | {} | {:?} | {} | {} | {} | {} |\n",
            r.holder.label(),
            r.kind,
            r.req.label(),
            o.model,
            o.kernel,
            o.agree
        ));
    }
    table.push_str(&format!(
        "\n{} rows: {agreed} agree, {unknown} unknown where the holder's options cannot be read (TIME_WAIT), {unseen} unseen as the model says; {} disagree\n",
        rows.len(),
        bad.len()
    ));
    // Unbuffered stderr: shown in the VM console and under --nocapture.
    let _ = std::io::stderr().write_all(table.as_bytes());
    if let Ok(path) = std::env::var("PORTWATCH_MATRIX") {
        std::fs::write(path, &table).expect("write the matrix");
    }
    assert!(
        bad.is_empty(),
        "the model disagrees with the kernel:\n{}",
        bad.join("\n")
    );
    assert!(agreed > rows.len() / 2, "{table}");
}

/// One row: the holder made, the model asked, the real bind made.
fn check(ns: &Netns, r: Row, port: u16, listed: bool) -> Outcome {
    let _holder = make_holder(ns, r, port);
    let binding = Binding {
        opts: portwatch_core::request::Opts {
            v6only: r.req.v6only,
            ..Default::default()
        },
        ..Binding::plain(proto(r.kind), r.req.ip(), port)
    };
    let variant = r.req.variant();
    let netns = ns.inode as u32;
    let judged = ns.run(move || {
        let batch = Batch {
            netns,
            bindings: vec![binding],
            trial: false,
            published: false,
            enter: None,
        };
        engine::judge_as(&batch, Some(r.req.uid)).expect("the engine answers")
    });
    let j = &judged.judgements[0];
    let answer = j
        .binds
        .iter()
        .find(|b| b.option == variant)
        .expect("an answer per option")
        .clone();
    let kernel = ns.run(move || real_bind(r, port));
    let kernel_text = match kernel {
        Ok(()) => "ok".to_owned(),
        Err(e) => errno_name(e),
    };
    let mut model = match answer.result {
        Answer::Ok => "ok".to_owned(),
        Answer::Fails => answer
            .errno
            .map_or_else(|| "fails".into(), |e| e.name().to_owned()),
        Answer::Unknown => "unknown".to_owned(),
    };
    if answer.options_from == Some(OptionsFrom::Socket) {
        model.push_str(" (holder's options read)");
    }
    let model_ok = answer.result == Answer::Ok;
    let agree = match answer.result {
        Answer::Unknown => unknown_as_it_must(r, &answer.note, kernel.is_ok()),
        _ if r.kind == Kind::Bound && !listed && j.sockets.is_empty() => {
            // Not listed by this kernel: the model must say so, and the
            // kernel must be what it warned of.
            match judged.unseen.as_deref() {
                Some(UNSEEN_BOUND) if model_ok && kernel.is_err() => "unseen, as it says",
                _ if model_ok == kernel.is_ok() => "yes",
                _ => "NO",
            }
        }
        _ if model_ok == kernel.is_ok()
            && (kernel.is_ok() || answer.errno.map(|e| e.0) == kernel.err()) =>
        {
            hung_on_options_read(r, &answer)
        }
        _ => "NO",
    };
    if listed && judged.unseen.is_some() {
        return Outcome {
            model: format!("{model}, unseen said on a kernel that lists them"),
            kernel: kernel_text,
            agree: "NO",
        };
    }
    Outcome {
        model,
        kernel: kernel_text,
        agree,
    }
}

/// An answer that hung on the holder's options (its SO_REUSEADDR or
/// SO_REUSEPORT decides) must have read them from the socket.
fn hung_on_options_read(r: Row, answer: &engine::BindVerdict) -> &'static str {
    let same_place =
        r.kind != Kind::TimeWait && overlapping(r) && r.req.variant() != Variant::Plain;
    let decided_by_holder = match (r.kind, r.req.variant()) {
        (Kind::Listen, Variant::Reuseaddr) => false,
        (_, Variant::Reuseport) => r.holder.uid == r.req.uid,
        _ => true,
    };
    if same_place && decided_by_holder && answer.options_from != Some(OptionsFrom::Socket) {
        return "NO (options not read)";
    }
    "yes"
}

/// Whether the row's two addresses overlap (as the kernel compares them).
fn overlapping(r: Row) -> bool {
    let (h, q) = (r.holder.ip(), r.req.ip());
    match (h.is_ipv6(), q.is_ipv6()) {
        (false, false) | (true, true) => h.is_unspecified() || q.is_unspecified() || h == q,
        (true, false) => h.is_unspecified() && !r.holder.v6only,
        (false, true) => q.is_unspecified() && !r.req.v6only,
    }
}

/// "unknown" must be the TIME_WAIT row of an option, naming it, and the
/// kernel must follow it: ok exactly when the holder set it.
fn unknown_as_it_must(r: Row, note: &Option<String>, kernel_ok: bool) -> &'static str {
    let option = r.req.variant();
    if r.kind != Kind::TimeWait || option == Variant::Plain {
        return "NO (unknown where it need not be)";
    }
    let named = note
        .as_deref()
        .is_some_and(|n| n.contains(&format!("only if the holder set {}", option.label())));
    let holder_set = match option {
        Variant::Reuseaddr => r.holder.reuseaddr,
        _ => r.holder.reuseport,
    };
    if named && holder_set == kernel_ok {
        "unknown, as it must"
    } else {
        "NO (unknown, wrongly conditioned)"
    }
}

fn proto(kind: Kind) -> Proto {
    match kind {
        Kind::Udp => Proto::Udp,
        _ => Proto::Tcp,
    }
}

/// The holder, made for real: a forked child holding the socket (none for
/// TIME_WAIT, which the kernel holds once both ends closed).
fn make_holder(ns: &Netns, r: Row, port: u16) -> Option<Process> {
    let addr = SocketAddr::new(r.holder.ip(), port);
    if r.kind == Kind::TimeWait {
        ns.run(move || time_wait_of(r.holder, addr));
        return None;
    }
    let h = r.holder;
    Some(ns.run(move || {
        Process::fork(move || {
            // SAFETY: plain system calls in the forked child.
            let as_uid = h.uid == 0 || unsafe { libc::setresuid(h.uid, h.uid, h.uid) } == 0;
            as_uid && hold_as(h, r.kind, addr)
        })
    }))
}

/// A socket with `h`'s options bound to `addr` (listening for Listen),
/// leaked on purpose: the forked child holds it until it is killed. Only
/// system calls: it runs between fork and exit.
fn hold_as(h: Side, kind: Kind, addr: SocketAddr) -> bool {
    let s = socket(addr.is_ipv6(), kind == Kind::Udp);
    if set_options(&s, h, addr).is_err() || bind(&s, addr).is_err() {
        return false;
    }
    if kind == Kind::Listen && s.listen(16).is_err() {
        return false;
    }
    std::mem::forget(s);
    true
}

fn set_options(s: &Socket, side: Side, addr: SocketAddr) -> std::io::Result<()> {
    if addr.is_ipv6() {
        s.set_only_v6(side.v6only)?;
    }
    s.set_reuse_address(side.reuseaddr)?;
    s.set_reuse_port(side.reuseport)
}

/// TIME_WAIT on `addr`: a listener with `h`'s options accepts a connection
/// and closes first, so the accepted socket (which keeps the listener's
/// options) is left in TIME_WAIT.
fn time_wait_of(h: Side, addr: SocketAddr) {
    let listener = socket(addr.is_ipv6(), false);
    set_options(&listener, h, addr).unwrap();
    bind(&listener, addr).unwrap();
    listener.listen(1).unwrap();
    let client = std::net::TcpStream::connect(addr).unwrap();
    let (served, _) = listener.accept().unwrap();
    drop(listener);
    drop(served);
    thread::sleep(Duration::from_millis(50));
    drop(client);
    until_time_wait(addr.port());
}

/// The real bind, in the calling thread's namespace: a fresh socket with
/// the request's options, made as its uid (the socket's owner is the
/// creating thread's fsuid), bound, closed. Ok, or the errno.
fn real_bind(r: Row, port: u16) -> Result<(), i32> {
    let addr = SocketAddr::new(r.req.ip(), port);
    let s = as_fsuid(r.req.uid, || socket(addr.is_ipv6(), r.kind == Kind::Udp));
    set_options(&s, r.req, addr).expect("socket options");
    bind(&s, addr)
}

/// Runs `f` with the calling thread's fsuid set to `uid`.
fn as_fsuid<T>(uid: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: setfsuid takes an integer; per thread, returns the old value.
    let before = unsafe { libc::syscall(libc::SYS_setfsuid, uid) } as u32;
    let value = f();
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_setfsuid, before) };
    value
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EADDRINUSE => "EADDRINUSE".into(),
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL".into(),
        libc::EACCES => "EACCES".into(),
        n => format!("errno {n}"),
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| format!("Linux {}", u.release().to_string_lossy()))
        .unwrap_or_else(|_| "Linux ?".into())
}
