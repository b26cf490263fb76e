//! `portwatch check`: before a deploy, a verdict for each binding it is
//! about to make (free, taken, time-wait, ...), from the verdict engine's
//! rules, never from a bind. Parses, asks portwatch-core's `preflight`,
//! prints.

use std::{
    io::{self, Write as _},
    time::{Duration, Instant},
};

use portwatch_core::{
    output::{check as out, text::printable},
    preflight::{self, compose, nginx, unit, Entry, Outcome, Plan},
    request::Proto,
};

use super::{error::check_status, wait, who, Error};
use crate::cli::CheckArgs;

/// Runs `portwatch check`; Ok is the exit status (0, or 1 when a binding
/// would fail).
pub fn run(args: &CheckArgs) -> Result<u8, Error> {
    who::install_lookup(args.lookup.lookup)?;
    let plan = read_plan(args)?;
    let ns = args.netns.as_deref().map(who::open_netns).transpose()?;
    // Docker's port bindings live in the host's namespace.
    let host = args.netns.is_none();
    let deadline = args
        .wait
        .filter(|t| !t.is_zero())
        .map(|t| Instant::now() + t);
    let checked = who::in_netns(ns.as_ref(), |inode| {
        let look = || {
            let enter = args.netns.as_deref().map(|p| p.display().to_string());
            preflight::check(&plan.entries, inode, args.user, host, enter.as_deref())
                .map_err(|e| Error::Unsupported(e.to_string()))
        };
        match args.wait {
            Some(_) => wait_for(look, &plan.entries, deadline),
            None => look(),
        }
    })?;
    let unnamed = checked
        .iter()
        .flat_map(|c| &c.holders)
        .any(|h| h.pid.is_none() && h.state != portwatch_core::holders::State::TimeWait);
    if !nix::unistd::geteuid().is_root() && unnamed {
        eprintln!("portwatch: not root: the processes of other users' sockets cannot be named");
    }
    answer(&checked, &plan, args.json)?;
    Ok(check_status(checked.iter().map(|c| c.verdict), args.strict))
}

/// Between looks while TIME_WAIT is in the way (it expires without a
/// notification); each look runs the NAT tables' listers, so not faster.
const TIME_WAIT_POLL: Duration = Duration::from_millis(250);
/// Between looks otherwise: a missed notification costs at most this.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// `--wait`: looks again whenever a socket is destroyed in this thread's
/// namespace, while every failure may clear by itself, until none is left
/// or `deadline`; the last look is the answer.
fn wait_for(
    mut look: impl FnMut() -> Result<Vec<Outcome>, Error>,
    entries: &[Entry],
    deadline: Option<Instant>,
) -> Result<Vec<Outcome>, Error> {
    let mut protos: Vec<Proto> = entries.iter().map(|e| e.binding.proto).collect();
    protos.sort_by_key(|p| p.code());
    protos.dedup();
    let events = wait::subscribe(&protos).ok();
    let mut buf = vec![0u8; 64 * 1024];
    let mut said = false;
    loop {
        let checked = look()?;
        let failing: Vec<&Outcome> = checked.iter().filter(|c| c.fails).collect();
        let now = Instant::now();
        if failing.is_empty()
            || !failing.iter().all(|c| c.may_clear())
            || deadline.is_some_and(|d| now >= d)
        {
            return Ok(checked);
        }
        if !said {
            eprintln!(
                "portwatch: waiting for {} binding(s) to be let go",
                failing.len()
            );
            said = true;
        }
        let time_wait = failing
            .iter()
            .any(|c| c.verdict == preflight::Category::TimeWait);
        let mut pause = if time_wait || events.is_none() {
            TIME_WAIT_POLL
        } else {
            SAFETY_POLL
        };
        if let Some(d) = deadline {
            pause = pause.min(d.saturating_duration_since(now));
        }
        match &events {
            Some(socket) if wait::readable(socket, pause) => {
                // Drain: any destroyed socket is a reason to look again.
                while socket.recv(&mut &mut buf[..], libc::MSG_DONTWAIT).is_ok() {}
            }
            Some(_) => {}
            None => std::thread::sleep(pause),
        }
    }
}

/// Every input's bindings, in the order given (plain bindings, compose
/// files, nginx, socket units), or a one-line usage error naming the
/// first that does not parse (`file:line:col: what`, escaped: it is
/// printed back).
fn read_plan(args: &CheckArgs) -> Result<Plan, Error> {
    let bad = |e: preflight::InputError| Error::Usage(printable(&format!("check: {e}")));
    let mut plan = Plan::default();
    for (i, s) in args.bindings.iter().enumerate() {
        let b = preflight::parse_binding(s)
            .map_err(|why| Error::Usage(printable(&format!("check: '{s}': {why}"))))?;
        plan.entries.push(Entry::argument(b, i + 1));
    }
    if !args.file.is_empty() {
        let input = compose::ComposeInput {
            files: args.file.clone(),
            project: args.project_name.clone(),
            env_file: args.env_file.clone(),
            profiles: args.profile.clone(),
        };
        plan.extend(compose::read(&input, &|k| std::env::var(k).ok()).map_err(bad)?);
    }
    if let Some(file) = &args.nginx {
        let input = nginx::NginxInput {
            file: (!file.is_empty()).then(|| file.into()),
            reload: args.reload,
            user: args.user,
        };
        plan.extend(nginx::read(&input).map_err(bad)?);
    }
    for u in &args.unit {
        plan.extend(unit::read(u).map_err(bad)?);
    }
    if plan.entries.is_empty() && plan.unchecked.is_empty() && args.file.is_empty() {
        return Err(Error::Usage(
            "check: nothing to check: give BINDINGs (80, 127.0.0.1:53/udp), -f COMPOSE_FILE, --nginx or --unit UNIT".into(),
        ));
    }
    Ok(plan)
}

/// The table or NDJSON on stdout; a closed pipe is no failure.
fn answer(checked: &[Outcome], plan: &Plan, json: bool) -> Result<(), Error> {
    let mut stdout = io::stdout().lock();
    let written = if json {
        out::write_json(&mut stdout, checked, &plan.unchecked)
    } else {
        out::write_human(&mut stdout, checked, &plan.unchecked)
    };
    match written.and_then(|()| stdout.flush()) {
        // 3, not 1: check's 1 is an answer ("would fail").
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Error::Unsupported(format!("writing the answer: {e}")))
        }
        _ => Ok(()),
    }
}
