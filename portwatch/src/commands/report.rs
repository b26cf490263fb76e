//! `portwatch report`: read journals, write the post-mortem.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Write as _},
    os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _},
    path::Path,
};

use anyhow::{bail, Context as _, Result};

use crate::cli::ReportArgs;
use portwatch_core::report::{
    analyse::{analyse, Filter},
    read, render,
};

/// Runs `portwatch report`.
pub fn run(args: ReportArgs) -> Result<()> {
    let files = read::files(&args.paths)?;
    let filter = Filter {
        ports: args.port.clone(),
        since: args.since,
        until: args.until,
    };
    if let (Some(s), Some(u)) = (filter.since, filter.until) {
        if s > u {
            bail!("--since is after --until");
        }
    }
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
        let mut f = create_private(out)?;
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
        other => other.context("writing the report"),
    }
}

/// Creates (or truncates) `path` 0600 without following a symlink there.
fn create_private(path: &Path) -> Result<File> {
    let c = CString::new(path.as_os_str().as_bytes()).context("path has a NUL byte")?;
    // SAFETY: a valid C string; the fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY
                | libc::O_CREAT
                | libc::O_TRUNC
                | libc::O_NOFOLLOW
                | libc::O_NONBLOCK
                | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) {
            bail!(
                "{} is a symlink: refusing to write through it",
                path.display()
            );
        }
        return Err(e).with_context(|| format!("cannot create {}", path.display()));
    }
    // SAFETY: a fresh descriptor we own.
    let f = unsafe { File::from_raw_fd(fd) };
    if !f.metadata()?.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok(f)
}
