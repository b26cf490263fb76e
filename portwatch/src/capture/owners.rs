//! The owner iterator: portwatch-ebpf's `portwatch-owners` object, a BPF
//! iterator over every task's open files (`iter/task_file`, Linux 5.8+)
//! that writes one `OwnerRecord` (tgid, fd, inode) per socket file. Loaded
//! once per command and run once per full scan of the socket index, in
//! place of the walk of /proc/*/fd (`portwatch_core::holders::procs`).

use std::{
    io::Read as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::{Arc, Mutex, OnceLock},
    thread::JoinHandle,
};

use anyhow::{anyhow, Context as _, Result};
use portwatch_common::{OwnerConfig, OwnerRecord};
use portwatch_core::holders::{
    inactive,
    procs::{source, SocketFd, SocketSource},
};

use super::btf::{Btf, BtfError};

mod cache;

/// The running kernel's BTF.
const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The iterator's object as built.
const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portwatch-owners"));

/// How `who`, `wait`, `check` and `watch` find sockets' owners.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LookupChoice {
    /// The iterator where the kernel loads it, else the walk of /proc.
    #[default]
    Auto,
    /// The BPF iterator; fail when the kernel refuses it.
    Iterator,
    /// The walk of /proc/*/fd, without loading anything.
    Walk,
}

/// The loaded iterator program, attached: each scan opens one iterator on
/// its link and reads it to the end.
///
/// Loaded with the bpf() system calls directly rather than through aya: the
/// object is one program and one read-only global, and aya's loader costs
/// some 45 ms before the program is even loaded (it parses the kernel's
/// BTF whole, twice, and probes the kernel's features): more than the walk
/// of /proc that the iterator replaces on most hosts (BENCHMARKS.md).
pub struct OwnerIter {
    link: OwnedFd,
}

impl OwnerIter {
    /// Resolves the offsets from the running kernel's BTF and loads the
    /// program; Err says why the kernel (or this process) cannot.
    pub fn load() -> Result<Self> {
        nested_pid_namespace()?;
        let key = cache::key(Path::new(VMLINUX));
        let recorded = key
            .as_deref()
            .and_then(|k| cache::read(Path::new(cache::DIR), k));
        // A record the kernel refuses is read again from the BTF (and
        // written anew) rather than kept for the rest of the boot.
        match recorded {
            Some(known) => Self::load_with(known).or_else(|_| Self::load_with(from_btf(key)?)),
            None => Self::load_with(from_btf(key)?),
        }
    }

    /// Loads the program with what the kernel's BTF says (`from`).
    fn load_with(from: cache::FromBtf) -> Result<Self> {
        let cache::FromBtf {
            config,
            func,
            bound_inactive,
        } = from;
        let (mut insns, config_at) = program()?;
        let map = config_map(&config)?;
        // The global's load becomes a load of the frozen map's value
        // (BPF_PSEUDO_MAP_VALUE), at the global's offset in it.
        let imm = |insn: &mut [u8; 8], v: i32| insn[4..8].copy_from_slice(&v.to_le_bytes());
        let (first, rest) = insns
            .get_mut(config_at..config_at + 2)
            .and_then(|two| two.split_first_mut())
            .ok_or_else(|| anyhow!("the owner iterator's relocation is out of its program"))?;
        first[1] = (first[1] & 0x0f) | (BPF_PSEUDO_MAP_VALUE << 4);
        imm(first, map.as_raw_fd());
        imm(&mut rest[0], 0);
        let prog = load_program(&insns, func)?;
        let mut attr = LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: 0,
            attach_type: BPF_TRACE_ITER,
            flags: 0,
            iter_info: 0,
            iter_info_len: 0,
            _pad: 0,
        };
        let link = bpf(BPF_LINK_CREATE, &mut attr).context("attaching the owner iterator")?;
        // The engine asks this too (`who`'s note on bound-inactive
        // sockets): answered from the same BTF.
        inactive::learn(bound_inactive);
        Ok(Self { link })
    }

    /// One pass of the iterator: every socket file of every process.
    fn run(&self, out: &mut Vec<SocketFd>) -> Result<()> {
        let mut attr = IterCreate {
            link_fd: self.link.as_raw_fd() as u32,
            flags: 0,
        };
        let mut file = std::fs::File::from(
            bpf(BPF_ITER_CREATE, &mut attr).context("creating the owner iterator")?,
        );
        let mut bytes = Vec::with_capacity(64 * 1024);
        file.read_to_end(&mut bytes)
            .context("reading the owner iterator")?;
        let size = size_of::<OwnerRecord>();
        if bytes.len() % size != 0 {
            return Err(anyhow!(
                "the owner iterator wrote {} bytes, not a whole number of records",
                bytes.len()
            ));
        }
        out.extend(bytes.chunks_exact(size).map(|chunk| {
            let r: OwnerRecord = bytemuck::pod_read_unaligned(chunk);
            SocketFd {
                pid: r.tgid,
                fd: r.fd,
                inode: r.inode,
            }
        }));
        Ok(())
    }
}

