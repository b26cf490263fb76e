//! The host's PID namespace, or a refusal: the commands that name holders
//! must see every process of the machine.
//!
//! The eBPF programs report a failing process by its pid in the initial
//! PID namespace, and holders are found by walking `/proc/*/fd`. Inside a
//! container with a PID namespace of its own (a pod without `hostPID`,
//! `podman run` without `--pid=host`), `/proc` lists only the container's
//! processes: every port held by a host process or another pod would be
//! reported as held by nobody, and every pid would be wrong. Half-truths,
//! so portwatch refuses to start there.

use std::{io, path::Path};

/// The inode of the initial PID namespace, a kernel constant
/// (`PROC_PID_INIT_INO` in include/linux/proc_ns.h, 0xEFFFFFFC): the same
/// on every kernel since 3.8, whatever the machine.
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// Set to `1` where a PID namespace other than the initial one holds every
/// process of the node, so that nothing is missed: a Kubernetes node that
/// is itself a container (kind, k3d) or a system container (LXC, nspawn)
/// whose workloads all run inside it.
pub const NODE_PIDNS_VARIABLE: &str = "PORTWATCH_NODE_PIDNS";

/// `Ok` when this process and its `/proc` see the host's processes;
/// otherwise the one-line refusal (the caller exits 3 with it).
pub fn require_host() -> Result<(), String> {
    if std::env::var_os(NODE_PIDNS_VARIABLE).is_some_and(|v| v == "1") {
        return Ok(());
    }
    let proc = Path::new("/proc");
    match host_view(proc) {
        Ok(true) => Ok(()),
        Ok(false) => Err(refusal(namespace_of(&proc.join("self/ns/pid")).ok())),
        Err(e) => Err(format!(
            "cannot tell which PID namespace /proc shows ({e}): needs the host's \
             (hostPID: true / --pid=host) and /proc mounted"
        )),
    }
}

/// Whether this process is in the initial PID namespace, whose pids the
/// kernel's own records (the BPF iterator's `task->tgid`) use.
pub fn in_initial() -> io::Result<bool> {
    host_view(Path::new("/proc"))
}

/// The refusal, naming the namespace found when it could be read; main
/// prints it after `portwatch: `.
fn refusal(found: Option<u64>) -> String {
    let found = found.map_or_else(String::new, |ino| format!(" (pid:[{ino}])"));
    format!(
        "needs the host's PID namespace (hostPID: true / --pid=host): a container's \
         own{found} hides the processes that hold ports; set {NODE_PIDNS_VARIABLE}=1 only \
         where this namespace holds the whole node (kind)"
    )
}

/// Whether the processes listed under `proc` are the host's: this process
/// is in the initial namespace, and `proc/self` resolves, so `proc` lists
/// that namespace (a procfs of a namespace below would not know this
/// process). A process in a namespace below is refused even when `/proc`
/// is still the host's (`unshare -p -f` without `--mount-proc`): telling
/// that needs `/proc/1/ns/pid`, which an LSM may deny even to root (seen
/// on this project's machines).
fn host_view(proc: &Path) -> io::Result<bool> {
    Ok(namespace_of(&proc.join("self/ns/pid"))? == PROC_PID_INIT_INO)
}

/// The inode of the PID namespace that a `/proc/PID/ns/pid` link names.
fn namespace_of(link: &Path) -> io::Result<u64> {
    let target = std::fs::read_link(link)?;
    target
        .to_str()
        .and_then(parse_link)
        .ok_or_else(|| io::Error::other(format!("{}: unexpected {target:?}", link.display())))
}

/// `pid:[4026531836]` → 4026531836.
fn parse_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("pid:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_is_parsed_and_nothing_else() {
        assert_eq!(parse_link("pid:[4026531836]"), Some(PROC_PID_INIT_INO));
        assert_eq!(parse_link("pid:[4026532301]"), Some(4_026_532_301));
        for bad in [
            "net:[4026531836]",
            "pid:[]",
            "pid:[-1]",
            "pid:[4026531836",
            "pid:4026531836]",
            "pid:[4026531836] ",
            "pid:[0x1]",
            "",
        ] {
            assert_eq!(parse_link(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_refusal_is_one_line_that_says_what_to_set() {
        let line = refusal(Some(4_026_532_301));
        assert!(!line.contains('\n'));
        assert!(line.starts_with("needs the host's PID namespace (hostPID: true / --pid=host): "));
        assert!(line.contains("pid:[4026532301]"), "{line}");
    }

    /// The test processes run in the host's namespace (CI, the VMs' init):
    /// the real /proc says so.
    #[test]
    fn this_host_is_the_host() {
        assert_eq!(
            namespace_of(Path::new("/proc/self/ns/pid")).unwrap(),
            PROC_PID_INIT_INO
        );
        assert!(host_view(Path::new("/proc")).unwrap());
    }
}
