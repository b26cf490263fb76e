//! The NDJSON schema, in one place: what `watch --json` writes (one object
//! per failure: the event's keys, `holders`, `reason`, `diagnosis`, `fix`),
//! and what `report` reads back. Both directions go through the same types,
//! so the README's schema cannot drift between writer and reader.

use std::{
    io::{self, Write},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    capture::Event,
    diagnose::Verdict,
    holders::{Evidence, Holder},
};

/// Timestamps as RFC 3339 with nanoseconds, UTC (`2026-11-24T18:07:56.307967050Z`).
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `t`.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_nanos(*t))
    }

    /// Reads what [`serialize`] wrote (any RFC 3339 time in UTC).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

/// One failure as written: the event, and what enrichment found. The
/// holders come pre-rendered, since a storm shares one rendering.
#[derive(Serialize)]
struct RecordOut<'a> {
    #[serde(flatten)]
    event: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    holders: Option<&'a RawValue>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    verdict: Option<&'a Verdict>,
}

/// One failure as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The captured call.
    #[serde(flatten)]
    pub event: Event,
    /// What held the port, when holders were looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders: Option<Vec<Holder>>,
    /// Reason, diagnosis and fix, when holders were looked up.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

impl Record {
    /// Parses one NDJSON line.
    pub fn parse(line: &str) -> serde_json::Result<Self> {
        serde_json::from_str(line)
    }

    /// Parses one NDJSON line like [`Record::parse`], several times faster:
    /// serde's `flatten` buffers the whole object before reading it, so
    /// this reads the line once per part instead (`Event`, `holders`,
    /// `Verdict`: each part's own derived reader, skipping the other keys).
    /// Same types, same result (tested against `parse`); for `report`,
    /// which reads millions of lines.
    pub fn parse_fast(line: &str) -> serde_json::Result<Self> {
        #[derive(Deserialize)]
        struct Holders {
            #[serde(default)]
            holders: Option<Vec<Holder>>,
        }
        let event: Event = serde_json::from_str(line)?;
        let holders = serde_json::from_str::<Holders>(line)?.holders;
        let verdict = if line.contains("\"reason\"") {
            serde_json::from_str::<Verdict>(line).ok()
        } else {
            None
        };
        Ok(Self {
            event,
            holders,
            verdict,
        })
    }

    /// When it happened (shortcut for `event.ts`).
    pub fn ts(&self) -> SystemTime {
        self.event.ts
    }
}

/// `holders` as JSON, rendered once per evidence (a storm shares one).
pub fn holders_json(e: &Evidence) -> Box<RawValue> {
    serde_json::value::to_raw_value(&e.holders)
        .unwrap_or_else(|_| RawValue::from_string("[]".into()).expect("valid JSON"))
}

/// Writes one failure as a line: `holders` is `verdict`'s evidence,
/// pre-rendered by [`holders_json`].
pub fn write(
    out: &mut impl Write,
    ev: &Event,
    holders: Option<&RawValue>,
    verdict: Option<&Verdict>,
) -> io::Result<()> {
    serde_json::to_writer(
        &mut *out,
        &RecordOut {
            event: ev,
            holders,
            verdict,
        },
    )?;
    out.write_all(b"\n")
}

/// What happened to a port of interest (`watch --record` journals only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifeKind {
    /// A socket started listening on the port.
    Listen,
    /// A listening socket on the port closed: the port is free to listen on.
    Closed,
    /// Connections on the port left TIME_WAIT sockets (`count` of them).
    TimeWait,
}

/// One moment in the life of a port, as journalled: a line of the form
/// `{"type":"port","ts":...,"event":"listen",...}`. `type` comes first, so
/// a reader can tell it from a failure without parsing the whole line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortLife {
    /// Always `"port"`.
    #[serde(rename = "type")]
    pub kind_tag: PortTag,
    /// When.
    #[serde(with = "rfc3339")]
    pub ts: SystemTime,
    /// What happened.
    pub event: LifeKind,
    /// The local port.
    pub port: u16,
    /// Transport protocol (always TCP: the tracepoint reports TCP states).
    pub proto: crate::request::Proto,
    /// Address family of the socket.
    pub family: crate::request::Family,
    /// Its local address.
    pub addr: std::net::IpAddr,
    /// Network namespace inode.
    pub netns: u32,
    /// The process that listened, or closed (the current task then).
    pub pid: u32,
    /// Its comm (untrusted).
    pub comm: String,
    /// `closed`: the pid the kernel recorded listening on that socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_pid: Option<u32>,
    /// The socket's kernel address, hashed: pairs a listen with its close.
    pub socket: u64,
    /// `time_wait`: sockets since the previous `time_wait` line of the port.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The `type` tag of [`PortLife`] lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortTag {
    /// `"port"`.
    Port,
}

/// The prefix every [`PortLife`] line starts with.
pub const PORT_LINE_PREFIX: &str = "{\"type\":\"port\"";

