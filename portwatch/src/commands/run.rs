//! `portwatch run -- CMD`: run a command under the tracer, scoped to it and
//! every descendant, and exit with its status.
//!
//! Scoping is a cgroup v2 of CMD's own: its children inherit it (a daemon
//! that double-forks and calls setsid stays in it), and the kernel
//! programs' existing cgroup filter keeps everything else out. CMD is
//! started held before exec (see [`spawn_held`]), placed in that cgroup,
//! the programs are loaded with its id, and only then is it let go: its
//! first bind() is already traced. Where the cgroup comes from
//! ([`place`]):
//!
//! - systemd is PID 1 and portwatch's cgroup is not delegated: systemd
//!   owns the tree, so CMD goes into a transient scope unit
//!   (`portwatch-run-PID.scope`) that systemd makes for it, asked with
//!   StartTransientUnit through `busctl` (see [`scope`]);
//! - portwatch runs in a delegated cgroup (Delegate=yes), or systemd is not
//!   PID 1: a directory `portwatch-run-PID` under portwatch's own cgroup,
//!   removed at exit (processes CMD left behind are moved back first).

mod scope;

use std::{
    ffi::OsString,
    fs::{self, File},
    io::{self, Read as _, Write},
    os::unix::{fs::MetadataExt as _, net::UnixStream, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use portwatch_core::output::{text, Format, Notice, Notices};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    task::JoinHandle,
};

use super::{
    capture::{self, Capture, Sinks},
    Error,
};
use crate::{
    capture::Settings,
    cli::{values::cgroup2_mount, RunArgs},
    pipeline::Writer,
};

/// How long events of CMD's last moments may still be on their way after
/// it exited (the ring buffer is drained, lookups finish).
const GRACE: Duration = Duration::from_millis(100);

/// A cgroup v2 directory for CMD's tree.
struct RunCgroup {
    dir: PathBuf,
    /// cgroup.procs of the cgroup portwatch runs in: where leftovers go.
    home: PathBuf,
    /// The cgroup id (the directory's inode) the kernel filter matches.
    id: u64,
    /// Its path as /proc/PID/cgroup says it.
    relative: String,
}

impl RunCgroup {
    /// Creates `portwatch-run-PID` in `home`, portwatch's own cgroup v2
    /// (`own` as /proc/self/cgroup says it).
    fn create(home: &Path, own: &str) -> Result<Self> {
        sweep_stale(home);
        let name = format!("portwatch-run-{}", std::process::id());
        let dir = home.join(&name);
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        let id = fs::metadata(&dir)?.ino();
        Ok(Self {
            dir,
            home: home.join("cgroup.procs"),
            id,
            relative: format!("{}/{name}", own.trim_end_matches('/')),
        })
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        // Daemons CMD left behind go back where portwatch runs, so the
        // directory can go; they keep running.
        for _ in 0..50 {
            let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = fs::write(&self.home, pid);
            }
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("portwatch: could not remove cgroup {}", self.dir.display());
    }
}

/// Removes the empty cgroups of earlier `run`s that could not clean up
/// (killed by SIGKILL): `portwatch-run-PID` whose PID is gone.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("portwatch-run-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            // Fails (EBUSY) while processes are still in it: left alone.
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// An output file shared by the event writer and the notices.
struct SharedOutput(Arc<Mutex<File>>);

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("output lock poisoned"))?
            .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("output lock poisoned"))?
            .flush()
    }
}

/// Where CMD runs: the cgroup the kernel filter matches, and what made it.
enum Placed {
    /// A transient scope systemd made; systemd removes it once empty.
    Scope {
        unit: String,
        cgroup: String,
        id: u64,
    },
    /// A directory under portwatch's own cgroup, removed on drop.
    Dir { dir: RunCgroup, delegated: bool },
}

impl Placed {
    fn id(&self) -> u64 {
        match self {
            Placed::Scope { id, .. } => *id,
            Placed::Dir { dir, .. } => dir.id,
        }
    }

    fn notice(&self) -> Notice {
        match self {
            Placed::Scope { unit, cgroup, .. } => Notice::Placed {
                how: "systemd_scope".into(),
                cgroup: cgroup.clone(),
                unit: Some(unit.clone()),
            },
            Placed::Dir { dir, delegated } => Notice::Placed {
                how: if *delegated { "delegated" } else { "cgroup" }.into(),
                cgroup: dir.relative.clone(),
                unit: None,
            },
        }
    }
}

