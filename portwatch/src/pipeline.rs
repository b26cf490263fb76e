//! Captured events -> holder lookups on blocking threads -> an in-order
//! writer.
//!
//! The ring buffer's reader only decodes and submits, so capture never waits
//! for /proc or netlink. Identical failures within [`SHARE_FOR`] share one
//! lookup (a storm costs one lookup per interval, not one per failure);
//! distinct failures queue for [`LOOKUP_THREADS`] lookup threads, which take
//! what is queued at once and share one sock_diag dump per network
//! namespace and protocol. The writer prints every event in capture order,
//! each once its lookup is in or its deadline has passed.
//!
//! Enrichment is shed, never events: a lookup that finds its queue full is
//! not made, and when the writer falls a whole queue behind the reader it
//! stops waiting for lookups until it has caught up. Such events go out with
//! what the kernel recorded, marked (`Evidence::shed`) and counted. Only a
//! slow output can make the reader wait (then the kernel counts the loss).
//! Diagnosis runs in the writer: it is pure and cheap, and a storm shares one
//! verdict per failing process.

use std::{
    collections::HashMap,
    io::{self, Write},
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::value::RawValue;
use tokio::{
    sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError},
    task::JoinHandle,
};

use crate::metrics::Metrics;
use portwatch_core::{
    diagnose::{diagnose, Verdict},
    event::Event,
    fold::fold_key,
    holders::{Enricher, Evidence},
    output::{self, notice::Unenriched, text, Format},
    request::{Opts, Request, Syscall},
};

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

impl StormKey {
    fn of(ev: &Event) -> Self {
        Self {
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
            holder: ev.record.as_ref().map(|r| (r.pid, r.state)),
        }
    }
}

/// How long one lookup serves identical failures.
pub const SHARE_FOR: Duration = Duration::from_millis(250);

/// Events between the reader and the writer (about 3 MiB), counted by
/// permits of a semaphore: a few seconds of a storm, or the time every
/// lookup of a burst may take (`--lookup-timeout`). When it is full the
/// writer stops waiting for lookups.
pub const QUEUE: usize = 16384;

/// Lookups waiting for a lookup thread (a request each, about 200 bytes): as
/// many as events may wait for the writer. A failure finding this many
/// waiting goes out without one.
pub const LOOKUP_QUEUE: usize = QUEUE;

/// Lookups a lookup thread takes at once: those in one network namespace and
/// protocol share one sock_diag dump.
const LOOKUP_BATCH: usize = 1024;

/// Threads making lookups (each blocks on netlink and /proc).
pub const LOOKUP_THREADS: usize = 2;

/// The lookup threads' nice value: below the reader's, so a burst's
/// lookups do not take the CPU the reader needs to drain the ring buffer.
const LOOKUP_NICE: libc::c_int = 10;

/// Events handed to the writer at once: one cross-thread wake-up per batch,
/// not per event, keeps up with unfolded storms.
pub const BATCH: usize = 256;

/// Storm keys remembered before the stale ones are swept.
const RECENT_CAP: usize = 4096;

/// An event's holder lookup.
enum Lookup {
    /// None wanted: `--no-holders`, or a call that succeeded.
    Unwanted,
    /// Queued, running or done.
    Started(Shared),
    /// Not made: lookups could not keep up.
    Shed,
}

/// An event on its way to the output, with its lookup running.
struct Pending {
    ev: Event,
    lookup: Lookup,
    deadline: tokio::time::Instant,
}

/// Set by the reader when the writer is a whole queue behind: the writer
/// then writes without waiting for lookups until it has caught up.
#[derive(Default)]
struct Hurry {
    on: AtomicBool,
    wake: Notify,
}

/// A lookup for a lookup thread.
struct Job {
    req: Request,
    answer: watch::Sender<Option<Arc<Evidence>>>,
}

/// The lookup threads' queue; they end when it is dropped.
struct Lookups {
    queue: std_mpsc::SyncSender<Job>,
}

