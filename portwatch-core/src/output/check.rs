//! What `portwatch check` prints: a table of bindings and verdicts, 80
//! columns wide, or one JSON object per binding (NDJSON).

use std::io::{self, Write};

use super::text::printable;
use crate::{
    holders::{Holder, State},
    preflight::{Category, Outcome, Unchecked},
};

/// Width of the human table.
const WIDTH: usize = 80;

/// Writes one JSON object per binding, one per line; then one per entry
/// of the input that has nothing to check (`{"unchecked": FROM, "why":
/// ...}`, without `binding` or `verdict`).
pub fn write_json(
    out: &mut impl Write,
    checked: &[Outcome],
    unchecked: &[Unchecked],
) -> io::Result<()> {
    for c in checked {
        serde_json::to_writer(&mut *out, c)?;
        writeln!(out)?;
    }
    for u in unchecked {
        let line = serde_json::json!({ "unchecked": u.from, "why": u.why });
        serde_json::to_writer(&mut *out, &line)?;
        writeln!(out)?;
    }
    Ok(())
}

/// Writes the table: one row per binding (binding, verdict, holder),
/// where the plan has it (a file's line, a directive) and the diagnosis
/// and fix under each that is not free, what could not be checked, then
/// a count.
pub fn write_human(
    out: &mut impl Write,
    checked: &[Outcome],
    unchecked: &[Unchecked],
) -> io::Result<()> {
    writeln!(out, "{:<24} {:<17} HOLDER", "BINDING", "VERDICT")?;
    for c in checked {
        let holders = holder_names(c);
        let first = holders.first().map_or("-", String::as_str);
        let row = format!("{:<24} {:<17} ", c.binding, c.verdict.as_str());
        if row.chars().count() + first.chars().count() <= WIDTH {
            writeln!(out, "{row}{first}")?;
        } else {
            writeln!(out, "{}", row.trim_end())?;
            wrap(out, "holder", first)?;
        }
        for more in holders.iter().skip(1) {
            wrap(out, "also", more)?;
        }
        let from: Vec<String> = c
            .from
            .iter()
            .filter(|o| o.file.is_some())
            .map(|o| printable(&o.to_string()))
            .collect();
        if !from.is_empty() {
            wrap(out, "from", &from.join("; "))?;
        }
        if c.verdict != Category::Free {
            wrap(out, "why", &printable(&c.diagnosis))?;
        }
        if let Some(note) = &c.note {
            wrap(out, "note", &printable(note))?;
        }
        if let Some(fix) = &c.fix {
            wrap(out, "fix", &printable(fix))?;
        }
    }
    for u in unchecked {
        wrap(
            out,
            "not checked",
            &printable(&format!("{}: {}", u.from, u.why)),
        )?;
    }
    let fail = checked.iter().filter(|c| c.fails).count();
    let risk = checked.iter().filter(|c| c.verdict.risk()).count();
    let yours = checked
        .iter()
        .filter(|c| c.verdict == Category::Yours)
        .count();
    let mut counts = format!(
        "{} binding(s): {} free, ",
        checked.len(),
        checked.len() - fail - risk - yours
    );
    if yours > 0 {
        counts.push_str(&format!("{yours} yours, "));
    }
    writeln!(out, "{counts}{risk} at risk, {fail} would fail")
}

/// Who is in the way, each escaped: sockets as `who` names them (with
/// TIME_WAIT's time left), containers, DNAT targets, the plan's entries.
fn holder_names(c: &Outcome) -> Vec<String> {
    let mut names: Vec<String> = c.holders.iter().map(holder_name).collect();
    names.extend(c.published.iter().map(|p| printable(&p.container.label())));
    names.extend(c.dnat.iter().map(|d| match (&d.service, &d.pod) {
        (Some(s), _) => format!(
            "Service {} ({})",
            printable(&s.label()),
            printable(&s.how())
        ),
        (None, Some(p)) => format!(
            "hostPort of pod {}/{}",
            printable(&p.namespace),
            printable(&p.name)
        ),
        (None, None) if d.from == "ipvs" => format!(
            "{} to {}",
            if d.made_by.as_deref() == Some("kube-proxy") {
                "kube-proxy (IPVS)"
            } else {
                "IPVS"
            },
            printable(&d.endpoints.join(", "))
        ),
        (None, None) => format!("DNAT to {}", printable(d.to.as_deref().unwrap_or("?"))),
    }));
    names.extend(c.conflicts_with.iter().map(|k| format!("plan {k}")));
    // iptables-nft's rules are listed by both iptables-save and nft.
    let mut seen = Vec::new();
    names.retain(|n| {
        let first = !seen.contains(n);
        seen.push(n.clone());
        first
    });
    names
}

fn holder_name(h: &Holder) -> String {
    let who = printable(&h.who());
    match (h.state, h.time_left_ms) {
        (State::TimeWait, Some(ms)) => format!("{who}, {}s left", ms.div_ceil(1000)),
        _ => who,
    }
}

/// `  TAG: text`, wrapped at [`WIDTH`] with continuation lines indented
/// under the text.
fn wrap(out: &mut impl Write, tag: &str, text: &str) -> io::Result<()> {
    let lead = format!("  {tag}: ");
    let indent = " ".repeat(lead.len());
    let mut line = lead;
    let mut empty = true;
    for word in words(text) {
        let fits = line.chars().count() + 1 + word.chars().count() <= WIDTH;
        if !empty && !fits {
            writeln!(out, "{line}")?;
            line.clone_from(&indent);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(&word);
        empty = false;
    }
    writeln!(out, "{line}")
}

/// The words of `text`, a `code span` kept whole: a command cut across
/// lines cannot be pasted.
fn words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for w in text.split_whitespace() {
        match words.last_mut() {
            Some(open) if open.matches('`').count() % 2 == 1 => {
                open.push(' ');
                open.push_str(w);
            }
            _ => words.push(w.to_owned()),
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_at_80_columns_with_code_kept_whole() {
        let mut out = Vec::new();
        let fix = "reserve it: `sysctl -w net.ipv4.ip_local_reserved_ports=40000` now, and the line `net.ipv4.ip_local_reserved_ports = 40000` in a file under /etc/sysctl.d/";
        wrap(&mut out, "fix", fix).unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in text.lines() {
            assert!(line.chars().count() <= WIDTH, "{text}");
            assert_eq!(line.matches('`').count() % 2, 0, "{text}");
        }
        assert!(text.starts_with("  fix: reserve it:"), "{text}");
        assert!(
            text.contains("the line `net.ipv4.ip_local_reserved_ports = 40000`"),
            "{text}"
        );
        assert_eq!(
            text.split_whitespace().collect::<Vec<_>>(),
            ["fix:"]
                .into_iter()
                .chain(fix.split_whitespace())
                .collect::<Vec<_>>()
        );
    }
}
