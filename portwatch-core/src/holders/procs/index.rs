//! Which processes hold a socket: an index of socket inode -> (pid, fd),
//! built by walking /proc/*/fd and verified at every lookup, and the fd
//! directories of the processes named as likely holders (the kernel's
//! record of the port's binder, its children), each walked at most once per
//! lookup batch whatever the number of ports asked about.

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use super::raw::{bracketed, cpath, readlink_into, Ids};
use crate::holders::OwnerLookup;

/// Most threads one /proc walk uses.
const SCAN_THREADS: usize = 4;

/// Most processes whose own walk is kept between full walks: the binders
/// of one burst are a few; past this many the oldest walks are dropped.
const PID_WALKS: usize = 256;

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
    /// Processes walked one by one since the last full walk (hints): their
    /// sockets, so every port of a batch held by one process costs one
    /// walk of its fd directory, not one per port.
    pids: HashMap<u32, PidWalk>,
    /// Walks of one process's fd directory so far.
    pid_walks: usize,
    /// The path the last full scan took; None before the first.
    last: Option<OwnerLookup>,
    /// Why the last full scan walked /proc though a source is installed
    /// (it failed); None when it did not.
    source_failed: Option<String>,
}

/// One process's sockets, as one walk of its fd directory found them.
#[derive(Debug)]
struct PidWalk {
    /// When the walk started: it knows every socket the process held then.
    at: Instant,
    /// Socket inode -> the fd it was seen at.
    sockets: HashMap<u32, u32>,
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

    /// Full scan: every socket file of every process, from the installed
    /// [`SocketSource`](super::SocketSource) (the BPF iterator) when there
    /// is one and it answers, else from a walk of /proc/*/fd. Returns how
    /// many processes and fds were seen and how long it took.
    pub fn rescan(&mut self) -> ScanStats {
        let start = Instant::now();
        self.entries.clear();
        let stats = match self.scan_source() {
            Ok(stats) => {
                self.last = Some(OwnerLookup::Iterator);
                self.source_failed = None;
                stats
            }
            Err(why) => {
                self.source_failed = why;
                self.last = Some(OwnerLookup::Walk);
                self.walk()
            }
        };
        self.finish_scan(start, stats)
    }

