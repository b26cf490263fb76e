//! What the analysis keeps: per port, the holders' tenures, the failure
//! runs, TIME_WAIT leftovers and the patterns found; across ports, the
//! tallies and ephemeral-port exhaustion. Everything here is serialized as
//! `report --json` writes it.

use std::{
    collections::{BTreeMap, VecDeque},
    time::SystemTime,
};

use serde::{Serialize, Serializer};

use super::TALLY_CAP;
use crate::time::rfc3339;

/// A process listening on a port, from when to when.
#[derive(Debug, Clone, Serialize)]
pub struct Tenure {
    /// The listening process.
    pub pid: u32,
    /// Its comm (untrusted).
    pub comm: String,
    /// Its command line, when a failure's holder lookup saw it (untrusted).
    pub cmdline: Option<String>,
    /// When it started listening; None: before the recording shows it.
    #[serde(serialize_with = "rfc3339::serialize_opt")]
    pub since: Option<SystemTime>,
    /// When it was first seen (its listen, or a failure naming it).
    #[serde(serialize_with = "rfc3339::serialize")]
    pub first_seen: SystemTime,
    /// When its listener closed; None: still open at the end of the input.
    #[serde(serialize_with = "rfc3339::serialize_opt")]
    pub until: Option<SystemTime>,
    /// Who closed it (the last process holding the socket).
    pub closed_by: Option<u32>,
    /// The listening socket's cookie, when its listen or close was recorded.
    #[serde(skip)]
    pub(super) socket: Option<u64>,
}

/// Consecutive identical failures of one process on a port.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// The failing process.
    pub pid: u32,
    /// Its comm (untrusted).
    pub comm: String,
    /// bind or listen.
    pub syscall: String,
    /// The error.
    pub errno: String,
    /// The diagnosis's reason code, when holders were looked up.
    pub reason: Option<String>,
    /// Its diagnosis (untrusted strings inside).
    pub diagnosis: Option<String>,
    /// First failure.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub first: SystemTime,
    /// Last failure.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub last: SystemTime,
    /// Failures (folded ones included).
    pub count: u64,
    /// Pids holding the port at the failures (at most 4).
    pub holders: Vec<u32>,
    /// The holders' comms.
    pub holder_comms: Vec<String>,
    /// Only TIME_WAIT sockets held the port.
    pub time_wait_only: bool,
    /// SO_REUSEADDR was set on the failing socket.
    pub reuseaddr: Option<bool>,
}

/// TIME_WAIT leftovers on a port.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimeWait {
    /// Sockets counted.
    pub count: u64,
    /// First seen.
    #[serde(serialize_with = "rfc3339::serialize_opt")]
    pub first: Option<SystemTime>,
    /// Last seen.
    #[serde(serialize_with = "rfc3339::serialize_opt")]
    pub last: Option<SystemTime>,
}

/// What a [`Pattern`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternKind {
    /// The failing process started while another one still listened.
    Overlap,
    /// The one that listened is another program than the failing one.
    Stray,
    /// Only TIME_WAIT leftovers held the port, and SO_REUSEADDR was not set.
    TimeWait,
    /// One program failed the same way across several pids (restarts).
    Repeated,
    /// No local port was left to pick (across ports).
    EphemeralExhausted,
}

impl PatternKind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            PatternKind::Overlap => "overlap",
            PatternKind::Stray => "stray",
            PatternKind::TimeWait => "time_wait",
            PatternKind::Repeated => "repeated",
            PatternKind::EphemeralExhausted => "ephemeral_exhausted",
        }
    }
}

impl Serialize for PatternKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A restart pattern recognised on a port.
#[derive(Debug, Clone, Serialize)]
pub struct Pattern {
    /// What it is.
    pub kind: PatternKind,
    /// One or two sentences, with the measured gaps.
    pub text: String,
    /// The pids involved.
    pub pids: Vec<u32>,
    /// The measured gap that matters most (ms), e.g. first failure to release.
    pub gap_ms: Option<f64>,
    /// When the release happened, for an overlap.
    #[serde(serialize_with = "rfc3339::serialize_opt")]
    pub released: Option<SystemTime>,
}

