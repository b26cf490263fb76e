//! Reading `report`'s input back (journals, saved `watch --json` output,
//! `journalctl -o json` exports), streaming: one line at a time through a
//! fixed buffer, so memory does not grow with a file's size. Every line is
//! untrusted: a line that does not parse is skipped and counted, a line
//! longer than [`MAX_LINE`] is skipped without being buffered, a last line
//! without its newline (a crash mid-write) is counted as truncated.

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::Error;
use crate::{journal, output::json};

type Result<T, E = Error> = std::result::Result<T, E>;

/// Longer lines are skipped (an event line is about 1 KiB).
pub const MAX_LINE: usize = 1 << 20;

/// What was read, and what was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReadStats {
    /// Files read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Lines seen (blank ones included).
    pub lines: u64,
    /// Failure (or success) events.
    pub events: u64,
    /// Port life lines.
    pub port_lines: u64,
    /// Notices of a saved `watch --json 2>&1` (not events; ignored).
    pub notices: u64,
    /// Lines that are not portwatch's NDJSON lines (skipped).
    pub corrupt: u64,
    /// A last line cut short (a crash mid-write; skipped).
    pub truncated: u64,
    /// Lines over 1 MiB (skipped unread).
    pub too_long: u64,
    /// Events and port lines outside --port/--since/--until.
    pub filtered: u64,
}

/// The files behind `paths`, in reading order: a directory gives its
/// journal files (`portwatch-NNNNNNNNNN.ndjson`) oldest first, or else its
/// `*.ndjson`/`*.json` files by name.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| Error::Stat {
            path: path.clone(),
            source,
        })?;
        if !meta.is_dir() {
            out.push(path.clone());
            continue;
        }
        let list = |source| Error::List {
            path: path.clone(),
            source,
        };
        let seqs = journal::existing(path).map_err(list)?;
        if !seqs.is_empty() {
            out.extend(
                seqs.iter()
                    .map(|&s| path.join(format!("{}{s:010}{}", journal::PREFIX, journal::SUFFIX))),
            );
            continue;
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(list)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|x| x == "ndjson" || x == "json" || x == "jsonl")
            })
            .collect();
        if names.is_empty() {
            return Err(Error::Empty { path: path.clone() });
        }
        names.sort();
        out.extend(names);
    }
    Ok(out)
}

/// Reads every line of `r`, handing each parsed one to `f`; skipped lines
/// are counted in `stats`. I/O errors end the reading.
pub fn scan(
    r: &mut impl BufRead,
    stats: &mut ReadStats,
    mut f: impl FnMut(json::LineView<'_>),
) -> io::Result<()> {
    split(r, stats, |bytes, last, stats| {
        match journalctl_entry(bytes) {
            Entry::Not => apply(outcome(bytes, last), stats, &mut f),
            Entry::Event(line) => apply(outcome(line.as_bytes(), last), stats, &mut f),
            Entry::Other => stats.notices += 1,
            Entry::Elided => stats.too_long += 1,
            Entry::Bad => stats.corrupt += 1,
        }
        Ok(())
    })
}

/// One line of `journalctl -o json`, as far as `report` cares.
enum Entry {
    /// Not a journalctl entry: an NDJSON line of portwatch's own.
    Not,
    /// A portwatch event: its NDJSON line, from `PORTWATCH_JSON`.
    Event(String),
    /// Another entry (portwatch's notices, other units).
    Other,
    /// `PORTWATCH_JSON` left out by journalctl (over 4 KiB without `--all`).
    Elided,
    /// Not valid JSON, or a field that is not text.
    Bad,
}

/// Whether `bytes` is a journalctl entry (they all carry `__CURSOR`), and
/// what it holds.
fn journalctl_entry(bytes: &[u8]) -> Entry {
    if memchr::memmem::find(bytes, b"\"__CURSOR\"").is_none() {
        return Entry::Not;
    }
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(bytes) else {
        return Entry::Bad;
    };
    match fields.remove("PORTWATCH_JSON") {
        Some(serde_json::Value::String(line)) => Entry::Event(line),
        Some(serde_json::Value::Null) => Entry::Elided,
        None => Entry::Other,
        Some(_) => Entry::Bad,
    }
}

/// Whether `path` starts like `journalctl -o json` output (read on one
/// thread: the parallel parser reads portwatch's own lines only).
pub(super) fn is_journalctl_export(path: &Path) -> bool {
    let mut head = [0u8; 4096];
    let n = File::open(path)
        .and_then(|mut f| io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    memchr::memmem::find(&head[..n], b"\"__CURSOR\"").is_some()
}

/// Splits `r` into lines (without their newline), counting bytes, lines
/// and lines over [`MAX_LINE`] (skipped unbuffered) in `stats`; hands each
/// other line to `line`, with whether it is a last line without newline;
/// an error from `line` ends the reading.
pub(super) fn split(
    r: &mut impl BufRead,
    stats: &mut ReadStats,
    mut line_fn: impl FnMut(&[u8], bool, &mut ReadStats) -> io::Result<()>,
) -> io::Result<()> {
    let mut line: Vec<u8> = Vec::new();
    let mut skipping = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let (used, complete) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, Some(i)),
            None => (buf.len(), None),
        };
        stats.bytes += used as u64;
        match complete {
            Some(i) => {
                stats.lines += 1;
                if skipping {
                    skipping = false;
                } else if line.len() + i > MAX_LINE {
                    stats.too_long += 1;
                } else if line.is_empty() {
                    // The common case: straight from the reader's buffer.
                    line_fn(&buf[..i], false, stats)?;
                } else {
                    line.extend_from_slice(&buf[..i]);
                    line_fn(&line, false, stats)?;
                }
                line.clear();
            }
            None if !skipping => {
                if line.len() + buf.len() > MAX_LINE {
                    stats.too_long += 1;
                    skipping = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(buf);
                }
            }
            None => {}
        }
        r.consume(used);
    }
    if skipping {
        stats.lines += 1;
    } else if !line.is_empty() {
        stats.lines += 1;
        line_fn(&line, true, stats)?;
    }
    Ok(())
}

