//! TCP state changes (`inet_sock_set_state`), for `watch --record` only:
//! the life of ports of interest (a listener opening and closing, TIME_WAIT
//! leftovers). Without `--record` nothing is attached here: listeners enter
//! the holder table as their listen() returns (`listen`, `uring`).
//!
//! Every TCP connection passes here several times on each end, and almost
//! none of those changes concern portwatch: a change of no use returns
//! before any read or map access. The order is the states first (the
//! program's arguments), then whether the local port is of interest (one
//! read and one array slot, `life::port_of_interest`), then the protocol,
//! and only then the socket walk. Two programs share it: a raw tracepoint
//! (the kernel builds no record for it), which the loader tries first, and
//! the classic tracepoint where the kernel refuses the raw one.

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::{config::conf, life, sock};

const IPPROTO_TCP: u16 = 6;

/// The raw tracepoint: arguments `(const struct sock *sk, int oldstate,
/// int newstate)`, which the loader checked against the kernel's BTF.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn sock_state_raw(ctx: RawTracePointContext) -> u32 {
    let (old, new) = (ctx.arg::<i32>(1), ctx.arg::<i32>(2));
    if life::counted(old, new) {
        on_change(ctx.arg::<u64>(0), old, new, None);
    }
    0
}

/// The classic tracepoint: the same, from the record the kernel built,
/// whose field offsets the loader read from tracefs.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let off_new = conf!(offsets.tp_state_new) as usize;
    // SAFETY: a checked copy out of the record (an
    // offset past it is an error, not a fault); any bytes are a valid integer.
    let new = unsafe { ctx.read_at::<i32>(off_new) }.unwrap_or(0);
    // `oldstate` sits right before `newstate` (checked by the loader).
    // SAFETY: a checked copy, as above.
    let old = unsafe { ctx.read_at::<i32>(off_new - 4) }.unwrap_or(0);
    if !life::counted(old, new) {
        return 0;
    }
    let (off_proto, off_sk) = (
        conf!(offsets.tp_state_proto) as usize,
        conf!(offsets.tp_state_sk) as usize,
    );
    // SAFETY: a checked copy, as above.
    let proto = unsafe { ctx.read_at::<u16>(off_proto) }.unwrap_or(0);
    // SAFETY: a checked copy, as above.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(off_sk) } {
        on_change(sk, old, new, Some(proto));
    }
    0
}

/// A change port life counts: the port first, the protocol after (`proto`
/// is the record's, where the program has one).
#[inline(always)]
fn on_change(sk: u64, old: i32, new: i32, proto: Option<u16>) {
    if !life::port_of_interest(sk) {
        return;
    }
    let tcp = proto.unwrap_or_else(|| sock::read(sk, conf!(offsets.sk_protocol))) == IPPROTO_TCP;
    if tcp {
        life::on_state(sk, old, new);
    }
}