    /// The installed source's scan into `entries`; Err(None) when there is
    /// no source, Err(Some(why)) when it failed.
    fn scan_source(&mut self) -> Result<ScanStats, Option<String>> {
        let source = super::source::installed().ok_or(None)?;
        let mut found = Vec::new();
        source.scan(&mut found).map_err(Some)?;
        let mut pids: Vec<u32> = found.iter().map(|s| s.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        // Socket inodes are 32-bit numbers (get_next_ino); /proc shows the same.
        self.entries.extend(found.iter().filter_map(|s| {
            Some(FdEntry {
                inode: u32::try_from(s.inode).ok()?,
                pid: s.pid,
                fd: s.fd,
            })
        }));
        Ok(ScanStats {
            processes: pids.len(),
            fds: found.len(),
            elapsed: Duration::ZERO,
        })
    }

    /// The walk of /proc/*/fd into `entries`, over a few threads.
    fn walk(&mut self) -> ScanStats {
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
        stats
    }

    /// Sorts what a scan found and notes when it started.
    fn finish_scan(&mut self, start: Instant, mut stats: ScanStats) -> ScanStats {
        self.entries.sort_unstable();
        // A thread with a file table of its own is listed beside its leader.
        self.entries.dedup();
        // Reused by the next rescan, but not at the size of the largest
        // one ever: a moment with many processes would stay resident.
        if self.entries.capacity() > 2 * self.entries.len().max(1024) {
            self.entries
                .shrink_to(self.entries.len() + self.entries.len() / 4);
        }
        self.scanned = Some(start);
        self.walks += 1;
        // The full walk saw every process: the older walks of one are stale.
        self.pids.clear();
        stats.elapsed = start.elapsed();
        stats
    }

    /// Verified pids holding socket `inode`, lowest first, deduplicated.
    /// `since`: when the socket was known to exist (the sock_diag dump
    /// that listed it started): a walk that started later knows it.
    /// 1) index entries for `inode`: verify each with ONE readlink of the
    ///    recorded /proc/PID/fd/N;
    /// 2) each pid in `hints` not found by (1) (e.g. the pid the kernel recorded as the port's
    ///    binder; give process ids, not thread ids): its whole fd directory walked once, unless
    ///    a walk of it started since `since` (then that walk answers: a burst of ports held by
    ///    one process walks its fds once per batch, not once per port), the entry verified the
    ///    same way;
    /// 3) if nothing verified and the index is older than `max_age` (or was never built), and
    ///    no full walk started since `since`, rescan once and retry (1).
    ///
    /// So it also returns the other holders of the same inode found in the index (e.g. nginx
    /// workers that inherited the master's listening socket), verified the same way.
    /// (1) runs before (2): the answer is the same, and a hint the index already confirmed
    /// costs one readlink instead of a walk of its fd dir, which can hold thousands of fds.
    pub fn owners(
        &mut self,
        inode: u32,
        hints: &[u32],
        max_age: Duration,
        since: Instant,
    ) -> Vec<u32> {
        let mut found = Vec::new();
        self.verify_indexed(inode, &mut found);
        for &pid in hints {
            if found.contains(&pid) {
                continue;
            }
            let fresh = self.pids.get(&pid).is_some_and(|w| w.at >= since);
            if !fresh {
                self.walk_pid(pid);
            }
            let fd = self.pids.get(&pid).and_then(|w| w.sockets.get(&inode));
            if fd.is_some_and(|&fd| holds(pid, fd, inode)) {
                found.push(pid);
            }
        }
        let known = self.scanned.is_some_and(|t| t >= since);
        if found.is_empty() && !known && self.age().is_none_or(|age| age > max_age) {
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

    /// Walks `pid`'s fd directory whole, keeping its sockets for the
    /// lookups after this one.
    fn walk_pid(&mut self, pid: u32) {
        let at = Instant::now();
        let mut sockets = HashMap::new();
        self.pid_walks += 1;
        if walk_sockets(pid, |fd, inode| {
            sockets.insert(inode, fd);
            true
        })
        .is_none()
        {
            self.pids.remove(&pid);
            return;
        }
        if self.pids.len() >= PID_WALKS && !self.pids.contains_key(&pid) {
            // The older half goes: the walks a burst still uses are recent.
            let mut ats: Vec<Instant> = self.pids.values().map(|w| w.at).collect();
            let mid = ats.len() / 2;
            let median = *ats.select_nth_unstable(mid).1;
            self.pids.retain(|_, w| w.at > median);
        }
        self.pids.insert(pid, PidWalk { at, sockets });
    }

    /// How many times one process's fd directory was walked (hints).
    pub fn pid_walks(&self) -> usize {
        self.pid_walks
    }

    /// The path the last full scan took; None before the first.
    pub fn last_lookup(&self) -> Option<OwnerLookup> {
        self.last
    }

    /// Why the last full scan walked /proc though an iterator is
    /// installed: it failed.
    pub fn source_failed(&self) -> Option<&str> {
        self.source_failed.as_deref()
    }

    /// How many full scans this index has made (either path).
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
        for h in self.entries[first..]
            .iter()
            .take_while(|h| h.inode == inode)
        {
            if !found.contains(&h.pid) && holds(h.pid, h.fd, inode) {
                found.push(h.pid);
            }
        }
    }
}

/// Whether /proc/`pid`/fd/`fd` is socket `inode` now: one readlink.
fn holds(pid: u32, fd: u32, inode: u32) -> bool {
    let mut path = [0u8; 48];
    let mut link = [0u8; 64];
    cpath(&mut path, format_args!("/proc/{pid}/fd/{fd}"))
        .and_then(|p| readlink_into(libc::AT_FDCWD, p, &mut link))
        .and_then(|l| bracketed(l, b"socket:["))
        == Some(inode)
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
        os::{fd::AsRawFd, unix::net::UnixDatagram},
    };

    use portwatch_test_support::{inode_of, recv_fd, send_fd, Process};

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

        let since = Instant::now();
        let mut idx = SocketIndex::new();
        // A verified hint is enough: no walk of /proc at all.
        assert_eq!(idx.owners(inode, &[a], Duration::MAX, since), vec![a]);
        assert_eq!(idx.age(), None);
        // Nothing hinted and no index yet: one rescan.
        assert_eq!(idx.owners(inode, &[], Duration::MAX, since), both);
        assert!(idx.age().is_some());
        // The hint plus the other holder from the index.
        assert_eq!(idx.owners(inode, &[b], Duration::MAX, since), both);
        // A wrong hint is not returned; duplicates are folded.
        let me = std::process::id();
        assert_eq!(idx.owners(inode, &[me, a, a], Duration::MAX, since), both);
        assert!(idx
            .owners(inode.wrapping_add(1_000_000), &[a], Duration::MAX, since)
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
        let since = Instant::now();
        assert_eq!(idx.owners(inode, &[], Duration::MAX, since), vec![pid]);
        child.kill();
        // Neither the hint nor the stale index entry verifies, and the
        // rescan forced by a later socket is empty.
        assert!(idx.owners(inode, &[pid], Duration::MAX, since).is_empty());
        let later = Instant::now();
        assert!(idx.owners(inode, &[pid], Duration::ZERO, later).is_empty());
        assert_eq!(idx.walks(), 2);
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
        let since = Instant::now();
        // Fresh enough: trusted as it is, so the new holder is unknown.
        assert!(idx
            .owners(inode, &[], Duration::from_secs(3600), since)
            .is_empty());
        // Too old: rescanned once.
        assert_eq!(idx.owners(inode, &[], Duration::ZERO, since), vec![pid]);
        // A walk that started after the socket was known answers for it:
        // no second rescan, however old the index may be.
        assert!(idx
            .owners(inode.wrapping_add(1_000_000), &[], Duration::ZERO, since)
            .is_empty());
        assert_eq!(idx.walks(), 2);
    }

    /// Every port of a batch held by one process: its fd directory is
    /// walked once for all of them; a later batch (sockets known later)
    /// walks it again.
    #[test]
    fn one_walk_of_a_hinted_process_per_batch() {
        let listeners: Vec<TcpListener> = (0..50)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let fds: Vec<i32> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
        let inodes: Vec<u32> = listeners.iter().map(inode_of).collect();
        let holder = Process::sleeper(&fds);
        drop(listeners);
        let mut idx = SocketIndex::new();
        let since = Instant::now();
        for &inode in &inodes {
            assert_eq!(
                idx.owners(inode, &[holder.pid], Duration::MAX, since),
                vec![holder.pid]
            );
        }
        assert_eq!((idx.pid_walks(), idx.walks()), (1, 0));
        let later = Instant::now();
        assert_eq!(
            idx.owners(inodes[7], &[holder.pid], Duration::MAX, later),
            vec![holder.pid]
        );
        assert_eq!((idx.pid_walks(), idx.walks()), (2, 0));
    }

    /// A socket passed to another process (SCM_RIGHTS) and closed by the
    /// process that bound it: the receiver is found, with or without the
    /// binder as a hint, and the binder is not.
    #[test]
    fn socket_passed_with_scm_rights_is_found() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = inode_of(&listener);
        let (tx, rx) = UnixDatagram::pair().unwrap();
        send_fd(tx.as_raw_fd(), listener.as_raw_fd());
        drop(listener);
        drop(tx);
        // The socket is only in flight now; the child takes it from the
        // queue (a fork inherits rx, not the listener).
        let rx_fd = rx.as_raw_fd();
        let receiver = Process::fork(move || recv_fd(rx_fd) >= 0);
        drop(rx);
        let me = std::process::id();
        let mut idx = SocketIndex::new();
        let since = Instant::now();
        assert_eq!(
            idx.owners(inode, &[me], Duration::MAX, since),
            vec![receiver.pid]
        );
        let mut fresh = SocketIndex::new();
        assert_eq!(
            fresh.owners(inode, &[], Duration::MAX, since),
            vec![receiver.pid]
        );
    }
}
