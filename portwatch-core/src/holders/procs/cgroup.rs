//! A process's systemd unit and container, from its cgroup paths.
//!
//! Everything here parses untrusted text: a unit name is only ever returned
//! when it is safe to print inside a suggested `systemctl stop` command.

use serde::{Deserialize, Serialize};

/// The container runtimes portwatch names containers of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Docker (dockerd; `docker-ID.scope` or `/docker/ID`).
    Docker,
    /// Podman (`libpod-ID.scope`).
    Podman,
    /// containerd's CRI plugin (`cri-containerd-ID.scope`): Kubernetes.
    Containerd,
    /// CRI-O (`crio-ID.scope`): Kubernetes.
    Crio,
    /// A container id in a cgroup path that names no runtime.
    Unknown,
}

impl Runtime {
    /// The command its users type, where one stops a container.
    pub fn cli(self) -> Option<&'static str> {
        match self {
            Self::Docker => Some("docker"),
            Self::Podman => Some("podman"),
            Self::Containerd | Self::Crio | Self::Unknown => None,
        }
    }
}

/// systemd's unit types; `is_safe_unit_name` wants one of them as the suffix.
const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".slice",
    ".scope",
];
/// Prefixes of the per-container scopes of docker, containerd (CRI), podman and CRI-O. Their
/// "-conmon-" helper scopes do not match: conmon is not the container.
const CONTAINER_PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "libpod-", "crio-"];

/// Pure: (unit, container) derived from a cgroup v2 path.
///
/// The container is the first (outermost: the one the host's runtime knows) component that is
/// 64 lowercase hex digits, bare (cgroupfs drivers: "/docker/ID", "/kubepods/.../ID") or inside
/// a runtime's scope ("docker-ID.scope", "cri-containerd-ID.scope", "libpod-ID.scope",
/// "crio-ID.scope").
///
/// The unit is the last component that passes [`is_safe_unit_name`] and is not a slice (a slice
/// groups units; it is not something to stop), up to the container: units below it belong to
/// the container's own systemd, which the host's `systemctl` cannot reach
/// ("/docker/ID/system.slice/sshd.service" names no unit). So "/system.slice/nginx.service"
/// gives "nginx.service", "/system.slice/docker-ID.scope" gives "docker-ID.scope", and a login
/// session or a user manager gives "session-3.scope" or "user@1000.service" as they are.
/// Units below "user@UID.service" (".../user@1000.service/app.slice/app-foo.scope" gives
/// "app-foo.scope") belong to that user's manager (`systemctl --user`), not to the system one;
/// the cgroup path tells which. Garbage gives None.
pub fn unit_and_container(cgroup_path: &str) -> (Option<String>, Option<String>) {
    let (mut unit, mut container) = (None, None);
    for component in cgroup_path.split('/') {
        if !component.ends_with(".slice") && is_safe_unit_name(component) {
            unit = Some(component);
        }
        container = container_id(component);
        if container.is_some() {
            break;
        }
    }
    (unit.map(str::to_owned), container.map(str::to_owned))
}

/// Whether `s` is safe to print inside a suggested shell command `systemctl stop UNIT`:
/// systemd's unit name charset only (`[A-Za-z0-9:_.\\@-]`), no leading '-' (it would read as an
/// option), at most 255 bytes, at most one '@' and not first, and a known unit type suffix
/// after a non-empty name.
///
/// A name that passes cannot inject anything into a shell, but systemd's escapes ("\x2d") lose
/// their backslash unquoted: print the name inside single quotes when it contains one.
pub fn is_safe_unit_name(s: &str) -> bool {
    s.len() <= 255
        && !s.starts_with(['-', '@'])
        && s.bytes().filter(|&b| b == b'@').count() <= 1
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.\\@-".contains(&b))
        && UNIT_SUFFIXES
            .iter()
            .any(|suffix| s.strip_suffix(suffix).is_some_and(|name| !name.is_empty()))
}

/// Whether `systemctl stop UNIT` is safe advice for a holder in `unit`: a
/// `.service` or `.socket` unit only, that no entry of the safety table
/// ([`crate::safety::TABLE`]) protects. Never a scope (`session-3.scope` is
/// a whole login, `init.scope` is pid 1) or a slice.
pub fn is_stoppable_unit(unit: &str) -> bool {
    is_safe_unit_name(unit)
        && (unit.ends_with(".service") || unit.ends_with(".socket"))
        && crate::safety::unit_entry(unit).is_none()
}

