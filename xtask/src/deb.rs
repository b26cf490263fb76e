//! `cargo xtask deb [--test]`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in portwatch/Cargo.toml (`$auto` dependencies,
//! the systemd unit and its maintainer scripts come from it).
//!
//! One step is added after it: cargo-deb has written no checksums since 2.8
//! (lintian objected to its sha256sums), so the package is repacked with
//! the md5sums file dh_md5sums would add, which `dpkg --verify` checks.
//!
//! What the package ships but the tree does not hold is written first from
//! the built binary into release/deb/ of the target directory cargo-deb
//! reads (see [`Profile::target_dir`]): the man pages (`portwatch man
//! --dir`), the completions (`portwatch completions SHELL`), so they match
//! its --help; the Debian copyright file, the gzipped README and the
//! gzipped pages of docs/ it links to. Nothing generated is committed.
//! cargo-deb itself is installed by `setup`.
//!
//! `--test` installs the package with `dpkg -i` into a private root with its
//! own dpkg database (never into this machine's /usr), runs the installed
//! binary, checks the md5sums, renders every man page, verifies the
//! installed unit with systemd-analyze, and purges it.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::{build_release, output, root, run, setup};

/// Options of `cargo xtask deb`.
#[derive(clap::Args)]
pub struct DebArgs {
    /// Then install it into a scratch root with dpkg, run it, and purge it.
    #[arg(long)]
    test: bool,
}

/// Highest `systemd-analyze security` exposure accepted for the unit
/// (0 = fully locked down, 10 = nothing; it scores 3.7 offline today).
const MAX_EXPOSURE: f64 = 4.0;

/// Where the package puts the binary (a root-only tool: /usr/sbin).
const BIN: &str = "usr/sbin/portwatch";
/// Where cargo-deb installs the unit.
const UNIT: &str = "usr/lib/systemd/system/portwatch.service";

/// The cargo profile whose binary is packaged.
#[derive(Clone, Copy)]
pub enum Profile {
    /// `cargo xtask deb`: what is shipped.
    Release,
    /// The package tests: the debug binary the test run has just built.
    Dev,
}

impl Profile {
    /// Where cargo put this profile's binary.
    fn binary(self) -> PathBuf {
        root().join("target").join(match self {
            Profile::Release => "release/portwatch",
            Profile::Dev => "debug/portwatch",
        })
    }

    /// The target directory cargo-deb reads: its `release/` holds the binary
    /// and the generated assets. cargo-deb makes releases: given `--profile
    /// dev` it warns that the dev profile "is not supported and will be a
    /// hard error". The package tests pack the debug build (a cold release
    /// build would add minutes to CI for nothing they check), so its binary
    /// is linked into a target directory of its own as that directory's
    /// release binary, and cargo-deb is asked for the release profile there.
    fn target_dir(self) -> PathBuf {
        match self {
            Profile::Release => root().join("target"),
            Profile::Dev => root().join("target/debian/dev"),
        }
    }
}

/// Builds target/debian/portwatch_VERSION-1_ARCH.deb; with --test, checks it.
pub fn run_deb(opts: &DebArgs) -> Result<()> {
    build_release()?;
    let deb = build(Profile::Release)?;
    println!("built {}", deb.display());
    if opts.test {
        test(&deb)?;
        println!("deb test passed: installed, ran, verified md5sums, pages and unit, purged");
    }
    Ok(())
}

/// Builds and tests the package around the debug binary the test run has
/// just built (the full `cargo xtask test` runs this): what is checked is
/// the package (layout, md5sums, install, the installed binary running, the
/// pages, the unit, purge), and a cold release build would add minutes to
/// CI for nothing the package test can see. `cargo xtask deb` ships the
/// release build.
pub fn build_and_test() -> Result<()> {
    run(crate::cargo().args(["build", "--package", "portwatch"]))?;
    let deb = build(Profile::Dev)?;
    test(&deb)?;
    println!("deb test passed: installed, ran, verified md5sums, pages and unit, purged");
    Ok(())
}

