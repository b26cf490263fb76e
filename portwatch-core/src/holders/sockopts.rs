//! A holder's own socket options, read from its socket: sock_diag does not
//! report SO_REUSEADDR or SO_REUSEPORT, and whether a bind shares a port
//! with a holder often hangs on them (`bindcheck`).
//!
//! The way in is a duplicate of the holder's file descriptor:
//! `pidfd_open(pid)` + `pidfd_getfd(pidfd, fd)` (Linux 5.6+, root, or a
//! ptrace-capable caller), then `getsockopt`, then close. The duplicate is
//! checked to be the socket asked about (its inode), since the holder may
//! have closed that fd and opened another under the same number meanwhile.
//! While the duplicate is open it holds the socket, so a holder that closes
//! its socket in those microseconds keeps its port that moment longer.
//!
//! Where it cannot be read (the shipped unit's seccomp filter forbids
//! `pidfd_getfd`: EPERM; an older kernel: ENOSYS; the holder gone: ESRCH or
//! EBADF), the caller falls back to the tracer's record of the socket's
//! bind, when it has one. A TIME_WAIT socket has no file descriptor at all:
//! only the record knows its options.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use serde::{Deserialize, Serialize};
use socket2::Socket;

/// The options of a holder's socket that decide whether it shares its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// SO_REUSEADDR.
    pub reuseaddr: bool,
    /// SO_REUSEPORT.
    pub reuseport: bool,
    /// IPV6_V6ONLY, for an IPv6 socket.
    pub v6only: Option<bool>,
}

/// Where a holder's SO_REUSEADDR / SO_REUSEPORT were learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptionsFrom {
    /// Read from the holder's socket itself (a duplicate of its fd).
    Socket,
    /// The tracer's record of the socket's bind (the kernel's view then).
    Record,
}

/// Reads the options of socket `inode`, held by `pid` as its fd `fd`.
pub fn read(pid: u32, fd: u32, inode: u32) -> io::Result<SocketOptions> {
    let dup = duplicate(pid, fd)?;
    let st = nix::sys::stat::fstat(dup.as_fd()).map_err(io::Error::from)?;
    if st.st_ino != u64::from(inode) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("pid {pid}'s fd {fd} is no longer socket {inode}"),
        ));
    }
    let socket = Socket::from(dup);
    let v6only = match socket.domain()? {
        d if d == socket2::Domain::IPV6 => Some(socket.only_v6()?),
        _ => None,
    };
    Ok(SocketOptions {
        reuseaddr: socket.reuse_address()?,
        reuseport: socket.reuse_port()?,
        v6only,
    })
}

/// A duplicate of `pid`'s file descriptor `fd` in this process.
fn duplicate(pid: u32, fd: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as libc::c_int) };
    // SAFETY: pidfd_getfd takes a pidfd, a target fd number and flags, and
    // returns a new fd (O_CLOEXEC) or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, a fresh fd returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use portwatch_test_support::{inode_of, Process};
    use socket2::{Domain, Type};

    use super::*;

    /// Options set in another process are read back; a wrong inode and a
    /// gone process are errors, never a guess.
    #[test]
    fn reads_another_process_s_options() {
        let s = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.set_only_v6(true).unwrap();
        let inode = inode_of(&s);
        let mut held = Process::sleeper(&[s.as_raw_fd()]);
        let fd = s.as_raw_fd() as u32;
        drop(s);
        let got = read(held.pid, fd, inode).unwrap();
        assert_eq!(
            got,
            SocketOptions {
                reuseaddr: false,
                reuseport: true,
                v6only: Some(true)
            }
        );
        assert!(read(held.pid, fd, inode + 1).is_err());
        held.kill();
        assert!(read(held.pid, fd, inode).is_err());
    }
}
