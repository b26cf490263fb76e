//! From NDJSON lines to per-port stories, in one pass and bounded memory:
//! per port, the last [`KEEP`] holder tenures and failure runs (older ones
//! are counted, not kept), and tallies by port, command and reason capped
//! at [`TALLY_CAP`] distinct keys. `ingest` takes the lines in, `model` is
//! what is kept, `patterns` recognises restart patterns at the end from
//! what was kept.

mod ingest;
mod model;
mod patterns;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

pub use ingest::Added;
pub use model::{Analysis, Pattern, PatternKind, PortStory, Run, Tally, Tenure, TimeWait};

use super::{read::ReadStats, Error};

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
    fn keeps_port(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    fn keeps(&self, port: u16, ts: SystemTime) -> bool {
        self.keeps_port(port)
            && self.since.is_none_or(|s| ts >= s)
            && self.until.is_none_or(|u| ts <= u)
    }
}

/// Lines taken and dropped, for [`ReadStats`].
#[derive(Debug, Default)]
struct Taken {
    events: u64,
    port_lines: u64,
    filtered: u64,
}

impl Taken {
    fn count(&mut self, added: Added) {
        match added {
            Added::Event => self.events += 1,
            Added::PortLine => self.port_lines += 1,
            Added::Other => {}
            Added::Filtered => self.filtered += 1,
        }
    }
}

/// Reads `files` into an analysis.
pub fn analyse(
    files: &[std::path::PathBuf],
    filter: &Filter,
) -> Result<(Analysis, ReadStats), Error> {
    let mut a = Analysis::default();
    let mut stats = ReadStats::default();
    let mut taken = Taken::default();
    super::read_all(files, &mut stats, |line| taken.count(a.add(line, filter)))?;
    stats.events = taken.events;
    stats.port_lines = taken.port_lines;
    stats.filtered = taken.filtered;
    a.finish();
    Ok((a, stats))
}
