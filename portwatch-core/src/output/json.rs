//! The NDJSON schema, in one place: what `watch --json` writes (one object
//! per failure: the event's keys, `holders`, `reason`, `diagnosis`, `fix`),
//! and what `report` reads back. Both directions go through the same types,
//! so the README's schema cannot drift between writer and reader.

use std::{
    borrow::Cow,
    collections::HashMap,
    io::{self, Write},
    net::IpAddr,
    sync::OnceLock,
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    diagnose::{Reason, Verdict},
    event::{Event, Source},
    holders::{Evidence, Holder, State},
    request::{Errno, Family, Opts, Proto, Syscall, MAX_ERRNO},
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
    #[serde(skip_serializing_if = "Option::is_none")]
    enriched: Option<bool>,
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
    /// False when the holders are the kernel's record alone: the lookup was
    /// shed (failures came faster than lookups) or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enriched: Option<bool>,
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
            #[serde(default)]
            enriched: Option<bool>,
        }
        let event: Event = serde_json::from_str(line)?;
        let Holders { holders, enriched } = serde_json::from_str::<Holders>(line)?;
        let verdict = if line.contains("\"reason\"") {
            serde_json::from_str::<Verdict>(line).ok()
        } else {
            None
        };
        Ok(Self {
            event,
            holders,
            enriched,
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
/// pre-rendered by [`holders_json`]; `enriched` whether that evidence is
/// more than the kernel's record (see [`Evidence::shed`]).
pub fn write(
    out: &mut impl Write,
    ev: &Event,
    holders: Option<&RawValue>,
    enriched: Option<bool>,
    verdict: Option<&Verdict>,
) -> io::Result<()> {
    serde_json::to_writer(
        &mut *out,
        &RecordOut {
            event: ev,
            holders,
            enriched,
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
    pub proto: Proto,
    /// Address family of the socket.
    pub family: Family,
    /// Its local address.
    pub addr: IpAddr,
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
    Repeat(crate::fold::Repeat),
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

/// A borrowed view of one failure line, for `report`, which reads millions
/// of them: the keys the report uses, strings borrowed from the line (a
/// `Cow` owns only when the JSON escapes something), timestamps parsed
/// cheaply, and inside `holders` only what the report reads (the other
/// holder keys are skipped unbuffered). It sits here, next to [`Record`],
/// and is tested to agree with [`Record::parse`] on written lines, so the
/// schema cannot drift between the two.
///
/// Stricter and looser than [`Record`] only on broken lines: the event's
/// keys are all checked and typed as in [`Event`], the holders' unused keys
/// are not; a verdict key of the wrong type makes the line unreadable here,
/// where [`Record`] drops the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordView<'a> {
    /// When it happened.
    #[serde(deserialize_with = "rfc3339::deserialize")]
    pub ts: SystemTime,
    /// Process id.
    pub pid: u32,
    /// Thread id (checked, not used).
    pub tid: u32,
    /// Parent process id (checked, not used).
    pub ppid: u32,
    /// Real uid (checked, not used).
    pub uid: u32,
    /// Real gid (checked, not used).
    pub gid: u32,
    /// Thread name (untrusted).
    #[serde(borrow)]
    pub comm: Cow<'a, str>,
    /// cgroup v2 id (checked, not used).
    pub cgroup_id: u64,
    /// bind or listen.
    pub syscall: Syscall,
    /// The error's canonical name (`EADDRINUSE`), `None` for a success.
    #[serde(default, deserialize_with = "errno_view")]
    pub errno: Option<Cow<'static, str>>,
    /// The raw return value.
    pub ret: i32,
    /// Transport protocol.
    pub proto: Proto,
    /// Address family.
    pub family: Family,
    /// Requested (bind) or bound (listen) address.
    pub addr: IpAddr,
    /// Requested (bind) or bound (listen) port.
    pub port: u16,
    /// Network namespace inode.
    pub netns: u32,
    /// The fd argument.
    pub fd: Option<i32>,
    /// SO_BINDTODEVICE interface index.
    pub ifindex: Option<u32>,
    /// Socket options.
    pub opts: Option<Opts>,
    /// Identical failures folded into this one.
    pub folded: u64,
    /// Hook that saw it.
    pub source: Source,
    /// What held the port, when holders were looked up.
    #[serde(default, borrow)]
    pub holders: Option<HoldersView<'a>>,
    /// The verdict's reason code, as written.
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub reason: Option<Cow<'a, str>>,
    /// The verdict's sentence.
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub diagnosis: Option<Cow<'a, str>>,
    /// The verdict's fix.
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub fix: Option<Cow<'a, str>>,
}

/// What the report reads of one holder.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HolderView<'a> {
    /// Owner pid (None for TIME_WAIT).
    pub pid: Option<u32>,
    /// Its comm (untrusted).
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub comm: Option<Cow<'a, str>>,
    /// Its command line (untrusted).
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub cmdline: Option<Cow<'a, str>>,
    /// Socket state.
    pub state: State,
}

/// A line's `holders`: the first one inline, so the common line (one
/// holder) allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldersView<'a> {
    first: Option<HolderView<'a>>,
    rest: Vec<HolderView<'a>>,
}

impl<'a> HoldersView<'a> {
    /// The holders, in order.
    pub fn iter(&self) -> impl Iterator<Item = &HolderView<'a>> + Clone {
        self.first.iter().chain(self.rest.iter())
    }

    /// No holder.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push(&mut self, h: HolderView<'a>) {
        if self.first.is_none() {
            self.first = Some(h);
        } else {
            self.rest.push(h);
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for HoldersView<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Seq<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Seq<'a> {
            type Value = HoldersView<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of holders")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = HoldersView::default();
                while let Some(h) = seq.next_element::<HolderView<'a>>()? {
                    out.push(h);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Seq(std::marker::PhantomData))
    }
}

