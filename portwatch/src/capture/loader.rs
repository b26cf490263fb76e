//! Start-up: check the system, resolve offsets, load the programs with the
//! user's settings, and attach one backend.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData},
    programs::{FExit, TracePoint},
    Ebpf, EbpfLoader,
};
use clap::ValueEnum;
use portwatch_common::{
    Config, FILTER_CGROUP, FILTER_COMM, FILTER_NETNS, FILTER_PID, FILTER_PORT, FILTER_UID,
};

use super::{btf::Btf, offsets, uring};
use portwatch_core::request::Errno;

/// Which kernel hook captures the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// fexit when the kernel allows it, otherwise the syscall tracepoints.
    Auto,
    /// fexit on inet_bind/inet6_bind/inet_listen: no cost to other syscalls,
    /// sees io_uring's binds; needs BPF trampolines (x86_64/arm64, 5.5+).
    Fexit,
    /// sys_enter/sys_exit tracepoints of bind and listen: works almost
    /// everywhere; every syscall pays a little while attached.
    Tracepoint,
}

/// How the tracepoint backend learns bind()'s arguments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ArgsSource {
    /// Saved registers when the kernel allows it, else entry pairing.
    #[default]
    Auto,
    /// Read them at sys_exit from the task's saved registers (5.15+).
    Regs,
    /// Record them at sys_enter and pair by thread.
    Entry,
}

/// The system cannot run portwatch (exit status 3), as opposed to a failure
/// while running.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

fn unsupported(msg: impl Into<String>) -> anyhow::Error {
    Unsupported(msg.into()).into()
}

/// What to capture, in the kernel's terms.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    /// Errnos to report (ignored with `all_errors`).
    pub errnos: Vec<Errno>,
    /// Report every errno.
    pub all_errors: bool,
    /// Report successes too.
    pub success: bool,
    /// Inclusive port ranges; empty for all.
    pub ports: Vec<(u16, u16)>,
    /// Pids; empty for all.
    pub pids: Vec<u32>,
    /// Uids; empty for all.
    pub uids: Vec<u32>,
    /// cgroup ids; empty for all.
    pub cgroups: Vec<u64>,
    /// comms; empty for all.
    pub comms: Vec<[u8; 16]>,
    /// netns inodes; empty for all.
    pub netns: Vec<u32>,
    /// Fold window in ns, 0 to send every failure.
    pub fold_window_ns: u64,
    /// Ring buffer bytes.
    pub ring_bytes: u32,
    /// BTF file to read instead of the kernel's.
    pub btf: Option<PathBuf>,
    /// Tracepoint backend: where bind()'s arguments come from.
    pub args_source: ArgsSource,
    /// Record port holders in the kernel and attach them to failures.
    pub track_holders: bool,
    /// Entries of the kernel's fold table (`FOLDS`); None for the default.
    pub fold_entries: Option<u32>,
    /// aya-log level of the programs' own diagnostics (`aya_log::Level` as a
    /// number, 0 = off): below it the verifier drops the log calls.
    pub kernel_log: u8,
    /// Test only: point this offset (an `Offsets` field name) at the wrong
    /// member, to check that the programs say so instead of lying.
    pub bad_offset: Option<String>,
    /// Send the life of ports of interest (`watch --record`; needs
    /// `track_holders`, whose tracepoint sees the state changes).
    pub record_life: bool,
}

impl Settings {
    fn config(&self) -> Config {
        let mut c = Config {
            fold_window_ns: self.fold_window_ns,
            fold_window_jiffies: portwatch_core::clock::window_in_ticks(self.fold_window_ns),
            trace_success: u32::from(self.success),
            track_holders: u32::from(self.track_holders),
            record_life: u32::from(self.record_life && self.track_holders),
            ..Config::default()
        };
        if self.all_errors || self.success {
            c.errno_mask = [!1, !0];
        } else {
            for e in &self.errnos {
                c.errno_mask[(e.0 / 64) as usize] |= 1 << (e.0 % 64);
            }
        }
        for (set, bit) in [
            (!self.ports.is_empty(), FILTER_PORT),
            (!self.pids.is_empty(), FILTER_PID),
            (!self.uids.is_empty(), FILTER_UID),
            (!self.cgroups.is_empty(), FILTER_CGROUP),
            (!self.comms.is_empty(), FILTER_COMM),
            (!self.netns.is_empty(), FILTER_NETNS),
        ] {
            if set {
                c.filters |= bit;
            }
        }
        c
    }
}

/// The hook in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// fexit on inet_bind / inet6_bind / inet_listen.
    Fexit,
    /// Syscall tracepoints.
    Tracepoint,
}

impl Backend {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fexit => "fexit",
            Self::Tracepoint => "tracepoint",
        }
    }
}

