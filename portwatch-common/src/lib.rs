//! Types shared by portwatch's eBPF programs and its loader.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every
//! type is `#[repr(C)]`, made of fixed-width integers only (no `bool`, no
//! enum) and padded explicitly: the layout is the contract. With the `pod`
//! feature each derives bytemuck's `Pod`, which refuses implicit padding at
//! compile time and lets user space read the records from bytes without
//! `unsafe`. The loader decodes the numeric codes into enums with `TryFrom`
//! and rejects unknown values.
#![no_std]

/// `Event::syscall`: the call was bind().
pub const SYSCALL_BIND: u8 = 1;
/// `Event::syscall`: the call was listen().
pub const SYSCALL_LISTEN: u8 = 2;

/// `Event::source`: captured by the syscall tracepoints.
pub const SOURCE_TRACEPOINT: u8 = 1;
/// `Event::source`: captured by fexit on inet_bind / inet6_bind / inet_listen.
pub const SOURCE_FEXIT: u8 = 2;
/// `Event::source`: an io_uring IORING_OP_BIND / IORING_OP_LISTEN request,
/// captured by the `io_uring/io_uring_complete` tracepoint (tracepoint
/// backend; fexit sees these through inet_bind and reports `SOURCE_FEXIT`).
pub const SOURCE_IO_URING: u8 = 3;

/// `Event::opts` bits: the socket's options when the call returned.
pub const OPT_REUSEADDR: u8 = 1 << 0;
/// SO_REUSEPORT.
pub const OPT_REUSEPORT: u8 = 1 << 1;
/// IPV6_V6ONLY.
pub const OPT_V6ONLY: u8 = 1 << 2;
/// IP_FREEBIND.
pub const OPT_FREEBIND: u8 = 1 << 3;
/// IP_TRANSPARENT.
pub const OPT_TRANSPARENT: u8 = 1 << 4;
/// IP_BIND_ADDRESS_NO_PORT.
pub const OPT_BIND_ADDRESS_NO_PORT: u8 = 1 << 5;
/// Set when the socket could be read at all; without it the other bits mean nothing.
pub const OPT_VALID: u8 = 1 << 7;

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
/// AF_INET6.
pub const AF_INET6: u16 = 10;

/// One failed (or, when asked for, successful) bind() or listen().
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_BOOTTIME nanoseconds when the call returned.
    pub ts_boot_ns: u64,
    /// cgroup v2 id of the caller.
    pub cgroup_id: u64,
    /// Identical failures folded into this event since the previous event of
    /// the same process, call, errno, family, address and port (see `FoldKey`).
    pub folded: u64,
    /// Thread group id (what users call the PID).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Parent's thread group id.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Inode of the socket's network namespace.
    pub netns: u32,
    /// 0 or a negative errno.
    pub ret: i32,
    /// The file descriptor passed to the call, -1 when the hook does not see it.
    pub fd: i32,
    /// SO_BINDTODEVICE interface index, 0 for none.
    pub bound_dev_if: i32,
    /// Requested port for bind(), bound port for listen(), host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// IPPROTO_* of the socket (6 TCP, 17 UDP).
    pub protocol: u16,
    /// SOCK_* type of the socket.
    pub sock_type: u16,
    /// `SYSCALL_*`.
    pub syscall: u8,
    /// `OPT_*` bits.
    pub opts: u8,
    /// `SOURCE_*`.
    pub source: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// Thread's comm, NUL padded.
    pub comm: [u8; 16],
    /// Requested (bind) or bound (listen) address in network byte order; IPv4
    /// uses the first four bytes.
    pub addr: [u8; 16],
    /// Who the kernel last saw bind or start listening on this port in this
    /// network namespace, checked at the moment of the failure.
    pub holder: HolderRecord,
}

/// `HolderRecord::how`: no record of the port.
pub const HOW_NONE: u8 = 0;
/// Recorded at a successful bind().
pub const HOW_BIND: u8 = 1;
/// Recorded at a successful listen() (syscall, io_uring or inet_listen).
pub const HOW_LISTEN: u8 = 2;

