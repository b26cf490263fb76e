//! `portwatch check`: before a deploy, a verdict for each binding it is
//! about to make (free, taken, time-wait, ...), from the verdict engine's
//! rules, never from a bind. Parses, asks portwatch-core's `preflight`,
//! prints.

use std::io::{self, Write as _};

use portwatch_core::{
    output::{check as out, text::printable},
    preflight::{self, Outcome},
    request::Binding,
};

use super::{error::check_status, who, Error};
use crate::cli::CheckArgs;

/// Runs `portwatch check`; Ok is the exit status (0, or 1 when a binding
/// would fail).
pub fn run(args: &CheckArgs) -> Result<u8, Error> {
    let bindings = parse(&args.bindings)?;
    let ns = args.netns.as_deref().map(who::open_netns).transpose()?;
    // Docker's port bindings live in the host's namespace.
    let host = args.netns.is_none();
    let checked = who::in_netns(ns.as_ref(), |inode| {
        preflight::check(&bindings, inode, args.user, host)
            .map_err(|e| Error::Unsupported(e.to_string()))
    })?;
    let unnamed = checked
        .iter()
        .flat_map(|c| &c.holders)
        .any(|h| h.pid.is_none() && h.state != portwatch_core::holders::State::TimeWait);
    if !nix::unistd::geteuid().is_root() && unnamed {
        eprintln!("portwatch: not root: the processes of other users' sockets cannot be named");
    }
    answer(&checked, args.json)?;
    Ok(check_status(checked.iter().map(|c| c.verdict), args.strict))
}

/// Every binding, or a one-line usage error naming the first that does
/// not parse (escaped: it is printed back).
fn parse(texts: &[String]) -> Result<Vec<Binding>, Error> {
    texts
        .iter()
        .map(|s| {
            preflight::parse_binding(s)
                .map_err(|why| Error::Usage(printable(&format!("check: '{s}': {why}"))))
        })
        .collect()
}

/// The table or NDJSON on stdout; a closed pipe is no failure.
fn answer(checked: &[Outcome], json: bool) -> Result<(), Error> {
    let mut stdout = io::stdout().lock();
    let written = if json {
        out::write_json(&mut stdout, checked)
    } else {
        out::write_human(&mut stdout, checked)
    };
    match written.and_then(|()| stdout.flush()) {
        // 3, not 1: check's 1 is an answer ("would fail").
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Error::Unsupported(format!("writing the answer: {e}")))
        }
        _ => Ok(()),
    }
}
