//! listen(): syscall tracepoints and fexit on inet_listen; also the
//! enter/exit pairing both syscalls share. A successful bind() or listen()
//! records its socket in the holder table (`holders`): a listener is
//! recorded here, as its listen() returns, with no hook on TCP state
//! changes, which every connection passes.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_task_pt_regs},
    macros::{fexit, tracepoint},
    programs::{FExitContext, TracePointContext},
};
use portwatch_common::{
    hook, stat, PendingCall, HOW_BIND, HOW_LISTEN, SOURCE_FEXIT, SOURCE_TRACEPOINT, SYSCALL_BIND,
    SYSCALL_LISTEN,
};

use crate::{
    config::{conf, count, CALLS},
    emit::{self, Call},
    holders, sock,
};

/// Saves listen()'s fd for `sys_exit_listen`.
#[tracepoint]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    enter(&ctx, false);
    0
}

/// Reports a returning listen().
#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    exit(&ctx, SYSCALL_LISTEN);
    0
}

/// Reports inet_listen()'s return (TCP over IPv4 and IPv6).
#[fexit(function = "inet_listen")]
pub fn inet_listen_exit(ctx: FExitContext) -> i32 {
    // inet_listen(struct socket *sock, int backlog) -> int
    let ret: i32 = ctx.arg(2);
    if ret == 0 && conf!(track_holders) != 0 {
        let socket: u64 = ctx.arg(0);
        holders::record(
            sock::sk_of(socket),
            HOW_LISTEN,
            bpf_get_current_pid_tgid(),
            0,
            hook::INET_LISTEN,
        );
    }
    if emit::wanted(ret) {
        let _ = emit::handle(&Call {
            syscall: SYSCALL_LISTEN,
            source: SOURCE_FEXIT,
            ret,
            fd: -1,
            socket: ctx.arg(0),
            addr: 0,
            addrlen: 0,
            user_addr: false,
            pid_tgid: bpf_get_current_pid_tgid(),
            task: 0,
            hook: hook::INET_LISTEN,
        });
    }
    0
}

/// Records a call's arguments by thread, for its exit.
#[inline(always)]
pub fn enter(ctx: &TracePointContext, with_addr: bool) {
    let off_fd = conf!(offsets.tp_fd) as usize;
    // SAFETY: a checked copy out of the tracepoint's record (an offset past
    // it is an error, not a fault); any bytes are a valid `u64`.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(off_fd) }) else {
        return;
    };
    let mut call = PendingCall {
        fd: fd as i32,
        ..PendingCall::default()
    };
    if with_addr {
        let (off_addr, off_len) = (conf!(offsets.tp_addr), conf!(offsets.tp_addrlen));
        // SAFETY: a checked copy out of the record, as for `fd`.
        call.addr_ptr = unsafe { ctx.read_at::<u64>(off_addr as usize) }.unwrap_or(0);
        // SAFETY: a checked copy out of the record, as for `fd`.
        call.addrlen = unsafe { ctx.read_at::<u64>(off_len as usize) }.unwrap_or(0) as i32;
    }
    let _ = CALLS.insert(bpf_get_current_pid_tgid(), call, 0);
}

/// The call's arguments from the task's saved user registers: they still
/// hold them at sys_exit, which saves a sys_enter program and a map round trip.
#[inline(always)]
fn args_from_regs(task: u64) -> PendingCall {
    // SAFETY: `task` is the current task, BTF-typed (`exit`): the helper
    // returns its saved user registers.
    let regs = unsafe { bpf_task_pt_regs(task as *mut _) } as u64;
    let [fd, addr, len] = conf!(offsets.regs_arg);
    // SAFETY: `regs` is a BTF pointer: the verifier accepts only loads at
    // offsets inside struct pt_regs, and the JIT makes a fault read zero.
    // Plain loads cost far less than a helper call.
    let at = |off: u32| unsafe { core::ptr::read_volatile((regs + off as u64) as *const u64) };
    PendingCall {
        fd: at(fd) as i32,
        addr_ptr: at(addr),
        addrlen: at(len) as i32,
    }
}

/// `ret` of a sys_exit tracepoint record. Where it has sat since syscall
/// tracepoints began (after the common header and the syscall number: byte
/// 16), and the loader read the same from tracefs, it is a plain load from
/// the record; elsewhere a read at the offset tracefs gave. (A context load
/// needs its offset in the instruction, so it cannot take the loader's
/// value; the verifier drops whichever branch the constant rules out.)
#[inline(always)]
fn exit_ret(ctx: &TracePointContext) -> i32 {
    const USUAL_RET: u32 = 16;
    let off = conf!(offsets.tp_ret);
    if off == USUAL_RET {
        // SAFETY: the record is at least 24 bytes (tracefs said `ret` is at 16).
        unsafe {
            *(aya_ebpf::EbpfContext::as_ptr(ctx) as *const i64).add(USUAL_RET as usize / 8) as i32
        }
    } else {
        // SAFETY: a checked copy out of the record; any bytes are a valid `i64`.
        unsafe { ctx.read_at::<i64>(off as usize) }.unwrap_or(0) as i32
    }
}

/// Reports a returning call if wanted, with its arguments from the saved
/// registers or from its recorded entry.
#[inline(always)]
pub fn exit(ctx: &TracePointContext, syscall: u8) {
    let hook = if syscall == SYSCALL_BIND {
        hook::SYS_EXIT_BIND
    } else {
        hook::SYS_EXIT_LISTEN
    };
    let from_regs = conf!(args_from_regs) != 0;
    let ret = exit_ret(ctx);
    // Successful binds and listens feed the holder table, whether or not
    // successes are reported.
    let record = ret == 0 && conf!(track_holders) != 0;
    if !record && !emit::wanted(ret) {
        if !from_regs {
            let _ = CALLS.remove(bpf_get_current_pid_tgid());
        }
        return;
    }
    // From the saved registers: the current task as a BTF-typed pointer,
    // read with plain loads (its ids too, instead of a helper call).
    let task = if from_regs {
        // SAFETY: a helper without arguments, there since 5.11 (this path: 5.15+).
        unsafe { bpf_get_current_task_btf() as u64 }
    } else {
        0
    };
    let pid_tgid = if from_regs {
        let tgid: u32 = sock::load(task, conf!(offsets.task_tgid));
        let pid: u32 = sock::load(task, conf!(offsets.task_pid));
        ((tgid as u64) << 32) | pid as u64
    } else {
        bpf_get_current_pid_tgid()
    };
    let call = if from_regs {
        args_from_regs(task)
    } else {
        let id = bpf_get_current_pid_tgid();
        // SAFETY: copied at once; only this thread's sys_enter writes the entry.
        let Some(call) = (unsafe { CALLS.get(id) }).copied() else {
            count(hook, stat::NO_ENTRY);
            return;
        };
        let _ = CALLS.remove(id);
        call
    };
    if record {
        let how = if syscall == SYSCALL_BIND {
            HOW_BIND
        } else {
            HOW_LISTEN
        };
        holders::record_fd(task, call.fd, how, pid_tgid, hook);
        if !emit::wanted(ret) {
            return;
        }
    }
    let _ = emit::handle(&Call {
        syscall,
        source: SOURCE_TRACEPOINT,
        ret,
        fd: call.fd,
        socket: 0,
        addr: call.addr_ptr,
        addrlen: call.addrlen,
        user_addr: true,
        pid_tgid,
        task,
        hook,
    });
}