impl Lookups {
    fn start(enricher: Arc<Enricher>, delay: Duration, metrics: Option<Metrics>) -> Self {
        let (queue, jobs) = std_mpsc::sync_channel(LOOKUP_QUEUE);
        let jobs = Arc::new(Mutex::new(jobs));
        for _ in 0..LOOKUP_THREADS {
            let (jobs, enricher, metrics) = (jobs.clone(), enricher.clone(), metrics.clone());
            let started = std::thread::Builder::new()
                .name("pw-lookup".into())
                .spawn(move || {
                    // Lookups are worth less than capture: on a busy CPU
                    // the ring buffer's reader goes first (a shed lookup
                    // costs a holder's name, a late reader costs events).
                    // SAFETY: setpriority on this thread only.
                    unsafe {
                        libc::setpriority(
                            libc::PRIO_PROCESS,
                            libc::gettid() as libc::id_t,
                            LOOKUP_NICE,
                        )
                    };
                    serve_lookups(&jobs, &enricher, delay, metrics.as_ref())
                });
            if let Err(e) = started {
                // Fewer threads only means more shed lookups.
                eprintln!("portwatch: starting a lookup thread: {e}");
            }
        }
        Self { queue }
    }
}

/// A lookup thread: takes whatever is queued (up to [`LOOKUP_BATCH`]) and
/// answers it with one shared look per namespace and protocol.
fn serve_lookups(
    jobs: &Mutex<std_mpsc::Receiver<Job>>,
    enricher: &Enricher,
    delay: Duration,
    metrics: Option<&Metrics>,
) {
    loop {
        let batch: Vec<Job> = {
            let Ok(jobs) = jobs.lock() else { return };
            let Ok(first) = jobs.recv() else { return };
            std::iter::once(first)
                .chain(std::iter::from_fn(|| jobs.try_recv().ok()))
                .take(LOOKUP_BATCH)
                .collect()
        };
        std::thread::sleep(delay);
        let started = Instant::now();
        let reqs: Vec<Request> = batch.iter().map(|j| j.req.clone()).collect();
        let found = enricher.evidence_many(&reqs);
        let took = started.elapsed();
        for (job, evidence) in batch.into_iter().zip(found) {
            if let Some(m) = metrics {
                m.lookup(&evidence, took);
            }
            let _ = job.answer.send(Some(Arc::new(evidence)));
        }
    }
}

/// Settings of a pipeline.
pub struct Options {
    /// None: no holder lookups (`--no-holders`).
    pub enricher: Option<Arc<Enricher>>,
    /// How events are printed.
    pub format: Format,
    /// Longest wait for one lookup.
    pub timeout: Duration,
    /// Delay every lookup by this much (tests).
    pub delay: Duration,
    /// `--record`: every event's NDJSON line also goes to the journal.
    pub record: Option<portwatch_core::journal::Sink>,
    /// Under systemd: events go to journald as structured entries instead
    /// of as text on stdout.
    pub journald: Option<output::journald::Journald>,
}

/// The reader's end of the pipeline.
pub struct Pipeline {
    lookups: Option<Lookups>,
    tx: mpsc::UnboundedSender<(Vec<Pending>, OwnedSemaphorePermit)>,
    /// Room for events in the writer's queue.
    room: Arc<Semaphore>,
    hurry: Arc<Hurry>,
    recent: HashMap<StormKey, (Instant, Shared)>,
    /// When `recent` last lost its stale keys.
    pruned: Instant,
    timeout: Duration,
}

/// The writer task.
pub type Writer = JoinHandle<io::Result<Unenriched>>;

impl Pipeline {
    /// Starts the writer on `out`.
    pub fn start(opts: Options, out: Box<dyn Write + Send>) -> (Self, Writer) {
        Self::start_observed(opts, out, None)
    }

