//! `portwatch who`: the sockets on a port in one network namespace, who
//! holds them, and whether a new bind() would succeed now (plain,
//! SO_REUSEADDR, SO_REUSEPORT), with the reason, diagnosis and fix `watch`
//! would give. One shot, without any eBPF, and without binding anything
//! unless `--trial` asks for it.

use std::{
    fs::File,
    io::{self, Write as _},
    os::fd::AsFd,
    path::Path,
};

use portwatch_core::{
    engine::{self, Batch},
    holders::{netns, Devices, OwnerLookup},
    output::who::{self as out, WhoReport},
    request::Binding,
};

use super::Error;
use crate::{
    capture::owners::{self, LookupChoice},
    cli::WhoArgs,
};

/// Exit status of `who`: a plain bind would fail now (scripts rely on it).
pub const EXIT_TAKEN: u8 = 1;

/// Runs `portwatch who`; Ok(true) when a plain bind would succeed now.
pub fn run(args: &WhoArgs) -> Result<bool, Error> {
    install_lookup(args.lookup.lookup)?;
    let ns = args.netns.as_deref().map(open_netns).transpose()?;
    let (port, proto) = args.port;
    let binding = Binding {
        device: args.device.clone(),
        ..Binding::plain(proto, args.addr, port)
    };
    let report = in_netns(ns.as_ref(), |inode| {
        check_device(binding.device.as_deref(), inode)?;
        look(binding, inode, args.trial, args.netns.as_deref())
    })?;
    if !nix::unistd::geteuid().is_root() && report.sockets.iter().any(|h| h.pid.is_none()) {
        eprintln!("portwatch: not root: the processes of other users' sockets cannot be named");
    }
    if args.verbose {
        say_lookup(&report);
    }
    answer(&report, args.json)?;
    Ok(report.free)
}

/// Installs the owner lookup `choice` names (`--lookup`): only
/// `--lookup iterator` can fail, on a kernel that refuses the iterator.
pub(crate) fn install_lookup(choice: LookupChoice) -> Result<(), Error> {
    owners::install(choice).map_err(Error::Unsupported)
}

/// `-v`: how the holders were found, and why not with the iterator.
fn say_lookup(report: &WhoReport) {
    match (report.lookup, &report.lookup_note) {
        (OwnerLookup::Iterator, _) => eprintln!("portwatch: holders found by the BPF iterator"),
        (OwnerLookup::Walk, Some(why)) => {
            eprintln!("portwatch: holders found by walking /proc: {why}")
        }
        (OwnerLookup::Walk, None) => eprintln!("portwatch: holders found by walking /proc"),
    }
}

/// A network namespace named on the command line: its file, inode and path.
pub(crate) struct NamedNetns<'a> {
    file: File,
    inode: u32,
    path: &'a Path,
}

/// Opens the namespace file named by `--netns`.
pub(crate) fn open_netns(path: &Path) -> Result<NamedNetns<'_>, Error> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            Error::Usage(format!("network namespace '{}': {e}", path.display()))
        }
        _ => Error::Unsupported(format!("network namespace '{}': {e}", path.display())),
    })?;
    let inode = nix::sys::stat::fstat(file.as_fd())
        .map_err(|e| Error::Unsupported(format!("network namespace '{}': {e}", path.display())))?
        .st_ino;
    Ok(NamedNetns {
        file,
        inode: inode as u32,
        path,
    })
}

/// Runs `f` with the inode of `ns` (or of portwatch's own namespace). In
/// `ns`, on a thread of its own: setns moves only the calling thread. In
/// portwatch's own, on this thread: there is nothing to enter, and the
/// SO_REUSEPORT trial puts the thread's fsuid back before it returns (a
/// thread more was ~2% of a `who` under an emulated CPU, BENCHMARKS.md).
pub(crate) fn in_netns<T: Send>(
    ns: Option<&NamedNetns<'_>>,
    f: impl FnOnce(u32) -> Result<T, Error> + Send,
) -> Result<T, Error> {
    let Some(ns) = ns else {
        let inode = netns::current_netns()
            .ok_or_else(|| Error::Unsupported("cannot read /proc/thread-self/ns/net".into()))?;
        return f(inode);
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                netns::in_netns(ns.file.as_fd(), || f(ns.inode)).map_err(|e| {
                    match e.raw_os_error() {
                        Some(libc::EINVAL) => Error::Usage(format!(
                            "'{}' is not a network namespace",
                            ns.path.display()
                        )),
                        _ => Error::Unsupported(format!(
                            "cannot enter network namespace '{}': {e}",
                            ns.path.display()
                        )),
                    }
                })?
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `--device` must name a device of the calling thread's network namespace
/// (`netns`): a name it lacks is a usage error (exit 2), said at once.
pub(crate) fn check_device(name: Option<&str>, netns: u32) -> Result<(), Error> {
    let Some(name) = name else {
        return Ok(());
    };
    let devices = Devices::here(true, &[], None)
        .map_err(|e| Error::Unsupported(format!("listing the network devices: {e}")))?;
    match devices.index_of(name) {
        Some(_) => Ok(()),
        None => Err(Error::Usage(format!(
            "no network device '{}' in network namespace {netns}",
            name.escape_debug()
        ))),
    }
}

/// Writes the answer to stdout, as text or JSON. A closed pipe (`| head`,
/// `| grep -q`) is no failure: the exit status still answers.
pub(crate) fn answer(report: &WhoReport, json: bool) -> Result<(), Error> {
    let mut stdout = io::stdout().lock();
    let written = if json {
        out::write_json(&mut stdout, report)
    } else {
        out::write_human(&mut stdout, report)
    };
    match written.and_then(|()| stdout.flush()) {
        // 3, not 1: `who`'s and `wait`'s 1 is an answer ("taken").
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Error::Unsupported(format!("writing the answer: {e}")))
        }
        _ => Ok(()),
    }
}

/// The engine's answer for one binding, in the calling thread's network
/// namespace (`netns`): with trial binds only if `trial`; with containers'
/// published ports when `named` is None (Docker's port bindings live in the
/// host's namespace, which is where `who` stands without --netns), else
/// with sysctl fixes entering the namespace the way the user named it.
pub(crate) fn look(
    binding: Binding,
    netns: u32,
    trial: bool,
    named: Option<&Path>,
) -> Result<WhoReport, Error> {
    let batch = Batch {
        netns,
        bindings: vec![binding],
        trial,
        published: named.is_none(),
        enter: named.map(|p| p.display().to_string()),
    };
    let judged = engine::judge(&batch).map_err(|e| Error::Unsupported(e.to_string()))?;
    let unseen = judged.unseen;
    let judgement = judged
        .judgements
        .into_iter()
        .next()
        .ok_or_else(|| Error::Unsupported("the verdict engine answered no binding".into()))?;
    Ok(WhoReport::new(netns, judgement, unseen))
}
