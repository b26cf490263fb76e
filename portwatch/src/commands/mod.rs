//! One module per subcommand, each with one entry point; this module
//! dispatches and maps errors to exit statuses.

pub mod report;
pub mod watch;

use std::process::ExitCode;

use crate::{capture::Unsupported, cli::Command};

/// Exit status: stopped as asked.
pub const EXIT_OK: u8 = 0;
/// Exit status: failed while running.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: bad command line.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: this system cannot run it (not root, no BTF, no usable hook).
pub const EXIT_UNSUPPORTED: u8 = 3;

impl Command {
    /// Runs the subcommand; returns the process's exit status.
    pub async fn execute(self) -> ExitCode {
        let result = match self {
            Command::Watch(args) => watch::run(args).await,
            Command::Report(args) => report::run(args),
        };
        match result {
            Ok(()) => ExitCode::from(EXIT_OK),
            Err(e) => {
                eprintln!("portwatch: {e:#}");
                if e.downcast_ref::<Unsupported>().is_some() {
                    ExitCode::from(EXIT_UNSUPPORTED)
                } else {
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
    }
}
