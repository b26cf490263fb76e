//! One module per subcommand, each with one entry point; this module
//! dispatches and maps errors to exit statuses.

pub mod completions;
pub mod man;
pub mod report;
pub mod run;
pub mod wait;
pub mod watch;
pub mod who;

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
            // CMD's statuses are CMD's: portwatch's own failures are 125.
            Command::Run(args) => {
                return match run::run(args).await {
                    Ok(status) => ExitCode::from(status),
                    Err(e) => {
                        eprintln!("portwatch: {e:#}");
                        ExitCode::from(match e.downcast_ref::<run::CannotStart>() {
                            Some(c) => c.status,
                            None => run::EXIT_RUN_FAILED,
                        })
                    }
                }
            }
            Command::Wait(args) => {
                return match wait::run(&args) {
                    Ok(true) => ExitCode::from(EXIT_OK),
                    Ok(false) => ExitCode::from(wait::EXIT_TIMED_OUT),
                    Err(e) => {
                        eprintln!("portwatch: {e}");
                        ExitCode::from(match e {
                            who::WhoError::Usage(_) => EXIT_USAGE,
                            who::WhoError::Cannot(_) => EXIT_UNSUPPORTED,
                        })
                    }
                }
            }
            // Its own statuses: 1 means "taken", not "failed".
            Command::Who(args) => {
                return match who::run(&args) {
                    Ok(true) => ExitCode::from(EXIT_OK),
                    Ok(false) => ExitCode::from(who::EXIT_TAKEN),
                    Err(e) => {
                        eprintln!("portwatch: {e}");
                        ExitCode::from(match e {
                            who::WhoError::Usage(_) => EXIT_USAGE,
                            who::WhoError::Cannot(_) => EXIT_UNSUPPORTED,
                        })
                    }
                }
            }
            Command::Completions(args) => completions::completions(args.shell),
            Command::Man(args) => man::run(&args),
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
