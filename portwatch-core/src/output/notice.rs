//! Notices: what portwatch says about itself on stderr, beside the events —
//! one sentence for people, or one JSON object with a `type` for scripts.

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use super::{text::printable, Format};
use crate::fold::{Finish, Repeat};

/// What the writer did without a lookup's answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unenriched {
    /// Events whose lookup took longer than `--lookup-timeout`.
    pub timeouts: u64,
    /// Events written without waiting for a lookup, or without one, because
    /// lookups could not keep up.
    pub shed: u64,
}

/// One notice. The JSON form is `{"type": "<variant>", ...fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notice {
    /// portwatch mounted a filesystem it needs.
    Mount {
        /// Which (`tracefs`).
        fs: String,
        /// Where.
        path: PathBuf,
    },
    /// Which kernel hook captures the calls, and why that one.
    Backend {
        /// `fexit` or `tracepoint`.
        backend: String,
        /// Why.
        why: String,
    },
    /// Something works less well than it could, and why.
    Degraded {
        /// What (`port_life`, `io_uring`).
        what: String,
        /// Why.
        why: String,
    },
    /// `run`: where CMD and its descendants run, the cgroup the kernel
    /// filter matches.
    Placed {
        /// `systemd_scope`: a transient scope unit systemd made (systemd is
        /// PID 1 and portwatch's cgroup is not delegated to it);
        /// `delegated`: a cgroup under portwatch's own, which systemd
        /// delegated (Delegate=yes); `cgroup`: a cgroup under portwatch's
        /// own (systemd is not PID 1).
        how: String,
        /// The cgroup v2 path, as /proc/PID/cgroup says it.
        cgroup: String,
        /// The scope unit, for `systemd_scope`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit: Option<String>,
    },
    /// Capturing: scripts can start what they want watched.
    Ready {
        /// The backend, when one is attached.
        #[serde(skip_serializing_if = "Option::is_none")]
        backend: Option<String>,
        /// Milliseconds from start to ready.
        startup_ms: u64,
    },
    /// Events the ring buffer had no room for since the last such notice.
    Lost {
        /// Since the last notice.
        lost: u64,
        /// Since the start.
        total_lost: u64,
        /// Seconds the first figure covers.
        seconds: u64,
    },
    /// Failures folded after the last one shown of their stream.
    Repeat(Repeat),
    /// The account at exit.
    Summary(Summary),
    /// `--record`: writing the journal fails (said once; then counted).
    RecordFailing {
        /// The journal directory.
        dir: PathBuf,
        /// Why (a full disk, a vanished directory).
        why: String,
    },
    /// `--record`: writing the journal works again.
    RecordResumed {
        /// The journal directory.
        dir: PathBuf,
        /// Lines lost while it failed.
        lost: u64,
    },
    /// `--record`: the journal's account at exit.
    Recorded(crate::journal::JournalStats),
}

/// Every matched call, accounted for at exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Seconds since start.
    pub seconds: f64,
    /// Calls that matched the filters (kernel count).
    pub matched: u64,
    /// Events shown.
    pub shown: u64,
    /// Failures folded into events shown.
    pub folded_shown: u64,
    /// Failures folded after the last one shown of their stream.
    pub folded_tail: u64,
    /// Events lost (ring buffer full).
    pub lost: u64,
    /// Events the kernel sent.
    pub sent: u64,
    /// Failures the kernel folded.
    pub folded: u64,
    /// sys_exit without sys_enter (entry pairing).
    pub no_entry: u64,
    /// Failures not folded because the fold table was full.
    pub fold_table_full: u64,
    /// Records that did not decode.
    pub malformed: u64,
    /// Holder lookups that took longer than `--lookup-timeout`.
    pub lookup_timeouts: u64,
    /// Events written with the kernel's record alone because failures came
    /// faster than holder lookups.
    #[serde(default)]
    pub lookups_shed: u64,
    /// Stale fold-table entries swept (older than the fold window).
    #[serde(default)]
    pub fold_swept: u64,
    /// Fold-table entries at exit.
    #[serde(default)]
    pub fold_entries: u64,
}

impl Summary {
    /// From a finished session.
    pub fn new(seconds: f64, f: &Finish, unenriched: Unenriched) -> Self {
        Self {
            seconds,
            matched: f.counters.matched,
            shown: f.shown,
            folded_shown: f.folded_shown,
            folded_tail: f.folded_tail,
            lost: f.counters.lost,
            sent: f.counters.sent,
            folded: f.counters.folded,
            no_entry: f.counters.no_entry,
            fold_table_full: f.counters.fold_table_full,
            malformed: f.malformed,
            lookup_timeouts: unenriched.timeouts,
            lookups_shed: unenriched.shed,
            fold_swept: f.fold_swept,
            fold_entries: f.fold_entries,
        }
    }
}