/// An optional string, borrowed from the line unless it has escapes (serde
/// borrows a bare `Cow` field, but an `Option<Cow>` would always own).
fn opt_cow<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(<Option<Borrowed<'a>>>::deserialize(d)?.map(|b| b.0))
}

/// Errno names, made once: index n - 1 is errno n's name.
fn errno_names() -> &'static (Vec<String>, HashMap<String, usize>) {
    static NAMES: OnceLock<(Vec<String>, HashMap<String, usize>)> = OnceLock::new();
    NAMES.get_or_init(|| {
        let names: Vec<String> = (1..=MAX_ERRNO).map(|n| Errno(n).name()).collect();
        let index = names.iter().cloned().zip(0..).collect();
        (names, index)
    })
}

/// `e`'s name, borrowed from the table when it has one.
fn errno_cow(e: Errno) -> Cow<'static, str> {
    let (names, _) = errno_names();
    match usize::try_from(e.0 - 1).ok().and_then(|i| names.get(i)) {
        Some(n) => Cow::Borrowed(n.as_str()),
        None => Cow::Owned(e.name()),
    }
}

/// Reads an errno as [`Errno`] does, giving its canonical name: the name as
/// written is looked up exactly first (the journal writes canonical names),
/// anything else goes through [`Errno`]'s parser.
fn errno_view<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'static, str>>, D::Error> {
    let Some(s) = <Option<Cow<'de, str>>>::deserialize(d)? else {
        return Ok(None);
    };
    let (names, index) = errno_names();
    if let Some(&i) = index.get(s.as_ref()) {
        return Ok(Some(Cow::Borrowed(names[i].as_str())));
    }
    s.parse::<Errno>()
        .map(|e| Some(errno_cow(e)))
        .map_err(serde::de::Error::custom)
}

impl<'a> RecordView<'a> {
    /// Parses one NDJSON failure line, borrowing from it.
    pub fn parse(line: &'a [u8]) -> serde_json::Result<Self> {
        // One UTF-8 check of the whole line is cheaper than serde_json's
        // check of each of its ~70 strings (from_slice).
        let line = std::str::from_utf8(line).map_err(serde::de::Error::custom)?;
        serde_json::from_str(line)
    }

