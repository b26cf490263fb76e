//! Hand-written, not rayon: a rayon version (two buffers taking turns,
//! each chunk's lines parsed with `par_iter`) was no faster, 0.97-1.13x
//! this pool's time on 1,000,000 events (BENCHMARKS.md, "report's parallel
//! reader").
//!
//! Reading on every core: parsing a line costs far more than
//! finding it, so one thread splits the files into chunks of whole lines,
//! parser threads turn each chunk into borrowed line views, and the caller's
//! thread hands the views on strictly in reading order. The result is the
//! serial reader's, line for line (tested below); memory stays bounded: a
//! fixed pool of chunk buffers circulates, and the splitter waits for a
//! free one.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{mpsc, Mutex},
};

use super::{
    read::{self, Outcome, ReadStats},
    Error,
};
use crate::output::json::LineView;

/// Whole lines, concatenated, with where each one is.
#[derive(Default)]
struct Chunk {
    /// Its place in reading order.
    seq: u64,
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

/// A chunk and its lines' outcomes, which borrow from `chunk.buf`.
struct Parsed {
    // Declared before `chunk`, so dropped before it: the views borrow from
    // the heap block of `chunk.buf`. They are only handed out for the
    // length of one call (`FnMut(LineView<'_>)` cannot keep them), and the
    // buffer is neither written nor freed while they exist (see `apply`).
    outcomes: Vec<Outcome<'static>>,
    chunk: Chunk,
}

impl Parsed {
    fn new(chunk: Chunk) -> Parsed {
        // SAFETY: the slice points into the heap block of `chunk.buf`, which
        // moving `chunk` (a Vec) does not move; `Parsed` owns both and
        // drops or clears `outcomes` before the buffer can change (field
        // order; `apply`).
        let bytes: &'static [u8] =
            unsafe { std::slice::from_raw_parts(chunk.buf.as_ptr(), chunk.buf.len()) };
        let outcomes = chunk
            .lines
            .iter()
            .map(|l| read::outcome(&bytes[l.start..l.end], l.last))
            .collect();
        Parsed { outcomes, chunk }
    }