impl Notice {
    /// The sentence for people (after "portwatch: ").
    pub fn human(&self) -> String {
        match self {
            Self::Mount { fs, path } => format!("mounted {fs} at {}", path.display()),
            Self::Backend { backend, why } => format!("backend {backend} ({why})"),
            Self::Degraded { what, why } if what == "port_life" => format!(
                "the recording will not show listeners opening and closing or TIME_WAIT counts ({why}); failures are still recorded"
            ),
            Self::Degraded { what, why } => format!("degraded: {what} ({why})"),
            Self::Placed { how, cgroup, unit } => {
                let cgroup = printable(cgroup);
                match (how.as_str(), unit) {
                    ("systemd_scope", Some(unit)) => format!(
                        "CMD runs in the transient unit {} (systemd is PID 1; cgroup {cgroup})",
                        printable(unit)
                    ),
                    ("delegated", _) => format!(
                        "CMD runs in cgroup {cgroup}, made under portwatch's own, which systemd delegated"
                    ),
                    _ => format!("CMD runs in cgroup {cgroup}, made under portwatch's own"),
                }
            }
            Self::Ready { startup_ms, .. } => format!("ready ({startup_ms} ms)"),
            Self::Lost {
                lost,
                total_lost,
                seconds,
            } => format!(
                "{lost} events lost in the last {seconds}s: the ring buffer was full (raise --ring-size, keep --fold-window on); {total_lost} lost in all"
            ),
            Self::Repeat(r) => format!(
                "pid {} ({}) {} {} {} {}: {} more identical failure(s) after the last one shown",
                r.pid,
                printable(&r.comm),
                r.syscall.name(),
                r.proto.name(),
                std::net::SocketAddr::new(r.addr, r.port),
                r.errno.map(|e| e.name()).unwrap_or_default(),
                r.count
            ),
            Self::RecordFailing { dir, why } => format!(
                "cannot record in {}: {why}; the live stream goes on, lost lines are counted, recording resumes when it can",
                dir.display()
            ),
            Self::RecordResumed { dir, lost } => format!(
                "recording in {} again; {lost} line(s) were lost meanwhile",
                dir.display()
            ),
            Self::Recorded(r) => format!(
                "recorded {} line(s) in {}; {} lost to a slow disk, {} lost to write errors",
                r.lines,
                r.dir.display(),
                r.lost_queue,
                r.lost_write
            ),
            Self::Summary(s) => format!(
                "stopped after {:.1}s: {} calls matched; {} shown, {} folded into them, {} folded after the last shown, {} lost{}",
                s.seconds,
                s.matched,
                s.shown,
                s.folded_shown,
                s.folded_tail,
                s.lost,
                if s.lookups_shed > 0 {
                    format!("; {} shown without a holder lookup (lookups could not keep up)", s.lookups_shed)
                } else {
                    String::new()
                }
            ),
        }
    }
}

/// Where notices go (stderr, or a file shared with the events), shaped by
/// the output format.
#[derive(Debug, Clone)]
pub struct Notices {
    /// People or JSON.
    pub format: Format,
    file: Option<Arc<Mutex<std::fs::File>>>,
}

impl Notices {
    /// Notices on stderr.
    pub fn new(format: Format) -> Self {
        Self { format, file: None }
    }

    /// Notices appended to `file` (`run --output`).
    pub fn to_file(format: Format, file: Arc<Mutex<std::fs::File>>) -> Self {
        Self {
            format,
            file: Some(file),
        }
    }

    /// Writes `notice` as one line.
    pub fn say(&self, notice: &Notice) {
        let line = match self.format {
            Format::Human => format!("portwatch: {}", notice.human()),
            Format::Json => match serde_json::to_string(notice) {
                Ok(line) => line,
                Err(e) => format!("portwatch: cannot render a notice: {e}"),
            },
        };
        match &self.file {
            Some(file) => {
                if let Ok(mut f) = file.lock() {
                    let _ = writeln!(f, "{line}");
                }
            }
            None => eprintln!("{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_have_a_type_and_read_back() {
        let ready = Notice::Ready {
            backend: Some("tracepoint".into()),
            startup_ms: 61,
        };
        let v = serde_json::to_value(&ready).unwrap();
        assert_eq!(v["type"], "ready");
        assert_eq!(v["startup_ms"], 61);
        let back: Notice = serde_json::from_value(v).unwrap();
        assert_eq!(back, ready);
        assert_eq!(ready.human(), "ready (61 ms)");
    }

    #[test]
    fn placed_says_which_way_cmd_is_scoped() {
        let scope = Notice::Placed {
            how: "systemd_scope".into(),
            cgroup: "/system.slice/portwatch-run-7.scope".into(),
            unit: Some("portwatch-run-7.scope".into()),
        };
        assert_eq!(
            scope.human(),
            "CMD runs in the transient unit portwatch-run-7.scope (systemd is PID 1; cgroup /system.slice/portwatch-run-7.scope)"
        );
        let v = serde_json::to_value(&scope).unwrap();
        assert_eq!(v["type"], "placed");
        assert_eq!(serde_json::from_value::<Notice>(v).unwrap(), scope);
        let plain = Notice::Placed {
            how: "cgroup".into(),
            cgroup: "/user.slice/portwatch-run-7".into(),
            unit: None,
        };
        assert!(!serde_json::to_string(&plain).unwrap().contains("unit"));
        assert_eq!(
            plain.human(),
            "CMD runs in cgroup /user.slice/portwatch-run-7, made under portwatch's own"
        );
    }
}
