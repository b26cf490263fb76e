//! The path every backend shares: filter, build the event, fold repeats, send.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        generated::bpf_jiffies64,
    },
};
use portwatch_common::{
    stat, Event, FoldFront, FoldKey, FoldState, AF_INET, AF_INET6, FILTER_CGROUP, FILTER_COMM,
    FILTER_NETNS, FILTER_PID, FILTER_PORT, FILTER_UID, SYSCALL_BIND,
};

use crate::{
    config::{
        conf, count, CGROUPS, COMMS, EVENTS, FOLDS, FRONT, NETNS, PIDS, PORTS, SCRATCH, UIDS,
    },
    holders, mem, sock,
};

/// One returning bind() or listen(), as a hook saw it.
pub struct Call {
    /// `SYSCALL_*`.
    pub syscall: u8,
    /// `SOURCE_*`.
    pub source: u8,
    /// Return value: 0 or -errno.
    pub ret: i32,
    /// The fd argument, -1 when the hook does not see it.
    pub fd: i32,
    /// `struct socket *` when the hook has it, 0 to look it up from `fd`.
    pub socket: u64,
    /// bind()'s sockaddr pointer.
    pub addr: u64,
    /// bind()'s addrlen.
    pub addrlen: i32,
    /// `addr` points into user memory (tracepoints) rather than the kernel (fexit).
    pub user_addr: bool,
    /// The calling thread's tgid << 32 | pid.
    pub pid_tgid: u64,
    /// The current task as a BTF-typed pointer, for `sock::socket_of_fd`
    /// (tracepoints reading saved registers); 0 elsewhere.
    pub task: u64,
    /// `portwatch_common::hook`: the program's own per-CPU buffers.
    pub hook: u32,
}

/// Whether a call returning `ret` is one the user asked for. Cheap: run first.
#[inline(always)]
pub fn wanted(ret: i32) -> bool {
    if ret == 0 {
        return conf!(trace_success) != 0;
    }
    let errno = ret.wrapping_neg();
    if !(1..128).contains(&errno) {
        return false;
    }
    let word = if errno < 64 {
        conf!(errno_mask[0])
    } else {
        conf!(errno_mask[1])
    };
    word & (1u64 << (errno as u32 & 63)) != 0
}

/// Filters, builds and sends the event for `call`, whose `ret` is `wanted`.
///
/// Ordered for the common storm: a retry loop failing on one port. What
/// filtering and folding need is read first; a folded failure costs nothing
/// more, and only events that are sent pay for the rest.
#[inline(always)]
pub fn handle(call: &Call) -> Result<(), i32> {
    let filters = conf!(filters);
    let pid = (call.pid_tgid >> 32) as u32;
    if !caller_wanted(filters, pid) {
        return Ok(());
    }
    // 168 bytes: too big for the 512-byte stack next to everything else, so
    // the event is built in a per-CPU scratch slot. It is zeroed only once
    // the failure is not folded: until then it holds just what filtering and
    // folding read, each field written here first (the rest is stale).
    let Some(ev) = SCRATCH.get_ptr_mut(call.hook) else {
        return Ok(());
    };
    // SAFETY: a valid, aligned map value, and this program's own slot on
    // this CPU, where no other run of it can interleave (see
    // `portwatch_common::hook`): the only reference to it.
    let ev = unsafe { &mut *ev };
    let Some(req) = requested(call, ev, filters)? else {
        return Ok(());
    };
    // The requested address is part of the fold key: a failure on another
    // address or family is another failure. It was read with the port, from
    // the call's own sockaddr (bind) or the socket (listen): no socket walk.
    let Some(sent) = fold(pid, call, ev.port, req.family, &ev.addr) else {
        return Ok(());
    };
    clear_around_key(ev, req.walked.is_some());
    ev.pid = pid;
    ev.tid = call.pid_tgid as u32;
    ev.ret = call.ret;
    ev.fd = call.fd;
    ev.syscall = call.syscall;
    ev.source = call.source;
    ev.ts_boot_ns = sent.ts_boot_ns;
    ev.folded = sent.folded;
    fill_rest(call, ev, req.walked);
    send(ev, call.hook);
    Ok(())
}

