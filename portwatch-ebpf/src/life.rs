//! The life of ports of interest, for `watch --record`: a listener opening
//! and closing, and TIME_WAIT leftovers, from `sock/inet_sock_set_state`.
//!
//! A port is of interest once a failure on it was sent (`note_failure`) or
//! when `--port` names it; `INTEREST` marks those ports for the first, cheap
//! check every counted state change makes (`port_of_interest`). Bounded:
//! listeners are sent one by one (they are rare), TIME_WAIT sockets are
//! counted per port and sent at most once a second with their count, so a
//! busy port never becomes a connection log.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
};
use portwatch_common::{
    Event, Life, LifeState, PortKey, FILTER_PORT, LIFE_CLOSED, LIFE_LISTEN, LIFE_TIME_WAIT,
};

use crate::{
    config::{conf, INTEREST, LIFE, PORTS, WATCHED},
    holders, mem, sock,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_TIME_WAIT: i32 = 6;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const SECOND_NS: u64 = 1_000_000_000;

/// Marks the port of a failure just sent as of interest.
#[inline(always)]
pub fn note_failure(ev: &Event) {
    if conf!(record_life) == 0 || ev.port == 0 {
        return;
    }
    if let Some(slots) = INTEREST.get_ptr_mut(u32::from(ev.port) / 64) {
        // SAFETY: a valid `INTEREST` value, indexed inside its 64 bytes.
        // One byte per port: a plain store, which cannot undo another
        // CPU's mark of a neighbouring port as a bit would.
        unsafe { (*slots)[usize::from(ev.port) % 64] = 1 };
    }
    let key = PortKey {
        netns: ev.netns,
        port: ev.port,
        protocol: ev.protocol,
    };
    let _ = WATCHED.insert(key, LifeState::default(), BPF_NOEXIST as u64);
}

/// Whether port life counts a change from `old` to `new` (see `on_state`):
/// from the states alone, before anything is read.
#[inline(always)]
pub fn counted(old: i32, new: i32) -> bool {
    conf!(record_life) != 0 && kind(old, new).is_some()
}

/// Whether `sk`'s local port may be of interest: marked in `INTEREST`
/// (every port `WATCHED` holds or `--port` names is; a port the LRU forgot
/// stays marked, and `on_state` then finds nothing). One read and one
/// array slot, before any hash lookup.
#[inline(always)]
pub fn port_of_interest(sk: u64) -> bool {
    let port: u16 = sock::read(sk, conf!(offsets.sk_num));
    INTEREST
        .get(u32::from(port) / 64)
        .is_some_and(|slots| slots[usize::from(port) % 64] != 0)
}

/// What a change from `old` to `new` means for the port's life, if anything.
#[inline(always)]
fn kind(old: i32, new: i32) -> Option<u8> {
    // A connection the local side closes first (ESTABLISHED -> FIN_WAIT1,
    // in the closing process) leaves a TIME_WAIT socket behind: counted
    // there, where the closer is known. (The later FIN_WAIT2 -> CLOSE, as
    // the time-wait socket takes over, runs in softirq context.)
    if new == TCP_LISTEN {
        Some(LIFE_LISTEN)
    } else if old == TCP_LISTEN && new == TCP_CLOSE {
        Some(LIFE_CLOSED)
    } else if new == TCP_TIME_WAIT || (old == TCP_ESTABLISHED && new == TCP_FIN_WAIT1) {
        Some(LIFE_TIME_WAIT)
    } else {
        None
    }
}

/// The port's counting state, when the port is of interest.
#[inline(always)]
fn interest(key: &PortKey) -> Option<*mut LifeState> {
    if let Some(st) = WATCHED.get_ptr_mut(key) {
        return Some(st);
    }
    if conf!(filters) & FILTER_PORT == 0 {
        return None;
    }
    let word = PORTS.get(key.port as u32 / 32).copied().unwrap_or(0);
    if word & (1 << (key.port as u32 % 32)) == 0 {
        return None;
    }
    let _ = WATCHED.insert(key, LifeState::default(), BPF_NOEXIST as u64);
    WATCHED.get_ptr_mut(key)
}

/// A TCP socket `sk` went from `old` to `new`.
#[inline(always)]
pub fn on_state(sk: u64, old: i32, new: i32) {
    if conf!(record_life) == 0 {
        return;
    }
    let Some(kind) = kind(old, new) else {
        return;
    };
    // Field by field: TCP state changes often come in a softirq (see
    // `sock::held`).
    let Some(held) = sock::held_by_fields(sk, false, true) else {
        return;
    };
    let key = held.key;
    let Some(st) = interest(&key) else {
        return;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let mut count = 0;
    if kind == LIFE_TIME_WAIT {
        // SAFETY: a map value pointer; races between CPUs only blur a count.
        unsafe {
            (*st).tw_pending += 1;
            if (*st).tw_sent_ns != 0 && now.wrapping_sub((*st).tw_sent_ns) < SECOND_NS {
                return;
            }
            (*st).tw_sent_ns = now;
            count = (*st).tw_pending;
            (*st).tw_pending = 0;
        }
    }
    let holder_pid = if kind == LIFE_CLOSED {
        holders::recorded_pid(&key, sk)
    } else {
        0
    };
    // SAFETY: all-zero is a valid Life; the padding must be zero.
    unsafe {
        mem::with_zeroed(|life: &mut Life| {
            life.ts_boot_ns = now;
            life.sk = sk;
            life.count = count;
            life.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            life.holder_pid = holder_pid;
            life.netns = key.netns;
            life.port = key.port;
            life.family = held.family;
            life.kind = kind;
            life.comm = mem::comm();
            life.addr = held.addr;
            // A full ring loses this record; user space learns of it by the
            // gap only, which is acceptable for a 64 KiB ring of rare records.
            let _ = LIFE.output::<Life>(life, 0);
        })
    };
}