/// Loaded and attached programs. Dropping it detaches them.
pub struct Loaded {
    /// The object; maps are taken from it by the reader.
    pub ebpf: Ebpf,
    /// Which hook is attached.
    pub backend: Backend,
    /// Why that one (shown on the `ready` line).
    pub why: String,
    /// Where portwatch mounted tracefs, if it had to.
    pub mounted_tracefs: Option<&'static Path>,
    /// Why listeners are not recorded in the kernel, when they are not.
    pub holders_note: Option<String>,
    /// The kernel can dump bound-but-inactive TCP sockets (`TCP_BOUND_INACTIVE` in its BTF).
    pub bound_inactive_dump: bool,
    /// Why io_uring's binds and listens are not captured, when they are not
    /// (tracepoint backend only: fexit sees them through inet_bind).
    pub uring_note: Option<String>,
}

/// Calls between sys_enter and sys_exit at once, machine-wide (entry pairing).
const CALLS_IN_FLIGHT: u32 = 16384;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails unless this process may load tracing programs.
fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    Err(unsupported(
        "needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: run it with sudo",
    ))
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when nothing is
/// mounted (a new machine mounts neither tracefs nor debugfs); says whether
/// it did.
pub(crate) fn tracefs() -> Result<(&'static Path, bool)> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok((Path::new(dir), false));
        }
    }
    let dir = Path::new("/sys/kernel/tracing");
    nix::mount::mount(
        Some("tracefs"),
        dir,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        unsupported(format!(
            "tracefs is not mounted and mounting it at {} failed: {e}",
            dir.display()
        ))
    })?;
    Ok((dir, true))
}

fn fill_filters(ebpf: &mut Ebpf, s: &Settings) -> Result<()> {
    fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
        ebpf.map_mut(name)
            .ok_or_else(|| anyhow!("eBPF object has no map {name}"))
    }
    if !s.ports.is_empty() {
        let mut words = vec![0u32; 2048];
        for &(lo, hi) in &s.ports {
            for p in lo..=hi {
                words[p as usize / 32] |= 1 << (p % 32);
            }
        }
        let mut ports: Array<&mut MapData, u32> = Array::try_from(map(ebpf, "PORTS")?)?;
        for (i, w) in words.iter().enumerate().filter(|(_, w)| **w != 0) {
            ports.set(i as u32, w, 0)?;
        }
    }
    macro_rules! fill {
        ($name:literal, $ty:ty, $values:expr) => {
            if !$values.is_empty() {
                let mut m: HashMap<&mut MapData, $ty, u8> = HashMap::try_from(map(ebpf, $name)?)?;
                for v in &$values {
                    m.insert(v, 1, 0)
                        .with_context(|| format!("filling filter {}", $name))?;
                }
            }
        };
    }
    fill!("PIDS", u32, s.pids);
    fill!("UIDS", u32, s.uids);
    fill!("CGROUPS", u64, s.cgroups);
    fill!("COMMS", [u8; 16], s.comms);
    fill!("NETNS", u32, s.netns);
    Ok(())
}

fn attach_fexit(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<()> {
    for (prog, func) in [
        ("inet_bind_exit", "inet_bind"),
        ("inet6_bind_exit", "inet6_bind"),
        ("inet_listen_exit", "inet_listen"),
    ] {
        let p: &mut FExit = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("eBPF object has no program {prog}"))?
            .try_into()?;
        p.load(func, btf)
            .with_context(|| format!("loading fexit on {func}"))?;
        p.attach()
            .with_context(|| format!("attaching fexit on {func}"))?;
    }
    Ok(())
}

fn attach_tracepoints(ebpf: &mut Ebpf, with_entry: bool) -> Result<()> {
    // Entries first, so no exit is seen without its entry once all are attached.
    let entries: &[&str] = if with_entry {
        &["sys_enter_bind", "sys_enter_listen"]
    } else {
        &[]
    };
    for &name in entries.iter().chain(&["sys_exit_bind", "sys_exit_listen"]) {
        let p: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?
            .try_into()?;
        p.load()
            .with_context(|| format!("loading tracepoint syscalls/{name}"))?;
        p.attach("syscalls", name)
            .with_context(|| format!("attaching tracepoint syscalls/{name}"))?;
    }
    Ok(())
}

/// Attaches the listener recorder, the holder table's second source.
fn attach_state(ebpf: &mut Ebpf) -> Result<()> {
    let p: &mut TracePoint = ebpf
        .program_mut("inet_sock_set_state")
        .ok_or_else(|| anyhow!("eBPF object has no program inet_sock_set_state"))?
        .try_into()?;
    p.load()
        .context("loading tracepoint sock/inet_sock_set_state")?;
    p.attach("sock", "inet_sock_set_state")
        .context("attaching tracepoint sock/inet_sock_set_state")?;
    Ok(())
}

