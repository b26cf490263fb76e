//! Network namespaces: find one by inode, and run code inside it.
//!
//! A failure happens in the failing process's network namespace; the sockets
//! in its way, and the sysctls that explain it, are only visible from there.

use std::{ffi::CStr, fmt, fs::File, io, os::fd::BorrowedFd};

use nix::{
    fcntl::{self, OFlag},
    sched::{setns, CloneFlags},
    sys::stat::{fstat, Mode},
};

use super::procs::raw::{bracketed, cpath, readlink_into, Ids};

/// An open handle to the network namespace whose inode is `netns` (as in /proc/PID/ns/net's
/// st_ino): first /proc/PID/task/TID/ns/net then /proc/PID/ns/net for each candidate (pid, tid),
/// then /proc/*/ns/net, then every thread's /proc/*/task/*/ns/net. The inode is checked by
/// fstat on the opened file, never trusted from the path. None when no process or thread lives
/// in it any more (a namespace kept only by a bind mount or an open fd is not found).
pub fn open_netns(netns: u32, candidates: &[(u32, u32)]) -> Option<File> {
    let mut path = [0u8; 64];
    let mut try_path = |args: fmt::Arguments| open_ns(cpath(&mut path, args)?, netns);
    candidates
        .iter()
        .find_map(|&(pid, tid)| {
            try_path(format_args!("/proc/{pid}/task/{tid}/ns/net"))
                .or_else(|| try_path(format_args!("/proc/{pid}/ns/net")))
        })
        .or_else(|| {
            Ids::open(c"/proc")
                .into_iter()
                .flatten()
                .find_map(|pid| try_path(format_args!("/proc/{pid}/ns/net")))
        })
        // A thread can sit in a namespace its process's main thread is not in (unshare or
        // setns in one thread): the costly walk, only when everything else failed.
        .or_else(|| {
            Ids::open(c"/proc").into_iter().flatten().find_map(|pid| {
                let mut task = [0u8; 32];
                let tasks = cpath(&mut task, format_args!("/proc/{pid}/task"))?;
                Ids::open(tasks)?
                    .filter(|&tid| tid != pid)
                    .find_map(|tid| try_path(format_args!("/proc/{pid}/task/{tid}/ns/net")))
            })
        })
}

/// Inode of the calling thread's network namespace (/proc/thread-self/ns/net).
pub fn current_netns() -> Option<u32> {
    let mut link = [0u8; 64];
    bracketed(
        readlink_into(libc::AT_FDCWD, c"/proc/thread-self/ns/net", &mut link)?,
        b"net:[",
    )
}

/// Opens the namespace link at `path` if it names `netns`: a readlink first, so a scan does
/// not open every other namespace, then fstat on the opened file for the real answer.
fn open_ns(path: &CStr, netns: u32) -> Option<File> {
    let mut link = [0u8; 64];
    if bracketed(readlink_into(libc::AT_FDCWD, path, &mut link)?, b"net:[")? != netns {
        return None;
    }
    // Namespace links are magic links: opening one has to follow it.
    let fd = fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
    (fstat(&fd).ok()?.st_ino == u64::from(netns)).then(|| File::from(fd))
}

/// Runs `f` with the calling thread moved into the network namespace `ns`
/// (an open `/proc/PID/ns/net` or `/proc/PID/task/TID/ns/net`), then moves it
/// back to the namespace it was in, also when `f` panics.
///
/// Only the calling thread moves. Sockets opened inside `f` stay in `ns` for
/// their whole life, and `/proc/sys` read inside `f` shows `ns` (see
/// [`sysctls`]). An error after `f` ran means the thread could not move back
/// and is still in `ns`.
pub fn in_netns<T>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T) -> io::Result<T> {
    // thread-self, not self: namespaces are per thread, and this thread may
    // already be somewhere else than the main one.
    let home = File::open("/proc/thread-self/ns/net")?;
    setns(ns, CloneFlags::CLONE_NEWNET)?;
    let guard = NetnsGuard { home: Some(home) };
    let value = f();
    guard.restore()?;
    Ok(value)
}

/// Moves the thread back to `home` when dropped.
struct NetnsGuard {
    home: Option<File>,
}

