//! `portwatch report`: journals (or saved `watch --json` output) read back
//! as per-port stories. [`read`] streams the lines, [`analyse`] keeps a
//! bounded model and recognises restart patterns, [`render`] writes text,
//! JSON or one self-contained HTML page.

pub mod analyse;
mod parallel;
pub mod read;
pub mod render;

use std::time::{Duration, SystemTime};

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

/// Reads every journal file in order: on the calling thread for small
/// journals, parsing spread over the cores for big ones (parsing dominates).
pub fn read_all(
    files: &[std::path::PathBuf],
    stats: &mut read::ReadStats,
    f: impl FnMut(crate::output::json::LineView<'_>),
) -> anyhow::Result<()> {
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
