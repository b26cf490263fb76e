//! Reading kernel memory at offsets the loader found in BTF.

use core::mem::MaybeUninit;

use aya_ebpf::helpers::{
    bpf_get_current_task,
    generated::{bpf_probe_read_kernel, bpf_probe_read_user},
};
use portwatch_common::{
    BitLoc, Event, PortKey, AF_INET, AF_INET6, OPT_BIND_ADDRESS_NO_PORT, OPT_FREEBIND,
    OPT_REUSEADDR, OPT_REUSEPORT, OPT_TRANSPARENT, OPT_V6ONLY, OPT_VALID, SK_HEAD_BYTES,
};

use crate::{
    config::{conf, SKHEAD},
    diag,
};

/// Reads a `T` (plain integers or arrays of them only) at `base + off` in
/// kernel memory; zero when the read faults. The helper writes every byte
/// (zeros on failure), so `v` needs no zeroing first and there is no
/// branch: fewer paths for the verifier, which keeps start-up fast. A chain
/// of reads from a bad pointer ends in zeros that the callers' few checks
/// (family, back-pointer) reject.
#[inline(always)]
pub fn read<T: Copy>(base: u64, off: u32) -> T {
    let mut v = MaybeUninit::<T>::uninit();
    // SAFETY: the helper checks the source address (a fault is no crash, it
    // gives zeros) and writes all `size_of::<T>()` bytes of `v` either way;
    // any bytes are a valid `T` of plain integers.
    unsafe {
        bpf_probe_read_kernel(
            v.as_mut_ptr().cast(),
            size_of::<T>() as u32,
            (base + off as u64) as *const _,
        );
        v.assume_init()
    }
}

/// `read` from user memory.
#[inline(always)]
fn read_user<T: Copy>(ptr: u64) -> T {
    let mut v = MaybeUninit::<T>::uninit();
    // SAFETY: as in `read`: a checked copy that fills `v` (zeros on a fault),
    // and any bytes are a valid `T` of plain integers.
    unsafe {
        bpf_probe_read_user(
            v.as_mut_ptr().cast(),
            size_of::<T>() as u32,
            ptr as *const _,
        );
        v.assume_init()
    }
}

#[inline(always)]
fn read_bits(base: u64, loc: BitLoc) -> u8 {
    let byte: u8 = read(base, loc.off);
    (byte >> (loc.shift & 7)) & (((1u16 << (loc.width & 15)) - 1) as u8)
}

/// A load through a BTF-typed kernel pointer (one the verifier knows the
/// type of, like `bpf_get_current_task_btf()` or a pointer member loaded
/// from one). The verifier checks the offset against the type and the JIT
/// emits a plain load that faults to zero: no helper call, where each
/// `read` costs 30-60 ns on this machine kind (BENCHMARKS.md).
#[inline(always)]
pub fn load<T: Copy>(base: u64, off: u32) -> T {
    // SAFETY: the verifier accepts this load only through a BTF-typed
    // pointer, at an offset inside its type, and the JIT makes a fault read
    // zero; `T` is plain integers, valid for any bytes.
    unsafe { core::ptr::read_volatile((base + off as u64) as *const T) }
}

/// `bpf_rdonly_cast(obj, btf_id)`: `obj` as a pointer to the kernel type
/// `btf_id`, which `load` reads with plain loads that fault to zero. Only
/// where `Config::casts` is enabled: the loader writes the kfunc's BTF id
/// into this call instruction (`RDONLY_CAST_CALL`); the verifier then turns
/// the call into a register move, so a cast costs nothing. Inline assembly
/// because Rust's eBPF toolchain cannot declare a kfunc.
#[inline(always)]
pub fn cast(obj: u64, btf_id: u32) -> u64 {
    let out: u64;
    // SAFETY: a kfunc that only retypes its argument (r1) as the type r2
    // names; it clobbers r1-r5 like any call.
    unsafe {
        core::arch::asm!(
            ".quad {call}",
            call = const portwatch_common::RDONLY_CAST_CALL,
            inout("r1") obj => _,
            inout("r2") btf_id as u64 => _,
            lateout("r0") out,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nostack, pure, nomem),
        );
    }
    out
}

