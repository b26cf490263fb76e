//! Kernel-side diagnostics through aya-log: what a program read contradicts
//! what BTF promised, or a read failed. Off unless `watch -v` / `--log-level`
//! asks: the loader sets aya-log's `AYA_LOG_LEVEL` global (read-only data)
//! before load, so at the default level the verifier drops every call below
//! as dead code and the programs cost what they cost without them.
//!
//! Messages carry no kernel pointers: numbers the user can act on only.
//! aya-log 0.3's macros ignore their context argument (records go to a ring
//! buffer, not a perf array), so helpers without a program context pass `&()`.

use aya_log_ebpf::{debug, warn};

/// `fd` leads to a file whose `private_data` is not a socket pointing back at
/// that file: the fd is not a socket, or the file/socket offsets are wrong.
#[inline(always)]
pub fn fd_not_socket(fd: i32) {
    warn!(
        &(),
        "fd {}: file.private_data is not a socket whose socket.file points back (not a socket, or file/socket offsets wrong for this kernel)",
        fd
    );
}

/// The socket's `sk` names a `struct sock` whose family no socket can have
/// (0, or beyond AF_MAX): the `socket.sk` or `skc_family` offset is wrong,
/// or the read faulted (a faulted read gives zeros).
#[inline(always)]
pub fn impossible_family(family: u16) {
    warn!(
        &(),
        "socket.sk leads to a sock of family {} (neither AF_INET nor AF_INET6, and no real family): read failed or socket/sock offsets wrong for this kernel; event sent without socket details",
        family
    );
}

/// A real socket of another family (AF_UNIX, AF_NETLINK...): not reported.
#[inline(always)]
pub fn other_family(family: u16) {
    debug!(&(), "socket family {} is not inet: not reported", family);
}

/// The recorded holder's socket no longer holds `port`: it was closed (and
/// maybe reused) since it was recorded; only the record travels.
#[inline(always)]
pub fn holder_moved(port: u16) {
    debug!(
        &(),
        "holder record of port {}: its socket no longer holds that port (closed or reused since recorded)",
        port
    );
}

/// An io_uring bind/listen request whose file does not lead to a socket.
#[inline(always)]
pub fn uring_not_socket(opcode: u8, res: i32) {
    warn!(
        &(),
        "io_uring opcode {} (res {}): io_kiocb.file does not lead to a socket pointing back at it (io_kiocb/file offsets wrong for this kernel?)",
        opcode,
        res
    );
}

/// An io_uring bind whose request's copied address could not be found (or
/// whose socket is not inet): it is not reported.
#[inline(always)]
pub fn uring_no_addr(res: i32, family: u16) {
    warn!(
        &(),
        "io_uring bind (res {}) on a socket of family {}: no copy of the requested address in io_kiocb.async_data matches it; not reported",
        res,
        family
    );
}
