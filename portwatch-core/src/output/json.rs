//! The NDJSON schema, in one place: what `watch --json` and `--record`
//! write for each call ([`EventLine`]: the event's keys, `holders`,
//! `enriched`, `reason`, `diagnosis`, `fix`), the port life lines beside
//! them ([`PortLife`]), and how `report` reads every line back
//! ([`parse_line`], failures as the borrowed [`EventLineView`]). The view
//! is tested to read back, field for field, what [`EventLine`] writes, so
//! the schema in docs/output.md cannot drift between writer and reader.

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
    holders::{Evidence, State},
    request::{Errno, Family, Opts, Proto, Syscall, MAX_ERRNO},
    time::rfc3339,
};

/// One call as written, one line: the event's keys, then what enrichment
/// found. The holders come pre-rendered ([`holders_json`]), since a storm
/// shares one rendering.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EventLine<'a> {
    /// The captured call (its keys inline).
    #[serde(flatten)]
    pub event: &'a Event,
    /// `holders`: the verdict's evidence, when holders were looked up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holders: Option<&'a RawValue>,
    /// `enriched`: false when the holders are the kernel's record alone
    /// (the lookup was shed or timed out: see [`Evidence::shed`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enriched: Option<bool>,
    /// `reason`, `diagnosis` and `fix`, when holders were looked up.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<&'a Verdict>,
}

impl EventLine<'_> {
    /// Writes the line and its newline.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        out.write_all(b"\n")
    }
}

/// `holders` as JSON, rendered once per evidence (a storm shares one).
pub fn holders_json(e: &Evidence) -> Box<RawValue> {
    serde_json::value::to_raw_value(&e.holders)
        .unwrap_or_else(|_| RawValue::from_string("[]".into()).expect("valid JSON"))
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

/// One failure line as `report` reads it (millions of them): borrowed from
/// the line (a `Cow` owns only when the JSON escapes something), and inside
/// `holders` only what the report uses (the other holder keys are skipped
/// unbuffered). serde's `flatten` over a borrowed [`Event`] would buffer
/// the whole object first (several times slower), hence the event's keys
/// listed again here; a test reads back, field for field, what
/// [`EventLine`] writes, and checks that a line missing a key or with a
/// key of the wrong type is refused here exactly when [`Event`] refuses it.
///
/// The event's keys are checked and typed as [`Event`] reads them; the
/// holders' unused keys are not checked; a verdict key of the wrong type
/// makes the line unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventLineView<'a> {
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

impl EventLineView<'_> {
    /// The verdict's reason code and diagnosis, when the line has a whole
    /// verdict (`reason`, `diagnosis` and `fix`) with a known reason.
    pub fn verdict(&self) -> Option<(&'static str, &str)> {
        let (reason, diagnosis, _) = (
            self.reason.as_deref()?,
            self.diagnosis.as_deref()?,
            self.fix.as_deref()?,
        );
        Some((Reason::from_name(reason)?.as_str(), diagnosis))
    }
}

/// One journal (or saved `watch --json`) line as `report` reads it.
#[expect(
    clippy::large_enum_variant,
    reason = "events are nearly every line: boxing them would allocate per line"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineView<'a> {
    /// A failure (or with `--all`, a success), borrowed from the line.
    Event(EventLineView<'a>),
    /// A moment in a port's life.
    Port(PortLife),
    /// Identical failures folded after the last one shown of their stream
    /// (the fold tail, journalled at exit).
    Repeat(crate::fold::Repeat),
    /// A notice (`{"type":...}`) of a saved `watch --json 2>&1`: not an event.
    Notice,
}