/// The current task's `fdtable.fd` array and `max_fds`. `task` is the
/// current task as a BTF-typed pointer (`bpf_get_current_task_btf`) in
/// programs that read arguments from saved registers, else 0.
#[inline(always)]
fn fd_table(task: u64) -> (u64, u32) {
    // `task` is 0 where a program has no typed pointer (io_uring, fexit:
    // they never come here, having their socket, but the verifier sees
    // every path).
    if conf!(args_from_regs) != 0 && task != 0 {
        // The loader took this path only where bpf_task_pt_regs (5.15+)
        // works, so bpf_get_current_task_btf (5.11+) does too: task ->
        // files -> fdt are typed pointers, loaded without helpers.
        let files: u64 = load(task, conf!(offsets.task_files));
        let fdt: u64 = load(files, conf!(offsets.files_fdt));
        // `fd` is a `struct file **`: an untyped value from here on.
        (
            load(fdt, conf!(offsets.fdt_fd)),
            load(fdt, conf!(offsets.fdt_max_fds)),
        )
    } else {
        // SAFETY: the helper takes no argument and only returns an address,
        // which `read` dereferences through a checked copy.
        let task = unsafe { bpf_get_current_task() };
        let files: u64 = read(task, conf!(offsets.task_files));
        let fdt: u64 = read(files, conf!(offsets.files_fdt));
        (
            read(fdt, conf!(offsets.fdt_fd)),
            read(fdt, conf!(offsets.fdt_max_fds)),
        )
    }
}

/// A socket's `file` and `sk` members, in one read where they sit side by
/// side (every kernel so far), else in two.
#[inline(always)]
pub fn file_and_sk(socket: u64) -> (u64, u64) {
    let (off_file, off_sk) = (conf!(offsets.socket_file), conf!(offsets.socket_sk));
    if off_sk == off_file + 8 {
        let pair: [u64; 2] = read(socket, off_file);
        (pair[0], pair[1])
    } else {
        (read(socket, off_file), read(socket, off_sk))
    }
}

/// A socket's `struct sock *`.
#[inline(always)]
pub fn sk_of(socket: u64) -> u64 {
    read(socket, conf!(offsets.socket_sk))
}

/// The address of `fd`'s entry in the current task's fd array (a
/// `struct file *`), if `fd` is within the table.
#[inline(always)]
fn fd_entry(task: u64, fd: i32) -> Result<u64, i32> {
    if fd < 0 {
        return Err(-1);
    }
    let (fd_array, max_fds) = fd_table(task);
    if fd as u32 >= max_fds {
        return Err(-1);
    }
    Ok(fd_array + (fd as u64) * 8)
}

/// `(socket, sk)` if `file` is open and its `private_data`, `socket`, is a
/// socket: a socket points back at its file (`back`).
#[inline(always)]
fn checked_socket(fd: i32, file: u64, socket: u64, back: u64, sk: u64) -> Result<(u64, u64), i32> {
    if file == 0 || back != file {
        // No file: the fd is not open (EBADF), nothing to say.
        if file != 0 {
            diag::fd_not_socket(fd);
        }
        return Err(-1);
    }
    Ok((socket, sk))
}

/// `socket_of_fd` with plain loads through `cast` (the loader enabled
/// `Config::casts`, and `task` is BTF-typed): the sock comes back typed, so
/// `held_typed` reads it with plain loads too.
#[inline(always)]
pub fn socket_of_fd_typed(task: u64, fd: i32) -> Result<(u64, u64), i32> {
    let entry = cast(fd_entry(task, fd)?, conf!(casts.list_head));
    let file: u64 = load(entry, 0);
    let private: u64 = load(
        cast(file, conf!(casts.file)),
        conf!(offsets.file_private_data),
    );
    let socket = cast(private, conf!(casts.socket));
    let back: u64 = load(socket, conf!(offsets.socket_file));
    let sk: u64 = load(socket, conf!(offsets.socket_sk));
    checked_socket(fd, file, socket, back, sk)
}

