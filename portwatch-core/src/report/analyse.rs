//! From journal lines to per-port stories, in one pass and bounded memory:
//! per port, the last [`KEEP`] holder tenures and failure runs (older ones
//! are counted, not kept), and tallies by port, command and reason capped
//! at [`TALLY_CAP`] distinct keys. Patterns are recognised at the end from
//! what was kept, with every gap measured between recorded events.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    holders::State,
    output::json::{HoldersView, JournalLineView, LifeKind, LineView, PortLife},
    request::Proto,
    time::{rfc3339, secs},
};

/// Tenures and runs kept per port (the most recent ones).
pub const KEEP: usize = 256;
/// Ports followed; failures on further ports only count in the tallies.
pub const MAX_PORTS: usize = 4096;
/// Distinct keys per summary table; the rest are added up under "(other)".
pub const TALLY_CAP: usize = 4096;
/// Failures of one process further apart than this start a new run.
const RUN_GAP: Duration = Duration::from_secs(60);

/// What to keep.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these ports (empty: all).
    pub ports: Vec<u16>,
    /// Nothing before.
    pub since: Option<SystemTime>,
    /// Nothing after.
    pub until: Option<SystemTime>,
}

impl Filter {
    fn keeps(&self, port: u16, ts: SystemTime) -> bool {
        (self.ports.is_empty() || self.ports.contains(&port))
            && self.since.is_none_or(|s| ts >= s)
            && self.until.is_none_or(|u| ts <= u)
    }
}

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
    /// When its listener closed; None: still open at the end of the journal.
    #[serde(serialize_with = "rfc3339::serialize_opt")]
    pub until: Option<SystemTime>,
    /// Who closed it (the last process holding the socket).
    pub closed_by: Option<u32>,
    #[serde(skip)]
    socket: Option<u64>,
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

/// A restart pattern recognised on a port.
#[derive(Debug, Clone, Serialize)]
pub struct Pattern {
    /// `overlap`, `time_wait`, `stray`, `repeated`, `ephemeral_exhausted`.
    pub kind: &'static str,
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
    /// Who listened, oldest first (the last [`KEEP`]).
    pub holders: VecDeque<Tenure>,
    /// Older tenures not kept.
    pub holders_dropped: u64,
    /// Failure runs, oldest first (the last [`KEEP`]).
    pub runs: VecDeque<Run>,
    /// Older runs not kept.
    pub runs_dropped: u64,
    /// TIME_WAIT leftovers.
    pub time_wait: TimeWait,
    /// Patterns recognised.
    pub patterns: Vec<Pattern>,
    /// First and last thing recorded on it.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub start: SystemTime,
    /// Last thing recorded on it.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub end: SystemTime,
}

/// A summary table: key -> failures, at most [`TALLY_CAP`] keys.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally(pub BTreeMap<String, u64>);

impl Tally {
    fn add(&mut self, key: &str, n: u64) {
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
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
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
    /// Failures on ports past [`MAX_PORTS`] (tallied only).
    pub ports_dropped: u64,
    /// Failures by port.
    pub by_port: Tally,
    /// Failures by command (comm).
    pub by_command: Tally,
    /// Failures by reason (or errno when not diagnosed).
    pub by_reason: Tally,
    /// Ephemeral-port exhaustion across ports.
    pub ephemeral: Vec<Pattern>,
    #[serde(skip)]
    ephemeral_count: (u64, Option<SystemTime>, Option<SystemTime>, Vec<u32>),
    /// Scratch for table keys (no allocation per line).
    #[serde(skip)]
    key: String,
}

/// `port/proto`, the key of the by-port table, written into `buf`.
fn port_key(buf: &mut String, port: u16, proto: Proto) -> &str {
    use std::fmt::Write as _;
    buf.clear();
    let _ = match proto {
        // The common protocols without allocating their names.
        Proto::Tcp => write!(buf, "{port}/tcp"),
        Proto::Udp => write!(buf, "{port}/udp"),
        other => write!(buf, "{port}/{}", other.name()),
    };
    buf
}

impl Analysis {
    fn story(&mut self, port: u16, ts: SystemTime) -> Option<&mut PortStory> {
        if !self.ports.contains_key(&port) && self.ports.len() >= MAX_PORTS {
            return None;
        }
        let s = self.ports.entry(port).or_insert_with(|| PortStory {
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
        });
        s.start = s.start.min(ts);
        s.end = s.end.max(ts);
        Some(s)
    }