/// Puts the held CMD (`pid`) where it will run (see the module's doc).
fn place(pid: u32, command: &[OsString]) -> Result<Placed> {
    let systemd = Path::new("/run/systemd/system").is_dir();
    let own = own_cgroup()?;
    let mount = cgroup2_mount().ok_or_else(|| {
        anyhow!("no cgroup v2 hierarchy is mounted: `run` scopes CMD with a cgroup v2 (mount one, e.g. at /sys/fs/cgroup/unified)")
    })?;
    let home = Path::new(&mount).join(own.trim_start_matches('/'));
    let delegated = scope::is_delegated(&home);
    if systemd && !delegated {
        let unit = format!("portwatch-run-{}.scope", std::process::id());
        let cgroup = scope::start(&unit, pid, command)?;
        let id = fs::metadata(Path::new(&mount).join(cgroup.trim_start_matches('/')))
            .with_context(|| format!("the cgroup of {unit}"))?
            .ino();
        return Ok(Placed::Scope { unit, cgroup, id });
    }
    let dir = RunCgroup::create(&home, &own)?;
    fs::write(dir.dir.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("moving CMD into cgroup {}", dir.dir.display()))?;
    Ok(Placed::Dir { dir, delegated })
}

/// portwatch's own cgroup v2 path, as /proc/self/cgroup says it.
fn own_cgroup() -> Result<String> {
    let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| anyhow!("portwatch is in no cgroup v2"))?;
    // The kernel's own text, but still checked: no way out of the mount.
    if own.split('/').any(|c| c == "..") {
        bail!("unexpected cgroup path {own:?}");
    }
    Ok(own.to_owned())
}

/// Where portwatch's lines go: stderr, or `--output FILE` shared by the
/// event writer and the notices.
fn open_output(args: &RunArgs, format: Format) -> Result<(Notices, Box<dyn Write + Send>)> {
    let Some(path) = &args.output else {
        return Ok((Notices::new(format), Box::new(io::stderr())));
    };
    let file = Arc::new(Mutex::new(
        super::create_private(path).with_context(|| format!("--output {}", path.display()))?,
    ));
    Ok((
        Notices::to_file(format, file.clone()),
        Box::new(SharedOutput(file)),
    ))
}

/// Runs CMD under the tracer; returns the exit status to leave with.
pub async fn run(args: RunArgs) -> Result<u8, Error> {
    let started = Instant::now();
    let format = args.capture.format();
    let (notices, mut out) = open_output(&args, format)?;
    let held = spawn_held(&args.command).await?;
    let placed = place(held.pid, &args.command)?;
    notices.say(&placed.notice());
    let settings = Settings {
        cgroups: vec![placed.id()],
        ..args.capture.settings()
    };
    let loaded = capture::load(&args.capture, &settings, started)?;
    loaded.announce(&notices);
    if format == Format::Human {
        writeln!(out, "{}", text::HEADER)?;
        out.flush()?;
    }
    let (mut capture, writing) = loaded.start(out, Sinks::default());
    // Before `ready`: from then on a signal is CMD's, not portwatch's death.
    let mut signals = Forward::new()?;
    capture.ready(&notices);
    let mut child = held.release().await?;
    let status = supervise(&mut capture, &mut child, &mut signals).await?;
    finish(capture, writing, &notices).await?;
    drop(placed);
    Ok(exit_status(status))
}

/// Pumps events while CMD runs, forwarding the signals portwatch gets to
/// CMD's process group, as a terminal would; then a moment's grace for its
/// last failures, still in the ring buffer.
async fn supervise(
    capture: &mut Capture,
    child: &mut tokio::process::Child,
    signals: &mut Forward,
) -> Result<ExitStatus, Error> {
    let group = child.id().map(|p| p as i32);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for CMD")?,
            read = capture.pump() => read?,
            sig = signals.next() => if let Some(pid) = group {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(-pid, sig) };
            },
        }
    };
    capture.pump_for(GRACE).await?;
    Ok(status)
}

async fn finish(capture: Capture, writing: Writer, notices: &Notices) -> Result<()> {
    let ended = capture.end(writing, None, notices).await?;
    ended.summarise(notices);
    Ok(())
}

/// CMD's status as portwatch's own: its code, or 128+N for signal N.
fn exit_status(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => 128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
        (None, None) => 1,
    }
}

