//! Who holds a socket, and who is that process: /proc lookups for explaining a failed bind().
//!
//! Everything read from /proc is untrusted: a process chooses its comm and cmdline (control bytes,
//! invalid UTF-8, a ") " inside comm), and it can exit and have its pid reused between two reads.
//! So every read is capped and decoded lossily, nothing here panics on what it reads, and symlinks
//! are only ever read (readlink), except the namespace links that `open_netns` must open.
//! The strings in [`ProcInfo`] are raw: escape them before printing them to a terminal.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::fcntl::{self, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, Mode};

/// The most bytes read from /proc/PID/cmdline.
const CMDLINE_CAP: usize = 4096;
/// The most bytes read from any other /proc file (stat, status, cgroup).
const FILE_CAP: usize = 16 * 1024;
/// The most processes [`ProcCache`] keeps.
const CACHE_CAP: usize = 4096;
/// systemd's unit types; `is_safe_unit_name` wants one of them as the suffix.
const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".slice",
    ".scope",
];
/// Prefixes of the per-container scopes of docker, containerd (CRI), podman and CRI-O. Their
/// "-conmon-" helper scopes do not match: conmon is not the container.
const CONTAINER_PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "libpod-", "crio-"];

/// A process as /proc describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id (thread group id).
    pub pid: u32,
    /// Parent's pid (stat field 4).
    pub ppid: u32,
    /// Real uid, the first field of "Uid:" in /proc/PID/status.
    pub uid: u32,
    /// /proc/PID/comm without its trailing newline; lossy UTF-8, may hold control characters.
    /// Taken from the parentheses of /proc/PID/stat, which the kernel fills with the same
    /// unescaped bytes: one read fewer.
    pub comm: String,
    /// argv joined with single spaces (every NUL becomes ' '), lossy UTF-8, at most
    /// 4096 bytes read; empty for kernel threads and zombies.
    pub cmdline: String,
    /// cgroup v2 path: the rest of the "0::" line of /proc/PID/cgroup; empty if there is none.
    pub cgroup: String,
    /// systemd unit from the cgroup path, e.g. "nginx.service"; see [`unit_and_container`].
    pub unit: Option<String>,
    /// Container id (64 lowercase hex digits) from the cgroup path; see [`unit_and_container`].
    pub container: Option<String>,
    /// Start time in clock ticks since boot (stat field 22); with `pid` it names one process.
    pub start_time: u64,
}