/// The current task's `struct socket *` and `struct sock *` for `fd`,
/// checked to be a socket.
#[inline(always)]
pub fn socket_of_fd(task: u64, fd: i32) -> Result<(u64, u64), i32> {
    let file: u64 = read(fd_entry(task, fd)?, 0);
    let socket: u64 = read(file, conf!(offsets.file_private_data));
    let (back, sk) = file_and_sk(socket);
    checked_socket(fd, file, socket, back, sk)
}

/// Fills what identifies the socket `sk` (family, protocol, netns) into
/// `ev`: all that filtering and folding need. Returns `sk`, or an error for
/// a socket that is not AF_INET/AF_INET6 (those are not reported).
#[inline(always)]
pub fn fill_identity(ev: &mut Event, sk: u64) -> Result<u64, i32> {
    let family: u16 = read(sk, conf!(offsets.sk_family));
    if family != AF_INET && family != AF_INET6 {
        // AF_MAX is 46: a family outside 1..46 is no socket's.
        if family == 0 || family >= 46 {
            diag::impossible_family(family);
        } else {
            diag::other_family(family);
        }
        return Err(-1);
    }
    ev.family = family;
    ev.protocol = read(sk, conf!(offsets.sk_protocol));
    let net: u64 = read(sk, conf!(offsets.sk_net));
    ev.netns = read(net, conf!(offsets.net_inum));
    Ok(sk)
}

/// Fills the rest of the socket's state (type, device, options): only for
/// events that will be sent.
#[inline(always)]
pub fn fill_details(ev: &mut Event, socket: u64, sk: u64) {
    ev.sock_type = read(socket, conf!(offsets.socket_type));
    ev.bound_dev_if = read(sk, conf!(offsets.sk_bound_dev_if));
    ev.opts = opts_of(sk);
}

/// The socket's `OPT_*` bits, with `OPT_VALID`.
#[inline(always)]
pub fn opts_of(sk: u64) -> u8 {
    let mut opts = OPT_VALID;
    for (loc, bit) in [
        (conf!(offsets.reuse), OPT_REUSEADDR),
        (conf!(offsets.reuseport), OPT_REUSEPORT),
        (conf!(offsets.v6only), OPT_V6ONLY),
        (conf!(offsets.freebind), OPT_FREEBIND),
        (conf!(offsets.transparent), OPT_TRANSPARENT),
        (
            conf!(offsets.bind_address_no_port),
            OPT_BIND_ADDRESS_NO_PORT,
        ),
    ] {
        if read_bits(sk, loc) != 0 {
            opts |= bit;
        }
    }
    opts
}

/// Copies the requested family, port and address out of bind()'s sockaddr,
/// from user memory (tracepoints) or the kernel's copy (fexit, io_uring),
/// in one read: all that filtering and folding need, before the socket is
/// walked. A read costs as much as the rest of a folded failure together
/// (about 80 ns from user memory here), so the sockaddr is read once, as
/// far as `len` allows: past it may be unmapped.
#[inline(always)]
pub fn fill_sockaddr(ev: &mut Event, ptr: u64, len: i32, user: bool) {
    // Every field is written: the event is not zeroed before this.
    ev.family = 0;
    ev.port = 0;
    // Two stores: `ev.addr = [0; 16]` would be a memset call.
    // SAFETY: `Event::addr` is 8-byte aligned (asserted in portwatch-common).
    unsafe {
        let words = (&raw mut ev.addr).cast::<u64>();
        words.write_volatile(0);
        words.add(1).write_volatile(0);
    }
    if ptr == 0 || len < 4 {
        return;
    }
    // sockaddr_in: family, port, the IPv4 address at byte 4.
    // sockaddr_in6: family, port, flowinfo at 4, the address at 8..24.
    // A failed read gives zeros, which no family matches.
    let words: [u64; 3] = if len >= 24 {
        if user {
            read_user(ptr)
        } else {
            read(ptr, 0)
        }
    } else if len >= 8 {
        let w: u64 = if user { read_user(ptr) } else { read(ptr, 0) };
        [w, 0, 0]
    } else {
        let w: u32 = if user { read_user(ptr) } else { read(ptr, 0) };
        [w as u64, 0, 0]
    };
    let head = words[0].to_ne_bytes();
    // The socket's own family replaces this once it is read.
    let family = u16::from_ne_bytes([head[0], head[1]]);
    ev.family = family;
    ev.port = u16::from_be_bytes([head[2], head[3]]);
    if family == AF_INET6 && len >= 24 {
        // SAFETY: two `u64`s are 16 bytes, each a valid `u8`.
        ev.addr = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([words[1], words[2]]) };
    } else if family == AF_INET && len >= 8 {
        ev.addr = v4_addr(u32::from_ne_bytes([head[4], head[5], head[6], head[7]]));
    }
}

