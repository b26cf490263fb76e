//! Test support shared by portwatch's unit tests, its integration tests and
//! `cargo xtask bench`: private network namespaces, cgroups, and child
//! processes that hold sockets; each is ended (by pid) or removed when
//! dropped, also when a test panics.
//!
//! A crate of its own rather than a module of `portwatch`, because xtask
//! cannot depend on `portwatch`: building that needs the eBPF toolchain that
//! xtask installs.

mod cgroup;
mod fdpass;
mod netns;
mod process;
mod scratch;

use std::os::fd::AsFd;

pub use cgroup::{cgroup2_root, Cgroup};
pub use fdpass::{recv_fd, send_fd};
pub use netns::{enter_fresh_netns, in_fresh_netns, Netns};
pub use process::Process;
pub use scratch::Scratch;

/// The inode of a socket (or any file): what /proc/PID/fd links and
/// sock_diag call it.
pub fn inode_of(fd: impl AsFd) -> u32 {
    let ino = nix::sys::stat::fstat(fd.as_fd()).expect("fstat").st_ino;
    u32::try_from(ino).expect("socket inode fits u32")
}