// The bpf() commands and constants used here (linux/bpf.h).
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_PROG_LOAD: u32 = 5;
const BPF_MAP_FREEZE: u32 = 22;
const BPF_LINK_CREATE: u32 = 28;
const BPF_ITER_CREATE: u32 = 33;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_RDONLY_PROG: u32 = 1 << 7;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_ITER: u32 = 28;
const BPF_PSEUDO_MAP_VALUE: u8 = 2;
/// An `ld_imm64` instruction's opcode (BPF_LD | BPF_IMM | BPF_DW).
const LD_IMM64: u8 = 0x18;

/// `bpf_attr` for BPF_MAP_CREATE (its leading fields; the kernel zeroes the rest).
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `bpf_attr` for BPF_MAP_UPDATE_ELEM.
#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `bpf_attr` for BPF_PROG_LOAD, up to `attach_btf_id`.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

/// `bpf_attr` for BPF_LINK_CREATE of an iterator.
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `bpf_attr` for BPF_ITER_CREATE.
#[repr(C)]
struct IterCreate {
    link_fd: u32,
    flags: u32,
}

/// The bpf() system call with `attr`: what it returns.
fn bpf_call<T>(cmd: u32, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: `attr` is a `bpf_attr` prefix of the size passed, for `cmd`;
    // the kernel reads (and for some commands writes) only that much.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    i32::try_from(ret).map_err(|_| std::io::Error::other("bpf() returned out of range"))
}

/// A bpf() command that makes a descriptor: the new descriptor.
fn bpf<T>(cmd: u32, attr: &mut T) -> std::io::Result<OwnedFd> {
    let fd = bpf_call(cmd, attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The program's instructions and the index of the one instruction that
/// loads `OWNER_CONFIG` (its only relocation).
fn program() -> Result<(Vec<[u8; 8]>, usize)> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};
    let elf = object::File::parse(OBJECT).context("parsing the owner iterator's object")?;
    let section = elf
        .section_by_name("iter/task_file")
        .ok_or_else(|| anyhow!("the owner iterator's object has no iter/task_file section"))?;
    let code = section.data()?;
    let insns: Vec<[u8; 8]> = code
        .chunks_exact(8)
        .map(|c| c.try_into().unwrap_or_default())
        .collect();
    let mut relocations = section.relocations();
    let (at, reloc) = match (relocations.next(), relocations.next()) {
        (Some(one), None) => one,
        _ => {
            return Err(anyhow!(
                "the owner iterator must load OWNER_CONFIG and nothing else"
            ))
        }
    };
    let symbol = match reloc.target() {
        RelocationTarget::Symbol(i) => elf.symbol_by_index(i)?,
        _ => return Err(anyhow!("the owner iterator's relocation names no symbol")),
    };
    let index = usize::try_from(at / 8)?;
    if symbol.name()? != "OWNER_CONFIG"
        || symbol.address() != 0
        || insns.get(index).is_none_or(|i| i[0] != LD_IMM64)
    {
        return Err(anyhow!(
            "the owner iterator's relocation is not OWNER_CONFIG's load"
        ));
    }
    Ok((insns, index))
}