/// Copies the address and port a socket is bound to (for listen()).
#[inline(always)]
pub fn fill_from_bound(ev: &mut Event, sk: u64) {
    ev.port = read(sk, conf!(offsets.sk_num));
    ev.addr = bound_addr(sk, ev.family);
}

/// The address a socket is bound to, network byte order (IPv4 in the first
/// four bytes).
#[inline(always)]
pub fn bound_addr(sk: u64, family: u16) -> [u8; 16] {
    if family == AF_INET6 {
        read(sk, conf!(offsets.sk_v6_rcv_saddr))
    } else {
        v4_addr(read(sk, conf!(offsets.sk_rcv_saddr)))
    }
}

/// An IPv4 address (network byte order, as read from memory into a `u32`)
/// in the first four bytes of a 16-byte address, built without `memset`.
#[inline(always)]
pub fn v4_addr(v4: u32) -> [u8; 16] {
    // The u32's bytes first, in memory order, then zeros.
    let first = if cfg!(target_endian = "little") {
        v4 as u64
    } else {
        (v4 as u64) << 32
    };
    // SAFETY: two `u64`s are 16 bytes, each a valid `u8`.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([first, 0]) }
}

/// The parent's thread group id.
#[inline(always)]
pub fn current_ppid() -> u32 {
    // SAFETY: the helper takes no argument and only returns an address,
    // which `read` dereferences through a checked copy.
    let task = unsafe { bpf_get_current_task() };
    let parent: u64 = read(task, conf!(offsets.task_real_parent));
    read(parent, conf!(offsets.task_tgid))
}

/// What the holder table reads of a sock: its key, family, TCP state and
/// bound address.
pub struct Held {
    pub key: PortKey,
    pub family: u16,
    /// `skc_state` (read only when asked for, without the head).
    pub state: u8,
    /// The bound address (read only when asked for, without the head).
    pub addr: [u8; 16],
}

/// Reads what the holder table needs of `sk`: None unless it is an inet
/// socket bound to a port. Where the loader found every field in the first
/// `SK_HEAD_BYTES` of the sock (every kernel so far), those bytes are read
/// in one go: three reads in all (the head, the netns inode, the protocol)
/// instead of up to six, about 50 ns of each successful bind
/// (BENCHMARKS.md). Elsewhere field by field, `state` and `addr` only when
/// `want` asks.
///
/// `hook` is the calling program's (`portwatch_common::hook`): the head's
/// buffer is per CPU and hook. Only for programs that run in process
/// context (syscalls, fexit on the socket calls, io_uring completions of a
/// bind or listen, a socket entering LISTEN): state changes seen in a
/// softirq, which can interrupt a program of the same hook, use
/// `held_by_fields`.
#[inline(always)]
pub fn held(sk: u64, want_state: bool, want_addr: bool, hook: u32) -> Option<Held> {
    held_from(sk, want_state, want_addr, head(sk, hook))
}

/// `held`, field by field: for programs that may run in a softirq.
#[inline(always)]
pub fn held_by_fields(sk: u64, want_state: bool, want_addr: bool) -> Option<Held> {
    held_from(sk, want_state, want_addr, None)
}

