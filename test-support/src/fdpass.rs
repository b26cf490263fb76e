//! Passing a file descriptor to another process (SCM_RIGHTS), as servers
//! hand sockets over: a socket then held by a process that never bound it.

use std::os::fd::RawFd;

/// Sends `fd` over the Unix socket `sock` as SCM_RIGHTS; panics on failure.
pub fn send_fd(sock: RawFd, fd: RawFd) {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // u64s: aligned for cmsghdr.
    let mut space = [0u64; 8];
    // SAFETY: msghdr and its control buffer point at live locals; the CMSG
    // macros stay inside `space`, larger than CMSG_SPACE(sizeof(int)).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<i32>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        libc::CMSG_DATA(cmsg).cast::<i32>().write_unaligned(fd);
        assert_eq!(
            libc::sendmsg(sock, &raw const msg, 0),
            1,
            "sendmsg: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Receives one fd sent as SCM_RIGHTS on `sock`, then closes `sock`; -1 on
/// failure. Plain system calls only, no allocation: it may run in a child
/// forked from a multi-threaded process (`Process::fork`).
pub fn recv_fd(sock: RawFd) -> RawFd {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space = [0u64; 8];
    // SAFETY: as in send_fd; the fd is read only from a control message the
    // kernel says is SCM_RIGHTS.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&space);
        if libc::recvmsg(sock, &raw mut msg, 0) != 1 {
            return -1;
        }
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return -1;
        }
        let fd = libc::CMSG_DATA(cmsg).cast::<i32>().read_unaligned();
        libc::close(sock);
        fd
    }
}
