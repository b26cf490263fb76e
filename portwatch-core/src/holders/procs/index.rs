//! Which processes hold a socket: an index of socket inode -> (pid, fd),
//! built by walking /proc/*/fd and verified at every lookup.

use std::{
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use super::raw::{bracketed, cpath, readlink_into, Ids};

/// Most threads one /proc walk uses.
const SCAN_THREADS: usize = 4;

/// Counts from one [`SocketIndex::rescan`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Processes whose fd directory was read.
    pub processes: usize,
    /// File descriptors looked at (sockets or not).
    pub fds: usize,
    /// Wall time of the whole walk.
    pub elapsed: Duration,
}

/// Index of socket inode -> processes holding it, built by walking /proc/*/fd (readlink gives
/// `socket:[INODE]`).
///
/// Only a snapshot: every answer of [`SocketIndex::owners`] is verified against /proc first.
#[derive(Debug, Default)]
pub struct SocketIndex {
    /// Sorted by (inode, pid, fd): one allocation, reused by every rescan, binary searched.
    entries: Vec<FdEntry>,
    /// When the last rescan started.
    scanned: Option<Instant>,
    /// Full walks of /proc so far.
    walks: usize,
}

/// Socket `inode` was seen at /proc/`pid`/fd/`fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FdEntry {
    inode: u32,
    pid: u32,
    fd: u32,
}

impl SocketIndex {
    /// An empty index; no I/O.
    pub fn new() -> Self {
        Self::default()
    }