/// What one line turned out to be.
#[expect(
    clippy::large_enum_variant,
    reason = "lines are nearly all events: boxing them would allocate per line"
)]
pub(super) enum Outcome<'a> {
    /// Blank.
    Blank,
    /// An NDJSON line of portwatch's.
    Line(json::LineView<'a>),
    /// Not one; `last`: the last line of a file, without its newline.
    Bad {
        /// A last line cut short.
        last: bool,
    },
}

/// Parses one line (without its newline).
pub(super) fn outcome(bytes: &[u8], last: bool) -> Outcome<'_> {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Outcome::Blank;
    }
    // Borrowed straight from the buffer; parse_line checks that the line
    // is UTF-8.
    match json::parse_line(bytes) {
        Ok(line) => Outcome::Line(line),
        Err(_) => Outcome::Bad { last },
    }
}

/// Counts or hands on one line's outcome, in reading order.
pub(super) fn apply(o: Outcome<'_>, stats: &mut ReadStats, f: &mut impl FnMut(json::LineView<'_>)) {
    match o {
        Outcome::Blank => {}
        Outcome::Line(json::LineView::Notice) => stats.notices += 1,
        Outcome::Line(line) => f(line),
        Outcome::Bad { last: true } => stats.truncated += 1,
        Outcome::Bad { last: false } => stats.corrupt += 1,
    }
}

