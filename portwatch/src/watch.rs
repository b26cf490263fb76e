//! `portwatch watch`: load, attach, then stream events until told to stop.

use std::{
    collections::HashMap,
    io::{self, Write},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use portwatch_common::{stat, FoldKey, FoldState};
use serde_json::{json, value::RawValue};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

use crate::{
    args::WatchArgs,
    diagnose::{diagnose, Evidence, Verdict},
    enrich::Enricher,
    event::{Clock, Event, Opts, Syscall},
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
    /// Boot time to wall time; None until the first drain.
    clock: Option<Clock>,
}

impl Delivered {
    /// Decodes every record the ring buffer holds and hands them on. Waits
    /// only when the writer is a whole queue behind (stdout slower than the
    /// events): then the ring buffer fills and the kernel counts the loss.
    async fn drain(&mut self, ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline) {
        let clock = Clock::follow(self.clock, Clock::now());
        self.clock = Some(clock);
        loop {
            let decoded = match ring.next() {
                Some(item) => Event::decode(&item, clock),
                None => break,
            };
            match decoded {
                Ok(ev) => {
                    self.events += 1;
                    self.folded += ev.folded;
                    if ev.ret != 0 {
                        // One description per stream is enough.
                        self.last.entry(fold_key(&ev)).or_insert_with(|| ev.clone());
                    }
                    pipeline.submit(ev);
                    if pipeline.batch.len() >= BATCH {
                        pipeline.flush().await;
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
        pipeline.flush().await;
    }
}

/// Evidence shared by the events of one storm.
type Shared = watch::Receiver<Option<Arc<Evidence>>>;

/// What identifies identical evidence: the request (port and address in
/// its namespace), the failure, and the kernel's view of the holder then.
#[derive(Debug, PartialEq, Eq, Hash)]
struct StormKey {
    netns: u32,
    proto: u16,
    addr: IpAddr,
    port: u16,
    v6only: bool,
    ret: i32,
    syscall: u8,
    /// listen()'s own socket is told apart by pid; 0 for bind.
    pid: u32,
    holder: Option<(u32, Option<u8>)>,
}

/// How long one enrichment serves identical failures (a storm on one port
/// costs one lookup per interval, not one per failure).
const SHARE_FOR: Duration = Duration::from_millis(250);

/// Events between the reader and the writer: a few seconds of a storm, or
/// the time every lookup of a burst may take (`--lookup-timeout`).
const QUEUE: usize = 16384;

/// Events handed to the writer at once: one cross-thread wake-up per batch,
/// not per event, keeps up with unfolded storms.
const BATCH: usize = 256;

/// An event on its way to stdout, with its enrichment running.
struct Pending {
    ev: Event,
    evidence: Option<Shared>,
    deadline: tokio::time::Instant,
}

/// Decoded events -> enrichment on blocking threads -> an in-order writer.
/// The ring buffer's reader only decodes and submits, so capture never waits
/// for /proc or netlink.
struct Pipeline {
    enricher: Option<Arc<Enricher>>,
    tx: mpsc::Sender<Vec<Pending>>,
    batch: Vec<Pending>,
    recent: HashMap<StormKey, (Instant, Shared)>,
    timeout: Duration,
    delay: Duration,
}

impl Pipeline {
    fn submit(&mut self, ev: Event) {
        let evidence = match &self.enricher {
            Some(enricher) if ev.ret != 0 => Some(self.enrich(enricher.clone(), &ev)),
            _ => None,
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.batch.push(Pending {
            ev,
            evidence,
            deadline,
        });
    }

    /// Hands the batch to the writer; waits only when it is a whole queue
    /// behind. Fails only when the writer is gone with stdout: then there
    /// is nothing left to do with the events.
    async fn flush(&mut self) {
        if !self.batch.is_empty() {
            let _ = self.tx.send(std::mem::take(&mut self.batch)).await;
        }
    }

    fn enrich(&mut self, enricher: Arc<Enricher>, ev: &Event) -> Shared {
        let key = StormKey {
            netns: ev.netns,
            proto: ev.proto.code(),
            addr: ev.addr,
            port: ev.port,
            v6only: ev.opts.is_some_and(|o| o.v6only),
            ret: ev.ret,
            syscall: ev.syscall.code(),
            pid: if ev.syscall == Syscall::Listen {
                ev.pid
            } else {
                0
            },
            holder: ev.recorded.as_ref().map(|r| (r.pid, r.state)),
        };
        let now = Instant::now();
        if let Some((at, shared)) = self.recent.get(&key) {
            if now.duration_since(*at) < SHARE_FOR {
                return shared.clone();
            }
        }
        if self.recent.len() > 4096 {
            self.recent
                .retain(|_, (at, _)| now.duration_since(*at) < SHARE_FOR);
        }
        let (tx, rx) = watch::channel(None);
        let ev = ev.clone();
        let delay = self.delay;
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(delay);
            let _ = tx.send(Some(Arc::new(enricher.evidence(&ev))));
        });
        self.recent.insert(key, (now, rx.clone()));
        rx
    }
}

/// Writes events in capture order, each once its enrichment is in or its
/// deadline has passed. Returns how many enrichments timed out.
async fn writer(
    mut rx: mpsc::Receiver<Vec<Pending>>,
    format: Format,
    enricher: Option<Arc<Enricher>>,
    timeout: Duration,
) -> io::Result<u64> {
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    let mut timeouts = 0;
    // The block last printed under each stream of identical failures.
    let mut shown: HashMap<FoldKey, String> = HashMap::new();
    type Diagnosed = (Arc<Evidence>, (u32, u32, Option<Opts>), Arc<Verdict>);
    let mut last: Option<Diagnosed> = None;
    let mut rendered: Option<(Arc<Evidence>, Arc<RawValue>)> = None;
    while let Some(batch) = rx.recv().await {
        for p in batch {
            let evidence = match p.evidence {
                None => None,
                // Storms find it ready: no timer for them.
                Some(shared) if shared.borrow().is_some() => shared.borrow().clone(),
                Some(mut shared) => {
                    let got =
                        tokio::time::timeout_at(p.deadline, shared.wait_for(Option::is_some)).await;
                    Some(match got {
                        Ok(Ok(v)) => v.clone().unwrap_or_default(),
                        other => {
                            let why = if other.is_err() {
                                timeouts += 1;
                                format!(
                                    "looking up the holders took longer than {} ms",
                                    timeout.as_millis()
                                )
                            } else {
                                "looking up the holders failed".to_owned()
                            };
                            let mut e = enricher
                                .as_ref()
                                .map(|e| e.recorded_only(&p.ev, false))
                                .unwrap_or_default();
                            e.blind = Some(why);
                            Arc::new(e)
                        }
                    })
                }
            };
            // A storm shares one evidence: diagnose it once per failing
            // process, not once per failure.
            let who = (p.ev.pid, p.ev.uid, p.ev.opts);
            let verdict = evidence.as_ref().map(|e| match &last {
                Some((prev, by, v)) if Arc::ptr_eq(prev, e) && *by == who => v.clone(),
                _ => {
                    let v = Arc::new(diagnose(&p.ev, e));
                    last = Some((e.clone(), who, v.clone()));
                    v
                }
            });
            let found = evidence.as_deref().zip(verdict.as_deref());
            let mut repeat = false;
            if let (Format::Human, Some((e, v))) = (format, found) {
                let block = output::human_block(e, v);
                repeat = shown.get(&fold_key(&p.ev)) == Some(&block);
                if shown.len() > 4096 {
                    shown.clear();
                }
                shown.insert(fold_key(&p.ev), block);
            }
            let holders = match (&evidence, format) {
                (Some(e), Format::Json) => match &rendered {
                    Some((prev, raw)) if Arc::ptr_eq(prev, e) => Some(raw.clone()),
                    _ => {
                        let raw: Arc<RawValue> = output::holders_json(e).into();
                        rendered = Some((e.clone(), raw.clone()));
                        Some(raw)
                    }
                },
                _ => None,
            };
            output::write_event(&mut out, format, &p.ev, found, holders.as_deref(), repeat)?;
        }
        if rx.is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(timeouts)
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
        track_holders: !args.no_holders,
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
        holders_note,
        bound_inactive_dump,
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

    let enricher = (!args.no_holders).then(|| Arc::new(Enricher::new(bound_inactive_dump)));
    if let Some(e) = &enricher {
        let e = e.clone();
        // The first failures should not pay for walking /proc.
        tokio::task::spawn_blocking(move || e.warm());
    }
    let timeout = Duration::from_millis(args.lookup_timeout);
    let (tx, rx) = mpsc::channel(QUEUE / BATCH);
    let mut pipeline = Pipeline {
        enricher: enricher.clone(),
        tx,
        batch: Vec::with_capacity(BATCH),
        recent: HashMap::new(),
        timeout,
        delay: Duration::from_millis(args.enrich_delay),
    };
    let startup_ms = started.elapsed().as_millis();
    notices.say(
        format!("backend {} ({why})", backend.name()),
        json!({"type": "backend", "backend": backend.name(), "why": why}),
    );
    if let Some(note) = holders_note {
        notices.say(
            format!("listeners are not recorded in the kernel ({note}); holders that exit before they are looked up may go unnamed"),
            json!({"type": "degraded", "what": "listener_record", "why": note}),
        );
    }
    if format == Format::Human {
        let mut out = io::stdout().lock();
        writeln!(out, "{}", output::HEADER)?;
        out.flush()?;
    }
    let mut writing = tokio::spawn(writer(rx, format, enricher, timeout));
    notices.say(
        format!("ready ({startup_ms} ms)"),
        json!({"type": "ready", "backend": backend.name(), "startup_ms": startup_ms}),
    );

    let mut delivered = Delivered::default();
    let mut lost_reported = 0;
    let mut written = None;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                delivered.drain(guard.get_inner_mut(), &mut pipeline).await;
                guard.clear_ready();
            }
            // The writer only ends early when stdout fails.
            done = &mut writing => {
                written = Some(done);
                break;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
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
    }

    // Detach first: from here on the counters and fold table are final.
    drop(ebpf);
    // Still account for what was in flight, even when stdout is gone.
    delivered.drain(ring.get_mut(), &mut pipeline).await;
    drop(pipeline);
    let written = match written {
        Some(w) => w,
        None => writing.await,
    };
    let timeouts = match written.map_err(|e| anyhow!("the writer failed: {e}"))? {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => return Err(e).context("writing events"),
    };
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
               "fold_table_full": c.fold_full, "malformed": delivered.bad,
               "lookup_timeouts": timeouts}),
    );
    Ok(())
}