/// Reads one process; None if it does not exist (or vanishes mid-read).
pub fn proc_info(pid: u32) -> Option<ProcInfo> {
    let mut path = [0u8; 32];
    // Every file is opened relative to one handle on /proc/PID: if the process exits and its
    // pid is reused meanwhile, the handle still names the old process and the reads fail
    // instead of mixing two processes.
    let dir = fcntl::open(
        cpath(&mut path, format_args!("/proc/{pid}"))?,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let stat = read_capped(&dir, c"stat", FILE_CAP)?;
    let stat = parse_stat(&stat)?;
    let uid = parse_uid(&read_capped(&dir, c"status", FILE_CAP)?)?;
    let mut cmdline = read_capped(&dir, c"cmdline", CMDLINE_CAP)?;
    while cmdline.last() == Some(&0) {
        cmdline.pop();
    }
    for b in &mut cmdline {
        if *b == 0 {
            *b = b' ';
        }
    }
    let (cgroup, unit, container) = parse_cgroup(&read_capped(&dir, c"cgroup", FILE_CAP)?);
    Some(ProcInfo {
        pid,
        ppid: stat.ppid,
        uid,
        comm: String::from_utf8_lossy(stat.comm).into_owned(),
        cmdline: lossy(cmdline),
        cgroup,
        unit,
        container,
        start_time: stat.start_time,
    })
}

/// Pure: (unit, container) derived from a cgroup v2 path.
///
/// The container is the first (outermost: the one the host's runtime knows) component that is
/// 64 lowercase hex digits, bare (cgroupfs drivers: "/docker/ID", "/kubepods/.../ID") or inside
/// a runtime's scope ("docker-ID.scope", "cri-containerd-ID.scope", "libpod-ID.scope",
/// "crio-ID.scope").
///
/// The unit is the last component that passes [`is_safe_unit_name`] and is not a slice (a slice
/// groups units; it is not something to stop), up to the container: units below it belong to
/// the container's own systemd, which the host's `systemctl` cannot reach
/// ("/docker/ID/system.slice/sshd.service" names no unit). So "/system.slice/nginx.service"
/// gives "nginx.service", "/system.slice/docker-ID.scope" gives "docker-ID.scope", and a login
/// session or a user manager gives "session-3.scope" or "user@1000.service" as they are.
/// Units below "user@UID.service" (".../user@1000.service/app.slice/app-foo.scope" gives
/// "app-foo.scope") belong to that user's manager (`systemctl --user`), not to the system one;
/// the cgroup path tells which. Garbage gives None.
pub fn unit_and_container(cgroup_path: &str) -> (Option<String>, Option<String>) {
    let (mut unit, mut container) = (None, None);
    for component in cgroup_path.split('/') {
        if !component.ends_with(".slice") && is_safe_unit_name(component) {
            unit = Some(component);
        }
        container = container_id(component);
        if container.is_some() {
            break;
        }
    }
    (unit.map(str::to_owned), container.map(str::to_owned))
}

/// Whether `s` is safe to print inside a suggested shell command `systemctl stop UNIT`:
/// systemd's unit name charset only (`[A-Za-z0-9:_.\\@-]`), no leading '-' (it would read as an
/// option), at most 255 bytes, at most one '@' and not first, and a known unit type suffix
/// after a non-empty name.
///
/// A name that passes cannot inject anything into a shell, but systemd's escapes ("\x2d") lose
/// their backslash unquoted: print the name inside single quotes when it contains one.
pub fn is_safe_unit_name(s: &str) -> bool {
    s.len() <= 255
        && !s.starts_with(['-', '@'])
        && s.bytes().filter(|&b| b == b'@').count() <= 1
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.\\@-".contains(&b))
        && UNIT_SUFFIXES
            .iter()
            .any(|suffix| s.strip_suffix(suffix).is_some_and(|name| !name.is_empty()))
}

/// Cache of [`proc_info`] by pid, validated by start_time (a reused pid gets a fresh read).
/// Bounded size.
///
/// Each hit still reads /proc/PID/stat (one small read) to check the start time; a changed comm
/// (an exec, or a rename) also forces a fresh read, and the parent pid is refreshed from it.
#[derive(Debug, Default)]
pub struct ProcCache {
    /// pid -> (info, tick of last use).
    entries: HashMap<u32, (ProcInfo, u64)>,
    /// Incremented on every `get`, for evicting the least recently used.
    tick: u64,
}

impl ProcCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process `pid`, from the cache if it is still the same process; None if it is gone.
    pub fn get(&mut self, pid: u32) -> Option<ProcInfo> {
        self.tick += 1;
        let mut path = [0u8; 32];
        let stat = cpath(&mut path, format_args!("/proc/{pid}/stat"))
            .and_then(|p| read_capped(AT_FDCWD, p, FILE_CAP));
        let Some(stat) = stat.as_deref().and_then(parse_stat) else {
            self.entries.remove(&pid);
            return None;
        };
        if let Some((info, used)) = self.entries.get_mut(&pid) {
            if info.start_time == stat.start_time && String::from_utf8_lossy(stat.comm) == info.comm
            {
                info.ppid = stat.ppid;
                *used = self.tick;
                return Some(info.clone());
            }
        }
        let Some(info) = proc_info(pid) else {
            self.entries.remove(&pid);
            return None;
        };
        if self.entries.len() >= CACHE_CAP && !self.entries.contains_key(&pid) {
            self.evict_older_half();
        }
        self.entries.insert(pid, (info.clone(), self.tick));
        Some(info)
    }

    /// Drops the least recently used half: O(n) once per CACHE_CAP/2 insertions.
    fn evict_older_half(&mut self) {
        let mut ticks: Vec<u64> = self.entries.values().map(|&(_, t)| t).collect();
        let mid = ticks.len() / 2;
        let median = *ticks.select_nth_unstable(mid).1;
        self.entries.retain(|_, &mut (_, t)| t > median);
    }
}

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
    entries: Vec<Holder>,
    /// When the last rescan started.
    scanned: Option<Instant>,
}

