//! The flight recorder of `watch --record DIR`: every event, as its NDJSON
//! line, appended to a rotated journal in DIR, plus the life of the ports
//! of interest (`PortLife` lines, from the kernel's `LIFE` ring buffer).
//!
//! Off the capture path: the pipeline's writer hands rendered lines over a
//! bounded queue and never waits; a full queue (a disk slower than the
//! events) is counted as loss. The recorder thread writes whole lines only
//! and at least once a second, so a SIGKILL leaves every written line intact
//! and loses at most the last second. A write that fails (a full disk) is
//! cut back to the last whole line, reported once, then counted until a
//! write succeeds again. A vanished directory is re-created.
//!
//! Files are created 0600 through the directory's fd with O_NOFOLLOW, so a
//! symlink planted at a journal's path is refused, never written through;
//! DIR is created 0700 when missing and opened with O_NOFOLLOW too.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            ffi::OsStrExt as _,
            fs::{DirBuilderExt as _, MetadataExt as _},
        },
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::output::{Notice, Notices};

/// Journal files are named `portwatch-NNNNNNNNNN.ndjson`, numbered in order.
pub const PREFIX: &str = "portwatch-";
/// The journal files' extension.
pub const SUFFIX: &str = ".ndjson";

/// Lines are written at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// ... or whenever this many bytes are waiting.
const FLUSH_BYTES: usize = 64 * 1024;
/// Chunks (one per writer batch) waiting for the recorder thread.
const QUEUE: usize = 256;

/// Why the journal cannot be opened or written. The cause, when there is
/// one, is the [`source`](std::error::Error::source): print the chain
/// (anyhow's `{:#}`) to see it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// DIR cannot be created.
    #[error("cannot create {}", .dir.display())]
    CreateDir {
        /// The journal directory.
        dir: PathBuf,
        /// What mkdir said.
        #[source]
        source: io::Error,
    },
    /// DIR's path cannot be handed to the kernel.
    #[error("{} has a NUL byte", .dir.display())]
    NulInPath {
        /// The journal directory.
        dir: PathBuf,
    },
    /// DIR is a symlink, or not a directory.
    #[error("{} is a symlink or not a directory: refusing to record there", .dir.display())]
    NotADirectory {
        /// The journal directory.
        dir: PathBuf,
    },
    /// DIR cannot be opened.
    #[error("cannot open {}", .dir.display())]
    OpenDir {
        /// The journal directory.
        dir: PathBuf,
        /// What open or fstat said.
        #[source]
        source: io::Error,
    },
    /// DIR cannot be listed.
    #[error("cannot list {}", .dir.display())]
    ListDir {
        /// The journal directory.
        dir: PathBuf,
        /// What readdir said.
        #[source]
        source: io::Error,
    },
    /// A journal file cannot be opened.
    #[error("cannot open {name}")]
    OpenFile {
        /// The file's name in DIR.
        name: String,
        /// What openat said.
        #[source]
        source: io::Error,
    },
    /// A symlink is planted at a journal file's path.
    #[error("{name} is a symlink: refusing to write through it")]
    Symlink {
        /// The file's name in DIR.
        name: String,
    },
    /// A journal file's path holds a FIFO, a device, a directory...
    #[error("{name} is not a regular file: refusing to write to it")]
    NotAFile {
        /// The file's name in DIR.
        name: String,
    },
    /// A journal file has other names: writing to it writes to them.
    #[error("{name} has other hard links: refusing to write to it")]
    HardLinked {
        /// The file's name in DIR.
        name: String,
    },
    /// A journal file cannot be checked or cut back to whole lines.
    #[error("cannot prepare {name} for appending")]
    Prepare {
        /// The file's name in DIR.
        name: String,
        /// What fstat, read or ftruncate said.
        #[source]
        source: io::Error,
    },
    /// Writing lines failed (a full disk).
    #[error("writing the journal")]
    Write(#[source] io::Error),
    /// DIR vanished (or was replaced) and cannot be made again.
    #[error("{} vanished", .dir.display())]
    Vanished {
        /// The journal directory.
        dir: PathBuf,
        /// Why it cannot be made again.
        #[source]
        source: Box<Error>,
    },
    /// Recording cannot start in DIR.
    #[error("cannot record in {}", .dir.display())]
    Record {
        /// The journal directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// The recorder thread cannot be started.
    #[error("starting the recorder thread")]
    Thread(#[source] io::Error),
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// `e` and its causes, `: `-separated, as anyhow's `{:#}` prints them
/// (for lines said from inside the core, where there is no anyhow).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

/// Where and how much to record.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// The journal directory.
    pub dir: PathBuf,
    /// Rotate a file once it reaches this many bytes.
    pub max_size: u64,
    /// Keep at most this many files (the oldest are removed).
    pub max_files: u32,
}

/// What the recorder did, at exit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStats {
    /// The journal directory.
    pub dir: PathBuf,
    /// Lines written.
    pub lines: u64,
    /// Lines lost because the queue to the recorder was full (slow disk).
    pub lost_queue: u64,
    /// Lines lost because writing failed (full disk, vanished directory).
    pub lost_write: u64,
    /// Journal files rotated away (removed past `--max-files`).
    pub removed: u64,
}

/// The writers' end: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<(Vec<u8>, u64)>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// Hands `lines` whole NDJSON lines (in `chunk`) to the recorder, or
    /// counts them lost when it is a whole queue behind.
    pub fn send(&self, chunk: Vec<u8>, lines: u64) {
        match self.tx.try_send((chunk, lines)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(lines, Ordering::Relaxed);
            }
        }
    }
}