/// Parses one journal or `watch --json` line, borrowing from it.
pub fn parse_line(line: &[u8]) -> serde_json::Result<LineView<'_>> {
    // One UTF-8 check of the whole line is cheaper than serde_json's
    // check of each of its ~70 strings (from_slice).
    let line = std::str::from_utf8(line).map_err(serde::de::Error::custom)?;
    if !line.starts_with("{\"type\":") {
        return serde_json::from_str(line).map(LineView::Event);
    }
    if line.starts_with(PORT_LINE_PREFIX) {
        return serde_json::from_str(line).map(LineView::Port);
    }
    if line.starts_with("{\"type\":\"repeat\"") {
        return match serde_json::from_str(line)? {
            super::Notice::Repeat(r) => Ok(LineView::Repeat(r)),
            _ => Ok(LineView::Notice),
        };
    }
    // Notices: checked to be JSON objects, not kept.
    serde_json::from_str::<serde::de::IgnoredAny>(line)?;
    Ok(LineView::Notice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Clock,
        event::fixtures::{encode, sample},
        fold::Repeat,
        holders::{Holder, Seen, State},
        output::Notice,
    };

    /// The sample failure as a journal line.
    const SAMPLE_LINE: &str = concat!(
        r#"{"ts":"2027-01-15T08:00:01.000000000Z","pid":4242,"tid":4243,"ppid":1,"uid":33,"gid":34,"comm":"nginx","cgroup_id":77,"syscall":"bind","errno":"EADDRINUSE","ret":-98,"proto":"tcp","family":"ipv6","addr":"fe80::1","port":8080,"netns":4026531840,"fd":6,"ifindex":null,"opts":{"reuseaddr":true,"reuseport":false,"v6only":false,"freebind":false,"transparent":false,"bind_address_no_port":false},"folded":3,"source":"tracepoint","holders":[{"pid":100,"comm":"old\u001b[2J","cmdline":"old --serve <script>","uid":33,"state":"LISTEN","addr":"::","port":8080,"exited":false,"unit":"old.service","container":null,"kernel":null,"pids":[100,101],"sockets":1,"time_left_ms":null,"remote":null,"v6only":false,"reuseaddr":true,"reuseport":null,"cross_family":true,"seen":"kernel_and_sock_diag","socket_unit":null,"device":{"ifindex":3,"name":"veth1","vrf":null},"apart":null}],"enriched":true,"reason":"listener","diagnosis":"held by \"old\" (pid 100)","fix":"kill 100"}"#,
        "\n"
    );

    fn event() -> Event {
        let mut ev = Event::decode(&encode(&sample()), Clock::now()).unwrap();
        // The kernel's record is reported through `holders`, not as itself.
        ev.holder_record = None;
        ev
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
                options_from: None,
                cross_family: true,
                seen: Seen::KernelAndSockDiag,
                socket_unit: None,
                device: Some(crate::holders::Device {
                    ifindex: 3,
                    name: Some("veth1".into()),
                    vrf: None,
                }),
                apart: None,
            }],
            ..Evidence::default()
        }
    }

    /// `evidence()` and a TIME_WAIT holder (no pid, comm or cmdline).
    fn two_holders() -> Evidence {
        let mut e = evidence();
        let mut tw = e.holders[0].clone();
        tw.pid = None;
        tw.comm = None;
        tw.cmdline = None;
        tw.state = State::TimeWait;
        tw.time_left_ms = Some(41_200);
        e.holders.push(tw);
        e
    }

    fn write(ev: &Event, e: Option<&Evidence>, verdict: Option<&Verdict>) -> Vec<u8> {
        let holders = e.map(holders_json);
        let mut out = Vec::new();
        EventLine {
            event: ev,
            holders: holders.as_deref(),
            enriched: e.map(|e| !e.shed),
            verdict,
        }
        .write(&mut out)
        .unwrap();
        assert_eq!(out.pop(), Some(b'\n'));
        out
    }

    fn view(line: &[u8]) -> EventLineView<'_> {
        match parse_line(line) {
            Ok(LineView::Event(v)) => v,
            other => panic!("{other:?}: {}", String::from_utf8_lossy(line)),
        }
    }

    /// What the view of a line written from these parts must read: every
    /// key of [`Event`] (taken apart without `..`, so a key added to the
    /// event does not compile here until the view has it too), what the
    /// report uses of each holder, and the verdict.
    fn expected<'a>(
        ev: &'a Event,
        holders: Option<&'a [Holder]>,
        verdict: Option<&'a Verdict>,
    ) -> EventLineView<'a> {
        let Event {
            ts,
            pid,
            tid,
            ppid,
            uid,
            gid,
            comm,
            cgroup_id,
            syscall,
            errno,
            ret,
            proto,
            family,
            addr,
            port,
            netns,
            fd,
            ifindex,
            opts,
            folded,
            source,
            holder_record: _,
        } = ev;
        EventLineView {
            ts: *ts,
            pid: *pid,
            tid: *tid,
            ppid: *ppid,
            uid: *uid,
            gid: *gid,
            comm: Cow::Borrowed(comm),
            cgroup_id: *cgroup_id,
            syscall: *syscall,
            errno: errno.map(|e| Cow::Owned(e.name())),
            ret: *ret,
            proto: *proto,
            family: *family,
            addr: *addr,
            port: *port,
            netns: *netns,
            fd: *fd,
            ifindex: *ifindex,
            opts: *opts,
            folded: *folded,
            source: *source,
            holders: holders.map(|hs| {
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
            reason: verdict.map(|v| Cow::Borrowed(v.reason.as_str())),
            diagnosis: verdict.map(|v| Cow::Borrowed(v.diagnosis.as_str())),
            fix: verdict.map(|v| Cow::Borrowed(v.fix.as_str())),
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
        ev.holder_record = None;
        ev.addr = "fe80::1".parse().unwrap();
        ev.family = Family::Ipv6;
        let verdict = Verdict {
            reason: Reason::Listener,
            diagnosis: "held by \"old\" (pid 100)".into(),
            fix: "kill 100".into(),
        };
        let mut e = evidence();
        e.shed = false;
        let mut line = write(&ev, Some(&e), Some(&verdict));
        line.push(b'\n');
        assert_eq!(String::from_utf8(line).unwrap(), SAMPLE_LINE);
    }

    #[test]
    fn json_has_the_documented_keys() {
        let out = write(&event(), None, None);
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
        assert!(!out.contains(&b'\n'));
    }

    /// What [`EventLine`] writes, the view reads back field for field, and
    /// [`Event`] reads back whole: IPv4 and IPv6, escaped strings, a
    /// success, without enrichment, and with two holders and every reason.
    #[test]
    fn written_lines_read_back_field_for_field() {
        let v4 = event();
        let mut v6 = v4.clone();
        v6.family = Family::Ipv6;
        v6.addr = "2001:db8::1".parse().unwrap();
        v6.comm = "a\"b\\c\u{7f}\u{e9}".into();
        v6.ifindex = Some(3);
        let mut success = v4.clone();
        success.errno = None;
        success.ret = 0;
        success.opts = None;
        success.fd = None;
        let e = two_holders();
        let verdicts: Vec<Verdict> = Reason::ALL
            .into_iter()
            .map(|reason| Verdict {
                reason,
                diagnosis: format!("{} \"held\"\n\u{1b}[2J", reason.as_str()),
                fix: "kill 100".into(),
            })
            .collect();
        let mut lines = 0;
        for ev in [&v4, &v6, &success] {
            let cases =
                std::iter::once((None, None)).chain(verdicts.iter().map(|v| (Some(&e), Some(v))));
            for (e, verdict) in cases {
                let line = write(ev, e, verdict);
                let text = String::from_utf8_lossy(&line);
                let view = view(&line);
                let holders = e.map(|e| e.holders.as_slice());
                assert_eq!(view, expected(ev, holders, verdict), "{text}");
                assert_eq!(
                    view.verdict(),
                    verdict.map(|v| (v.reason.as_str(), v.diagnosis.as_str())),
                    "{text}"
                );
                assert_eq!(&serde_json::from_slice::<Event>(&line).unwrap(), ev);
                // Strings are borrowed from the line unless escaped.
                assert_eq!(
                    matches!(view.comm, Cow::Borrowed(_)),
                    ev.comm == "nginx",
                    "{text}"
                );
                if let Some(hs) = &view.holders {
                    let first = hs.iter().next().unwrap();
                    assert!(matches!(first.comm, Some(Cow::Owned(_))));
                    assert!(matches!(first.cmdline, Some(Cow::Borrowed(_))));
                    assert_eq!(hs.iter().count(), 2);
                }
                lines += 1;
            }
        }
        assert_eq!(lines, 3 * (1 + Reason::ALL.len()));
    }

    /// A key missing or of the wrong type: the view refuses the line
    /// exactly when [`Event`] does, and otherwise reads what `Event` read;
    /// other spellings of the errno read as [`Errno`] reads them.
    #[test]
    fn the_view_refuses_what_event_refuses() {
        let ev = event();
        let e = two_holders();
        let verdict = Verdict {
            reason: Reason::Listener,
            diagnosis: "held".into(),
            fix: "kill 100".into(),
        };
        let line = write(&ev, Some(&e), Some(&verdict));
        let full: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let mut checked = 0;
        for key in full.as_object().unwrap().keys() {
            for wrong in [
                None,
                Some(serde_json::json!(true)),
                Some(serde_json::json!([])),
            ] {
                let mut other = full.clone();
                match &wrong {
                    None => drop(other.as_object_mut().unwrap().remove(key)),
                    Some(w) => other[key] = w.clone(),
                }
                let other = serde_json::to_string(&other).unwrap();
                let got = parse_line(other.as_bytes());
                match key.as_str() {
                    "holders" if wrong == Some(serde_json::json!([])) => {
                        assert!(view(other.as_bytes()).holders.unwrap().is_empty())
                    }
                    "holders" | "reason" | "diagnosis" | "fix" if wrong.is_some() => {
                        assert!(got.is_err(), "{key} = {wrong:?}")
                    }
                    "holders" => assert_eq!(view(other.as_bytes()).holders, None),
                    "reason" | "diagnosis" | "fix" => {
                        assert_eq!(view(other.as_bytes()).verdict(), None, "without {key}")
                    }
                    _ => match serde_json::from_str::<Event>(&other) {
                        Err(_) => assert!(got.is_err(), "{key} = {wrong:?}: {got:?}"),
                        Ok(back) => assert_eq!(
                            view(other.as_bytes()),
                            expected(&back, Some(&e.holders), Some(&verdict)),
                            "{key} = {wrong:?}"
                        ),
                    },
                }
                checked += 1;
            }
        }
        assert!(checked > 60, "{checked}");
        let text = String::from_utf8(line).unwrap();
        for spelling in [
            "\"eaddrinuse\"",
            "98",
            "\"98\"",
            "\"E98\"",
            "\"EFOO\"",
            "null",
        ] {
            let other = text.replace("\"EADDRINUSE\"", spelling);
            match serde_json::from_str::<Event>(&other) {
                Ok(back) => {
                    let v = view(other.as_bytes());
                    assert_eq!(v, expected(&back, Some(&e.holders), Some(&verdict)));
                    assert_eq!(v.errno.as_deref(), back.errno.map(|e| e.name()).as_deref());
                }
                Err(_) => assert!(parse_line(other.as_bytes()).is_err(), "{other}"),
            }
        }
    }

    #[test]
    fn port_life_repeat_and_notice_lines_are_told_apart() {
        let life = PortLife {
            kind_tag: PortTag::Port,
            ts: SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_123_456_789),
            event: LifeKind::Closed,
            port: 8080,
            proto: Proto::Tcp,
            family: Family::Ipv6,
            addr: "::1".parse().unwrap(),
            netns: 4026531840,
            pid: 808,
            comm: "ng\"inx".into(),
            holder_pid: Some(808),
            socket: 77,
            count: 0,
        };
        let line = serde_json::to_string(&life).unwrap();
        assert!(line.starts_with(PORT_LINE_PREFIX), "{line}");
        assert_eq!(parse_line(line.as_bytes()).unwrap(), LineView::Port(life));
        let repeat = Repeat {
            pid: 4242,
            comm: "nginx".into(),
            syscall: Syscall::Bind,
            errno: Some(Errno(98)),
            proto: Proto::Tcp,
            family: Family::Ipv4,
            addr: "127.0.0.1".parse().unwrap(),
            port: 8080,
            netns: 4026531840,
            count: 17,
        };
        let line = serde_json::to_string(&Notice::Repeat(repeat.clone())).unwrap();
        assert_eq!(
            parse_line(line.as_bytes()).unwrap(),
            LineView::Repeat(repeat)
        );
        assert_eq!(
            parse_line(b"{\"type\":\"ready\",\"startup_ms\":3}").unwrap(),
            LineView::Notice
        );
        assert!(matches!(
            parse_line(&write(&event(), None, None)).unwrap(),
            LineView::Event(_)
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for line in [
            &b""[..],
            b"{",
            b"null",
            b"[1,2,3]",
            b"{\"ts\":\"yesterday\"}",
            b"{\"pid\":-1}",
            b"{\"type\":\"port\",\"ts\":1}",
            b"{\"type\":\"repeat\",\"pid\":1}",
            b"{\"type\":",
            b"{\"type\":\"ready\"",
            b"\xff\xfe",
            b"{\"type\":\"ready\",\"x\":\"\xff\"}",
        ] {
            assert!(
                parse_line(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