/// Socket `inode` was seen at /proc/`pid`/fd/`fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Holder {
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
        let mut stats = ScanStats::default();
        for pid in Ids::open(c"/proc").into_iter().flatten() {
            let seen = walk_sockets(pid, |fd, inode| {
                self.entries.push(Holder { inode, pid, fd });
                true
            });
            if let Some(fds) = seen {
                stats.processes += 1;
                stats.fds += fds;
            }
        }
        self.entries.sort_unstable();
        self.scanned = Some(start);
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

/// The numeric entries (pids, tids, fds) of a /proc directory, read with getdents64 into an
/// inline buffer: no allocation per entry, unlike std::fs::read_dir.
struct Ids {
    fd: OwnedFd,
    buf: [u8; 4096],
    /// Next record in `buf[..len]`.
    pos: usize,
    len: usize,
}

impl Ids {
    fn open(path: &CStr) -> Option<Self> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = fcntl::open(path, flags, Mode::empty()).ok()?;
        Some(Self {
            fd,
            buf: [0; 4096],
            pos: 0,
            len: 0,
        })
    }
}

impl Iterator for Ids {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        loop {
            if self.pos >= self.len {
                // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
                let n = unsafe {
                    libc::syscall(
                        libc::SYS_getdents64,
                        self.fd.as_raw_fd(),
                        self.buf.as_mut_ptr(),
                        self.buf.len(),
                    )
                };
                // 0 is the end; an error (the process exited) ends it too.
                self.len = usize::try_from(n).ok().filter(|&n| n > 0)?;
                self.pos = 0;
            }
            // struct linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, d_name.
            let rec = self.buf.get(self.pos..self.len)?;
            let reclen = usize::from(u16::from_ne_bytes([*rec.get(16)?, *rec.get(17)?]));
            let name = rec.get(19..reclen)?;
            self.pos += reclen;
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            if let Some(id) = parse_u32(name) {
                return Some(id);
            }
        }
    }
}

/// The fields of /proc/PID/stat that are used.
struct Stat<'a> {
    comm: &'a [u8],
    ppid: u32,
    start_time: u64,
}

/// Parses /proc/PID/stat. comm sits between the first '(' and the LAST ')', since it may hold
/// ") " itself; the numbered fields follow, field 3 (state) first.
fn parse_stat(stat: &[u8]) -> Option<Stat<'_>> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = stat.get(open + 1..close)?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let ppid = fields.nth(1)?.parse().ok()?; // field 4
    let start_time = fields.nth(17)?.parse().ok()?; // field 22
    Some(Stat {
        comm,
        ppid,
        start_time,
    })
}

/// The real uid: the first number of the "Uid:" line of /proc/PID/status.
fn parse_uid(status: &[u8]) -> Option<u32> {
    let line = status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"Uid:"))?;
    std::str::from_utf8(line)
        .ok()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The v2 path, unit and container from /proc/PID/cgroup. On a hybrid host a runtime that only
/// knows v1 (cgroupfs driver) leaves the v2 path at the runtime's own service, e.g.
/// "/system.slice/containerd.service", and puts the container in the v1 hierarchies: then the
/// container comes from a v1 line, and no unit is named, as stopping that service would not
/// stop this process.
fn parse_cgroup(file: &[u8]) -> (String, Option<String>, Option<String>) {
    let lines = || file.split(|&b| b == b'\n');
    let v2 = lines()
        .find_map(|line| line.strip_prefix(b"0::"))
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let (unit, container) = unit_and_container(&v2);
    if container.is_some() {
        return (v2, unit, container);
    }
    // "ID:controllers:path"; the v2 line has already been looked at.
    let v1 = lines()
        .filter(|line| !line.starts_with(b"0::"))
        .filter_map(|line| line.splitn(3, |&b| b == b':').nth(2))
        .find_map(|path| unit_and_container(&String::from_utf8_lossy(path)).1);
    match v1 {
        Some(id) => (v2, None, Some(id)),
        None => (v2, unit, None),
    }
}