/// Whether the calling process passes the filters on its pid, uid, cgroup
/// and comm: what needs no socket and no sockaddr.
#[inline(always)]
fn caller_wanted(filters: u32, pid: u32) -> bool {
    // SAFETY: the value is never read, only whether there is one; user
    // space changing the map meanwhile only makes the answer a moment old.
    if filters & FILTER_PID != 0 && unsafe { PIDS.get(pid) }.is_none() {
        return false;
    }
    // SAFETY: as above, the value is never read.
    if filters & FILTER_UID != 0 && unsafe { UIDS.get(bpf_get_current_uid_gid() as u32) }.is_none()
    {
        return false;
    }
    // SAFETY: as above, the value is never read; the helper takes no argument.
    if filters & FILTER_CGROUP != 0 && unsafe { CGROUPS.get(bpf_get_current_cgroup_id()) }.is_none()
    {
        return false;
    }
    // SAFETY: as above, the value is never read.
    !(filters & FILTER_COMM != 0 && unsafe { COMMS.get(mem::comm()) }.is_none())
}

/// What `requested` read of a call that passed the port and netns filters.
struct Requested {
    /// The family the call asked for (bind) or the socket has (listen): the
    /// fold key's. `ev.family` becomes the socket's once it is walked.
    family: u16,
    /// `(socket, sk)`, if the socket was walked to already.
    walked: Option<(u64, u64)>,
}

/// Reads the call's port, address and family into `ev`, and filters on
/// them: `None` when the call is not reported. bind()'s requested port is in
/// its own sockaddr: filter and fold on it before walking to the socket.
/// listen()'s port is in the socket.
#[inline(always)]
fn requested(call: &Call, ev: &mut Event, filters: u32) -> Result<Option<Requested>, i32> {
    let mut walked = None;
    if call.syscall == SYSCALL_BIND {
        sock::fill_sockaddr(ev, call.addr, call.addrlen, call.user_addr);
        if ev.family != AF_INET && ev.family != AF_INET6 {
            return Ok(None);
        }
    } else {
        let (socket, sk) = walk(call, ev)?;
        sock::fill_from_bound(ev, sk);
        walked = Some((socket, sk));
    }
    let family = ev.family;
    if filters & FILTER_PORT != 0 {
        let word = PORTS.get(ev.port as u32 / 32).copied().unwrap_or(0);
        if word & (1 << (ev.port as u32 % 32)) == 0 {
            return Ok(None);
        }
    }
    if filters & FILTER_NETNS != 0 {
        if walked.is_none() {
            walked = Some(walk(call, ev)?);
        }
        // SAFETY: the value is never read, only whether there is one.
        if unsafe { NETNS.get(ev.netns) }.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(Requested { family, walked }))
}

/// Zeroes the event around what filtering and folding read into it: the
/// port, address and family, and the socket's protocol and netns if it was
/// `walked`.
#[inline(always)]
fn clear_around_key(ev: &mut Event, walked: bool) {
    let addr_words = (&raw mut ev.addr).cast::<u64>();
    // SAFETY: `Event::addr` is 8-byte aligned (asserted in portwatch-common):
    // two words, not sixteen byte copies.
    let addr = unsafe {
        [
            addr_words.read_volatile(),
            addr_words.add(1).read_volatile(),
        ]
    };
    let (port, family, protocol, netns) = (ev.port, ev.family, ev.protocol, ev.netns);
    // SAFETY: all-zero is a valid Event (plain integers).
    unsafe { mem::zero(ev) };
    ev.port = port;
    // SAFETY: as for the reads above, two aligned words inside `ev.addr`.
    unsafe {
        addr_words.write_volatile(addr[0]);
        addr_words.add(1).write_volatile(addr[1]);
    }
    ev.family = family;
    if walked {
        ev.protocol = protocol;
        ev.netns = netns;
    }
}

