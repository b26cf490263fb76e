//! `cargo xtask deb [--test]`: a Debian package built with dpkg-deb alone.
//!
//! Hand-made rather than cargo-deb: the layout is eight files, dpkg-deb is
//! on every Debian machine, and nothing has to be built or installed first.
//! The man page and completions come from the built binary itself
//! (`portwatch man`, `portwatch completions SHELL`), so they match its --help.
//!
//! `--test` installs the package with `dpkg -i` into a private root with its
//! own dpkg database (never into this machine's /usr), runs the installed
//! binary, verifies the installed unit with systemd-analyze, and purges it.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{build_release, output, root, run};

/// Options of `cargo xtask deb`.
#[derive(clap::Args)]
pub struct Options {
    /// Then install it into a scratch root with dpkg, run it, and purge it.
    #[arg(long)]
    test: bool,
}

/// Lowest `systemd-analyze security` exposure accepted for the unit
/// (0 = fully locked down, 10 = nothing; it scores 3.5 "OK" today).
const MAX_EXPOSURE: f64 = 4.0;

/// Builds target/debian/portwatch_VERSION_ARCH.deb; with --test, checks it.
pub fn run_deb(opts: &Options) -> Result<()> {
    let deb = build(&build_release()?)?;
    println!("built {}", deb.display());
    if opts.test {
        test(&deb)?;
        println!("deb test passed: installed, ran, verified the unit, purged");
    }
    Ok(())
}

/// Builds and tests the package around the debug binary the test run has
/// just built (the full `cargo xtask test` runs this): what is checked is
/// the package — layout, install, the installed binary running, the unit,
/// purge — and a cold release build would add minutes to CI for nothing
/// the package test can see. `cargo xtask deb` ships the release build.
pub fn build_and_test() -> Result<()> {
    run(crate::cargo().args(["build", "--package", "portwatch"]))?;
    let deb = build(&root().join("target/debug/portwatch"))?;
    test(&deb)?;
    println!("deb test passed: installed, ran, verified the unit, purged");
    Ok(())
}

