//! The report for people (text), for programs (JSON), and as one
//! self-contained HTML page with a per-port timeline (inline SVG and CSS,
//! no scripts, nothing fetched). Every string read is untrusted: made
//! printable in text, escaped in HTML.

use std::{
    fmt::Write as _,
    io::{self, Write},
    time::SystemTime,
};

use serde::Serialize;

use super::{
    analyse::{Analysis, PortStory, Run, Tally, Tenure},
    read::ReadStats,
};
use crate::{output::text::printable, time::secs};

fn ts(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn rel(start: SystemTime, t: SystemTime) -> String {
    format!(
        "+{:.3}s",
        t.duration_since(start).unwrap_or_default().as_secs_f64()
    )
}

/// One line about what was read and skipped.
pub fn input_line(s: &ReadStats) -> String {
    let mut line = format!(
        "read {} file(s), {} line(s): {} event(s), {} port line(s)",
        s.files, s.lines, s.events, s.port_lines
    );
    for (n, what) in [
        (s.filtered, "outside --port/--since/--until"),
        (s.notices, "notice(s) ignored"),
        (s.corrupt, "corrupt line(s) skipped"),
        (s.truncated, "truncated last line(s) skipped"),
        (s.too_long, "over-long line(s) skipped"),
    ] {
        if n > 0 {
            let _ = write!(line, ", {n} {what}");
        }
    }
    line
}

/// A port's timeline entries, in time order: (when, text).
fn timeline(p: &PortStory) -> Vec<(SystemTime, String)> {
    let mut items = Vec::new();
    for t in &p.holders {
        let who = format!("pid {} ({})", t.pid, printable(&t.comm));
        match t.since {
            Some(s) => items.push((s, format!("{who} started listening"))),
            None => items.push((
                t.first_seen,
                format!("{who} listening (since before this was recorded)"),
            )),
        }
        if let Some(u) = t.until {
            let by = match t.closed_by {
                Some(c) if c != t.pid => format!(" (closed by pid {c})"),
                _ => String::new(),
            };
            items.push((u, format!("{who} closed its listener: port released{by}")));
        }
    }
    for r in &p.runs {
        let held = if r.holders.is_empty() {
            String::new()
        } else {
            format!(
                "; held by pid {}",
                r.holders
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let reason = r
            .reason
            .as_deref()
            .map(|r| format!(" [{r}]"))
            .unwrap_or_default();
        let span = if r.count > 1 {
            format!(
                " x{} over {}",
                r.count,
                secs(r.last.duration_since(r.first).unwrap_or_default())
            )
        } else {
            String::new()
        };
        items.push((
            r.first,
            format!(
                "pid {} ({}) {} failed {}{span}{held}{reason}",
                r.pid,
                printable(&r.comm),
                r.syscall,
                r.errno
            ),
        ));
    }
    if let (Some(f), Some(l)) = (p.time_wait.first, p.time_wait.last) {
        items.push((
            f,
            format!(
                "TIME_WAIT leftovers: {} socket(s) until {}",
                p.time_wait.count,
                ts(l)
            ),
        ));
    }
    items.sort_by_key(|(t, _)| *t);
    items
}

fn table(out: &mut impl Write, title: &str, t: &Tally) -> io::Result<()> {
    writeln!(out, "{title}")?;
    for (k, n) in t.sorted().into_iter().take(20) {
        writeln!(out, "  {n:>10}  {}", printable(k))?;
    }
    Ok(())
}

/// The text report.
pub fn text(out: &mut impl Write, a: &Analysis, s: &ReadStats) -> io::Result<()> {
    writeln!(out, "portwatch report: {}", input_line(s))?;
    match (a.first, a.last) {
        (Some(f), Some(l)) => writeln!(
            out,
            "recorded from {} to {} ({}); {} failure(s) on {} port(s)",
            ts(f),
            ts(l),
            secs(l.duration_since(f).unwrap_or_default()),
            a.failures,
            a.ports.len()
        )?,
        _ => writeln!(out, "nothing recorded in what was read")?,
    }
    for p in a.ports.values() {
        writeln!(out)?;
        writeln!(
            out,
            "PORT {}: {} failure(s), {} listener(s) seen; from {}",
            p.port,
            p.failures,
            p.holders.len(),
            ts(p.start)
        )?;
        if p.runs_dropped + p.holders_dropped > 0 {
            writeln!(
                out,
                "  (older entries counted, not kept: {} failure runs, {} listeners)",
                p.runs_dropped, p.holders_dropped
            )?;
        }
        for (t, text) in timeline(p) {
            writeln!(out, "  {:>10}  {}  {text}", rel(p.start, t), ts(t))?;
        }
        for pat in &p.patterns {
            writeln!(out, "  => {}", printable(&pat.text))?;
        }
    }
    for pat in &a.ephemeral {
        writeln!(out)?;
        writeln!(out, "=> {}", printable(&pat.text))?;
    }
    if a.failures > 0 {
        writeln!(out)?;
        table(out, "FAILURES BY PORT", &a.by_port)?;
        table(out, "FAILURES BY COMMAND", &a.by_command)?;
        table(out, "FAILURES BY REASON", &a.by_reason)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonReport<'a> {
    input: &'a ReadStats,
    #[serde(flatten)]
    analysis: &'a Analysis,
}

/// The JSON report: one object.
pub fn json(out: &mut impl Write, a: &Analysis, s: &ReadStats) -> io::Result<()> {
    serde_json::to_writer_pretty(
        &mut *out,
        &JsonReport {
            input: s,
            analysis: a,
        },
    )?;
    writeln!(out)
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fff}\
h1{font-size:20px}h2{font-size:17px;margin-top:28px}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}\
.pattern{background:#fff4d6;border-left:4px solid #e0a000;padding:6px 10px;margin:6px 0}\
svg{border:1px solid #ddd;background:#fafafa}.hold{fill:#3a9d5d}.fail{fill:#d64541}.tw{fill:#8e7cc3}\
.rel{stroke:#222;stroke-width:2}.lbl{font:12px monospace;fill:#111}.axis{font:11px monospace;fill:#555}\
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}";

/// One port's timeline as inline SVG: a row per listener tenure (green)
/// and per failure run (red ticks and span), release marks in black.
/// A port's timeline drawn to scale: the x of a moment, rows 24 px apart.
struct Scale {
    start: SystemTime,
    /// Seconds from the port's first to last line (at least 1 ms).
    span: f64,
}

impl Scale {
    /// Where the bars start (the labels are left of it).
    const LEFT: f64 = 260.0;
    /// The bars' full width.
    const WIDTH: f64 = 640.0;
    /// From one row to the next.
    const ROW: usize = 24;

    fn of(p: &PortStory) -> Scale {
        let span = p.end.duration_since(p.start).unwrap_or_default();
        Scale {
            start: p.start,
            span: span.as_secs_f64().max(0.001),
        }
    }

    fn x(&self, t: SystemTime) -> f64 {
        let since = t.duration_since(self.start).unwrap_or_default();
        Scale::LEFT + Scale::WIDTH * since.as_secs_f64() / self.span
    }
}

/// A port's timeline as inline SVG: a row per tenure, per failure run and
/// for TIME_WAIT leftovers, then the time axis.
fn svg(p: &PortStory) -> String {
    let scale = Scale::of(p);
    let rows = p.holders.len() + p.runs.len() + usize::from(p.time_wait.count > 0);
    let height = 30 + rows * Scale::ROW + 24;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"timeline of port {}\">",
        Scale::LEFT + Scale::WIDTH + 20.0,
        p.port
    );
    let mut y = 20;
    for t in &p.holders {
        tenure_row(&mut s, &scale, t, y, height);
        y += Scale::ROW;
    }
    for r in &p.runs {
        run_row(&mut s, &scale, r, y);
        y += Scale::ROW;
    }
    if let (Some(f), Some(l)) = (p.time_wait.first, p.time_wait.last) {
        let (x0, x1) = (scale.x(f), scale.x(l));
        let _ = write!(
            s,
            "<text class=\"lbl\" x=\"4\" y=\"{}\">TIME_WAIT x{}</text><rect class=\"tw\" x=\"{x0:.1}\" y=\"{}\" width=\"{:.1}\" height=\"8\"/>",
            y + 12,
            p.time_wait.count,
            y + 4,
            (x1 - x0).max(3.0)
        );
        y += Scale::ROW;
    }
    let _ = write!(
        s,
        "<text class=\"axis\" x=\"{}\" y=\"{}\">{}</text><text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"end\">+{}</text></svg>",
        Scale::LEFT,
        y + 14,
        esc(&ts(p.start)),
        Scale::LEFT + Scale::WIDTH,
        y + 14,
        esc(&secs(p.end.duration_since(p.start).unwrap_or_default()))
    );
    s
}

/// A listener's bar, from its listen (or the left edge) to its close (or
/// the right edge), and the release line across all rows.
fn tenure_row(s: &mut String, scale: &Scale, t: &Tenure, y: usize, height: usize) {
    let x0 = t.since.map_or(Scale::LEFT, |since| scale.x(since));
    let x1 = t.until.map_or(Scale::LEFT + Scale::WIDTH, |u| scale.x(u));
    let _ = write!(
        s,
        "<text class=\"lbl\" x=\"4\" y=\"{}\">pid {} {} listening</text><rect class=\"hold\" x=\"{x0:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"16\"><title>pid {} ({}) listening {}{}</title></rect>",
        y + 12,
        t.pid,
        esc(&t.comm),
        (x1 - x0).max(2.0),
        t.pid,
        esc(&t.comm),
        t.since.map_or("before the recording".to_owned(), |s| format!("from {}", ts(s))),
        t.until.map_or(" to the end".to_owned(), |u| format!(" to {}", ts(u))),
    );
    if let Some(u) = t.until {
        let xu = scale.x(u);
        let _ = write!(
            s,
            "<line class=\"rel\" x1=\"{xu:.1}\" y1=\"10\" x2=\"{xu:.1}\" y2=\"{}\"><title>released by pid {} at {}</title></line>",
            height - 20,
            t.closed_by.unwrap_or(t.pid),
            ts(u)
        );
    }
}

/// A failure run's bar, first to last failure, with a tick at each end.
fn run_row(s: &mut String, scale: &Scale, r: &Run, y: usize) {
    let (x0, x1) = (scale.x(r.first), scale.x(r.last));
    let _ = write!(
        s,
        "<text class=\"lbl\" x=\"4\" y=\"{}\">pid {} {} {} x{}</text><rect class=\"fail\" x=\"{x0:.1}\" y=\"{}\" width=\"{:.1}\" height=\"8\"><title>pid {} ({}) {} {} x{} from {} to {}</title></rect><rect class=\"fail\" x=\"{x0:.1}\" y=\"{y}\" width=\"3\" height=\"16\"/><rect class=\"fail\" x=\"{:.1}\" y=\"{y}\" width=\"3\" height=\"16\"/>",
        y + 12,
        r.pid,
        esc(&r.comm),
        esc(&r.errno),
        r.count,
        y + 4,
        (x1 - x0).max(3.0),
        r.pid,
        esc(&r.comm),
        esc(&r.syscall),
        esc(&r.errno),
        r.count,
        ts(r.first),
        ts(r.last),
        (x1 - 3.0).max(x0),
    );
}

fn html_table(s: &mut String, title: &str, t: &Tally) {
    let _ = write!(
        s,
        "<h2>{}</h2><table><tr><th>failures</th><th>{}</th></tr>",
        esc(title),
        esc(title.rsplit(' ').next().unwrap_or(""))
    );
    for (k, n) in t.sorted().into_iter().take(50) {
        let _ = write!(s, "<tr><td>{n}</td><td>{}</td></tr>", esc(k));
    }
    s.push_str("</table>");
}

/// The HTML page.
pub fn html(a: &Analysis, st: &ReadStats) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\"><title>portwatch report</title><style>{CSS}</style></head><body><h1>portwatch report</h1><p>{}</p>",
        esc(&input_line(st))
    );
    if let (Some(f), Some(l)) = (a.first, a.last) {
        let _ = write!(
            s,
            "<p>Recorded from {} to {}: {} failure(s) on {} port(s).</p>",
            esc(&ts(f)),
            esc(&ts(l)),
            a.failures,
            a.ports.len()
        );
    } else {
        s.push_str("<p>Nothing recorded in what was read.</p>");
    }
    s.push_str("<p class=\"legend\"><span class=\"l\" style=\"background:#3a9d5d\"></span>listening<span style=\"background:#d64541\"></span>failures (first to last)<span style=\"background:#222\"></span>listener closed (port released)<span style=\"background:#8e7cc3\"></span>TIME_WAIT leftovers</p>");
    for p in a.ports.values() {
        let _ = write!(
            s,
            "<section id=\"port-{}\"><h2>Port {}: {} failure(s)</h2>",
            p.port, p.port, p.failures
        );
        for pat in &p.patterns {
            let _ = write!(
                s,
                "<div class=\"pattern\"><b>{}</b>: {}</div>",
                esc(pat.kind.name()),
                esc(&pat.text)
            );
        }
        s.push_str(&svg(p));
        s.push_str("<table><tr><th>offset</th><th>time</th><th>what</th></tr>");
        for (t, text) in timeline(p) {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&rel(p.start, t)),
                esc(&ts(t)),
                esc(&text)
            );
        }
        s.push_str("</table>");
        let cmdlines: Vec<_> = p
            .holders
            .iter()
            .filter_map(|t| t.cmdline.as_ref().map(|c| (t.pid, c)))
            .collect();
        if !cmdlines.is_empty() {
            s.push_str("<table><tr><th>pid</th><th>command line</th></tr>");
            for (pid, c) in cmdlines {
                let _ = write!(s, "<tr><td>{pid}</td><td><code>{}</code></td></tr>", esc(c));
            }
            s.push_str("</table>");
        }
        s.push_str("</section>");
    }
    for pat in &a.ephemeral {
        let _ = write!(s, "<div class=\"pattern\">{}</div>", esc(&pat.text));
    }
    if a.failures > 0 {
        html_table(&mut s, "Failures by port", &a.by_port);
        html_table(&mut s, "Failures by command", &a.by_command);
        html_table(&mut s, "Failures by reason", &a.by_reason);
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_html_cares_about() {
        assert_eq!(
            esc("<script>alert('x\")</script>&\u{1b}"),
            "&lt;script&gt;alert(&#39;x&quot;)&lt;/script&gt;&amp;?"
        );
    }
}
