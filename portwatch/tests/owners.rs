//! Both ways of finding a socket's owners, on the same sockets: the BPF
//! iterator over tasks' files (`--lookup iterator`) and the walk of
//! /proc/*/fd (`--lookup walk`) must name the same processes, for a plain
//! listener, a socket passed with SCM_RIGHTS (the sender closing its copy
//! or keeping it), one shared by forked workers, sockets in another network
//! namespace, and holders that exit while the lookup runs. Real sockets in
//! each test's own network namespace, holders in forked children.

mod common;

use std::{net::SocketAddr, os::fd::AsRawFd, process::Command};

use common::*;
use serde_json::Value;

fn any4(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// Who each socket on the port belongs to: (pid, sorted pids) per socket,
/// in the order printed.
fn owners(v: &Value) -> Vec<(Value, Vec<u64>)> {
    v["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .map(|s| {
            let mut pids: Vec<u64> = s["pids"]
                .as_array()
                .map(|p| p.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            pids.sort_unstable();
            (s["pid"].clone(), pids)
        })
        .collect()
}

/// `who PORT ARGS` from `ns`'s thread by both paths; asserts that each
/// says which path answered and that both name the same owners, which it
/// returns.
fn both(ns: &Netns, port: u16, args: &[&str]) -> Vec<(Value, Vec<u64>)> {
    let run = |lookup: &str| {
        let mut all = vec![port.to_string(), "--lookup".into(), lookup.into()];
        all.extend(args.iter().map(|&a| a.to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        who(ns, &all)
    };
    let (code_iter, by_iter) = run("iterator");
    let (code_walk, by_walk) = run("walk");
    assert_eq!(by_iter["lookup"], "iterator", "{by_iter:#}");
    assert!(by_iter.get("lookup_note").is_none(), "{by_iter:#}");
    assert_eq!(by_walk["lookup"], "walk", "{by_walk:#}");
    assert_eq!(by_walk["lookup_note"], "--lookup walk", "{by_walk:#}");
    assert_eq!(code_iter, code_walk, "{by_iter:#}\n{by_walk:#}");
    let found = owners(&by_iter);
    assert_eq!(found, owners(&by_walk), "{by_iter:#}\n{by_walk:#}");
    found
}

#[test]
fn same_owners_for_a_plain_listener() {
    let ns = Netns::new("pw-own-plain");
    let port = port();
    let held = ns.run(move || Process::fork(move || hold(any4(port), false, |_| {})));
    let found = both(&ns, port, &[]);
    assert_eq!(found, [(held.pid.into(), vec![u64::from(held.pid)])]);
}

#[test]
fn same_owners_for_forked_workers() {
    let ns = Netns::new("pw-own-fork");
    let port = port();
    let master = ns.run(move || {
        Process::fork(move || {
            if !hold(any4(port), false, |_| {}) {
                return false;
            }
            fork_workers(3)
        })
    });
    let found = both(&ns, port, &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, master.pid, "the master: {found:?}");
    assert_eq!(
        found[0].1.len(),
        4,
        "the master and its 3 workers: {found:?}"
    );
    assert!(found[0].1.contains(&u64::from(master.pid)), "{found:?}");
}

/// A listener passed to a child over SCM_RIGHTS; `keep`: the sender (a
/// holder of its own) keeps its copy, else it closes it.
fn passed(keep: bool, comm: &str) {
    let ns = Netns::new(comm);
    let port = port();
    let (sender, receiver) = ns.run(move || {
        let listener = socket(false, false);
        bind(&listener, any4(port)).expect("bind");
        listener.listen(1).unwrap();
        let (tx, rx) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let sender = keep.then(|| Process::sleeper(&[listener.as_raw_fd()]));
        send_fd(tx.as_raw_fd(), listener.as_raw_fd());
        // Only in flight (and in `sender`) now: the child takes it.
        drop(listener);
        let rx_fd = rx.as_raw_fd();
        let receiver = Process::fork(move || recv_fd(rx_fd) >= 0);
        (sender, receiver)
    });
    let found = both(&ns, port, &[]);
    let mut want = vec![u64::from(receiver.pid)];
    want.extend(sender.as_ref().map(|s| u64::from(s.pid)));
    want.sort_unstable();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, want, "{found:?}");
}

#[test]
fn same_owners_for_a_socket_passed_and_closed_by_its_sender() {
    passed(false, "pw-own-passed");
}

#[test]
fn same_owners_for_a_socket_passed_and_kept_by_its_sender() {
    passed(true, "pw-own-kept");
}

/// Sockets on one port in two namespaces: asked from one about the other
/// (`--netns`), each path names the other namespace's holder only.
#[test]
fn same_owners_in_another_network_namespace() {
    let (here, there) = (Netns::new("pw-own-here"), Netns::new("pw-own-there"));
    let port = port();
    let mine = here.run(move || Process::fork(move || hold(any4(port), false, |_| {})));
    let theirs = there.run(move || Process::fork(move || hold(any4(port), false, |_| {})));
    let found = both(&here, port, &["--netns", &theirs.pid.to_string()]);
    assert_eq!(found, [(theirs.pid.into(), vec![u64::from(theirs.pid)])]);
    let found = both(&here, port, &[]);
    assert_eq!(found, [(mine.pid.into(), vec![u64::from(mine.pid)])]);
}

/// Holders that exit while `who` looks: never a wrong pid, never a failed
/// command; the holder that stays is always named.
#[test]
fn holders_exiting_during_the_lookup() {
    let ns = Netns::new("pw-own-exit");
    let port = port();
    // The test process keeps a copy for the leavers to inherit.
    let listener = ns.run(move || {
        let listener = socket(false, false);
        bind(&listener, any4(port)).expect("bind");
        listener.listen(1).unwrap();
        listener
    });
    let inode = inode_of(&listener);
    let stayer = Process::sleeper(&[listener.as_raw_fd()]);
    let me = u64::from(std::process::id());
    for lookup in ["iterator", "walk"] {
        for _ in 0..10 {
            let leavers: Vec<Process> = (0..5)
                .map(|_| Process::sleeper(&[listener.as_raw_fd()]))
                .collect();
            let args = [port.to_string(), "--lookup".to_owned(), lookup.to_owned()];
            let child = ns.run(move || {
                Command::new(bin())
                    .arg("who")
                    .args(&args)
                    .arg("--json")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("run portwatch who")
            });
            let gone: Vec<u64> = leavers
                .into_iter()
                .map(|mut p| {
                    p.kill();
                    u64::from(p.pid)
                })
                .collect();
            let (code, v) = parse(&child.wait_with_output().unwrap());
            assert_eq!(code, 1, "{v:#}");
            assert_eq!(v["lookup"], lookup, "{v:#}");
            let found = owners(&v);
            assert_eq!(found.len(), 1, "{v:#}");
            let pids = &found[0].1;
            assert!(pids.contains(&u64::from(stayer.pid)), "{v:#}");
            assert!(pids.contains(&me), "{v:#}");
            // Every other pid named is a leaver, or still holds the socket,
            // or is a child of this process (the children other tests fork
            // inherit it, some for a moment before they exec), or has
            // exited since (gone, or a zombie: the workers other tests fork
            // are killed with their master).
            for &p in pids.iter().filter(|p| !gone.contains(p)) {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let mut after = stat.rsplit(") ").next().unwrap_or("").split(' ');
                let (state, ppid) = (after.next(), after.next().and_then(|p| p.parse().ok()));
                let exited = stat.is_empty() || matches!(state, Some("Z" | "X"));
                assert!(
                    exited || holds(p, inode) || ppid == Some(me),
                    "pid {p} does not hold it: {v:#}"
                );
            }
        }
    }
}

/// Whether process `pid` has socket `inode` open now.
fn holds(pid: u64, inode: u32) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|dir| {
        dir.flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == want))
    })
}
