//! Running `portwatch check` from the tests: the namespace every check
//! suite uses, the command, and its NDJSON.

use std::{
    path::Path,
    process::{Command, Output},
};

use serde_json::Value;

use super::{bin, Netns};

/// A namespace whose ephemeral range (50000-60999) is clear of `port()`'s
/// ports (20000-44998), so only the tests that ask for it meet it.
pub fn netns(comm: &str) -> Netns {
    let ns = Netns::new(comm);
    ns.run(|| {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "50000 60999")
            .expect("set ip_local_port_range");
    });
    ns
}

/// `portwatch check ARGS` run in `ns` (in `dir` when given: compose finds
/// its `.env` there).
pub fn run_check(ns: &Netns, dir: Option<&Path>, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    let dir = dir.map(Path::to_owned);
    ns.run(move || {
        let mut cmd = Command::new(bin());
        cmd.arg("check").args(&args);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd.output().expect("run portwatch check")
    })
}

/// The JSON objects `check --json` printed, one per line (panics, with
/// its stderr, on a line that is not JSON).
pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!(
                    "not JSON ({e}): {l}\nstderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        })
        .collect()
}