impl NetnsGuard {
    fn restore(mut self) -> io::Result<()> {
        match self.home.take() {
            Some(home) => Ok(setns(home, CloneFlags::CLONE_NEWNET)?),
            None => Ok(()),
        }
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Only reached without `restore` while unwinding from a panic in `f`,
        // where there is no way to report a failure.
        if let Some(home) = self.home.take() {
            let _ = setns(home, CloneFlags::CLONE_NEWNET);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        net::TcpListener,
        os::fd::{AsFd, OwnedFd},
        panic::AssertUnwindSafe,
        sync::mpsc,
    };

    use portwatch_test_support::{in_fresh_netns, inode_of};

    use super::*;
    use crate::holders::sockdiag::dump;

    const TCP: u8 = 6;

    fn only(
        mut sockets: Vec<crate::holders::sockdiag::DiagSocket>,
    ) -> crate::holders::sockdiag::DiagSocket {
        assert_eq!(sockets.len(), 1, "{sockets:#?}");
        sockets.remove(0)
    }

    /// A new network namespace, kept alive by the returned fd, set up by `f`.
    pub(crate) fn netns_with<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> (OwnedFd, T) {
        in_fresh_netns(|| {
            let value = f();
            let ns = File::open("/proc/thread-self/ns/net").expect("open own netns");
            (ns.into(), value)
        })
    }

    fn thread_netns_inode() -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net")
            .expect("stat own netns")
            .ino()
    }

    #[test]
    fn in_netns_queries_the_other_namespace() {
        let (ns_a, listener) = netns_with(|| TcpListener::bind("127.0.0.1:8500").expect("bind"));
        in_fresh_netns(move || {
            assert!(dump(TCP, Some(8500), false).expect("dump").is_empty());
            let got = in_netns(ns_a.as_fd(), || dump(TCP, Some(8500), false))
                .expect("in_netns")
                .expect("dump");
            assert_eq!(only(got).inode, inode_of(&listener));
            assert!(dump(TCP, Some(8500), false).expect("dump").is_empty());
        });
    }

    #[test]
    fn in_netns_returns_home() {
        let (ns_a, ()) = netns_with(|| ());
        in_fresh_netns(move || {
            let home = thread_netns_inode();
            let a = fstat(ns_a.as_fd()).expect("fstat").st_ino;
            assert_ne!(home, a);

            let inside = in_netns(ns_a.as_fd(), thread_netns_inode).expect("in_netns");
            assert_eq!(inside, a);
            assert_eq!(thread_netns_inode(), home);

            let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| {
                in_netns(ns_a.as_fd(), || panic!("deliberate panic inside in_netns"))
            }));
            assert!(panicked.is_err());
            assert_eq!(thread_netns_inode(), home);
        });
    }

    #[test]
    fn open_netns_finds_a_thread_only_namespace() {
        let pid = std::process::id();
        let here = current_netns().expect("own netns");
        assert_eq!(
            u64::from(here),
            fstat(File::open("/proc/self/ns/net").unwrap())
                .unwrap()
                .st_ino
        );
        assert!(open_netns(here, &[]).is_some());

        let (ready_tx, ready_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (left_tx, left_rx) = mpsc::channel();
        let home = File::open("/proc/thread-self/ns/net").unwrap();
        let thread = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            let tid = nix::unistd::gettid().as_raw() as u32;
            ready_tx.send((tid, current_netns())).unwrap();
            // Leave the namespace (it has no other member) before exiting: a thread's exit
            // is not complete when join() returns.
            let _ = go_rx.recv();
            setns(&home, CloneFlags::CLONE_NEWNET).expect("setns back");
            left_tx.send(()).unwrap();
        });
        let (tid, ns) = ready_rx.recv().expect("thread unshared");
        let ns = ns.expect("thread's netns");
        assert_ne!(ns, here);

        let f = open_netns(ns, &[(pid, tid)]).expect("by candidate");
        assert_eq!(fstat(&f).unwrap().st_ino, u64::from(ns));
        // Wrong candidates, then the scans: /proc/*/ns/net misses it, the thread walk finds it.
        let g = open_netns(ns, &[(1, 1), (pid, pid)]).expect("by scan");
        assert_eq!(fstat(&g).unwrap().st_ino, u64::from(ns));

        go_tx.send(()).unwrap();
        left_rx.recv().expect("thread left");
        // `f` keeps the namespace alive, but nobody is in it any more.
        assert!(open_netns(ns, &[(pid, tid)]).is_none());
        thread.join().unwrap();
        assert!(open_netns(ns, &[(pid, tid)]).is_none());
        drop(f);
    }
}
