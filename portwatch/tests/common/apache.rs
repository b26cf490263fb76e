//! A real Apache of a test's own (Debian's apache2), in the calling
//! thread's network namespace, stopped by its master's pid.

use std::{
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{v4, WAIT};

/// Writes `text` to `path`, readable by Apache's workers.
fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// A running Apache (daemonized by `-k start`), stopped by its master's pid.
pub struct Apache {
    /// The master's pid.
    pub pid: u32,
}

impl Apache {
    /// Starts Debian's apache2 with a minimal private config: `Listen P`
    /// (Apache's default: [::]:P without IPV6_V6ONLY), prefork workers as
    /// www-data. Call inside `Netns::run`.
    pub fn start(dir: &Path, port: u16) -> Apache {
        let d = dir.display();
        let conf = dir.join("httpd.conf");
        write(
            &conf,
            &format!(
                "ServerRoot {d}\nServerName localhost\n\
                 LoadModule mpm_prefork_module /usr/lib/apache2/modules/mod_mpm_prefork.so\n\
                 User www-data\nGroup www-data\nListen {port}\n\
                 PidFile {d}/httpd.pid\nDefaultRuntimeDir {d}\nErrorLog {d}/error.log\n\
                 StartServers 2\n"
            ),
        );
        let status = Command::new("/usr/sbin/apache2")
            .arg("-f")
            .arg(&conf)
            .args(["-k", "start"])
            .stdin(Stdio::null())
            .status()
            .expect("apache2 is needed (cargo xtask test installs Debian's package)");
        assert!(status.success(), "apache2 -k start: {status}");
        let deadline = Instant::now() + WAIT;
        loop {
            let pid = std::fs::read_to_string(dir.join("httpd.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok());
            // Ready: it accepts, and both workers of StartServers 2 are
            // forked (the first may serve before the second exists).
            if let (Some(pid), true) = (pid, TcpStream::connect(v4(port)).is_ok()) {
                if processes_of(pid).len() >= 3 {
                    return Apache { pid };
                }
            }
            assert!(
                Instant::now() < deadline,
                "apache2 never listened with its two workers: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pids of its processes: the master and its workers.
    pub fn processes(&self) -> Vec<u32> {
        processes_of(self.pid)
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        // SIGTERM to the master stops it and its workers.
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if Path::new(&format!("/proc/{}", self.pid)).exists() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// `pid` and its children: Apache's master and its workers.
fn processes_of(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
        .collect()
}
