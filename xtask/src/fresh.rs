//! Runs a command as it would run on a new machine: in a private mount
//! namespace where the filesystems a new machine does not mount (tracefs,
//! debugfs, bpffs) are unmounted first.
//!
//! `cargo xtask test` makes this the target runner, so every test process
//! starts this way: a test that silently relies on an earlier test (or an
//! earlier run on the same machine) having mounted something fails here as
//! it would on CI's fresh machine. The machine's own mounts stay untouched.

use std::{convert::Infallible, ffi::OsString, os::unix::process::CommandExt as _, path::Path};

use anyhow::{bail, Context as _, Result};
use nix::{
    errno::Errno,
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{unshare, CloneFlags},
};

/// What a new machine of this project's kind does not have mounted,
/// innermost first (tracefs may also sit inside debugfs).
pub const NOT_ON_A_NEW_MACHINE: [&str; 4] = [
    "/sys/kernel/debug/tracing",
    "/sys/kernel/tracing",
    "/sys/kernel/debug",
    "/sys/fs/bpf",
];

/// Enters a private mount namespace, unmounts [`NOT_ON_A_NEW_MACHINE`]
/// there, and replaces this process with `cmd`.
pub fn exec(cmd: &[OsString]) -> Result<Infallible> {
    let Some((program, args)) = cmd.split_first() else {
        bail!(
            "fresh-machine: no command given (usage: cargo xtask fresh-machine -- CMD [ARGS...])"
        );
    };
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS): run as root")?;
    // Without this, unmounting below would propagate to the host's
    // namespace wherever / is a shared mount (systemd makes it one).
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private in the new mount namespace")?;
    for dir in NOT_ON_A_NEW_MACHINE {
        unmount_all(Path::new(dir))?;
    }
    let err = std::process::Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("cannot run {}", Path::new(program).display()))
}

/// Unmounts every filesystem stacked on `dir` (a test may have mounted one
/// over another), detaching busy ones.
fn unmount_all(dir: &Path) -> Result<()> {
    loop {
        match umount2(dir, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            // EINVAL: not a mount point (any more); ENOENT: no such directory.
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", dir.display())),
        }
    }
}
