//! The kernel's record of who holds each port, so that a failure names its
//! holder even when that process exits before userspace can look.
//!
//! Recorded on every successful bind() and on every TCP socket entering
//! LISTEN (`sock/inet_sock_set_state`), keyed by (netns, port, protocol).
//! At a failure the record's socket is read again: its state and options at
//! that instant travel with the event.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use portwatch_common::{Event, PortKey, RecordSlot, HOW_LISTEN};

use crate::{
    config::{conf, HOLDERS},
    mem,
    sock::{self, read},
};

const TCP_LISTEN: i32 = 10;
const IPPROTO_TCP: u16 = 6;

/// Records the current process as the holder of `sk`'s port.
#[inline(always)]
pub fn record(sk: u64, how: u8) {
    let Some((key, family)) = sock::key_of(sk) else {
        return;
    };
    // A live listener stays the port's holder: a second socket entering
    // LISTEN may be about to fail (its state flips before the port check),
    // and a socket bound beside a listener is the lesser story.
    // Only a record made by a listener can protect its port: a socket that
    // starts listening is recorded again (HOW_LISTEN) by the state
    // tracepoint, so a bind's record is replaced without reading its socket
    // (six dependent kernel reads saved on every successful bind).
    if let Some(old) = unsafe { HOLDERS.get(key) } {
        let old_sk = old.sk;
        if old.record.how == HOW_LISTEN
            && old_sk != sk
            && sock::key_of(old_sk).is_some_and(|(k, _)| k == key)
            && read::<u8>(old_sk, conf!(offsets.sk_state)) == TCP_LISTEN as u8
        {
            return;
        }
    }
    // SAFETY: all-zero is a valid RecordSlot (plain integers).
    unsafe {
        mem::with_zeroed(|slot: &mut RecordSlot| {
            slot.sk = sk;
            let holder = &mut slot.record;
            holder.ts_boot_ns = bpf_ktime_get_boot_ns();
            holder.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            holder.uid = bpf_get_current_uid_gid() as u32;
            holder.comm = mem::comm();
            holder.family = family;
            holder.how = how;
            holder.addr = sock::bound_addr(sk, family);
            let _ = HOLDERS.insert(key, &*slot, 0);
        })
    };
}

/// Records the holder of the socket behind `fd` after a successful bind().
#[inline(always)]
pub fn record_fd(fd: i32, how: u8) {
    if let Ok((_, sk)) = sock::socket_of_fd(fd) {
        record(sk, how);
    }
}

/// Copies the recorded holder of `ev`'s port into `ev`, with the state and
/// options its socket has right now. `failing_sk` is the caller's own socket,
/// which is never its own holder.
#[inline(always)]
pub fn attach(ev: &mut Event, failing_sk: u64) {
    if ev.port == 0 {
        return;
    }
    let key = PortKey {
        netns: ev.netns,
        port: ev.port,
        protocol: ev.protocol,
    };
    let Some(rec) = (unsafe { HOLDERS.get(key) }) else {
        return;
    };
    let sk = rec.sk;
    if sk == failing_sk {
        return;
    }
    // SAFETY: two Records, one in a map value, one in the event.
    unsafe { mem::copy(&mut ev.record, &rec.record) };
    // A closed socket gives its port back (inet_num goes to 0) or is freed:
    // then it no longer matches the key and only the record remains.
    if sock::key_of(sk).is_some_and(|(now, _)| now == key) {
        ev.record.state = read(sk, conf!(offsets.sk_state));
        ev.record.opts = sock::opts_of(sk);
    } else {
        crate::diag::holder_moved(ev.port);
    }
}

/// Records listeners: a TCP socket entering LISTEN, in the listen()ing process.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let (off_sk, off_new, off_proto) = (
        conf!(offsets.tp_state_sk) as usize,
        conf!(offsets.tp_state_new) as usize,
        conf!(offsets.tp_state_proto) as usize,
    );
    let new = unsafe { ctx.read_at::<i32>(off_new) }.unwrap_or(0);
    let proto = unsafe { ctx.read_at::<u16>(off_proto) }.unwrap_or(0);
    if proto != IPPROTO_TCP {
        return 0;
    }
    if conf!(record_life) != 0 {
        // `oldstate` sits right before `newstate` (checked by the loader).
        let old = unsafe { ctx.read_at::<i32>(off_new - 4) }.unwrap_or(0);
        if let Ok(sk) = unsafe { ctx.read_at::<u64>(off_sk) } {
            crate::life::on_state(sk, old, new);
        }
    }
    if new != TCP_LISTEN {
        return 0;
    }
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(off_sk) } {
        record(sk, HOW_LISTEN);
    }
    0
}
