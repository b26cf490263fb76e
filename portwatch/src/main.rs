//! The `portwatch` binary: parse, start the runtime, dispatch.

use std::process::ExitCode;

use clap::Parser as _;
use portwatch::{
    cli::Cli,
    commands::{run::EXIT_RUN_FAILED, EXIT_FAILED, EXIT_USAGE},
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line: what was wrong. The full usage is one --help away.
            let text = e.render().to_string();
            let mut lines = text.lines();
            let first = lines.next().unwrap_or_default();
            // "...were not provided:" names them on the next line.
            let first = match first.strip_suffix(':') {
                Some(head) => format!("{head}: {}", lines.next().unwrap_or_default().trim()),
                None => first.to_owned(),
            };
            eprintln!(
                "portwatch: {}",
                first.strip_prefix("error: ").unwrap_or(&first)
            );
            // `run` leaves CMD's statuses to CMD: its own failures are 125.
            let run = std::env::args().nth(1).as_deref() == Some("run");
            return ExitCode::from(if run { EXIT_RUN_FAILED } else { EXIT_USAGE });
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    portwatch::memory::limit_arenas();
    // Two workers: the ring buffer's reader never shares a thread with a
    // writer stuck on a slow stdout. Holder lookups run on blocking threads,
    // at most BLOCKING of them: tokio's default (512) grew to 56 threads
    // under process churn, each with its stack resident (and, before
    // memory::limit_arenas, an allocator arena); a cap of 8 made lookups
    // queue past their timeout (BENCHMARKS.md, soak).
    const BLOCKING: usize = 16;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portwatch: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    runtime.block_on(cli.command.execute())
}
