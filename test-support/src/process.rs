//! Child processes that hold sockets for a test: ended by their pid (never by
//! name) when dropped, so also when the test fails.

use std::{
    io,
    os::{fd::RawFd, unix::process::CommandExt as _},
    process::{Command, Stdio},
};

use nix::{
    sys::{signal, wait},
    unistd::{self, ForkResult, Pid},
};

/// A child process a test started.
pub struct Process {
    /// Its pid.
    pub pid: u32,
    child: Option<std::process::Child>,
    reaped: bool,
}

impl Process {
    /// Forks; the child runs `setup` in the caller's network namespace
    /// (call it inside `Netns::run` to place it), reports whether it worked,
    /// and then sleeps until it is killed. Returns once `setup` ran.
    ///
    /// The child of a multi-threaded test process may only make plain system
    /// calls, so `setup` must not allocate: socket2 calls and libc only. A
    /// fork rather than a helper program keeps the tests runnable in a VM
    /// with nothing but busybox.
    pub fn fork(setup: impl FnOnce() -> bool) -> Process {
        let (r, w) = unistd::pipe().expect("pipe");
        // SAFETY: the child only makes system calls (see above) and never
        // returns into the caller.
        match unsafe { unistd::fork() }.expect("fork") {
            ForkResult::Child => {
                let ok = setup();
                let _ = unistd::write(&w, &[u8::from(ok)]);
                loop {
                    // SAFETY: pause has no preconditions.
                    unsafe { libc::pause() };
                }
            }
            ForkResult::Parent { child } => {
                drop(w);
                let mut ok = [0u8];
                let n = unistd::read(&r, &mut ok).expect("read from child");
                let process = Process {
                    pid: child.as_raw() as u32,
                    child: None,
                    reaped: false,
                };
                assert!(n == 1 && ok[0] == 1, "setup failed in the forked child");
                process
            }
        }
    }

    /// Starts `cmd`, which inherits `fds` (their CLOEXEC flag is cleared in
    /// the child only) and dies with the thread that started it, even if the
    /// test harness is killed before it can drop this.
    pub fn spawn(mut cmd: Command, fds: &[RawFd]) -> Process {
        let fds = fds.to_vec();
        // SAFETY: only async-signal-safe syscalls run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                for &fd in &fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn child");
        Process {
            pid: child.id(),
            child: Some(child),
            reaped: false,
        }
    }

    /// A `sleep` holding `fds`.
    pub fn sleeper(fds: &[RawFd]) -> Process {
        let mut cmd = Command::new("sleep");
        cmd.arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Process::spawn(cmd, fds)
    }

    /// SIGKILLs and reaps it now (idempotent).
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        self.reaped = true;
        match &mut self.child {
            Some(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            None => {
                let pid = Pid::from_raw(self.pid as i32);
                let _ = signal::kill(pid, signal::Signal::SIGKILL);
                let _ = wait::waitpid(pid, None);
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