    /// Like [`Pipeline::start`]; the writer also counts every event it
    /// writes, and each lookup, into `metrics`.
    pub fn start_observed(
        opts: Options,
        out: Box<dyn Write + Send>,
        metrics: Option<Metrics>,
    ) -> (Self, Writer) {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(QUEUE));
        let hurry = Arc::new(Hurry::default());
        let writer = tokio::spawn(write(
            rx,
            out,
            WriteOpts {
                format: opts.format,
                enricher: opts.enricher.clone(),
                timeout: opts.timeout,
                metrics: metrics.clone(),
                record: opts.record,
                journald: opts.journald,
                hurry: hurry.clone(),
                room: room.clone(),
            },
        ));
        let pipeline = Self {
            lookups: opts
                .enricher
                .map(|e| Lookups::start(e, opts.delay, metrics)),
            tx,
            room,
            hurry,
            recent: HashMap::new(),
            pruned: Instant::now(),
            timeout: opts.timeout,
        };
        (pipeline, writer)
    }

    /// Starts lookups for `events` and hands them to the writer. Never
    /// waits for a lookup: when the writer is a whole queue behind, it is
    /// told to stop waiting for them, and this waits only for the output
    /// itself (when that is slower than the events, the ring buffer fills
    /// and the kernel counts the loss). Does nothing once the writer is
    /// gone with its output.
    pub async fn submit(&mut self, events: &mut Vec<Event>) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let batch: Vec<Pending> = events
            .drain(..)
            .map(|ev| {
                let lookup = if ev.ret != 0 {
                    self.lookup(&ev)
                } else {
                    Lookup::Unwanted
                };
                Pending {
                    ev,
                    lookup,
                    deadline,
                }
            })
            .collect();
        // A writer gone with its output gives no room back.
        if batch.is_empty() || self.tx.is_closed() {
            return;
        }
        let n = batch.len().min(QUEUE) as u32;
        let permit = match self.room.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => {
                self.hurry.on.store(true, Ordering::Relaxed);
                self.hurry.wake.notify_one();
                tokio::select! {
                    got = self.room.clone().acquire_many_owned(n) => match got {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    () = self.tx.closed() => return,
                }
            }
            Err(TryAcquireError::Closed) => return,
        };
        let _ = self.tx.send((batch, permit));
    }

    fn lookup(&mut self, ev: &Event) -> Lookup {
        let Some(lookups) = &self.lookups else {
            return Lookup::Unwanted;
        };
        let key = StormKey::of(ev);
        let now = Instant::now();
        if let Some((at, shared)) = self.recent.get(&key) {
            if now.duration_since(*at) < SHARE_FOR {
                return Lookup::Started(shared.clone());
            }
        }
        // Stale keys go every SHARE_FOR, not only at the cap: each holds its
        // storm's evidence (holders, their processes), and under process
        // churn thousands of one-event keys kept that alive for nothing.
        if self.recent.len() > RECENT_CAP || now.duration_since(self.pruned) >= SHARE_FOR {
            self.recent
                .retain(|_, (at, _)| now.duration_since(*at) < SHARE_FOR);
            self.pruned = now;
        }
        let (answer, rx) = watch::channel(None);
        let job = Job {
            req: ev.request(),
            answer,
        };
        if lookups.queue.try_send(job).is_err() {
            return Lookup::Shed;
        }
        self.recent.insert(key, (now, rx.clone()));
        Lookup::Started(rx)
    }
}

/// The writer's settings.
struct WriteOpts {
    format: Format,
    enricher: Option<Arc<Enricher>>,
    timeout: Duration,
    metrics: Option<Metrics>,
    record: Option<portwatch_core::journal::Sink>,
    /// Under systemd: events go to journald instead of `out`.
    journald: Option<output::journald::Journald>,
    hurry: Arc<Hurry>,
    room: Arc<Semaphore>,
}

/// Who failed, as far as a verdict depends on it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Requester {
    pid: u32,
    uid: u32,
    opts: Option<Opts>,
}

/// The verdict last given, and on what: a storm's events share one
/// evidence and get the same verdict per failing process.
struct LastVerdict {
    evidence: Arc<Evidence>,
    requester: Requester,
    verdict: Arc<Verdict>,
}

/// The holders last rendered as JSON, and from which evidence.
struct LastHolders {
    evidence: Arc<Evidence>,
    json: Arc<RawValue>,
}

/// The writer's state: its outputs, and what it remembers between events
/// so that a storm costs one diagnosis and one rendering.
struct EventWriter {
    opts: WriteOpts,
    out: io::BufWriter<Box<dyn Write + Send>>,
    /// `--record`: the journal lines of one batch, handed over at once.
    journal: Vec<u8>,
    journal_lines: u64,
    unenriched: Unenriched,
    /// The block last printed under each stream of identical failures, as a
    /// hash (keyed per process, so no input can aim at a collision): 8 bytes
    /// instead of a whole block per stream.
    shown: HashMap<portwatch_common::FoldKey, u64>,
    block_hasher: std::hash::RandomState,
    last_verdict: Option<LastVerdict>,
    last_holders: Option<LastHolders>,
}

/// Writes events in capture order, each once its lookup is in or its
/// deadline has passed, or at once while hurried.
async fn write(
    mut rx: mpsc::UnboundedReceiver<(Vec<Pending>, OwnedSemaphorePermit)>,
    out: Box<dyn Write + Send>,
    opts: WriteOpts,
) -> io::Result<Unenriched> {
    let mut w = EventWriter {
        opts,
        out: io::BufWriter::with_capacity(64 * 1024, out),
        journal: Vec::new(),
        journal_lines: 0,
        unenriched: Unenriched::default(),
        shown: HashMap::new(),
        block_hasher: std::hash::RandomState::new(),
        last_verdict: None,
        last_holders: None,
    };
    let hurry = w.opts.hurry.clone();
    // The batch's permit goes back once it is written.
    while let Some((batch, _room)) = rx.recv().await {
        for p in batch {
            let answer = answer(p.lookup, p.deadline, &hurry).await;
            let evidence = answer.map(|a| w.evidence(a, &p.ev));
            let verdict = evidence.as_ref().map(|e| w.verdict(&p.ev, e));
            w.emit(&p.ev, evidence.as_ref(), verdict.as_deref())?;
        }
        w.end_batch()?;
        if rx.is_empty() {
            w.out.flush()?;
        }
    }
    w.out.flush()?;
    Ok(w.unenriched)
}

