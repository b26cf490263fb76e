//! `portwatch run -- CMD`: run a command under the tracer, scoped to it and
//! every descendant, and exit with its status.
//!
//! Scoping is a cgroup v2 directory of its own, created under portwatch's
//! own cgroup: CMD moves itself there between fork and exec, its children
//! inherit it (a daemon that double-forks and calls setsid stays in it), and
//! the kernel programs' existing cgroup filter keeps everything else out.
//! The directory is removed at exit; processes CMD left behind are moved
//! back to portwatch's cgroup first.

use std::{
    ffi::CString,
    fs::{self, File},
    io::{self, Write},
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use portwatch_core::{
    holders::Enricher,
    output::{text, Format, Notice, Notices, Summary},
};
use tokio::signal::unix::{signal, SignalKind};

use super::Error;
use crate::{
    capture::{Session, Settings},
    cli::{values::cgroup2_mount, RunArgs},
    pipeline::{self, Pipeline, BATCH},
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
}

impl RunCgroup {
    /// Creates `portwatch-run-PID` under portwatch's own cgroup v2.
    fn create() -> Result<Self> {
        let mount = cgroup2_mount().ok_or_else(|| {
            anyhow!("no cgroup v2 hierarchy is mounted: `run` scopes CMD with a cgroup v2 (mount one, e.g. at /sys/fs/cgroup/unified)")
        })?;
        let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| anyhow!("portwatch is in no cgroup v2"))?;
        // The kernel's own text, but still checked: no way out of the mount.
        if own.split('/').any(|c| c == "..") {
            bail!("unexpected cgroup path {own:?}");
        }
        let home_dir = Path::new(&mount).join(own.trim_start_matches('/'));
        sweep_stale(&home_dir);
        let dir = home_dir.join(format!("portwatch-run-{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        let id = fs::metadata(&dir)?.ino();
        Ok(Self {
            dir,
            home: home_dir.join("cgroup.procs"),
            id,
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
struct Shared(Arc<Mutex<File>>);

impl Write for Shared {
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

fn settings(args: &RunArgs, cgroup: u64) -> Settings {
    Settings {
        errnos: args.errno.clone(),
        all_errors: args.all_errors,
        ports: args.port.iter().flatten().copied().collect(),
        cgroups: vec![cgroup],
        fold_window_ns: args.fold_window.saturating_mul(1_000_000),
        ring_bytes: 1024 * 1024,
        track_holders: !args.no_holders,
        ..Settings::default()
    }
}

/// Runs CMD under the tracer; returns the exit status to leave with.
pub async fn run(args: RunArgs) -> Result<u8, Error> {
    let started = Instant::now();
    let format = if args.json {
        Format::Json
    } else {
        Format::Human
    };
    let file = match &args.output {
        Some(path) => Some(Arc::new(Mutex::new(
            super::create_private(path).with_context(|| format!("--output {}", path.display()))?,
        ))),
        None => None,
    };
    let notices = match &file {
        Some(f) => Notices::to_file(format, f.clone()),
        None => Notices::new(format),
    };
    let cgroup = RunCgroup::create()?;
    let mut session = Session::start(&settings(&args, cgroup.id), args.backend.into())?;
    let enricher = (!args.no_holders).then(|| Arc::new(Enricher::new(session.bound_inactive_dump)));
    if let Some(e) = &enricher {
        let e = e.clone();
        tokio::task::spawn_blocking(move || e.warm());
    }
    let mut out: Box<dyn Write + Send> = match &file {
        Some(f) => Box::new(Shared(f.clone())),
        None => Box::new(io::stderr()),
    };
    notices.say(&Notice::Backend {
        backend: session.backend.name().into(),
        why: session.why.clone(),
    });
    if format == Format::Human {
        writeln!(out, "{}", text::HEADER)?;
        out.flush()?;
    }
    let (mut pipeline, writing) = Pipeline::start(
        pipeline::PipelineOptions {
            enricher,
            format,
            timeout: Duration::from_millis(args.lookup_timeout),
            delay: Duration::ZERO,
            journal: None,
            // `run` writes where its caller said, never to journald.
            journald: None,
        },
        out,
    );
    // Before `ready`: from then on a signal is CMD's, not portwatch's death.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigquit = signal(SignalKind::quit())?;
    notices.say(&Notice::Ready {
        backend: Some(session.backend.name().into()),
        startup_ms: started.elapsed().as_millis() as u64,
    });

    let mut child = spawn(&args.command, &cgroup.dir)?;
    let child_pid = child.id().map(|p| p as i32);
    // To CMD's process group, as a terminal would.
    let forward = |sig: i32| {
        if let Some(pid) = child_pid {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(-pid, sig) };
        }
    };
    let mut batch = Vec::with_capacity(BATCH);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for CMD")?,
            read = session.read(&mut batch, BATCH) => {
                read?;
                pipeline.submit(&mut batch).await;
            }
            _ = sigint.recv() => forward(libc::SIGINT),
            _ = sigterm.recv() => forward(libc::SIGTERM),
            _ = sighup.recv() => forward(libc::SIGHUP),
            _ = sigquit.recv() => forward(libc::SIGQUIT),
        }
    };
    // CMD's last failures may still be in the ring buffer.
    let grace = tokio::time::sleep(GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            _ = &mut grace => break,
            read = session.read(&mut batch, BATCH) => {
                read?;
                pipeline.submit(&mut batch).await;
            }
        }
    }
    let unenriched = pipeline::wind_down(&mut session, pipeline, &mut batch, writing, None).await?;
    let finish = session.finish();
    for repeat in &finish.repeats {
        notices.say(&Notice::Repeat(repeat.clone()));
    }
    notices.say(&Notice::Summary(Summary::new(
        started.elapsed().as_secs_f64(),
        &finish,
        unenriched,
    )));
    drop(cgroup);
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => 128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
        (None, None) => 1,
    })
}

/// Starts CMD in a process group of its own, moved into `cgroup` before it
/// executes anything.
fn spawn(command: &[std::ffi::OsString], cgroup: &Path) -> Result<tokio::process::Child, Error> {
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let procs =
        CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).context("cgroup path")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(false);
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let err = io::Error::last_os_error();
            libc::close(fd);
            if !ok {
                return Err(err);
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|err| Error::CannotStart {
        cmd: program.to_string_lossy().into_owned(),
        err,
    })
}
