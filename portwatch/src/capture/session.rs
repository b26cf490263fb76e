//! A capture session: the loaded programs, their ring buffer read through
//! tokio's `AsyncFd`, and the kernel's counters and fold table, which make
//! every matched call accountable as shown, folded or lost.

use std::{collections::HashMap, io, net::IpAddr};

use anyhow::{anyhow, Result};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use portwatch_common::{stat, FoldKey, FoldState};
use serde::{Deserialize, Serialize};
use tokio::io::{unix::AsyncFd, Interest};

use super::{
    loader::{self, Backend, BackendChoice, Loaded, Settings},
    Clock, Event,
};
use crate::request::{Errno, Family, Proto, Syscall};

/// Kernel counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Calls that matched the filters: sent + folded + lost.
    pub matched: u64,
    /// Events written to the ring buffer.
    pub sent: u64,
    /// Failures counted into a fold instead of sent.
    pub folded: u64,
    /// Events the ring buffer had no room for.
    pub lost: u64,
    /// sys_exit without its sys_enter (entry pairing only).
    pub no_entry: u64,
    /// Failures that could not be folded because the fold table was full.
    pub fold_full: u64,
}

/// Identical failures counted in the kernel after the last one shown, still
/// pending when the session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repeat {
    /// The failing process.
    pub pid: u32,
    /// Its comm (untrusted).
    pub comm: String,
    /// bind or listen.
    pub syscall: Syscall,
    /// The error.
    pub errno: Option<Errno>,
    /// Transport protocol.
    pub proto: Proto,
    /// Address family of the request.
    pub family: Family,
    /// Requested address.
    pub addr: IpAddr,
    /// Requested port.
    pub port: u16,
    /// Network namespace inode.
    pub netns: u32,
    /// How many.
    pub count: u64,
}

/// What a finished session accounts for.
#[derive(Debug, Clone, Default)]
pub struct Finish {
    /// The kernel's final counters.
    pub counters: Counters,
    /// Events decoded.
    pub shown: u64,
    /// Failures folded into the events decoded.
    pub folded_shown: u64,
    /// Failures folded after the last event of their stream.
    pub folded_tail: u64,
    /// Records that did not decode.
    pub malformed: u64,
    /// The streams whose tail is pending, described.
    pub repeats: Vec<Repeat>,
}

/// The kernel's fold key of an event (see `portwatch_common::FoldKey`).
pub fn fold_key(ev: &Event) -> FoldKey {
    let (family, addr) = match ev.addr {
        IpAddr::V4(a) => {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&a.octets());
            (portwatch_common::AF_INET, addr)
        }
        IpAddr::V6(a) => (portwatch_common::AF_INET6, a.octets()),
    };
    FoldKey {
        pid: ev.pid,
        ret: ev.ret,
        port: ev.port,
        family,
        syscall: ev.syscall.code(),
        _pad: [0; 3],
        addr,
    }
}

/// Loaded, attached programs and their maps. Dropping it detaches them.
pub struct Session {
    /// Detached (dropped) by [`Session::detach`].
    ebpf: Option<aya::Ebpf>,
    ring: AsyncFd<RingBuf<MapData>>,
    stats: PerCpuArray<MapData, u64>,
    folds: PerCpuHashMap<MapData, FoldKey, FoldState>,
    /// Which hook is attached.
    pub backend: Backend,
    /// Why that one.
    pub why: String,
    /// Where tracefs was mounted, if portwatch had to.
    pub mounted_tracefs: Option<&'static std::path::Path>,
    /// Why listeners are not recorded in the kernel, when they are not.
    pub holders_note: Option<String>,
    /// The kernel can dump bound-but-inactive TCP sockets.
    pub bound_inactive_dump: bool,
    clock: Option<Clock>,
    shown: u64,
    folded_shown: u64,
    malformed: u64,
    /// The last event of each fold key, to describe repeats pending at exit.
    last: HashMap<FoldKey, Event>,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut aya::Ebpf,
    name: &str,
) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("eBPF object has no map {name}"))?;
    Ok(T::try_from(map)?)
}