/// The v2 path, unit and container from /proc/PID/cgroup. On a hybrid host a runtime that only
/// knows v1 (cgroupfs driver) leaves the v2 path at the runtime's own service, e.g.
/// "/system.slice/containerd.service", and puts the container in the v1 hierarchies: then the
/// container comes from a v1 line, and no unit is named, as stopping that service would not
/// stop this process.
pub(super) fn parse_cgroup(file: &[u8]) -> (String, Option<String>, Option<String>) {
    let lines = || file.split(|&b| b == b'\n');
    let v2 = lines()
        .find_map(|line| line.strip_prefix(b"0::"))
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let (unit, container) = unit_and_container(&v2);
    if container.is_some() {
        return (v2, unit, container);
    }
    // "ID:controllers:path"; the v2 line has already been looked at.
    let v1 = lines()
        .filter(|line| !line.starts_with(b"0::"))
        .filter_map(|line| line.splitn(3, |&b| b == b':').nth(2))
        .find_map(|path| unit_and_container(&String::from_utf8_lossy(path)).1);
    match v1 {
        Some(id) => (v2, None, Some(id)),
        None => (v2, unit, None),
    }
}

/// Which runtime made the cgroup component that holds container `id`, from
/// /proc/PID/cgroup: its scope's prefix ("docker-", "libpod-",
/// "cri-containerd-", "crio-"), or the cgroupfs drivers' parent directory
/// ("/docker/ID"; "/kubepods/..." names no runtime).
pub fn container_runtime(file: &[u8], id: &str) -> Runtime {
    let text = String::from_utf8_lossy(file);
    for path in text.lines().filter_map(|l| l.splitn(3, ':').nth(2)) {
        let mut parent = "";
        for component in path.split('/') {
            if let Some(at) = component.find(id) {
                return match &component[..at] {
                    "docker-" => Runtime::Docker,
                    "libpod-" => Runtime::Podman,
                    "cri-containerd-" => Runtime::Containerd,
                    "crio-" => Runtime::Crio,
                    "" if parent == "docker" => Runtime::Docker,
                    _ => Runtime::Unknown,
                };
            }
            parent = component;
        }
    }
    Runtime::Unknown
}

