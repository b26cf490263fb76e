//! Settings and maps shared by every program.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use portwatch_common::{
    Config, Event, FoldFront, FoldKey, FoldState, HolderSlot, LifeState, PendingCall, PortKey,
    HOLDER_SLOTS, SK_HEAD_BYTES,
};

/// Written by the loader before load; read-only afterwards, so the verifier
/// treats its fields as constants.
#[unsafe(no_mangle)]
// SAFETY: `Config` is `Pod` (plain integers, no padding): all-zero is a
// valid value.
pub static CONFIG: Config = unsafe { core::mem::zeroed() };

/// Reads one field of `CONFIG` without letting the compiler fold the
/// all-zero initial value into the code.
macro_rules! conf {
    ($($field:tt)+) => {
        // SAFETY: CONFIG is a plain static the kernel never writes after load.
        unsafe { core::ptr::read_volatile(&raw const $crate::config::CONFIG.$($field)+) }
    };
}
pub(crate) use conf;

/// Events for the loader. Its size is set by the loader (`--ring-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Arguments of calls in flight, from sys_enter to sys_exit, by pid_tgid.
#[map]
pub static CALLS: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);

/// Per-CPU counters, a row of `portwatch_common::stat` per hook.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(
    portwatch_common::stat::COUNT * portwatch_common::hook::COUNT,
    0,
);

/// Folding state of repeated identical failures, per CPU.
#[map]
pub static FOLDS: PerCpuHashMap<FoldKey, FoldState> = PerCpuHashMap::with_max_entries(16384, 0);

/// The fold table's front slots, per CPU and hook (`portwatch_common::FoldFront`).
#[map]
pub static FRONT: PerCpuArray<FoldFront> =
    PerCpuArray::with_max_entries(portwatch_common::hook::COUNT, 0);

/// The first `SK_HEAD_BYTES` of a sock, read at once (`sock::head`), per
/// CPU and hook.
#[map]
pub static SKHEAD: PerCpuArray<[u64; SK_HEAD_BYTES as usize / 8]> =
    PerCpuArray::with_max_entries(portwatch_common::hook::COUNT, 0);

/// Where an event is built before it is sent (too big for the stack), per
/// CPU and hook.
#[map]
pub static SCRATCH: PerCpuArray<Event> =
    PerCpuArray::with_max_entries(portwatch_common::hook::COUNT, 0);

/// Who last bound or started listening on each port, per network namespace
/// and protocol: a table of two-slot sets (see `holders`), set
/// `portwatch_common::holder_set(key)`. When a third port's record comes to
/// a full set, it replaces the older record that is not a live listener's.
#[map]
pub static HOLDERS: Array<HolderSlot> = Array::with_max_entries(HOLDER_SLOTS, 0);

/// Port filter: bit `port % 32` of word `port / 32`.
#[map]
pub static PORTS: Array<u32> = Array::with_max_entries(2048, 0);

/// Pid (thread group id) filter.
#[map]
pub static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Uid filter.
#[map]
pub static UIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// cgroup v2 id filter.
#[map]
pub static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// comm filter, NUL padded to 16 bytes.
#[map]
pub static COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(1024, 0);

/// Network namespace inode filter.
#[map]
pub static NETNS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Adds one to `hook`'s per-CPU counter `index`.
#[inline(always)]
pub fn count(hook: u32, index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(hook * portwatch_common::stat::COUNT + index) {
        // SAFETY: a valid, aligned map value; the hook's own row on this
        // CPU, which no other run of the same program can interleave with
        // (see `portwatch_common::hook`): no atomics needed.
        unsafe { *slot += 1 };
    }
}

/// Port life records for `watch --record` (`portwatch_common::Life`).
/// Small: listeners come and go rarely, TIME_WAIT is sent once a second.
#[map]
pub static LIFE: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Ports of interest (those that failed, or that `--port` names) and their
/// TIME_WAIT counting state. LRU: the oldest interest is forgotten first.
#[map]
pub static WATCHED: LruHashMap<PortKey, LifeState> = LruHashMap::with_max_entries(4096, 0);

/// Ports that may be of interest to port life, one byte per port (entry
/// `port / 64`, byte `port % 64`): set by `life::note_failure` and, for
/// `--port`, by the loader. Never cleared: a superset of `WATCHED`'s ports,
/// checked before it so that connections on other ports cost no hash lookup.
#[map]
pub static INTEREST: Array<[u8; 64]> = Array::with_max_entries(1024, 0);
