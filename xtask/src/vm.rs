//! `cargo xtask vm-test`: the integration tests on other real kernels (every
//! one in [`kernels::KERNELS`]), booted under qemu, once per backend.
//!
//! The initramfs holds busybox, the test binaries, the portwatch binary at
//! the path the tests were compiled with, their shared libraries, and the
//! kernel's own sock_diag modules. Its init runs the tests with
//! `PORTWATCH_TEST_BACKEND` set to each backend and prints markers on the
//! serial console, which this side reads.
//!
//! The kernels' VMs run at the same time (`XTASK_VM_JOBS=1` runs them one
//! after another): the suites mostly wait on timers, so two TCG guests on two
//! host cores take about as long as one. Each VM's whole console goes to
//! `.cache/vm/RELEASE/serial.log`; the tests' part also to stderr, prefixed
//! with the release. The command fails if any kernel does not boot or finish,
//! or any suite with any backend fails or runs no test. Then the suite under
//! systemd as PID 1 runs ([`crate::vm_systemd`]).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    cargo, kernels,
    qemu::{self, cpio, Qemu},
    root, run, setup,
};

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
    // Hundreds of forked processes: minutes under TCG, and what it checks
    // (user space sweeping the fold table) does not depend on the kernel.
    "fold_table_full_of_stale_keys_still_folds_a_fresh_storm",
    // 30,000 failures paced at 5 k/s: minutes under TCG, and
    // what it checks (user space shedding lookups) does not depend on the
    // kernel.
    "lookups_slower_than_a_burst_are_shed_not_events",
    // nft (Debian's nftables) and iptables-legacy are not in the VM;
    // kube_proxy.rs's IPVS test is what runs there.
    "nftables_node_port_names_its_service",
    "nftables_ipv6_node_port_names_its_service",
    "nftables_external_ip_names_its_service",
    "iptables_legacy_node_port_names_its_service",
];

/// Test binaries to run in the VM.
const SUITES: &[&str] = &[
    "capture",
    "cli",
    "holders",
    "who",
    "wait",
    "io_uring",
    "model",
    "kube_proxy",
    "owners",
];

/// What `cargo xtask vm-test --suite S --kernel K` narrows the run to
/// (a developer's quick loop); the full run, as `cargo xtask test` makes
/// it, takes every suite on every kernel and then the systemd VM.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// Suites to run (all of [`SUITES`] when empty).
    pub suites: Vec<String>,
    /// Only kernels whose release contains this.
    pub kernel: Option<String>,
}

impl Selection {
    /// Whether this is the full run.
    fn is_full(&self) -> bool {
        self.suites.is_empty() && self.kernel.is_none()
    }
}

/// The suites this run takes (set once by [`run_selected`]; every suite otherwise).
static CHOSEN: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();

/// The suites this run takes.
fn suites() -> &'static [&'static str] {
    CHOSEN.get().map_or(SUITES, Vec::as_slice)
}

/// Backends every suite runs with.
const BACKENDS: &[&str] = &["fexit", "tracepoint"];