/// Reads what only an event that will be sent (or counted lost) carries:
/// the socket's details and holder, and who called. A socket that cannot be
/// read is still reported, with `opts` invalid, so that every failure
/// counted is accounted for.
#[inline(always)]
fn fill_rest(call: &Call, ev: &mut Event, walked: Option<(u64, u64)>) {
    let walked = match walked {
        Some(w) => Some(w),
        None => walk(call, ev).ok(),
    };
    if let Some((socket, sk)) = walked {
        sock::fill_details(ev, socket, sk);
        if conf!(track_holders) != 0 && ev.ret != 0 {
            holders::attach(ev, sk, call.hook);
        }
    }
    let uid_gid = bpf_get_current_uid_gid();
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    // SAFETY: a helper without arguments.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.comm = mem::comm();
    ev.ppid = sock::current_ppid();
}

/// The call's `struct socket *` and `struct sock *`, with the socket's
/// family, protocol and netns filled into `ev`.
#[inline(always)]
fn walk(call: &Call, ev: &mut Event) -> Result<(u64, u64), i32> {
    let (socket, sk) = if call.socket != 0 {
        (call.socket, sock::sk_of(call.socket))
    } else {
        sock::socket_of_fd(call.task, call.fd)?
    };
    let sk = sock::fill_identity(ev, sk)?;
    Ok((socket, sk))
}

/// A fold key aligned to eight bytes, so its address copies as two words.
#[repr(C, align(8))]
struct Key(FoldKey);

/// What `fold` says of a failure that is to be sent.
struct Unfolded {
    /// CLOCK_BOOTTIME now.
    ts_boot_ns: u64,
    /// Repeats folded into this event.
    folded: u64,
}

/// Folds a failure into its key's pending count if an identical one (same
/// process, call, errno, requested family, address and port) was sent less
/// than the fold window ago (returns `None`). Otherwise stamps the key,
/// moves its pending count into the event to send, and returns that with
/// the time and the key's state, for `send`.
///
/// The window is measured in kernel ticks (`bpf_jiffies64`, inlined by the
/// verifier: free), so a folded failure reads no clock; the boot-time stamp
/// is taken only for an event that is sent.
///
/// A storm repeats one key on a CPU: its repeats are counted in the CPU's
/// front slot (`FRONT`: an array lookup and a 32-byte compare) instead of a
/// hash lookup in `FOLDS`, about 40 ns less per folded failure
/// (BENCHMARKS.md). The slot's count moves to `FOLDS` when another key
/// takes the slot or the window ends, so `FOLDS` stays what user space
/// sweeps and reads; the front's remainder is read at exit.
///
/// The fold state is per CPU, and the front slot per CPU and hook, so no
/// atomics are needed (see `portwatch_common::hook`; a `FOLDS` key names its
/// syscall, family and error, which only one hook sees); a storm spread over
/// CPUs sends one event per CPU per window.
#[inline(always)]
fn fold(pid: u32, call: &Call, port: u16, family: u16, addr: &[u8; 16]) -> Option<Unfolded> {
    if conf!(fold_window_ns) == 0 || call.ret == 0 {
        return Some(Unfolded {
            // SAFETY: a helper without arguments.
            ts_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
            folded: 0,
        });
    }
    let window = conf!(fold_window_jiffies);
    // SAFETY: a helper without arguments (the verifier inlines it).
    let ticks = unsafe { bpf_jiffies64() };
    // The `Option`s stay in this one function (the closure below is a BPF
    // subprogram of its own): returned from a step, a `None`'s undefined
    // payload reached a register the verifier refused to read (`!read_ok`).
    //
    // SAFETY: all-zero is a valid FoldKey; the padding must be zero. `f` is
    // a `FRONT` value and `st` a `FOLDS` value, both of this CPU, where no
    // other run of the same program interleaves (see
    // `portwatch_common::hook`); `addr` is `Event::addr`, 8-byte aligned.
    unsafe {
        mem::with_zeroed(|key: &mut Key| {
            fill_key(key, pid, call, port, family, addr);
            let fold_key = &key.0;
            let front = FRONT.get_ptr_mut(call.hook);
            if let Some(f) = front {
                if repeats_front(f, fold_key, ticks, window) {
                    (*f).pending += 1;
                    count(call.hook, stat::FOLDED);
                    return None;
                }
                flush_front(f, call.hook);
            }
            // (since: the key's last send in ticks, for the front slot; 0: do not cache)
            let (out, since) = match FOLDS.get_ptr_mut(fold_key) {
                Some(st) => {
                    let last = (*st).last_sent_jiffies;
                    if ticks.wrapping_sub(last) < window {
                        (*st).pending += 1;
                        count(call.hook, stat::FOLDED);
                        (None, last)
                    } else {
                        (Some(restamp(st, ticks)), ticks)
                    }
                }
                None => {
                    let (sent, since) = first_send(fold_key, ticks, call.hook);
                    (Some(sent), since)
                }
            };
            if let Some(f) = front {
                give_front(f, key, since);
            }
            out
        })
    }
}

