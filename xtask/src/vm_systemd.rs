//! `cargo xtask vm-test systemd`: portwatch under a real systemd as PID 1.
//!
//! A Debian 12 rootfs made by mmdebstrap from Debian's packages, packed
//! whole into an initramfs and booted with Debian's 6.12 kernel under qemu
//! (`rdinit=/lib/systemd/systemd`). The rootfs archive is cached under
//! `.cache/vm-systemd/`, keyed by its package list and kernel, so a run
//! after the first only packs the project's own part: portwatch's `.deb`
//! (installed with dpkg inside the VM) and the suite
//! (`xtask/src/systemd_suite.sh`), which a oneshot unit runs after
//! multi-user.target. The suite prints one `SDTEST ok|FAIL NAME` line per
//! test on the serial console; every test in [`TESTS`] must say ok, and a
//! test missing, unknown or repeated is a failure.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    kernels,
    qemu::{cpio, Qemu},
    root, run, setup,
};

/// The kernel booted: Debian 12's 6.12 series, pinned in [`kernels::KERNELS`].
const KERNEL: &str = "linux-image-6.12.100+deb12-amd64";

/// What the rootfs holds beyond `minbase`: systemd as PID 1 (and D-Bus for
/// systemctl), kmod so sock_diag's modules load on demand, nginx started by
/// systemd as a service holder, python3 for sockets and HTTP, iproute2, and
/// bpftool to see what stays attached after a stop.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "kmod",
    "iproute2",
    "python3",
    "nginx-light",
    "bpftool",
];

/// The suite's tests, in the order it runs them.
pub const TESTS: &[&str] = &[
    "deb_installs",
    "service_holder_named_as_its_unit",
    "socket_unit_named_not_init_scope",
    "check_unit_taken_by_a_process",
    "check_unit_active_is_yours",
    "unit_fexit_attaches_all",
    "metrics_answer_on_loopback",
    "journal_state_dir_0600",
    "journald_structured_event",
    "same_service_restart",
    "report_reads_journalctl_json",
    "sigkill_restarts_with_journal_intact",
    "stop_leaves_no_bpf",
    "unit_tracepoint_attaches_all",
    "bad_command_line_not_restarted",
    "security_exposure",
    "run_child_in_transient_scope",
    "run_child_in_delegated_cgroup",
];

/// Boot to power-off.
const TIMEOUT: Duration = Duration::from_secs(15 * 60);

const SUITE: &str = include_str!("systemd_suite.sh");

fn work() -> PathBuf {
    root().join(".cache/vm-systemd")
}

