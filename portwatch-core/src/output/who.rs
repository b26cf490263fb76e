//! What `portwatch who` prints: the sockets on a port and, per socket option,
//! whether a new bind() would succeed. One JSON object with `--json`, whose
//! holder objects are [`Holder`]s, as in `watch --json`.

use std::{
    io::{self, Write},
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use super::text::printable;
use crate::{
    bindcheck::Variant,
    diagnose::Verdict,
    holders::{containers::Publishing, dnat::DnatRule, Device, Holder, State},
    request::{Errno, Proto},
};

/// Would the bind succeed?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// It would succeed now.
    Ok,
    /// It would fail (`errno` says how).
    Fails,
    /// Only if the holder set the same option, which cannot be seen.
    Unknown,
}

/// How an answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checked {
    /// A real bind() of a fresh socket, closed at once: the kernel's answer.
    TrialBind,
    /// The kernel's conflict rules applied to the sockets sock_diag listed.
    Rules,
}

/// The answer for one socket option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindVerdict {
    /// plain, reuseaddr or reuseport.
    pub option: Variant,
    /// ok, fails or unknown.
    pub result: Answer,
    /// How it fails (EADDRINUSE, EADDRNOTAVAIL...), when it does.
    pub errno: Option<Errno>,
    /// trial_bind or rules.
    pub checked: Checked,
    /// The uid the new socket was taken to belong to (SO_REUSEPORT only
    /// shares a port between sockets of one uid).
    pub uid: u32,
    /// Why the rules answered instead of a trial, or what the answer hangs on.
    pub note: Option<String>,
    /// Reason, diagnosis and fix when it does not succeed, as `watch` gives them.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

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
}

/// Writes `r` as one JSON object and a newline.
pub fn write_json(out: &mut impl Write, r: &WhoReport) -> io::Result<()> {
    serde_json::to_writer(&mut *out, r)?;
    writeln!(out)
}

/// Writes `r` for people: a table of sockets, then the answers.
pub fn write_human(out: &mut impl Write, r: &WhoReport) -> io::Result<()> {
    let what = format!("{} port {}", r.proto.name(), r.port);
    if r.sockets.is_empty() {
        writeln!(out, "no socket on {what} (network namespace {})", r.netns)?;
    } else {
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
    }
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
        let how = match b.checked {
            Checked::TrialBind => "trial bind".to_owned(),
            Checked::Rules => "rules".to_owned(),
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
    for p in &r.published {
        let name = p.container.label();
        writeln!(
            out,
            "published: {} port {} belongs to {name} (-p {}); a bind here may succeed, but that traffic goes to the container",
            r.proto.name(),
            r.port,
            printable(&p.mapping)
        )?;
        let stop = p
            .container
            .stop_command()
            .unwrap_or_else(|| "stop it".into());
        writeln!(
            out,
            "fix:       `{}`, or publish {name} on another host port; or give this service another port",
            printable(&stop)
        )?;
    }
    for d in &r.dnat {
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
    }
    let plain = r.verdict.as_ref();
    if let Some(v) = plain {
        verdict_lines(out, "", v)?;
    }
    // The other options' explanations, when they say something else.
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
