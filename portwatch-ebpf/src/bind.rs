//! bind(): syscall tracepoints and fexit on inet_bind / inet6_bind.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, tracepoint},
    programs::{FExitContext, TracePointContext},
};
use portwatch_common::{hook, HOW_BIND, SOURCE_FEXIT, SYSCALL_BIND};

use crate::{
    config::conf,
    emit::{self, Call},
    holders,
    listen::{enter, exit},
    sock::read,
};

/// Saves bind()'s arguments for `sys_exit_bind`.
#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    enter(&ctx, true);
    0
}

/// Reports a returning bind().
#[tracepoint]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    exit(&ctx, SYSCALL_BIND);
    0
}

/// Reports inet_bind()'s return: IPv4 sockets, including io_uring's binds.
#[fexit(function = "inet_bind")]
pub fn inet_bind_exit(ctx: FExitContext) -> i32 {
    fexit_bind(&ctx, hook::INET_BIND);
    0
}

/// Reports inet6_bind()'s return.
#[fexit(function = "inet6_bind")]
pub fn inet6_bind_exit(ctx: FExitContext) -> i32 {
    fexit_bind(&ctx, hook::INET6_BIND);
    0
}

#[inline(always)]
fn fexit_bind(ctx: &FExitContext, hook: u32) {
    // inet_bind(struct socket *sock, struct sockaddr *uaddr, int addr_len) -> int
    let ret: i32 = ctx.arg(3);
    if ret == 0 && conf!(track_holders) != 0 {
        let socket: u64 = ctx.arg(0);
        holders::record(
            read(socket, conf!(offsets.socket_sk)),
            HOW_BIND,
            bpf_get_current_pid_tgid(),
            0,
            hook,
        );
    }
    if !emit::wanted(ret) {
        return;
    }
    let _ = emit::handle(&Call {
        syscall: SYSCALL_BIND,
        source: SOURCE_FEXIT,
        ret,
        fd: -1,
        socket: ctx.arg(0),
        addr: ctx.arg(1),
        addrlen: ctx.arg(2),
        user_addr: false,
        pid_tgid: bpf_get_current_pid_tgid(),
        task: 0,
        hook,
    });
}
