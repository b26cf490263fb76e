//! CMD in a transient scope unit, when systemd is PID 1 and owns the
//! cgroup tree portwatch runs in.
//!
//! systemd's StartTransientUnit makes the scope with CMD's pid in it
//! (`PIDs`), exactly what `systemd-run --scope` asks for. systemd-run
//! itself cannot be used: it moves itself into the scope and execs CMD at
//! once, before portwatch could know the scope's cgroup id, so CMD's first
//! bind() could pass untraced. The call is made with `busctl`, systemd's own
//! D-Bus client, which is there wherever systemd is PID 1; a D-Bus crate
//! (zbus and its async stack) would be dozens of crates in a root tool for
//! one method call. It runs through `portwatch_core::subprocess` with a
//! deadline, like every program portwatch runs.

use std::{
    ffi::{CString, OsString},
    os::unix::ffi::OsStrExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use portwatch_core::subprocess;

/// How long busctl, and then systemd's move of CMD, may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Fixed paths: a root tool does not run whatever `busctl` PATH names.
const BUSCTL: [&str; 2] = ["/usr/bin/busctl", "/bin/busctl"];

/// The system bus, then systemd's private socket (root only), for systems
/// without a D-Bus daemon.
const BUSES: [Option<&str>; 2] = [None, Some("unix:path=/run/systemd/private")];

/// Whether systemd delegated `cgroup` (Delegate=yes): it marks such a
/// cgroup with the `trusted.delegate` (or, for a user's manager,
/// `user.delegate`) extended attribute. portwatch may then make cgroups
/// under its own.
pub fn is_delegated(cgroup: &Path) -> bool {
    let Ok(path) = CString::new(cgroup.as_os_str().as_bytes()) else {
        return false;
    };
    [c"trusted.delegate", c"user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: a NUL-terminated path and name, and a buffer of the
        // length given.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n == 1 && value[0] == b'1'
    })
}

/// Asks systemd for the transient scope `unit` holding `pid` (CMD, held
/// before exec), and waits until CMD is in it; returns the scope's cgroup
/// path as /proc/PID/cgroup says it.
pub fn start(unit: &str, pid: u32, command: &[OsString]) -> Result<String> {
    let busctl = BUSCTL
        .iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| {
            anyhow!("systemd is PID 1 but busctl is missing: cannot ask it for a scope for CMD")
        })?;
    let mut failures = Vec::new();
    for bus in BUSES {
        let mut cmd = Command::new(busctl);
        cmd.env_clear()
            .env("SYSTEMD_COLORS", "0")
            .args(bus.map(|a| format!("--address={a}")))
            .args(start_transient_unit(unit, pid, &description(command)));
        match subprocess::output(&mut cmd, TIMEOUT) {
            Ok(_) => return moved(unit, pid),
            Err(e) => failures.push(e.to_string()),
        }
    }
    bail!(
        "systemd did not make the scope {unit} for CMD: {}",
        failures.join("; ")
    )
}

/// busctl's arguments for StartTransientUnit: the unit, mode `fail`, its
/// properties (CMD's pid, a description, collected even when it failed),
/// no auxiliary units.
fn start_transient_unit(unit: &str, pid: u32, description: &str) -> Vec<String> {
    [
        "call",
        "--quiet",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        unit,
        "fail",
        "3",
        "PIDs",
        "au",
        "1",
        &pid.to_string(),
        "Description",
        "s",
        description,
        "CollectMode",
        "s",
        "inactive-or-failed",
        "0",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `portwatch run: CMD ARGS`, cut short: what `systemctl status` shows.
fn description(command: &[OsString]) -> String {
    let words: Vec<String> = command
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    // One line: `systemctl status` shows it in its header.
    let joined = words.join(" ");
    let mut d = format!(
        "portwatch run: {}",
        joined.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    if d.len() > 200 {
        let mut end = 200;
        while !d.is_char_boundary(end) {
            end -= 1;
        }
        d.truncate(end);
        d.push_str("...");
    }
    d
}

/// Waits until systemd moved `pid` into `unit` (its start job runs after
/// the call returns); returns the cgroup path.
fn moved(unit: &str, pid: u32) -> Result<String> {
    let deadline = Instant::now() + TIMEOUT;
    let suffix = format!("/{unit}");
    loop {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("reading the cgroup of CMD (pid {pid})"))?;
        if let Some(path) = cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .filter(|p| p.ends_with(&suffix))
        {
            return Ok(path.to_owned());
        }
        if Instant::now() >= deadline {
            bail!(
                "systemd made {unit} but did not move CMD (pid {pid}) into it within {TIMEOUT:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_names_cmd_and_its_pid() {
        let args = start_transient_unit("portwatch-run-9.scope", 42, "portwatch run: sleep 1");
        let at = |w: &str| args.iter().position(|a| a == w).unwrap();
        assert_eq!(args[at("PIDs") + 1..at("PIDs") + 4], ["au", "1", "42"]);
        assert_eq!(args[at("StartTransientUnit") + 2], "portwatch-run-9.scope");
        // Three properties, then no auxiliary units.
        assert_eq!(args[at("fail") + 1], "3");
        assert_eq!(args.last().unwrap(), "0");
        let long = vec![OsString::from("x".repeat(300))];
        assert_eq!(description(&long).len(), 203);
        let script = vec![
            OsString::from("sh"),
            OsString::from("-c"),
            OsString::from("a\n  b\tc"),
        ];
        assert_eq!(description(&script), "portwatch run: sh -c a b c");
    }

    /// This host's cgroups are not delegated by a systemd (it is not PID 1
    /// here); a directory without the attribute is not either.
    #[test]
    fn a_cgroup_without_the_mark_is_not_delegated() {
        assert!(!is_delegated(Path::new("/proc")));
        assert!(!is_delegated(Path::new("/nonexistent")));
    }
}
