//! A capture session: the loaded programs, their ring buffer read through
//! tokio's `AsyncFd`, and the kernel's counters and fold table, which make
//! every matched call accountable as shown, folded or lost.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{anyhow, Result};
use aya::maps::{IterableMap as _, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use portwatch_common::{hook, stat, FoldFront, FoldKey, FoldState};
use portwatch_core::{
    clock::Clock,
    event::Event,
    fold::{fold_key, Counters, Finish, Repeat},
};

use super::{
    klog,
    loader::{self, Backend, Loaded},
    ring::Ring,
    settings::{BackendChoice, Settings},
};

/// What one sweep of the fold table did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Entries looked at.
    pub entries: u64,
    /// Stale entries removed.
    pub removed: u64,
    /// Pending repeats the removed entries held, now kept in user space.
    pub moved: u64,
    /// The same, per stream (for counters that read the kernel's pending
    /// counts, which no longer hold these).
    pub moved_by_key: Vec<(FoldKey, u64)>,
}

/// Swept streams whose pending repeats are remembered with a description;
/// past this, their counts are still added up but no longer described.
pub const TAIL_CAP: usize = 4096;

/// CLOCK_BOOTTIME in ns: the clock of `bpf_ktime_get_boot_ns`.
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Loaded, attached programs and their maps. Dropping it detaches them.
pub struct Session {
    /// Detached (dropped) by [`Session::detach`].
    ebpf: Option<aya::Ebpf>,
    ring: Ring,
    stats: PerCpuArray<MapData, u64>,
    folds: PerCpuHashMap<MapData, FoldKey, FoldState>,
    /// The fold table's per-CPU front slots (`portwatch_common::FoldFront`).
    fronts: PerCpuArray<MapData, FoldFront>,
    /// Which hook is attached.
    pub backend: Backend,
    /// Why that one.
    pub why: String,
    /// Where tracefs was mounted, if portwatch had to.
    pub mounted_tracefs: Option<&'static std::path::Path>,
    /// Why `--record` sees no TCP state changes (port life), when it cannot.
    pub life_note: Option<String>,
    /// The kernel can dump bound-but-inactive TCP sockets.
    pub bound_inactive_dump: bool,
    /// Why io_uring binds/listens are not captured, when they are not.
    pub uring_note: Option<String>,
    /// Forwards the programs' aya-log records to stderr (`-v`).
    _klog: Option<tokio::task::JoinHandle<()>>,
    clock: Option<Clock>,
    shown: u64,
    folded_shown: u64,
    malformed: u64,
    /// The last event of each fold key the kernel's table may still hold,
    /// to describe repeats pending at exit. Pruned by [`Session::sweep`] to
    /// the keys the table holds, so it is as bounded as the table.
    last: HashMap<FoldKey, Event>,
    /// Fold window (ns): entries older than this fold nothing more.
    fold_window_ns: u64,
    /// Repeats swept out of the kernel's table before an event carried
    /// them: added to the stream's next event, or reported at exit.
    tail: HashMap<FoldKey, (u64, Option<Event>)>,
    /// Swept repeats past [`TAIL_CAP`] streams (counted, not described).
    tail_overflow: u64,
    fold_swept: u64,
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
            life_note,
            bound_inactive_dump,
            uring_note,
        } = loader::load(settings, choice)?;
        let klog = (settings.kernel_log != klog::OFF)
            .then(|| klog::forward(&mut ebpf))
            .transpose()?;
        let ring: RingBuf<MapData> = take(&mut ebpf, "EVENTS")?;
        let stats = take(&mut ebpf, "STATS")?;
        let folds = take(&mut ebpf, "FOLDS")?;
        let fronts = take(&mut ebpf, "FRONT")?;
        let fold_window_ns = settings.fold_window_ns;
        // Start-up parsed the kernel's BTF (megabytes); hand that memory back.
        // SAFETY: malloc_trim only releases free heap pages.
        unsafe { libc::malloc_trim(0) };
        let ring = Ring::new(ring).map_err(|e| anyhow!("polling the ring buffer: {e}"))?;
        Ok(Self {
            ebpf: Some(ebpf),
            ring,
            stats,
            folds,
            fronts,
            backend,
            why,
            mounted_tracefs,
            life_note,
            bound_inactive_dump,
            uring_note,
            _klog: klog,
            clock: None,
            shown: 0,
            folded_shown: 0,
            malformed: 0,
            last: HashMap::new(),
            fold_window_ns,
            tail: HashMap::new(),
            tail_overflow: 0,
            fold_swept: 0,
        })
    }

    /// Waits until the ring buffer holds records, then decodes up to `max`
    /// of them into `out`. Cancel-safe: nothing is read before the wait ends.
    pub async fn read(&mut self, out: &mut Vec<Event>, max: usize) -> io::Result<()> {
        loop {
            let (clock, malformed) = (&mut self.clock, &mut self.malformed);
            self.ring
                .drain_when_ready(|ring| ((), Self::decode_into(ring, clock, malformed, out, max)))
                .await?;
            if !out.is_empty() {
                let new = out.len();
                self.account(&mut out[..new]);
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

    fn account(&mut self, events: &mut [Event]) {
        for ev in events {
            if ev.ret != 0 && self.fold_window_ns != 0 {
                let key = fold_key(ev);
                // Repeats a sweep took out of the kernel's entry are the
                // ones this event would have carried.
                if let Some((n, _)) = self.tail.remove(&key) {
                    ev.folded += n;
                }
                // One description per stream is enough.
                self.last.entry(key).or_insert_with(|| ev.clone());
            }
            self.shown += 1;
            self.folded_shown += ev.folded;
        }
    }

    /// Removes the fold table's stale entries: those whose last event on
    /// every CPU is older than the fold window, so they can fold nothing
    /// more. Without this the table fills with keys of processes long gone
    /// and nothing is folded again. Repeats such an entry still holds move
    /// to user space (taken atomically with the entry), where the stream's
    /// next event carries them or the exit summary reports them. Then
    /// forgets the descriptions of keys the table no longer holds.
    pub fn sweep(&mut self) -> Sweep {
        let mut sweep = Sweep::default();
        if self.fold_window_ns == 0 {
            return sweep;
        }
        let now = boot_ns();
        let keys: Vec<FoldKey> = self.folds.keys().filter_map(Result::ok).collect();
        let mut kept = HashSet::with_capacity(keys.len());
        for key in keys {
            sweep.entries += 1;
            let Ok(per_cpu) = self.folds.get(&key, 0) else {
                continue;
            };
            let stale = per_cpu
                .iter()
                .all(|s| now.saturating_sub(s.last_sent_ns) >= self.fold_window_ns);
            if !stale {
                kept.insert(key);
                continue;
            }
            // Between the look and the removal the kernel may have used the
            // entry: what is removed is what the removal returns.
            let Some(pending) = self.take_entry(&key) else {
                kept.insert(key);
                continue;
            };
            sweep.removed += 1;
            if pending > 0 {
                sweep.moved += pending;
                sweep.moved_by_key.push((key, pending));
                let desc = self.last.get(&key).cloned();
                if let Some((n, _)) = self.tail.get_mut(&key) {
                    *n += pending;
                } else if self.tail.len() < TAIL_CAP {
                    self.tail.insert(key, (pending, desc));
                } else {
                    self.tail_overflow += pending;
                }
            }
        }
        self.fold_swept += sweep.removed;
        // A key a front slot still counts keeps its description: its
        // repeats reach the table (and a later sweep, or the exit) after.
        kept.extend(front_pending(&self.fronts).into_iter().map(|(k, _)| k));
        self.last.retain(|k, _| kept.contains(k));
        sweep
    }

    /// Removes `key` from the fold table, returning its pending repeats
    /// summed over CPUs as they were at the removal (BPF_MAP_LOOKUP_AND_DELETE_ELEM,
    /// 5.14+ for hash maps). Falls back to look-then-delete on older kernels.
    fn take_entry(&mut self, key: &FoldKey) -> Option<u64> {
        let cpus = aya::util::nr_cpus().ok()?;
        let mut values = vec![FoldState::default(); cpus];
        #[repr(C)]
        struct Attr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let fd = self.folds.map().fd().as_fd().as_raw_fd();
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            key: key as *const FoldKey as u64,
            value: values.as_mut_ptr() as u64,
            flags: 0,
        };
        const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
        // SAFETY: attr points at a live key and a buffer of one value per
        // possible CPU (FoldState is 8-byte aligned, as the kernel copies it).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &attr as *const Attr,
                size_of::<Attr>() as u32,
            )
        };
        if rc == 0 {
            return Some(values.iter().map(|s| s.pending).sum());
        }
        let pending = self.folds.get(key, 0).ok()?.iter().map(|s| s.pending).sum();
        self.folds.remove(key).ok()?;
        Some(pending)
    }

    /// The kernel's counters now.
    pub fn counters(&self) -> Counters {
        counters_of(&self.stats)
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
            fold_swept: self.fold_swept,
            ..Finish::default()
        };
        let mut tail: HashMap<FoldKey, (u64, Option<&Event>)> = self
            .tail
            .iter()
            .map(|(k, (n, ev))| (*k, (*n, ev.as_ref())))
            .collect();
        let (pending, entries) = pending_by_key(&self.folds, &self.fronts);
        finish.fold_entries = entries;
        for (key, pending) in pending {
            let slot = tail.entry(key).or_insert((0, None));
            slot.0 += pending;
            if slot.1.is_none() {
                slot.1 = self.last.get(&key);
            }
        }
        finish.folded_tail = self.tail_overflow;
        for (n, ev) in tail.into_values() {
            finish.folded_tail += n;
            let Some(ev) = ev else { continue };
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
                count: n,
            });
        }
        finish
    }
}