    /// The view of a parsed [`Record`] (the same thing as [`RecordView::parse`]
    /// of the line it came from).
    pub fn of(r: &'a Record) -> Self {
        let e = &r.event;
        let v = r.verdict.as_ref();
        Self {
            ts: e.ts,
            pid: e.pid,
            tid: e.tid,
            ppid: e.ppid,
            uid: e.uid,
            gid: e.gid,
            comm: Cow::Borrowed(&e.comm),
            cgroup_id: e.cgroup_id,
            syscall: e.syscall,
            errno: e.errno.map(errno_cow),
            ret: e.ret,
            proto: e.proto,
            family: e.family,
            addr: e.addr,
            port: e.port,
            netns: e.netns,
            fd: e.fd,
            ifindex: e.ifindex,
            opts: e.opts,
            folded: e.folded,
            source: e.source,
            holders: r.holders.as_ref().map(|hs| {
                let mut out = HoldersView::default();
                for h in hs {
                    out.push(HolderView {
                        pid: h.pid,
                        comm: h.comm.as_deref().map(Cow::Borrowed),
                        cmdline: h.cmdline.as_deref().map(Cow::Borrowed),
                        state: h.state,
                    });
                }
                out
            }),
            reason: v.map(|v| {
                Cow::Owned(
                    serde_json::to_value(v.reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                )
            }),
            diagnosis: v.map(|v| Cow::Borrowed(v.diagnosis.as_str())),
            fix: v.map(|v| Cow::Borrowed(v.fix.as_str())),
        }
    }

    /// The verdict's reason code and diagnosis, when the line has a whole
    /// verdict with a known reason (as [`Record::verdict`] would be `Some`).
    pub fn verdict(&self) -> Option<(&str, &str)> {
        let (reason, diagnosis, _) = (
            self.reason.as_deref()?,
            self.diagnosis.as_deref()?,
            self.fix.as_deref()?,
        );
        let known = Reason::deserialize(serde::de::value::BorrowedStrDeserializer::<
            serde::de::value::Error,
        >::new(reason))
        .is_ok();
        known.then_some((reason, diagnosis))
    }
}

/// One journal line as `report` reads it: [`Line`], with failures borrowed.
// Events are nearly every line: boxing them would allocate per line.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineView<'a> {
    /// A failure (or with `--all`, a success).
    Event(RecordView<'a>),
    /// A moment in a port's life.
    Port(PortLife),
    /// The fold tail.
    Repeat(crate::fold::Repeat),
    /// A notice: not an event.
    Notice,
}

/// Parses one journal line like [`parse_line`], borrowing from it.
pub fn parse_line_view(line: &[u8]) -> serde_json::Result<LineView<'_>> {
    if line.starts_with(b"{\"type\":") {
        let s = std::str::from_utf8(line).map_err(|_| serde::de::Error::custom("not UTF-8"))?;
        return Ok(match parse_line(s)? {
            Line::Port(p) => LineView::Port(p),
            Line::Repeat(r) => LineView::Repeat(r),
            Line::Event(_) | Line::Notice => LineView::Notice,
        });
    }
    RecordView::parse(line).map(LineView::Event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Clock,
        diagnose::diagnose,
        event::fixtures::{encode, sample},
        holders::{Seen, State},
    };

