//! Who is a process: /proc/PID read into a [`ProcInfo`], with a cache
//! validated by start time, and the socket index that maps sockets to them.
//!
//! Everything read from /proc is untrusted: a process chooses its comm and cmdline (control bytes,
//! invalid UTF-8, a ") " inside comm), and it can exit and have its pid reused between two reads.
//! So every read is capped and decoded lossily, nothing here panics on what it reads, and symlinks
//! are only ever read (readlink), except the namespace links that `holders::netns` must open.
//! The strings in [`ProcInfo`] are raw: escape them before printing them to a terminal.

mod cgroup;
mod index;
pub(crate) mod raw;
pub mod source;

use std::collections::HashMap;

pub use cgroup::{is_safe_unit_name, is_stoppable_unit, unit_and_container, Runtime};
pub use index::{ScanStats, SocketIndex};
use nix::{
    fcntl::{self, OFlag, AT_FDCWD},
    sys::stat::Mode,
};
use raw::{cpath, lossy, read_capped};
pub use source::{SocketFd, SocketSource};

/// The most bytes read from /proc/PID/cmdline.
const CMDLINE_CAP: usize = 4096;
/// The most bytes read from any other /proc file (stat, status, cgroup).
const FILE_CAP: usize = 16 * 1024;
/// The most processes [`ProcCache`] keeps.
const CACHE_CAP: usize = 4096;
/// Every this many insertions, [`ProcCache`] drops the processes that have
/// exited: under churn nearly every entry is a process gone a second later,
/// and waiting for the cap kept thousands of them (their cmdlines) resident.
const PRUNE_EVERY: u32 = 256;
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
    /// Which runtime made the container's cgroup, with `container`.
    pub runtime: Option<Runtime>,
    /// Start time in clock ticks since boot (stat field 22); with `pid` it names one process.
    pub start_time: u64,
    /// It is exiting (PF_EXITING in its stat flags: its memory, and with
    /// it its command line, goes first, its files after) or has exited and
    /// waits to be reaped (state Z: its pid, comm and start time remain).
    pub exiting: bool,
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
    let cgroup_file = read_capped(&dir, c"cgroup", FILE_CAP)?;
    let (cgroup, unit, container) = cgroup::parse_cgroup(&cgroup_file);
    let runtime = container
        .as_deref()
        .map(|id| cgroup::container_runtime(&cgroup_file, id));
    Some(ProcInfo {
        pid,
        ppid: stat.ppid,
        uid,
        comm: String::from_utf8_lossy(stat.comm).into_owned(),
        cmdline: lossy(cmdline),
        cgroup,
        unit,
        container,
        runtime,
        start_time: stat.start_time,
        exiting: stat.exiting(),
    })
}

/// Cache of [`proc_info`] by pid, validated by start_time (a reused pid gets a fresh read).
/// Bounded size.
///
/// Each hit still reads /proc/PID/stat (one small read) to check the start time; a changed comm
/// (an exec, or a rename) also forces a fresh read, and the parent pid and whether it is exiting
/// are refreshed from it.
#[derive(Debug, Default)]
pub struct ProcCache {
    /// pid -> (info, tick of last use).
    entries: HashMap<u32, (ProcInfo, u64)>,
    /// Incremented on every `get`, for evicting the least recently used.
    tick: u64,
    /// Insertions since the exited processes were last dropped.
    inserted: u32,
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
                info.exiting = stat.exiting();
                *used = self.tick;
                return Some(info.clone());
            }
        }
        let Some(info) = proc_info(pid) else {
            self.entries.remove(&pid);
            return None;
        };
        self.inserted += 1;
        if self.inserted >= PRUNE_EVERY {
            self.inserted = 0;
            self.drop_exited();
        }
        if self.entries.len() >= CACHE_CAP && !self.entries.contains_key(&pid) {
            self.evict_older_half();
        }
        self.entries.insert(pid, (info.clone(), self.tick));
        Some(info)
    }

    /// Drops the entries whose pid no longer exists (one stat-less
    /// `access` each). A pid reused meanwhile stays: `get` checks its start
    /// time anyway.
    fn drop_exited(&mut self) {
        let mut path = [0u8; 32];
        self.entries.retain(|&pid, _| {
            cpath(&mut path, format_args!("/proc/{pid}"))
                .is_some_and(|p| nix::unistd::access(p, nix::unistd::AccessFlags::F_OK).is_ok())
        });
        // A burst's table is not kept for the quiet that follows.
        if self.entries.capacity() > 4 * self.entries.len().max(64) {
            self.entries.shrink_to_fit();
        }
    }

    /// Drops the least recently used half: O(n) once per CACHE_CAP/2 insertions.
    fn evict_older_half(&mut self) {
        let mut ticks: Vec<u64> = self.entries.values().map(|&(_, t)| t).collect();
        let mid = ticks.len() / 2;
        let median = *ticks.select_nth_unstable(mid).1;
        self.entries.retain(|_, &mut (_, t)| t > median);
    }
}