/// How long one kernel may take, boot to power-off.
const TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// VMs booted at once (one qemu process each).
const PARALLEL_VMS: usize = 2;

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
    for suite in suites() {
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
        if suites().contains(&name) {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    if found.len() != suites().len() {
        bail!("expected test binaries {:?}, found {found:?}", suites());
    }
    Ok(found)
}

fn init_script(modules: &[PathBuf]) -> String {
    // Tests ignored on the host are those that need what only the VM has
    // (the vrf module): they run here.
    let skips: String = std::iter::once(" --include-ignored".to_owned())
        .chain(HOST_ONLY.iter().map(|t| format!(" --skip {t}")))
        .collect();
    let mut s = qemu::init_start(modules, "PORTWATCH_URING_HELPER=/uring_helper");
    for backend in BACKENDS {
        for suite in suites() {
            s.push_str(&format!(
                "PORTWATCH_TEST_BACKEND={backend} PORTWATCH_EXPECT_AUTO=fexit PORTWATCH_TEST_VM=1 /t/{suite} --test-threads=1{skips}\n\
                 echo \"VMTEST suite={suite} backend={backend} rc=$?\"\n"
            ));
        }
    }
    s.push_str("echo VMTEST done\npoweroff -f\n");
    s
}

fn work_dir() -> PathBuf {
    root().join(".cache/vm")
}

/// Writes the part of the initramfs every kernel shares (busybox, the test
/// binaries, portwatch, their libraries) and returns its path.
fn common_initramfs(suites: &[(String, PathBuf)], portwatch: &Path) -> Result<PathBuf> {
    let work = work_dir();
    let tree = work.join("root");
    let mut programs = vec![(portwatch.to_path_buf(), portwatch.to_path_buf())];
    // The tests find portwatch at the absolute path they were built with.
    for (name, exe) in suites {
        programs.push((exe.clone(), Path::new("/t").join(name)));
    }
    qemu::busybox_tree(&tree, &programs)?;
    // Without their debug info: the debug builds' test binaries are mostly
    // DWARF (the initramfs grew past what 2 GiB of RAM unpacks: "Initramfs
    // unpacking failed: write error"). Panics still name file:line.
    for (_, dest) in &programs {
        let copy = tree.join(dest.strip_prefix("/").unwrap_or(dest));
        run(Command::new("objcopy").arg("--strip-debug").arg(&copy))?;
    }
    // The io_uring suite's C helper: built here (the VM has no gcc), static
    // so it needs no libraries; the suite finds it through
    // PORTWATCH_URING_HELPER. Named as the tests expect its comm.
    let helper = work.join("uring_helper");
    run(Command::new("gcc")
        .args(["-O2", "-Wall", "-static", "-o"])
        .arg(&helper)
        .arg(root().join("portwatch/tests/uring_helper.c")))?;
    qemu::copy_into(&tree, &helper, Path::new("/uring_helper"))?;
    let image = work.join("common.cpio.gz");
    cpio(&tree, &image)?;
    std::fs::remove_dir_all(&tree)?;
    Ok(image)
}

/// libtest's closing line of one test binary.
#[derive(Default, Clone, Copy)]
struct Counts {
    ok: bool,
    passed: usize,
    failed: usize,
    ignored: usize,
    filtered: usize,
}

impl Counts {
    /// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 6 filtered out; ...`
    fn parse(line: &str) -> Option<Counts> {
        let rest = line.strip_prefix("test result: ")?;
        let mut c = Counts {
            ok: rest.starts_with("ok."),
            ..Counts::default()
        };
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse() else { continue };
            match what {
                "passed" => c.passed = n,
                "failed" => c.failed = n,
                "ignored" => c.ignored = n,
                "filtered" => c.filtered = n,
                _ => {}
            }
        }
        Some(c)
    }
}

/// One suite run with one backend in one VM.
struct SuiteRun {
    suite: String,
    backend: String,
    rc: i32,
    /// From libtest's `running N tests`.
    running: Option<usize>,
    counts: Option<Counts>,
}

impl SuiteRun {
    /// Why this run does not count as a pass, if it does not.
    fn problem(&self) -> Option<String> {
        match (self.running, self.counts) {
            (None, _) | (_, None) => Some(format!(
                "exit status {}, no libtest summary (crashed?)",
                self.rc
            )),
            (Some(0), _) => Some("found 0 tests".into()),
            (_, Some(c)) if !c.ok || c.failed > 0 || self.rc != 0 => {
                Some(format!("{} failed, exit status {}", c.failed, self.rc))
            }
            (_, Some(c)) if c.passed == 0 => Some("0 tests passed".into()),
            _ => None,
        }
    }
}

/// What one kernel's VM did.
struct Outcome {
    kernel: String,
    seconds: f64,
    log: PathBuf,
    runs: Vec<SuiteRun>,
    /// Why the VM as a whole failed (did not boot, finish, or run every suite).
    error: Option<String>,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.error.is_none() && self.runs.iter().all(|r| r.problem().is_none())
    }

    /// The kernel died before the init script ran (no test ran at all).
    fn never_booted(&self) -> bool {
        self.runs.is_empty()
            && self
                .error
                .as_deref()
                .is_some_and(|e| e.contains("did not boot to the init script"))
    }
}

/// Boots `kernel`, and once more if it died before the init script: under
/// TCG a kernel can oops during boot (seen once with 6.12: an int3 left by
/// live code patching, in `hrtimer_start_range_ns`, 1.4 s in), before any
/// test could run. A retry hides no test failure; both are said on stderr
/// and the first console log is kept beside the second.
fn boot_with_retry(kernel: &kernels::Kernel, initrd: &Path) -> Outcome {
    let first = boot(kernel, initrd);
    if !first.never_booted() {
        return first;
    }
    let kept = first.log.with_file_name("serial.first.log");
    let _ = std::fs::rename(&first.log, &kept);
    eprintln!(
        "xtask: {}: the kernel did not reach the init script (console log kept in {}); booting it once more",
        first.kernel,
        kept.display()
    );
    boot(kernel, initrd)
}