fn version() -> Result<String> {
    let manifest = fs::read_to_string(root().join("portwatch/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_owned)
        .context("no version in portwatch/Cargo.toml")
}

fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // -n: no name or time stamp, so the package is reproducible.
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("gzip")?;
    child.stdin.take().unwrap().write_all(bytes)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

const MAINTAINER_SCRIPT: &str = "#!/bin/sh
set -e
# Only where systemd runs: the unit is never enabled or started for the admin.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl daemon-reload || true
fi
";

const PRERM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl stop portwatch.service || true
fi
";

pub(crate) fn build(bin: &Path) -> Result<PathBuf> {
    let bin = bin.to_owned();
    let version = version()?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let out = root().join("target/debian");
    let tree = out.join("tree");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree)?;

    put(&tree.join("usr/bin/portwatch"), &fs::read(&bin)?, 0o755)?;
    // Debug info is most of the binary; the package ships without it.
    run(Command::new("strip").arg(tree.join("usr/bin/portwatch")))?;
    put(
        &tree.join("lib/systemd/system/portwatch.service"),
        &fs::read(root().join("packaging/portwatch.service"))?,
        0o644,
    )?;
    let man = Command::new(&bin).arg("man").output()?;
    if !man.status.success() || man.stdout.is_empty() {
        bail!("portwatch man failed");
    }
    put(
        &tree.join("usr/share/man/man1/portwatch.1.gz"),
        &gzip(&man.stdout)?,
        0o644,
    )?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/portwatch"),
        ("zsh", "usr/share/zsh/vendor-completions/_portwatch"),
        ("fish", "usr/share/fish/vendor_completions.d/portwatch.fish"),
    ] {
        let text = output(Command::new(&bin).args(["completions", shell]))?;
        put(&tree.join(path), text.as_bytes(), 0o644)?;
    }
    let doc = tree.join("usr/share/doc/portwatch");
    put(
        &doc.join("README.md.gz"),
        &gzip(&fs::read(root().join("README.md"))?)?,
        0o644,
    )?;
    let mut copyright = String::from(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: portwatch\n\n\
         Files: *\nLicense: MIT or Apache-2.0\n\n\
         Files: portwatch-ebpf/*\nComment: the eBPF programs embedded in /usr/bin/portwatch\nLicense: GPL-2.0-only\n\n",
    );
    for licence in ["LICENSE-MIT", "LICENSE-APACHE", "LICENSE-GPL2"] {
        let text = fs::read_to_string(root().join(licence))?;
        copyright.push_str(&format!("License: {licence}\n"));
        for line in text.lines() {
            // Debian's copyright format: continuation lines start with a
            // space, empty ones are " .".
            if line.trim().is_empty() {
                copyright.push_str(" .\n");
            } else {
                copyright.push_str(&format!(" {line}\n"));
            }
        }
        copyright.push('\n');
    }
    put(&doc.join("copyright"), copyright.as_bytes(), 0o644)?;

    let size_kib = dir_size(&tree)? / 1024;
    let control = format!(
        "Package: portwatch\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: portwatch developers <dev@portwatch.invalid>\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6\n\
         Section: net\n\
         Priority: optional\n\
         Description: catch failed bind()/listen() calls and name what holds the port\n \
         portwatch traces failed bind() and listen() calls in the kernel with eBPF,\n \
         names the process, unit or container holding the port, says why the call\n \
         failed and what to do, and serves Prometheus counters of the failures.\n"
    );
    put(&tree.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    put(
        &tree.join("DEBIAN/postinst"),
        MAINTAINER_SCRIPT.as_bytes(),
        0o755,
    )?;
    put(
        &tree.join("DEBIAN/postrm"),
        MAINTAINER_SCRIPT.as_bytes(),
        0o755,
    )?;
    put(&tree.join("DEBIAN/prerm"), PRERM.as_bytes(), 0o755)?;

    let deb = out.join(format!("portwatch_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&deb))?;
    Ok(deb)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Installs into a scratch root with its own dpkg database, checks, purges.
fn test(deb: &Path) -> Result<()> {
    let scratch = root().join("target/debian/root");
    let _ = fs::remove_dir_all(&scratch);
    let db = scratch.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        fs::create_dir_all(db.join(d))?;
    }
    fs::write(db.join("status"), "")?;
    fs::write(db.join("available"), "")?;
    let dpkg = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new("dpkg");
        // The scratch root has no libc6 entry and no /bin/sh to chroot
        // into: the maintainer scripts run from here, and see no systemd.
        cmd.arg(format!("--root={}", scratch.display()))
            .args([
                "--force-depends",
                "--force-script-chrootless",
                "--log=/dev/null",
            ])
            .args(args);
        run(&mut cmd)
    };
    dpkg(&["-i", deb.to_str().unwrap()])?;
    let installed = scratch.join("usr/bin/portwatch");
    let version = output(Command::new(&installed).arg("--version"))?;
    if !version.starts_with("portwatch ") {
        bail!("installed portwatch --version printed {version:?}");
    }
    let help = output(Command::new(&installed).args(["watch", "--help"]))?;
    if !help.contains("--metrics") {
        bail!("installed portwatch watch --help has no --metrics");
    }
    // `who` from the installed path, in a namespace of its own (nothing
    // listens there: exit 0 and an answer that says so).
    let who = Command::new("unshare")
        .args(["--net", "--"])
        .arg(&installed)
        .args(["who", "8080"])
        .output()?;
    let said = String::from_utf8_lossy(&who.stdout);
    if who.status.code() != Some(0) || !said.contains("no socket on tcp port 8080") {
        bail!(
            "installed portwatch who 8080: {:?}: {said}{}",
            who.status,
            String::from_utf8_lossy(&who.stderr)
        );
    }
    let listed = output(
        Command::new("dpkg")
            .arg(format!("--root={}", scratch.display()))
            .args(["-L", "portwatch"]),
    )?;
    for path in [
        "/usr/bin/portwatch",
        "/lib/systemd/system/portwatch.service",
        "/usr/share/man/man1/portwatch.1.gz",
        "/usr/share/bash-completion/completions/portwatch",
        "/usr/share/zsh/vendor-completions/_portwatch",
        "/usr/share/fish/vendor_completions.d/portwatch.fish",
        "/usr/share/doc/portwatch/copyright",
        "/usr/share/doc/portwatch/README.md.gz",
    ] {
        if !listed.lines().any(|l| l == path) {
            bail!("{path} is not in the package: {listed}");
        }
    }
    // The man page renders without warnings.
    let man = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(scratch.join("usr/share/man/man1/portwatch.1.gz"))
        .env("MANPAGER", "cat")
        .output()?;
    if !man.status.success() || !String::from_utf8_lossy(&man.stdout).contains("--metrics") {
        bail!("man -l failed: {}", String::from_utf8_lossy(&man.stderr));
    }
    check_unit(&scratch)?;
    dpkg(&["-P", "portwatch"])?;
    let left: Vec<_> = [
        "usr/bin/portwatch",
        "lib/systemd/system/portwatch.service",
        "usr/share/doc/portwatch",
    ]
    .iter()
    .filter(|p| scratch.join(p).exists())
    .collect();
    if !left.is_empty() {
        bail!("dpkg -P left {left:?} behind");
    }
    fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// `systemd-analyze verify` on the installed unit and its `security`
/// exposure. verify runs against this machine's units (a scratch root has
/// no sysinit.target), on a copy whose ExecStart is the installed binary.
fn check_unit(scratch: &Path) -> Result<()> {
    let unit = scratch.join("lib/systemd/system/portwatch.service");
    let check = scratch.join("check/portwatch.service");
    fs::create_dir_all(check.parent().unwrap())?;
    let bin = scratch.join("usr/bin/portwatch");
    fs::write(
        &check,
        fs::read_to_string(&unit)?.replace("/usr/bin/portwatch", bin.to_str().unwrap()),
    )?;
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&check)
        .output()?;
    let said = String::from_utf8_lossy(&verify.stderr);
    if !verify.status.success() || said.lines().any(|l| l.contains("portwatch.service")) {
        bail!("systemd-analyze verify: {said}");
    }
    let security = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit),
    )?;
    let exposure: f64 = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for portwatch.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no exposure level in: {security}"))?;
    println!("systemd-analyze security: exposure {exposure}");
    if exposure > MAX_EXPOSURE {
        bail!("the unit's exposure is {exposure}, above {MAX_EXPOSURE}");
    }
    Ok(())
}