/// A one-entry array holding `config`, frozen: read-only to the program,
/// so the verifier knows its fields as constants.
fn config_map(config: &OwnerConfig) -> Result<OwnedFd> {
    let mut create = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: size_of::<OwnerConfig>() as u32,
        max_entries: 1,
        map_flags: BPF_F_RDONLY_PROG,
    };
    let map = bpf(BPF_MAP_CREATE, &mut create).context("creating the owner iterator's map")?;
    let key = 0u32;
    let mut elem = MapElem {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: (&raw const key) as u64,
        value: std::ptr::from_ref(config) as u64,
        flags: 0,
    };
    bpf_call(BPF_MAP_UPDATE_ELEM, &mut elem).context("filling the owner iterator's map")?;
    // Only `map_fd`: the kernel refuses the command with any other field set.
    let mut freeze = elem.map_fd;
    bpf_call(BPF_MAP_FREEZE, &mut freeze).context("freezing the owner iterator's map")?;
    Ok(map)
}

/// Loads `insns` as an `iter/task_file` program (BTF function `func`);
/// on refusal, the verifier's last line says why.
fn load_program(insns: &[[u8; 8]], func: u32) -> Result<OwnedFd> {
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: *b"pw_task_sockets\0",
        prog_ifindex: 0,
        expected_attach_type: BPF_TRACE_ITER,
        prog_btf_fd: 0,
        func_info_rec_size: 0,
        func_info: 0,
        func_info_cnt: 0,
        line_info_rec_size: 0,
        line_info: 0,
        line_info_cnt: 0,
        attach_btf_id: func,
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            // Again with the verifier's log, to say why.
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
                // Loaded the second time after all.
                return Ok(fd);
            }
            let text = String::from_utf8_lossy(&log);
            let why = text
                .trim_end_matches('\0')
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_owned();
            Err(anyhow!("loading the iter/task_file program: {e}: {why}"))
        }
    }
}

impl SocketSource for OwnerIter {
    fn scan(&self, out: &mut Vec<SocketFd>) -> Result<(), String> {
        self.run(out).map_err(|e| format!("{e:#}"))
    }
}

/// What the load needs from the running kernel's BTF, read from it, and
/// recorded for the rest of the boot under `key` (see [`cache`]).
fn from_btf(key: Option<String>) -> Result<cache::FromBtf> {
    let data = std::fs::read(VMLINUX).with_context(|| format!("reading {VMLINUX}"))?;
    let bound_inactive = inactive::in_btf(&data);
    let btf = Btf::parse(data)?;
    let found = cache::FromBtf {
        config: config(&btf)?,
        func: btf
            .func_id("bpf_iter_task_file")
            .ok_or_else(|| anyhow!("the kernel has no task_file BPF iterator"))?,
        bound_inactive,
    };
    if let Some(key) = &key {
        cache::write(Path::new(cache::DIR), key, &found);
    }
    Ok(found)
}

/// The iterator's offsets from the running kernel's BTF.
fn config(btf: &Btf) -> Result<OwnerConfig, BtfError> {
    let byte = |strukt: &str, path: &str| {
        let f = btf.field(strukt, path)?;
        if f.bitfield_size != 0 || f.bit_offset % 8 != 0 {
            return Err(BtfError::Missing(format!(
                "{strukt}.{path} as a whole-byte member"
            )));
        }
        Ok(f.bit_offset / 8)
    };
    Ok(OwnerConfig {
        task_tgid: byte("task_struct", "tgid")?,
        file_inode: byte("file", "f_inode")?,
        inode_mode: byte("inode", "i_mode")?,
        inode_ino: byte("inode", "i_ino")?,
    })
}

/// The iterator reports global pids (`task->tgid`); /proc in a nested pid
/// namespace shows others. Err there: the walk answers.
fn nested_pid_namespace() -> Result<()> {
    if !crate::pidns::in_initial().context("reading /proc/self/ns/pid")? {
        return Err(anyhow!(
            "portwatch runs in a nested pid namespace, where the iterator's pids are not /proc's"
        ));
    }
    Ok(())
}

/// The iterator, loaded on a thread of its own from [`install`] on: the
/// first scan waits for it, so its loading overlaps the sock_diag dump.
struct Pending {
    loading: Mutex<Option<JoinHandle<Result<OwnerIter, String>>>>,
    loaded: OnceLock<Result<OwnerIter, String>>,
}