/// Writes the fold key of a failure into the zeroed `key`.
///
/// # Safety
/// `addr` is 8-byte aligned (it is `Event::addr`).
#[inline(always)]
unsafe fn fill_key(key: &mut Key, pid: u32, call: &Call, port: u16, family: u16, addr: &[u8; 16]) {
    let key = &mut key.0;
    key.pid = pid;
    key.ret = call.ret;
    key.port = port;
    key.family = family;
    key.syscall = call.syscall;
    // Two words, not sixteen byte copies: both addresses sit at 8-byte
    // aligned offsets (`Key`, `Event::addr`).
    let (to, from) = (
        (&raw mut key.addr).cast::<u64>(),
        addr.as_ptr().cast::<u64>(),
    );
    // SAFETY: two words inside each 16-byte address, both 8-byte aligned
    // (`Key`'s layout; `addr` by the caller's contract).
    unsafe {
        to.write_volatile(from.read_volatile());
        to.add(1).write_volatile(from.add(1).read_volatile());
    }
}

/// Whether the front slot holds `key`, sent less than `window` ticks before
/// `ticks`: then this failure is one more of its repeats.
///
/// # Safety
/// `f` is a `FRONT` value.
#[inline(always)]
unsafe fn repeats_front(f: *const FoldFront, key: &FoldKey, ticks: u64, window: u64) -> bool {
    // SAFETY: `f` is a valid `FoldFront` (the caller's contract).
    unsafe {
        read_volatile(&raw const (*f).valid) != 0
            && ticks.wrapping_sub(read_volatile(&raw const (*f).last_sent_jiffies)) < window
            && same_key(&raw const (*f).key, key)
    }
}

/// Stamps the `FOLDS` entry `st`, whose window has passed, as sent now, and
/// takes its pending repeats into the event to send.
///
/// # Safety
/// `st` is a `FOLDS` value that no other run of the program interleaves
/// with.
#[inline(always)]
unsafe fn restamp(st: *mut FoldState, ticks: u64) -> Unfolded {
    // SAFETY: `st` is valid (the caller's contract); the helper takes no
    // argument.
    unsafe {
        let now = bpf_ktime_get_boot_ns();
        (*st).last_sent_ns = now;
        (*st).last_sent_jiffies = ticks;
        let folded = (*st).pending;
        (*st).pending = 0;
        Unfolded {
            ts_boot_ns: now,
            folded,
        }
    }
}

/// A key's first failure in the table: a new `FOLDS` entry stamped now.
/// Returns what the event carries and the ticks for the front slot (0 when
/// the table is full: then the key is not cached there either).
#[inline(always)]
fn first_send(key: &FoldKey, ticks: u64, hook: u32) -> (Unfolded, u64) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let fresh = FoldState {
        last_sent_ns: now,
        pending: 0,
        last_sent_jiffies: ticks,
    };
    let cached = if FOLDS.insert(key, fresh, BPF_NOEXIST as u64).is_err() {
        count(hook, stat::FOLD_FULL);
        0
    } else {
        ticks
    };
    (
        Unfolded {
            ts_boot_ns: now,
            folded: 0,
        },
        cached,
    )
}