/// The lookup's answer: at once for storms and while hurried, else waited
/// for until the event's deadline. None: no lookup wanted.
async fn answer(lookup: Lookup, deadline: tokio::time::Instant, hurry: &Hurry) -> Option<Answer> {
    match lookup {
        Lookup::Unwanted => None,
        Lookup::Shed => Some(Answer::Shed),
        // Storms find it ready: no timer for them.
        Lookup::Started(shared) if shared.borrow().is_some() => {
            shared.borrow().clone().map(Answer::Found)
        }
        Lookup::Started(_) if hurry.on.load(Ordering::Relaxed) => Some(Answer::Shed),
        Lookup::Started(mut shared) => Some(wait_answer(&mut shared, deadline, hurry).await),
    }
}

impl EventWriter {
    /// The evidence an answer gives; without one, what the kernel recorded,
    /// marked as such and counted.
    fn evidence(&mut self, answer: Answer, ev: &Event) -> Arc<Evidence> {
        let metrics = self.opts.metrics.as_ref();
        let why = match answer {
            Answer::Found(e) => return e,
            Answer::Shed => {
                self.unenriched.shed += 1;
                metrics.inspect(|m| m.lookup_shed());
                "holders not looked up: failures came faster than lookups".to_owned()
            }
            Answer::TimedOut => {
                self.unenriched.timeouts += 1;
                metrics.inspect(|m| m.lookup_timed_out());
                format!(
                    "looking up the holders took longer than {} ms",
                    self.opts.timeout.as_millis()
                )
            }
            Answer::Failed => "looking up the holders failed".to_owned(),
        };
        // The kernel's record alone, without reading /proc: that may be
        // what is slow.
        let mut e = self
            .opts
            .enricher
            .as_ref()
            .map(|e| e.recorded_only(&ev.request(), false))
            .unwrap_or_default();
        e.blind = Some(why);
        e.shed = true;
        Arc::new(e)
    }

    /// The verdict on `ev`: a storm shares one evidence, so it is diagnosed
    /// once per failing process, not once per failure.
    fn verdict(&mut self, ev: &Event, evidence: &Arc<Evidence>) -> Arc<Verdict> {
        let requester = Requester {
            pid: ev.pid,
            uid: ev.uid,
            opts: ev.opts,
        };
        match &self.last_verdict {
            Some(last) if Arc::ptr_eq(&last.evidence, evidence) && last.requester == requester => {
                last.verdict.clone()
            }
            _ => {
                let verdict = Arc::new(diagnose(&ev.request(), evidence));
                self.last_verdict = Some(LastVerdict {
                    evidence: evidence.clone(),
                    requester,
                    verdict: verdict.clone(),
                });
                verdict
            }
        }
    }

    /// Human output: was this block already printed under the previous
    /// event of the same stream?
    fn repeats_block(&mut self, ev: &Event, evidence: &Evidence, verdict: &Verdict) -> bool {
        let block = text::human_block(evidence, verdict);
        let hash = std::hash::BuildHasher::hash_one(&self.block_hasher, &block);
        let key = fold_key(ev);
        let repeat = self.shown.get(&key) == Some(&hash);
        if self.shown.len() > RECENT_CAP {
            self.shown.clear();
        }
        self.shown.insert(key, hash);
        repeat
    }

    /// The holders as JSON, rendered once per evidence (a storm shares it).
    fn holders_json(&mut self, evidence: &Arc<Evidence>) -> Arc<RawValue> {
        match &self.last_holders {
            Some(last) if Arc::ptr_eq(&last.evidence, evidence) => last.json.clone(),
            _ => {
                let json: Arc<RawValue> = output::json::holders_json(evidence).into();
                self.last_holders = Some(LastHolders {
                    evidence: evidence.clone(),
                    json: json.clone(),
                });
                json
            }
        }
    }

