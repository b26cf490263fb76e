//! Journal reading on every core: parsing a line costs far more than
//! finding it, so the files are cut into chunks of whole lines, each
//! chunk's lines are parsed in parallel (rayon, in order), and while one
//! chunk is parsed the one before it is handed on, line by line. Two chunk
//! buffers take turns, so memory stays bounded; the parsed lines borrow
//! from their buffer. The result is the serial reader's, line for line
//! (tested below).

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _, Result};
use rayon::prelude::*;

use super::read::{self, Lines, Outcome, ReadStats};
use crate::output::json::LineView;

/// Whole lines, concatenated, with where each one is.
#[derive(Default)]
struct Chunk {
    buf: Vec<u8>,
    lines: Vec<LineAt>,
}

/// Where a line is in its chunk.
struct LineAt {
    start: usize,
    end: usize,
    /// The last line of a file, without its newline.
    last: bool,
}

impl Chunk {
    /// Every line parsed, on every core, in order.
    fn parse(&self) -> Vec<Outcome<'_>> {
        self.lines
            .par_iter()
            .map(|l| read::outcome(&self.buf[l.start..l.end], l.last))
            .collect()
    }
}

/// The files' lines in reading order, a chunk at a time.
struct Splitter<'f> {
    files: std::slice::Iter<'f, PathBuf>,
    open: Option<(&'f Path, Lines<BufReader<File>>)>,
    /// Files, bytes and lines read; lines over the limit.
    stats: ReadStats,
    /// What stopped the reading early.
    error: Option<anyhow::Error>,
}

impl<'f> Splitter<'f> {
    fn new(files: &'f [PathBuf]) -> Splitter<'f> {
        Splitter {
            files: files.iter(),
            open: None,
            stats: ReadStats::default(),
            error: None,
        }
    }

    /// Fills `chunk` with the next whole lines, about `size` bytes; empty
    /// at the end, or after an error.
    fn fill(&mut self, chunk: &mut Chunk, size: usize) {
        chunk.buf.clear();
        chunk.lines.clear();
        while chunk.buf.len() < size && self.error.is_none() {
            let Some((path, lines)) = &mut self.open else {
                let Some(path) = self.files.next() else {
                    return;
                };
                match read::open(path, &mut self.stats) {
                    Ok(r) => self.open = Some((path, Lines::new(r))),
                    Err(e) => self.error = Some(e),
                }
                continue;
            };
            match lines.next(&mut self.stats) {
                Ok(Some((line, last))) => {
                    let start = chunk.buf.len();
                    chunk.buf.extend_from_slice(line);
                    let end = chunk.buf.len();
                    chunk.lines.push(LineAt { start, end, last });
                }
                Ok(None) => self.open = None,
                Err(e) => {
                    let e = anyhow::Error::new(e).context(format!("reading {}", path.display()));
                    self.error = Some(e);
                }
            }
        }
    }
}

/// Reads `files` like [`read::read_serial`], parsing on `threads` threads in
/// chunks of about `chunk` bytes.
pub fn read_all(
    files: &[PathBuf],
    stats: &mut ReadStats,
    threads: usize,
    chunk: usize,
    mut f: impl FnMut(LineView<'_>) + Send,
) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.clamp(1, 16))
        .build()
        .context("cannot start the journal parser threads")?;
    let mut splitter = Splitter::new(files);
    let (mut a, mut b) = (Chunk::default(), Chunk::default());
    // A parser's panic reaches here: the reading stops with an error.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.install(|| {
            splitter.fill(&mut a, chunk);
            let mut ready = a.parse();
            // The buffers take turns: one chunk handed on, the next parsed.
            while let Some(next) = step(&mut splitter, &mut b, chunk, ready, stats, &mut f) {
                match step(&mut splitter, &mut a, chunk, next, stats, &mut f) {
                    Some(after) => ready = after,
                    None => break,
                }
            }
        })
    }))
    .map_err(|_| anyhow!("a journal parser thread panicked"))?;
    let read = splitter.stats;
    stats.files += read.files;
    stats.bytes += read.bytes;
    stats.lines += read.lines;
    stats.too_long += read.too_long;
    // What was read before an error was handed on, as serially.
    splitter.error.map_or(Ok(()), Err)
}