/// Gives the front slot to `key`, last sent at `since` ticks (0: leaves
/// the slot invalid).
///
/// # Safety
/// `f` is a `FRONT` value, which no other run of the program interleaves with.
#[inline(always)]
unsafe fn give_front(f: *mut FoldFront, key: &Key, since: u64) {
    // SAFETY: `f` is valid (the caller's contract), and `FoldFront` starts
    // with its key (asserted in portwatch-common), so the slot's key is
    // 8-byte aligned like `Key`; the two do not overlap (`key` is on the
    // stack).
    unsafe {
        mem::copy((&raw mut (*f).key).cast::<Key>(), key);
        write_volatile(&raw mut (*f).last_sent_jiffies, since);
        write_volatile(&raw mut (*f).valid, (since != 0) as u64);
    }
}

/// Whether the front slot's key is `key`: four words compared.
///
/// # Safety
/// `slot` is a valid `FoldKey`, 8-byte aligned.
#[inline(always)]
unsafe fn same_key(slot: *const FoldKey, key: &FoldKey) -> bool {
    let (a, b) = (slot.cast::<u64>(), (key as *const FoldKey).cast::<u64>());
    // SAFETY: both are 32-byte `FoldKey`s, 8-byte aligned (`slot` by the
    // caller's contract, `key` inside a `Key` or a map value).
    unsafe {
        read_volatile(a) == read_volatile(b)
            && read_volatile(a.add(1)) == read_volatile(b.add(1))
            && read_volatile(a.add(2)) == read_volatile(b.add(2))
            && read_volatile(a.add(3)) == read_volatile(b.add(3))
    }
}

/// Moves the front slot's repeats to its key's `FoldState` (a new entry if
/// user space swept it meanwhile: stamped 0, so the next sweep takes them).
///
/// # Safety
/// `f` is a `FRONT` value, which no other run of the program interleaves with.
#[inline(always)]
unsafe fn flush_front(f: *mut FoldFront, hook: u32) {
    // SAFETY: `f` is valid (the caller's contract); a `FOLDS` value of this
    // CPU is this hook's alone, as in `fold_in_table`.
    unsafe {
        let pending = read_volatile(&raw const (*f).pending);
        if pending == 0 || read_volatile(&raw const (*f).valid) == 0 {
            return;
        }
        write_volatile(&raw mut (*f).pending, 0);
        // The slot's key is looked up where it lies (a map value is a
        // valid key argument): no copy to the stack.
        let key = &(*f).key;
        match FOLDS.get_ptr_mut(key) {
            Some(st) => (*st).pending += pending,
            None => {
                let back = FoldState {
                    last_sent_ns: 0,
                    pending,
                    last_sent_jiffies: read_volatile(&raw const (*f).last_sent_jiffies),
                };
                if FOLDS.insert(key, back, BPF_NOEXIST as u64).is_err() {
                    count(hook, stat::FOLD_FULL);
                }
            }
        }
    }
}

/// Writes `ev` to the ring buffer; when it is full, counts the loss and gives
/// the folded repeats back to the key (in the front slot, which `fold` has
/// just given this event's key) so the next event still carries them.
#[inline(always)]
fn send(ev: &Event, hook: u32) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            // SAFETY: a reserved slot of an Event's size and alignment.
            unsafe { mem::copy(slot.as_mut_ptr(), ev) };
            slot.submit(0);
            count(hook, stat::SENT);
            if ev.ret != 0 {
                crate::life::note_failure(ev);
            }
        }
        None => {
            count(hook, stat::LOST);
            if ev.folded != 0 {
                if let Some(f) = FRONT.get_ptr_mut(hook) {
                    // SAFETY: a valid `FRONT` value, this hook's on this
                    // CPU, where no other run of it interleaves.
                    unsafe {
                        if read_volatile(&raw const (*f).valid) != 0 {
                            (*f).pending += ev.folded;
                        }
                    }
                }
            }
        }
    }
}