    /// Counts `ev` and writes it to every output: --record's journal,
    /// journald or stdout.
    fn emit(
        &mut self,
        ev: &Event,
        evidence: Option<&Arc<Evidence>>,
        verdict: Option<&Verdict>,
    ) -> io::Result<()> {
        let format = self.opts.format;
        let found = evidence.map(|e| &**e).zip(verdict);
        let repeat = match found {
            Some((e, v)) if format == Format::Human => self.repeats_block(ev, e, v),
            _ => false,
        };
        let wants_json =
            format == Format::Json || self.opts.record.is_some() || self.opts.journald.is_some();
        let holders = match evidence {
            Some(e) if wants_json => Some(self.holders_json(e)),
            _ => None,
        };
        // Counted before it is written, whatever the outputs: the metrics
        // follow the failures, not the output's fate.
        if let Some(m) = &self.opts.metrics {
            m.observe(ev, verdict);
        }
        // The event's NDJSON line, rendered once for every output that
        // takes it: --record's journal (written in place), journald, and
        // stdout with --json.
        let journal_line = output::json::JournalLine {
            event: ev,
            holders: holders.as_deref(),
            enriched: evidence.map(|e| !e.shed),
            verdict,
        };
        let mut own_line = Vec::new();
        let line: Option<&[u8]> = if self.opts.record.is_some() {
            let start = self.journal.len();
            journal_line.write(&mut self.journal)?;
            self.journal_lines += 1;
            Some(&self.journal[start..])
        } else if self.opts.journald.is_some() {
            journal_line.write(&mut own_line)?;
            Some(&own_line)
        } else {
            None
        };
        match (&self.opts.journald, line) {
            // journald gone (stopped, restarting): the event is still in
            // --record's journal and the metrics.
            (Some(j), Some(line)) => {
                let _ = j.send(ev, found, line);
                Ok(())
            }
            (None, Some(line)) if format == Format::Json => self.out.write_all(line),
            _ => output::write_event(&mut self.out, format, ev, found, holders.as_deref(), repeat),
        }
    }

    /// Hands the batch's journal lines over, and stops hurrying once
    /// caught up.
    fn end_batch(&mut self) -> io::Result<()> {
        if let Some(sink) = &self.opts.record {
            if self.journal_lines > 0 {
                sink.send(
                    std::mem::take(&mut self.journal),
                    std::mem::take(&mut self.journal_lines),
                );
            }
        }
        // Caught up: lookups are worth waiting for again.
        if self.opts.room.available_permits() >= QUEUE * 3 / 4 {
            self.opts.hurry.on.store(false, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// What became of a lookup the writer needed.
enum Answer {
    Found(Arc<Evidence>),
    Shed,
    TimedOut,
    Failed,
}

/// Waits for a lookup's answer until `deadline`, or until the reader finds
/// the writer a whole queue behind.
async fn wait_answer(shared: &mut Shared, deadline: tokio::time::Instant, hurry: &Hurry) -> Answer {
    loop {
        tokio::select! {
            got = shared.wait_for(Option::is_some) => {
                return match got {
                    Ok(v) => v.clone().map_or(Answer::Failed, Answer::Found),
                    Err(_) => Answer::Failed,
                };
            }
            () = tokio::time::sleep_until(deadline) => return Answer::TimedOut,
            // A wake-up left from an earlier hurry is not one.
            () = hurry.wake.notified() => {
                if hurry.on.load(Ordering::Relaxed) {
                    return Answer::Shed;
                }
            }
        }
    }
}

/// Ends a capture: detaches the programs (from then on the kernel's
/// counters and fold table are final), accounts for what was still in the
/// ring buffer (also when the output is gone), closes the pipeline and waits
/// for its writer. `written` is the writer's result when the caller already
/// saw it end. Returns what the writer wrote without a lookup's answer.
pub async fn wind_down(
    session: &mut crate::capture::Session,
    mut pipeline: Pipeline,
    batch: &mut Vec<Event>,
    writing: Writer,
    written: Option<Result<io::Result<Unenriched>, tokio::task::JoinError>>,
) -> anyhow::Result<Unenriched> {
    use anyhow::Context as _;
    session.detach();
    loop {
        let drained = session.read_rest(batch, BATCH);
        pipeline.submit(batch).await;
        if drained {
            break;
        }
    }
    drop(pipeline);
    let written = match written {
        Some(w) => w,
        None => writing.await,
    };
    match written.map_err(|e| anyhow::anyhow!("the writer failed: {e}"))? {
        Ok(n) => Ok(n),
        // stdout closed (`| head`): what was shown is all that was wanted.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Unenriched::default()),
        Err(e) => Err(e).context("writing events"),
    }
}
