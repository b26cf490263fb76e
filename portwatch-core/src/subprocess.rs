//! Every program portwatch runs for an answer (systemctl, iptables-save,
//! nft, busctl, ...) runs through [`output`]: stdin from /dev/null, its
//! output read on threads of their own (a full pipe cannot stall it), and
//! ended with SIGKILL at a deadline, so a hung manager or a netfilter tool
//! stuck on a lock costs a bounded wait and a clear error, never a hang.
//!
//! The child is waited for with `try_wait` on the owned [`Child`], not with
//! a SIGCHLD handler (the `wait-timeout` crate installs one process-wide,
//! which would fight tokio's own child reaping in `run`) nor by killing a
//! pid from another thread (the pid could be reaped and reused by then):
//! until this code reaps it, the pid it kills is its child's.

use std::{
    io::{self, Read as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// At most this much of a program's stdout is kept; the rest is read and
/// dropped (a ruleset of this size is already far past what is parsed).
pub const MAX_OUTPUT: u64 = 16 << 20;

/// At most this much of stderr is kept for the error message.
const MAX_STDERR: u64 = 4096;

/// Why a program gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SubprocessError {
    /// It could not be started (missing, not executable).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program as given.
        program: String,
        /// What exec said.
        source: io::Error,
    },
    /// It ran past its deadline and was killed.
    #[error("{program} did not finish within {after:?}: killed it (pid {pid})")]
    TimedOut {
        /// The program as given.
        program: String,
        /// The deadline.
        after: Duration,
        /// The pid it had (gone now: killed and reaped).
        pid: u32,
    },
    /// It ended with a failure status.
    #[error("{program} failed ({status}){}", stderr_tail(.stderr))]
    Failed {
        /// The program as given.
        program: String,
        /// How it ended.
        status: ExitStatus,
        /// The start of what it wrote to stderr (untrusted text).
        stderr: String,
    },
    /// Waiting for it failed.
    #[error("waiting for {program}: {source}")]
    Wait {
        /// The program as given.
        program: String,
        /// What wait said.
        source: io::Error,
    },
}

fn stderr_tail(stderr: &str) -> String {
    let line = stderr.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        String::new()
    } else {
        format!(": {}", line.escape_debug())
    }
}

/// Runs `cmd` to its end, or kills it at `timeout`; returns its stdout when
/// it exits with status 0. Its stdin is /dev/null; its stdout and stderr are
/// replaced by pipes.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Vec<u8>, SubprocessError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SubprocessError::Spawn {
            program: program.clone(),
            source,
        })?;
    let stdout = drain(child.stdout.take(), MAX_OUTPUT);
    let stderr = drain(child.stderr.take(), MAX_STDERR);
    let status = match wait_until(&mut child, started + timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            return Err(SubprocessError::TimedOut {
                program,
                after: timeout,
                pid: child.id(),
            })
        }
        Err(source) => return Err(SubprocessError::Wait { program, source }),
    };
    // A grandchild that kept the pipes open must not hold the caller past
    // the deadline either.
    let rest = (started + timeout).saturating_duration_since(Instant::now());
    let stdout = stdout.recv_timeout(rest).unwrap_or_default();
    if !status.success() {
        // Its reader may still be at work: the same deadline as stdout's
        // (a zero wait lost the error message of a program that had just
        // exited).
        let rest = (started + timeout).saturating_duration_since(Instant::now());
        let stderr = stderr.recv_timeout(rest).unwrap_or_default();
        return Err(SubprocessError::Failed {
            program,
            status,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        });
    }
    Ok(stdout)
}

/// Reads `pipe` to its end on a thread, keeping at most `limit` bytes.
fn drain<R: io::Read + Send + 'static>(pipe: Option<R>, limit: u64) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = (&mut pipe).take(limit).read_to_end(&mut kept);
            // Past the limit: read on, so the program is not blocked on a
            // full pipe, but keep nothing.
            let _ = io::copy(&mut pipe, &mut io::sink());
            let _ = tx.send(kept);
        });
    }
    rx
}

/// Waits for `child` until `deadline`; past it, kills and reaps it and
/// returns None.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            // Still unreaped, so this pid is still our child's.
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_program_is_killed_at_the_deadline_with_a_clear_error() {
        let started = Instant::now();
        let err = output(Command::new("sleep").arg("60"), Duration::from_millis(300)).unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "took {took:?}"
        );
        let SubprocessError::TimedOut { pid, .. } = err else {
            panic!("not a timeout: {err}");
        };
        assert_eq!(
            err.to_string(),
            format!("sleep did not finish within 300ms: killed it (pid {pid})")
        );
        // Killed and reaped: no process, no zombie.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "sleep (pid {pid}) is still there"
        );
    }

    #[test]
    fn output_status_and_stderr_come_back() {
        let out = output(
            Command::new("sh").args(["-c", "echo hello; echo noise >&2"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out, b"hello\n");
        let err = output(
            Command::new("sh").args(["-c", "echo 'no such table' >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sh failed (exit status: 3): no such table",
            "{err:?}"
        );
        let err = output(
            &mut Command::new("/nonexistent/portwatch-test"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot run /nonexistent/portwatch-test: "),
            "{err}"
        );
    }

    /// More output than a pipe holds (64 KiB) does not stall the program.
    #[test]
    fn a_large_output_is_read_while_the_program_runs() {
        let out = output(
            Command::new("head").args(["-c", "1000000", "/dev/zero"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.len(), 1_000_000);
    }
}
