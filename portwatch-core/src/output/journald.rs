//! Events as structured systemd journal entries, written with journald's
//! native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL): one datagram per
//! event to `/run/systemd/journal/socket`, `KEY=value` lines, and a value
//! that holds a newline as `KEY\n`, its length (64-bit little endian), the
//! bytes, `\n`. Twenty lines did not justify a crate.
//!
//! Used by `watch` when its stdout is the journal (systemd sets
//! `JOURNAL_STREAM` to that stream's device and inode), so under the unit
//! `journalctl -u portwatch PORTWATCH_PORT=8080` finds events by field, and
//! `PORTWATCH_JSON` carries the NDJSON line `report` reads back.

use std::{
    io,
    os::unix::{fs::MetadataExt as _, net::UnixDatagram},
};

use crate::{
    diagnose::Verdict,
    event::Event,
    holders::Evidence,
    output::text::{human_block, human_line},
};

const SOCKET: &str = "/run/systemd/journal/socket";

/// A connection to journald.
pub struct Journald {
    sock: UnixDatagram,
}

impl Journald {
    /// Connected when stdout is the journal's stream (`JOURNAL_STREAM` is
    /// `DEVICE:INODE` of it); None otherwise, or when the socket is missing.
    pub fn when_stdout_is_journal() -> Option<Self> {
        let stream = std::env::var("JOURNAL_STREAM").ok()?;
        let (dev, ino) = stream.split_once(':')?;
        let meta = std::fs::metadata("/proc/self/fd/1").ok()?;
        if dev.parse() != Ok(meta.dev()) || ino.parse() != Ok(meta.ino()) {
            return None;
        }
        let sock = UnixDatagram::unbound().ok()?;
        sock.connect(SOCKET).ok()?;
        Some(Self { sock })
    }

    /// Sends one event. An entry too large for one datagram is sent
    /// without its `PORTWATCH_JSON` copy rather than not at all.
    pub fn send(
        &self,
        ev: &Event,
        found: Option<(&Evidence, &Verdict)>,
        json_line: &[u8],
    ) -> io::Result<()> {
        match self.sock.send(&entry(ev, found, Some(json_line))) {
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                self.sock.send(&entry(ev, found, None)).map(drop)
            }
            r => r.map(drop),
        }
    }
}

/// Appends one field; binary-safe.
fn field(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// Pure: the datagram for one event.
pub fn entry(
    ev: &Event,
    found: Option<(&Evidence, &Verdict)>,
    json_line: Option<&[u8]>,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1024);
    let mut f = |k: &str, v: &str| field(&mut buf, k, v.as_bytes());
    let mut message = human_line(ev);
    if let Some((e, v)) = found {
        message.push('\n');
        message.push_str(human_block(e, v).trim_end());
    }
    f("MESSAGE", &message);
    // warning: a failure someone should look at, not an error of portwatch.
    f("PRIORITY", "4");
    f("SYSLOG_IDENTIFIER", "portwatch");
    f("PORTWATCH_PORT", &ev.port.to_string());
    f("PORTWATCH_PROTO", &ev.proto.name());
    f("PORTWATCH_ADDR", &ev.addr.to_string());
    f("PORTWATCH_SYSCALL", ev.syscall.name());
    if let Some(errno) = ev.errno {
        f("PORTWATCH_ERRNO", &errno.name());
    }
    f("PORTWATCH_PID", &ev.pid.to_string());
    f("PORTWATCH_UID", &ev.uid.to_string());
    f("PORTWATCH_COMM", &ev.comm);
    if let Some((e, v)) = found {
        f("PORTWATCH_REASON", v.reason.as_str());
        f("PORTWATCH_DIAGNOSIS", &v.diagnosis);
        f("PORTWATCH_FIX", &v.fix);
        if let Some(h) = e.holders.first() {
            if let Some(pid) = h.pid {
                f("PORTWATCH_HOLDER_PID", &pid.to_string());
            }
            if let Some(comm) = &h.comm {
                f("PORTWATCH_HOLDER_COMM", comm);
            }
            let unit = h.socket_unit.as_ref().map(|s| &s.unit).or(h.unit.as_ref());
            if let Some(unit) = unit {
                f("PORTWATCH_HOLDER_UNIT", unit);
            }
            if let Some(c) = &h.container {
                f(
                    "PORTWATCH_HOLDER_CONTAINER",
                    c.name.as_deref().unwrap_or(&c.id),
                );
                f("PORTWATCH_HOLDER_CONTAINER_ID", &c.id);
            }
            if let Some(k) = &h.kernel {
                f("PORTWATCH_HOLDER_DEVICE", &k.name);
            }
        }
    }
    if let Some(line) = json_line {
        field(&mut buf, "PORTWATCH_JSON", line.trim_ascii_end());
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Clock,
        event::fixtures::{encode, sample},
    };

    /// Splits a datagram back into fields, as journald does.
    fn parse(mut d: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while !d.is_empty() {
            let end = d.iter().position(|&b| b == b'\n' || b == b'=').unwrap();
            let key = String::from_utf8(d[..end].to_vec()).unwrap();
            if d[end] == b'=' {
                let nl = d.iter().position(|&b| b == b'\n').unwrap();
                out.push((key, d[end + 1..nl].to_vec()));
                d = &d[nl + 1..];
            } else {
                let len = u64::from_le_bytes(d[end + 1..end + 9].try_into().unwrap()) as usize;
                out.push((key, d[end + 9..end + 9 + len].to_vec()));
                assert_eq!(d[end + 9 + len], b'\n');
                d = &d[end + 10 + len..];
            }
        }
        out
    }

    #[test]
    fn fields_round_trip_and_newlines_are_length_prefixed() {
        let mut ev = Event::decode(&encode(&sample()), Clock::now()).unwrap();
        ev.comm = "evil\nPRIORITY=0".into();
        let d = entry(&ev, None, Some(b"{\"port\":8080}\n"));
        let fields = parse(&d);
        let get = |k: &str| {
            fields
                .iter()
                .filter(|(key, _)| key == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("PORTWATCH_PORT"), [ev.port.to_string()]);
        assert_eq!(get("PORTWATCH_PROTO"), ["tcp"]);
        // A newline in a value cannot start a field of its own.
        assert_eq!(get("PORTWATCH_COMM"), ["evil\nPRIORITY=0"]);
        assert_eq!(get("PRIORITY"), ["4"]);
        assert_eq!(get("PORTWATCH_JSON"), ["{\"port\":8080}"]);
        assert!(get("MESSAGE")[0].contains("EADDRINUSE"));
    }
}
