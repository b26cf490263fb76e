//! A holder's SO_REUSEADDR / SO_REUSEPORT read from its socket, through the
//! file descriptors the /proc walk saw it under (`holders::sockopts`).

use super::*;
use crate::holders::sockopts::{self, SocketOptions};

impl Enricher {
    /// The options of socket `inode`, read through a file descriptor of
    /// one of `pids` (its owners) that the /proc walk saw: the first that
    /// answers, else why none did.
    pub fn socket_options(&self, inode: u32, pids: &[u32]) -> io::Result<SocketOptions> {
        let fds: Vec<(u32, u32)> = self
            .index
            .lock()
            .map(|i| i.fds_of(inode))
            .unwrap_or_default()
            .into_iter()
            .filter(|(pid, _)| pids.contains(pid))
            .collect();
        let mut why = io::Error::new(
            io::ErrorKind::NotFound,
            format!("no file descriptor of socket {inode} seen in /proc"),
        );
        for (pid, fd) in fds {
            match sockopts::read(pid, fd, inode) {
                Ok(options) => return Ok(options),
                Err(e) => why = e,
            }
        }
        Err(why)
    }
}
