//! `portwatch watch`: load, attach, then stream events until told to stop.

use std::{
    collections::HashMap,
    io::{self, Write},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use portwatch_common::{stat, FoldKey, FoldState};
use serde_json::json;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    args::WatchArgs,
    event::{Clock, Event},
    loader::{self, Loaded, Settings},
    output::{self, Format},
};

/// Kernel counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    seen: u64,
    sent: u64,
    folded: u64,
    lost: u64,
    no_entry: u64,
    fold_full: u64,
}

fn read_counters(stats: &PerCpuArray<MapData, u64>) -> Counters {
    let get = |i: u32| stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
    Counters {
        seen: get(stat::SENT) + get(stat::FOLDED) + get(stat::LOST),
        sent: get(stat::SENT),
        folded: get(stat::FOLDED),
        lost: get(stat::LOST),
        no_entry: get(stat::NO_ENTRY),
        fold_full: get(stat::FOLD_FULL),
    }
}

/// Messages for people or scripts on stderr, shaped by the output format.
struct Notices {
    format: Format,
}

impl Notices {
    fn say(&self, human: String, json: serde_json::Value) {
        match self.format {
            Format::Human => eprintln!("portwatch: {human}"),
            Format::Json => eprintln!("{json}"),
        }
    }
}

fn fold_key(ev: &Event) -> FoldKey {
    FoldKey {
        pid: ev.pid,
        ret: ev.ret,
        port: ev.port,
        syscall: ev.syscall.code(),
        _pad: 0,
    }
}

/// What the stream has delivered so far.
#[derive(Default)]
struct Delivered {
    events: u64,
    folded: u64,
    bad: u64,
    /// The last event of each fold key, to describe repeats still pending at exit.
    last: HashMap<FoldKey, Event>,
}

impl Delivered {
    /// Decodes and prints every record the ring buffer holds.
    fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        out: &mut impl Write,
        format: Format,
    ) -> io::Result<()> {
        let clock = Clock::now();
        while let Some(item) = ring.next() {
            match Event::decode(&item, clock) {
                Ok(ev) => {
                    output::write_event(out, format, &ev)?;
                    self.events += 1;
                    self.folded += ev.folded;
                    if ev.ret != 0 {
                        self.last.insert(fold_key(&ev), ev);
                    }
                }
                Err(e) => {
                    self.bad += 1;
                    if self.bad == 1 {
                        eprintln!("portwatch: dropped a malformed record: {e}");
                    }
                }
            }
        }
        out.flush()
    }
}

fn settings(args: &WatchArgs) -> Settings {
    Settings {
        errnos: args.errno.clone(),
        all_errors: args.all_errors,
        success: args.all,
        ports: args.port.iter().flatten().copied().collect(),
        pids: args.pid.clone(),
        uids: args.uid.clone(),
        cgroups: args.cgroup.clone(),
        comms: args.comm.clone(),
        netns: args.netns.clone(),
        fold_window_ns: args.fold_window.saturating_mul(1_000_000),
        ring_bytes: args.ring_size * 1024,
        btf: args.btf.clone(),
        args_source: args.tracepoint_args,
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut aya::Ebpf,
    name: &str,
) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("eBPF object has no map {name}"))?;
    Ok(T::try_from(map)?)
}

