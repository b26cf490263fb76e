//! `sock/inet_sock_set_state`: TCP state changes feed the holder table
//! (a socket entering LISTEN, in the listen()ing process) and, under
//! `watch --record`, the life of ports of interest.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use portwatch_common::HOW_LISTEN;

use crate::{config::conf, holders, life};

const TCP_LISTEN: i32 = 10;
const IPPROTO_TCP: u16 = 6;

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
            life::on_state(sk, old, new);
        }
    }
    if new != TCP_LISTEN {
        return 0;
    }
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(off_sk) } {
        holders::record(
            sk,
            HOW_LISTEN,
            bpf_get_current_pid_tgid(),
            portwatch_common::hook::SOCK_STATE,
        );
    }
    0
}