    /// Hands the outcomes on in order, then gives the buffer back, empty.
    fn apply(self, stats: &mut ReadStats, f: &mut impl FnMut(LineView<'_>)) -> Chunk {
        let Parsed {
            outcomes,
            mut chunk,
        } = self;
        for o in outcomes {
            read::apply(o, stats, f);
        }
        // Every view is gone (consumed above): the buffer may change again.
        chunk.buf.clear();
        chunk.lines.clear();
        chunk
    }
}

/// Reads `files` like [`read::read_serial`], parsing on `threads` threads in
/// chunks of about `chunk` bytes.
pub fn read_all(
    files: &[PathBuf],
    stats: &mut ReadStats,
    threads: usize,
    chunk: usize,
    mut f: impl FnMut(LineView<'_>),
) -> Result<(), Error> {
    let threads = threads.clamp(1, 16);
    // Enough chunks to keep every parser busy while one is being split and
    // one handed on; each chunk is `chunk` bytes plus its views.
    let pool = 2 * threads + 2;
    let (free_tx, free_rx) = mpsc::channel::<Chunk>();
    for _ in 0..pool {
        free_tx
            .send(Chunk {
                seq: 0,
                buf: Vec::with_capacity(chunk + 4096),
                lines: Vec::new(),
            })
            .expect("receiver alive");
    }
    let (job_tx, job_rx) = mpsc::channel::<Chunk>();
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<Option<Parsed>>();
    std::thread::scope(|s| -> Result<(), Error> {
        let splitter = s.spawn(move || split(files, chunk, &free_rx, &job_tx));
        for _ in 0..threads {
            let (job_rx, done_tx) = (&job_rx, done_tx.clone());
            s.spawn(move || parse(job_rx, &done_tx));
        }
        drop(done_tx);
        // Drops `free_tx` on return: a splitter waiting for a buffer stops.
        let complete = hand_on(done_rx, free_tx, stats, &mut f);
        if !complete {
            let _ = splitter.join();
            return Err(Error::Panicked("parser"));
        }
        let read = splitter.join().map_err(|_| Error::Panicked("splitter"))??;
        stats.files += read.files;
        stats.bytes += read.bytes;
        stats.lines += read.lines;
        stats.too_long += read.too_long;
        Ok(())
    })
}

/// A parser thread: parses chunks until there are none; None sent when a
/// parse panicked (its chunk is lost: the reading stops).
fn parse(jobs: &Mutex<mpsc::Receiver<Chunk>>, done: &mpsc::Sender<Option<Parsed>>) {
    loop {
        let job = jobs.lock().ok().and_then(|rx| rx.recv().ok());
        let Some(chunk) = job else { break };
        // A panic must not leave the others waiting for this chunk.
        let parsed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Parsed::new(chunk))).ok();
        let failed = parsed.is_none();
        if done.send(parsed).is_err() || failed {
            break;
        }
    }
}

/// Hands the parsed chunks on in reading order (parsers finish out of
/// order; at most the pool's chunks exist) and gives their buffers back;
/// false when a parser panicked.
fn hand_on(
    done: mpsc::Receiver<Option<Parsed>>,
    free: mpsc::Sender<Chunk>,
    stats: &mut ReadStats,
    f: &mut impl FnMut(LineView<'_>),
) -> bool {
    let mut waiting = BTreeMap::new();
    let mut next = 0u64;
    for parsed in done {
        let Some(parsed) = parsed else {
            return false;
        };
        waiting.insert(parsed.chunk.seq, parsed);
        while let Some(parsed) = waiting.remove(&next) {
            next += 1;
            let chunk = parsed.apply(stats, f);
            // The splitter may have finished: then the buffer just goes.
            let _ = free.send(chunk);
        }
    }
    true
}

/// The splitter thread: reads the files in order into chunks of whole lines.
fn split(
    files: &[PathBuf],
    size: usize,
    free: &mpsc::Receiver<Chunk>,
    jobs: &mpsc::Sender<Chunk>,
) -> Result<ReadStats, Error> {
    let mut stats = ReadStats::default();
    // Free buffers stop coming only when a parser panicked; the caller
    // then says so itself and does not read this error.
    let stopped = || std::io::Error::other("a parser thread panicked");
    let mut cur = free.recv().map_err(|_| Error::Panicked("parser"))?;
    cur.seq = 0;
    let mut read = || -> Result<(), Error> {
        for path in files {
            let mut r = read::open(path, &mut stats)?;
            read::split(&mut r, &mut stats, |line, last, _| {
                let start = cur.buf.len();
                cur.buf.extend_from_slice(line);
                let end = cur.buf.len();
                cur.lines.push(LineAt { start, end, last });
                if cur.buf.len() >= size {
                    // Waits for a free buffer: this bounds memory.
                    let mut next = free.recv().map_err(|_| stopped())?;
                    next.seq = cur.seq + 1;
                    let full = std::mem::replace(&mut cur, next);
                    jobs.send(full).map_err(|_| stopped())?;
                }
                Ok(())
            })
            .map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    };
    let result = read();
    // What was read before an error is still handed on, as serially.
    if !cur.lines.is_empty() {
        let _ = jobs.send(cur);
    }
    result.map(|()| stats)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const EVENT: &str = r#"{"ts":"2026-11-24T18:07:56.307967050Z","pid":912,"tid":912,"ppid":1,"uid":0,"gid":0,"comm":"nginx","cgroup_id":1,"syscall":"bind","errno":"EADDRINUSE","ret":-98,"proto":"tcp","family":"ipv4","addr":"127.0.0.1","port":8080,"netns":4026531840,"fd":6,"ifindex":null,"opts":{"reuseaddr":true,"reuseport":false,"v6only":false,"freebind":false,"transparent":false,"bind_address_no_port":false},"folded":0,"source":"tracepoint"}"#;
    const PORT: &str = r#"{"type":"port","ts":"2026-11-24T18:07:57Z","event":"closed","port":8080,"proto":"tcp","family":"ipv4","addr":"127.0.0.1","netns":4026531840,"pid":911,"comm":"nginx","holder_pid":911,"socket":7}"#;

    /// What a reader handed on, as comparable text, and its stats.
    fn collect(
        read: impl FnOnce(&mut ReadStats, &mut dyn FnMut(String)),
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
            let mut f = std::fs::File::create(&path).unwrap();
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