/// The id if `component` is a container's cgroup: 64 lowercase hex digits, bare or in a
/// runtime's scope.
fn container_id(component: &str) -> Option<&str> {
    let id = CONTAINER_PREFIXES
        .iter()
        .find_map(|p| component.strip_prefix(p))
        .map_or(component, |rest| {
            rest.strip_suffix(".scope").unwrap_or(rest)
        });
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    (id.len() == 64 && id.bytes().all(hex)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_runtime_from_real_paths() {
        let cases = [
            (
                format!("0::/system.slice/docker-{HEX}.scope\n"),
                Runtime::Docker,
            ),
            (
                format!("0::/machine.slice/libpod-{HEX}.scope/container\n"),
                Runtime::Podman,
            ),
            (
                format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{HEX}.scope\n"),
                Runtime::Containerd,
            ),
            (
                format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{HEX}.scope\n"),
                Runtime::Crio,
            ),
            (
                format!("4:memory:/docker/{HEX}\n0::/system.slice/containerd.service\n"),
                Runtime::Docker,
            ),
            (
                format!("0::/kubepods/burstable/pod1/{HEX}\n"),
                Runtime::Unknown,
            ),
        ];
        for (file, want) in cases {
            assert_eq!(container_runtime(file.as_bytes(), HEX), want, "{file:?}");
        }
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn unit_and_container_from_real_paths() {
        let s = |v: &str| Some(v.to_string());
        type UnitAndContainer = (Option<String>, Option<String>);
        let cases: Vec<(String, UnitAndContainer)> = vec![
            (
                "/system.slice/nginx.service".into(),
                (s("nginx.service"), None),
            ),
            (
                format!("/system.slice/docker-{HEX}.scope"),
                (Some(format!("docker-{HEX}.scope")), s(HEX)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\
                     0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{HEX}.scope"
                ),
                (Some(format!("cri-containerd-{HEX}.scope")), s(HEX)),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope".into(),
                (s("app-foo.scope"), None),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope".into(),
                (s("init.scope"), None),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service".into(),
                (s("user@1000.service"), None),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope".into(),
                (s("session-3.scope"), None),
            ),
            ("/".into(), (None, None)),
            ("".into(), (None, None)),
            ("/system.slice".into(), (None, None)),
            ("/init.scope".into(), (s("init.scope"), None)),
            (format!("/docker/{HEX}"), (None, s(HEX))),
            (
                format!("/kubepods/burstable/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/{HEX}"),
                (None, s(HEX)),
            ),
            (
                format!("/machine.slice/libpod-{HEX}.scope/container"),
                (Some(format!("libpod-{HEX}.scope")), s(HEX)),
            ),
            (
                format!("/machine.slice/libpod-conmon-{HEX}.scope"),
                (Some(format!("libpod-conmon-{HEX}.scope")), None),
            ),
            (
                format!("/system.slice/crio-{HEX}.scope"),
                (Some(format!("crio-{HEX}.scope")), s(HEX)),
            ),
            // A systemd inside the container: its units are not the host's.
            (
                format!("/docker/{HEX}/system.slice/sshd.service"),
                (None, s(HEX)),
            ),
            (
                format!("/system.slice/docker-{HEX}.scope/system.slice/sshd.service"),
                (Some(format!("docker-{HEX}.scope")), s(HEX)),
            ),
            // Outermost container wins: it is the one the host's runtime knows.
            (
                format!("/docker/{HEX}/docker/{}", "f".repeat(64)),
                (None, s(HEX)),
            ),
            // Not containers: wrong length, upper case.
            (format!("/docker/{}", &HEX[1..]), (None, None)),
            (format!("/docker/{}", HEX.to_uppercase()), (None, None)),
            // Garbage: control characters, shell metacharacters, non-ASCII.
            (
                "/system.slice/evil\n.service/x;rm -rf /.service/\u{1b}[2J.scope/é.service".into(),
                (None, None),
            ),
            (
                "/system.slice/ok.service/evil\u{7}.scope".into(),
                (s("ok.service"), None),
            ),
            ("//..//.service//-.mount/".into(), (None, None)),
        ];
        for (path, want) in cases {
            assert_eq!(unit_and_container(&path), want, "{path:?}");
        }
    }

    #[test]
    fn cgroup_file_v2_and_hybrid() {
        let s = |v: &str| Some(v.to_string());
        let v2 = parse_cgroup(b"0::/system.slice/nginx.service\n");
        assert_eq!(
            v2,
            (
                "/system.slice/nginx.service".into(),
                s("nginx.service"),
                None
            )
        );
        // Hybrid host, docker with the cgroupfs driver: the container is only in v1.
        let hybrid = format!(
            "12:name=systemd:/docker/{HEX}\n4:memory:/docker/{HEX}\n1:cpu:/docker/{HEX}\n\
             0::/system.slice/containerd.service\n"
        );
        assert_eq!(
            parse_cgroup(hybrid.as_bytes()),
            ("/system.slice/containerd.service".into(), None, s(HEX))
        );
        // Hybrid, nothing special: v1 lines change nothing.
        let plain = b"9:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n";
        assert_eq!(
            parse_cgroup(plain),
            ("/system.slice/a.service".into(), s("a.service"), None)
        );
        assert_eq!(parse_cgroup(b"1:cpu:/\n"), (String::new(), None, None));
        assert_eq!(parse_cgroup(b"\xff\n0::\n"), (String::new(), None, None));
        assert_eq!(parse_cgroup(b""), (String::new(), None, None));
    }

    #[test]
    fn only_services_and_sockets_are_stoppable() {
        for ok in [
            "nginx.service",
            "demo.socket",
            "getty@tty1.service",
            "apache2.service",
            "dnsmasq.service",
        ] {
            assert!(is_stoppable_unit(ok), "{ok:?}");
        }
        let scopes_and_more = [
            "session-3.scope",
            "init.scope",
            "app-foo.scope",
            "user@1000.service",
            "user@0.service",
            "systemd-journald.service",
            "systemd-resolved.service",
            "system.slice",
            "user-1000.slice",
            &format!("docker-{HEX}.scope"),
            "tmp.mount",
            "backup.timer",
            "multi-user.target",
            "evil;x.service",
        ];
        for never in scopes_and_more {
            assert!(!is_stoppable_unit(never), "{never:?}");
        }
        // Every unit of the safety table, its patterns filled in.
        for e in &crate::safety::TABLE {
            for unit in e.units.iter().map(|u| u.replace('*', "1")) {
                assert!(!is_stoppable_unit(&unit), "{unit:?}");
            }
        }
    }

    #[test]
    fn safe_unit_names() {
        for ok in [
            "nginx.service",
            "user@1000.service",
            "session-3.scope",
            "getty@tty1.service",
            "systemd-fsck@dev-disk-by\\x2duuid-1234.service",
            "a:b_c.socket",
            "system.slice",
        ] {
            assert!(is_safe_unit_name(ok), "{ok:?}");
        }
        let long = format!("{}.service", "a".repeat(247));
        assert_eq!(long.len(), 255);
        assert!(is_safe_unit_name(&long));
        for bad in [
            "foo;rm -rf /.service",
            "-x.service",
            "-.mount",
            "a b.service",
            "a\nb.service",
            "a.service\n",
            "\u{1b}[2J.service",
            "$(reboot).service",
            "`id`.service",
            "a'b.service",
            "nginx",
            "nginx.exe",
            ".service",
            "@.service",
            "a@b@c.service",
            "é.service",
            "",
            &format!("{}.service", "a".repeat(248)),
        ] {
            assert!(!is_safe_unit_name(bad), "{bad:?}");
        }
    }
}