/// The fields of /proc/PID/stat that are used.
struct Stat<'a> {
    comm: &'a [u8],
    /// Field 3: R, S, D, Z...
    state: u8,
    /// Field 9: the kernel's PF_* flags.
    flags: u64,
    ppid: u32,
    start_time: u64,
}

impl Stat<'_> {
    /// Exiting (PF_EXITING, include/linux/sched.h) or exited (Z, X).
    fn exiting(&self) -> bool {
        const PF_EXITING: u64 = 0x4;
        matches!(self.state, b'Z' | b'X') || self.flags & PF_EXITING != 0
    }
}

/// Process `pid`'s parent, from its /proc/PID/stat alone.
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|s| s.ppid)
}

/// Parses /proc/PID/stat. comm sits between the first '(' and the LAST ')', since it may hold
/// ") " itself; the numbered fields follow, field 3 (state) first.
fn parse_stat(stat: &[u8]) -> Option<Stat<'_>> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = stat.get(open + 1..close)?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?; // field 3
    let ppid = fields.next()?.parse().ok()?; // field 4
    let flags = fields.nth(4)?.parse().ok()?; // field 9
    let start_time = fields.nth(12)?.parse().ok()?; // field 22
    Some(Stat {
        comm,
        state,
        flags,
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

/// Children of `pid` (of its main thread), at most 64: where the workers
/// that inherited a listening socket are.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_ascii_whitespace()
        .filter_map(|p| p.parse().ok())
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::OsStr,
        os::unix::{ffi::OsStrExt, process::CommandExt},
        process::{Command, Stdio},
    };

    use portwatch_test_support::{Cgroup, Process};

    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

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
        let child = Process::spawn(cmd, &[]);
        let pid = child.pid;
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
            (s.comm, s.state, s.flags, s.ppid, s.start_time),
            (&b"x) 7 8) (y"[..], b'S', 4194560, 17, 987654)
        );
        assert!(!s.exiting());
        let exiting = b"42 (x) R 17 42 42 0 -1 4194564 1 2 3 4 5 6 7 8 20 0 1 0 987654 1 2";
        assert!(parse_stat(exiting).unwrap().exiting());
        let zombie = b"42 (x) Z 17 42 42 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 987654 1 2";
        assert!(parse_stat(zombie).unwrap().exiting());
        assert!(parse_stat(b"42 (x S 1").is_none());
        assert!(parse_stat(b"").is_none());
        assert!(parse_stat(b"42 (x) S 1 2").is_none());
    }

    #[test]
    fn proc_cache_revalidates_by_start_time() {
        let mut child = Process::sleeper(&[]);
        let pid = child.pid;
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

        child.kill();
        assert_eq!(cache.get(pid), None);
        assert!(!cache.entries.contains_key(&pid));
    }

    #[test]
    fn proc_cache_forgets_exited_processes() {
        let mut cache = ProcCache::new();
        let me = proc_info(std::process::id()).unwrap();
        // Pids above the kernel's pid_max limit (4194304) never exist.
        for fake in 0..100u32 {
            cache.entries.insert(u32::MAX - fake, (me.clone(), 0));
        }
        let mut alive = Process::sleeper(&[]);
        for _ in 0..PRUNE_EVERY {
            // Each get of a live pid not yet cached is an insertion.
            cache.entries.remove(&alive.pid);
            assert!(cache.get(alive.pid).is_some());
        }
        assert_eq!(cache.entries.len(), 1, "{:?}", cache.entries.keys());
        assert!(cache.entries.contains_key(&alive.pid));
        alive.kill();
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
    fn proc_info_reads_the_v2_cgroup() {
        let outer = Cgroup::new("procs-test");
        let inner = outer.child(&format!("docker-{HEX}.scope"));
        // Declared after the cgroups, so dropped (killed) before they are removed.
        let mut child = Process::sleeper(&[]);
        let pid = child.pid;
        inner.add(pid);
        let name = outer.0.file_name().unwrap().to_str().unwrap().to_owned();

        let info = proc_info(pid).expect("child");
        let path = format!("/{name}/docker-{HEX}.scope");
        assert!(info.cgroup.ends_with(&path), "{:?}", info.cgroup);
        assert_eq!(info.unit, Some(format!("docker-{HEX}.scope")));
        assert_eq!(info.container.as_deref(), Some(HEX));
        child.kill();
    }
}