/// A second handle on the kernel's counters and fold table (duplicated map
/// fds), so a reader on another thread — the metrics endpoint — reads them
/// when it wants without ever waiting on, or being waited on by, the
/// session's reader task.
pub struct KernelView {
    stats: PerCpuArray<MapData, u64>,
    folds: PerCpuHashMap<MapData, FoldKey, FoldState>,
    fronts: PerCpuArray<MapData, FoldFront>,
}

/// The kernel's counters: each summed over CPUs and hooks.
fn counters_of(stats: &PerCpuArray<MapData, u64>) -> Counters {
    let get = |i: u32| -> u64 {
        (0..hook::COUNT)
            .filter_map(|h| stats.get(&(h * stat::COUNT + i), 0).ok())
            .map(|v| v.iter().sum::<u64>())
            .sum()
    };
    Counters {
        matched: get(stat::SENT) + get(stat::FOLDED) + get(stat::LOST),
        sent: get(stat::SENT),
        folded: get(stat::FOLDED),
        lost: get(stat::LOST),
        no_entry: get(stat::NO_ENTRY),
        fold_table_full: get(stat::FOLD_FULL),
    }
}

/// Failures folded in the kernel and not yet carried by an event, per fold
/// key, summed over CPUs, the table's and the front slots' (keys with none
/// left out); and how many entries the table holds. The table is read
/// first: a repeat moving from a front slot to the table meanwhile is missed
/// by this read (counted by the next), never seen twice.
fn pending_by_key(
    folds: &PerCpuHashMap<MapData, FoldKey, FoldState>,
    fronts: &PerCpuArray<MapData, FoldFront>,
) -> (HashMap<FoldKey, u64>, u64) {
    let mut entries = 0;
    let mut by_key: HashMap<FoldKey, u64> = HashMap::new();
    for (key, per_cpu) in folds.iter().filter_map(Result::ok) {
        entries += 1;
        let pending: u64 = per_cpu.iter().map(|s| s.pending).sum();
        if pending > 0 {
            *by_key.entry(key).or_default() += pending;
        }
    }
    for (key, pending) in front_pending(fronts) {
        *by_key.entry(key).or_default() += pending;
    }
    (by_key, entries)
}

