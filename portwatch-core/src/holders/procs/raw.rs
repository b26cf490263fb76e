//! Allocation-free readers of /proc: directory entries by getdents64,
//! readlinkat into a stack buffer, capped reads that never follow a symlink.

use std::{
    ffi::CStr,
    fmt,
    fs::File,
    io::{Read, Write},
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
};

use nix::{
    fcntl::{self, OFlag},
    sys::stat::Mode,
};

/// The numeric entries (pids, tids, fds) of a /proc directory, read with getdents64 into an
/// inline buffer: no allocation per entry, unlike std::fs::read_dir.
pub(crate) struct Ids {
    pub(crate) fd: OwnedFd,
    buf: [u8; 4096],
    /// Next record in `buf[..len]`.
    pos: usize,
    len: usize,
}

impl Ids {
    pub(crate) fn open(path: &CStr) -> Option<Self> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = fcntl::open(path, flags, Mode::empty()).ok()?;
        Some(Self {
            fd,
            buf: [0; 4096],
            pos: 0,
            len: 0,
        })
    }
}

impl Iterator for Ids {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        loop {
            if self.pos >= self.len {
                // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
                let n = unsafe {
                    libc::syscall(
                        libc::SYS_getdents64,
                        self.fd.as_raw_fd(),
                        self.buf.as_mut_ptr(),
                        self.buf.len(),
                    )
                };
                // 0 is the end; an error (the process exited) ends it too.
                self.len = usize::try_from(n).ok().filter(|&n| n > 0)?;
                self.pos = 0;
            }
            // struct linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, d_name.
            let rec = self.buf.get(self.pos..self.len)?;
            let reclen = usize::from(u16::from_ne_bytes([*rec.get(16)?, *rec.get(17)?]));
            let name = rec.get(19..reclen)?;
            self.pos += reclen;
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            if let Some(id) = parse_u32(name) {
                return Some(id);
            }
        }
    }
}

/// Reads at most `cap` bytes of `path` (relative to `dir`), without following a symlink.
pub(crate) fn read_capped<Fd: AsFd>(dir: Fd, path: &CStr, cap: usize) -> Option<Vec<u8>> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = fcntl::openat(dir, path, flags, Mode::empty()).ok()?;
    let mut buf = Vec::with_capacity(cap.min(4096));
    File::from(fd).take(cap as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Formats `args` and a NUL into `buf`, without allocating; None if it does not fit.
pub(crate) fn cpath<'a>(buf: &'a mut [u8], args: fmt::Arguments) -> Option<&'a CStr> {
    let mut w = &mut buf[..];
    w.write_fmt(args).ok()?;
    w.write_all(b"\0").ok()?;
    CStr::from_bytes_until_nul(buf).ok()
}

/// readlinkat(2) into `buf`, without allocating. A longer target is cut short, which is fine
/// for the short "socket:[N]" and "net:[N]" looked for here: a cut one never parses.
pub(crate) fn readlink_into<'a>(dir: RawFd, path: &CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: `path` is NUL-terminated and `buf` is writable for `buf.len()` bytes.
    let n = unsafe { libc::readlinkat(dir, path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.get(..usize::try_from(n).ok()?)
}

/// The number in `prefix` + digits + "]", as readlink shows sockets and namespaces.
pub(crate) fn bracketed(link: &[u8], prefix: &[u8]) -> Option<u32> {
    parse_u32(link.strip_prefix(prefix)?.strip_suffix(b"]")?)
}

/// A decimal u32 of digits only (no sign, no spaces).
pub(crate) fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Bytes to a String, invalid UTF-8 replaced; no copy when it is valid.
pub(crate) fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