/// What the console said so far, line by line.
struct Console {
    release: String,
    booted: bool,
    done: bool,
    /// `running N tests` and `test result: ...` of the suite now running.
    running: Option<usize>,
    counts: Option<Counts>,
    runs: Vec<SuiteRun>,
    /// A problem of the VM as a whole, seen on the console.
    error: Option<String>,
}

impl Console {
    fn new(release: &str) -> Console {
        Console {
            release: release.to_owned(),
            booted: false,
            done: false,
            running: None,
            counts: None,
            runs: Vec::new(),
            error: None,
        }
    }

    /// Takes one console line (without its line end); returns it as it
    /// should be shown, or None for boot noise before the init script.
    fn feed<'a>(&mut self, line: &'a str) -> Option<&'a str> {
        // The first console line starts with the firmware's terminal resets.
        let line = line.find("VMTEST ").map_or(line, |at| &line[at..]);
        if let Some(seen) = line.strip_prefix("VMTEST kernel ") {
            self.booted = true;
            if seen.trim() != self.release {
                self.error = Some(format!(
                    "booted kernel {seen:?}, expected {:?}",
                    self.release
                ));
            }
        }
        if let Some(name) = line.strip_prefix("VMTEST insmod-failed ") {
            self.error = Some(format!("insmod {name} failed"));
        }
        if let Some(n) = line
            .strip_prefix("running ")
            .and_then(|r| r.strip_suffix(" tests").or_else(|| r.strip_suffix(" test")))
            .and_then(|n| n.parse().ok())
        {
            self.running = Some(n);
        }
        if let Some(c) = Counts::parse(line) {
            self.counts = Some(c);
        }
        if let Some(rest) = line.strip_prefix("VMTEST suite=") {
            // `capture backend=fexit rc=0`
            let mut words = rest.split_whitespace();
            let suite = words.next().unwrap_or_default().to_owned();
            let (mut backend, mut rc) = (String::new(), -1);
            for w in words {
                if let Some(b) = w.strip_prefix("backend=") {
                    backend = b.to_owned();
                } else if let Some(r) = w.strip_prefix("rc=") {
                    rc = r.parse().unwrap_or(-1);
                }
            }
            self.runs.push(SuiteRun {
                suite,
                backend,
                rc,
                running: self.running.take(),
                counts: self.counts.take(),
            });
        }
        if line == "VMTEST done" {
            self.done = true;
        }
        // Everything from the tests passes through (failures need their
        // messages); boot noise before them does not.
        self.booted.then_some(line)
    }

    /// The VM has stopped (or was stopped after `timed_out`): what it ran,
    /// and its error if it did not boot, finish, or run every suite.
    fn finish(self, timed_out: bool) -> (Vec<SuiteRun>, Option<String>) {
        let error = if !self.booted {
            Some("the kernel did not boot to the init script".to_owned())
        } else if !self.done && timed_out {
            Some(format!(
                "the VM did not finish within {TIMEOUT:?} (hung test?)"
            ))
        } else if !self.done {
            Some("the VM stopped before the end of the init script (kernel panic?)".to_owned())
        } else if let Some(e) = self.error {
            Some(e)
        } else {
            BACKENDS
                .iter()
                .flat_map(|b| suites().iter().map(move |s| (b, s)))
                .find(|(b, s)| !self.runs.iter().any(|r| r.suite == **s && r.backend == **b))
                .map(|(b, s)| format!("suite {s} with backend {b} did not run"))
        };
        (self.runs, error)
    }
}