/// Key of the kernel's port-holder table: a port in a network namespace.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// Network namespace inode.
    pub netns: u32,
    /// Bound port, host byte order.
    pub port: u16,
    /// IPPROTO_*.
    pub protocol: u16,
}

/// The process that last bound a port or started listening on it, as the
/// kernel recorded it at that moment: still true after the process exits.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HolderRecord {
    /// A CLOCK_BOOTTIME ns at which the binder was running: its thread's
    /// start where the program reads the task (the regs path), else the
    /// bind/listen's own time. A process at the same pid that started later
    /// is another one that reused the pid.
    pub running_ns: u64,
    /// Thread group id of the binder.
    pub pid: u32,
    /// Its real uid.
    pub uid: u32,
    /// Its comm, NUL padded.
    pub comm: [u8; 16],
    /// The bound address (network byte order; IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// `AF_INET` / `AF_INET6` of the holder's socket.
    pub family: u16,
    /// `HOW_*`; `HOW_NONE` means no record (the other fields are zero).
    pub how: u8,
    /// The holder socket's state (kernel TCP state numbers; UDP sockets
    /// report 7, TCP_CLOSE) read at the failure; 0 when that socket no longer
    /// holds the port (closed since it was recorded).
    pub state: u8,
    /// `OPT_*` of the holder socket at the failure (valid when `state` != 0).
    pub opts: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
    /// The holder socket's SO_BINDTODEVICE interface index at the failure,
    /// 0 for none (valid when `state` != 0): a socket bound to another
    /// device than the failing one's is not in its way.
    pub bound_dev_if: i32,
    /// Explicit padding; always zero.
    pub _pad2: u32,
}

/// A `HOLDERS` entry: the holder and its socket, to check it at failure time.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HolderEntry {
    /// The `struct sock *` (never leaves the kernel's maps).
    pub sk: u64,
    /// `jiffies` at the bind/listen: which of a set's two records is older.
    pub jiffies: u64,
    /// What is copied into a failure's event.
    pub holder: HolderRecord,
}

/// Slots in the kernel's holder table (`HOLDERS`): a power of two.
pub const HOLDER_SLOTS: u32 = 1 << 14;

/// Slots per set of the holder table: a port's record may sit in either
/// of its set's two adjacent slots.
pub const HOLDER_WAYS: u32 = 2;

/// One slot of the kernel's holder table: an array of two-slot sets chosen
/// by a hash of the port's key, written in place (no map update call: an LRU hash update
/// cost about 300 ns of every successful bind). `seq` is odd while a writer
/// fills the slot; a reader copies between two equal even reads of it.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HolderSlot {
    /// Write sequence: odd while being written.
    pub seq: u64,
    /// Whose port the slot holds; all zero when empty.
    pub key: PortKey,
    /// The record.
    pub entry: HolderEntry,
}

/// The first slot of `key`'s set in the holder table (the set is that slot
/// and the next): Fibonacci hashing of the key's eight bytes, the top bits
/// of the product (shared by the eBPF programs and the tests).
#[inline(always)]
pub fn holder_set(key: &PortKey) -> u32 {
    let x = ((key.netns as u64) << 32) | ((key.port as u64) << 16) | key.protocol as u64;
    let sets = HOLDER_SLOTS / HOLDER_WAYS;
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - sets.trailing_zeros())) as u32 * HOLDER_WAYS
}

/// Where a bit field lives relative to a base pointer: `(byte >> shift) & mask`.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BitLoc {
    /// Byte offset from the base.
    pub off: u32,
    /// Right shift applied to the byte.
    pub shift: u8,
    /// Width in bits (1..=8); 0 means the kernel has no such field.
    pub width: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}