/// Attaches the io_uring completion program (tracepoint backend).
fn attach_uring(ebpf: &mut Ebpf) -> Result<()> {
    let p: &mut TracePoint = ebpf
        .program_mut("io_uring_complete")
        .ok_or_else(|| anyhow!("eBPF object has no program io_uring_complete"))?
        .try_into()?;
    p.load()
        .context("loading tracepoint io_uring/io_uring_complete")?;
    p.attach("io_uring", "io_uring_complete")
        .context("attaching tracepoint io_uring/io_uring_complete")?;
    Ok(())
}

/// Test only (`--test-bad-offset`): points `field` at offset 0 of its
/// struct, a member that is not what the programs expect there, so a test
/// can check that they report the contradiction.
fn break_offset(offsets: &mut portwatch_common::Offsets, field: &str) -> Result<()> {
    let slot = match field {
        "socket_sk" => &mut offsets.socket_sk,
        "socket_file" => &mut offsets.socket_file,
        "file_private_data" => &mut offsets.file_private_data,
        "sk_family" => &mut offsets.sk_family,
        other => anyhow::bail!(
            "--test-bad-offset: unknown field {other} (socket_sk, socket_file, file_private_data, sk_family, no_sk_head)"
        ),
    };
    *slot = 0;
    Ok(())
}

/// The first line of an error chain's root cause, for one-line messages.
fn root(e: &anyhow::Error) -> String {
    e.root_cause()
        .to_string()
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Loads the object with `config` as its CONFIG.
fn object<'a>(loader: &mut EbpfLoader<'a>, config: &'a Config) -> Result<Ebpf> {
    loader
        .override_global("CONFIG", config, true)
        .load(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/portwatch"
        )))
        .context("loading the eBPF object")
}

