//! `cargo xtask vm-test`: the integration tests on other real kernels, booted
//! under qemu, once per backend.
//!
//! The initramfs holds busybox, the test binaries, the portwatch binary at
//! the path the tests were compiled with, and their shared libraries. Its
//! init runs the tests with `PORTWATCH_TEST_BACKEND` set to each backend and
//! prints markers on the serial console, which this side reads.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, kernels, root, run, setup};

/// Tests that need programs the VM does not carry (python3, nginx, setpriv, ss)
/// or a newer kernel than the VM's.
/// They run on the host in `cargo xtask test`.
const HOST_ONLY: &[&str] = &[
    "filter_pid",
    "filter_uid",
    "filter_comm",
    "filter_cgroup",
    "filter_errno_eacces",
    "not_root",
    // who: iproute2's ss is not in the VM; Debian's 6.1 cannot dump
    // bound-inactive TCP sockets (6.10+).
    "who_tcp_list_agrees_with_ss",
    "who_udp_list_agrees_with_ss",
    "who_idle_bound_tcp_socket",
];

/// Test binaries to run in the VM.
const SUITES: &[&str] = &["capture", "cli", "holders", "who"];

/// Backends every suite runs with.
const BACKENDS: &[&str] = &["fexit", "tracepoint"];

/// How long one kernel may take, boot to power-off.
const TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Builds the test binaries; returns (suite name, executable).
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--package",
        "portwatch",
        "--no-run",
        "--message-format=json",
    ]);
    for suite in SUITES {
        cmd.args(["--test", suite]);
    }
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        if SUITES.contains(&name) {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    if found.len() != SUITES.len() {
        bail!("expected test binaries {SUITES:?}, found {found:?}");
    }
    Ok(found)
}

/// Shared libraries `bin` loads, per ldd.
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

fn copy_into(root_dir: &Path, file: &Path, dest: &Path) -> Result<()> {
    let target = root_dir.join(dest.strip_prefix("/").unwrap_or(dest));
    std::fs::create_dir_all(target.parent().unwrap())?;
    std::fs::copy(file, &target).with_context(|| format!("copying {}", file.display()))?;
    Ok(())
}

fn init_script(suites: &[(String, PathBuf)], modules: &[PathBuf]) -> String {
    let skips: String = HOST_ONLY.iter().map(|t| format!(" --skip {t}")).collect();
    let mut s = String::from(
        "#!/bin/sh\n\
         export PATH=/bin\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup\n\
         ip link set lo up\n\
         echo \"VMTEST kernel $(cat /proc/sys/kernel/osrelease)\"\n",
    );
    for m in modules {
        if let Some(name) = m.file_name() {
            s.push_str(&format!("insmod /m/{}\n", name.to_string_lossy()));
        }
    }
    for backend in BACKENDS {
        for (name, _) in suites {
            s.push_str(&format!(
                "PORTWATCH_TEST_BACKEND={backend} PORTWATCH_EXPECT_AUTO=fexit /t/{name} --test-threads=1{skips}\n\
                 echo \"VMTEST suite={name} backend={backend} rc=$?\"\n"
            ));
        }
    }
    s.push_str("echo VMTEST done\npoweroff -f\n");
    s
}

/// Writes the initramfs for `suites` and returns its path.
fn initramfs(
    suites: &[(String, PathBuf)],
    portwatch: &Path,
    modules: &[PathBuf],
) -> Result<PathBuf> {
    let work = root().join(".cache/vm");
    let tree = work.join("root");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "tmp", "t", "run"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    copy_into(&tree, Path::new("/bin/busybox"), Path::new("/bin/busybox"))?;
    for applet in [
        "sh", "mount", "mkdir", "ip", "cat", "sleep", "poweroff", "timeout", "echo", "ls",
    ] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
    }
    // Loaded by the init script, in order (sock_diag's TCP/UDP handlers).
    for m in modules {
        let name = m.file_name().context("module path")?;
        copy_into(&tree, m, &Path::new("/m").join(name))?;
    }
    // The tests find portwatch at the absolute path they were built with.
    copy_into(&tree, portwatch, portwatch)?;
    let mut libs = BTreeSet::new();
    // busybox-static needs none; a dynamically linked busybox would.
    libs.extend(libraries(Path::new("/bin/busybox"))?);
    libs.extend(libraries(portwatch)?);
    for (name, exe) in suites {
        copy_into(&tree, exe, &Path::new("/t").join(name))?;
        libs.extend(libraries(exe)?);
    }
    for lib in libs {
        copy_into(&tree, &lib, &lib)?;
    }
    let init = tree.join("init");
    std::fs::write(&init, init_script(suites, modules))?;
    run(Command::new("chmod").arg("755").arg(&init))?;
    let image = work.join("initramfs.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(&image)
        .current_dir(&tree)
        .status()?;
    if !status.success() {
        bail!("cpio failed");
    }
    Ok(image)
}

/// Boots `vmlinuz` with `initrd`; returns the console's VMTEST lines and
/// whether every suite passed.
fn boot(vmlinuz: &Path, initrd: &Path) -> Result<bool> {
    let mut child = Command::new("qemu-system-x86_64")
        // Nested KVM fails on this project's machines: emulate.
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let (mut done, mut ok, mut suites) = (false, true, 0);
    let mut log = std::io::stderr().lock();
    let mut booted = false;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let line = line.trim_end_matches('\r');
        // Everything from the tests passes through (failures need their
        // messages); boot noise before them does not.
        booted |= line.contains("VMTEST kernel");
        if booted {
            writeln!(log, "vm: {line}")?;
        }
        if let Some(rest) = line.strip_prefix("VMTEST suite=") {
            suites += 1;
            ok &= rest.ends_with("rc=0");
        }
        if line == "VMTEST done" {
            done = true;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if !done {
        bail!("the VM did not finish within {TIMEOUT:?} (boot failure or hung test)");
    }
    Ok(ok && suites == SUITES.len() * BACKENDS.len())
}

/// Runs the integration tests in a VM of every kernel in [`kernels::KERNELS`].
pub fn run_all() -> Result<()> {
    setup::ensure()?;
    setup::ensure_packages(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("/bin/busybox", "busybox-static"),
        ("cpio", "cpio"),
    ])?;
    let suites = test_binaries()?;
    let portwatch = root().join("target/debug/portwatch");
    let mut failed = Vec::new();
    for package in kernels::KERNELS {
        let (vmlinuz, modules) = kernels::image(package)?;
        let initrd = initramfs(&suites, &portwatch, &modules)?;
        eprintln!("xtask: booting {} under qemu (TCG)", vmlinuz.display());
        let started = Instant::now();
        let passed = boot(&vmlinuz, &initrd)?;
        eprintln!(
            "xtask: {package}: {} in {:.0}s",
            if passed { "passed" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if !passed {
            failed.push(*package);
        }
    }
    if !failed.is_empty() {
        bail!("VM tests failed on {failed:?}");
    }
    Ok(())
}
