//! io_uring: IORING_OP_BIND / IORING_OP_LISTEN (Linux 6.11+) never pass the
//! syscall tracepoints, so the tracepoint backend also hooks
//! `io_uring/io_uring_complete`, reads the request (`struct io_kiocb`) at
//! offsets from BTF, and hands a `Call` to the shared path.
//!
//! That tracepoint fires for every io_uring completion on the machine, so
//! the order is: the result (a ctx read) first; a positive result returns
//! at once; a zero one (a bind or listen that worked, among others) pays
//! for reading the opcode only when holders are tracked, to record a bind
//! or listen in the holder table; a failure is checked against the errno
//! mask (a constant), and only a wanted one pays for reading the opcode,
//! and only a bind or listen for the rest.
//!
//! The completion is posted while the request is still live: the bind's
//! `async_data` (the kernel's copy of the sockaddr) is freed or recycled
//! after the CQE is filled, and the current task is the submitter (or one of its io_uring
//! threads, which share its thread group id).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use portwatch_common::{
    hook, AF_INET, AF_INET6, HOW_BIND, HOW_LISTEN, SOURCE_IO_URING, SYSCALL_BIND, SYSCALL_LISTEN,
};

use crate::{
    config::conf,
    diag,
    emit::{self, Call},
    holders,
    sock::{read, sk_of},
};

/// Reports failed io_uring binds and listens, and records successful ones
/// in the holder table.
#[tracepoint]
pub fn io_uring_complete(ctx: TracePointContext) -> u32 {
    let off_res = conf!(uring.tp_res) as usize;
    // SAFETY: a checked copy out of the record (an offset past it is an
    // error, not a fault); any bytes are a valid `i32`.
    let res = unsafe { ctx.read_at::<i32>(off_res) }.unwrap_or(0);
    if res == 0 && conf!(track_holders) != 0 {
        if let Some(op) = bind_or_listen(&ctx).filter(|op| op.socket != 0) {
            let how = if op.syscall == SYSCALL_BIND {
                HOW_BIND
            } else {
                HOW_LISTEN
            };
            // The submitter (io_uring's worker threads share its tgid).
            holders::record(
                sk_of(op.socket),
                how,
                bpf_get_current_pid_tgid(),
                0,
                hook::IO_URING,
            );
        }
        return 0;
    }
    if res >= 0 || !emit::wanted(res) {
        return 0;
    }
    let Some(op) = bind_or_listen(&ctx) else {
        return 0;
    };
    if op.socket == 0 {
        // io_uring checked this file is a socket before binding: a mismatch
        // means the offsets are wrong, not that the caller erred.
        diag::uring_not_socket(op.opcode, res);
        return 0;
    }
    let (mut addr, mut addrlen) = (0u64, 0i32);
    if op.syscall == SYSCALL_BIND {
        let data: u64 = read(op.req, conf!(uring.req_async_data));
        let family: u16 = read(sk_of(op.socket), conf!(offsets.sk_family));
        addr = requested_addr(data, family);
        if addr == 0 {
            diag::uring_no_addr(res, family);
        } else {
            addrlen = read(op.req, conf!(uring.req_cmd) + conf!(uring.bind_addr_len));
        }
    }
    let _ = emit::handle(&Call {
        syscall: op.syscall,
        source: SOURCE_IO_URING,
        ret: res,
        fd: -1,
        socket: op.socket,
        addr,
        addrlen,
        user_addr: false,
        pid_tgid: bpf_get_current_pid_tgid(),
        task: 0,
        hook: hook::IO_URING,
    });
    0
}

/// A completed io_uring bind or listen.
struct Op {
    /// The request (`struct io_kiocb *`).
    req: u64,
    opcode: u8,
    /// `SYSCALL_BIND` or `SYSCALL_LISTEN`.
    syscall: u8,
    /// Its `struct socket *`, checked against its file; 0 if that failed.
    socket: u64,
}

/// The completion's request if it is a bind or a listen: one read for the
/// opcode, three more for its socket.
#[inline(always)]
fn bind_or_listen(ctx: &TracePointContext) -> Option<Op> {
    let off_req = conf!(uring.tp_req) as usize;
    // SAFETY: a checked copy out of the record; any bytes are a valid `u64`.
    let req = unsafe { ctx.read_at::<u64>(off_req) }.unwrap_or(0);
    // Auxiliary completions (multishot, msg_ring) carry no request.
    if req == 0 {
        return None;
    }
    let opcode: u8 = read(req, conf!(uring.req_opcode));
    let syscall = if opcode == conf!(uring.op_bind) {
        SYSCALL_BIND
    } else if opcode == conf!(uring.op_listen) && opcode != 0 {
        SYSCALL_LISTEN
    } else {
        return None;
    };
    let file: u64 = read(req, conf!(uring.req_file));
    let socket: u64 = read(file, conf!(offsets.file_private_data));
    let back: u64 = read(socket, conf!(offsets.socket_file));
    let socket = if file != 0 && back == file { socket } else { 0 };
    Some(Op {
        req,
        opcode,
        syscall,
        socket,
    })
}

/// Where a bind request keeps the kernel's copy of its sockaddr: in the
/// request's async data, either at its start (kernels where that is a bare
/// `struct sockaddr_storage`) or at `io_async_msghdr.addr` (6.11 as
/// released). Which of the two is a matter of code, not of type layout, so
/// BTF cannot tell; the copy is the candidate whose family is the socket's
/// (inet_bind refuses another family before it can fail with EADDRINUSE).
/// The bare one is tried first: an `io_async_msghdr` starts with an aligned
/// pointer (or NULL), whose low bytes never read as AF_INET or AF_INET6.
/// 0 when neither matches.
#[inline(always)]
fn requested_addr(data: u64, family: u16) -> u64 {
    if data == 0 || (family != AF_INET && family != AF_INET6) {
        return 0;
    }
    if read::<u16>(data, 0) == family {
        return data;
    }
    let msghdr = data + conf!(uring.msghdr_addr) as u64;
    if read::<u16>(msghdr, 0) == family {
        return msghdr;
    }
    0
}