/// Byte offsets into kernel structures, read from the running kernel's BTF at
/// start-up: Rust eBPF has no CO-RE, so nothing here may be a compile-time
/// constant.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `task_struct.files`.
    pub task_files: u32,
    /// `task_struct.real_parent`.
    pub task_real_parent: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.pid` (the thread's id).
    pub task_pid: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `task_struct.cred`.
    pub task_cred: u32,
    /// `task_struct.start_boottime`.
    pub task_start: u32,
    /// `cred.uid`.
    pub cred_uid: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u32,
    /// `fdtable.fd`.
    pub fdt_fd: u32,
    /// `file.private_data`.
    pub file_private_data: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `socket.type`.
    pub socket_type: u32,
    /// `sock.__sk_common.skc_family`.
    pub sk_family: u32,
    /// `sock.__sk_common.skc_num` (bound port, host order).
    pub sk_num: u32,
    /// `sock.__sk_common.skc_rcv_saddr`.
    pub sk_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`.
    pub sk_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_bound_dev_if`.
    pub sk_bound_dev_if: u32,
    /// `sock.__sk_common.skc_net` (a `struct net *`).
    pub sk_net: u32,
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// Syscall tracepoint records: `fd` of sys_enter_bind/listen.
    pub tp_fd: u32,
    /// `umyaddr` of sys_enter_bind.
    pub tp_addr: u32,
    /// `addrlen` of sys_enter_bind.
    pub tp_addrlen: u32,
    /// `ret` of sys_exit_bind/listen.
    pub tp_ret: u32,
    /// `socket.file`: a socket points back at its file, which tells a socket's
    /// `file.private_data` from another kind of file's.
    pub socket_file: u32,
    /// `pt_regs` members holding a syscall's first three arguments (x86_64:
    /// di, si, dx), for reading bind()/listen() arguments at sys_exit.
    pub regs_arg: [u32; 3],
    /// `sock.__sk_common.skc_state` (u8).
    pub sk_state: u32,
    /// `sock/inet_sock_set_state` record: `skaddr`.
    pub tp_state_sk: u32,
    /// Its `newstate`.
    pub tp_state_new: u32,
    /// Its `protocol`.
    pub tp_state_proto: u32,
    /// `skc_reuse` (SO_REUSEADDR).
    pub reuse: BitLoc,
    /// `skc_reuseport`.
    pub reuseport: BitLoc,
    /// `skc_ipv6only`.
    pub v6only: BitLoc,
    /// IP_FREEBIND: a bit field on old kernels, a bit of `inet_flags` on new ones.
    pub freebind: BitLoc,
    /// IP_TRANSPARENT.
    pub transparent: BitLoc,
    /// IP_BIND_ADDRESS_NO_PORT.
    pub bind_address_no_port: BitLoc,
}

/// `Config::filters` bit: only ports set in the `PORTS` bitmap.
pub const FILTER_PORT: u32 = 1 << 0;
/// Only pids in `PIDS`.
pub const FILTER_PID: u32 = 1 << 1;
/// Only uids in `UIDS`.
pub const FILTER_UID: u32 = 1 << 2;
/// Only cgroup ids in `CGROUPS`.
pub const FILTER_CGROUP: u32 = 1 << 3;
/// Only comms in `COMMS`.
pub const FILTER_COMM: u32 = 1 << 4;
/// Only network namespaces in `NETNS`.
pub const FILTER_NETNS: u32 = 1 << 5;

/// Read-only settings the loader writes into the object before loading it.
/// The verifier sees them as constants and prunes what they switch off.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bit n of word n/64 set: report calls failing with errno n (1..=127).
    pub errno_mask: [u64; 2],
    /// Identical failures within this many ns of the last event are folded
    /// into a counter instead of sent; 0 sends every one.
    pub fold_window_ns: u64,
    /// `FILTER_*` bits.
    pub filters: u32,
    /// Non-zero: report successful calls too.
    pub trace_success: u32,
    /// Kernel structure offsets.
    pub offsets: Offsets,
    /// Non-zero: the sys_exit tracepoints read the call's arguments from the
    /// task's saved user registers (bpf_task_pt_regs, 5.15+), so no sys_enter
    /// program is needed. Zero: they pair with sys_enter through `CALLS`.
    pub args_from_regs: u32,
    /// Non-zero: record who binds/listens on each port (`HOLDERS`) and attach
    /// the holder to each failure.
    pub track_holders: u32,
    /// Non-zero (`watch --record`): send the life of ports of interest
    /// (`Life` records on ring buffer `LIFE`).
    pub record_life: u32,
    /// Where io_uring keeps a bind/listen request's socket and address.
    pub uring: UringOffsets,
    /// Explicit padding (`uring` ends 4 bytes short of the next u64); always zero.
    pub _pad_uring: u32,
    /// The fold window in kernel ticks (jiffies), rounded up: folding
    /// compares `bpf_jiffies64()`, which costs nothing, where a clock read
    /// costs about 50 ns on every failing call. 0 with `fold_window_ns`.
    pub fold_window_jiffies: u64,
    /// Non-zero: every `sock_common` field the holder table reads (port,
    /// family, state, netns, bound addresses) lies in its first
    /// `SK_HEAD_BYTES`, which are then read at once instead of field by field.
    pub sk_head: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// Where the kernel has the kfunc `bpf_rdonly_cast`: the BTF ids the
    /// successful-bind path casts to, for plain loads instead of helper reads.
    pub casts: Casts,
}

/// BTF type ids for `bpf_rdonly_cast` (6.2+), which makes a kernel address
/// a typed pointer the program reads with plain loads that fault to zero
/// instead of a `bpf_probe_read_kernel` call each (about 10 ns a read here:
/// BENCHMARKS.md). All zero where the kernel lacks the kfunc: the programs
/// then read through the helper, and the loader turns the call instruction
/// (`RDONLY_CAST_CALL`) into a plain move the verifier never reaches.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Casts {
    /// Non-zero: the calls are patched in and the ids below are set.
    pub enabled: u32,
    /// `struct list_head`: a struct whose first member is a pointer, to load
    /// one entry of the fd array (an array of `struct file *`).
    pub list_head: u32,
    /// `struct file`.
    pub file: u32,
    /// `struct socket`.
    pub socket: u32,
}

/// The kfunc call the eBPF object carries in place of `bpf_rdonly_cast`,
/// as one little-endian instruction word: `call` (0x85) with source
/// register 2 (`BPF_PSEUDO_KFUNC_CALL`) and a marker in the immediate,
/// where the loader writes the kfunc's BTF id (or a plain `r0 = r1` where
/// the kernel lacks it).
pub const RDONLY_CAST_CALL: u64 = 0x85 | (0x20 << 8) | ((RDONLY_CAST_MARKER as u64) << 32);

/// The immediate of `RDONLY_CAST_CALL` before the loader patches it.
pub const RDONLY_CAST_MARKER: u32 = 0x7077_6b63;

/// Bytes at the start of a `struct sock` read in one go when
/// `Config::sk_head` is set.
pub const SK_HEAD_BYTES: u32 = 96;

/// io_uring request layout, from the running kernel's BTF (and the
/// `io_uring_complete` tracepoint record from tracefs). All zero when the
/// kernel has no IORING_OP_BIND: the program reading them is then not attached.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UringOffsets {
    /// `io_uring_complete` record: `req` (a `struct io_kiocb *`).
    pub tp_req: u32,
    /// `io_uring_complete` record: `res`.
    pub tp_res: u32,
    /// `io_kiocb.opcode` (u8).
    pub req_opcode: u32,
    /// `io_kiocb.file`.
    pub req_file: u32,
    /// `io_kiocb.cmd`: the per-opcode command (`struct io_bind` for a bind).
    pub req_cmd: u32,
    /// `io_bind.addr_len`, relative to `req_cmd`.
    pub bind_addr_len: u32,
    /// `io_kiocb.async_data` (a `struct io_async_msghdr *` for a bind).
    pub req_async_data: u32,
    /// `io_async_msghdr.addr`: the kernel's copy of the requested sockaddr.
    pub msghdr_addr: u32,
    /// `IORING_OP_BIND`'s value.
    pub op_bind: u8,
    /// `IORING_OP_LISTEN`'s value; 0 (IORING_OP_NOP) when the kernel has none.
    pub op_listen: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 6],
}

/// Arguments saved at sys_enter_{bind,listen}, keyed by pid_tgid, for the exit.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCall {
    /// User pointer to the sockaddr (bind only).
    pub addr_ptr: u64,
    /// File descriptor argument.
    pub fd: i32,
    /// addrlen argument (bind only).
    pub addrlen: i32,
}

/// Identifies a stream of identical failures for folding: one process, one
/// call, one errno, one requested family, address and port. Only what the
/// call itself carries, so a failure can be folded before the socket is read.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FoldKey {
    /// Thread group id.
    pub pid: u32,
    /// Negative errno.
    pub ret: i32,
    /// Requested port (bind) or bound port (listen).
    pub port: u16,
    /// `AF_INET` / `AF_INET6` of the request: an IPv4 and an IPv6 failure
    /// on one port are two failures with two diagnoses.
    pub family: u16,
    /// `SYSCALL_*`.
    pub syscall: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
    /// Requested (bind) or bound (listen) address, as in `Event::addr`.
    pub addr: [u8; 16],
}

/// Folding state of one `FoldKey`.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldState {
    /// CLOCK_BOOTTIME (`bpf_ktime_get_boot_ns`) of the last event sent for
    /// this key; user space sweeps entries older than the fold window.
    pub last_sent_ns: u64,
    /// Failures folded since then, not yet carried by an event.
    pub pending: u64,
    /// `bpf_jiffies64()` of that event: what the kernel's fold test reads.
    pub last_sent_jiffies: u64,
}

/// The fold table's per-CPU front slot: the key this CPU folded last, so a
/// storm's repeats are counted here without a hash lookup. Its `pending`
/// repeats move to the key's `FoldState` when another key takes the slot or
/// the key's window ends; user space adds what is left here at exit.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldFront {
    /// The key (all zero: none).
    pub key: FoldKey,
    /// `FoldState::last_sent_jiffies` of the key when it took the slot.
    pub last_sent_jiffies: u64,
    /// Repeats folded here, not yet in the key's `FoldState`.
    pub pending: u64,
    /// 1 when `key` is valid.
    pub valid: u64,
}

/// The programs that use per-CPU buffers (`SCRATCH`, `FRONT`, `SKHEAD`)
/// and counters (`STATS`): each has a slot of its own in every one of them,
/// so two programs on one CPU never share one. The kernel keeps a program
/// from running twice at once on a CPU (tracepoints: no two tracing programs
/// at once per CPU; fexit: a per-program, per-CPU recursion guard, with
/// migration disabled), but an fexit program can be preempted and another
/// one run on its CPU meanwhile.
pub mod hook {
    /// Tracepoint syscalls/sys_exit_bind.
    pub const SYS_EXIT_BIND: u32 = 0;
    /// Tracepoint syscalls/sys_exit_listen.
    pub const SYS_EXIT_LISTEN: u32 = 1;
    /// fexit inet_bind.
    pub const INET_BIND: u32 = 2;
    /// fexit inet6_bind.
    pub const INET6_BIND: u32 = 3;
    /// fexit inet_listen.
    pub const INET_LISTEN: u32 = 4;
    /// Tracepoint io_uring/io_uring_complete.
    pub const IO_URING: u32 = 5;
    /// Number of hooks.
    pub const COUNT: u32 = 6;
}

/// Indices of the per-CPU `STATS` counters, one row of [`stat::COUNT`] per
/// hook (`hook * stat::COUNT + stat`; user space sums the rows). Every call
/// that passes the filters lands in exactly one of SENT, FOLDED and LOST, so
/// their sum is the number matched (not counted separately: that would cost
/// every call).
pub mod stat {
    /// Events written to the ring buffer.
    pub const SENT: u32 = 0;
    /// Failures folded into a later event's count.
    pub const FOLDED: u32 = 1;
    /// Events dropped because the ring buffer was full.
    pub const LOST: u32 = 2;
    /// Exits without a recorded entry (the call began before attach).
    pub const NO_ENTRY: u32 = 3;
    /// Failures that could not be folded because the fold table was full.
    pub const FOLD_FULL: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// One socket file that the owner iterator (`iter/task_file`, program
/// `portwatch-owners`) found: process `tgid` holds socket `inode` at file
/// descriptor `fd`. Written with `bpf_seq_write`, read back as a stream of
/// these, so its size is the stream's only framing.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerRecord {
    /// The socket's inode number (what /proc/PID/fd shows as `socket:[N]`).
    pub inode: u64,
    /// Thread group id of the task whose fd table holds it.
    pub tgid: u32,
    /// File descriptor number.
    pub fd: u32,
}

/// The owner iterator's settings (its global `OWNER_CONFIG`): offsets from
/// the running kernel's BTF, like [`Offsets`] for the tracer.
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerConfig {
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `inode.i_mode` (a u16).
    pub inode_mode: u32,
    /// `inode.i_ino` (an unsigned long).
    pub inode_ino: u32,
}

#[cfg(feature = "user")]
mod user {
    /// aya copies these in and out of maps as bytes; bytemuck's `Pod`
    /// derive (the `pod` feature, which `user` enables) has checked that
    /// each is plain integers with no implicit padding.
    macro_rules! aya_pod {
        ($($t:ident),*) => {
            // SAFETY: bytemuck::Pod, checked below, is the stronger promise.
            $(unsafe impl ::aya::Pod for super::$t {})*
            const _: () = {
                const fn pod<T: ::bytemuck::Pod>() {}
                $(pod::<super::$t>();)*
            };
        };
    }
    aya_pod!(
        Event,
        Config,
        OwnerConfig,
        FoldKey,
        FoldState,
        FoldFront,
        PortKey,
        HolderEntry,
        HolderSlot,
        Life,
        LifeState
    );
}

// The layout is the contract with the eBPF side: catch accidental changes.
const _: () = assert!(size_of::<Event>() == 168);
const _: () = assert!(size_of::<Life>() == 72);
const _: () = assert!(size_of::<LifeState>() == 16);
const _: () = assert!(size_of::<HolderRecord>() == 64);
const _: () = assert!(size_of::<PortKey>() == 8);
const _: () = assert!(size_of::<HolderSlot>() == 96);
// The eBPF programs zero and copy `Event::addr` and `FoldKey::addr` as two
// u64 words.
const _: () = assert!(core::mem::offset_of!(Event, addr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(FoldKey, addr) % 8 == 0);
const _: () = assert!(HOLDER_SLOTS.is_power_of_two() && HOLDER_WAYS == 2);
const _: () = assert!(size_of::<BitLoc>() == 8);
const _: () = assert!(size_of::<FoldKey>() == 32);
const _: () = assert!(size_of::<Offsets>() == 184);
const _: () = assert!(size_of::<UringOffsets>() == 40);
const _: () = assert!(size_of::<Config>() == 304);
const _: () = assert!(size_of::<FoldFront>() == 56);
const _: () = assert!(core::mem::offset_of!(FoldFront, key) == 0);

/// `Life::kind`: a TCP socket entered LISTEN on the port.
pub const LIFE_LISTEN: u8 = 1;
/// `Life::kind`: a listening socket on the port closed (LISTEN -> CLOSE).
pub const LIFE_CLOSED: u8 = 2;
/// `Life::kind`: connections on the port left TIME_WAIT sockets behind.
pub const LIFE_TIME_WAIT: u8 = 3;

/// One moment in the life of a port of interest (one that failed, or that
/// `--port` names), from `sock/inet_sock_set_state`, for `watch --record`.
/// Listeners opening and closing are sent one by one; TIME_WAIT leftovers
/// are counted and sent at most once a second per port (`count`).
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Life {
    /// CLOCK_BOOTTIME nanoseconds of the state change.
    pub ts_boot_ns: u64,
    /// The socket (kernel address), to pair a listener's open and close.
    pub sk: u64,
    /// TIME_WAIT: sockets since the previous TIME_WAIT record of the port.
    pub count: u32,
    /// The current process (who listened, or who closed).
    pub pid: u32,
    /// CLOSED: the pid the kernel recorded listening on this socket, else 0.
    pub holder_pid: u32,
    /// Network namespace inode.
    pub netns: u32,
    /// Local port, host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// `LIFE_*`.
    pub kind: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
    /// The current thread's comm, NUL padded.
    pub comm: [u8; 16],
    /// Local address, network byte order; IPv4 uses the first four bytes.
    pub addr: [u8; 16],
}

/// Per-port state of a port of interest in the kernel (map `WATCHED`).
#[repr(C)]
#[cfg_attr(feature = "pod", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifeState {
    /// When the last TIME_WAIT record of the port was sent.
    pub tw_sent_ns: u64,
    /// TIME_WAIT sockets counted since then.
    pub tw_pending: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}
