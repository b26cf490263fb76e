//! NDJSON lines into the analysis, one at a time: every failure is
//! tallied, continues or starts its process's run on its port, and names
//! the port's holders at that moment; every port life line opens or closes
//! a holder's tenure or counts TIME_WAIT leftovers. Strings are copied only
//! for the runs and tenures kept. The only place that knows the NDJSON
//! line types.

use std::{borrow::Cow, time::SystemTime};

use super::{
    model::{Analysis, PortStory, Run, Tenure},
    Filter, KEEP, MAX_PORTS, RUN_GAP,
};
use crate::{
    fold::Repeat,
    holders::State,
    output::json::{EventLineView, HoldersView, LifeKind, LineView, PortLife},
    request::Proto,
};

/// What [`Analysis::add`] did with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A failure or success event, taken.
    Event,
    /// A port life line, taken.
    PortLine,
    /// A fold tail or a notice, taken.
    Other,
    /// Outside the filter: dropped.
    Filtered,
}

/// One failure as the analysis reads it, borrowed from its NDJSON line.
struct Failure<'a> {
    ts: SystemTime,
    pid: u32,
    comm: &'a str,
    proto: Proto,
    port: u16,
    /// Failures it stands for: itself and those folded into it.
    count: u64,
    syscall: &'static str,
    /// The errno's name, or the return value when it has none.
    errno: Cow<'a, str>,
    /// The diagnosis's reason code and sentence, when it has a known one.
    reason: Option<&'a str>,
    diagnosis: Option<&'a str>,
    reuseaddr: Option<bool>,
    /// Who held the port, as looked up at the failure.
    holders: &'a HoldersView<'a>,
}