    fn seen(&mut self, ts: SystemTime) {
        self.first = Some(self.first.map_or(ts, |f| f.min(ts)));
        self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
    }

    /// Takes one journal line as read (borrowed); returns false when the
    /// filter drops it.
    pub fn add_view(&mut self, line: LineView<'_>, filter: &Filter) -> bool {
        match line {
            LineView::Event(r) => {
                if !filter.keeps(r.port, r.ts) {
                    return false;
                }
                self.event(&r);
            }
            LineView::Port(p) => {
                if !filter.keeps(p.port, p.ts) {
                    return false;
                }
                self.life(&p);
            }
            LineView::Repeat(r) => {
                if !filter.ports.is_empty() && !filter.ports.contains(&r.port) {
                    return false;
                }
                self.repeat(&r);
            }
            LineView::Notice => {}
        }
        true
    }

    /// The fold tail: more failures of a run already seen.
    fn repeat(&mut self, r: &crate::fold::Repeat) {
        let errno = r.errno.map(|e| e.name()).unwrap_or_default();
        let Some(story) = self.ports.get_mut(&r.port) else {
            return;
        };
        let Some(run) = story
            .runs
            .iter_mut()
            .rev()
            .find(|run| run.pid == r.pid && run.errno == errno)
        else {
            return;
        };
        run.count += r.count;
        story.failures += r.count;
        self.failures += r.count;
        self.by_port
            .add(port_key(&mut self.key, r.port, r.proto), r.count);
        self.by_command.add(&r.comm, r.count);
        let reason = run.reason.clone().unwrap_or(errno);
        self.by_reason.add(&reason, r.count);
    }

    fn event(&mut self, r: &JournalLineView<'_>) {
        self.seen(r.ts);
        if r.ret == 0 {
            self.successes += 1;
            return;
        }
        let n = 1 + r.folded;
        self.failures += n;
        let verdict = r.verdict();
        let reason = verdict.map(|(reason, _)| reason);
        let ret;
        let errno: &str = match &r.errno {
            Some(e) => e,
            None => {
                ret = r.ret.to_string();
                &ret
            }
        };
        self.by_port
            .add(port_key(&mut self.key, r.port, r.proto), n);
        self.by_command.add(&r.comm, n);
        self.by_reason.add(reason.unwrap_or(errno), n);
        if errno == "EADDRNOTAVAIL" && r.port == 0 || reason == Some("ephemeral_exhausted") {
            let e = &mut self.ephemeral_count;
            e.0 += n;
            e.1 = Some(e.1.map_or(r.ts, |f: SystemTime| f.min(r.ts)));
            e.2 = Some(e.2.map_or(r.ts, |l: SystemTime| l.max(r.ts)));
            if e.3.len() < 8 && !e.3.contains(&r.pid) {
                e.3.push(r.pid);
            }
        }
        let Some(story) = self.story(r.port, r.ts) else {
            self.ports_dropped += n;
            return;
        };
        story.failures += n;
        let empty = HoldersView::default();
        let holders = r.holders.as_ref().unwrap_or(&empty);
        // Whoever held the port at the failure held it since then at least.
        for h in holders.iter() {
            if let (Some(pid), State::Listen) = (h.pid, h.state) {
                if pid != r.pid {
                    story.holder_seen(pid, h.comm.as_deref(), h.cmdline.as_deref(), r.ts);
                }
            }
        }
        let time_wait_only =
            !holders.is_empty() && holders.iter().all(|h| h.state == State::TimeWait);
        let holder_pids = holders.iter().filter_map(|h| h.pid).take(4);
        let syscall = r.syscall.name();
        // The run this failure continues: same process, call, error, reason.
        let found = story.runs.iter_mut().rev().take(8).find(|run| {
            run.pid == r.pid
                && run.errno == errno
                && run.syscall == syscall
                && run.reason.as_deref() == reason
                && r.ts.duration_since(run.last).unwrap_or_default() <= RUN_GAP
        });
        match found {
            Some(run) => {
                run.count += n;
                run.last = run.last.max(r.ts);
                for p in holder_pids {
                    if run.holders.len() < 4 && !run.holders.contains(&p) {
                        run.holders.push(p);
                    }
                }
                run.time_wait_only &= time_wait_only;
            }
            None => {
                if story.runs.len() >= KEEP {
                    story.runs.pop_front();
                    story.runs_dropped += 1;
                }
                // Strings are copied only here, for the runs kept.
                story.runs.push_back(Run {
                    pid: r.pid,
                    comm: r.comm.clone().into_owned(),
                    syscall: syscall.to_owned(),
                    errno: errno.to_owned(),
                    reason: reason.map(str::to_owned),
                    diagnosis: verdict.map(|(_, d)| d.to_owned()),
                    first: r.ts,
                    last: r.ts,
                    count: n,
                    holders: holder_pids.collect(),
                    holder_comms: holders
                        .iter()
                        .filter_map(|h| h.comm.as_deref().map(str::to_owned))
                        .take(4)
                        .collect(),
                    time_wait_only,
                    reuseaddr: r.opts.map(|o| o.reuseaddr),
                });
            }
        }
    }

