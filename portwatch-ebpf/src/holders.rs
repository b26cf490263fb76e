//! The kernel's record of who holds each port, so that a failure names its
//! holder even when that process exits before userspace can look.
//!
//! Recorded on every successful bind() and listen(), from the syscalls'
//! exits, fexit on inet_bind/inet6_bind/inet_listen, or io_uring's
//! completions, keyed by (netns, port, protocol).
//! At a failure the record's socket is read again: its state and options at
//! that instant travel with the event.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::helpers::{bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, generated::bpf_jiffies64};
use portwatch_common::{
    holder_set, Event, HolderEntry, HolderRecord, HolderSlot, PortKey, HOW_LISTEN, SYSCALL_LISTEN,
};

use crate::{
    config::{conf, HOLDERS},
    mem, sock,
};

const TCP_LISTEN: i32 = 10;

/// A port key as one word, to compare and store it in one access.
#[inline(always)]
fn word(key: &PortKey) -> u64 {
    // SAFETY: `PortKey` is 8 bytes of plain integers without padding
    // (`Pod` in portwatch-common), and any 8 bytes are a valid `u64`.
    unsafe { core::mem::transmute::<PortKey, u64>(*key) }
}

/// Marks a slot as being written: its sequence made odd. Not an atomic
/// increment (Rust's BPF target has no atomic read-modify-write), so it
/// sets the low bit instead of adding: two CPUs writing one slot in the
/// same instant, rare in itself, both leave it odd and then both even
/// (`write_end`), never odd for good. A reader racing them may take a
/// mixed record, whose socket `attach` still checks against the port.
#[inline(always)]
unsafe fn write_begin(seq: *mut u64) -> u64 {
    // SAFETY: `seq` is a slot's sequence in a `HOLDERS` value (every caller
    // passes one): valid and aligned.
    unsafe {
        let odd = read_volatile(seq) | 1;
        write_volatile(seq, odd);
        odd
    }
}

/// Marks a slot as written: its sequence the even number after `odd`.
#[inline(always)]
unsafe fn write_end(seq: *mut u64, odd: u64) {
    // SAFETY: as in `write_begin`, a sequence in a `HOLDERS` value.
    unsafe { write_volatile(seq, odd.wrapping_add(1)) };
}

/// Whether the live listener `sk` still holds `key`'s port: its record
/// then stays, whatever binds beside it or shares its set.
#[inline(always)]
fn live_listener(sk: u64, key: u64, hook: u32) -> bool {
    sock::held(sk, true, false, hook)
        .is_some_and(|h| word(&h.key) == key && h.state == TCP_LISTEN as u8)
}

/// A slot's port key, as one word (0: empty).
#[inline(always)]
unsafe fn key_in(slot: *const HolderSlot) -> u64 {
    // SAFETY: `slot` is a `HOLDERS` value (every caller passes one from
    // `set_of`): valid and aligned.
    unsafe { word(&read_volatile(&raw const (*slot).key)) }
}

/// Whether a slot holds the record of a listener that still listens on
/// its port: such a record is never replaced by another socket's.
#[inline(always)]
unsafe fn protected(slot: *const HolderSlot, hook: u32) -> bool {
    // SAFETY: `slot` is a `HOLDERS` value (every caller passes one from
    // `set_of`); a racing writer leaves plain integers, which `live_listener`
    // checks against the socket itself.
    unsafe {
        read_volatile(&raw const (*slot).entry.holder.how) == HOW_LISTEN
            && live_listener(
                read_volatile(&raw const (*slot).entry.sk),
                key_in(slot),
                hook,
            )
    }
}

/// The two slots of `key`'s set.
#[inline(always)]
fn set_of(key: &PortKey) -> Option<(*mut HolderSlot, *mut HolderSlot)> {
    let first = holder_set(key);
    Some((HOLDERS.get_ptr_mut(first)?, HOLDERS.get_ptr_mut(first + 1)?))
}

/// The slot holding `key`'s record, if either slot of its set does.
#[inline(always)]
fn find(key: &PortKey) -> Option<*mut HolderSlot> {
    let (a, b) = set_of(key)?;
    let k = word(key);
    // SAFETY: `a` and `b` are `HOLDERS` values, from `set_of`.
    unsafe {
        if key_in(a) == k {
            Some(a)
        } else if key_in(b) == k {
            Some(b)
        } else {
            None
        }
    }
}