impl Session {
    /// Loads and attaches the programs (see [`loader::load`]).
    pub fn start(settings: &Settings, choice: BackendChoice) -> Result<Self> {
        let Loaded {
            mut ebpf,
            backend,
            why,
            mounted_tracefs,
            holders_note,
            bound_inactive_dump,
        } = loader::load(settings, choice)?;
        let ring: RingBuf<MapData> = take(&mut ebpf, "EVENTS")?;
        let stats = take(&mut ebpf, "STATS")?;
        let folds = take(&mut ebpf, "FOLDS")?;
        // Start-up parsed the kernel's BTF (megabytes); hand that memory back.
        // SAFETY: malloc_trim only releases free heap pages.
        unsafe { libc::malloc_trim(0) };
        // SAFETY: the RingBuf owns its fd and lives inside the AsyncFd, so the
        // fd stays open for as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| anyhow!("polling the ring buffer: {e}"))?;
        Ok(Self {
            ebpf: Some(ebpf),
            ring,
            stats,
            folds,
            backend,
            why,
            mounted_tracefs,
            holders_note,
            bound_inactive_dump,
            clock: None,
            shown: 0,
            folded_shown: 0,
            malformed: 0,
            last: HashMap::new(),
        })
    }

    /// Waits until the ring buffer holds records, then decodes up to `max`
    /// of them into `out`. Cancel-safe: nothing is read before the wait ends.
    pub async fn read(&mut self, out: &mut Vec<Event>, max: usize) -> io::Result<()> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let drained = Self::decode_into(
                guard.get_inner_mut(),
                &mut self.clock,
                &mut self.malformed,
                out,
                max,
            );
            if drained {
                guard.clear_ready();
            }
            if !out.is_empty() {
                self.account(out);
                return Ok(());
            }
        }
    }

    /// The ring buffer of port life records (`watch --record`), taken out of
    /// the session: whoever records reads it. None once taken.
    pub fn take_life(&mut self) -> Option<RingBuf<MapData>> {
        take(self.ebpf.as_mut()?, "LIFE").ok()
    }

    /// Decodes whatever the ring buffer still holds, without waiting (after
    /// [`Session::detach`], to account for what was in flight).
    pub fn read_rest(&mut self, out: &mut Vec<Event>, max: usize) -> bool {
        let drained = Self::decode_into(
            self.ring.get_mut(),
            &mut self.clock,
            &mut self.malformed,
            out,
            max,
        );
        self.account(out);
        drained
    }

    /// Reads up to `max` records; true when the ring buffer was emptied.
    fn decode_into(
        ring: &mut RingBuf<MapData>,
        clock: &mut Option<Clock>,
        malformed: &mut u64,
        out: &mut Vec<Event>,
        max: usize,
    ) -> bool {
        let now = Clock::follow(*clock, Clock::now());
        *clock = Some(now);
        while out.len() < max {
            let Some(item) = ring.next() else {
                return true;
            };
            match Event::decode(&item, now) {
                Ok(ev) => out.push(ev),
                Err(e) => {
                    *malformed += 1;
                    if *malformed == 1 {
                        eprintln!("portwatch: dropped a malformed record: {e}");
                    }
                }
            }
        }
        false
    }

    fn account(&mut self, events: &[Event]) {
        for ev in events {
            self.shown += 1;
            self.folded_shown += ev.folded;
            if ev.ret != 0 {
                // One description per stream is enough.
                self.last.entry(fold_key(ev)).or_insert_with(|| ev.clone());
            }
        }
    }

    /// The kernel's counters now.
    pub fn counters(&self) -> Counters {
        let get = |i: u32| self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        Counters {
            matched: get(stat::SENT) + get(stat::FOLDED) + get(stat::LOST),
            sent: get(stat::SENT),
            folded: get(stat::FOLDED),
            lost: get(stat::LOST),
            no_entry: get(stat::NO_ENTRY),
            fold_full: get(stat::FOLD_FULL),
        }
    }

    /// Detaches the programs: from here on the counters and fold table are
    /// final. The maps stay readable.
    pub fn detach(&mut self) {
        drop(self.ebpf.take());
    }

    /// The final account; call after [`Session::detach`] and after reading
    /// what was left with [`Session::read_rest`].
    pub fn finish(&self) -> Finish {
        let mut finish = Finish {
            counters: self.counters(),
            shown: self.shown,
            folded_shown: self.folded_shown,
            malformed: self.malformed,
            ..Finish::default()
        };
        for entry in self.folds.iter() {
            let Ok((key, per_cpu)) = entry else { continue };
            let pending: u64 = per_cpu.iter().map(|s| s.pending).sum();
            if pending == 0 {
                continue;
            }
            finish.folded_tail += pending;
            let Some(ev) = self.last.get(&key) else {
                continue;
            };
            finish.repeats.push(Repeat {
                pid: ev.pid,
                comm: ev.comm.clone(),
                syscall: ev.syscall,
                errno: ev.errno,
                proto: ev.proto,
                family: ev.family,
                addr: ev.addr,
                port: ev.port,
                netns: ev.netns,
                count: pending,
            });
        }
        finish
    }
}
