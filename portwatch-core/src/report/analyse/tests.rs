//! The analysis on journal lines written as `watch --record` writes them.

use std::time::{Duration, SystemTime};

use super::*;
use crate::output::json::parse_line;

fn failure(
    ms: u64,
    pid: u32,
    comm: &str,
    holder: Option<(u32, &str, &str)>,
    port: u16,
    errno: &str,
    reuseaddr: bool,
) -> String {
    let ts = humantime::format_rfc3339_nanos(
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_000 + ms),
    );
    let ret = if errno == "EADDRINUSE" { -98 } else { -99 };
    let holders = holder.map_or(String::new(), |(pid, comm, state)| format!(
        ",\"holders\":[{{\"pid\":{pid},\"comm\":\"{comm}\",\"cmdline\":null,\"uid\":0,\"state\":\"{state}\",\"addr\":\"0.0.0.0\",\"port\":{port},\"exited\":false,\"unit\":null,\"container\":null,\"pids\":[{pid}],\"sockets\":1,\"time_left_ms\":null,\"remote\":null,\"v6only\":null,\"reuseaddr\":false,\"reuseport\":false,\"cross_family\":false,\"seen\":\"sock_diag\"}}]"
    ));
    format!(
        "{{\"ts\":\"{ts}\",\"pid\":{pid},\"tid\":{pid},\"ppid\":1,\"uid\":0,\"gid\":0,\"comm\":\"{comm}\",\"cgroup_id\":1,\"syscall\":\"bind\",\"errno\":\"{errno}\",\"ret\":{ret},\"proto\":\"tcp\",\"family\":\"ipv4\",\"addr\":\"0.0.0.0\",\"port\":{port},\"netns\":1,\"fd\":3,\"ifindex\":null,\"opts\":{{\"reuseaddr\":{reuseaddr},\"reuseport\":false,\"v6only\":false,\"freebind\":false,\"transparent\":false,\"bind_address_no_port\":false}},\"folded\":0,\"source\":\"tracepoint\"{holders}}}"
    )
}

fn life(ms: u64, event: &str, pid: u32, port: u16, socket: u64) -> String {
    let ts = humantime::format_rfc3339_nanos(
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_000 + ms),
    );
    format!(
        "{{\"type\":\"port\",\"ts\":\"{ts}\",\"event\":\"{event}\",\"port\":{port},\"proto\":\"tcp\",\"family\":\"ipv4\",\"addr\":\"0.0.0.0\",\"netns\":1,\"pid\":{pid},\"comm\":\"nginx\",\"holder_pid\":{pid},\"socket\":{socket}}}"
    )
}

fn analyse_lines(lines: &[String]) -> Analysis {
    let mut a = Analysis::default();
    for l in lines {
        let line = parse_line(l.as_bytes()).unwrap();
        assert_ne!(a.add(line, &Filter::default()), Added::Filtered, "{l}");
    }
    a.finish();
    a
}

fn pattern(a: &Analysis, port: u16, kind: PatternKind) -> &Pattern {
    a.ports[&port]
        .patterns
        .iter()
        .find(|p| p.kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} pattern on port {port}"))
}

fn kinds(a: &Analysis, port: u16) -> Vec<PatternKind> {
    a.ports[&port].patterns.iter().map(|p| p.kind).collect()
}

#[test]
fn stray_repeated_time_wait_and_ephemeral() {
    let a = analyse_lines(&[
        // A stray python holds nginx's port across two restarts.
        failure(
            0,
            100,
            "nginx",
            Some((50, "python3", "LISTEN")),
            80,
            "EADDRINUSE",
            true,
        ),
        failure(
            500,
            100,
            "nginx",
            Some((50, "python3", "LISTEN")),
            80,
            "EADDRINUSE",
            true,
        ),
        failure(
            5000,
            101,
            "nginx",
            Some((50, "python3", "LISTEN")),
            80,
            "EADDRINUSE",
            true,
        ),
        // TIME_WAIT only, no SO_REUSEADDR.
        failure(
            0,
            200,
            "srv",
            Some((0, "", "TIME_WAIT")),
            8080,
            "EADDRINUSE",
            false,
        ),
        // Ephemeral exhaustion: no local port for port 0.
        failure(0, 300, "client", None, 0, "EADDRNOTAVAIL", false),
    ]);
    let k = kinds(&a, 80);
    assert!(
        k.contains(&PatternKind::Overlap)
            && k.contains(&PatternKind::Stray)
            && k.contains(&PatternKind::Repeated),
        "{k:?}"
    );
    let repeated = pattern(&a, 80, PatternKind::Repeated);
    assert_eq!(repeated.pids, vec![100, 101]);
    assert!(repeated.text.contains("3 time(s)"), "{}", repeated.text);
    assert_eq!(a.ports[&80].runs.len(), 2);
    assert_eq!(a.ports[&80].runs[0].count, 2);
    assert_eq!(kinds(&a, 8080), vec![PatternKind::TimeWait]);
    assert_eq!(a.ephemeral.len(), 1);
    assert_eq!(a.failures, 5);
    assert_eq!(a.by_command.0["nginx"], 3);
    assert_eq!(a.by_reason.0["EADDRNOTAVAIL"], 1);
}