/// Everything recorded about one port.
#[derive(Debug, Clone, Serialize)]
pub struct PortStory {
    /// The port.
    pub port: u16,
    /// Failures on it (folded ones included).
    pub failures: u64,
    /// Who listened, oldest first (the last [`KEEP`](super::KEEP)).
    pub holders: VecDeque<Tenure>,
    /// Older tenures not kept.
    pub holders_dropped: u64,
    /// Failure runs, oldest first (the last [`KEEP`](super::KEEP)).
    pub runs: VecDeque<Run>,
    /// Older runs not kept.
    pub runs_dropped: u64,
    /// TIME_WAIT leftovers.
    pub time_wait: TimeWait,
    /// Patterns recognised.
    pub patterns: Vec<Pattern>,
    /// First thing recorded on it.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub start: SystemTime,
    /// Last thing recorded on it.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub end: SystemTime,
}

impl PortStory {
    /// A port first seen at `ts`.
    pub(super) fn new(port: u16, ts: SystemTime) -> PortStory {
        PortStory {
            port,
            failures: 0,
            holders: VecDeque::new(),
            holders_dropped: 0,
            runs: VecDeque::new(),
            runs_dropped: 0,
            time_wait: TimeWait::default(),
            patterns: Vec::new(),
            start: ts,
            end: ts,
        }
    }
}

/// A summary table: key -> failures, at most [`TALLY_CAP`] keys.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally(pub BTreeMap<String, u64>);

impl Tally {
    pub(super) fn add(&mut self, key: &str, n: u64) {
        if let Some(v) = self.0.get_mut(key) {
            *v += n;
        } else if self.0.len() < TALLY_CAP {
            self.0.insert(key.to_owned(), n);
        } else {
            *self.0.entry("(other)".into()).or_default() += n;
        }
    }

    /// Largest first.
    pub fn sorted(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<_> = self.0.iter().map(|(k, &n)| (k.as_str(), n)).collect();
        v.sort_by(|(ka, na), (kb, nb)| nb.cmp(na).then(ka.cmp(kb)));
        v
    }
}

/// Failures to get a local port (ephemeral-port exhaustion), across ports.
#[derive(Debug, Clone, Default)]
pub(super) struct Exhaustion {
    /// Failures (folded ones included).
    pub failures: u64,
    /// The first one.
    pub first: Option<SystemTime>,
    /// The last one.
    pub last: Option<SystemTime>,
    /// The processes that failed (at most 8).
    pub pids: Vec<u32>,
}

impl Exhaustion {
    /// `count` more failures of `pid` at `ts`.
    pub fn add(&mut self, ts: SystemTime, pid: u32, count: u64) {
        self.failures += count;
        self.first = Some(self.first.map_or(ts, |f| f.min(ts)));
        self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
        if self.pids.len() < 8 && !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Analysis {
    /// First thing recorded.
    #[serde(serialize_with = "rfc3339::serialize_opt")]
    pub first: Option<SystemTime>,
    /// Last thing recorded.
    #[serde(serialize_with = "rfc3339::serialize_opt")]
    pub last: Option<SystemTime>,
    /// Failures in all.
    pub failures: u64,
    /// Successful calls recorded (`watch --all`).
    pub successes: u64,
    /// Per port, by port number.
    pub ports: BTreeMap<u16, PortStory>,
    /// Failures on ports past [`MAX_PORTS`](super::MAX_PORTS) (tallied only).
    pub ports_dropped: u64,
    /// Failures by port.
    pub by_port: Tally,
    /// Failures by command (comm).
    pub by_command: Tally,
    /// Failures by reason (or errno when not diagnosed).
    pub by_reason: Tally,
    /// Ephemeral-port exhaustion across ports.
    pub ephemeral: Vec<Pattern>,
    /// Ephemeral-port exhaustion seen so far (made a pattern at the end).
    #[serde(skip)]
    pub(super) exhaustion: Exhaustion,
    /// Scratch for table keys (no allocation per line).
    #[serde(skip)]
    pub(super) key: String,
}