/// Hands `ready` on in order while the next chunk is read into `next` and
/// parsed; None at the end (`ready` handed on all the same).
fn step<'n>(
    splitter: &mut Splitter<'_>,
    next: &'n mut Chunk,
    size: usize,
    ready: Vec<Outcome<'_>>,
    stats: &mut ReadStats,
    f: &mut (impl FnMut(LineView<'_>) + Send),
) -> Option<Vec<Outcome<'n>>> {
    let (parsed, ()) = rayon::join(
        move || {
            splitter.fill(next, size);
            let next: &'n Chunk = next;
            (!next.lines.is_empty()).then(|| next.parse())
        },
        move || {
            for o in ready {
                read::apply(o, stats, f);
            }
        },
    );
    parsed
}
#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const EVENT: &str = r#"{"ts":"2026-11-24T18:07:56.307967050Z","pid":912,"tid":912,"ppid":1,"uid":0,"gid":0,"comm":"nginx","cgroup_id":1,"syscall":"bind","errno":"EADDRINUSE","ret":-98,"proto":"tcp","family":"ipv4","addr":"127.0.0.1","port":8080,"netns":4026531840,"fd":6,"ifindex":null,"opts":{"reuseaddr":true,"reuseport":false,"v6only":false,"freebind":false,"transparent":false,"bind_address_no_port":false},"folded":0,"source":"tracepoint"}"#;
    const PORT: &str = r#"{"type":"port","ts":"2026-11-24T18:07:57Z","event":"closed","port":8080,"proto":"tcp","family":"ipv4","addr":"127.0.0.1","netns":4026531840,"pid":911,"comm":"nginx","holder_pid":911,"socket":7}"#;

    /// What a reader handed on, as comparable text, and its stats.
    fn collect(
        read: impl FnOnce(&mut ReadStats, &mut (dyn FnMut(String) + Send)),
    ) -> (ReadStats, Vec<String>) {
        let mut stats = ReadStats::default();
        let mut seen = Vec::new();
        read(&mut stats, &mut |s| seen.push(s));
        (stats, seen)
    }

    fn describe(line: &LineView<'_>) -> String {
        match line {
            LineView::Event(e) => format!("event {} {} {}", e.pid, e.port, e.comm),
            other => format!("{other:?}"),
        }
    }

    /// Several files of good, blank, corrupt, over-long and cut lines, read
    /// serially and in parallel in tiny chunks (so lines of one file spread
    /// over many chunks and threads): the same lines in the same order, the
    /// same counts.
    #[test]
    fn parallel_reading_is_the_serial_reading() {
        let dir = std::env::temp_dir().join(format!("pw-parallel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let mut files = Vec::new();
        for n in 0..3u32 {
            let path = dir.join(format!("j{n}.ndjson"));
            let mut f = File::create(&path).unwrap();
            for i in 0..400u32 {
                match (i + n) % 9 {
                    0 => writeln!(f).unwrap(),
                    1 => writeln!(f, "not json").unwrap(),
                    2 => writeln!(f, "{PORT}").unwrap(),
                    3 => writeln!(f, "{{\"type\":\"ready\"}}\r").unwrap(),
                    4 if i % 50 == 4 => {
                        f.write_all(&vec![b'x'; read::MAX_LINE + 1]).unwrap();
                        writeln!(f).unwrap();
                    }
                    _ => writeln!(
                        f,
                        "{}",
                        EVENT
                            .replace("912", &(1000 + i).to_string())
                            .replace("8080", &(n * 1000 + i % 7).to_string())
                    )
                    .unwrap(),
                }
            }
            // A last line cut short, in all but the last file.
            if n < 2 {
                f.write_all(&EVENT.as_bytes()[..50]).unwrap();
            } else {
                f.write_all(EVENT.as_bytes()).unwrap();
            }
            files.push(path);
        }
        let (serial_stats, serial) = collect(|stats, out| {
            for path in &files {
                let mut r = read::open(path, stats).unwrap();
                read::scan(&mut r, stats, |l| out(describe(&l))).unwrap();
            }
        });
        for (threads, chunk) in [(1, 1), (2, 700), (3, 5000), (2, 1 << 20)] {
            let (stats, lines) = collect(|stats, out| {
                read_all(&files, stats, threads, chunk, |l| out(describe(&l))).unwrap();
            });
            assert_eq!(stats, serial_stats, "{threads} threads, {chunk} B chunks");
            assert_eq!(lines, serial, "{threads} threads, {chunk} B chunks");
        }
        assert!(serial.len() > 700, "{}", serial.len());
        assert_eq!(serial_stats.truncated, 2);
        assert!(serial_stats.too_long > 0 && serial_stats.corrupt > 0 && serial_stats.notices > 0);
        // A file that cannot be read is an error, after what came before.
        let missing = vec![files[0].clone(), dir.join("missing.ndjson")];
        let mut stats = ReadStats::default();
        let err = read_all(&missing, &mut stats, 2, 700, |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("cannot open"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