/// A running recorder thread.
pub struct Journal {
    sink: Option<Sink>,
    thread: std::thread::JoinHandle<JournalStats>,
}

impl Journal {
    /// Opens (or creates) the journal directory and its newest file, and
    /// starts the recorder thread. Errors here are the user's to fix: a
    /// symlink at DIR or at the journal's path, a DIR that is not a directory.
    pub fn start(opts: JournalOptions, notices: Notices) -> Result<Self> {
        let mut journal = Files::open(opts)?;
        let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, u64)>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("recorder".into())
            .spawn({
                let dropped = dropped.clone();
                move || {
                    journal.run(rx, notices);
                    journal.stats.lost_queue = dropped.load(Ordering::Relaxed);
                    journal.stats
                }
            })
            .map_err(Error::Thread)?;
        Ok(Self {
            sink: Some(Sink { tx, dropped }),
            thread,
        })
    }

    /// A handle for writers.
    pub fn sink(&self) -> Sink {
        self.sink.clone().expect("the recorder is running")
    }

    /// Waits for every line handed over so far to be written (once every
    /// other `Sink` is dropped too), and returns the account.
    pub fn finish(mut self) -> JournalStats {
        drop(self.sink.take());
        self.thread.join().unwrap_or_default()
    }
}

/// The journal directory and its current file.
struct Files {
    opts: JournalOptions,
    dir: OwnedFd,
    /// (dev, ino) of DIR when opened: a different one means it vanished.
    identity: (u64, u64),
    file: Option<File>,
    seq: u64,
    size: u64,
    buf: Vec<u8>,
    buf_lines: u64,
    /// Why writing fails, while it does (said once on stderr).
    failing: Option<String>,
    last_attempt: Option<Instant>,
    lost_since_failing: u64,
    stats: JournalStats,
}

fn cstr(name: &str) -> CString {
    CString::new(name).expect("journal names have no NUL")
}

/// Opens DIR (creating it 0700) without following a symlink at DIR.
fn open_dir(dir: &Path) -> Result<(OwnedFd, (u64, u64))> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(Error::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })
        }
    }
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| Error::NulInPath {
        dir: dir.to_path_buf(),
    })?;
    // SAFETY: a valid C string; the fd is owned below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
            return Err(Error::NotADirectory {
                dir: dir.to_path_buf(),
            });
        }
        return Err(Error::OpenDir {
            dir: dir.to_path_buf(),
            source: e,
        });
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let meta = fd
        .try_clone()
        .and_then(|dup| File::from(dup).metadata())
        .map_err(|source| Error::OpenDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    Ok((fd, (meta.dev(), meta.ino())))
}

/// `portwatch-NNNNNNNNNN.ndjson`'s number.
pub fn seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn name_of(seq: u64) -> String {
    format!("{PREFIX}{seq:010}{SUFFIX}")
}

