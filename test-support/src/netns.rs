//! Network namespaces for tests: each test gets its own, with loopback up,
//! and the host's ports are never touched.

use std::{
    os::unix::fs::MetadataExt as _,
    process::Command,
    sync::mpsc::{self, Sender},
    thread,
};

/// Moves the calling thread into a new network namespace and brings its
/// loopback up. Processes it spawns afterwards start there too.
pub fn enter_fresh_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET): are the tests running as root?");
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip link set lo up: {status}");
}

/// Runs `f` on a new thread sitting in a new network namespace, and returns
/// its result (a panic in `f` is the caller's panic). The namespace goes
/// away with the thread unless something else keeps it.
pub fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        enter_fresh_netns();
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in a network namespace of its own, with loopback up, to
/// which work can be sent. Sockets it creates belong to that namespace;
/// processes it spawns start there. The namespace disappears with the thread.
pub struct Netns {
    jobs: Option<Sender<Job>>,
    handle: Option<thread::JoinHandle<()>>,
    /// The namespace's inode (what portwatch reports as `netns`).
    pub inode: u64,
    /// The thread's id (what portwatch reports as `tid`).
    pub tid: i32,
    /// The thread's name, which is its comm.
    pub comm: String,
}

impl Netns {
    /// Makes the namespace; `comm` (at most 15 bytes) names its thread.
    pub fn new(comm: &str) -> Netns {
        assert!(comm.len() <= 15, "a comm holds at most 15 bytes");
        let (jobs, rx) = mpsc::channel::<Job>();
        let (info_tx, info_rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name(comm.to_owned())
            .spawn(move || {
                enter_fresh_netns();
                let inode = std::fs::metadata("/proc/thread-self/ns/net")
                    .expect("stat own netns")
                    .ino();
                info_tx
                    .send((inode, nix::unistd::gettid().as_raw()))
                    .expect("report netns");
                for job in rx {
                    job();
                }
            })
            .expect("spawn netns thread");
        let (inode, tid) = info_rx.recv().expect("netns thread died");
        Netns {
            jobs: Some(jobs),
            handle: Some(handle),
            inode,
            tid,
            comm: comm.to_owned(),
        }
    }

    /// Runs `f` on the namespace's thread and returns its result; a panic in
    /// `f` is re-raised here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .expect("netns alive")
            .send(Box::new(move || {
                let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
            }))
            .expect("netns thread alive");
        match rx.recv().expect("netns thread died") {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The `--netns` argument selecting this namespace.
    pub fn arg(&self) -> String {
        self.inode.to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(h) = self.handle.take() {
            // Never a second panic while unwinding from a failed test.
            let _ = h.join();
        }
    }
}
