//! What the kernel's folding of identical failures accounts for, in user
//! space terms: its counters, the repeats still pending when a session
//! ends, and the fold key of an event.

use std::net::IpAddr;

use portwatch_common::FoldKey;
use serde::{Deserialize, Serialize};

use crate::{
    event::Event,
    request::{Errno, Family, Proto, Syscall},
};

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
    pub fold_table_full: u64,
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
    /// The streams whose tail is pending, described (at most
    /// `TAIL_CAP` (4096) swept streams plus what the fold table still holds).
    pub repeats: Vec<Repeat>,
    /// Stale fold-table entries removed by sweeps.
    pub fold_swept: u64,
    /// Fold-table entries at exit.
    pub fold_entries: u64,
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