    fn life(&mut self, p: &PortLife) {
        self.seen(p.ts);
        let Some(story) = self.story(p.port, p.ts) else {
            return;
        };
        match p.event {
            LifeKind::Listen => {
                story.push_tenure(Tenure {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    cmdline: None,
                    since: Some(p.ts),
                    first_seen: p.ts,
                    until: None,
                    closed_by: None,
                    socket: Some(p.socket),
                });
            }
            LifeKind::Closed => {
                let holder = p.holder_pid.unwrap_or(p.pid);
                let open = |t: &&mut Tenure| t.until.is_none();
                let mut it = story.holders.iter_mut().rev();
                let found = it.find(|t| t.until.is_none() && t.socket == Some(p.socket));
                let t = match found {
                    Some(t) => Some(t),
                    None => story
                        .holders
                        .iter_mut()
                        .rev()
                        .filter(open)
                        .find(|t| t.pid == holder || t.pid == p.pid),
                };
                match t {
                    Some(t) => {
                        t.until = Some(p.ts);
                        t.closed_by = Some(p.pid);
                    }
                    None => story.push_tenure(Tenure {
                        pid: holder,
                        comm: p.comm.clone(),
                        cmdline: None,
                        since: None,
                        first_seen: p.ts,
                        until: Some(p.ts),
                        closed_by: Some(p.pid),
                        socket: Some(p.socket),
                    }),
                }
            }
            LifeKind::TimeWait => {
                let tw = &mut story.time_wait;
                tw.count += u64::from(p.count.max(1));
                tw.first.get_or_insert(p.ts);
                tw.last = Some(p.ts);
            }
        }
    }

    /// Recognises the patterns; call once every line is in.
    pub fn finish(&mut self) {
        for story in self.ports.values_mut() {
            story.patterns = patterns(story);
        }
        let (count, first, last, pids) = &self.ephemeral_count;
        if *count > 0 {
            let (first, last) = (
                first.unwrap_or(SystemTime::UNIX_EPOCH),
                last.unwrap_or(SystemTime::UNIX_EPOCH),
            );
            self.ephemeral.push(Pattern {
                kind: "ephemeral_exhausted",
                text: format!(
                    "ephemeral-port exhaustion: {count} failure(s) to get a local port over {} (pids {}): too many connections or bound sockets use up net.ipv4.ip_local_port_range",
                    secs(last.duration_since(first).unwrap_or_default()),
                    list(pids)
                ),
                pids: pids.clone(),
                gap_ms: None,
                released: None,
            });
        }
    }
}

impl PortStory {
    fn push_tenure(&mut self, t: Tenure) {
        if self.holders.len() >= KEEP {
            self.holders.pop_front();
            self.holders_dropped += 1;
        }
        self.holders.push_back(t);
    }