    /// Full walk of /proc/*/fd. Returns how many processes and fds were read and how long it
    /// took.
    pub fn rescan(&mut self) -> ScanStats {
        let start = Instant::now();
        self.entries.clear();
        let pids: Vec<u32> = Ids::open(c"/proc").into_iter().flatten().collect();
        // The walk is one readlinkat per fd, thousands of them: split over
        // a few threads, which the kernel serves in parallel (procfs takes
        // no global lock for them). Measured in BENCHMARKS.md (`who`).
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, SCAN_THREADS);
        let chunk = pids.len().div_ceil(threads).max(64);
        let parts: Vec<(Vec<FdEntry>, usize, usize)> = std::thread::scope(|scope| {
            let walkers: Vec<_> = pids
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let (mut entries, mut processes, mut fds) = (Vec::new(), 0, 0);
                        for &pid in part {
                            let seen = walk_sockets(pid, |fd, inode| {
                                entries.push(FdEntry { inode, pid, fd });
                                true
                            });
                            if let Some(n) = seen {
                                processes += 1;
                                fds += n;
                            }
                        }
                        (entries, processes, fds)
                    })
                })
                .collect();
            walkers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        let mut stats = ScanStats::default();
        for (entries, processes, fds) in parts {
            self.entries.extend(entries);
            stats.processes += processes;
            stats.fds += fds;
        }
        self.entries.sort_unstable();
        // Reused by the next rescan, but not at the size of the largest
        // one ever: a moment with many processes would stay resident.
        if self.entries.capacity() > 2 * self.entries.len().max(1024) {
            self.entries
                .shrink_to(self.entries.len() + self.entries.len() / 4);
        }
        self.scanned = Some(start);
        self.walks += 1;
        stats.elapsed = start.elapsed();
        stats
    }

    /// Verified pids holding socket `inode`, lowest first, deduplicated:
    /// 1) each pid in `hints` (e.g. the pid the kernel recorded as the port's binder; give
    ///    process ids, not thread ids): walk only its fd dir, stopping at the socket;
    /// 2) index entries for `inode`: verify each with ONE readlink of the recorded
    ///    /proc/PID/fd/N;
    /// 3) if nothing verified and the index is older than `max_age` (or was never built),
    ///    rescan once and retry (2).
    ///
    /// So it also returns the other holders of the same inode found in the index (e.g. nginx
    /// workers that inherited the master's listening socket), verified the same way.
    /// (2) runs before (1): the answer is the same, and a hint the index already confirmed
    /// costs one readlink instead of a walk of its fd dir, which can hold thousands of fds.
    pub fn owners(&mut self, inode: u32, hints: &[u32], max_age: Duration) -> Vec<u32> {
        let mut found = Vec::new();
        self.verify_indexed(inode, &mut found);
        for &pid in hints {
            let mut held = false;
            if !found.contains(&pid) {
                walk_sockets(pid, |_, ino| {
                    held = ino == inode;
                    !held
                });
            }
            if held {
                found.push(pid);
            }
        }
        if found.is_empty() && self.age().is_none_or(|age| age > max_age) {
            self.rescan();
            self.verify_indexed(inode, &mut found);
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    /// The (pid, fd) pairs the last walk saw holding socket `inode`, not
    /// verified: whoever uses one checks the socket it reaches.
    pub fn fds_of(&self, inode: u32) -> Vec<(u32, u32)> {
        let first = self.entries.partition_point(|h| h.inode < inode);
        self.entries[first..]
            .iter()
            .take_while(|h| h.inode == inode)
            .map(|h| (h.pid, h.fd))
            .collect()
    }

    /// How many full walks of /proc this index has made.
    pub fn walks(&self) -> usize {
        self.walks
    }

    /// Time since the last rescan started; None before the first.
    pub fn age(&self) -> Option<Duration> {
        self.scanned.map(|t| t.elapsed())
    }

    /// Adds to `found` each indexed holder of `inode` that still holds it.
    fn verify_indexed(&self, inode: u32, found: &mut Vec<u32>) {
        let first = self.entries.partition_point(|h| h.inode < inode);
        let mut path = [0u8; 48];
        let mut link = [0u8; 64];
        for h in self.entries[first..]
            .iter()
            .take_while(|h| h.inode == inode)
        {
            if found.contains(&h.pid) {
                continue;
            }
            let held = cpath(&mut path, format_args!("/proc/{}/fd/{}", h.pid, h.fd))
                .and_then(|p| readlink_into(libc::AT_FDCWD, p, &mut link))
                .and_then(|l| bracketed(l, b"socket:["));
            if held == Some(inode) {
                found.push(h.pid);
            }
        }
    }
}

/// Calls `f(fd, inode)` for each socket among `pid`'s fds until it returns false. Returns how
/// many fds were looked at, None if the fd directory could not be opened (no such process, or
/// it exited).
fn walk_sockets(pid: u32, mut f: impl FnMut(u32, u32) -> bool) -> Option<usize> {
    let mut path = [0u8; 32];
    let fds = Ids::open(cpath(&mut path, format_args!("/proc/{pid}/fd"))?)?;
    let dir_fd = fds.fd.as_raw_fd();
    let (mut name, mut link) = ([0u8; 16], [0u8; 64]);
    let mut seen = 0;
    for fd in fds {
        seen += 1;
        let inode = cpath(&mut name, format_args!("{fd}"))
            .and_then(|name| readlink_into(dir_fd, name, &mut link))
            .and_then(|l| bracketed(l, b"socket:["));
        if inode.is_some_and(|inode| !f(fd, inode)) {
            break;
        }
    }
    Some(seen)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, UdpSocket},
        os::fd::AsRawFd,
    };

    use portwatch_test_support::{inode_of, Process};

    use super::*;

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    #[test]
    fn owners_via_hint_and_via_index() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = inode_of(&listener);
        // A master and a worker that inherited its listening socket.
        let a_proc = Process::sleeper(&[listener.as_raw_fd()]);
        let b_proc = Process::sleeper(&[listener.as_raw_fd()]);
        let (a, b) = (a_proc.pid, b_proc.pid);
        drop(listener);
        let both = sorted(vec![a, b]);

        let mut idx = SocketIndex::new();
        // A verified hint is enough: no walk of /proc at all.
        assert_eq!(idx.owners(inode, &[a], Duration::MAX), vec![a]);
        assert_eq!(idx.age(), None);
        // Nothing hinted and no index yet: one rescan.
        assert_eq!(idx.owners(inode, &[], Duration::MAX), both);
        assert!(idx.age().is_some());
        // The hint plus the other holder from the index.
        assert_eq!(idx.owners(inode, &[b], Duration::MAX), both);
        // A wrong hint is not returned; duplicates are folded.
        let me = std::process::id();
        assert_eq!(idx.owners(inode, &[me, a, a], Duration::MAX), both);
        assert!(idx
            .owners(inode.wrapping_add(1_000_000), &[a], Duration::MAX)
            .is_empty());
    }

    #[test]
    fn exited_holder_is_not_returned() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = inode_of(&sock);
        let mut child = Process::sleeper(&[sock.as_raw_fd()]);
        let pid = child.pid;
        drop(sock);
        let mut idx = SocketIndex::new();
        assert_eq!(idx.owners(inode, &[], Duration::MAX), vec![pid]);
        child.kill();
        // Neither the hint nor the stale index entry verifies, and the forced rescan is empty.
        assert!(idx.owners(inode, &[pid], Duration::MAX).is_empty());
        assert!(idx.owners(inode, &[pid], Duration::ZERO).is_empty());
    }

    #[test]
    fn stale_index_rescans_only_when_old() {
        let mut idx = SocketIndex::new();
        let stats = idx.rescan();
        assert!(stats.processes > 1 && stats.fds > 0, "{stats:?}");
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = inode_of(&sock);
        let child = Process::sleeper(&[sock.as_raw_fd()]);
        let pid = child.pid;
        drop(sock);
        // Fresh enough: trusted as it is, so the new holder is unknown.
        assert!(idx.owners(inode, &[], Duration::from_secs(3600)).is_empty());
        // Too old: rescanned once.
        assert_eq!(idx.owners(inode, &[], Duration::ZERO), vec![pid]);
    }
}
