//! cgroup v2 directories made by tests, removed on drop.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// A cgroup v2 directory of a test's own; dropping it removes it (waiting a
/// moment for the processes moved into it to be gone). Drop inner ones
/// first: declare them after their parent.
pub struct Cgroup(pub PathBuf);

impl Cgroup {
    /// Makes `NAME-PID` under the cgroup2 mount (`/sys/fs/cgroup/unified` on
    /// a hybrid host, `/sys/fs/cgroup` on a unified one).
    pub fn new(name: &str) -> Cgroup {
        let dir = cgroup2_root().join(format!("{name}-{}", std::process::id()));
        Cgroup::make(dir)
    }

    /// Makes `name` inside this cgroup.
    pub fn child(&self, name: &str) -> Cgroup {
        Cgroup::make(self.0.join(name))
    }

    fn make(dir: PathBuf) -> Cgroup {
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup(dir)
    }

    /// Moves `pid` into this cgroup.
    pub fn add(&self, pid: u32) {
        let procs = self.0.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("writing {}: {e}", procs.display()));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A killed member leaves the cgroup only once it is reaped.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !std::thread::panicking() {
            panic!("cannot remove test cgroup {}", self.0.display());
        }
    }
}

/// Where cgroup2 is mounted, from mountinfo; panics where it is not, since
/// every machine this project tests on has it.
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            right
                .starts_with("cgroup2 ")
                .then(|| Path::new(mount_point).to_owned())
        })
        .expect("no cgroup2 mount: these tests need cgroup v2")
}
