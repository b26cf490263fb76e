//! What `portwatch who` prints: the sockets on a port and, per socket option,
//! whether a new bind() would succeed. One JSON object with `--json`, whose
//! holder objects are [`Holder`]s, as in `watch --json`.

use std::{
    io::{self, Write},
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use super::text::printable;
// The engine's answers, printed here; named from here too, as before.
pub use crate::engine::{Answer, BindVerdict, Checked};
use crate::{
    bindcheck::Variant,
    diagnose::Verdict,
    engine::Judgement,
    holders::{
        containers::Publishing, dnat::DnatRule, sockopts::OptionsFrom, Device, Holder, State,
    },
    request::Proto,
};

/// Everything `who` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoReport {
    /// tcp or udp.
    pub proto: Proto,
    /// The address a new bind() would ask for.
    pub addr: IpAddr,
    /// The device it would be bound to (`--device`), if any. Absent from
    /// older reports.
    #[serde(default)]
    pub device: Option<Device>,
    /// The port.
    pub port: u16,
    /// The network namespace looked in (inode).
    pub netns: u32,
    /// A plain bind() of addr:port would succeed now, and no container
    /// or DNAT rule takes the port's traffic (exit status 0).
    pub free: bool,
    /// Running containers whose published port this is (Docker's port
    /// bindings), not already named as a socket's holder.
    pub published: Vec<Publishing>,
    /// DNAT rules that send this port's traffic elsewhere.
    pub dnat: Vec<DnatRule>,
    /// Every socket on the port, one each, in or out of the way (`cross_family`
    /// marks those in the way from the other family).
    pub sockets: Vec<Holder>,
    /// plain, SO_REUSEADDR, SO_REUSEPORT.
    pub binds: Vec<BindVerdict>,
    /// The plain bind's reason, diagnosis and fix, when it would fail.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// What may hold the port without being listed (a TCP socket bound
    /// without listen(), on a kernel before 6.10); absent when nothing can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseen: Option<String>,
    /// The commands of this host the fixes may name.
    #[serde(skip)]
    pub tools: crate::tools::HostTools,
    /// How the sockets' owners were found (`"walk"`). Absent from older
    /// reports.
    #[serde(default)]
    pub lookup: crate::holders::OwnerLookup,
}

impl WhoReport {
    /// The engine's judgement of one binding, looked at in network
    /// namespace `netns`; `unseen`: what the batch's dumps could not list.
    pub fn new(netns: u32, j: Judgement, unseen: Option<String>) -> Self {
        Self {
            proto: j.binding.proto,
            addr: j.binding.addr,
            device: j.device,
            port: j.binding.port,
            netns,
            free: j.free,
            published: j.published,
            dnat: j.dnat,
            sockets: j.sockets,
            binds: j.binds,
            verdict: j.verdict,
            unseen,
            tools: j.tools,
            lookup: j.lookup,
        }
    }
}

/// Writes `r` as one JSON object and a newline.
pub fn write_json(out: &mut impl Write, r: &WhoReport) -> io::Result<()> {
    serde_json::to_writer(&mut *out, r)?;
    writeln!(out)
}

/// Writes `r` for people: a table of sockets, then the answers.
pub fn write_human(out: &mut impl Write, r: &WhoReport) -> io::Result<()> {
    sockets_table(out, r)?;
    bind_answers(out, r)?;
    published_lines(out, r)?;
    dnat_lines(out, r)?;
    verdicts(out, r)
}

/// The sockets on the port, one line each under a header, or that there are
/// none.
fn sockets_table(out: &mut impl Write, r: &WhoReport) -> io::Result<()> {
    let what = format!("{} port {}", r.proto.name(), r.port);
    if r.sockets.is_empty() {
        return writeln!(out, "no socket on {what} (network namespace {})", r.netns);
    }
    writeln!(
        out,
        "{what}, network namespace {}: {} socket(s)",
        r.netns,
        r.sockets.len()
    )?;
    writeln!(
        out,
        "{:<12} {:<28} {:<28} {:>6} {:>6} {:>8} {:<16} UNIT/CONTAINER",
        "STATE", "LOCAL", "REMOTE", "LEFT", "UID", "PID", "COMM"
    )?;
    for h in &r.sockets {
        socket_line(out, h)?;
    }
    Ok(())
}

