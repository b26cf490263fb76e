//! io_uring: IORING_OP_BIND / IORING_OP_LISTEN (Linux 6.11+) never pass the
//! syscall tracepoints, so the tracepoint backend also hooks
//! `io_uring/io_uring_complete`, reads the request (`struct io_kiocb`) at
//! offsets from BTF, and hands a `Call` to the shared path.
//!
//! That tracepoint fires for every io_uring completion on the machine, so
//! the order is: the result (a ctx read) first, successes return at once;
//! then the errno mask (a constant); only a wanted failure pays for reading
//! the request's opcode, and only a bind or listen for the rest.
//!
//! The completion is posted while the request is still live: the bind's
//! `async_data` (the kernel's copy of the sockaddr) is freed or recycled
//! after the CQE is filled, and the current task is the submitter (or one of its io_uring
//! threads, which share its thread group id).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use portwatch_common::{AF_INET, AF_INET6, SOURCE_IO_URING, SYSCALL_BIND, SYSCALL_LISTEN};

use crate::{
    config::conf,
    diag,
    emit::{self, Call},
    sock::read,
};

/// Reports failed io_uring binds and listens.
#[tracepoint]
pub fn io_uring_complete(ctx: TracePointContext) -> u32 {
    let off_res = conf!(uring.tp_res) as usize;
    let res = unsafe { ctx.read_at::<i32>(off_res) }.unwrap_or(0);
    if res >= 0 || !emit::wanted(res) {
        return 0;
    }
    let off_req = conf!(uring.tp_req) as usize;
    let req = unsafe { ctx.read_at::<u64>(off_req) }.unwrap_or(0);
    // Auxiliary completions (multishot, msg_ring) carry no request.
    if req == 0 {
        return 0;
    }
    let opcode: u8 = read(req, conf!(uring.req_opcode));
    let syscall = if opcode == conf!(uring.op_bind) {
        SYSCALL_BIND
    } else if opcode == conf!(uring.op_listen) && opcode != 0 {
        SYSCALL_LISTEN
    } else {
        return 0;
    };
    let file: u64 = read(req, conf!(uring.req_file));
    let socket: u64 = read(file, conf!(offsets.file_private_data));
    let back: u64 = read(socket, conf!(offsets.socket_file));
    if file == 0 || back != file {
        // io_uring checked this file is a socket before binding: a mismatch
        // means the offsets are wrong, not that the caller erred.
        diag::uring_not_socket(opcode, res);
        return 0;
    }
    let (mut addr, mut addrlen) = (0u64, 0i32);
    if syscall == SYSCALL_BIND {
        let data: u64 = read(req, conf!(uring.req_async_data));
        let sk: u64 = read(socket, conf!(offsets.socket_sk));
        let family: u16 = read(sk, conf!(offsets.sk_family));
        addr = requested_addr(data, family);
        if addr == 0 {
            diag::uring_no_addr(res, family);
        } else {
            addrlen = read(req, conf!(uring.req_cmd) + conf!(uring.bind_addr_len));
        }
    }
    let _ = emit::handle(&Call {
        syscall,
        source: SOURCE_IO_URING,
        ret: res,
        fd: -1,
        socket,
        addr,
        addrlen,
        user_addr: false,
        pid_tgid: aya_ebpf::helpers::bpf_get_current_pid_tgid(),
        task: 0,
        hook: portwatch_common::hook::IO_URING,
    });
    0
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
