//! `portwatch report`: read journals (or saved `watch --json` output,
//! `journalctl -o json` exports), write the post-mortem.

use std::io::{self, Write as _};

use anyhow::{anyhow, Context as _};
use portwatch_core::report::{
    analyse::{analyse, Filter},
    read, render,
};

use super::Error;
use crate::cli::ReportArgs;

/// Runs `portwatch report`.
pub fn run(args: ReportArgs) -> Result<(), Error> {
    let filter = Filter {
        ports: args.port.clone(),
        since: args.since,
        until: args.until,
    };
    if let (Some(s), Some(u)) = (filter.since, filter.until) {
        if s > u {
            return Err(Error::Usage("--since is after --until".into()));
        }
    }
    let files = read::files(&args.paths)?;
    let (analysis, stats) = analyse(&files, &filter)?;
    let skipped = stats.corrupt + stats.truncated + stats.too_long;
    if skipped > 0 {
        eprintln!(
            "portwatch: skipped {skipped} unreadable line(s): {} corrupt, {} truncated, {} over 1 MiB",
            stats.corrupt, stats.truncated, stats.too_long
        );
    }
    if let Some(out) = &args.html {
        let page = render::html(&analysis, &stats);
        let mut f = super::create_private(out)?;
        if !f.metadata()?.is_file() {
            return Err(anyhow!("{} is not a regular file", out.display()).into());
        }
        f.write_all(page.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = if args.json {
        render::json(&mut out, &analysis, &stats)
    } else {
        render::text(&mut out, &analysis, &stats)
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other.context("writing the report")?),
    }
}
