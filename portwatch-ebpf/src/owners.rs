//! portwatch's owner iterator: one pass over every task's open files in the
//! kernel (`iter/task_file`, Linux 5.8+), writing an `OwnerRecord` (tgid, fd,
//! socket inode) for each socket file, so that finding a socket's owners
//! costs no walk of /proc/*/fd.
//!
//! A program of its own, apart from the tracer's (`main.rs`): `who` loads
//! only this, with none of the tracer's maps. Its offsets come from the
//! loader (`OWNER_CONFIG`), which reads them from the running kernel's BTF.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use portwatch_common::{OwnerConfig, OwnerRecord};

/// Written by the loader before load; read-only afterwards, so the verifier
/// knows its fields as constants and checks every load below against the
/// kernel's own type information.
#[unsafe(no_mangle)]
// SAFETY: plain integers: all-zero is a valid value.
pub static OWNER_CONFIG: OwnerConfig = unsafe { core::mem::zeroed() };

/// `S_IFMT` and `S_IFSOCK` of `inode.i_mode` (fixed by POSIX and the kernel's ABI).
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// Reads one field of `OWNER_CONFIG` without letting the compiler fold the
/// all-zero initial value into the code.
macro_rules! conf {
    ($field:ident) => {
        // SAFETY: a plain static the kernel never writes after load.
        unsafe { core::ptr::read_volatile(&raw const OWNER_CONFIG.$field) } as usize
    };
}

/// Called once per open file of every task whose file table is not its
/// group leader's (so once per process), then once more with no task at the
/// end. The context is `struct bpf_iter__task_file`: four 8-byte slots,
/// `meta`, `task`, `fd` (a u32) and `file`: the iterator's ABI, not a
/// kernel structure.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub extern "C" fn task_sockets(ctx: *mut c_void) -> i32 {
    let slots = ctx.cast::<*const u8>();
    // SAFETY: the context's four slots, as above; the verifier checks each
    // load against the iterator's context type.
    let (meta, task, fd, file) = unsafe {
        (
            *slots,
            *slots.add(1),
            *ctx.cast::<u8>().add(16).cast::<u32>(),
            *slots.add(3),
        )
    };
    if task.is_null() || file.is_null() {
        return 0;
    }
    // Plain loads from the kernel's typed pointers: the verifier checks each
    // offset and size against the BTF of `struct file`, `inode` and
    // `task_struct`, and a fault reads zero.
    let (f_inode, i_mode, i_ino, tgid) = (
        conf!(file_inode),
        conf!(inode_mode),
        conf!(inode_ino),
        conf!(task_tgid),
    );
    // SAFETY: as just said; `file` and `task` are non-null.
    let inode = unsafe { *file.add(f_inode).cast::<*const u8>() };
    if inode.is_null() {
        return 0;
    }
    // SAFETY: as above; `inode` is non-null.
    let mode = unsafe { *inode.add(i_mode).cast::<u16>() };
    if mode & S_IFMT != S_IFSOCK {
        return 0;
    }
    // SAFETY: as above.
    let record = unsafe {
        OwnerRecord {
            inode: *inode.add(i_ino).cast::<u64>(),
            tgid: *task.add(tgid).cast::<u32>(),
            fd,
        }
    };
    // SAFETY: `meta.seq` is the iterator's seq_file (first member of
    // `struct bpf_iter_meta`, the ABI again); the helper copies `record`'s
    // bytes, its size passed, into it.
    unsafe {
        let seq = *meta.cast::<*mut c_void>();
        bpf_seq_write(
            seq.cast(),
            (&raw const record).cast(),
            size_of::<OwnerRecord>() as u32,
        );
    }
    0
}

portwatch_ebpf::object_essentials!();
