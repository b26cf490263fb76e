//! What portwatch prints: the human table ([`text`]), the NDJSON schema
//! ([`json`]), and notices about itself on stderr ([`notice`]).

pub mod check;
pub mod journald;
pub mod json;
pub mod notice;
pub mod text;
pub mod who;

use std::io::{self, Write};

pub use notice::{Notice, Notices, Summary};
use serde_json::value::RawValue;

use crate::{diagnose::Verdict, event::Event, holders::Evidence};

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One aligned line per event, with its holder, diagnosis and fix under it.
    Human,
    /// One JSON object per line.
    Json,
}

/// Writes one event in `format`, with its holders and verdict when it was
/// enriched (`holders` is `found`'s, pre-rendered for JSON). `repeat`:
/// people already saw this block under the previous event of the same
/// stream, so it is not printed again.
pub fn write_event(
    out: &mut impl Write,
    format: Format,
    ev: &Event,
    found: Option<(&Evidence, &Verdict)>,
    holders: Option<&RawValue>,
    repeat: bool,
) -> io::Result<()> {
    match format {
        Format::Human => {
            writeln!(out, "{}", text::human_line(ev))?;
            match found {
                Some(_) if repeat => writeln!(out, "    (same holder and diagnosis as above)"),
                Some((e, v)) => out.write_all(text::human_block(e, v).as_bytes()),
                None => Ok(()),
            }
        }
        Format::Json => json::EventLine {
            event: ev,
            holders,
            enriched: found.map(|(e, _)| !e.shed),
            verdict: found.map(|(_, v)| v),
        }
        .write(out),
    }
}
