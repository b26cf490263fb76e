//! The owner iterator: portwatch-ebpf's `portwatch-owners` object, a BPF
//! iterator over every task's open files (`iter/task_file`, Linux 5.8+)
//! that writes one `OwnerRecord` (tgid, fd, inode) per socket file. Loaded
//! once per command and run once per full scan of the socket index, in
//! place of the walk of /proc/*/fd (`portwatch_core::holders::procs`).

use std::{
    io::Read as _,
    path::Path,
    sync::{Arc, Mutex, OnceLock},
    thread::JoinHandle,
};

use anyhow::{anyhow, Context as _, Result};
use aya::{programs::Iter, Ebpf, EbpfLoader};
use portwatch_common::{OwnerConfig, OwnerRecord};
use portwatch_core::holders::procs::{source, SocketFd, SocketSource};

use super::btf::{Btf, BtfError};

/// The iterator's object as built.
const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portwatch-owners"));

/// The program's name in the object.
const PROGRAM: &str = "task_sockets";

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

/// The loaded iterator program; each scan attaches it once and reads it.
pub struct OwnerIter {
    ebpf: Mutex<Ebpf>,
}

impl OwnerIter {
    /// Resolves the offsets from the running kernel's BTF and loads the
    /// program; Err says why the kernel (or this process) cannot.
    pub fn load() -> Result<Self> {
        nested_pid_namespace()?;
        let btf = Btf::from_file(Path::new("/sys/kernel/btf/vmlinux"))?;
        let config = config(&btf)?;
        let mut ebpf = EbpfLoader::new()
            // No CO-RE: the offsets are in OWNER_CONFIG.
            .btf(None)
            .override_global("OWNER_CONFIG", &config, true)
            .load(OBJECT)
            .context("loading the owner iterator's object")?;
        // aya parses every type it is given (tens of ms for the kernel's
        // 100,000+): it gets only those up to the iterator's function.
        let func = btf
            .func_id("bpf_iter_task_file")
            .ok_or_else(|| anyhow!("the kernel has no task_file BPF iterator"))?;
        let prefix = btf
            .prefix(func)
            .ok_or_else(|| anyhow!("the kernel's BTF is too large"))?;
        let aya_btf = aya::Btf::parse(&prefix, aya::Endianness::default())
            .context("parsing the kernel's BTF")?;
        let prog: &mut Iter = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("the owner iterator's object has no program {PROGRAM}"))?
            .try_into()?;
        prog.load("task_file", &aya_btf)
            .context("loading the iter/task_file program")?;
        Ok(Self {
            ebpf: Mutex::new(ebpf),
        })
    }

    /// One pass of the iterator: every socket file of every process.
    fn run(&self, out: &mut Vec<SocketFd>) -> Result<()> {
        let mut ebpf = self
            .ebpf
            .lock()
            .map_err(|_| anyhow!("the owner iterator's lock is poisoned"))?;
        let prog: &mut Iter = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("no program {PROGRAM}"))?
            .try_into()?;
        let link = prog.attach().context("attaching the owner iterator")?;
        let mut file = prog
            .take_link(link)?
            .into_file()
            .context("creating the owner iterator")?;
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

impl SocketSource for OwnerIter {
    fn scan(&self, out: &mut Vec<SocketFd>) -> Result<(), String> {
        self.run(out).map_err(|e| format!("{e:#}"))
    }
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
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let levels = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map_or(1, |pids| pids.split_whitespace().count());
    if levels > 1 {
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
