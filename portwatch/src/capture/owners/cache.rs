//! What the owner iterator's load takes from the kernel's BTF (four
//! offsets, the iterator's BTF id, whether sock_diag lists bound-inactive
//! sockets), kept for the rest of the boot in `/run/portwatch/owner-btf`:
//! reading the 5 MB of /sys/kernel/btf/vmlinux (1,300 reads of a page
//! each) was a fifth of `who`'s CPU time (BENCHMARKS.md).
//!
//! Trusted only when it cannot be another's: a regular file owned by root,
//! mode 0600, in a root-owned directory no one else can write, opened
//! without following symlinks, and written for this boot (boot id) and a
//! BTF file of this size. Anything else is ignored and the BTF read.
//!
//! Not the file's mtime: the kernel's BTF cannot change within a boot,
//! and sysfs has one superblock per network namespace whose inodes take
//! the time they were first looked up there, so `ip netns exec NS
//! portwatch who` saw a new mtime each time and missed the record.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use nix::{
    fcntl::{openat, renameat, OFlag},
    sys::stat::{fstat, mkdirat, Mode},
    unistd::unlinkat,
};
use portwatch_common::OwnerConfig;

/// The directory the record lives in (tmpfs: gone at the next boot).
pub const DIR: &str = "/run/portwatch";
/// The record's name in [`DIR`].
const NAME: &str = "owner-btf";
/// First word of the record: its format.
const MAGIC: &str = "portwatch-owner-btf-2";
/// Larger than any record: a bigger file is not one.
const MAX_LEN: usize = 512;

/// What a load takes from the kernel's BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromBtf {
    /// The iterator's offsets.
    pub config: OwnerConfig,
    /// The BTF id of `bpf_iter_task_file`.
    pub func: u32,
    /// The BTF names `TCP_BOUND_INACTIVE`.
    pub bound_inactive: bool,
}

/// What the record must have been written for: this boot and `btf`'s
/// size. None when either cannot be read.
pub fn key(btf: &Path) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot = boot.trim();
    if boot.is_empty() || !boot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return None;
    }
    let meta = std::fs::metadata(btf).ok()?;
    Some(format!("{boot} {}", meta.len()))
}

/// The record in `dir`, if it is trustworthy and written for `key`.
pub fn read(dir: &Path, key: &str) -> Option<FromBtf> {
    let dir = open_dir(dir)?;
    let fd = openat(
        dir.as_fd(),
        NAME,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = fstat(fd.as_fd()).ok()?;
    let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    if !regular || st.st_uid != 0 || st.st_mode & 0o077 != 0 {
        return None;
    }
    let mut text = String::new();
    File::from(fd)
        .take(MAX_LEN as u64 + 1)
        .read_to_string(&mut text)
        .ok()?;
    (text.len() <= MAX_LEN).then(|| parse(&text, key))?
}

/// Writes the record for `key` into `dir` (made 0700 if missing), as a new
/// 0600 file renamed into place. Best effort, and only as root: a failure
/// costs the next run the BTF read, nothing more.
pub fn write(dir: &Path, key: &str, found: &FromBtf) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Some(parent) = dir.parent() else {
        return;
    };
    let Ok(parent) = File::open(parent) else {
        return;
    };
    if let Some(name) = dir.file_name() {
        let _ = mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o700));
    }
    let Some(dir) = open_dir(dir) else {
        return;
    };
    let tmp = format!("{NAME}.{}", std::process::id());
    let Ok(fd) = openat(
        dir.as_fd(),
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    ) else {
        return;
    };
    let written = File::from(fd).write_all(format(key, found).as_bytes());
    if written.is_err() || renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), NAME).is_err() {
        let _ = unlinkat(
            dir.as_fd(),
            tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

/// `dir`, opened without following a symlink, if root owns it and no one
/// else can write to it.
fn open_dir(dir: &Path) -> Option<OwnedFd> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = fstat(fd.as_fd()).ok()?;
    (st.st_uid == 0 && st.st_mode & 0o022 == 0).then_some(fd)
}

/// The record's one line.
fn format(key: &str, f: &FromBtf) -> String {
    let c = &f.config;
    format!(
        "{MAGIC} {key} {} {} {} {} {} {}\n",
        c.task_tgid,
        c.file_inode,
        c.inode_mode,
        c.inode_ino,
        f.func,
        u8::from(f.bound_inactive)
    )
}

/// The record in `text`, if it was written for `key`.
fn parse(text: &str, key: &str) -> Option<FromBtf> {
    let rest = text.strip_prefix(MAGIC)?.strip_prefix(' ')?;
    let rest = rest.strip_prefix(key)?.strip_prefix(' ')?;
    let numbers: Vec<u32> = rest
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [task_tgid, file_inode, inode_mode, inode_ino, func, inactive] = numbers[..] else {
        return None;
    };
    Some(FromBtf {
        config: OwnerConfig {
            task_tgid,
            file_inode,
            inode_mode,
            inode_ino,
        },
        func,
        bound_inactive: match inactive {
            0 => false,
            1 => true,
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn found() -> FromBtf {
        FromBtf {
            config: OwnerConfig {
                task_tgid: 2464,
                file_inode: 32,
                inode_mode: 0,
                inode_ino: 64,
            },
            func: 81234,
            bound_inactive: true,
        }
    }

    #[test]
    fn a_record_is_read_back_only_for_its_key() {
        let key = "0e4c-aa 5482429";
        let text = format(key, &found());
        assert_eq!(parse(&text, key), Some(found()));
        assert_eq!(parse(&text, "0e4c-ab 5482429"), None);
        assert_eq!(parse(&text, "0e4c-aa 5482430"), None);
        assert_eq!(parse(&text.replace(" 1\n", " 2\n"), key), None);
        assert_eq!(parse(&text.replace(" 81234 ", " "), key), None);
    }

    /// This host's key names its boot and the BTF file's size.
    #[test]
    fn key_of_this_boot() {
        let btf = Path::new("/sys/kernel/btf/vmlinux");
        let key = key(btf).unwrap();
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let size = std::fs::metadata(btf).unwrap().len();
        assert_eq!(key, format!("{} {size}", boot.trim()));
    }

    /// Written as root, 0600, in a 0700 directory; read back; not trusted
    /// once another user could have written it, nor through a symlink
    /// (needs root: CI runs it so).
    #[test]
    fn written_privately_and_distrusted_otherwise() {
        let top = std::env::temp_dir().join(format!("pw-owner-btf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir(&top).unwrap();
        let dir = top.join("portwatch");
        let key = "k 1";
        write(&dir, key, &found());
        let meta = std::fs::metadata(dir.join(NAME)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(read(&dir, key), Some(found()));
        assert_eq!(read(&dir, "k 2"), None);

        // Through a symlink: neither the directory nor the file.
        let link = top.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert_eq!(read(&link, key), None);
        let file_link = top.join("other");
        std::fs::create_dir(&file_link).unwrap();
        std::fs::set_permissions(&file_link, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(dir.join(NAME), file_link.join(NAME)).unwrap();
        assert_eq!(read(&file_link, key), None);

        // Readable or writable by others: ignored.
        std::fs::set_permissions(dir.join(NAME), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read(&dir, key), None);
        std::fs::set_permissions(dir.join(NAME), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(read(&dir, key), None);
        std::fs::remove_dir_all(&top).unwrap();
    }
}
