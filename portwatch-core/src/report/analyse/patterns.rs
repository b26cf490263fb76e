//! Restart patterns, recognised once every line is in from what each port
//! kept, each by a function of its own: on every run that failed because
//! the port was in use, an overlap with the old instance, a stray program
//! holding the port, TIME_WAIT without SO_REUSEADDR; across a port's runs,
//! the same failure repeated by several pids; across ports, ephemeral-port
//! exhaustion. Every gap is measured between recorded events.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime},
};

use super::model::{Analysis, Exhaustion, Pattern, PatternKind, PortStory, Run, Tenure};
use crate::time::secs;

impl Analysis {
    /// Recognises the patterns; call once every line is in.
    pub fn finish(&mut self) {
        for story in self.ports.values_mut() {
            story.patterns = of_port(story);
        }
        self.ephemeral = ephemeral_exhausted(&self.exhaustion).into_iter().collect();
    }
}

/// A check of one failure run against its port's story.
type RunCheck = fn(&PortStory, &Run) -> Option<Pattern>;

/// Tried in this order on every run that failed with EADDRINUSE.
const RUN_CHECKS: [RunCheck; 3] = [overlap, stray, time_wait];

/// A port's patterns: each run's, in run order, then the repeated failures.
fn of_port(story: &PortStory) -> Vec<Pattern> {
    let mut out = Vec::new();
    for run in story.runs.iter().filter(|r| r.errno == "EADDRINUSE") {
        out.extend(RUN_CHECKS.iter().filter_map(|check| check(story, run)));
    }
    out.extend(repeated(story));
    out
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

/// The other process that listened while `run` failed: the oldest kept
/// tenure of a holder its failures' lookups named.
fn old_instance<'s>(story: &'s PortStory, run: &Run) -> Option<&'s Tenure> {
    story
        .holders
        .iter()
        .find(|t| t.pid != run.pid && run.holders.contains(&t.pid))
}

/// The failing process started while the old instance still listened.
fn overlap(story: &PortStory, run: &Run) -> Option<Pattern> {
    let old = old_instance(story, run)?;
    let mut text = format!(
        "overlap on port {}: new instance pid {} ({}) failed {} time(s) over {} while old instance pid {} ({}) still listened",
        story.port,
        run.pid,
        run.comm,
        run.count,
        secs(gap(run.first, run.last)),
        old.pid,
        old.comm
    );
    let gap_ms = match old.until {
        Some(closed) => {
            text += &release(story, run, old.pid, closed);
            Some(gap(run.first, closed).as_secs_f64() * 1000.0)
        }
        None => {
            text += &format!(
                "; {} was still listening at the end of the recording",
                old.pid
            );
            None
        }
    };
    Some(Pattern {
        kind: PatternKind::Overlap,
        text,
        pids: vec![old.pid, run.pid],
        gap_ms,
        released: old.until,
    })
}