    /// A failure's lookup saw `pid` listening at `ts`.
    fn holder_seen(&mut self, pid: u32, comm: Option<&str>, cmdline: Option<&str>, ts: SystemTime) {
        // Its tenure: open, or closed after this failure (the close line may
        // be journalled before the failure, whose lookup took a moment).
        let found = self.holders.iter_mut().rev().find(|t| {
            t.pid == pid && t.since.is_none_or(|s| s <= ts) && t.until.is_none_or(|u| u >= ts)
        });
        match found {
            Some(t) => {
                if t.cmdline.is_none() {
                    t.cmdline = cmdline.map(str::to_owned);
                }
                t.first_seen = t.first_seen.min(ts);
            }
            None => self.push_tenure(Tenure {
                pid,
                comm: comm.unwrap_or("?").to_owned(),
                cmdline: cmdline.map(str::to_owned),
                since: None,
                first_seen: ts,
                until: None,
                closed_by: None,
                socket: None,
            }),
        }
    }
}

fn list(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn gap(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

fn patterns(story: &PortStory) -> Vec<Pattern> {
    let mut out = Vec::new();
    let port = story.port;
    for run in &story.runs {
        if run.errno != "EADDRINUSE" {
            continue;
        }
        // Overlap: the failing process started while another still listened.
        for t in &story.holders {
            if t.pid == run.pid || !run.holders.contains(&t.pid) {
                continue;
            }
            let mut text = format!(
                "overlap on port {port}: new instance pid {} ({}) failed {} time(s) over {} while old instance pid {} ({}) still listened",
                run.pid,
                run.comm,
                run.count,
                secs(gap(run.first, run.last)),
                t.pid,
                t.comm
            );
            let mut gap_ms = None;
            if let Some(closed) = t.until {
                let after = gap(run.first, closed);
                gap_ms = Some(after.as_secs_f64() * 1000.0);
                text += &format!(
                    "; {} closed its listener at {} (+{} after the first failure)",
                    t.pid,
                    humantime::format_rfc3339_millis(closed),
                    secs(after)
                );
                let next = story
                    .holders
                    .iter()
                    .find(|n| n.pid == run.pid && n.since.is_some_and(|s| s >= closed));
                match next {
                    Some(n) => {
                        let s = n.since.expect("found by since");
                        text += &format!(
                            "; pid {} listened at +{} after the release (its retry succeeded)",
                            run.pid,
                            secs(gap(closed, s))
                        );
                    }
                    None if run.last <= closed => {
                        text += &format!(
                            "; its last retry was {} before the release: a retry after that would have succeeded",
                            secs(gap(run.last, closed))
                        );
                    }
                    None => {}
                }
            } else {
                text += &format!(
                    "; {} was still listening at the end of the recording",
                    t.pid
                );
            }
            out.push(Pattern {
                kind: "overlap",
                text,
                pids: vec![t.pid, run.pid],
                gap_ms,
                released: t.until,
            });
            // A stray: a different program held the port.
            if !t.comm.is_empty() && t.comm != "?" && t.comm != run.comm {
                out.push(Pattern {
                    kind: "stray",
                    text: format!(
                        "stray process on port {port}: pid {} ({}) — another program than the failing {} — held the port while pid {} failed {} time(s)",
                        t.pid, t.comm, run.comm, run.pid, run.count
                    ),
                    pids: vec![t.pid, run.pid],
                    gap_ms: None,
                    released: t.until,
                });
            }
            break;
        }
        if (run.time_wait_only || run.reason.as_deref() == Some("time_wait"))
            && run.reuseaddr == Some(false)
        {
            out.push(Pattern {
                    kind: "time_wait",
                    text: format!(
                        "TIME_WAIT without SO_REUSEADDR on port {port}: pid {} ({}) failed {} time(s) over {} while only TIME_WAIT leftovers held the port ({} counted on the port); set SO_REUSEADDR before bind()",
                        run.pid,
                        run.comm,
                        run.count,
                        secs(gap(run.first, run.last)),
                        story.time_wait.count
                    ),
                    pids: vec![run.pid],
                    gap_ms: None,
                    released: None,
                });
        }
    }
    // The same failure across restarts: one program, several pids.
    let mut by_prog: HashMap<(&str, &str, Option<&str>), Vec<&Run>> = HashMap::new();
    for run in &story.runs {
        by_prog
            .entry((&run.comm, &run.errno, run.reason.as_deref()))
            .or_default()
            .push(run);
    }
    let mut repeated: Vec<_> = by_prog
        .into_iter()
        .filter(|(_, runs)| {
            let mut pids: Vec<u32> = runs.iter().map(|r| r.pid).collect();
            pids.sort_unstable();
            pids.dedup();
            pids.len() >= 2
        })
        .collect();
    repeated.sort_by_key(|(_, runs)| runs[0].first);
    for ((comm, errno, reason), runs) in repeated {
        // A pid that failed, restarted as another and came back (a reused
        // pid, or runs split by a gap) is one instance, not two: first seen
        // order, each once.
        let mut seen = std::collections::HashSet::new();
        let pids: Vec<u32> = runs
            .iter()
            .map(|r| r.pid)
            .filter(|p| seen.insert(*p))
            .collect();
        let total: u64 = runs.iter().map(|r| r.count).sum();
        out.push(Pattern {
            kind: "repeated",
            text: format!(
                "the same failure repeated across {} restarts of {comm} on port {port}: {errno}{} {total} time(s) over {} (pids {})",
                pids.len(),
                reason.map(|r| format!(" ({r})")).unwrap_or_default(),
                secs(gap(runs[0].first, runs[runs.len() - 1].last)),
                list(&pids)
            ),
            pids,
            gap_ms: None,
            released: None,
        });
    }
    out
}

/// Reads `files` into an analysis.
pub fn analyse(
    files: &[std::path::PathBuf],
    filter: &Filter,
) -> anyhow::Result<(Analysis, super::read::ReadStats)> {
    let mut a = Analysis::default();
    let mut stats = super::read::ReadStats::default();
    let mut counts = (0u64, 0u64, 0u64);
    super::read_all(files, &mut stats, |line| {
        let kind = match &line {
            LineView::Event(_) => 0,
            LineView::Port(_) => 1,
            LineView::Repeat(_) | LineView::Notice => 2,
        };
        if a.add_view(line, filter) {
            match kind {
                0 => counts.0 += 1,
                1 => counts.1 += 1,
                _ => {}
            }
        } else {
            counts.2 += 1;
        }
    })?;
    stats.events = counts.0;
    stats.port_lines = counts.1;
    stats.filtered = counts.2;
    a.finish();
    Ok((a, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::json::parse_line;

    fn failure(
        ms: u64,
        pid: u32,
        comm: &str,
        holder: Option<(u32, &str, &str)>,
        port: u16,
        errno: &str,
        reuseaddr: bool,
    ) -> String {
        let ts = humantime::format_rfc3339_nanos(
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_000 + ms),
        );
        let ret = if errno == "EADDRINUSE" { -98 } else { -99 };
        let holders = holder.map_or(String::new(), |(pid, comm, state)| format!(
            ",\"holders\":[{{\"pid\":{pid},\"comm\":\"{comm}\",\"cmdline\":null,\"uid\":0,\"state\":\"{state}\",\"addr\":\"0.0.0.0\",\"port\":{port},\"exited\":false,\"unit\":null,\"container\":null,\"pids\":[{pid}],\"sockets\":1,\"time_left_ms\":null,\"remote\":null,\"v6only\":null,\"reuseaddr\":false,\"reuseport\":false,\"cross_family\":false,\"seen\":\"sock_diag\"}}]"
        ));
        format!(
            "{{\"ts\":\"{ts}\",\"pid\":{pid},\"tid\":{pid},\"ppid\":1,\"uid\":0,\"gid\":0,\"comm\":\"{comm}\",\"cgroup_id\":1,\"syscall\":\"bind\",\"errno\":\"{errno}\",\"ret\":{ret},\"proto\":\"tcp\",\"family\":\"ipv4\",\"addr\":\"0.0.0.0\",\"port\":{port},\"netns\":1,\"fd\":3,\"ifindex\":null,\"opts\":{{\"reuseaddr\":{reuseaddr},\"reuseport\":false,\"v6only\":false,\"freebind\":false,\"transparent\":false,\"bind_address_no_port\":false}},\"folded\":0,\"source\":\"tracepoint\"{holders}}}"
        )
    }

    fn analyse_lines(lines: &[String]) -> Analysis {
        let mut a = Analysis::default();
        for l in lines {
            assert!(
                a.add_view(parse_line(l.as_bytes()).unwrap(), &Filter::default()),
                "{l}"
            );
        }
        a.finish();
        a
    }

    fn pattern<'a>(a: &'a Analysis, port: u16, kind: &str) -> &'a Pattern {
        a.ports[&port]
            .patterns
            .iter()
            .find(|p| p.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} pattern on port {port}"))
    }

    fn kinds(a: &Analysis, port: u16) -> Vec<&'static str> {
        a.ports[&port].patterns.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn stray_repeated_time_wait_and_ephemeral() {
        let a = analyse_lines(&[
            // A stray python holds nginx's port across two restarts.
            failure(
                0,
                100,
                "nginx",
                Some((50, "python3", "LISTEN")),
                80,
                "EADDRINUSE",
                true,
            ),
            failure(
                500,
                100,
                "nginx",
                Some((50, "python3", "LISTEN")),
                80,
                "EADDRINUSE",
                true,
            ),
            failure(
                5000,
                101,
                "nginx",
                Some((50, "python3", "LISTEN")),
                80,
                "EADDRINUSE",
                true,
            ),
            // TIME_WAIT only, no SO_REUSEADDR.
            failure(
                0,
                200,
                "srv",
                Some((0, "", "TIME_WAIT")),
                8080,
                "EADDRINUSE",
                false,
            ),
            // Ephemeral exhaustion: no local port for port 0.
            failure(0, 300, "client", None, 0, "EADDRNOTAVAIL", false),
        ]);
        let k = kinds(&a, 80);
        assert!(
            k.contains(&"overlap") && k.contains(&"stray") && k.contains(&"repeated"),
            "{k:?}"
        );
        let repeated = pattern(&a, 80, "repeated");
        assert_eq!(repeated.pids, vec![100, 101]);
        assert!(repeated.text.contains("3 time(s)"), "{}", repeated.text);
        assert_eq!(a.ports[&80].runs.len(), 2);
        assert_eq!(a.ports[&80].runs[0].count, 2);
        assert_eq!(kinds(&a, 8080), vec!["time_wait"]);
        assert_eq!(a.ephemeral.len(), 1);
        assert_eq!(a.failures, 5);
        assert_eq!(a.by_command.0["nginx"], 3);
        assert_eq!(a.by_reason.0["EADDRNOTAVAIL"], 1);
    }

    #[test]
    fn repeated_counts_each_pid_once_when_pids_come_back() {
        let holder = Some((50, "python3", "LISTEN"));
        let a = analyse_lines(&[
            failure(0, 100, "nginx", holder, 80, "EADDRINUSE", true),
            failure(5000, 101, "nginx", holder, 80, "EADDRINUSE", true),
            // Past RUN_GAP: a run of its own.
            failure(200_000, 100, "nginx", holder, 80, "EADDRINUSE", true),
        ]);
        let repeated = pattern(&a, 80, "repeated");
        assert_eq!(repeated.pids, vec![100, 101]);
        assert!(
            repeated.text.contains("across 2 restarts"),
            "{}",
            repeated.text
        );
    }

    #[test]
    fn tallies_and_kept_entries_are_bounded() {
        let mut a = Analysis::default();
        for i in 0..(KEEP as u32 + 50) {
            let l = failure(
                u64::from(i) * 120_000,
                1000 + i,
                "x",
                Some((999, "y", "LISTEN")),
                9,
                "EADDRINUSE",
                true,
            );
            a.add_view(parse_line(l.as_bytes()).unwrap(), &Filter::default());
        }
        let s = &a.ports[&9];
        assert_eq!(s.runs.len(), KEEP);
        assert_eq!(s.runs_dropped, 50);
        assert_eq!(s.failures, KEEP as u64 + 50);
    }
}
