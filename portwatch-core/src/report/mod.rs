//! `portwatch report`: journals (or saved `watch --json` output) read back
//! as per-port stories. [`read`] streams the lines, [`analyse`] keeps a
//! bounded model and recognises restart patterns, [`render`] writes text,
//! JSON or one self-contained HTML page.

pub mod analyse;
mod parallel;
pub mod read;
pub mod render;

use std::{
    io,
    path::PathBuf,
    time::{Duration, SystemTime},
};

/// Why the input cannot be read. The cause, when there is one, is the
/// [`source`](std::error::Error::source) (anyhow's `{:#}` prints the chain).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PATH does not exist or cannot be looked at.
    #[error("cannot read {}", .path.display())]
    Stat {
        /// The PATH as given.
        path: PathBuf,
        /// What stat said.
        #[source]
        source: io::Error,
    },
    /// A directory cannot be listed.
    #[error("cannot list {}", .path.display())]
    List {
        /// The directory.
        path: PathBuf,
        /// What readdir said.
        #[source]
        source: io::Error,
    },
    /// A directory holds neither journal files nor `*.ndjson`/`*.json`/`*.jsonl`.
    #[error("{} has no journal files", .path.display())]
    Empty {
        /// The directory.
        path: PathBuf,
    },
    /// A file cannot be opened.
    #[error("cannot open {}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What open said.
        #[source]
        source: io::Error,
    },
    /// Reading a file failed part way (what came before is counted).
    #[error("reading {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What read said.
        #[source]
        source: io::Error,
    },
    /// A thread of the parallel reader panicked: a bug, the reading stops.
    #[error("the {0} thread of the parallel reader panicked")]
    Panicked(&'static str),
}

/// Parses `--since`/`--until`: an RFC 3339 time (`2026-11-24T03:00:00Z`),
/// or a duration before now (`90m`, `2h`, `1day`).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let ago: Duration = humantime::parse_duration(s.trim_end_matches(" ago")).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-11-24T03:00:00Z) nor a duration before now (90m, 2h)")
    })?;
    SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("{s:?} reaches before 1970"))
}

/// Reads every input file in order: on the calling thread for small
/// inputs, parsing spread over the cores for big ones (parsing dominates).
pub fn read_all(
    files: &[PathBuf],
    stats: &mut read::ReadStats,
    f: impl FnMut(crate::output::json::LineView<'_>),
) -> Result<(), Error> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let size: u64 = files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let journalctl = files.iter().any(|p| read::is_journalctl_export(p));
    if threads > 1 && size >= read::PARALLEL_FROM && !journalctl {
        return parallel::read_all(files, stats, threads, read::CHUNK, f);
    }
    read::read_serial(files, stats, f)
}
