//! qemu for the test VMs: one TCG guest booted from a kernel and an
//! initramfs, its console logged and read line by line; and the cpio
//! archive an initramfs is packed as. Shared by the kernel VMs (`vm`) and
//! the systemd VM (`vm_systemd`).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

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