/// Boots `kernel` with `initrd`, passes the tests' console output through
/// to stderr (each line prefixed with the release) and the whole console to
/// `serial.log` beside the initramfs; returns what every suite did.
fn boot(kernel: &kernels::Kernel, initrd: &Path) -> Outcome {
    let log = initrd.with_file_name("serial.log");
    let started = Instant::now();
    let mut outcome = Outcome {
        kernel: if kernel.package == kernel.image {
            format!("{} ({})", kernel.release, kernel.image)
        } else {
            format!(
                "{} ({} -> {})",
                kernel.release, kernel.package, kernel.image
            )
        },
        seconds: 0.0,
        log: log.clone(),
        runs: Vec::new(),
        error: None,
    };
    match boot_into(kernel, initrd, &log) {
        Ok((runs, error)) => {
            outcome.runs = runs;
            outcome.error = error.map(|e| format!("{e} (see the console log)"));
        }
        Err(e) => outcome.error = Some(format!("{e:#}")),
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    outcome
}

fn boot_into(
    kernel: &kernels::Kernel,
    initrd: &Path,
    log: &Path,
) -> Result<(Vec<SuiteRun>, Option<String>)> {
    let release = &kernel.release;
    let mut console = Console::new(release);
    let qemu = Qemu {
        vmlinuz: &kernel.vmlinuz,
        initrd,
        memory_mib: 2048,
        // Debian's kernels preempt voluntarily by default; full preemption
        // lets another task's program run in the middle of an fexit
        // program on its CPU, which the per-CPU buffers must withstand.
        append: "console=ttyS0 quiet panic=-1 preempt=full",
        timeout: TIMEOUT,
    };
    let timed_out = qemu.run(log, |line| {
        if let Some(shown) = console.feed(line) {
            writeln!(std::io::stderr().lock(), "vm {release}: {shown}")?;
        }
        Ok(())
    })?;
    Ok(console.finish(timed_out))
}

/// Prints every kernel's result table; returns whether all passed.
fn report(outcomes: &[Outcome]) -> bool {
    let mut all = true;
    eprintln!("\nxtask: VM test results");
    for o in outcomes {
        all &= o.passed();
        eprintln!(
            "  {} {}: {:.0}s, console log {}",
            if o.passed() { "PASS" } else { "FAIL" },
            o.kernel,
            o.seconds,
            o.log.display()
        );
        if let Some(e) = &o.error {
            eprintln!("       {e}");
        }
        for r in &o.runs {
            let counts = match r.counts {
                Some(c) => format!(
                    "{} passed, {} failed, {} ignored, {} filtered out",
                    c.passed, c.failed, c.ignored, c.filtered
                ),
                None => "no summary".into(),
            };
            let problem = r.problem();
            eprintln!(
                "    {} {:<10} {:<8} {counts}{}",
                if problem.is_none() { "ok  " } else { "FAIL" },
                r.backend,
                r.suite,
                problem.map(|p| format!(" ({p})")).unwrap_or_default()
            );
        }
    }
    all
}

/// How many VMs run at once; `XTASK_VM_JOBS` overrides.
fn jobs() -> usize {
    std::env::var("XTASK_VM_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .filter(|&j| j > 0)
        .unwrap_or(PARALLEL_VMS)
}

/// Runs the integration tests in a VM of every kernel in [`kernels::KERNELS`].
pub fn run_all() -> Result<()> {
    run_selected(&Selection::default())
}

/// Runs the suites `selection` names in a VM of each kernel it names; the
/// systemd VM after them on a full run only.
pub fn run_selected(selection: &Selection) -> Result<()> {
    let mut chosen = Vec::new();
    for name in &selection.suites {
        let Some(suite) = SUITES.iter().find(|s| **s == name) else {
            bail!("no VM suite {name:?}: the VM suites are {SUITES:?}");
        };
        chosen.push(*suite);
    }
    if !chosen.is_empty() {
        CHOSEN
            .set(chosen)
            .map_err(|_| anyhow::anyhow!("the VM suites were chosen twice"))?;
    }
    setup::ensure()?;
    setup::ensure_packages(qemu::PACKAGES)?;
    let kernels = kernels::KERNELS
        .iter()
        .map(|p| kernels::image(p))
        .collect::<Result<Vec<_>>>()?;
    let kernels: Vec<_> = kernels
        .into_iter()
        .filter(|k| {
            selection
                .kernel
                .as_ref()
                .is_none_or(|want| k.release.contains(want.as_str()))
        })
        .collect();
    if kernels.is_empty() {
        bail!(
            "no VM kernel's release contains {:?}: the kernels are {:?}",
            selection.kernel.as_deref().unwrap_or(""),
            kernels::KERNELS
        );
    }
    let suites = test_binaries()?;
    let portwatch = root().join("target/debug/portwatch");
    let started = Instant::now();
    let common = common_initramfs(&suites, &portwatch)?;
    let initrds = kernels
        .iter()
        .map(|k| qemu::kernel_initramfs(k, &common, &work_dir(), &init_script(&k.modules)))
        .collect::<Result<Vec<_>>>()?;
    let jobs = jobs();
    eprintln!(
        "xtask: booting {} under qemu (TCG), {jobs} at a time",
        kernels
            .iter()
            .map(|k| k.release.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let booting = Instant::now();
    let mut outcomes = Vec::new();
    let pairs: Vec<_> = kernels.iter().zip(&initrds).collect();
    for batch in pairs.chunks(jobs) {
        std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|(k, initrd)| s.spawn(move || boot_with_retry(k, initrd)))
                .collect();
            for h in handles {
                let o = h.join().expect("a VM thread panicked");
                eprintln!(
                    "xtask: {}: {} in {:.0}s",
                    o.kernel,
                    if o.passed() { "passed" } else { "FAILED" },
                    o.seconds
                );
                outcomes.push(o);
            }
        });
    }
    let all = report(&outcomes);
    eprintln!(
        "xtask: VM step took {:.0}s ({:.0}s booting and testing, {jobs} VM(s) at a time)",
        started.elapsed().as_secs_f64(),
        booting.elapsed().as_secs_f64()
    );
    // After the kernels' VMs, not beside them: a third TCG guest on two
    // cores would slow their timing-sensitive suites.
    let systemd = if selection.is_full() {
        crate::vm_systemd::run_debug()
    } else {
        eprintln!("xtask: the systemd VM is left out of a narrowed run (`cargo xtask vm-test systemd` runs it)");
        Ok(())
    };
    if let Err(e) = &systemd {
        eprintln!("xtask: {e:#}");
    }
    if !all {
        let failed: Vec<_> = outcomes
            .iter()
            .filter(|o| !o.passed())
            .map(|o| o.kernel.as_str())
            .collect();
        bail!("VM tests failed on {failed:?}");
    }
    systemd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A console where every suite ran with every backend, each printing `body`.
    fn console(body: &[&str]) -> Console {
        let mut c = Console::new("6.12.100+deb12-amd64");
        c.feed("SeaBIOS noise");
        c.feed("\u{1b}c\u{1b}[?7l\u{1b}[2JVMTEST kernel 6.12.100+deb12-amd64");
        for b in BACKENDS {
            for s in SUITES {
                for line in body {
                    c.feed(line);
                }
                c.feed(&format!("VMTEST suite={s} backend={b} rc=0"));
            }
        }
        c
    }

    const OK: &[&str] = &[
        "running 2 tests",
        "test a ... ok",
        "test b ... ok",
        "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 5 filtered out; finished in 1.00s",
    ];

    #[test]
    fn a_full_run_passes() {
        let mut c = console(OK);
        c.feed("VMTEST done");
        let (runs, error) = c.finish(false);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(runs.len(), SUITES.len() * BACKENDS.len());
        for r in &runs {
            assert!(r.problem().is_none(), "{:?}", r.problem());
            let c = r.counts.unwrap();
            assert_eq!((c.passed, c.failed, c.filtered), (2, 0, 5));
        }
    }

    #[test]
    fn zero_tests_is_a_failure() {
        let mut c = console(&[
            "running 0 tests",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 23 filtered out; finished in 0.00s",
        ]);
        c.feed("VMTEST done");
        let (runs, error) = c.finish(false);
        assert!(error.is_none());
        assert_eq!(runs[0].problem().as_deref(), Some("found 0 tests"));
    }

    #[test]
    fn a_crashed_or_failed_suite_is_a_failure() {
        let mut c = Console::new("6.1.0-56-amd64");
        c.feed("VMTEST kernel 6.1.0-56-amd64");
        c.feed("running 3 tests");
        c.feed("VMTEST suite=capture backend=fexit rc=139");
        c.feed("running 1 test");
        c.feed("test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s");
        c.feed("VMTEST suite=cli backend=fexit rc=101");
        c.feed("VMTEST done");
        let (runs, error) = c.finish(false);
        assert!(runs[0].problem().unwrap().contains("no libtest summary"));
        assert!(runs[1].problem().unwrap().contains("1 failed"));
        // The other suites never reported.
        assert!(error.unwrap().contains("did not run"));
    }

    #[test]
    fn no_boot_no_end_or_wrong_kernel_is_a_failure() {
        let mut c = Console::new("6.1.0-56-amd64");
        c.feed("Kernel panic - not syncing: VFS: Unable to mount root fs");
        let (runs, error) = c.finish(false);
        assert!(error.as_deref().unwrap().contains("did not boot"));
        let outcome = Outcome {
            kernel: "6.12".into(),
            seconds: 3.0,
            log: PathBuf::from("serial.log"),
            runs,
            error: error.map(|e| format!("{e} (see the console log)")),
        };
        assert!(outcome.never_booted());

        let mut c = console(OK);
        c.runs.pop();
        assert!(c.finish(true).1.unwrap().contains("did not finish"));
        assert!(console(OK)
            .finish(false)
            .1
            .unwrap()
            .contains("stopped before"));

        let mut c = Console::new("6.1.0-56-amd64");
        c.feed("VMTEST kernel 6.18.0");
        c.feed("VMTEST done");
        assert!(c.finish(false).1.unwrap().contains("expected"));

        let mut c = console(OK);
        c.feed("VMTEST insmod-failed udp_diag.ko");
        c.feed("VMTEST done");
        assert!(c.finish(false).1.unwrap().contains("insmod udp_diag.ko"));
    }
}
