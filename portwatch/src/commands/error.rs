//! How a subcommand fails, and the one place a failure becomes an exit
//! status ([`Error::exit_code`]). The README's table of exit codes is this
//! file's.

use std::io;

use portwatch_core::preflight::Category;

use crate::capture::Unsupported;

/// Exit status: stopped as asked, or the answer is yes.
pub const EXIT_OK: u8 = 0;
/// Exit status: failed while running.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: bad command line.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: this system cannot run it (not root, no BTF, no usable hook).
pub const EXIT_UNSUPPORTED: u8 = 3;
/// Exit status of `run` when portwatch itself failed: CMD's statuses are CMD's.
pub const EXIT_RUN_FAILED: u8 = 125;
/// Exit status of `run` when CMD exists but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// Exit status of `run` when CMD is not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// Exit status of `check` when a binding would fail (or, with --strict,
/// is at risk): an answer, like `who`'s "taken", never a failure.
pub const EXIT_WOULD_FAIL: u8 = 1;

/// `check`'s answer as an exit status: 0 when every binding is free or
/// only at risk (ephemeral-risk), [`EXIT_WOULD_FAIL`] when any would fail
/// (taken, time-wait, dual-stack, steered, conflict-in-plan,
/// address-missing, privileged), and with `strict` when any is at risk.
/// Usage errors (2) and "cannot answer" (3) are [`Error`]s.
pub fn check_status(verdicts: impl IntoIterator<Item = Category>, strict: bool) -> u8 {
    let fails = |c: Category| c.fails() || (strict && c.risk());
    if verdicts.into_iter().any(fails) {
        EXIT_WOULD_FAIL
    } else {
        EXIT_OK
    }
}

/// Why a subcommand stopped without its answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line asks for something that cannot be (exit 2).
    #[error("{0}")]
    Usage(String),
    /// This system cannot do it: not root, no BTF, no usable hook, no
    /// sock_diag (exit 3).
    #[error("{0}")]
    Unsupported(String),
    /// Something failed while running (exit 1).
    #[error("{0:#}")]
    Failed(anyhow::Error),
    /// `run`: CMD could not be started (126, or 127 when not found).
    #[error("cannot run {cmd}: {err}")]
    CannotStart {
        /// CMD as given.
        cmd: String,
        /// What execve said.
        err: io::Error,
    },
    /// `run`: portwatch's own failure around CMD (125).
    #[error("{0}")]
    Run(Box<Error>),
}

impl Error {
    /// The process's exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Unsupported(_) => EXIT_UNSUPPORTED,
            Error::Failed(_) => EXIT_FAILED,
            Error::CannotStart { err, .. } if err.kind() == io::ErrorKind::NotFound => {
                EXIT_NOT_FOUND
            }
            Error::CannotStart { .. } => EXIT_CANNOT_EXECUTE,
            Error::Run(_) => EXIT_RUN_FAILED,
        }
    }

    /// The same failure inside `run`, where every status but CMD's own
    /// start failures is 125.
    pub fn in_run(self) -> Self {
        match self {
            Error::CannotStart { .. } | Error::Run(_) => self,
            other => Error::Run(Box::new(other)),
        }
    }
}

/// The loader says "unsupported" with [`Unsupported`] inside its error
/// chain; everything else is a failure while running.
impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        if e.downcast_ref::<Unsupported>().is_some() {
            Error::Unsupported(format!("{e:#}"))
        } else {
            Error::Failed(e)
        }
    }
}

/// `report`'s input that cannot be read is a failure, not a usage error:
/// the command line was well formed (`report --help`, EXIT STATUS).
impl From<portwatch_core::report::Error> for Error {
    fn from(e: portwatch_core::report::Error) -> Self {
        Error::Failed(e.into())
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Failed(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_documented_status() {
        let unsupported: Error = anyhow::Error::new(Unsupported("no BTF".into()))
            .context("loading")
            .into();
        assert_eq!(unsupported.exit_code(), EXIT_UNSUPPORTED);
        assert_eq!(
            Error::from(anyhow::anyhow!("disk")).exit_code(),
            EXIT_FAILED
        );
        assert_eq!(Error::Usage("x".into()).exit_code(), EXIT_USAGE);
        let unreadable = portwatch_core::report::Error::Stat {
            path: "/nope".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        let unreadable = Error::from(unreadable);
        assert_eq!(unreadable.exit_code(), EXIT_FAILED);
        // The cause stays in the line the user reads.
        assert_eq!(
            unreadable.to_string(),
            "cannot read /nope: entity not found"
        );
        let start = |kind| Error::CannotStart {
            cmd: "x".into(),
            err: io::Error::from(kind),
        };
        assert_eq!(start(io::ErrorKind::NotFound).exit_code(), EXIT_NOT_FOUND);
        assert_eq!(
            start(io::ErrorKind::PermissionDenied).exit_code(),
            EXIT_CANNOT_EXECUTE
        );
        assert_eq!(
            start(io::ErrorKind::NotFound).in_run().exit_code(),
            EXIT_NOT_FOUND
        );
        assert_eq!(
            Error::Usage("x".into()).in_run().exit_code(),
            EXIT_RUN_FAILED
        );
        assert_eq!(unsupported.in_run().to_string(), "loading: no BTF");
    }

    #[test]
    fn check_fails_on_failures_and_with_strict_on_risks() {
        use Category::*;
        assert_eq!(check_status([Free, Free], false), EXIT_OK);
        assert_eq!(check_status([Free, EphemeralRisk], false), EXIT_OK);
        assert_eq!(check_status([Free, EphemeralRisk], true), EXIT_WOULD_FAIL);
        assert_eq!(check_status([], true), EXIT_OK);
        for failing in [
            Taken,
            TimeWait,
            DualStack,
            Steered,
            ConflictInPlan,
            AddressMissing,
            Privileged,
        ] {
            assert_eq!(check_status([Free, failing], false), EXIT_WOULD_FAIL);
        }
        // The answer "would fail" is not the usage or "cannot answer" status.
        assert_ne!(EXIT_WOULD_FAIL, EXIT_USAGE);
        assert_ne!(EXIT_WOULD_FAIL, EXIT_UNSUPPORTED);
    }
}
