//! Rendering events: an aligned table for people, NDJSON for programs.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::{
    diagnose::{Evidence, Holder, Verdict},
    event::Event,
};

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One aligned line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// The table's header line.
pub const HEADER: &str = "TIME(UTC)     PID      COMM             CALL    ERRNO          PROTO  ADDRESS                                   OPTS";

/// `addr:port` with IPv6 in brackets.
pub fn socket_addr(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Replaces control characters so a hostile comm cannot drive the terminal.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One table line, without the newline.
pub fn human_line(ev: &Event) -> String {
    let ts = humantime::format_rfc3339_millis(ev.ts).to_string();
    let time = ts.get(11..23).unwrap_or(&ts);
    let errno = ev.errno.map_or_else(|| "OK".to_owned(), |e| e.name());
    let opts = match &ev.opts {
        Some(o) => {
            let names = o.names();
            if names.is_empty() {
                "-".to_owned()
            } else {
                names.join(",")
            }
        }
        None => "?".to_owned(),
    };
    let mut line = format!(
        "{time:<13} {pid:<8} {comm:<16} {call:<7} {errno:<14} {proto:<6} {addr:<41} {opts}",
        pid = ev.pid,
        comm = printable(&ev.comm),
        call = ev.syscall.name(),
        proto = format!(
            "{}{}",
            ev.proto.name(),
            if matches!(ev.family, crate::event::Family::Ipv6) {
                "6"
            } else {
                ""
            }
        ),
        addr = socket_addr(ev.addr, ev.port),
    );
    if let Some(ifindex) = ev.ifindex {
        line.push_str(&format!(" dev#{ifindex}"));
    }
    if ev.folded > 0 {
        line.push_str(&format!(" (+{} identical since last shown)", ev.folded));
    }
    line
}

/// One holder for people: who, in what state, where, and its command line.
pub fn holder_line(h: &Holder) -> String {
    let mut line = format!(
        "{} {} {}",
        h.who(),
        h.state.name(),
        socket_addr(h.addr, h.port)
    );
    if let Some(left) = h.time_left_ms {
        line.push_str(&format!(", {} s left", left.div_ceil(1000)));
    }
    if let Some(remote) = &h.remote {
        line.push_str(&format!(" <-> {}", printable(remote)));
    }
    if let Some(cmd) = h.cmdline.as_deref().filter(|c| !c.is_empty()) {
        // Enough to recognise it; --json has all of it.
        let short: String = cmd.chars().take(80).collect();
        let more = if short.len() < cmd.len() { "..." } else { "" };
        line.push_str(&format!(": {}{more}", printable(&short)));
    }
    line
}

/// An event with what enrichment found, as one NDJSON object.
#[derive(Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    event: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    holders: Option<&'a RawValue>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    verdict: Option<&'a Verdict>,
}

/// The lines under an event for people: holders, diagnosis, fix.
pub fn human_block(e: &Evidence, v: &Verdict) -> String {
    let mut block = String::new();
    for h in e.holders.iter().take(3) {
        block.push_str(&format!("    held: {}\n", holder_line(h)));
    }
    if e.holders.len() > 3 {
        block.push_str(&format!("    held: ... {} more\n", e.holders.len() - 3));
    }
    let reason = serde_json::to_value(v.reason).unwrap_or_default();
    block.push_str(&format!(
        "    why:  {} [{}]\n    fix:  {}\n",
        printable(&v.diagnosis),
        reason.as_str().unwrap_or("?"),
        printable(&v.fix)
    ));
    block
}

/// `holders` as JSON, rendered once per evidence (a storm shares one).
pub fn holders_json(e: &Evidence) -> Box<RawValue> {
    serde_json::value::to_raw_value(&e.holders)
        .unwrap_or_else(|_| RawValue::from_string("[]".into()).expect("valid JSON"))
}

/// Writes one event in `format`, with its holders and verdict when it was
/// enriched (`holders` is `found`'s, pre-rendered for JSON). `repeat`:
/// people already saw this block under the previous event of the same
/// stream, so it is not printed again.
pub fn write_event(
    out: &mut impl Write,
    format: Format,
    ev: &Event,
    found: Option<(&Evidence, &Verdict)>,
    holders: Option<&RawValue>,
    repeat: bool,
) -> io::Result<()> {
    match format {
        Format::Human => {
            writeln!(out, "{}", human_line(ev))?;
            match found {
                Some(_) if repeat => writeln!(out, "    (same holder and diagnosis as above)"),
                Some((e, v)) => out.write_all(human_block(e, v).as_bytes()),
                None => Ok(()),
            }
        }
        Format::Json => {
            let report = Report {
                event: ev,
                holders,
                verdict: found.map(|(_, v)| v),
            };
            serde_json::to_writer(&mut *out, &report)?;
            out.write_all(b"\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        tests::{encode, sample},
        Clock,
    };

    fn event() -> Event {
        Event::decode(&encode(&sample()), Clock::now()).unwrap()
    }

    #[test]
    fn human_line_has_the_real_port_and_errno() {
        let line = human_line(&event());
        assert!(line.contains(" 4242 "), "{line}");
        assert!(line.contains("nginx"), "{line}");
        assert!(line.contains("EADDRINUSE"), "{line}");
        assert!(line.contains("127.0.0.1:8080"), "{line}");
        assert!(line.contains("reuseaddr"), "{line}");
        assert!(line.contains("(+3 identical"), "{line}");
        assert!(line.contains(" bind "), "{line}");
    }

    #[test]
    fn ipv6_is_bracketed() {
        assert_eq!(socket_addr("::".parse().unwrap(), 80), "[::]:80");
        assert_eq!(socket_addr("0.0.0.0".parse().unwrap(), 80), "0.0.0.0:80");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let mut ev = event();
        ev.comm = "evil\u{1b}[2J".into();
        assert!(!human_line(&ev).contains('\u{1b}'));
    }

    #[test]
    fn json_has_the_documented_keys() {
        let mut out = Vec::new();
        write_event(&mut out, Format::Json, &event(), None, None, false).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for key in [
            "ts",
            "pid",
            "tid",
            "ppid",
            "uid",
            "comm",
            "cgroup_id",
            "syscall",
            "errno",
            "proto",
            "family",
            "addr",
            "port",
            "netns",
            "opts",
            "folded",
            "source",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["errno"], "EADDRINUSE");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["syscall"], "bind");
        assert_eq!(v["addr"], "127.0.0.1");
        assert_eq!(v["port"], 8080);
        assert_eq!(v["opts"]["reuseaddr"], true);
        assert_eq!(v["opts"]["bind_address_no_port"], false);
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