/// One journal line, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A failure (or with `--all`, a success), as `watch --json` writes it.
    Event(Box<Record>),
    /// A moment in a port's life.
    Port(PortLife),
    /// Identical failures folded after the last one shown of their stream
    /// (the fold tail, journalled at exit).
    Repeat(crate::capture::Repeat),
    /// A notice (`{"type":...}`) of a saved `watch --json 2>&1`: not an event.
    Notice,
}

/// Parses one journal or `watch --json` line.
pub fn parse_line(line: &str) -> serde_json::Result<Line> {
    if line.starts_with(PORT_LINE_PREFIX) {
        return serde_json::from_str(line).map(Line::Port);
    }
    if line.starts_with("{\"type\":\"repeat\"") {
        return match serde_json::from_str(line)? {
            super::Notice::Repeat(r) => Ok(Line::Repeat(r)),
            _ => Ok(Line::Notice),
        };
    }
    if line.starts_with("{\"type\":") {
        // Notices: checked to be JSON objects, not kept.
        serde_json::from_str::<serde::de::IgnoredAny>(line)?;
        return Ok(Line::Notice);
    }
    Record::parse_fast(line).map(|r| Line::Event(Box::new(r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        capture::{
            event_tests::{encode, sample},
            Clock,
        },
        diagnose::diagnose,
        holders::{Seen, State},
    };

    fn event() -> Event {
        Event::decode(&encode(&sample()), Clock::now()).unwrap()
    }

    fn evidence() -> Evidence {
        Evidence {
            holders: vec![Holder {
                pid: Some(100),
                comm: Some("old\u{1b}[2J".into()),
                cmdline: Some("old --serve <script>".into()),
                uid: Some(33),
                state: State::Listen,
                addr: "::".parse().unwrap(),
                port: 8080,
                exited: false,
                unit: Some("old.service".into()),
                container: None,
                pids: vec![100, 101],
                sockets: 1,
                time_left_ms: None,
                remote: None,
                v6only: Some(false),
                reuseaddr: Some(true),
                reuseport: None,
                cross_family: true,
                seen: Seen::KernelAndSockDiag,
            }],
            ..Evidence::default()
        }
    }

    #[test]
    fn json_has_the_documented_keys() {
        let mut out = Vec::new();
        write(&mut out, &event(), None, None).unwrap();
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

    #[test]
    fn what_is_written_reads_back_the_same() {
        let mut ev = event();
        // The kernel's record is reported through `holders`, not as itself.
        ev.record = None;
        let e = evidence();
        let verdict = diagnose(&ev.request(), &e);
        let mut out = Vec::new();
        write(&mut out, &ev, Some(&holders_json(&e)), Some(&verdict)).unwrap();
        let line = std::str::from_utf8(&out).unwrap().trim_end();
        let back = Record::parse(line).unwrap();
        assert_eq!(Record::parse_fast(line).unwrap(), back);
        assert_eq!(
            back,
            Record {
                event: ev.clone(),
                holders: Some(e.holders.clone()),
                verdict: Some(verdict),
            }
        );
        // And a line without enrichment (`--no-holders`).
        let mut out = Vec::new();
        write(&mut out, &ev, None, None).unwrap();
        let back = Record::parse(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!((&back.holders, &back.verdict), (&None, &None));
        assert_eq!(back.event, ev);
        assert_eq!(
            Record::parse_fast(std::str::from_utf8(&out).unwrap()).unwrap(),
            back
        );
        // Writing what was read gives the same line.
        let again = serde_json::to_string(&back).unwrap();
        assert_eq!(again, std::str::from_utf8(&out).unwrap().trim_end());
    }

    #[test]
    fn port_life_reads_back_and_is_told_apart() {
        let life = PortLife {
            kind_tag: PortTag::Port,
            ts: SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_123_456_789),
            event: LifeKind::Closed,
            port: 8080,
            proto: crate::request::Proto::Tcp,
            family: crate::request::Family::Ipv4,
            addr: "127.0.0.1".parse().unwrap(),
            netns: 4026531840,
            pid: 808,
            comm: "nginx".into(),
            holder_pid: Some(808),
            socket: 77,
            count: 0,
        };
        let line = serde_json::to_string(&life).unwrap();
        assert!(line.starts_with(PORT_LINE_PREFIX), "{line}");
        assert_eq!(parse_line(&line).unwrap(), Line::Port(life));
        let mut out = Vec::new();
        write(&mut out, &event(), None, None).unwrap();
        let line = std::str::from_utf8(&out).unwrap().trim_end();
        assert!(matches!(parse_line(line).unwrap(), Line::Event(_)));
        assert_eq!(
            parse_line("{\"type\":\"ready\",\"startup_ms\":3}").unwrap(),
            Line::Notice
        );
        assert!(parse_line("{\"type\":\"port\",\"ts\":1}").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for line in [
            "",
            "{",
            "null",
            "{\"ts\":\"yesterday\"}",
            "{\"pid\":-1}",
            "[1,2,3]",
        ] {
            assert!(Record::parse(line).is_err(), "{line:?}");
            assert!(Record::parse_fast(line).is_err(), "{line:?}");
        }
    }
}