/// Whether bind() would succeed now, one line per option set tried.
fn bind_answers(out: &mut impl Write, r: &WhoReport) -> io::Result<()> {
    writeln!(
        out,
        "\nbind() {} {}{} now:",
        r.proto.name(),
        SocketAddr::new(r.addr, r.port),
        r.device
            .as_ref()
            .map(|d| format!(" on {}", printable(&d.label())))
            .unwrap_or_default()
    )?;
    for b in &r.binds {
        let result = match b.result {
            Answer::Ok => "ok",
            Answer::Fails => "fails",
            Answer::Unknown => "unknown",
        };
        let how = match (b.checked, b.options_from) {
            (Checked::TrialBind, _) => "trial bind".to_owned(),
            (Checked::Rules, None) => "rules".to_owned(),
            (Checked::Rules, Some(OptionsFrom::Socket)) => "rules + holder's options".to_owned(),
            (Checked::Rules, Some(OptionsFrom::Record)) => "rules + tracer's record".to_owned(),
        };
        let mut line = format!(
            "  {:<13} {:<8} {:<14} {how}",
            b.option.label(),
            result,
            b.errno.map(|e| e.name()).unwrap_or_default()
        );
        if b.option == Variant::Reuseport {
            line.push_str(&format!(", as uid {}", b.uid));
        }
        if let Some(note) = &b.note {
            line.push_str(&format!(": {note}"));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    if let Some(unseen) = &r.unseen {
        writeln!(out, "  note: {unseen}")?;
    }
    Ok(())
}

/// Containers that publish the port, each with the fix.
fn published_lines(out: &mut impl Write, r: &WhoReport) -> io::Result<()> {
    for p in &r.published {
        let name = p.container.label();
        writeln!(
            out,
            "published: {} port {} belongs to {name} (-p {}); a bind here may succeed, but that traffic goes to the container",
            r.proto.name(),
            r.port,
            printable(&p.mapping)
        )?;
        let stop = match crate::diagnose::container_stop(&p.container, &r.tools) {
            Some(cmd) => format!("`{cmd}`"),
            None => "stop it".into(),
        };
        writeln!(
            out,
            "fix:       {}, or {}; or give this service another port",
            printable(&stop),
            printable(&crate::diagnose::publish_elsewhere(
                &p.container,
                &p.mapping,
                &r.tools
            ))
        )?;
    }
    Ok(())
}

/// Firewall rules that redirect the port.
fn dnat_lines(out: &mut impl Write, r: &WhoReport) -> io::Result<()> {
    for d in &r.dnat {
        if d.service.is_some() || d.from == "ipvs" {
            if let Some((diagnosis, fix)) =
                crate::diagnose::steered_to_service(&r.proto.name(), r.port, d)
            {
                writeln!(out, "service:   {}", printable(&diagnosis))?;
                writeln!(out, "fix:       {}", printable(&fix))?;
                continue;
            }
        }
        writeln!(
            out,
            "dnat:      {} port {} is redirected{} by this {} rule: {}",
            r.proto.name(),
            r.port,
            d.to.as_deref()
                .map(|t| format!(" to {}", printable(t)))
                .unwrap_or_default(),
            d.from,
            printable(&d.rule)
        )?;
        if d.pod.is_some() {
            if let Some((diagnosis, fix)) =
                crate::diagnose::steered_to_service(&r.proto.name(), r.port, d)
            {
                writeln!(out, "hostport:  {}", printable(&diagnosis))?;
                writeln!(out, "fix:       {}", printable(&fix))?;
            }
        }
    }
    Ok(())
}

/// The verdict on a plain bind(), then the other options' explanations
/// where they say something else.
fn verdicts(out: &mut impl Write, r: &WhoReport) -> io::Result<()> {
    let plain = r.verdict.as_ref();
    if let Some(v) = plain {
        verdict_lines(out, "", v)?;
    }
    for b in &r.binds[1..] {
        if let Some(v) = &b.verdict {
            if plain.is_none_or(|p| p.reason != v.reason) {
                verdict_lines(out, &format!("{}: ", b.option.label()), v)?;
            }
        }
    }
    Ok(())
}

fn verdict_lines(out: &mut impl Write, prefix: &str, v: &Verdict) -> io::Result<()> {
    writeln!(out, "{prefix}reason:    {}", v.reason.as_str())?;
    writeln!(out, "{prefix}diagnosis: {}", printable(&v.diagnosis))?;
    writeln!(out, "{prefix}fix:       {}", printable(&v.fix))
}

fn socket_line(out: &mut impl Write, h: &Holder) -> io::Result<()> {
    let dash = || "-".to_owned();
    let pid = match (h.pid, h.pids.len()) {
        (Some(p), n) if n > 1 => format!("{p}+{}", n - 1),
        (Some(p), _) => p.to_string(),
        (None, _) => dash(),
    };
    // What its owner calls it: the socket unit systemd holds it for, the
    // container (also for the runtime helper publishing its port), the
    // unit, else the kernel device.
    let owner = match (&h.socket_unit, &h.container, &h.unit, &h.kernel) {
        (Some(s), _, _, _) => s.unit.clone(),
        (None, Some(c), _, _) => c.label(),
        (None, None, Some(u), _) => u.clone(),
        (None, None, None, Some(k)) => format!("{} {}", k.kind, k.name),
        (None, None, None, None) => dash(),
    };
    let state = match (h.state, &h.remote) {
        (State::Udp, Some(_)) => "UDP(conn)",
        (s, _) => s.name(),
    };
    writeln!(
        out,
        "{:<12} {:<28} {:<28} {:>6} {:>6} {:>8} {:<16} {}",
        state,
        SocketAddr::new(h.addr, h.port).to_string(),
        h.remote.as_deref().map_or_else(dash, printable),
        h.time_left_ms
            .map_or_else(dash, |ms| format!("{}s", ms.div_ceil(1000))),
        h.uid.map_or_else(dash, |u| u.to_string()),
        pid,
        h.comm.as_deref().map_or_else(dash, printable),
        printable(&owner),
    )?;
    if let Some(d) = &h.device {
        let apart = h
            .apart
            .map(|a| format!("; {}: not in the way", a.label()))
            .unwrap_or_default();
        writeln!(out, "{:<12} bound to {}{apart}", "", printable(&d.label()))?;
    }
    if let Some(cmd) = h.cmdline.as_deref().filter(|c| !c.is_empty()) {
        let short: String = cmd.chars().take(100).collect();
        let more = if short.len() < cmd.len() { "..." } else { "" };
        writeln!(out, "{:<12} cmdline: {}{more}", "", printable(&short))?;
    }
    Ok(())
}