/// The id if `component` is a container's cgroup: 64 lowercase hex digits, bare or in a
/// runtime's scope.
fn container_id(component: &str) -> Option<&str> {
    let id = CONTAINER_PREFIXES
        .iter()
        .find_map(|p| component.strip_prefix(p))
        .map_or(component, |rest| {
            rest.strip_suffix(".scope").unwrap_or(rest)
        });
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    (id.len() == 64 && id.bytes().all(hex)).then_some(id)
}

/// Reads at most `cap` bytes of `path` (relative to `dir`), without following a symlink.
fn read_capped<Fd: AsFd>(dir: Fd, path: &CStr, cap: usize) -> Option<Vec<u8>> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = fcntl::openat(dir, path, flags, Mode::empty()).ok()?;
    let mut buf = Vec::with_capacity(cap.min(4096));
    File::from(fd).take(cap as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Formats `args` and a NUL into `buf`, without allocating; None if it does not fit.
fn cpath<'a>(buf: &'a mut [u8], args: fmt::Arguments) -> Option<&'a CStr> {
    let mut w = &mut buf[..];
    w.write_fmt(args).ok()?;
    w.write_all(b"\0").ok()?;
    CStr::from_bytes_until_nul(buf).ok()
}

/// readlinkat(2) into `buf`, without allocating. A longer target is cut short, which is fine
/// for the short "socket:[N]" and "net:[N]" looked for here: a cut one never parses.
fn readlink_into<'a>(dir: RawFd, path: &CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: `path` is NUL-terminated and `buf` is writable for `buf.len()` bytes.
    let n = unsafe { libc::readlinkat(dir, path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.get(..usize::try_from(n).ok()?)
}

/// The number in `prefix` + digits + "]", as readlink shows sockets and namespaces.
fn bracketed(link: &[u8], prefix: &[u8]) -> Option<u32> {
    parse_u32(link.strip_prefix(prefix)?.strip_suffix(b"]")?)
}

/// A decimal u32 of digits only (no sign, no spaces).
fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Bytes to a String, invalid UTF-8 replaced; no copy when it is valid.
fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sched::{setns, unshare, CloneFlags};
    use std::ffi::OsStr;
    use std::io;
    use std::net::{TcpListener, UdpSocket};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Children a test started: SIGKILLed and reaped on drop, so also when the test fails.
    #[derive(Default)]
    struct Kids(Vec<Child>);

    impl Drop for Kids {
        fn drop(&mut self) {
            for child in &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Kids {
        /// Starts `cmd` dying with this thread, with `fds` inherited (CLOEXEC is cleared in the
        /// child only); returns its pid.
        fn spawn(&mut self, mut cmd: Command, fds: &[RawFd]) -> u32 {
            let fds = fds.to_vec();
            // SAFETY: only async-signal-safe syscalls run between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // Dies even if the harness is killed before Drop can run.
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
            let pid = child.id();
            self.0.push(child);
            pid
        }

        /// A `sleep` holding `fds`.
        fn sleeper(&mut self, fds: &[RawFd]) -> u32 {
            let mut cmd = Command::new("sleep");
            cmd.arg("600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            self.spawn(cmd, fds)
        }

        /// SIGKILLs and reaps child `i`.
        fn kill(&mut self, i: usize) {
            self.0[i].kill().expect("kill");
            self.0[i].wait().expect("wait");
        }
    }

    fn inode_of(fd: impl AsFd) -> u32 {
        u32::try_from(fstat(fd).expect("fstat").st_ino).expect("socket inode fits u32")
    }

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    #[test]
    fn owners_via_hint_and_via_index() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = inode_of(&listener);
        let mut kids = Kids::default();
        // A master and a worker that inherited its listening socket.
        let a = kids.sleeper(&[listener.as_raw_fd()]);
        let b = kids.sleeper(&[listener.as_raw_fd()]);
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
        let mut kids = Kids::default();
        let pid = kids.sleeper(&[sock.as_raw_fd()]);
        drop(sock);
        let mut idx = SocketIndex::new();
        assert_eq!(idx.owners(inode, &[], Duration::MAX), vec![pid]);
        kids.kill(0);
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
        let mut kids = Kids::default();
        let pid = kids.sleeper(&[sock.as_raw_fd()]);
        drop(sock);
        // Fresh enough: trusted as it is, so the new holder is unknown.
        assert!(idx.owners(inode, &[], Duration::from_secs(3600)).is_empty());
        // Too old: rescanned once.
        assert_eq!(idx.owners(inode, &[], Duration::ZERO), vec![pid]);
    }

    #[test]
    fn proc_info_of_self_and_of_nothing() {
        let me = proc_info(std::process::id()).expect("self");
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw() as u32);
        // SAFETY: getuid cannot fail and touches no memory.
        assert_eq!(me.uid, unsafe { libc::getuid() });
        assert!(me.start_time > 0 && !me.comm.is_empty() && !me.cmdline.is_empty());
        assert!(me.cgroup.starts_with('/'), "{:?}", me.cgroup);
        let kthreadd = proc_info(2).expect("kthreadd");
        assert_eq!((kthreadd.cmdline.as_str(), kthreadd.ppid), ("", 0));
        assert_eq!(proc_info(0), None);
        assert_eq!(proc_info(u32::MAX), None);
    }

    #[test]
    fn proc_info_survives_hostile_comm_and_cmdline() {
        // comm comes from the name the program was executed by: a symlink to sh named so.
        let comm: &[u8] = b"a) (\n\x1b[2J\xff) 9";
        let dir = std::env::temp_dir().join(format!("procs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join(OsStr::from_bytes(comm));
        let _ = std::fs::remove_file(&exe);
        std::os::unix::fs::symlink("/bin/sh", &exe).unwrap();
        let argv: [&[u8]; 5] = [
            b"\x1b]0;owned\x07\xfe",
            b"-c",
            b"read x",
            b"\n\t\xc3(\x7f\r",
            &[b'A'; 5000],
        ];
        let mut cmd = Command::new(&exe);
        cmd.arg0(OsStr::from_bytes(argv[0]))
            .args(argv[1..].iter().map(|a| OsStr::from_bytes(a)))
            // `read` blocks on the pipe: no grandchild, nothing to leak.
            .stdin(Stdio::piped());
        let mut kids = Kids::default();
        let pid = kids.spawn(cmd, &[]);
        std::fs::remove_dir_all(&dir).unwrap();

        let info = proc_info(pid).expect("child");
        assert_eq!(info.comm, String::from_utf8_lossy(comm));
        // Parsing stat at the first ')' would have read garbage here.
        assert_eq!(info.ppid, std::process::id());
        let me = proc_info(std::process::id()).unwrap();
        assert!(info.start_time >= me.start_time);
        let joined = argv.join(&b' ');
        assert_eq!(
            info.cmdline,
            String::from_utf8_lossy(&joined[..CMDLINE_CAP])
        );
        // The cache sees the same process.
        assert_eq!(ProcCache::new().get(pid), Some(info));
    }

    #[test]
    fn parse_stat_splits_at_the_last_paren() {
        let stat = b"42 (x) 7 8) (y) S 17 42 42 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 987654 1 2";
        let s = parse_stat(stat).unwrap();
        assert_eq!(
            (s.comm, s.ppid, s.start_time),
            (&b"x) 7 8) (y"[..], 17, 987654)
        );
        assert!(parse_stat(b"42 (x S 1").is_none());
        assert!(parse_stat(b"").is_none());
        assert!(parse_stat(b"42 (x) S 1 2").is_none());
    }

    #[test]
    fn proc_cache_revalidates_by_start_time() {
        let mut kids = Kids::default();
        let pid = kids.sleeper(&[]);
        let mut cache = ProcCache::new();
        let real = cache.get(pid).expect("child");
        assert_eq!(Some(&real), proc_info(pid).as_ref());

        // A hit is served from the cache...
        cache.entries.get_mut(&pid).unwrap().0.cmdline = "cached".into();
        assert_eq!(cache.get(pid).unwrap().cmdline, "cached");
        // ...unless the pid now names another process (other start time) ...
        let entry = &mut cache.entries.get_mut(&pid).unwrap().0;
        entry.start_time += 1;
        entry.cmdline = "old process".into();
        assert_eq!(cache.get(pid), Some(real.clone()));
        // ...or the process changed its name (an exec).
        cache.entries.get_mut(&pid).unwrap().0.comm = "before-exec".into();
        assert_eq!(cache.get(pid), Some(real));

        kids.kill(0);
        assert_eq!(cache.get(pid), None);
        assert!(!cache.entries.contains_key(&pid));
    }

    #[test]
    fn proc_cache_is_bounded() {
        let mut cache = ProcCache::new();
        let me = proc_info(std::process::id()).unwrap();
        for fake in 0..CACHE_CAP as u32 {
            cache.tick += 1;
            cache
                .entries
                .insert(u32::MAX - fake, (me.clone(), cache.tick));
        }
        assert!(cache.get(std::process::id()).is_some());
        assert!(cache.entries.len() <= CACHE_CAP / 2 + 1);
        assert!(cache.entries.contains_key(&std::process::id()));
        // The most recently used survived.
        assert!(cache
            .entries
            .contains_key(&(u32::MAX - (CACHE_CAP as u32 - 1))));
    }

    #[test]
    fn unit_and_container_from_real_paths() {
        let s = |v: &str| Some(v.to_string());
        type UnitAndContainer = (Option<String>, Option<String>);
        let cases: Vec<(String, UnitAndContainer)> = vec![
            (
                "/system.slice/nginx.service".into(),
                (s("nginx.service"), None),
            ),
            (
                format!("/system.slice/docker-{HEX}.scope"),
                (Some(format!("docker-{HEX}.scope")), s(HEX)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\
                     0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{HEX}.scope"
                ),
                (Some(format!("cri-containerd-{HEX}.scope")), s(HEX)),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope".into(),
                (s("app-foo.scope"), None),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope".into(),
                (s("init.scope"), None),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service".into(),
                (s("user@1000.service"), None),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope".into(),
                (s("session-3.scope"), None),
            ),
            ("/".into(), (None, None)),
            ("".into(), (None, None)),
            ("/system.slice".into(), (None, None)),
            ("/init.scope".into(), (s("init.scope"), None)),
            (format!("/docker/{HEX}"), (None, s(HEX))),
            (
                format!("/kubepods/burstable/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/{HEX}"),
                (None, s(HEX)),
            ),
            (
                format!("/machine.slice/libpod-{HEX}.scope/container"),
                (Some(format!("libpod-{HEX}.scope")), s(HEX)),
            ),
            (
                format!("/machine.slice/libpod-conmon-{HEX}.scope"),
                (Some(format!("libpod-conmon-{HEX}.scope")), None),
            ),
            (
                format!("/system.slice/crio-{HEX}.scope"),
                (Some(format!("crio-{HEX}.scope")), s(HEX)),
            ),
            // A systemd inside the container: its units are not the host's.
            (
                format!("/docker/{HEX}/system.slice/sshd.service"),
                (None, s(HEX)),
            ),
            (
                format!("/system.slice/docker-{HEX}.scope/system.slice/sshd.service"),
                (Some(format!("docker-{HEX}.scope")), s(HEX)),
            ),
            // Outermost container wins: it is the one the host's runtime knows.
            (
                format!("/docker/{HEX}/docker/{}", "f".repeat(64)),
                (None, s(HEX)),
            ),
            // Not containers: wrong length, upper case.
            (format!("/docker/{}", &HEX[1..]), (None, None)),
            (format!("/docker/{}", HEX.to_uppercase()), (None, None)),
            // Garbage: control characters, shell metacharacters, non-ASCII.
            (
                "/system.slice/evil\n.service/x;rm -rf /.service/\u{1b}[2J.scope/é.service".into(),
                (None, None),
            ),
            (
                "/system.slice/ok.service/evil\u{7}.scope".into(),
                (s("ok.service"), None),
            ),
            ("//..//.service//-.mount/".into(), (None, None)),
        ];
        for (path, want) in cases {
            assert_eq!(unit_and_container(&path), want, "{path:?}");
        }
    }

    /// A cgroup v2 directory made by a test, removed on drop (after its processes are gone).
    struct Cgroup(std::path::PathBuf);

    impl Drop for Cgroup {
        fn drop(&mut self) {
            // A killed member can hold it busy for a moment.
            for _ in 0..100 {
                if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    #[test]
    fn proc_info_reads_the_v2_cgroup() {
        // cgroup2 is at /sys/fs/cgroup/unified on a hybrid host, else at /sys/fs/cgroup.
        let Some(root) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| p.join("cgroup.subtree_control").exists())
        else {
            eprintln!("no cgroup2 mount: skipped");
            return;
        };
        let name = format!("procs-test-{}", std::process::id());
        let outer = Cgroup(root.join(&name));
        std::fs::create_dir(&outer.0).unwrap();
        let inner = Cgroup(outer.0.join(format!("docker-{HEX}.scope")));
        std::fs::create_dir(&inner.0).unwrap();
        // Declared after the cgroups, so dropped (killed) before they are removed.
        let mut kids = Kids::default();
        let pid = kids.sleeper(&[]);
        std::fs::write(inner.0.join("cgroup.procs"), pid.to_string()).unwrap();

        let info = proc_info(pid).expect("child");
        let path = format!("/{name}/docker-{HEX}.scope");
        assert!(info.cgroup.ends_with(&path), "{:?}", info.cgroup);
        assert_eq!(info.unit, Some(format!("docker-{HEX}.scope")));
        assert_eq!(info.container.as_deref(), Some(HEX));
        kids.kill(0);
    }

    #[test]
    fn cgroup_file_v2_and_hybrid() {
        let s = |v: &str| Some(v.to_string());
        let v2 = parse_cgroup(b"0::/system.slice/nginx.service\n");
        assert_eq!(
            v2,
            (
                "/system.slice/nginx.service".into(),
                s("nginx.service"),
                None
            )
        );
        // Hybrid host, docker with the cgroupfs driver: the container is only in v1.
        let hybrid = format!(
            "12:name=systemd:/docker/{HEX}\n4:memory:/docker/{HEX}\n1:cpu:/docker/{HEX}\n\
             0::/system.slice/containerd.service\n"
        );
        assert_eq!(
            parse_cgroup(hybrid.as_bytes()),
            ("/system.slice/containerd.service".into(), None, s(HEX))
        );
        // Hybrid, nothing special: v1 lines change nothing.
        let plain = b"9:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n";
        assert_eq!(
            parse_cgroup(plain),
            ("/system.slice/a.service".into(), s("a.service"), None)
        );
        assert_eq!(parse_cgroup(b"1:cpu:/\n"), (String::new(), None, None));
        assert_eq!(parse_cgroup(b"\xff\n0::\n"), (String::new(), None, None));
        assert_eq!(parse_cgroup(b""), (String::new(), None, None));
    }

    #[test]
    fn safe_unit_names() {
        for ok in [
            "nginx.service",
            "user@1000.service",
            "session-3.scope",
            "getty@tty1.service",
            "systemd-fsck@dev-disk-by\\x2duuid-1234.service",
            "a:b_c.socket",
            "system.slice",
        ] {
            assert!(is_safe_unit_name(ok), "{ok:?}");
        }
        let long = format!("{}.service", "a".repeat(247));
        assert_eq!(long.len(), 255);
        assert!(is_safe_unit_name(&long));
        for bad in [
            "foo;rm -rf /.service",
            "-x.service",
            "-.mount",
            "a b.service",
            "a\nb.service",
            "a.service\n",
            "\u{1b}[2J.service",
            "$(reboot).service",
            "`id`.service",
            "a'b.service",
            "nginx",
            "nginx.exe",
            ".service",
            "@.service",
            "a@b@c.service",
            "é.service",
            "",
            &format!("{}.service", "a".repeat(248)),
        ] {
            assert!(!is_safe_unit_name(bad), "{bad:?}");
        }
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
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
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