/// Where `key`'s new record goes in its set: the slot already holding the
/// port, else an empty one, else the one whose record is not a live
/// listener's (the older when neither is); None when both are live
/// listeners' (they keep their records).
#[inline(always)]
unsafe fn place(
    key: u64,
    a: *mut HolderSlot,
    b: *mut HolderSlot,
    hook: u32,
) -> Option<*mut HolderSlot> {
    // SAFETY: `a` and `b` are `HOLDERS` values (the caller's, from `set_of`).
    unsafe {
        let (ka, kb) = (key_in(a), key_in(b));
        if ka == key {
            return Some(a);
        }
        if kb == key {
            return Some(b);
        }
        if ka == 0 {
            return Some(a);
        }
        if kb == 0 {
            return Some(b);
        }
        let a_older = read_volatile(&raw const (*a).entry.jiffies)
            <= read_volatile(&raw const (*b).entry.jiffies);
        let (older, newer) = if a_older { (a, b) } else { (b, a) };
        if !protected(older, hook) {
            Some(older)
        } else if !protected(newer, hook) {
            Some(newer)
        } else {
            None
        }
    }
}

/// Who the current thread is, for its record: a time it was running at
/// (`HolderRecord::running_ns`), its uid and its comm. From `task`, the
/// current task as a BTF-typed pointer where the program has one: plain
/// loads, where the clock, uid and comm helpers cost about 60, 35 and 40 ns
/// of a successful bind's 250 (BENCHMARKS.md); else from the helpers.
#[inline(always)]
fn whoami(task: u64) -> (u64, u32, [u8; 16]) {
    if conf!(args_from_regs) != 0 && task != 0 {
        let started: u64 = sock::load(task, conf!(offsets.task_start));
        let cred: u64 = sock::load(task, conf!(offsets.task_cred));
        let uid: u32 = sock::load(cred, conf!(offsets.cred_uid));
        let off = conf!(offsets.task_comm);
        let comm = [
            sock::load::<u64>(task, off),
            sock::load::<u64>(task, off + 8),
        ];
        // SAFETY: two `u64`s are 16 bytes, each a valid `u8`.
        (started, uid, unsafe {
            core::mem::transmute::<[u64; 2], [u8; 16]>(comm)
        })
    } else {
        // SAFETY: helpers without arguments, and `mem::comm` writes into its
        // own buffer.
        unsafe {
            (
                bpf_ktime_get_boot_ns(),
                bpf_get_current_uid_gid() as u32,
                mem::comm(),
            )
        }
    }
}

/// Records the current process as the holder of `sk`'s port. `task`: the
/// current task as a BTF-typed pointer where the program has one (see
/// `sock::socket_of_fd`), else 0.
#[inline(always)]
pub fn record(sk: u64, how: u8, pid_tgid: u64, task: u64, hook: u32) {
    if let Some(held) = sock::held(sk, false, true, hook) {
        record_held(sk, &held, how, pid_tgid, task, hook);
    }
}

/// `record` with what the table needs of `sk` already read.
#[inline(always)]
fn record_held(sk: u64, held: &sock::Held, how: u8, pid_tgid: u64, task: u64, hook: u32) {
    let key = held.key;
    let Some((a, b)) = set_of(&key) else {
        return;
    };
    // A live listener stays its port's holder: a socket bound beside a
    // listener, or whose port shares the listener's set, is the lesser
    // story.
    // Only a record made by a listener can protect its slot: a socket that
    // starts listening is recorded again (HOW_LISTEN) as its listen()
    // returns, so a bind's record is replaced without reading its socket.
    // SAFETY: `a` and `b` are `HOLDERS` values, from `set_of`.
    let Some(slot) = (unsafe { place(word(&key), a, b, hook) }) else {
        return;
    };
    // SAFETY: `slot` is one of `a` and `b`, `HOLDERS` values.
    unsafe {
        if key_in(slot) == word(&key)
            && read_volatile(&raw const (*slot).entry.sk) != sk
            && protected(slot, hook)
        {
            return;
        }
    }
    // SAFETY: all-zero is a valid HolderEntry (plain integers); `slot` is a
    // map value, written between two bumps of its sequence.
    unsafe {
        mem::with_zeroed(|new: &mut HolderEntry| {
            new.sk = sk;
            new.jiffies = bpf_jiffies64();
            let holder = &mut new.holder;
            holder.pid = (pid_tgid >> 32) as u32;
            (holder.running_ns, holder.uid, holder.comm) = whoami(task);
            holder.family = held.family;
            holder.how = how;
            holder.addr = held.addr;
            let odd = write_begin(&raw mut (*slot).seq);
            write_volatile(&raw mut (*slot).key, key);
            mem::copy(&raw mut (*slot).entry, new);
            write_end(&raw mut (*slot).seq, odd);
        })
    };
}