#[inline(always)]
fn held_from(
    sk: u64,
    want_state: bool,
    want_addr: bool,
    head: Option<(u16, u16, u8, u64, [u8; 16])>,
) -> Option<Held> {
    let (family, port, state, net, addr) = match head {
        Some(h) => h,
        None => {
            let family: u16 = read(sk, conf!(offsets.sk_family));
            let port: u16 = read(sk, conf!(offsets.sk_num));
            // Not a bound inet socket: nothing more to read.
            if !bound_inet(family, port) {
                return None;
            }
            let state = if want_state {
                read(sk, conf!(offsets.sk_state))
            } else {
                0
            };
            let addr = if want_addr {
                bound_addr(sk, family)
            } else {
                v4_addr(0)
            };
            (family, port, state, read(sk, conf!(offsets.sk_net)), addr)
        }
    };
    if !bound_inet(family, port) {
        return None;
    }
    let key = PortKey {
        netns: read(net, conf!(offsets.net_inum)),
        port,
        protocol: read(sk, conf!(offsets.sk_protocol)),
    };
    Some(Held {
        key,
        family,
        state,
        addr,
    })
}

/// `held` for a BTF-typed `sk` (from `socket_of_fd_typed`): plain loads.
#[inline(always)]
pub fn held_typed(sk: u64) -> Option<Held> {
    let family: u16 = load(sk, conf!(offsets.sk_family));
    let port: u16 = load(sk, conf!(offsets.sk_num));
    if !bound_inet(family, port) {
        return None;
    }
    let addr = if family == AF_INET6 {
        let off = conf!(offsets.sk_v6_rcv_saddr);
        // SAFETY: two `u64`s are 16 bytes, each a valid `u8`.
        unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([load(sk, off), load(sk, off + 8)]) }
    } else {
        v4_addr(load(sk, conf!(offsets.sk_rcv_saddr)))
    };
    let net: u64 = load(sk, conf!(offsets.sk_net));
    let key = PortKey {
        netns: load(net, conf!(offsets.net_inum)),
        port,
        protocol: load(sk, conf!(offsets.sk_protocol)),
    };
    Some(Held {
        key,
        family,
        state: 0,
        addr,
    })
}

/// An inet socket bound to a port: the only kind the holder table keeps.
#[inline(always)]
fn bound_inet(family: u16, port: u16) -> bool {
    (family == AF_INET || family == AF_INET6) && port != 0
}

/// Family, port, state, netns pointer and bound address of `sk`, from one
/// read of its first `SK_HEAD_BYTES`; None where the loader found them not
/// all there (`Config::sk_head`).
#[inline(always)]
fn head(sk: u64, hook: u32) -> Option<(u16, u16, u8, u64, [u8; 16])> {
    if conf!(sk_head) == 0 {
        return None;
    }
    let buf = SKHEAD.get_ptr_mut(hook)?.cast::<u8>();
    // Each field at its BTF offset inside the buffer; the bound checks are
    // for the verifier (the loader checked them all).
    let at = |off: u32, size: u32| -> Option<*const u8> {
        if off > SK_HEAD_BYTES - size {
            return None;
        }
        // SAFETY: `off + size` is within the `SK_HEAD_BYTES` of `buf` (just
        // checked), so the pointer stays inside the map value.
        Some(unsafe { buf.add(off as usize) } as *const u8)
    };
    let (off_family, off_num, off_state, off_net) = (
        conf!(offsets.sk_family),
        conf!(offsets.sk_num),
        conf!(offsets.sk_state),
        conf!(offsets.sk_net),
    );
    let (off_v4, off_v6) = (conf!(offsets.sk_rcv_saddr), conf!(offsets.sk_v6_rcv_saddr));
    // SAFETY: `buf` is this hook's per-CPU value of `SK_HEAD_BYTES` bytes,
    // which the checked copy fills (zeros on a fault); every read below is
    // of plain integers inside it (`at` checks the bounds) and unaligned.
    unsafe {
        bpf_probe_read_kernel(buf.cast(), SK_HEAD_BYTES, sk as *const _);
        let family = (at(off_family, 2)? as *const u16).read_unaligned();
        let port = (at(off_num, 2)? as *const u16).read_unaligned();
        let state = at(off_state, 1)?.read_volatile();
        let net = (at(off_net, 8)? as *const u64).read_unaligned();
        let addr = if family == AF_INET6 {
            let p = at(off_v6, 16)? as *const u64;
            core::mem::transmute::<[u64; 2], [u8; 16]>([
                p.read_unaligned(),
                p.add(1).read_unaligned(),
            ])
        } else {
            v4_addr((at(off_v4, 4)? as *const u32).read_unaligned())
        };
        Some((family, port, state, net, addr))
    }
}
