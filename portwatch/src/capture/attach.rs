//! The eBPF object and its programs through aya: the loader every attempt
//! shares, the filter maps, and attaching each hook's programs.

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData},
    programs::{FExit, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use portwatch_common::Config;

use super::settings::Settings;

/// The object's loader, set up as every attempt shares it.
pub(super) fn ebpf_loader(settings: &Settings) -> EbpfLoader<'_> {
    let mut loader = EbpfLoader::new();
    // aya-log's level lives in read-only data: at 0 the verifier sees every
    // log call as dead code, and its ring buffer shrinks to one page.
    loader.override_global("AYA_LOG_LEVEL", &settings.kernel_log, true);
    if settings.kernel_log == 0 {
        loader.map_max_entries("AYA_LOGS", 4096);
    }
    // EbpfLoader::new parsed the running kernel's BTF for CO-RE relocations
    // (aya has no loader without); the programs carry none (their offsets
    // come from `Kernel`), so free it now.
    loader
        .btf(None)
        .map_max_entries("EVENTS", settings.ring_bytes);
    if let Some(n) = settings.fold_entries {
        loader.map_max_entries("FOLDS", n.max(1));
    }
    loader
}

/// The eBPF object as built, before `casts::patch`.
pub(super) const OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portwatch"));

/// Loads `elf` (the object, patched) with `config` as its CONFIG.
pub(super) fn object<'a>(
    loader: &mut EbpfLoader<'a>,
    config: &'a Config,
    elf: &[u64],
) -> Result<Ebpf> {
    loader
        .override_global("CONFIG", config, true)
        .load(bytemuck::cast_slice(elf))
        .context("loading the eBPF object")
}

pub(super) fn fill_filters(ebpf: &mut Ebpf, s: &Settings) -> Result<()> {
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
    if s.record_life && !s.ports.is_empty() {
        // Port life's first check: every port `--port` names is of interest.
        let mut slots = vec![[0u8; 64]; 1024];
        for &(lo, hi) in &s.ports {
            for p in lo..=hi {
                slots[p as usize / 64][p as usize % 64] = 1;
            }
        }
        let mut interest: Array<&mut MapData, [u8; 64]> = Array::try_from(map(ebpf, "INTEREST")?)?;
        for (i, w) in slots.iter().enumerate().filter(|(_, w)| **w != [0; 64]) {
            interest.set(i as u32, w, 0)?;
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

pub(super) fn attach_fexit(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<()> {
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

pub(super) fn attach_tracepoints(ebpf: &mut Ebpf, with_entry: bool) -> Result<()> {
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

/// What the listener recorder may use on this kernel: each hook, or why not.
#[derive(Debug, Clone)]
pub(super) struct StateHooks {
    /// The raw tracepoint (its arguments checked against the BTF).
    pub raw: Result<(), String>,
    /// The classic tracepoint (its record's layout read from tracefs).
    pub classic: Result<(), String>,
}

/// Attaches the listener recorder, the holder table's second source: the
/// raw tracepoint when the kernel takes it, else the classic one; Err says
/// why neither.
pub(super) fn attach_state(ebpf: &mut Ebpf, hooks: &StateHooks) -> Result<(), String> {
    let raw = hooks.raw.clone().and_then(|()| {
        let p: &mut RawTracePoint = ebpf
            .program_mut("sock_state_raw")
            .ok_or("eBPF object has no program sock_state_raw")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        p.load()
            .and_then(|()| p.attach("inet_sock_set_state").map(drop))
            .map_err(|e| format!("raw tracepoint inet_sock_set_state: {e}"))
    });
    let Err(raw) = raw else {
        return Ok(());
    };
    let classic = hooks.classic.clone().and_then(|()| {
        let p: &mut TracePoint = ebpf
            .program_mut("inet_sock_set_state")
            .ok_or("eBPF object has no program inet_sock_set_state")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        p.load()
            .and_then(|()| p.attach("sock", "inet_sock_set_state").map(drop))
            .map_err(|e| format!("tracepoint sock/inet_sock_set_state: {e}"))
    });
    classic.map_err(|classic| format!("{classic} ({raw})"))
}

/// Attaches the io_uring completion program (tracepoint backend).
pub(super) fn attach_uring(ebpf: &mut Ebpf) -> Result<()> {
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
