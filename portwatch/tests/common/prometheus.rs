//! Debian's real Prometheus, started by a test with its own config and
//! data directory, listening inside the test's network namespace.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
};

use portwatch_test_support::{Netns, Process};

/// Starts `prometheus` in `ns` with `config`, its data in `data`, its API on
/// `listen`; killed when the returned process is dropped.
pub fn start(ns: &Netns, config: &Path, data: &Path, listen: SocketAddr) -> Process {
    let (config, data) = (config.to_owned(), data.to_owned());
    ns.run(move || {
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Process::spawn(cmd, &[])
    })
}
