//! One module per subcommand, each with one entry point; this module
//! dispatches and maps errors to exit statuses.

mod capture;
pub mod check;
pub mod completions;
mod error;
pub mod man;
pub mod report;
pub mod run;
pub mod wait;
pub mod watch;
pub mod who;

use std::{fs::File, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::{bail, Context as _};
pub use error::{
    Error, EXIT_CANNOT_EXECUTE, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_RUN_FAILED,
    EXIT_UNSUPPORTED, EXIT_USAGE,
};

use crate::cli::Command;

impl Command {
    /// Runs the subcommand. `Ok` is its answer as an exit status: 0, or
    /// `who`'s "taken", `wait`'s "timed out" and `check`'s "would fail"
    /// (1), or `run`'s CMD's own. Only `watch` and `run` start the async
    /// runtime: the one-shot commands answer on this thread, without the
    /// runtime's worker threads (a run of `who` under an emulated CPU paid
    /// about 6% of its time to start and stop them, BENCHMARKS.md).
    pub fn execute(self) -> Result<u8, Error> {
        if self.names_holders() {
            let run = matches!(self, Command::Run(_));
            crate::pidns::require_host()
                .map_err(Error::Unsupported)
                .map_err(|e| if run { e.in_run() } else { e })?;
        }
        match self {
            Command::Watch(args) => runtime()?
                .block_on(watch::run(args))
                .map(|()| EXIT_OK)
                .map_err(Error::from),
            Command::Run(args) => runtime()
                .map_err(Error::in_run)?
                .block_on(run::run(args))
                .map_err(Error::in_run),
            Command::Wait(args) => {
                wait::run(&args).map(|freed| answer(freed, wait::EXIT_TIMED_OUT))
            }
            Command::Check(args) => check::run(&args),
            Command::Who(args) => who::run(&args).map(|free| answer(free, who::EXIT_TAKEN)),
            Command::Completions(args) => completions::completions(args.shell)
                .map(|()| EXIT_OK)
                .map_err(Error::from),
            Command::Man(args) => man::run(&args).map(|()| EXIT_OK).map_err(Error::from),
            Command::Report(args) => report::run(args).map(|()| EXIT_OK),
        }
    }
}

impl Command {
    /// Whether the command names the processes that hold ports, which only
    /// the host's PID namespace shows ([`crate::pidns`]).
    fn names_holders(&self) -> bool {
        match self {
            Command::Watch(_)
            | Command::Run(_)
            | Command::Wait(_)
            | Command::Check(_)
            | Command::Who(_) => true,
            Command::Completions(_) | Command::Man(_) | Command::Report(_) => false,
        }
    }
}

/// The async runtime of `watch` and `run`. Two workers: the ring buffer's
/// reader never shares a thread with a writer stuck on a slow stdout.
/// Holder lookups run on blocking threads, at most BLOCKING of them:
/// tokio's default (512) grew to 56 threads under process churn, each with
/// its stack resident (and, before memory::limit_arenas, an allocator
/// arena); a cap of 8 made lookups queue past their timeout (BENCHMARKS.md,
/// soak).
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    const BLOCKING: usize = 16;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING)
        .enable_all()
        .build()
        .map_err(|e| Error::Failed(anyhow::Error::new(e).context("cannot start the async runtime")))
}

/// A yes/no answer as an exit status: 0 for yes, `no` otherwise.
fn answer(yes: bool, no: u8) -> u8 {
    if yes {
        EXIT_OK
    } else {
        no
    }
}

/// Creates (or truncates) `path`, 0600, for what a command writes where
/// it is told (`report --html`, `run --output`): never through a symlink
/// (a root process must not be steered into overwriting another file),
/// and without blocking on a FIFO.
fn create_private(path: &Path) -> anyhow::Result<File> {
    match File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "{} is a symlink: refusing to write through it",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}
