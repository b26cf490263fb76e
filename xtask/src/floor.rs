//! The floor of any tracer on this kernel: a program attached to
//! `syscalls/sys_exit_bind` that returns at once, built here from its two
//! instructions and attached the way aya attaches a tracepoint program
//! (perf_event_open on the tracepoint, PERF_EVENT_IOC_SET_BPF). Its bytecode
//! is what aya-ebpf compiles `fn(_: TracePointContext) -> u32 { 0 }` to, so
//! "portwatch over bare probe" measures only portwatch's own work. The same
//! program as a raw tracepoint (`Floor::attach_raw`) is the floor of a
//! program on a hook such as `inet_sock_set_state`. Neither is ever part of
//! the portwatch binary.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{bail, Context as _, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// The bare probe, attached while it lives.
pub struct Floor {
    prog: OwnedFd,
    _event: OwnedFd,
}

/// Loads `r0 = 0; exit` as a program of type `prog_type`.
fn load(prog_type: u32) -> Result<OwnedFd> {
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD, zero past the fields used.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..56].copy_from_slice(b"pw_floor");
    // SAFETY: attr is a valid bpf_attr; the pointers outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), 128u32) };
    if fd < 0 {
        bail!("loading the bare probe: {}", io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Where tracefs is (portwatch mounts it when it runs; so does this).
fn tracefs() -> Result<&'static str> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if std::path::Path::new(dir).join("events").is_dir() {
            return Ok(dir);
        }
    }
    nix::mount::mount(
        Some("tracefs"),
        "/sys/kernel/tracing",
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .context("mounting tracefs")?;
    Ok("/sys/kernel/tracing")
}

impl Floor {
    /// Loads and attaches the bare probe.
    pub fn attach() -> Result<Floor> {
        let prog = load(BPF_PROG_TYPE_TRACEPOINT)?;
        let id: u64 =
            std::fs::read_to_string(format!("{}/events/syscalls/sys_exit_bind/id", tracefs()?))?
                .trim()
                .parse()?;
        // struct perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes).
        let mut pattr = [0u8; 64];
        pattr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
        pattr[4..8].copy_from_slice(&64u32.to_ne_bytes());
        pattr[8..16].copy_from_slice(&id.to_ne_bytes());
        pattr[16..24].copy_from_slice(&1u64.to_ne_bytes()); // sample_period
        pattr[48..52].copy_from_slice(&1u32.to_ne_bytes()); // wakeup_events
                                                            // SAFETY: pattr is a valid perf_event_attr; pid -1, cpu 0, as aya does.
        let efd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                pattr.as_ptr(),
                -1,
                0,
                -1,
                8u64, // PERF_FLAG_FD_CLOEXEC
            )
        };
        if efd < 0 {
            bail!("perf_event_open: {}", io::Error::last_os_error());
        }
        // SAFETY: a new fd the kernel just gave us.
        let event = unsafe { OwnedFd::from_raw_fd(efd as i32) };
        // SAFETY: ioctls on the perf event fd we own.
        unsafe {
            if libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) < 0 {
                bail!("attaching the bare probe: {}", io::Error::last_os_error());
            }
            if libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) < 0 {
                bail!("enabling the bare probe: {}", io::Error::last_os_error());
            }
        }
        Ok(Floor {
            prog,
            _event: event,
        })
    }

    /// The same two instructions as a raw tracepoint on `tracepoint`
    /// (BPF_RAW_TRACEPOINT_OPEN): the floor of any program on that hook,
    /// e.g. `inet_sock_set_state`, whose raw program portwatch attaches.
    pub fn attach_raw(tracepoint: &std::ffi::CStr) -> Result<Floor> {
        let prog = load(BPF_PROG_TYPE_RAW_TRACEPOINT)?;
        // union bpf_attr for BPF_RAW_TRACEPOINT_OPEN: name, prog_fd.
        let mut attr = [0u8; 16];
        attr[0..8].copy_from_slice(&(tracepoint.as_ptr() as u64).to_ne_bytes());
        attr[8..12].copy_from_slice(&prog.as_raw_fd().to_ne_bytes());
        // SAFETY: attr is a valid bpf_attr; the name outlives the call.
        let fd =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_RAW_TRACEPOINT_OPEN, attr.as_ptr(), 16u32) };
        if fd < 0 {
            bail!(
                "attaching the bare raw probe to {tracepoint:?}: {}",
                io::Error::last_os_error()
            );
        }
        Ok(Floor {
            prog,
            // SAFETY: a new fd the kernel just gave us.
            _event: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// (run_time_ns, run_cnt) of the probe, counted while
    /// kernel.bpf_stats_enabled is 1.
    pub fn stats(&self) -> (u64, u64) {
        fdinfo_stats(&format!("/proc/self/fdinfo/{}", self.prog.as_raw_fd()))
    }

    /// The probe's accounting, as `programs_of` gives a tracer's.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let (run_ns, runs) = self.stats();
        vec![ProgramStats {
            name: "r0 = 0".into(),
            run_ns,
            runs,
            insns: 2,
        }]
    }
}

/// (run_time_ns, run_cnt) from a BPF program fd's fdinfo.
fn fdinfo_stats(path: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("run_time_ns:"), field("run_cnt:"))
}

/// One program's kernel accounting.
pub struct ProgramStats {
    /// Its name, cut at 15 bytes.
    pub name: String,
    /// Time spent in it while kernel.bpf_stats_enabled was 1.
    pub run_ns: u64,
    /// Its runs while kernel.bpf_stats_enabled was 1.
    pub runs: u64,
    /// Its size in instructions as the kernel runs it (after the
    /// verifier's rewrite).
    pub insns: u32,
}

/// The BPF programs process `pid` holds, keyed by program id: read from its
/// fds' fdinfo, so the programs other tracers on the machine load are not
/// counted.
pub fn programs_of(pid: u32) -> Vec<ProgramStats> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| ids.contains(&p.id()))
        .map(|p| ProgramStats {
            name: p.name_as_str().unwrap_or("?").to_owned(),
            run_ns: p.run_time().as_nanos() as u64,
            runs: p.run_count(),
            insns: p.size_translated().unwrap_or(0) / 8,
        })
        .collect()
}

/// What each program of `after` ran since `before` (same names), programs
/// that did not run left out.
pub fn since(before: &[ProgramStats], after: Vec<ProgramStats>) -> Vec<ProgramStats> {
    after
        .into_iter()
        .map(|p| {
            let (ns, runs) = before
                .iter()
                .find(|b| b.name == p.name)
                .map_or((0, 0), |b| (b.run_ns, b.runs));
            ProgramStats {
                run_ns: p.run_ns - ns,
                runs: p.runs - runs,
                ..p
            }
        })
        .filter(|p| p.runs > 0)
        .collect()
}

/// Sets kernel.bpf_stats_enabled while alive, restoring the old value.
pub struct Stats(String);

impl Stats {
    /// Turns the kernel's per-program accounting on.
    pub fn enable() -> Result<Stats> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(path).context("reading bpf_stats_enabled")?;
        std::fs::write(path, "1").context("setting kernel.bpf_stats_enabled=1")?;
        Ok(Stats(old.trim().to_owned()))
    }
}

impl Drop for Stats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}