/// Runs `portwatch watch` until SIGINT/SIGTERM or stdout closes.
pub async fn run(args: WatchArgs) -> Result<()> {
    let started = Instant::now();
    let format = if args.json {
        Format::Json
    } else {
        Format::Human
    };
    let notices = Notices { format };
    let Loaded {
        mut ebpf,
        backend,
        why,
        mounted_tracefs,
    } = loader::load(&settings(&args), args.backend)?;
    if let Some(path) = mounted_tracefs {
        notices.say(
            format!("mounted tracefs at {}", path.display()),
            json!({"type": "mount", "fs": "tracefs", "path": path}),
        );
    }
    let ring: RingBuf<MapData> = take(&mut ebpf, "EVENTS")?;
    let stats: PerCpuArray<MapData, u64> = take(&mut ebpf, "STATS")?;
    let folds: PerCpuHashMap<MapData, FoldKey, FoldState> = take(&mut ebpf, "FOLDS")?;
    // Start-up parsed the kernel's BTF (megabytes); hand that memory back.
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
    // SAFETY: the RingBuf owns its fd and lives inside the AsyncFd, so the fd
    // stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("polling the ring buffer: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(Duration::from_secs(args.stats_interval));
    ticker.tick().await;

    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let startup_ms = started.elapsed().as_millis();
    notices.say(
        format!("backend {} ({why})", backend.name()),
        json!({"type": "backend", "backend": backend.name(), "why": why}),
    );
    if format == Format::Human {
        writeln!(out, "{}", output::HEADER)?;
        out.flush()?;
    }
    notices.say(
        format!("ready ({startup_ms} ms)"),
        json!({"type": "ready", "backend": backend.name(), "startup_ms": startup_ms}),
    );

    let mut delivered = Delivered::default();
    let mut lost_reported = 0;
    let stop_reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                if let Err(e) = delivered.drain(guard.get_inner_mut(), &mut out, format) {
                    break Some(e);
                }
                guard.clear_ready();
            }
            _ = sigint.recv() => break None,
            _ = sigterm.recv() => break None,
            _ = ticker.tick() => {
                let lost = read_counters(&stats).lost;
                if lost > lost_reported {
                    notices.say(
                        format!("{} events lost in the last {}s: the ring buffer was full (raise --ring-size, keep --fold-window on); {lost} lost in all",
                            lost - lost_reported, args.stats_interval),
                        json!({"type": "lost", "lost": lost - lost_reported, "total_lost": lost}),
                    );
                    lost_reported = lost;
                }
            }
        }
    };
    let stdout_closed = match stop_reason {
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => true,
        Some(e) => return Err(e).context("writing events"),
        None => false,
    };

    // Detach first: from here on the counters and fold table are final.
    drop(ebpf);
    if !stdout_closed {
        delivered.drain(ring.get_mut(), &mut out, format).ok();
    } else {
        // stdout is gone; still account for what was in flight.
        delivered
            .drain(ring.get_mut(), &mut io::sink(), format)
            .ok();
    }
    let c = read_counters(&stats);
    let mut tail = 0;
    for entry in folds.iter() {
        let Ok((key, per_cpu)) = entry else { continue };
        let pending: u64 = per_cpu.iter().map(|s| s.pending).sum();
        if pending == 0 {
            continue;
        }
        tail += pending;
        let Some(ev) = delivered.last.get(&key) else {
            continue;
        };
        let errno = ev.errno.map(|e| e.name()).unwrap_or_default();
        notices.say(
            format!(
                "pid {} ({}) {} {} {} {}: {pending} more identical failure(s) after the last one shown",
                ev.pid,
                output::printable(&ev.comm),
                ev.syscall.name(),
                ev.proto.name(),
                output::socket_addr(ev.addr, ev.port),
                errno
            ),
            json!({"type": "repeat", "pid": ev.pid, "comm": ev.comm, "syscall": ev.syscall,
                   "errno": errno, "proto": ev.proto, "addr": ev.addr, "port": ev.port,
                   "netns": ev.netns, "count": pending}),
        );
    }
    notices.say(
        format!(
            "stopped after {:.1}s: {} calls matched; {} shown, {} folded into them, {} folded after the last shown, {} lost",
            started.elapsed().as_secs_f64(),
            c.seen,
            delivered.events,
            delivered.folded,
            tail,
            c.lost
        ),
        json!({"type": "summary", "seconds": started.elapsed().as_secs_f64(), "matched": c.seen,
               "shown": delivered.events, "folded_shown": delivered.folded, "folded_tail": tail,
               "lost": c.lost, "sent": c.sent, "folded": c.folded, "no_entry": c.no_entry,
               "fold_table_full": c.fold_full, "malformed": delivered.bad}),
    );
    Ok(())
}
