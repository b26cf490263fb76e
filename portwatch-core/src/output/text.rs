//! The human format: one aligned line per event, then what holds the port,
//! why it failed and what to do, indented under it.
//!
//! Every string that came from a process, /proc or netlink goes through
//! [`printable`] before it reaches a terminal.

use std::net::SocketAddr;

use crate::{
    diagnose::{named, Verdict},
    event::Event,
    holders::{Evidence, Holder},
    request::Family,
};

/// The table's header line.
pub const HEADER: &str = "TIME(UTC)     PID      COMM             CALL    ERRNO          PROTO  ADDRESS                                   OPTS";

/// Replaces control characters so a hostile comm cannot drive the terminal.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One table line, without the newline.
pub fn human_line(ev: &Event) -> String {
    let ts = humantime::format_rfc3339_millis(ev.ts).to_string();
    let time = ts.get(11..23).unwrap_or(&ts);
    let errno = ev.errno.map_or_else(|| "OK".to_owned(), |e| e.name());
    let opts = match &ev.opts {
        Some(o) => {
            let names = o.names();
            if names.is_empty() {
                "-".to_owned()
            } else {
                names.join(",")
            }
        }
        None => "?".to_owned(),
    };
    let mut line = format!(
        "{time:<13} {pid:<8} {comm:<16} {call:<7} {errno:<14} {proto:<6} {addr:<41} {opts}",
        pid = ev.pid,
        comm = printable(&ev.comm),
        call = ev.syscall.name(),
        proto = format!(
            "{}{}",
            ev.proto.name(),
            if ev.family == Family::Ipv6 { "6" } else { "" }
        ),
        addr = SocketAddr::new(ev.addr, ev.port),
    );
    if let Some(ifindex) = ev.ifindex {
        line.push_str(&format!(" dev#{ifindex}"));
    }
    if ev.folded > 0 {
        line.push_str(&format!(" (+{} identical since last shown)", ev.folded));
    }
    line
}

/// One holder for people: who, in what state, where, and its command line.
pub fn holder_line(h: &Holder) -> String {
    let mut line = format!(
        "{} {} {}",
        printable(&named(h)),
        h.state.name(),
        SocketAddr::new(h.addr, h.port)
    );
    // The first thing to know about a wildcard: which families it takes.
    if h.addr.is_unspecified() && h.addr.is_ipv6() && h.v6only != Some(true) {
        line.push_str(" (IPv6 wildcard without IPV6_V6ONLY: takes IPv4 too)");
    }
    if let Some(left) = h.time_left_ms {
        line.push_str(&format!(", {} s left", left.div_ceil(1000)));
    }
    if let Some(remote) = &h.remote {
        line.push_str(&format!(" <-> {}", printable(remote)));
    }
    if let Some(cmd) = h.cmdline.as_deref().filter(|c| !c.is_empty()) {
        // Enough to recognise it; --json has all of it.
        let short: String = cmd.chars().take(80).collect();
        let more = if short.len() < cmd.len() { "..." } else { "" };
        line.push_str(&format!(": {}{more}", printable(&short)));
    }
    line
}

/// The lines under an event for people: holders, diagnosis, fix.
pub fn human_block(e: &Evidence, v: &Verdict) -> String {
    let mut block = String::new();
    for h in e.holders.iter().take(3) {
        block.push_str(&format!("    held: {}\n", holder_line(h)));
    }
    if e.holders.len() > 3 {
        block.push_str(&format!("    held: ... {} more\n", e.holders.len() - 3));
    }
    block.push_str(&format!(
        "    why:  {} [{}]\n    fix:  {}\n",
        printable(&v.diagnosis),
        v.reason.as_str(),
        printable(&v.fix)
    ));
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Clock,
        event::fixtures::{encode, sample},
    };

    fn event() -> Event {
        Event::decode(&encode(&sample()), Clock::now()).unwrap()
    }

    #[test]
    fn human_line_has_the_real_port_and_errno() {
        let line = human_line(&event());
        assert!(line.contains(" 4242 "), "{line}");
        assert!(line.contains("nginx"), "{line}");
        assert!(line.contains("EADDRINUSE"), "{line}");
        assert!(line.contains("127.0.0.1:8080"), "{line}");
        assert!(line.contains("reuseaddr"), "{line}");
        assert!(line.contains("(+3 identical"), "{line}");
        assert!(line.contains(" bind "), "{line}");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let mut ev = event();
        ev.comm = "evil\u{1b}[2J".into();
        assert!(!human_line(&ev).contains('\u{1b}'));
    }
}