/// Reads every file in order on the calling thread (small inputs; the
/// parallel reader's reference).
pub fn read_serial(
    files: &[PathBuf],
    stats: &mut ReadStats,
    mut f: impl FnMut(json::LineView<'_>),
) -> Result<()> {
    for path in files {
        read_file(path, stats, &mut f)?;
    }
    Ok(())
}

/// Inputs at least this big (all files together) are parsed on every core.
pub(super) const PARALLEL_FROM: u64 = 8 << 20;
/// Bytes of whole lines handed to a parser thread at a time.
pub(super) const CHUNK: usize = 256 << 10;

/// Opens `path` for reading, counting it.
pub(super) fn open(path: &Path, stats: &mut ReadStats) -> Result<BufReader<File>> {
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    stats.files += 1;
    Ok(BufReader::with_capacity(256 * 1024, file))
}

fn read_file(
    path: &Path,
    stats: &mut ReadStats,
    f: &mut impl FnMut(json::LineView<'_>),
) -> Result<()> {
    let mut r = open(path, stats)?;
    scan(&mut r, stats, f).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"ts":"2026-11-24T18:07:56.307967050Z","pid":912,"tid":912,"ppid":1,"uid":0,"gid":0,"comm":"nginx","cgroup_id":1,"syscall":"bind","errno":"EADDRINUSE","ret":-98,"proto":"tcp","family":"ipv4","addr":"127.0.0.1","port":8080,"netns":4026531840,"fd":6,"ifindex":null,"opts":{"reuseaddr":true,"reuseport":false,"v6only":false,"freebind":false,"transparent":false,"bind_address_no_port":false},"folded":0,"source":"tracepoint"}"#;

    fn count(input: &[u8]) -> (ReadStats, u64) {
        let mut stats = ReadStats::default();
        let mut n = 0;
        scan(&mut io::Cursor::new(input), &mut stats, |_| n += 1).unwrap();
        (stats, n)
    }

    #[test]
    fn journalctl_json_entries_give_their_event() {
        let wrapped = serde_json::json!({
            "__CURSOR": "s=1;i=2",
            "MESSAGE": "a failure",
            "PORTWATCH_PORT": "8080",
            "PORTWATCH_JSON": EVENT,
        })
        .to_string();
        let notice = r#"{"__CURSOR":"s=1;i=3","MESSAGE":"portwatch: ready"}"#;
        let elided = r#"{"__CURSOR":"s=1;i=4","PORTWATCH_JSON":null}"#;
        let binary = r#"{"__CURSOR":"s=1;i=5","PORTWATCH_JSON":[1,2]}"#;
        let input = format!("{wrapped}\n{notice}\n{elided}\n{binary}\n{EVENT}\n");
        let mut stats = ReadStats::default();
        let mut ports = Vec::new();
        scan(&mut input.as_bytes(), &mut stats, |l| {
            if let json::LineView::Event(e) = l {
                ports.push(e.port);
            }
        })
        .unwrap();
        assert_eq!(ports, [8080, 8080]);
        assert_eq!(
            (stats.notices, stats.too_long, stats.corrupt),
            (1, 1, 1),
            "{stats:?}"
        );
    }

    #[test]
    fn the_sample_event_parses() {
        json::parse_line(EVENT.as_bytes()).unwrap();
    }

    #[test]
    fn corrupt_truncated_and_long_lines_are_counted() {
        let mut input = Vec::new();
        input.extend_from_slice(EVENT.as_bytes());
        input.extend_from_slice(b"\n\nnot json\n\xff\xfe\n");
        input.extend_from_slice(&vec![b'x'; MAX_LINE + 10]);
        input.extend_from_slice(b"\n");
        input.extend_from_slice(EVENT.as_bytes());
        input.extend_from_slice(b"\n");
        input.extend_from_slice(&EVENT.as_bytes()[..100]);
        let (stats, n) = count(&input);
        assert_eq!(n, 2);
        assert_eq!(stats.corrupt, 2);
        assert_eq!(stats.too_long, 1);
        assert_eq!(stats.truncated, 1);
        assert_eq!(stats.lines, 7);
        assert_eq!(stats.bytes, input.len() as u64);
        // A whole last line without its newline still counts.
        let (stats, n) = count(EVENT.as_bytes());
        assert_eq!((n, stats.truncated), (1, 0));
        assert_eq!(count(b"").0, ReadStats::default());
    }

    /// A quick property test of the line reader (the fuzz target in fuzz/
    /// goes further): random bytes and random cuts of real lines never
    /// panic, and every line is accounted for.
    #[test]
    fn random_input_never_panics_and_is_accounted() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"{}[]\":,0123456789abcdefnulltrue\\\n \xff\xc3";
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..(next() % 6) {
                match next() % 3 {
                    0 => {
                        let cut = (next() as usize) % (EVENT.len() + 1);
                        input.extend_from_slice(&EVENT.as_bytes()[..cut]);
                    }
                    1 => {
                        let mut b = EVENT.as_bytes().to_vec();
                        let at = (next() as usize) % b.len();
                        b[at] = alphabet[(next() as usize) % alphabet.len()];
                        input.extend_from_slice(&b);
                    }
                    _ => {
                        for _ in 0..(next() % 40) {
                            input.push(alphabet[(next() as usize) % alphabet.len()]);
                        }
                    }
                }
                if next() % 4 != 0 {
                    input.push(b'\n');
                }
            }
            let (stats, n) = count(&input);
            assert!(n + stats.corrupt + stats.truncated + stats.notices <= stats.lines);
            assert_eq!(stats.bytes, input.len() as u64);
        }
    }
}