/// The signals `run` passes on to CMD.
struct Forward {
    int: Signal,
    term: Signal,
    hup: Signal,
    quit: Signal,
}

impl Forward {
    fn new() -> io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The next signal to forward.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
            _ = self.quit.recv() => libc::SIGQUIT,
        }
    }
}

/// CMD forked but held before exec, until [`Held::release`].
struct Held {
    pid: u32,
    /// portwatch's end of the gate: a byte lets CMD go on, closing it
    /// makes CMD exit before it ran anything.
    gate: UnixStream,
    spawned: JoinHandle<io::Result<tokio::process::Child>>,
    program: String,
}

/// What a held CMD reports when portwatch let go of it without releasing
/// it (an errno that exec never gives).
const GATE_CLOSED: i32 = libc::ECANCELED;

/// Forks CMD in a process group of its own and holds it before exec: it
/// sends its pid through a socket pair and waits for a byte. std's spawn
/// returns only after exec, so it runs on a blocking thread meanwhile.
async fn spawn_held(command: &[OsString]) -> Result<Held, Error> {
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let (mut gate, theirs) = UnixStream::pair().context("a socket pair for CMD's start")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(false);
    let (ours_fd, theirs_fd) = (
        std::os::fd::AsRawFd::as_raw_fd(&gate),
        std::os::fd::AsRawFd::as_raw_fd(&theirs),
    );
    // SAFETY: only async-signal-safe system calls between fork and exec,
    // and no allocation (the errors are raw errnos).
    unsafe {
        cmd.pre_exec(move || held_before_exec(ours_fd, theirs_fd));
    }
    let spawned = tokio::task::spawn_blocking(move || {
        let child = cmd.spawn();
        // Closed here once CMD exec'd or died: portwatch's read ends.
        drop(theirs);
        child
    });
    let program = program.to_string_lossy().into_owned();
    let read = tokio::task::spawn_blocking(move || {
        let mut pid = [0u8; 4];
        gate.read_exact(&mut pid)
            .map(|()| (gate, u32::from_ne_bytes(pid)))
    })
    .await
    .map_err(|e| anyhow!("starting CMD: {e}"))?;
    match read {
        // 0 written to cgroup.procs would move portwatch itself.
        Ok((_, 0)) => Err(Error::Failed(anyhow!("{program} said pid 0"))),
        Ok((gate, pid)) => Ok(Held {
            pid,
            gate,
            spawned,
            program,
        }),
        // CMD ended before it said its pid: spawn's error says why.
        Err(_) => Err(start_error(&program, spawned.await)),
    }
}

/// In CMD between fork and exec: a process group of its own, its pid to
/// portwatch, then wait for the go.
fn held_before_exec(ours: i32, theirs: i32) -> io::Result<()> {
    // SAFETY (all below): plain system calls on fds and local buffers.
    unsafe {
        libc::close(ours);
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let pid = libc::getpid().to_ne_bytes();
        if libc::write(theirs, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
            return Err(io::Error::last_os_error());
        }
        let mut go = 0u8;
        if libc::read(theirs, (&raw mut go).cast(), 1) != 1 {
            return Err(io::Error::from_raw_os_error(GATE_CLOSED));
        }
    }
    Ok(())
}

impl Held {
    /// Lets CMD exec; returns it running, or why it could not start.
    async fn release(mut self) -> Result<tokio::process::Child, Error> {
        // A failed write means CMD is gone already: spawn's result says why.
        let _ = self.gate.write_all(&[1]);
        let program = self.program.clone();
        drop(self.gate);
        match self.spawned.await {
            Ok(Ok(child)) => Ok(child),
            other => Err(start_error(&program, other)),
        }
    }
}

fn start_error(
    program: &str,
    spawned: Result<io::Result<tokio::process::Child>, tokio::task::JoinError>,
) -> Error {
    match spawned {
        Ok(Err(err)) if err.raw_os_error() == Some(GATE_CLOSED) => {
            Error::Failed(anyhow!("portwatch stopped before {program} started"))
        }
        Ok(Err(err)) => Error::CannotStart {
            cmd: program.to_owned(),
            err,
        },
        Ok(Ok(_)) => Error::Failed(anyhow!("{program} started without its pid")),
        Err(e) => Error::Failed(anyhow!("starting {program}: {e}")),
    }
}