#[test]
fn repeated_counts_each_pid_once_when_pids_come_back() {
    let holder = Some((50, "python3", "LISTEN"));
    let a = analyse_lines(&[
        failure(0, 100, "nginx", holder, 80, "EADDRINUSE", true),
        failure(5000, 101, "nginx", holder, 80, "EADDRINUSE", true),
        // Past RUN_GAP: a run of its own.
        failure(200_000, 100, "nginx", holder, 80, "EADDRINUSE", true),
    ]);
    let repeated = pattern(&a, 80, PatternKind::Repeated);
    assert_eq!(repeated.pids, vec![100, 101]);
    assert!(
        repeated.text.contains("across 2 restarts"),
        "{}",
        repeated.text
    );
}

#[test]
fn tallies_and_kept_entries_are_bounded() {
    let mut a = Analysis::default();
    for i in 0..(KEEP as u32 + 50) {
        let l = failure(
            u64::from(i) * 120_000,
            1000 + i,
            "x",
            Some((999, "y", "LISTEN")),
            9,
            "EADDRINUSE",
            true,
        );
        a.add(parse_line(l.as_bytes()).unwrap(), &Filter::default());
    }
    let s = &a.ports[&9];
    assert_eq!(s.runs.len(), KEEP);
    assert_eq!(s.runs_dropped, 50);
    assert_eq!(s.failures, KEEP as u64 + 50);
}

/// An old instance closes its listener while the new one retries: the
/// overlap measures the release from the first failure, and says whether a
/// retry came after it (port 80) or the last one came before it (port 81).
#[test]
fn overlap_measures_the_release_and_the_retry() {
    let old = Some((50, "nginx", "LISTEN"));
    let a = analyse_lines(&[
        life(0, "listen", 50, 80, 7),
        failure(100, 60, "nginx", old, 80, "EADDRINUSE", true),
        failure(600, 60, "nginx", old, 80, "EADDRINUSE", true),
        life(1000, "closed", 50, 80, 7),
        life(1200, "listen", 60, 80, 8),
        life(0, "listen", 50, 81, 9),
        failure(100, 61, "nginx", old, 81, "EADDRINUSE", true),
        life(2100, "closed", 50, 81, 9),
    ]);
    assert_eq!(kinds(&a, 80), vec![PatternKind::Overlap]);
    let overlap = pattern(&a, 80, PatternKind::Overlap);
    assert_eq!(overlap.pids, vec![50, 60]);
    assert_eq!(overlap.gap_ms, Some(900.0));
    assert!(overlap.released.is_some());
    for part in [
        "failed 2 time(s) over 500 ms",
        "+900 ms after the first failure",
        "pid 60 listened at +200 ms after the release (its retry succeeded)",
    ] {
        assert!(overlap.text.contains(part), "{part}: {}", overlap.text);
    }
    let overlap = pattern(&a, 81, PatternKind::Overlap);
    assert!(
        overlap
            .text
            .contains("its last retry was 2 s before the release"),
        "{}",
        overlap.text
    );
    assert_eq!(a.ports[&80].holders.len(), 2);
    assert_eq!(a.ports[&80].holders[0].closed_by, Some(50));
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(json["ports"]["80"]["patterns"][0]["kind"], "overlap");
    // The names in `report --json` (its schema).
    for (kind, name) in [
        (PatternKind::Overlap, "overlap"),
        (PatternKind::Stray, "stray"),
        (PatternKind::TimeWait, "time_wait"),
        (PatternKind::Repeated, "repeated"),
        (PatternKind::EphemeralExhausted, "ephemeral_exhausted"),
    ] {
        assert_eq!(serde_json::to_value(kind).unwrap(), name);
    }
}

#[test]
fn the_filter_drops_other_ports_and_times() {
    let line = failure(0, 1, "x", None, 80, "EADDRINUSE", true);
    let port = life(0, "listen", 1, 80, 1);
    let mut a = Analysis::default();
    let other_port = Filter {
        ports: vec![81],
        ..Filter::default()
    };
    let later = Filter {
        since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_001)),
        ..Filter::default()
    };
    for filter in [&other_port, &later] {
        for l in [&line, &port] {
            let view = parse_line(l.as_bytes()).unwrap();
            assert_eq!(a.add(view, filter), Added::Filtered, "{filter:?} {l}");
        }
    }
    assert_eq!(a.failures, 0);
    let view = parse_line(line.as_bytes()).unwrap();
    assert_eq!(a.add(view, &Filter::default()), Added::Event);
    let view = parse_line(port.as_bytes()).unwrap();
    assert_eq!(a.add(view, &Filter::default()), Added::PortLine);
    assert_eq!(a.failures, 1);
}
