//! Where the socket index's full scans come from: the walk of /proc/*/fd,
//! or a source the loader installs that lists every socket file of every
//! process in one pass (the `portwatch` crate's BPF iterator over tasks'
//! files). This crate has no eBPF of its own, so the source comes in as a
//! trait object; a scan it cannot make falls back to the walk.
//!
//! Installed once per process, not per [`Enricher`](crate::holders::Enricher):
//! the engine makes a new enricher for every batch (`who`, `check`,
//! `wait`'s rechecks), and every one of them should use the loaded program.

use std::sync::{Arc, RwLock};

use crate::holders::OwnerLookup;

/// A socket file: process `pid` holds socket `inode` at descriptor `fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketFd {
    /// Process id (thread group id).
    pub pid: u32,
    /// File descriptor number.
    pub fd: u32,
    /// Socket inode (`socket:[N]` in /proc/PID/fd).
    pub inode: u64,
}

/// Lists every socket file of every process, in one pass.
pub trait SocketSource: Send + Sync {
    /// Appends one entry per socket file open anywhere now (in any order,
    /// duplicates allowed). Err: why this pass failed; the walk answers.
    fn scan(&self, out: &mut Vec<SocketFd>) -> Result<(), String>;
}

/// The source installed for this process, or why there is none.
enum Installed {
    /// Nothing installed: the walk, and no one asked for anything else.
    None,
    /// The walk, because the source could not be made (why).
    Unavailable(String),
    /// The source.
    Source(Arc<dyn SocketSource>),
}

static INSTALLED: RwLock<Installed> = RwLock::new(Installed::None);

/// Makes `source` answer every full scan from now on; Err(why) records why
/// the walk answers instead (see [`why_walk`]).
pub fn install(source: Result<Arc<dyn SocketSource>, String>) {
    let installed = match source {
        Ok(source) => Installed::Source(source),
        Err(why) => Installed::Unavailable(why),
    };
    if let Ok(mut slot) = INSTALLED.write() {
        *slot = installed;
    }
}

/// The installed source, if any.
pub(super) fn installed() -> Option<Arc<dyn SocketSource>> {
    match &*INSTALLED.read().ok()? {
        Installed::Source(s) => Some(Arc::clone(s)),
        _ => None,
    }
}

/// The path a full scan would take now.
pub fn planned() -> OwnerLookup {
    match installed() {
        Some(_) => OwnerLookup::Iterator,
        None => OwnerLookup::Walk,
    }
}

/// Why the iterator could not be installed, when it was asked for and
/// could not be; None when it is installed or was never asked for.
pub fn why_walk() -> Option<String> {
    match &*INSTALLED.read().ok()? {
        Installed::Unavailable(why) => Some(why.clone()),
        _ => None,
    }
}