/// The repeats each CPU's front slots hold (one per hook), by key (none
/// left out: at most one key per CPU and hook).
fn front_pending(fronts: &PerCpuArray<MapData, FoldFront>) -> Vec<(FoldKey, u64)> {
    (0..hook::COUNT)
        .filter_map(|h| fronts.get(&h, 0).ok())
        .flat_map(|per_cpu| {
            per_cpu
                .iter()
                .filter(|f| f.valid != 0 && f.pending > 0)
                .map(|f| (f.key, f.pending))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn dup_map(map: &MapData) -> Result<aya::maps::Map> {
    use std::os::fd::AsFd as _;
    let fd = map.fd().as_fd().try_clone_to_owned()?;
    Ok(aya::maps::Map::from_map_data(MapData::from_fd(fd)?)?)
}

impl Session {
    /// A [`KernelView`] on this session's maps; it stays readable after
    /// the session is dropped (it holds its own fds).
    pub fn kernel_view(&self) -> Result<KernelView> {
        use aya::maps::IterableMap as _;
        Ok(KernelView {
            stats: dup_map(self.stats.map())?.try_into()?,
            folds: dup_map(self.folds.map())?.try_into()?,
            fronts: dup_map(self.fronts.map())?.try_into()?,
        })
    }
}

impl KernelView {
    /// The kernel's counters now.
    pub fn counters(&self) -> Counters {
        counters_of(&self.stats)
    }

    /// Failures folded in the kernel and not yet carried by an event, per
    /// fold key (see [`pending_by_key`]).
    pub fn pending(&self) -> Vec<(FoldKey, u64)> {
        pending_by_key(&self.folds, &self.fronts)
            .0
            .into_iter()
            .collect()
    }
}
