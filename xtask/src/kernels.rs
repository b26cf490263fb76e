//! A second, real distribution kernel: Debian's packaged image, downloaded
//! into `.cache/` (never committed), for BTF offset tests.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{output, root, run};

/// The Debian packages of kernels to test against: one place, one line each.
/// A metapackage resolves to the newest image of its series; a full image
/// name pins one build. The first entry is also the one whose BTF the host
/// tests read ([`second_kernel_btf`]): its vmlinuz must be xz-compressed, as
/// Debian's 6.1 images are (6.12's are zstd).
pub const KERNELS: &[&str] = &[
    // Debian 12's default series (6.1).
    "linux-image-amd64",
    // Debian 12's 6.12 series, pinned: the metapackage `linux-image-6.12-amd64`
    // follows the newest 6.12 build instead.
    "linux-image-6.12.100+deb12-amd64",
];

fn cache() -> PathBuf {
    root().join(".cache/kernels")
}

/// `linux-image-amd64` -> `linux-image-6.1.0-56-amd64`; an image package
/// (one that depends on no other `linux-image-*`) names itself.
fn resolve(package: &str) -> Result<String> {
    // Fails, or names no dependency, until the package lists are fetched.
    let mut deps = output(Command::new("apt-cache").args(["depends", package])).unwrap_or_default();
    if !deps.contains("Depends:") {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        deps = output(Command::new("apt-cache").args(["depends", package]))
            .with_context(|| format!("apt does not know the kernel package {package}"))?;
    }
    let image = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .unwrap_or(package);
    if !image.starts_with("linux-image-") {
        bail!("{package} is not a Debian kernel image package");
    }
    Ok(image.to_owned())
}

/// Modules the VM loads, as paths under the kernel's `kernel/` module
/// directory: sock_diag's handlers for TCP and UDP, and the veth and vrf
/// devices the device-binding tests make, are modules in Debian's kernels,
/// and an initramfs has no modprobe to load them on demand. In load order
/// (tcp_diag and udp_diag depend on inet_diag; veth and vrf on nothing).
/// IPVS (kube-proxy's IPVS mode, kube_proxy.rs) with its round-robin
/// scheduler and what `modinfo -F depends` names for it on 6.1 and 6.12:
/// nf_conntrack, the defrag modules and libcrc32c (which wants a crc32c
/// implementation at load); kube-proxy's `kube-ipvs0` is a dummy device.
pub const MODULES: &[&str] = &[
    "net/ipv4/inet_diag",
    "net/ipv4/tcp_diag",
    "net/ipv4/udp_diag",
    "drivers/net/veth",
    "drivers/net/vrf",
    "drivers/net/dummy",
    "crypto/crc32c_generic",
    "lib/libcrc32c",
    "net/ipv4/netfilter/nf_defrag_ipv4",
    "net/ipv6/netfilter/nf_defrag_ipv6",
    "net/netfilter/nf_conntrack",
    "net/netfilter/ipvs/ip_vs",
    "net/netfilter/ipvs/ip_vs_rr",
];

/// A module's file name: `drivers/net/vrf` -> `vrf.ko`.
fn module_file(path: &str) -> String {
    format!("{}.ko", path.rsplit('/').next().unwrap_or(path))
}

/// A downloaded kernel image.
pub struct Kernel {
    /// The package as written in [`KERNELS`].
    pub package: String,
    /// The image package it resolved to, e.g. `linux-image-6.1.0-56-amd64`.
    pub image: String,
    /// Its release (`uname -r`), e.g. `6.1.0-56-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The [`MODULES`], uncompressed, in load order.
    pub modules: Vec<PathBuf>,
}

/// Downloads `package` (a kernel image, or a metapackage of one) once.
pub fn image(package: &str) -> Result<Kernel> {
    let image = resolve(package)?;
    let dir = cache().join(&image);
    let release = image.trim_start_matches("linux-image-").to_owned();
    let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
    let modules: Vec<PathBuf> = MODULES
        .iter()
        .map(|m| dir.join("modules").join(module_file(m)))
        .collect();
    let kernel = Kernel {
        package: package.to_owned(),
        image: image.clone(),
        release: release.clone(),
        vmlinuz: vmlinuz.clone(),
        modules: modules.clone(),
    };
    if vmlinuz.exists() && modules.iter().all(|m| m.exists()) {
        return Ok(kernel);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("modules"))?;
    eprintln!("xtask: downloading {image}");
    run(Command::new("apt-get")
        .args(["download", &image])
        .current_dir(&dir))?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    std::fs::remove_file(&deb)?;
    // 6.1 ships plain .ko files; 6.12 compresses every module with xz. The
    // signature stays inside the decompressed module, and busybox's insmod
    // wants it uncompressed.
    let tree = dir.join(format!("lib/modules/{release}/kernel"));
    for (name, dest) in MODULES.iter().zip(&modules) {
        let plain = tree.join(format!("{name}.ko"));
        let xz = tree.join(format!("{name}.ko.xz"));
        if xz.exists() {
            let out = Command::new("xz").arg("-dc").arg(&xz).output()?;
            if !out.status.success() {
                bail!(
                    "xz -d {}: {}",
                    xz.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::fs::write(dest, out.stdout)?;
        } else {
            std::fs::copy(&plain, dest).with_context(|| {
                format!(
                    "{image} has neither {} nor {}",
                    plain.display(),
                    xz.display()
                )
            })?;
        }
    }
    // Only boot/ and those modules are needed; the rest is 300 MB.
    for sub in ["lib", "usr"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    if !vmlinuz.exists() {
        bail!("{image} has no {}", vmlinuz.display());
    }
    Ok(kernel)
}

/// Extracts the `.BTF` section of a compressed x86 vmlinuz: the kernel is an
/// xz stream inside the bzImage.
fn extract_btf(vmlinuz: &std::path::Path, out: &std::path::Path) -> Result<()> {
    const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
    let image = std::fs::read(vmlinuz)?;
    let start = image
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .context("no xz stream in vmlinuz")?;
    let dir = out.parent().context("no parent")?;
    let xz = dir.join("vmlinux.xz");
    let elf = dir.join("vmlinux");
    std::fs::write(&xz, &image[start..])?;
    let decompressed = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .arg(&xz)
        .output()?;
    // xz complains about the bytes after the stream; the stream itself is whole.
    if decompressed.stdout.len() < 1 << 20 {
        bail!(
            "xz gave no kernel: {}",
            String::from_utf8_lossy(&decompressed.stderr)
        );
    }
    std::fs::write(&elf, &decompressed.stdout)?;
    run(Command::new("objcopy")
        .args(["-O", "binary", "--only-section=.BTF"])
        .arg(&elf)
        .arg(out))?;
    std::fs::remove_file(&xz)?;
    std::fs::remove_file(&elf)?;
    Ok(())
}

/// The BTF of the first kernel in [`KERNELS`], extracted once and cached.
pub fn second_kernel_btf() -> Result<PathBuf> {
    let vmlinuz = image(KERNELS[0])?.vmlinuz;
    let btf = vmlinuz.with_file_name("btf.bin");
    if !btf.exists() {
        extract_btf(&vmlinuz, &btf)?;
    }
    Ok(btf)
}