impl<'a> Failure<'a> {
    fn of(r: &'a EventLineView<'a>, no_holders: &'a HoldersView<'a>) -> Failure<'a> {
        let verdict = r.verdict();
        Failure {
            ts: r.ts,
            pid: r.pid,
            comm: &r.comm,
            proto: r.proto,
            port: r.port,
            count: 1 + r.folded,
            syscall: r.syscall.name(),
            errno: match &r.errno {
                Some(e) => Cow::Borrowed(e),
                None => Cow::Owned(r.ret.to_string()),
            },
            reason: verdict.map(|(reason, _)| reason),
            diagnosis: verdict.map(|(_, diagnosis)| diagnosis),
            reuseaddr: r.opts.map(|o| o.reuseaddr),
            holders: r.holders.as_ref().unwrap_or(no_holders),
        }
    }

    /// No local port was left to pick.
    fn ephemeral_exhausted(&self) -> bool {
        self.errno == "EADDRNOTAVAIL" && self.port == 0
            || self.reason == Some("ephemeral_exhausted")
    }

    /// Only TIME_WAIT sockets held the port.
    fn time_wait_only(&self) -> bool {
        !self.holders.is_empty() && self.holders.iter().all(|h| h.state == State::TimeWait)
    }

    /// The pids holding the port (at most 4).
    fn holder_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.holders.iter().filter_map(|h| h.pid).take(4)
    }

    /// Whether `run` is this process's run this failure continues: same
    /// call, error and reason, not long after its last failure.
    fn continues(&self, run: &Run) -> bool {
        run.pid == self.pid
            && run.errno == self.errno
            && run.syscall == self.syscall
            && run.reason.as_deref() == self.reason
            && self.ts.duration_since(run.last).unwrap_or_default() <= RUN_GAP
    }

    /// A new run, starting with this failure (its strings copied).
    fn run(&self) -> Run {
        Run {
            pid: self.pid,
            comm: self.comm.to_owned(),
            syscall: self.syscall.to_owned(),
            errno: self.errno.clone().into_owned(),
            reason: self.reason.map(str::to_owned),
            diagnosis: self.diagnosis.map(str::to_owned),
            first: self.ts,
            last: self.ts,
            count: self.count,
            holders: self.holder_pids().collect(),
            holder_comms: self
                .holders
                .iter()
                .filter_map(|h| h.comm.as_deref().map(str::to_owned))
                .take(4)
                .collect(),
            time_wait_only: self.time_wait_only(),
            reuseaddr: self.reuseaddr,
        }
    }
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
    /// Takes one NDJSON line as read (borrowed), unless the filter drops it.
    pub fn add(&mut self, line: LineView<'_>, filter: &Filter) -> Added {
        match line {
            LineView::Event(r) if filter.keeps(r.port, r.ts) => {
                self.event(&r);
                Added::Event
            }
            LineView::Port(p) if filter.keeps(p.port, p.ts) => {
                self.life(&p);
                Added::PortLine
            }
            LineView::Repeat(r) if filter.keeps_port(r.port) => {
                self.repeat(&r);
                Added::Other
            }
            LineView::Notice => Added::Other,
            LineView::Event(_) | LineView::Port(_) | LineView::Repeat(_) => Added::Filtered,
        }
    }

    /// The port's story, new if need be; None past [`MAX_PORTS`] ports.
    fn story(&mut self, port: u16, ts: SystemTime) -> Option<&mut PortStory> {
        if !self.ports.contains_key(&port) && self.ports.len() >= MAX_PORTS {
            return None;
        }
        let s = self
            .ports
            .entry(port)
            .or_insert_with(|| PortStory::new(port, ts));
        s.start = s.start.min(ts);
        s.end = s.end.max(ts);
        Some(s)
    }

    fn seen(&mut self, ts: SystemTime) {
        self.first = Some(self.first.map_or(ts, |f| f.min(ts)));
        self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
    }

    /// `n` failures in the by-port, by-command and by-reason tables.
    fn tally(&mut self, port: u16, proto: Proto, comm: &str, reason: &str, n: u64) {
        self.failures += n;
        self.by_port.add(port_key(&mut self.key, port, proto), n);
        self.by_command.add(comm, n);
        self.by_reason.add(reason, n);
    }

    /// The fold tail: more failures of a run already seen.
    fn repeat(&mut self, r: &Repeat) {
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
        let reason = run.reason.clone().unwrap_or_else(|| errno.to_owned());
        self.tally(r.port, r.proto, &r.comm, &reason, r.count);
    }

    fn event(&mut self, r: &EventLineView<'_>) {
        self.seen(r.ts);
        if r.ret == 0 {
            self.successes += 1;
            return;
        }
        let no_holders = HoldersView::default();
        let f = Failure::of(r, &no_holders);
        self.tally(
            f.port,
            f.proto,
            f.comm,
            f.reason.unwrap_or(&f.errno),
            f.count,
        );
        if f.ephemeral_exhausted() {
            self.exhaustion.add(f.ts, f.pid, f.count);
        }
        let Some(story) = self.story(f.port, f.ts) else {
            self.ports_dropped += f.count;
            return;
        };
        story.failures += f.count;
        // Whoever held the port at the failure held it since then at least.
        for h in f.holders.iter() {
            if let (Some(pid), State::Listen) = (h.pid, h.state) {
                if pid != f.pid {
                    story.holder_seen(pid, h.comm.as_deref(), h.cmdline.as_deref(), f.ts);
                }
            }
        }
        story.failed(&f);
    }

    fn life(&mut self, p: &PortLife) {
        self.seen(p.ts);
        let Some(story) = self.story(p.port, p.ts) else {
            return;
        };
        match p.event {
            LifeKind::Listen => story.push_tenure(Tenure {
                pid: p.pid,
                comm: p.comm.clone(),
                cmdline: None,
                since: Some(p.ts),
                first_seen: p.ts,
                until: None,
                closed_by: None,
                socket: Some(p.socket),
            }),
            LifeKind::Closed => story.closed(p),
            LifeKind::TimeWait => {
                let tw = &mut story.time_wait;
                tw.count += u64::from(p.count.max(1));
                tw.first.get_or_insert(p.ts);
                tw.last = Some(p.ts);
            }
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
        // be written before the failure, whose lookup took a moment).
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

    /// A listener closed: the open tenure of its socket (or else of its
    /// holder) ends; one not seen open is kept as a tenure of unknown start.
    fn closed(&mut self, p: &PortLife) {
        let holder = p.holder_pid.unwrap_or(p.pid);
        let by_socket = self
            .holders
            .iter()
            .rposition(|t| t.until.is_none() && t.socket == Some(p.socket));
        let open = by_socket.or_else(|| {
            self.holders
                .iter()
                .rposition(|t| t.until.is_none() && (t.pid == holder || t.pid == p.pid))
        });
        match open {
            Some(i) => {
                let t = &mut self.holders[i];
                t.until = Some(p.ts);
                t.closed_by = Some(p.pid);
            }
            None => self.push_tenure(Tenure {
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

    /// A failure: it continues its run (one of the last 8), or starts one.
    fn failed(&mut self, f: &Failure<'_>) {
        match self
            .runs
            .iter_mut()
            .rev()
            .take(8)
            .find(|run| f.continues(run))
        {
            Some(run) => {
                run.count += f.count;
                run.last = run.last.max(f.ts);
                for p in f.holder_pids() {
                    if run.holders.len() < 4 && !run.holders.contains(&p) {
                        run.holders.push(p);
                    }
                }
                run.time_wait_only &= f.time_wait_only();
            }
            None => {
                if self.runs.len() >= KEEP {
                    self.runs.pop_front();
                    self.runs_dropped += 1;
                }
                self.runs.push_back(f.run());
            }
        }
    }
}