/// Writes the generated assets, then runs cargo-deb on the already built
/// binary; returns the .deb's path.
pub(crate) fn build(profile: Profile) -> Result<PathBuf> {
    setup::ensure_cargo_deb()?;
    let target = profile.target_dir();
    let release = target.join("release");
    if let Profile::Dev = profile {
        let _ = fs::remove_dir_all(&target);
        fs::create_dir_all(&release)?;
        // A hard link: nothing is copied, and cargo-deb writes nothing back
        // (it strips into a file of its own, and not at all here).
        fs::hard_link(profile.binary(), release.join("portwatch"))
            .context("link the debug binary into the package's target directory")?;
    }
    generate(&release.join("portwatch"), &release.join("deb"))?;
    let out = root().join("target/debian");
    fs::create_dir_all(&out)?;
    let mut cargo_deb = crate::cargo();
    cargo_deb
        .args([
            "deb",
            "--package",
            "portwatch",
            "--no-build",
            "--profile",
            "release",
        ])
        .arg("--output")
        .arg(&out)
        .env("CARGO_TARGET_DIR", &target)
        .stderr(Stdio::inherit());
    if let Profile::Dev = profile {
        // The test binary keeps its symbols, so a panic in the test VM
        // prints a readable backtrace.
        cargo_deb.arg("--no-strip");
    }
    let said = output(&mut cargo_deb)?;
    let deb = said
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .with_context(|| format!("cargo deb named no .deb: {said}"))?;
    let deb = PathBuf::from(deb);
    add_md5sums(&deb, &out.join("tree"))?;
    Ok(deb)
}

/// Unpacks `deb` into `tree`, writes DEBIAN/md5sums (every file, as
/// `MD5  path` relative to /) and packs it again in place.
fn add_md5sums(deb: &Path, tree: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(tree);
    run(Command::new("dpkg-deb")
        .arg("--raw-extract")
        .arg(deb)
        .arg(tree))?;
    let files = output(
        Command::new("find")
            .args([
                ".", "-path", "./DEBIAN", "-prune", "-o", "-type", "f", "-printf", "%P\\n",
            ])
            .current_dir(tree),
    )?;
    let mut files: Vec<&str> = files.lines().collect();
    files.sort_unstable();
    let sums = output(Command::new("md5sum").args(&files).current_dir(tree))?;
    fs::write(tree.join("DEBIAN/md5sums"), sums)?;
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(tree)
        .arg(deb)
        .stdout(Stdio::null()))?;
    fs::remove_dir_all(tree)?;
    Ok(())
}

/// Writes what the package ships but the tree does not hold into `dir`.
fn generate(bin: &Path, dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let pages = output(
        Command::new(bin)
            .arg("man")
            .arg("--dir")
            .arg(dir.join("man")),
    )?;
    for page in pages.lines().map(Path::new) {
        let gz = page.with_extension("8.gz");
        fs::write(&gz, gzip(&fs::read(page)?)?)?;
        fs::remove_file(page)?;
    }
    for (shell, file) in [
        ("bash", "portwatch.bash"),
        ("zsh", "_portwatch"),
        ("fish", "portwatch.fish"),
    ] {
        let text = output(Command::new(bin).args(["completions", shell]))?;
        fs::write(dir.join(file), text)?;
    }
    fs::write(
        dir.join("README.md.gz"),
        gzip(&fs::read(root().join("README.md"))?)?,
    )?;
    // The README's links to docs/NAME.md land on docs/NAME.md.gz beside it.
    fs::create_dir_all(dir.join("docs"))?;
    for page in docs()? {
        fs::write(
            dir.join("docs").join(format!("{page}.gz")),
            gzip(&fs::read(root().join("docs").join(&page))?)?,
        )?;
    }
    fs::write(dir.join("copyright"), copyright()?)?;
    Ok(())
}

/// The file names of docs/*.md, sorted.
fn docs() -> Result<Vec<String>> {
    let mut pages = Vec::new();
    for entry in fs::read_dir(root().join("docs")).context("read docs/")? {
        let name = entry?.file_name();
        let name = name.to_str().context("a non-UTF-8 name in docs/")?;
        if name.ends_with(".md") {
            pages.push(name.to_owned());
        }
    }
    pages.sort_unstable();
    Ok(pages)
}