/// Copies the record of `key`'s port into `out` and returns its socket, if
/// the table holds one; None when neither slot of its set does, or the slot
/// was being rewritten during the copy.
#[inline(always)]
fn lookup(key: &PortKey, out: &mut HolderRecord) -> Option<u64> {
    let slot = find(key)?;
    // SAFETY: `slot` is a `HOLDERS` value (from `find`) and `out` a valid
    // `HolderRecord` apart from it; a racing writer changes the sequence,
    // which is checked after the copy.
    unsafe {
        let seq = read_volatile(&raw const (*slot).seq);
        if seq & 1 != 0 || key_in(slot) != word(key) {
            return None;
        }
        let sk = read_volatile(&raw const (*slot).entry.sk);
        mem::copy(out, &raw const (*slot).entry.holder);
        if read_volatile(&raw const (*slot).seq) != seq {
            return None;
        }
        Some(sk)
    }
}

/// The pid recorded for `key`'s port if its socket is `sk`, else 0.
#[inline(always)]
pub fn recorded_pid(key: &PortKey, sk: u64) -> u32 {
    let Some(slot) = find(key) else {
        return 0;
    };
    // SAFETY: `slot` is a `HOLDERS` value (from `find`); a racing writer
    // changes the sequence, which is checked after the reads.
    unsafe {
        let seq = read_volatile(&raw const (*slot).seq);
        let same = key_in(slot) == word(key) && read_volatile(&raw const (*slot).entry.sk) == sk;
        let pid = read_volatile(&raw const (*slot).entry.holder.pid);
        if seq & 1 != 0 || !same || read_volatile(&raw const (*slot).seq) != seq {
            return 0;
        }
        pid
    }
}

/// Records the holder of the socket behind `fd` after a successful bind().
/// `task`: the current task as a BTF-typed pointer where the program has
/// one (see `sock::socket_of_fd`).
#[inline(always)]
pub fn record_fd(task: u64, fd: i32, how: u8, pid_tgid: u64, hook: u32) {
    if conf!(casts.enabled) != 0 && task != 0 {
        // Plain loads all the way from the fd to the sock's fields.
        if let Some((sk, held)) = sock::socket_of_fd_typed(task, fd)
            .ok()
            .and_then(|(_, sk)| Some((sk, sock::held_typed(sk)?)))
        {
            record_held(sk, &held, how, pid_tgid, task, hook);
        }
    } else if let Ok((_, sk)) = sock::socket_of_fd(task, fd) {
        record(sk, how, pid_tgid, task, hook);
    }
}

/// Copies the recorded holder of `ev`'s port into `ev`, with the state and
/// options its socket has right now. `failing_sk` is the caller's own socket,
/// which is never its own holder.
#[inline(always)]
pub fn attach(ev: &mut Event, failing_sk: u64, hook: u32) {
    if ev.port == 0 {
        return;
    }
    let key = PortKey {
        netns: ev.netns,
        port: ev.port,
        protocol: ev.protocol,
    };
    let Some(sk) = lookup(&key, &mut ev.holder) else {
        return;
    };
    // A listen() failing on its own bound socket may find that socket's
    // own record: it is not its own holder. A bind() never can (a socket
    // binds once, and EADDRINUSE leaves it unbound): the same address there
    // is a recorded socket that was freed and whose memory now backs the
    // failing one (a listener closed, then `socket()` again, as a restart
    // does). Its record stands, with the socket gone.
    if sk == failing_sk && ev.syscall == SYSCALL_LISTEN {
        // SAFETY: all-zero is a valid HolderRecord: no record.
        unsafe { mem::zero(&raw mut ev.holder) };
        return;
    }
    // A closed socket gives its port back (inet_num goes to 0) or is freed:
    // then it no longer matches the key and only the record remains.
    if let Some(now) = sock::held(sk, true, false, hook).filter(|h| h.key == key) {
        ev.holder.state = now.state;
        ev.holder.opts = sock::opts_of(sk);
        // Another device's socket is not in the failing socket's way:
        // user space needs the device to tell.
        ev.holder.bound_dev_if = sock::read(sk, conf!(offsets.sk_bound_dev_if));
    } else {
        crate::diag::holder_moved(ev.port);
    }
}