/// Loads the programs configured by `settings` and attaches the backend chosen by `choice`.
pub fn load(settings: &Settings, choice: BackendChoice) -> Result<Loaded> {
    check_privileges()?;
    let btf_path = settings
        .btf
        .clone()
        .unwrap_or_else(|| PathBuf::from("/sys/kernel/btf/vmlinux"));
    if !btf_path.exists() {
        return Err(unsupported(if settings.btf.is_some() {
            format!("BTF file {} does not exist", btf_path.display())
        } else {
            "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing; it needs CONFIG_DEBUG_INFO_BTF=y, or pass --btf FILE)".to_owned()
        }));
    }
    let mut base = settings.config();
    let btf = Btf::from_file(&btf_path).map_err(|e| unsupported(e.to_string()))?;
    base.offsets = offsets::resolve(&btf)
        .map_err(|e| unsupported(format!("cannot read socket fields on this kernel: {e}")))?;
    // TCP_BOUND_INACTIVE is the inet_diag pseudo-state that dumps
    // bound-but-inactive TCP sockets; not every kernel has it.
    let bound_inactive_dump = btf.enum_value("TCP_BOUND_INACTIVE").is_some();
    base.sk_head = u32::from(offsets::sk_head_fits(&base.offsets));
    match settings.bad_offset.as_deref() {
        // Not an offset: makes the programs read sock fields one by one,
        // as they do where the head does not hold them all.
        Some("no_sk_head") => base.sk_head = 0,
        Some(field) => break_offset(&mut base.offsets, field)?,
        None => {}
    }

    // tracefs: the tracepoint backend needs it, and so does the listener
    // recorder (a tracepoint) with either backend.
    let tracefs = (settings.track_holders || choice != BackendChoice::Fexit).then(tracefs);
    let mounted_tracefs = match &tracefs {
        Some(Ok((dir, true))) => Some(*dir),
        _ => None,
    };
    let mut holders_note = None;
    if settings.track_holders {
        let applied = match &tracefs {
            Some(Ok((dir, _))) => offsets::apply_state_format(dir, &mut base.offsets),
            Some(Err(e)) => Err(anyhow!("{e}")),
            None => unreachable!("tracefs is looked up when holders are tracked"),
        };
        if let Err(e) = applied {
            holders_note = Some(format!("{e:#}"));
        }
    }
    // Resolved now, so the BTF can go before loading; used by the
    // tracepoint backend only.
    let uring_offsets = match &tracefs {
        Some(Ok((dir, _))) => uring::resolve(&btf, dir),
        _ => Err("tracefs is unavailable".to_owned()),
    };
    drop(btf);
    // io_uring's binds: the tracepoint backend needs its own program (Ok
    // true: attach it); fexit sees them already (Ok false); Err says why not.
    let finish = |mut ebpf: Ebpf,
                  backend: Backend,
                  why: String,
                  uring: Result<bool, String>|
     -> Result<Loaded> {
        let mut holders_note = holders_note.clone();
        if settings.track_holders && holders_note.is_none() {
            if let Err(e) = attach_state(&mut ebpf) {
                holders_note = Some(format!("{e}: {}", root(&e)));
            }
        }
        let uring_note = match uring {
            Ok(true) => attach_uring(&mut ebpf)
                .err()
                .map(|e| format!("{e}: {}", root(&e))),
            Ok(false) => None,
            Err(note) => Some(note),
        };
        Ok(Loaded {
            ebpf,
            backend,
            why,
            mounted_tracefs,
            holders_note,
            bound_inactive_dump,
            uring_note,
        })
    };

    // Declared before the loader, which borrows them.
    let fexit_config = base;
    let (regs_config, entry_config);
    let log_level = settings.kernel_log;
    let mut loader = EbpfLoader::new();
    // aya-log's level lives in read-only data: at 0 the verifier sees every
    // log call as dead code, and its ring buffer shrinks to one page.
    loader.override_global("AYA_LOG_LEVEL", &log_level, true);
    if log_level == 0 {
        loader.map_max_entries("AYA_LOGS", 4096);
    }
    // The programs carry no CO-RE relocations (offsets come from `base`), so
    // the kernel BTF aya parsed for them is not needed: free it now.
    loader
        .btf(None)
        .map_max_entries("EVENTS", settings.ring_bytes)
        // Only entry pairing (the last resort below) uses this table.
        .map_max_entries("CALLS", 1);
    if let Some(n) = settings.fold_entries {
        loader.map_max_entries("FOLDS", n.max(1));
    }

    let mut fexit_error = None;
    if choice != BackendChoice::Tracepoint {
        let aya_btf = aya::Btf::parse_file(&btf_path, aya::Endianness::default())
            .map_err(|e| unsupported(format!("cannot parse BTF {}: {e}", btf_path.display())))?;
        let mut ebpf = object(&mut loader, &fexit_config)?;
        fill_filters(&mut ebpf, settings)?;
        match attach_fexit(&mut ebpf, &aya_btf) {
            Ok(()) => {
                let why = match choice {
                    BackendChoice::Fexit => "asked for",
                    _ => "the kernel allows it",
                };
                return finish(ebpf, Backend::Fexit, why.into(), Ok(false));
            }
            Err(e) if choice == BackendChoice::Fexit => {
                return Err(unsupported(format!(
                    "the fexit backend is not available: {}: {} (try --backend tracepoint)",
                    e,
                    root(&e)
                )));
            }
            // Dropping `ebpf` detaches whatever did attach.
            Err(e) => fexit_error = Some(format!("{e}: {}", root(&e))),
        }
    }

    let tracefs = match tracefs {
        Some(Ok((dir, _))) => dir,
        Some(Err(e)) => return Err(e),
        None => unreachable!("tracefs is looked up unless fexit was asked for"),
    };
    let mut tp = base;
    offsets::TracepointFormats::read(tracefs)
        .and_then(|f| f.apply(&mut tp.offsets))
        .map_err(|e| unsupported(format!("{e:#}")))?;
    let uring = uring_offsets.map(|o| tp.uring = o);
    regs_config = Config {
        args_from_regs: 1,
        ..tp
    };
    entry_config = Config {
        args_from_regs: 0,
        ..tp
    };

    let mut regs_error = None;
    if settings.args_source != ArgsSource::Entry {
        let mut ebpf = object(&mut loader, &regs_config)?;
        fill_filters(&mut ebpf, settings)?;
        match attach_tracepoints(&mut ebpf, false) {
            Ok(()) => {
                let why =
                    tracepoint_why(fexit_error, "sys_exit only, arguments from saved registers");
                return finish(ebpf, Backend::Tracepoint, why, uring.map(|()| true));
            }
            Err(e) if settings.args_source == ArgsSource::Regs => {
                return Err(unsupported(format!("{e}: {}", root(&e))));
            }
            Err(e) => regs_error = Some(root(&e)),
        }
    }
    loader.map_max_entries("CALLS", CALLS_IN_FLIGHT);
    let mut ebpf = object(&mut loader, &entry_config)?;
    fill_filters(&mut ebpf, settings)?;
    attach_tracepoints(&mut ebpf, true).map_err(|e| unsupported(format!("{e}: {}", root(&e))))?;
    let how = match regs_error {
        Some(e) => format!("sys_enter + sys_exit; saved registers unreadable: {e}"),
        None => "sys_enter + sys_exit".to_owned(),
    };
    let why = tracepoint_why(fexit_error, &how);
    finish(ebpf, Backend::Tracepoint, why, uring.map(|()| true))
}

fn tracepoint_why(fexit_error: Option<String>, how: &str) -> String {
    match fexit_error {
        Some(e) => format!("{how}; fexit unavailable: {e}"),
        None => format!("{how}; asked for"),
    }
}