/// FNV-1a: a cache key that is the same from one build of xtask to the next.
fn key(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.join("\n").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The cached rootfs archive for `kernel`, made once: mmdebstrap, the
/// kernel's sock_diag modules with depmod, the suite's unit, then cpio.
fn rootfs(kernel: &kernels::Kernel) -> Result<PathBuf> {
    let mut parts = PACKAGES.to_vec();
    parts.push(&kernel.release);
    parts.push(ROOTFS_LAYOUT);
    let image = work().join(format!("rootfs-{}.cpio.gz", key(&parts)));
    if image.exists() {
        return Ok(image);
    }
    let tree = work().join("rootfs");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(work())?;
    let started = Instant::now();
    eprintln!("xtask: building the systemd VM's rootfs with mmdebstrap");
    run(Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg("bookworm")
        .arg(&tree))?;
    // Loaded on demand by the kernel through kmod once depmod knows them.
    let extra = tree.join(format!("lib/modules/{}/extra", kernel.release));
    std::fs::create_dir_all(&extra)?;
    for m in &kernel.modules {
        std::fs::copy(m, extra.join(m.file_name().context("module name")?))?;
    }
    run(Command::new("chroot")
        .arg(&tree)
        .args(["depmod", &kernel.release]))?;
    for (path, text) in ROOTFS_FILES {
        let dest = tree.join(path);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::write(&dest, text)?;
    }
    let wants = tree.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/portwatch-vmtest.service",
        wants.join("portwatch-vmtest.service"),
    )?;
    // The suite owns the serial console.
    std::os::unix::fs::symlink(
        "/dev/null",
        tree.join("etc/systemd/system/serial-getty@ttyS0.service"),
    )?;
    let partial = image.with_extension("partial");
    cpio(&tree, &partial)?;
    std::fs::rename(&partial, &image)?;
    std::fs::remove_dir_all(&tree)?;
    eprintln!(
        "xtask: rootfs {} in {:.0}s",
        image.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(image)
}

/// Files the rootfs gets besides its packages; part of the cache key.
const ROOTFS_FILES: &[(&str, &str)] = &[
    (
        "etc/systemd/system/portwatch-vmtest.service",
        "[Unit]\n\
         Description=portwatch systemd suite\n\
         After=multi-user.target nginx.service\n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/bin/sh /vmtest/suite.sh\n\
         StandardOutput=tty\n\
         StandardError=tty\n\
         TTYPath=/dev/ttyS0\n\
         [Install]\n\
         WantedBy=multi-user.target\n",
    ),
    ("etc/hostname", "pwvm\n"),
];

/// Names [`ROOTFS_FILES`] in the cache key.
const ROOTFS_LAYOUT: &str = "v1 portwatch-vmtest.service serial-getty masked";

/// The run's own archive: the package and the suite.
fn own_part(deb: &Path) -> Result<PathBuf> {
    let tree = work().join("own");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("vmtest"))?;
    std::fs::copy(deb, tree.join("vmtest/portwatch.deb"))?;
    let suite = tree.join("vmtest/suite.sh");
    std::fs::write(&suite, SUITE)?;
    std::fs::set_permissions(&suite, std::fs::Permissions::from_mode(0o755))?;
    let out = work().join("own.cpio.gz");
    cpio(&tree, &out)?;
    std::fs::remove_dir_all(&tree)?;
    Ok(out)
}

/// What the console said.
#[derive(Default)]
struct Results {
    booted: bool,
    done: bool,
    /// Test name -> (passed, how often reported, why it failed).
    tests: BTreeMap<String, (bool, usize, String)>,
    info: Vec<String>,
}

impl Results {
    fn feed(&mut self, line: &str) -> bool {
        let Some(at) = line.find("SDTEST ") else {
            return false;
        };
        let rest = &line[at + "SDTEST ".len()..];
        let (word, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "begin" => self.booted = true,
            "done" => self.done = true,
            "info" => self.info.push(tail.to_owned()),
            "ok" | "FAIL" => {
                let (name, why) = tail.split_once(' ').unwrap_or((tail, ""));
                let e = self
                    .tests
                    .entry(name.to_owned())
                    .or_insert((true, 0, String::new()));
                e.0 &= word == "ok";
                e.1 += 1;
                if word == "FAIL" {
                    e.2 = why.to_owned();
                }
            }
            _ => {}
        }
        true
    }

    /// Every problem: the VM's, then each test's.
    fn problems(&self, timed_out: bool) -> Vec<String> {
        let mut p = Vec::new();
        if !self.booted {
            p.push("systemd never started the suite".to_owned());
        } else if !self.done {
            p.push(if timed_out {
                format!("the suite did not finish within {TIMEOUT:?}")
            } else {
                "the VM stopped before the suite's end".to_owned()
            });
        }
        if self.tests.is_empty() {
            p.push("no test ran".to_owned());
        }
        for t in TESTS {
            match self.tests.get(*t) {
                None => p.push(format!("{t}: did not run")),
                Some((false, _, why)) => p.push(format!("{t}: FAILED {why}")),
                Some((true, n, _)) if *n > 1 => p.push(format!("{t}: reported {n} times")),
                Some(_) => {}
            }
        }
        for name in self.tests.keys() {
            if !TESTS.contains(&name.as_str()) {
                p.push(format!("{name}: not in the xtask's list of tests"));
            }
        }
        p
    }
}

