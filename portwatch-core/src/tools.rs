//! Which of the commands a fix may name exist on this host: advice names a
//! command to run here only when it would run here.
//!
//! Probed once ([`HostTools::probe`], a few `stat` calls) by whoever makes
//! the evidence, and handed to `diagnose` as data, so the rules stay pure
//! and every combination is unit-tested.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

/// Where Docker's CLI looks for its plugins (`docker compose` is one).
const DOCKER_PLUGIN_DIRS: [&str; 4] = [
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
];

/// The PATH of a login shell, for a portwatch started without one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The commands of this host that fixes may name. The default knows of
/// none: a fix then names only what needs no tool of this host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostTools {
    /// systemd is PID 1 (`/run/systemd/system` exists): `systemctl` can act.
    pub systemd: bool,
    /// `docker` is on PATH.
    pub docker: bool,
    /// `docker compose` works: `docker` and Compose v2's CLI plugin.
    pub compose_plugin: bool,
    /// `docker-compose` is on PATH (Compose v1, as Debian 12 ships it, or
    /// v2's standalone binary: both take `-p PROJECT stop SERVICE`).
    pub docker_compose: bool,
    /// `podman` is on PATH.
    pub podman: bool,
}

impl HostTools {
    /// Every tool present: what tests of wording start from.
    pub const ALL: HostTools = HostTools {
        systemd: true,
        docker: true,
        compose_plugin: true,
        docker_compose: true,
        podman: true,
    };

    /// This host's tools, looked up once: systemd as PID 1 the way
    /// `sd_booted()` tells, the rest on `PATH`.
    pub fn probe() -> HostTools {
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        let on_path = |name: &str| dirs.iter().any(|d| is_executable(&d.join(name)));
        let docker = on_path("docker");
        // The invoking user's plugins too (`sudo` keeps HOME on Debian).
        let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/cli-plugins"));
        let mut plugin_dirs = DOCKER_PLUGIN_DIRS.iter().map(PathBuf::from).chain(home);
        HostTools {
            systemd: Path::new("/run/systemd/system").is_dir(),
            docker,
            compose_plugin: docker && { plugin_dirs }
                .any(|d| is_executable(&d.join("docker-compose"))),
            docker_compose: on_path("docker-compose"),
            podman: on_path("podman"),
        }
    }
}

/// A regular file someone may execute.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sees_what_this_host_has() {
        let t = HostTools::probe();
        assert_eq!(t.systemd, Path::new("/run/systemd/system").is_dir());
        // sh is on every PATH; nothing is named this.
        let dirs = std::env::var_os("PATH").unwrap();
        assert!(std::env::split_paths(&dirs).any(|d| is_executable(&d.join("sh"))));
        assert!(!is_executable(Path::new(
            "/nonexistent/portwatch-no-such-tool"
        )));
        assert!(!is_executable(Path::new("/etc")));
    }
}