/// Debian's machine-readable copyright file, with each licence's full text
/// (MIT is not in /usr/share/common-licenses).
fn copyright() -> Result<String> {
    let mut text = String::from(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: portwatch\n\n\
         Files: *\nCopyright: the portwatch developers\nLicense: MIT or Apache-2.0\n\n\
         Files: portwatch-ebpf/*\nCopyright: the portwatch developers\n\
         Comment: the eBPF programs embedded in /usr/sbin/portwatch\nLicense: GPL-2.0-only\n\n",
    );
    for (file, licence) in [
        ("LICENSE-MIT", "MIT"),
        ("LICENSE-APACHE", "Apache-2.0"),
        ("LICENSE-GPL2", "GPL-2.0-only"),
    ] {
        let body = fs::read_to_string(root().join(file))?;
        text.push_str(&format!("License: {licence}\n"));
        for line in body.lines() {
            // Continuation lines start with a space, empty ones are " .".
            if line.trim().is_empty() {
                text.push_str(" .\n");
            } else {
                text.push_str(&format!(" {line}\n"));
            }
        }
        text.push('\n');
    }
    Ok(text)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // -n: no name or time stamp, so the package is reproducible.
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("gzip")?;
    child.stdin.take().unwrap().write_all(bytes)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

/// A scratch root with a dpkg database of its own.
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new() -> Result<Scratch> {
        let root = root().join("target/debian/root");
        let _ = fs::remove_dir_all(&root);
        let db = root.join("var/lib/dpkg");
        for d in ["info", "updates", "triggers"] {
            fs::create_dir_all(db.join(d))?;
        }
        fs::write(db.join("status"), "")?;
        fs::write(db.join("available"), "")?;
        Ok(Scratch { root })
    }

    /// `dpkg --root=SCRATCH ARGS`, returning its stdout. The scratch root has
    /// no libc6 entry and no /bin/sh to chroot into, so the maintainer
    /// scripts run from here (dpkg sets DPKG_ROOT for them, which
    /// deb-systemd-helper honours), in a mount namespace where this
    /// machine's systemd is hidden, so they cannot reach it.
    fn dpkg(&self, args: &[&str]) -> Result<String> {
        output(&mut self.dpkg_command(args))
    }

    fn dpkg_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("if [ -d /run/systemd ]; then mount -t tmpfs none /run/systemd; fi; exec \"$@\"")
            .args(["sh", "dpkg"])
            .arg(format!("--root={}", self.root.display()))
            .args([
                "--force-depends",
                "--force-script-chrootless",
                "--log=/dev/null",
            ])
            .args(args);
        cmd
    }

    fn path(&self, installed: &str) -> PathBuf {
        self.root.join(installed.trim_start_matches('/'))
    }
}

/// Strings only the `test-hooks` feature puts in the binary: its flags,
/// their values, and the names of the settings behind them.
const TEST_HOOK_STRINGS: &[&str] = &[
    "test-kernel-quirks",
    "enrich-delay",
    "fold-table-size",
    "tracepoint-args",
    "kernel_quirks",
    "no_casts",
    "no_sk_head",
    "no_raw_state",
    "bad_offset",
    "bad-offset",
    "test-classic-state",
];

/// Which of [`TEST_HOOK_STRINGS`] `binary` holds.
fn test_hooks_in(binary: &[u8]) -> Vec<&'static str> {
    TEST_HOOK_STRINGS
        .iter()
        .copied()
        .filter(|s| binary.windows(s.len()).any(|w| w == s.as_bytes()))
        .collect()
}

/// Installs into a scratch root with its own dpkg database, checks, purges.
fn test(deb: &Path) -> Result<()> {
    let deb_str = deb.to_str().context("non-UTF-8 path")?;
    let fields = output(Command::new("dpkg-deb").args(["-f", deb_str, "Section", "Depends"]))?;
    if !fields.contains("Section: admin") || !fields.contains("libc6") {
        bail!("control fields: {fields}");
    }
    let md5sums = output(Command::new("dpkg-deb").args(["-I", deb_str, "md5sums"]))
        .context("the package has no md5sums")?;
    never_starts(deb_str)?;

    let scratch = Scratch::new()?;
    scratch.dpkg(&["-i", deb_str])?;
    let installed = scratch.path(BIN);
    let version = output(Command::new(&installed).arg("--version"))?;
    if !version.starts_with("portwatch ") {
        bail!("installed portwatch --version printed {version:?}");
    }
    let help = output(Command::new(&installed).args(["watch", "--help"]))?;
    if !help.contains("--metrics") {
        bail!("installed portwatch watch --help has no --metrics");
    }
    // The tests' machinery (feature `test-hooks`) never ships: neither its
    // hidden flags nor the code behind them.
    let left = test_hooks_in(&fs::read(&installed)?);
    if !left.is_empty() {
        bail!("the installed portwatch carries test machinery: {left:?}");
    }
    let hook = Command::new(&installed)
        .args(["watch", "--enrich-delay", "1"])
        .output()?;
    if hook.status.code() != Some(2)
        || !String::from_utf8_lossy(&hook.stderr).contains("unexpected argument '--enrich-delay'")
    {
        bail!("the installed portwatch accepts the test-only --enrich-delay: {hook:?}");
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

    let listed = scratch.dpkg(&["-L", "portwatch"])?;
    let files: Vec<&str> = listed
        .lines()
        .filter(|l| scratch.path(l).is_file())
        .collect();
    let pages: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| f.starts_with("/usr/share/man/man8/"))
        .collect();
    let mut wanted = vec![
        format!("/{BIN}"),
        format!("/{UNIT}"),
        "/usr/share/bash-completion/completions/portwatch".into(),
        "/usr/share/zsh/vendor-completions/_portwatch".into(),
        "/usr/share/fish/vendor_completions.d/portwatch.fish".into(),
        "/usr/share/doc/portwatch/copyright".into(),
        "/usr/share/doc/portwatch/README.md.gz".into(),
        "/usr/share/doc/portwatch/LICENSE-MIT".into(),
        "/usr/share/doc/portwatch/LICENSE-APACHE".into(),
        "/usr/share/doc/portwatch/LICENSE-GPL2".into(),
    ];
    wanted.extend(
        docs()?
            .into_iter()
            .map(|page| format!("/usr/share/doc/portwatch/docs/{page}.gz")),
    );
    // portwatch(8) and one page per subcommand, as the binary lists them.
    let help = output(Command::new(&installed).arg("--help"))?;
    wanted.extend(
        std::iter::once("/usr/share/man/man8/portwatch.8.gz".to_owned())
            .chain(subcommands(&help).map(|s| format!("/usr/share/man/man8/portwatch-{s}.8.gz"))),
    );
    for path in &wanted {
        if !files.contains(&path.as_str()) {
            bail!("{path} is not in the package: {listed}");
        }
    }
    if pages.len() != wanted.iter().filter(|w| w.contains("/man8/")).count() {
        bail!("man pages {pages:?}, but the subcommands are: {help}");
    }

    // Installed, not enabled: deb-systemd-helper (under DPKG_ROOT) makes no
    // .wants link.
    let wants = output(
        Command::new("find")
            .arg(scratch.root.join("etc"))
            .args(["-name", "portwatch.service"]),
    )
    .unwrap_or_default();
    if !wants.trim().is_empty() {
        bail!("installing the package enabled the unit: {wants}");
    }
    check_md5sums(&scratch, &md5sums, &files)?;
    for page in &pages {
        check_page(&scratch.path(page))?;
    }
    check_unit(&scratch)?;

    scratch.dpkg(&["-P", "portwatch"])?;
    let left: Vec<&&str> = files.iter().filter(|f| scratch.path(f).exists()).collect();
    if !left.is_empty() {
        bail!("dpkg -P left {left:?} behind");
    }
    for state in ["etc/systemd", "var/lib/systemd"] {
        let found = output(
            Command::new("find")
                .arg(scratch.root.join(state))
                .args(["-name", "*portwatch*"]),
        )
        .unwrap_or_default();
        if !found.trim().is_empty() {
            bail!("dpkg -P left systemd state behind: {found}");
        }
    }
    fs::remove_dir_all(&scratch.root)?;
    Ok(())
}

/// The subcommands `portwatch --help` lists (but `help`).
fn subcommands(help: &str) -> impl Iterator<Item = &str> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Wrapped descriptions are indented further.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
}

/// The unit is never enabled or started by the package: the maintainer
/// scripts hold no start, and only re-enable what the admin had enabled.
fn never_starts(deb: &str) -> Result<()> {
    for script in ["postinst", "prerm", "postrm"] {
        let text = output(Command::new("dpkg-deb").args(["-I", deb, script])).unwrap_or_default();
        for line in text.lines().map(str::trim) {
            let starts = line.contains("invoke start")
                || line.contains("systemctl start")
                || line.contains("--now");
            if starts {
                bail!("{script} starts the unit: {line}");
            }
        }
    }
    Ok(())
}

/// md5sums covers every installed file, `dpkg --verify` passes, and fails
/// once a file is changed.
fn check_md5sums(scratch: &Scratch, md5sums: &str, files: &[&str]) -> Result<()> {
    for file in files {
        let rel = file.trim_start_matches('/');
        if !md5sums.lines().any(|l| l.ends_with(&format!("  {rel}"))) {
            bail!("{file} is not in md5sums: {md5sums}");
        }
    }
    // dpkg computes sums at unpack for a package without them: these must
    // be the package's own.
    let db = fs::read_to_string(scratch.path("/var/lib/dpkg/info/portwatch.md5sums"))?;
    if db != md5sums {
        bail!("dpkg's md5sums are not the package's: {db}");
    }
    let verify = scratch.dpkg(&["--verify", "portwatch"])?;
    if !verify.trim().is_empty() {
        bail!("dpkg --verify: {verify}");
    }
    let licence = scratch.path("/usr/share/doc/portwatch/LICENSE-MIT");
    let text = fs::read(&licence)?;
    fs::write(&licence, [text.as_slice(), b"\n"].concat())?;
    let changed = scratch.dpkg_command(&["--verify", "portwatch"]).output();
    fs::write(&licence, &text)?;
    let changed = changed?;
    let said = String::from_utf8_lossy(&changed.stdout);
    // One line per changed file, "??5?????? /path" (5: its md5 differs);
    // the exit status stays 0.
    if !said
        .lines()
        .any(|l| l.starts_with("??5") && l.ends_with("/LICENSE-MIT"))
    {
        bail!(
            "dpkg --verify did not notice a changed file: {:?}: {said}",
            changed.status
        );
    }
    Ok(())
}

/// The page renders without warnings, in section 8 under its own name.
fn check_page(page: &Path) -> Result<()> {
    let name = page
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".8.gz"))
        .with_context(|| format!("{} is not NAME.8.gz", page.display()))?;
    let man = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()?;
    let text = String::from_utf8_lossy(&man.stdout);
    let header = format!("{}(8)", name.to_uppercase());
    if !man.status.success() || !man.stderr.is_empty() || !text.starts_with(&header) {
        bail!(
            "man -l {}: {}\n{text}",
            page.display(),
            String::from_utf8_lossy(&man.stderr)
        );
    }
    Ok(())
}

/// `systemd-analyze verify` on the installed unit and its `security`
/// exposure. verify runs against this machine's units (a scratch root has
/// no sysinit.target), on a copy whose ExecStart is the installed binary.
fn check_unit(scratch: &Scratch) -> Result<()> {
    let unit = scratch.path(UNIT);
    let text = fs::read_to_string(&unit)?;
    if !text.contains(&format!("ExecStart=/{BIN} ")) {
        bail!("the unit does not start /{BIN}");
    }
    let check = scratch.root.join("check/portwatch.service");
    fs::create_dir_all(check.parent().unwrap())?;
    let bin = scratch.path(BIN);
    fs::write(
        &check,
        text.replace(&format!("/{BIN}"), bin.to_str().unwrap()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hooks_are_found_in_a_binary() {
        assert!(test_hooks_in(b"\x7fELF clap --help \0 usage").is_empty());
        assert_eq!(
            test_hooks_in(b"\0--test-kernel-quirks\0no_casts"),
            ["test-kernel-quirks", "no_casts"]
        );
    }
}