fn boot(kernel: &kernels::Kernel, initrd: &Path, log: &Path) -> Result<(Results, bool)> {
    let mut results = Results::default();
    let qemu = Qemu {
        vmlinuz: &kernel.vmlinuz,
        initrd,
        // The whole rootfs lives in the initramfs.
        memory_mib: 3072,
        append: "console=ttyS0 quiet rdinit=/lib/systemd/systemd panic=-1",
        timeout: TIMEOUT,
    };
    let timed_out = qemu.run(log, |line| {
        if results.booted || line.contains("SDTEST ") {
            results.feed(line);
            writeln!(std::io::stderr().lock(), "vm systemd: {line}")?;
        }
        Ok(())
    })?;
    Ok((results, timed_out))
}

/// Installs the host tools the systemd VM needs.
pub fn ensure_packages() -> Result<()> {
    setup::ensure_packages(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("mmdebstrap", "mmdebstrap"),
        ("cpio", "cpio"),
        ("xz", "xz-utils"),
    ])
}

/// Builds the package around the debug binary (already built), boots the
/// VM and runs the suite.
pub fn run_debug() -> Result<()> {
    ensure_packages()?;
    let started = Instant::now();
    let kernel = kernels::image(KERNEL)?;
    let base = rootfs(&kernel)?;
    let deb = crate::deb::build(crate::deb::Profile::Dev)?;
    let own = own_part(&deb)?;
    let initrd = work().join("initramfs.cpio.gz");
    {
        let mut out = std::fs::File::create(&initrd)?;
        std::io::copy(&mut std::fs::File::open(&base)?, &mut out)?;
        std::io::copy(&mut std::fs::File::open(&own)?, &mut out)?;
    }
    let log = work().join("serial.log");
    eprintln!("xtask: booting {} with systemd as PID 1", kernel.release);
    let booting = Instant::now();
    let (results, timed_out) = boot(&kernel, &initrd, &log)?;
    let problems = results.problems(timed_out);
    eprintln!(
        "\nxtask: systemd VM ({}): {:.0}s in all, {:.0}s booting and testing, console log {}",
        kernel.release,
        started.elapsed().as_secs_f64(),
        booting.elapsed().as_secs_f64(),
        log.display()
    );
    for (name, (ok, _, why)) in &results.tests {
        eprintln!("    {} {name} {why}", if *ok { "ok  " } else { "FAIL" });
    }
    for i in &results.info {
        eprintln!("    info: {i}");
    }
    if !problems.is_empty() {
        bail!("systemd VM suite failed:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// `cargo xtask vm-test systemd`: the debug build, as `cargo xtask test` uses.
pub fn run_alone() -> Result<()> {
    setup::ensure()?;
    run(crate::cargo().args(["build", "--package", "portwatch"]))?;
    run_debug()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ok() -> Results {
        let mut r = Results::default();
        r.feed("[  OK  ] noise SDTEST begin");
        for t in TESTS {
            r.feed(&format!("SDTEST ok {t}"));
        }
        r.feed("SDTEST done");
        r
    }

    #[test]
    fn every_test_ok_passes() {
        assert!(all_ok().problems(false).is_empty());
    }

    #[test]
    fn a_failure_a_missing_test_or_none_fails() {
        let mut r = all_ok();
        r.feed("SDTEST FAIL stop_leaves_no_bpf 3 programs left");
        assert!(r.problems(false)[0].contains("3 programs left"));

        let mut r = Results::default();
        r.feed("SDTEST begin");
        r.feed("SDTEST done");
        let p = r.problems(false);
        assert!(p.iter().any(|p| p == "no test ran"), "{p:?}");
        assert!(p.iter().any(|p| p.contains("did not run")));

        let mut r = all_ok();
        r.feed("SDTEST ok something_new");
        r.feed("SDTEST ok deb_installs");
        let p = r.problems(false);
        assert!(p.iter().any(|p| p.contains("reported 2 times")), "{p:?}");
        assert!(p.iter().any(|p| p.contains("not in the xtask's list")));

        let mut r = Results::default();
        r.feed("SDTEST begin");
        r.feed(&format!("SDTEST ok {}", TESTS[0]));
        assert!(r.problems(true)[0].contains("did not finish"));
        assert!(Results::default().problems(false)[0].contains("never started"));
    }
}