/// What an overlap's sentence says of the old instance's release at
/// `closed`: how long after the first failure, and whether the failing
/// process listened after it or gave up before it.
fn release(story: &PortStory, run: &Run, old: u32, closed: SystemTime) -> String {
    let mut text = format!(
        "; {old} closed its listener at {} (+{} after the first failure)",
        humantime::format_rfc3339_millis(closed),
        secs(gap(run.first, closed))
    );
    let listened = story
        .holders
        .iter()
        .filter(|t| t.pid == run.pid)
        .find_map(|t| t.since.filter(|&s| s >= closed));
    match listened {
        Some(since) => {
            text += &format!(
                "; pid {} listened at +{} after the release (its retry succeeded)",
                run.pid,
                secs(gap(closed, since))
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
    text
}

/// The process that listened while `run` failed is another program.
fn stray(story: &PortStory, run: &Run) -> Option<Pattern> {
    let old = old_instance(story, run)?;
    if old.comm.is_empty() || old.comm == "?" || old.comm == run.comm {
        return None;
    }
    Some(Pattern {
        kind: PatternKind::Stray,
        text: format!(
            "stray process on port {}: pid {} ({}) — another program than the failing {} — held the port while pid {} failed {} time(s)",
            story.port, old.pid, old.comm, run.comm, run.pid, run.count
        ),
        pids: vec![old.pid, run.pid],
        gap_ms: None,
        released: old.until,
    })
}

/// Only TIME_WAIT leftovers held the port, and SO_REUSEADDR was not set.
fn time_wait(story: &PortStory, run: &Run) -> Option<Pattern> {
    let held_by_time_wait = run.time_wait_only || run.reason.as_deref() == Some("time_wait");
    if !held_by_time_wait || run.reuseaddr != Some(false) {
        return None;
    }
    Some(Pattern {
        kind: PatternKind::TimeWait,
        text: format!(
            "TIME_WAIT without SO_REUSEADDR on port {}: pid {} ({}) failed {} time(s) over {} while only TIME_WAIT leftovers held the port ({} counted on the port); set SO_REUSEADDR before bind()",
            story.port,
            run.pid,
            run.comm,
            run.count,
            secs(gap(run.first, run.last)),
            story.time_wait.count
        ),
        pids: vec![run.pid],
        gap_ms: None,
        released: None,
    })
}

/// One program's failure, whichever pid it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Failing<'a> {
    comm: &'a str,
    errno: &'a str,
    reason: Option<&'a str>,
}

/// The same failure across restarts: one program, several pids; oldest
/// first.
fn repeated(story: &PortStory) -> Vec<Pattern> {
    let mut by_failure: HashMap<Failing<'_>, Vec<&Run>> = HashMap::new();
    for run in &story.runs {
        let failing = Failing {
            comm: &run.comm,
            errno: &run.errno,
            reason: run.reason.as_deref(),
        };
        by_failure.entry(failing).or_default().push(run);
    }
    let mut found: Vec<(Failing<'_>, Vec<&Run>)> = by_failure
        .into_iter()
        .filter(|(_, runs)| {
            let first = runs[0].pid;
            runs.iter().any(|r| r.pid != first)
        })
        .collect();
    found.sort_by(|(a, runs_a), (b, runs_b)| runs_a[0].first.cmp(&runs_b[0].first).then(a.cmp(b)));
    found
        .into_iter()
        .map(|(failing, runs)| restarts(story.port, failing, &runs))
        .collect()
}

/// The pattern of one program's `runs` (two pids or more).
fn restarts(port: u16, failing: Failing<'_>, runs: &[&Run]) -> Pattern {
    // A pid that failed, restarted as another and came back (a reused pid,
    // or runs split by a gap) is one instance, not two: first seen order,
    // each once.
    let mut seen = HashSet::new();
    let pids: Vec<u32> = runs
        .iter()
        .map(|r| r.pid)
        .filter(|p| seen.insert(*p))
        .collect();
    let total: u64 = runs.iter().map(|r| r.count).sum();
    let Failing {
        comm,
        errno,
        reason,
    } = failing;
    Pattern {
        kind: PatternKind::Repeated,
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
    }
}

/// Failures to get a local port, across ports.
fn ephemeral_exhausted(e: &Exhaustion) -> Option<Pattern> {
    if e.failures == 0 {
        return None;
    }
    let first = e.first.unwrap_or(SystemTime::UNIX_EPOCH);
    let last = e.last.unwrap_or(SystemTime::UNIX_EPOCH);
    Some(Pattern {
        kind: PatternKind::EphemeralExhausted,
        text: format!(
            "ephemeral-port exhaustion: {} failure(s) to get a local port over {} (pids {}): too many connections or bound sockets use up net.ipv4.ip_local_port_range",
            e.failures,
            secs(gap(first, last)),
            list(&e.pids)
        ),
        pids: e.pids.clone(),
        gap_ms: None,
        released: None,
    })
}