impl Files {
    fn open(opts: JournalOptions) -> Result<Self> {
        let (dir, identity) = open_dir(&opts.dir)?;
        let newest = listed(&opts.dir)?.last().copied();
        let mut journal = Self {
            dir,
            identity,
            file: None,
            seq: newest.unwrap_or(1),
            size: 0,
            buf: Vec::with_capacity(FLUSH_BYTES * 2),
            buf_lines: 0,
            failing: None,
            last_attempt: None,
            lost_since_failing: 0,
            stats: JournalStats {
                dir: opts.dir.clone(),
                ..JournalStats::default()
            },
            opts,
        };
        journal.open_file().map_err(|e| Error::Record {
            dir: journal.opts.dir.clone(),
            source: Box::new(e),
        })?;
        if journal.size >= journal.opts.max_size {
            journal.rotate()?;
        }
        Ok(journal)
    }

    /// Opens file `seq` for appending, 0600, refusing symlinks, FIFOs and
    /// hard links; cuts a partial last line (left by a crash) back.
    fn open_file(&mut self) -> Result<()> {
        let name = name_of(self.seq);
        // SAFETY: valid fd and C string; the result is owned below.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                cstr(&name).as_ptr(),
                libc::O_RDWR
                    | libc::O_CREAT
                    | libc::O_APPEND
                    | libc::O_NOFOLLOW
                    | libc::O_NONBLOCK
                    | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ELOOP) {
                return Err(Error::Symlink { name });
            }
            return Err(Error::OpenFile { name, source: e });
        }
        // SAFETY: a fresh descriptor we own.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let prepare = |source| Error::Prepare {
            name: name.clone(),
            source,
        };
        let meta = file.metadata().map_err(prepare)?;
        if !meta.file_type().is_file() {
            return Err(Error::NotAFile { name });
        }
        if meta.nlink() != 1 {
            return Err(Error::HardLinked { name });
        }
        let mut size = meta.len();
        if size > 0 {
            size = whole_lines(&mut file, size).map_err(prepare)?;
        }
        self.file = Some(file);
        self.size = size;
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        self.file = None;
        self.seq += 1;
        self.open_file()?;
        let files = listed(&self.opts.dir)?;
        let excess = files.len().saturating_sub(self.opts.max_files as usize);
        for &seq in &files[..excess] {
            // SAFETY: valid fd and C string.
            if unsafe { libc::unlinkat(self.dir.as_raw_fd(), cstr(&name_of(seq)).as_ptr(), 0) } == 0
            {
                self.stats.removed += 1;
            }
        }
        Ok(())
    }

    fn run(&mut self, rx: mpsc::Receiver<(Vec<u8>, u64)>, notices: Notices) {
        let mut oldest = None::<Instant>;
        loop {
            let wait = oldest.map_or(FLUSH_EVERY, |t: Instant| {
                FLUSH_EVERY.saturating_sub(t.elapsed())
            });
            match rx.recv_timeout(wait) {
                Ok((chunk, lines)) => {
                    self.buf.extend_from_slice(&chunk);
                    self.buf_lines += lines;
                    oldest.get_or_insert_with(Instant::now);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush(&notices);
                    return;
                }
            }
            if self.buf.len() >= FLUSH_BYTES || oldest.is_some_and(|t| t.elapsed() >= FLUSH_EVERY) {
                self.flush(&notices);
                oldest = None;
            }
        }
    }

    /// Writes what is buffered, or counts it lost.
    fn flush(&mut self, notices: &Notices) {
        if self.buf.is_empty() {
            return;
        }
        // While failing, try again once a second, not at every chunk (None:
        // not tried, still failing).
        let retry_due = self.last_attempt.is_none_or(|t| t.elapsed() >= FLUSH_EVERY);
        let result = if self.failing.is_some() && !retry_due {
            None
        } else {
            self.last_attempt = Some(Instant::now());
            Some(self.write_buf())
        };
        let lines = std::mem::take(&mut self.buf_lines);
        match result {
            Some(Ok(())) => {
                self.stats.lines += lines;
                if self.failing.take().is_some() {
                    notices.say(&Notice::RecordResumed {
                        dir: self.opts.dir.clone(),
                        lost: self.lost_since_failing,
                    });
                    self.lost_since_failing = 0;
                }
            }
            failed => {
                self.stats.lost_write += lines;
                self.lost_since_failing += lines;
                if let (None, Some(Err(e))) = (&self.failing, failed) {
                    let why = with_causes(&e);
                    notices.say(&Notice::RecordFailing {
                        dir: self.opts.dir.clone(),
                        why: why.clone(),
                    });
                    self.failing = Some(why);
                }
            }
        }
        self.buf.clear();
    }

    fn write_buf(&mut self) -> Result<()> {
        self.check_dir()?;
        if self.file.is_none() {
            self.open_file()?;
        }
        let buf = std::mem::take(&mut self.buf);
        let result = self.write_lines(&buf);
        self.buf = buf;
        result
    }

    /// Writes whole lines, rotating between lines when a file is full.
    fn write_lines(&mut self, mut rest: &[u8]) -> Result<()> {
        while !rest.is_empty() {
            let room = self.opts.max_size.saturating_sub(self.size) as usize;
            let take = if rest.len() <= room {
                rest.len()
            } else {
                match rest[..room].iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    // Not one more line fits: a new file (unless this one is
                    // empty, and then the line is bigger than a whole file).
                    None if self.size > 0 => {
                        self.rotate()?;
                        continue;
                    }
                    None => rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(rest.len(), |i| i + 1),
                }
            };
            let file = self.file.as_mut().expect("opened by the caller or rotate");
            if let Err(e) = file.write_all(&rest[..take]) {
                // Keep the file to whole lines: cut the partial write back.
                let _ = file.set_len(self.size);
                return Err(Error::Write(e));
            }
            self.size += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }

    /// Re-creates DIR when it vanished (or was replaced) since it was opened.
    fn check_dir(&mut self) -> Result<()> {
        let same = std::fs::symlink_metadata(&self.opts.dir)
            .is_ok_and(|m| m.is_dir() && (m.dev(), m.ino()) == self.identity);
        if same {
            return Ok(());
        }
        self.file = None;
        let (dir, identity) = open_dir(&self.opts.dir).map_err(|e| Error::Vanished {
            dir: self.opts.dir.clone(),
            source: Box::new(e),
        })?;
        self.dir = dir;
        self.identity = identity;
        self.seq = listed(&self.opts.dir)?.last().copied().unwrap_or(1);
        Ok(())
    }
}