    /// The sample failure as a journal line.
    const SAMPLE_LINE: &str = concat!(
        r#"{"ts":"2027-01-15T08:00:01.000000000Z","pid":4242,"tid":4243,"ppid":1,"uid":33,"gid":34,"comm":"nginx","cgroup_id":77,"syscall":"bind","errno":"EADDRINUSE","ret":-98,"proto":"tcp","family":"ipv6","addr":"fe80::1","port":8080,"netns":4026531840,"fd":6,"ifindex":null,"opts":{"reuseaddr":true,"reuseport":false,"v6only":false,"freebind":false,"transparent":false,"bind_address_no_port":false},"folded":3,"source":"tracepoint","holders":[{"pid":100,"comm":"old\u001b[2J","cmdline":"old --serve <script>","uid":33,"state":"LISTEN","addr":"::","port":8080,"exited":false,"unit":"old.service","container":null,"kernel":null,"pids":[100,101],"sockets":1,"time_left_ms":null,"remote":null,"v6only":false,"reuseaddr":true,"reuseport":null,"cross_family":true,"seen":"kernel_and_sock_diag","socket_unit":null}],"enriched":true,"reason":"listener","diagnosis":"held by \"old\" (pid 100)","fix":"kill 100"}"#,
        "\n"
    );

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
                kernel: None,
                pids: vec![100, 101],
                sockets: 1,
                time_left_ms: None,
                remote: None,
                v6only: Some(false),
                reuseaddr: Some(true),
                reuseport: None,
                cross_family: true,
                seen: Seen::KernelAndSockDiag,
                socket_unit: None,
            }],
            ..Evidence::default()
        }
    }

    /// The bytes written for a fixed failure: the schema's keys, their
    /// order and their spelling stay as they are.
    #[test]
    fn a_sample_line_is_written_byte_for_byte() {
        let mut ev = Event::decode(
            &encode(&sample()),
            Clock::fixed(std::time::Duration::from_secs(1_800_000_000)),
        )
        .unwrap();
        ev.record = None;
        ev.addr = "fe80::1".parse().unwrap();
        ev.family = Family::Ipv6;
        let verdict = Verdict {
            reason: Reason::Listener,
            diagnosis: "held by \"old\" (pid 100)".into(),
            fix: "kill 100".into(),
        };
        let mut out = Vec::new();
        write(
            &mut out,
            &ev,
            Some(&holders_json(&evidence())),
            Some(true),
            Some(&verdict),
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), SAMPLE_LINE);
    }

    #[test]
    fn json_has_the_documented_keys() {
        let mut out = Vec::new();
        write(&mut out, &event(), None, None, None).unwrap();
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
        write(
            &mut out,
            &ev,
            Some(&holders_json(&e)),
            Some(true),
            Some(&verdict),
        )
        .unwrap();
        let line = std::str::from_utf8(&out).unwrap().trim_end();
        let back = Record::parse(line).unwrap();
        assert_eq!(Record::parse_fast(line).unwrap(), back);
        assert_eq!(
            back,
            Record {
                event: ev.clone(),
                holders: Some(e.holders.clone()),
                enriched: Some(true),
                verdict: Some(verdict),
            }
        );
        // And a line without enrichment (`--no-holders`).
        let mut out = Vec::new();
        write(&mut out, &ev, None, None, None).unwrap();
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
            proto: Proto::Tcp,
            family: Family::Ipv4,
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
        write(&mut out, &event(), None, None, None).unwrap();
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

    /// The report's borrowed view reads every written line as `Record` does:
    /// with and without enrichment, several holders, escaped strings, a
    /// success, non-canonical errno spellings, and garbage.
    #[test]
    fn the_view_agrees_with_record_on_written_lines() {
        let mut ev = event();
        ev.record = None;
        let mut e = evidence();
        let mut tw = e.holders[0].clone();
        tw.pid = None;
        tw.comm = None;
        tw.cmdline = None;
        tw.state = State::TimeWait;
        e.holders.push(tw);
        let verdict = diagnose(&ev.request(), &e);
        let mut success = ev.clone();
        success.errno = None;
        success.ret = 0;
        success.opts = None;
        let cases = [
            (&ev, Some(holders_json(&e)), Some(&verdict)),
            (&ev, None, None),
            (&success, None, None),
        ];
        for (ev, holders, verdict) in cases {
            let mut out = Vec::new();
            write(
                &mut out,
                ev,
                holders.as_deref(),
                holders.as_ref().map(|_| false),
                verdict,
            )
            .unwrap();
            let line = out.strip_suffix(b"\n").unwrap();
            let text = std::str::from_utf8(line).unwrap();
            let r = Record::parse(text).unwrap();
            let view = RecordView::parse(line).unwrap();
            assert_eq!(view, RecordView::of(&r), "{text}");
            let reason = r.verdict.as_ref().map(|v| {
                serde_json::to_value(v.reason)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            });
            assert_eq!(
                view.verdict(),
                reason
                    .as_deref()
                    .zip(r.verdict.as_ref().map(|v| v.diagnosis.as_str()))
            );
            assert_eq!(
                parse_line_view(line).unwrap(),
                LineView::Event(view.clone())
            );
            if let Some(hs) = &view.holders {
                assert_eq!(hs.iter().count(), 2);
                // The escaped comm was unescaped (owned), the rest borrowed.
                let first = hs.iter().next().unwrap();
                assert_eq!(first.comm.as_deref(), Some("old\u{1b}[2J"));
                assert!(matches!(first.cmdline, Some(Cow::Borrowed(_))));
            }
            assert!(matches!(view.comm, Cow::Borrowed(_)));
            // Other spellings of the errno read the same, in both readers.
            if ev.errno.is_some() {
                for spelling in ["\"eaddrinuse\"", "98", "\"98\"", "\"E98\""] {
                    let other = text.replace("\"EADDRINUSE\"", spelling);
                    if let Ok(r) = Record::parse(&other) {
                        let v = RecordView::parse(other.as_bytes()).unwrap();
                        assert_eq!(v, RecordView::of(&r), "{other}");
                        assert_eq!(v.errno.as_deref(), Some("EADDRINUSE"));
                    } else {
                        assert!(RecordView::parse(other.as_bytes()).is_err(), "{other}");
                    }
                }
            }
            // Any key missing makes both refuse the line, or both read it.
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            for key in v.as_object().unwrap().keys() {
                let mut less = v.clone();
                less.as_object_mut().unwrap().remove(key);
                let less = serde_json::to_string(&less).unwrap();
                match Record::parse(&less) {
                    Ok(r) if r.verdict.is_none() && v.get("reason").is_some() => {
                        // A verdict key gone: the verdict goes, in both.
                        assert_eq!(RecordView::parse(less.as_bytes()).unwrap().verdict(), None);
                    }
                    Ok(r) => assert_eq!(
                        RecordView::parse(less.as_bytes()).unwrap(),
                        RecordView::of(&r),
                        "without {key}"
                    ),
                    Err(_) => assert!(RecordView::parse(less.as_bytes()).is_err(), "without {key}"),
                }
            }
        }
        for line in [
            "",
            "{",
            "null",
            "{\"ts\":\"yesterday\"}",
            "{\"pid\":-1}",
            "[1,2,3]",
        ] {
            assert!(RecordView::parse(line.as_bytes()).is_err(), "{line:?}");
            assert!(parse_line_view(line.as_bytes()).is_err(), "{line:?}");
        }
    }
}
