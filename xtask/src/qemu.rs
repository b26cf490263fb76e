//! qemu for the test VMs: one TCG guest booted from a kernel and an
//! initramfs, its console logged and read line by line; and the initramfs
//! itself (busybox, programs with their libraries, a kernel's modules, an
//! init script), packed as cpio. Shared by the kernel VMs (`vm`), the VM
//! benchmark (`bench_vm`) and the systemd VM (`vm_systemd`).

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// What a kernel VM needs on the host: (a command or file, its Debian
/// package). 6.12's modules are .ko.xz.
pub(crate) const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("/bin/busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
];

/// Virtual CPUs per VM.
const VCPUS: &str = "2";

/// Packs the directory `tree` into a gzipped newc cpio archive `out`.
pub(crate) fn cpio(tree: &Path, out: &Path) -> Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(out)
        .current_dir(tree)
        .status()?;
    if !status.success() {
        bail!("cpio failed");
    }
    Ok(())
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

/// Copies `file` to `dest` (an absolute path in the guest) under `root_dir`.
pub(crate) fn copy_into(root_dir: &Path, file: &Path, dest: &Path) -> Result<()> {
    let target = root_dir.join(dest.strip_prefix("/").unwrap_or(dest));
    std::fs::create_dir_all(target.parent().unwrap())?;
    std::fs::copy(file, &target).with_context(|| format!("copying {}", file.display()))?;
    Ok(())
}

/// Makes `tree` afresh: busybox with the applets the init scripts use, and
/// each (program, path in the guest) of `programs` with the shared
/// libraries it loads.
pub(crate) fn busybox_tree(tree: &Path, programs: &[(PathBuf, PathBuf)]) -> Result<()> {
    let _ = std::fs::remove_dir_all(tree);
    for d in ["bin", "proc", "sys", "dev", "tmp", "t", "run", "m"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    copy_into(tree, Path::new("/bin/busybox"), Path::new("/bin/busybox"))?;
    for applet in [
        "sh", "mount", "mkdir", "ip", "cat", "sleep", "poweroff", "timeout", "echo", "ls", "insmod",
    ] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
    }
    let mut libs = BTreeSet::new();
    // busybox-static needs none; a dynamically linked busybox would.
    libs.extend(libraries(Path::new("/bin/busybox"))?);
    for (program, dest) in programs {
        copy_into(tree, program, dest)?;
        libs.extend(libraries(program)?);
    }
    for lib in libs {
        copy_into(tree, &lib, &lib)?;
    }
    Ok(())
}

/// The start of an init script: `env` exported with PATH, the usual
/// mounts, loopback up, the `VMTEST kernel` marker, then `modules` loaded
/// from /m in order (a failure said as `VMTEST insmod-failed NAME`).
pub(crate) fn init_start(modules: &[PathBuf], env: &str) -> String {
    let mut s = format!(
        "#!/bin/sh\n\
         export PATH=/bin {env}\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup\n\
         ip link set lo up\n\
         echo \"VMTEST kernel $(cat /proc/sys/kernel/osrelease)\"\n"
    );
    for m in modules {
        if let Some(name) = m.file_name() {
            let name = name.to_string_lossy();
            s.push_str(&format!(
                "insmod /m/{name} || echo \"VMTEST insmod-failed {name}\"\n"
            ));
        }
    }
    s
}

/// Writes `kernel`'s initramfs under `work`/RELEASE: the shared archive
/// `common` followed by one holding its modules and `init` (the kernel
/// unpacks concatenated archives in order). Returns its path.
pub(crate) fn kernel_initramfs(
    kernel: &crate::kernels::Kernel,
    common: &Path,
    work: &Path,
    init: &str,
) -> Result<PathBuf> {
    let work = work.join(&kernel.release);
    let tree = work.join("root");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("m"))?;
    // Loaded by the init script, in order (sock_diag's TCP/UDP handlers,
    // the veth and vrf devices).
    for m in &kernel.modules {
        let name = m.file_name().context("module path")?;
        copy_into(&tree, m, &Path::new("/m").join(name))?;
    }
    let init_path = tree.join("init");
    std::fs::write(&init_path, init)?;
    std::fs::set_permissions(
        &init_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let own = work.join("own.cpio.gz");
    cpio(&tree, &own)?;
    std::fs::remove_dir_all(&tree)?;
    let image = work.join("initramfs.cpio.gz");
    let mut out = std::fs::File::create(&image)?;
    std::io::copy(&mut std::fs::File::open(common)?, &mut out)?;
    std::io::copy(&mut std::fs::File::open(&own)?, &mut out)?;
    std::fs::remove_file(&own)?;
    Ok(image)
}

/// One TCG guest booted from a kernel and an initramfs.
pub(crate) struct Qemu<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub memory_mib: u32,
    /// The kernel command line.
    pub append: &'a str,
    /// Boot to power-off.
    pub timeout: Duration,
}

impl Qemu<'_> {
    /// Boots, writes the whole console to `log` and hands each line
    /// (without its line end) to `line`; returns whether it was stopped
    /// at the timeout.
    pub fn run(&self, log: &Path, mut line: impl FnMut(&str) -> Result<()>) -> Result<bool> {
        let mut serial = std::io::BufWriter::new(std::fs::File::create(log)?);
        let mut child = Command::new("qemu-system-x86_64")
            // Nested KVM fails on this project's machines: emulate.
            .args(["-accel", "tcg", "-cpu", "max", "-smp", VCPUS])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(self.vmlinuz)
            .arg("-initrd")
            .arg(self.initrd)
            .args(["-append", self.append])
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
        let deadline = Instant::now() + self.timeout;
        let timed_out = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(text) => {
                    let text = text.trim_end_matches('\r');
                    writeln!(serial, "{text}")?;
                    line(text)?;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break true,
                Err(mpsc::RecvTimeoutError::Disconnected) => break false,
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        serial.flush()?;
        Ok(timed_out)
    }
}