impl Pending {
    fn get(&self) -> &Result<OwnerIter, String> {
        self.loaded.get_or_init(|| {
            let handle = self.loading.lock().ok().and_then(|mut h| h.take());
            match handle.map(JoinHandle::join) {
                Some(Ok(loaded)) => loaded,
                Some(Err(_)) => Err("loading the owner iterator panicked".to_owned()),
                None => Err("the owner iterator was not loaded".to_owned()),
            }
        })
    }
}

impl SocketSource for Pending {
    fn scan(&self, out: &mut Vec<SocketFd>) -> Result<(), String> {
        match self.get() {
            Ok(iter) => iter.scan(out),
            Err(why) => Err(why.clone()),
        }
    }
}

/// Installs the socket index's source `choice` asks for, for the rest of
/// the process. `Auto` starts loading the iterator on a thread and returns
/// at once (the walk answers if it fails); `Iterator` loads it now and
/// fails with why when the kernel refuses it; `Walk` loads nothing.
pub fn install(choice: LookupChoice) -> Result<(), String> {
    let source: Result<Arc<dyn SocketSource>, String> = match choice {
        LookupChoice::Walk => Err("--lookup walk".to_owned()),
        LookupChoice::Iterator => match OwnerIter::load() {
            Ok(iter) => Ok(Arc::new(iter)),
            Err(e) => return Err(format!("the BPF owner iterator cannot be used: {e:#}")),
        },
        LookupChoice::Auto => std::thread::Builder::new()
            .name("owner-iter".into())
            .spawn(|| OwnerIter::load().map_err(|e| format!("{e:#}")))
            .map(|handle| -> Arc<dyn SocketSource> {
                Arc::new(Pending {
                    loading: Mutex::new(Some(handle)),
                    loaded: OnceLock::new(),
                })
            })
            .map_err(|e| format!("cannot start the thread that loads the iterator: {e}")),
    };
    source::install(source);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, UdpSocket},
        os::fd::AsRawFd as _,
    };

    use portwatch_test_support::inode_of;

    use super::*;

    /// A record of this boot that the kernel refuses (a wrong function
    /// id) does not stay: the load reads the BTF and writes the record
    /// anew (needs root: CI runs it so).
    #[test]
    fn a_refused_record_is_replaced() {
        let key = cache::key(Path::new(VMLINUX)).unwrap();
        let dir = Path::new(cache::DIR);
        let good = from_btf(Some(key.clone())).unwrap();
        let bad = cache::FromBtf { func: 1, ..good };
        cache::write(dir, &key, &bad);
        assert_eq!(cache::read(dir, &key), Some(bad));
        OwnerIter::load().expect("loads from the BTF once the record is refused");
        assert_eq!(cache::read(dir, &key), Some(good));
    }

    /// One pass lists this process's sockets at their fds with their
    /// inodes, and no other file (needs root: CI runs it so).
    #[test]
    fn iterator_lists_sockets_and_only_sockets() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let iter = OwnerIter::load().expect("the owner iterator loads on the test kernels");
        let mut found = Vec::new();
        iter.run(&mut found).unwrap();
        let me = std::process::id();
        for (fd, inode) in [
            (tcp.as_raw_fd(), inode_of(&tcp)),
            (udp.as_raw_fd(), inode_of(&udp)),
        ] {
            let want = SocketFd {
                pid: me,
                fd: fd as u32,
                inode: u64::from(inode),
            };
            assert!(
                found.contains(&want),
                "{want:?} not in {} records",
                found.len()
            );
        }
        assert!(
            !found
                .iter()
                .any(|s| s.pid == me && s.fd == file.as_raw_fd() as u32),
            "a plain file was listed"
        );
        // The link stays: a second pass sees a socket opened since.
        let later = TcpListener::bind("127.0.0.1:0").unwrap();
        found.clear();
        iter.run(&mut found).unwrap();
        assert!(found
            .iter()
            .any(|s| s.pid == me && s.inode == u64::from(inode_of(&later))));
    }
}