/// Journal file numbers in DIR, oldest first.
pub fn existing(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().to_str().and_then(seq_of))
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// [`existing`], failing as the recorder says it.
fn listed(dir: &Path) -> Result<Vec<u64>> {
    existing(dir).map_err(|source| Error::ListDir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// The length of `file` up to its last newline, cutting anything after it
/// (a line a crash left half written).
fn whole_lines(file: &mut File, size: u64) -> io::Result<u64> {
    let mut at = size;
    let mut block = vec![0u8; 64 * 1024];
    while at > 0 {
        let start = at.saturating_sub(block.len() as u64);
        let n = (at - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block[..n])?;
        if let Some(i) = block[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep != size {
                file.set_len(keep)?;
            }
            return Ok(keep);
        }
        at = start;
    }
    file.set_len(0)?;
    Ok(0)
}

/// Decodes one `LIFE` record into its journal line.
pub fn life_line(
    bytes: &[u8],
    clock: crate::clock::Clock,
    hide: u64,
) -> Option<crate::output::json::PortLife> {
    use portwatch_common as common;

    use crate::{
        output::json::{LifeKind, PortLife, PortTag},
        request::{Family, Proto},
    };
    let r: common::Life = bytemuck::pod_read_unaligned(bytes.get(..size_of::<common::Life>())?);
    let family = match r.family {
        common::AF_INET => Family::Ipv4,
        common::AF_INET6 => Family::Ipv6,
        _ => return None,
    };
    let event = match r.kind {
        common::LIFE_LISTEN => LifeKind::Listen,
        common::LIFE_CLOSED => LifeKind::Closed,
        common::LIFE_TIME_WAIT => LifeKind::TimeWait,
        _ => return None,
    };
    let a = r.addr;
    let addr = match family {
        Family::Ipv4 => std::net::IpAddr::from([a[0], a[1], a[2], a[3]]),
        Family::Ipv6 => std::net::IpAddr::from(a),
    };
    let len = r.comm.iter().position(|&c| c == 0).unwrap_or(16);
    Some(PortLife {
        kind_tag: PortTag::Port,
        ts: clock.wall(r.ts_boot_ns),
        event,
        port: r.port,
        proto: Proto::from(6),
        family,
        addr,
        netns: r.netns,
        pid: r.pid,
        comm: String::from_utf8_lossy(&r.comm[..len]).into_owned(),
        holder_pid: (r.holder_pid != 0).then_some(r.holder_pid),
        // Kernel addresses stay out of the journal: a per-run mask keeps
        // pairs matchable without revealing the pointer.
        socket: r.sk ^ hide,
        count: r.count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Format;

    #[test]
    fn life_records_decode_from_unaligned_bytes_and_bad_ones_do_not() {
        use portwatch_common as common;

        use crate::output::json::LifeKind;
        let mut comm = [0; 16];
        comm[..5].copy_from_slice(b"nginx");
        let mut addr = [0; 16];
        addr[15] = 1;
        let life = common::Life {
            ts_boot_ns: 7,
            sk: 0xffff_8880_0000_1000,
            count: 0,
            pid: 42,
            holder_pid: 41,
            netns: 4_026_531_840,
            port: 8080,
            family: common::AF_INET6,
            kind: common::LIFE_CLOSED,
            _pad: [0; 3],
            comm,
            addr,
        };
        // One byte in front, so the record is not 8-byte aligned.
        let mut buf = vec![0xee];
        buf.extend_from_slice(bytemuck::bytes_of(&life));
        let clock = crate::clock::Clock::now();
        let line = life_line(&buf[1..], clock, 0xff).expect("a valid record");
        assert_eq!(line.event, LifeKind::Closed);
        assert_eq!((line.port, line.pid, line.holder_pid), (8080, 42, Some(41)));
        assert_eq!(line.netns, 4_026_531_840);
        assert_eq!(line.comm, "nginx");
        assert_eq!(line.addr, "::1".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(line.socket, 0xffff_8880_0000_10ff);
        assert_eq!(line.ts, clock.wall(7));
        assert!(life_line(&buf[1..buf.len() - 1], clock, 0).is_none());
        let unknown = common::Life { kind: 9, ..life };
        assert!(life_line(bytemuck::bytes_of(&unknown), clock, 0).is_none());
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pw-rec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn opts(dir: &Path) -> JournalOptions {
        JournalOptions {
            dir: dir.to_path_buf(),
            max_size: 1000,
            max_files: 3,
        }
    }

    fn notices() -> Notices {
        Notices::new(Format::Json)
    }

    #[test]
    fn rotates_keeps_whole_lines_and_modes() {
        let dir = temp("rotate");
        let rec = Journal::start(opts(&dir), notices()).unwrap();
        let sink = rec.sink();
        for i in 0..100 {
            sink.send(format!("{{\"n\":\"{i:040}\"}}\n").into_bytes(), 1);
        }
        drop(sink);
        let done = rec.finish();
        assert_eq!(done.lines + done.lost_queue, 100);
        let seqs = existing(&dir).unwrap();
        assert_eq!(seqs.len(), 3, "{seqs:?}");
        assert!(done.removed > 0);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for seq in seqs {
            let path = dir.join(name_of(seq));
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.len() <= 1000, "{}", text.len());
            assert!(text.ends_with('\n'));
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_symlinks_and_cuts_partial_lines() {
        let dir = temp("link");
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let target = dir.join("target");
        std::fs::write(&target, "keep\n").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(name_of(1))).unwrap();
        let err = Journal::start(opts(&dir), notices()).err().unwrap();
        let why = with_causes(&err);
        assert!(why.contains("is a symlink: refusing"), "{why}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
        // DIR itself a symlink.
        let link = temp("linkdir");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = Journal::start(opts(&link), notices()).err().unwrap();
        assert!(matches!(err, Error::NotADirectory { .. }), "{err:?}");
        std::fs::remove_file(&link).unwrap();
        // A crash left half a line: it is cut before appending.
        std::fs::remove_file(dir.join(name_of(1))).unwrap();
        std::fs::write(dir.join(name_of(1)), "{\"a\":1}\n{\"b\":").unwrap();
        let rec = Journal::start(opts(&dir), notices()).unwrap();
        rec.sink().send(b"{\"c\":3}\n".to_vec(), 1);
        rec.finish();
        assert_eq!(
            std::fs::read_to_string(dir.join(name_of(1))).unwrap(),
            "{\"a\":1}\n{\"c\":3}\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_vanished_directory_is_recreated() {
        let dir = temp("vanish");
        let rec = Journal::start(opts(&dir), notices()).unwrap();
        rec.sink().send(b"{\"a\":1}\n".to_vec(), 1);
        std::thread::sleep(Duration::from_millis(1300));
        std::fs::remove_dir_all(&dir).unwrap();
        rec.sink().send(b"{\"b\":2}\n".to_vec(), 1);
        let done = rec.finish();
        assert_eq!(done.lines, 2);
        assert_eq!(
            std::fs::read_to_string(dir.join(name_of(1))).unwrap(),
            "{\"b\":2}\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
