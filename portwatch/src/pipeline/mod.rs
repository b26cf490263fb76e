//! Captured events -> holder lookups on blocking threads -> an in-order
//! writer, whose output is written on a thread of its own.
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
//! slow output can make the reader wait (then the kernel counts the loss):
//! the writing itself blocks the output thread (`writer`), never the async
//! runtime, and pushes back through bounded queues all the way to the
//! reader, so no event is dropped after the ring buffer.
//! Diagnosis runs in the writer: it is pure and cheap, and a storm shares one
//! verdict per failing process.

use std::{
    collections::HashMap,
    io::{self, Write},
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc as std_mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError},
    task::JoinHandle,
};

mod writer;

use portwatch_core::{
    event::Event,
    holders::{Enricher, Evidence},
    output::{self, notice::Unenriched, Format},
    request::{Request, Syscall},
};

use crate::metrics::Metrics;

/// Where one lookup is: shared by the events of one storm.
#[derive(Clone)]
enum LookupState {
    /// Waiting for a lookup thread.
    Queued,
    /// A lookup thread took it then: it has `--lookup-timeout` from now.
    Running(Instant),
    /// Its answer.
    Done(Arc<Evidence>),
}

/// Evidence shared by the events of one storm, once it is in.
type StormEvidence = watch::Receiver<LookupState>;

/// Whether the lookup threads are getting on: a lookup is waited for while
/// they keep taking and answering batches, or are running (on a CPU or
/// waiting for one: a burst's lookups on a loaded machine), and given up
/// on once they have done neither for `--lookup-timeout` (blocked: a /proc
/// read that hangs, a D-Bus peer that does not answer).
struct Progress {
    epoch: Instant,
    /// When a lookup thread last took or finished a batch, in milliseconds
    /// since `epoch`.
    last_ms: AtomicU64,
    /// The lookup threads' thread ids.
    tids: Mutex<Vec<libc::pid_t>>,
}

impl Progress {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            tids: Mutex::new(Vec::new()),
        }
    }

    /// The calling thread is a lookup thread.
    fn register(&self) {
        if let Ok(mut tids) = self.tids.lock() {
            // SAFETY: gettid has no preconditions.
            tids.push(unsafe { libc::gettid() });
        }
    }

    /// Whether a lookup thread is runnable now (state R in its stat: on a
    /// CPU or in the run queue), not blocked nor idle.
    fn running(&self) -> bool {
        let Ok(tids) = self.tids.lock() else {
            return false;
        };
        tids.iter().any(|tid| {
            std::fs::read(format!("/proc/self/task/{tid}/stat")).is_ok_and(|stat| {
                // The state follows the last ')' (comm may hold one).
                stat.iter()
                    .rposition(|&b| b == b')')
                    .and_then(|i| stat.get(i + 2))
                    == Some(&b'R')
            })
        })
    }

    /// A lookup thread moved on.
    fn mark(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When a lookup thread last moved on.
    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

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
            holder: ev.holder_record.as_ref().map(|r| (r.pid, r.state)),
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
/// protocol share one sock_diag dump, and a process named by the kernel's
/// record of many of them has its fds read once. A burst of 16,000 ports
/// held by one process is 4 batches (each a dump of every socket and a read
/// of the process's 16,000 fds), not 16: half of the lookups' CPU time
/// with 1,024.
const LOOKUP_BATCH: usize = 4096;

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
    Started(StormEvidence),
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
    answer: watch::Sender<LookupState>,
}

/// The lookup threads' queue; they end when it is dropped.
struct Lookups {
    queue: std_mpsc::SyncSender<Job>,
}

impl Lookups {
    fn start(
        enricher: Arc<Enricher>,
        delay: LookupDelay,
        metrics: Option<Metrics>,
        progress: Arc<Progress>,
    ) -> Self {
        let (queue, jobs) = std_mpsc::sync_channel(LOOKUP_QUEUE);
        let jobs = Arc::new(Mutex::new(jobs));
        for _ in 0..LOOKUP_THREADS {
            let (jobs, enricher, metrics, progress) = (
                jobs.clone(),
                enricher.clone(),
                metrics.clone(),
                progress.clone(),
            );
            let started = std::thread::Builder::new()
                .name("pw-lookup".into())
                .spawn(move || {
                    // Lookups are worth less than capture: on a busy CPU
                    // the ring buffer's reader goes first (a shed lookup
                    // costs a holder's name, a late reader costs events).
                    progress.register();
                    // SAFETY: setpriority on this thread only.
                    unsafe {
                        libc::setpriority(
                            libc::PRIO_PROCESS,
                            libc::gettid() as libc::id_t,
                            LOOKUP_NICE,
                        )
                    };
                    serve_lookups(&jobs, &enricher, delay, metrics.as_ref(), &progress)
                });
            if let Err(e) = started {
                // Fewer threads only means more shed lookups.
                eprintln!("portwatch: starting a lookup thread: {e}");
            }
        }
        Self { queue }
    }
}

/// Test machinery (`--enrich-delay`): how long each lookup batch waits
/// first, so the holder is gone when user space looks. Nothing in a build
/// without the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
pub type LookupDelay = Duration;
/// Nothing: the delay is test machinery (feature `test-hooks`).
#[cfg(not(feature = "test-hooks"))]
pub type LookupDelay = ();

#[cfg(feature = "test-hooks")]
fn pause(delay: LookupDelay) {
    std::thread::sleep(delay);
}

#[cfg(not(feature = "test-hooks"))]
fn pause((): LookupDelay) {}

/// A lookup thread: takes whatever is queued (up to [`LOOKUP_BATCH`]) and
/// answers it with one shared look per namespace and protocol.
fn serve_lookups(
    jobs: &Mutex<std_mpsc::Receiver<Job>>,
    enricher: &Enricher,
    delay: LookupDelay,
    metrics: Option<&Metrics>,
    progress: &Progress,
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
        let started = Instant::now();
        progress.mark();
        for job in &batch {
            job.answer.send_replace(LookupState::Running(started));
        }
        pause(delay);
        let looking = Instant::now();
        let reqs: Vec<Request> = batch.iter().map(|j| j.req.clone()).collect();
        let found = enricher.evidence_many(&reqs);
        let took = looking.elapsed();
        for (job, evidence) in batch.into_iter().zip(found) {
            if let Some(m) = metrics {
                m.lookup(&evidence, took);
            }
            let _ = job.answer.send(LookupState::Done(Arc::new(evidence)));
        }
        progress.mark();
    }
}

/// Settings of a pipeline.
pub struct PipelineOptions {
    /// None: no holder lookups (`--no-holders`).
    pub enricher: Option<Arc<Enricher>>,
    /// How events are printed.
    pub format: Format,
    /// `--lookup-timeout`: how long a lookup may keep an event waiting
    /// while the lookup threads are blocked.
    pub timeout: Duration,
    /// Delay every lookup batch by this much (tests only).
    pub delay: LookupDelay,
    /// `--record`: every event's NDJSON line also goes to the journal.
    pub journal: Option<portwatch_core::journal::Sink>,
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
    recent: Recent<StormKey, StormEvidence>,
    timeout: Duration,
}

/// The storm keys of the last [`SHARE_FOR`], each with its lookup.
struct Recent<K, V> {
    map: HashMap<K, (Instant, V)>,
    /// When `map` last lost its stale keys.
    pruned: Instant,
    /// The size of `map` that makes it lose them before `SHARE_FOR` has
    /// passed: twice what was left the last time, so a burst that keeps it
    /// over [`RECENT_CAP`] pays for each key a bounded number of times
    /// (linear), not for the whole map at every new key.
    prune_at: usize,
    /// Sweeps so far.
    sweeps: usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> Recent<K, V> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            pruned: Instant::now(),
            prune_at: RECENT_CAP,
            sweeps: 0,
        }
    }

    /// The lookup `key` shares, if one started within [`SHARE_FOR`].
    fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.map
            .get(key)
            .filter(|(at, _)| now.duration_since(*at) < SHARE_FOR)
            .map(|(_, v)| v.clone())
    }

    /// Stale keys go every SHARE_FOR, not only at the cap: each holds its
    /// storm's evidence (holders, their processes), and under process
    /// churn thousands of one-event keys kept that alive for nothing.
    fn sweep(&mut self, now: Instant) {
        if self.map.len() > self.prune_at || now.duration_since(self.pruned) >= SHARE_FOR {
            self.map
                .retain(|_, (at, _)| now.duration_since(*at) < SHARE_FOR);
            self.pruned = now;
            self.prune_at = RECENT_CAP.max(2 * self.map.len());
            self.sweeps += 1;
        }
    }

    fn insert(&mut self, key: K, now: Instant, v: V) {
        self.map.insert(key, (now, v));
    }
}

/// The writer task.
pub type Writer = JoinHandle<io::Result<Unenriched>>;

impl Pipeline {
    /// Starts the writer on `out`.
    pub fn start(opts: PipelineOptions, out: Box<dyn Write + Send>) -> (Self, Writer) {
        Self::start_observed(opts, out, None)
    }

    /// Like [`Pipeline::start`]; the writer also counts every event it
    /// writes, and each lookup, into `metrics`.
    pub fn start_observed(
        opts: PipelineOptions,
        out: Box<dyn Write + Send>,
        metrics: Option<Metrics>,
    ) -> (Self, Writer) {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(QUEUE));
        let hurry = Arc::new(Hurry::default());
        let progress = Arc::new(Progress::new());
        let writer = tokio::spawn(writer::write(
            rx,
            out,
            writer::WriteOpts {
                format: opts.format,
                enricher: opts.enricher.clone(),
                timeout: opts.timeout,
                metrics: metrics.clone(),
                journal: opts.journal,
                journald: opts.journald,
                hurry: hurry.clone(),
                room: room.clone(),
                progress: progress.clone(),
            },
        ));
        let pipeline = Self {
            lookups: opts
                .enricher
                .map(|e| Lookups::start(e, opts.delay, metrics, progress)),
            tx,
            room,
            hurry,
            recent: Recent::new(),
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
        if let Some(shared) = self.recent.get(&key, now) {
            return Lookup::Started(shared);
        }
        self.recent.sweep(now);
        let (answer, rx) = watch::channel(LookupState::Queued);
        let job = Job {
            req: ev.request(),
            answer,
        };
        if lookups.queue.try_send(job).is_err() {
            return Lookup::Shed;
        }
        self.recent.insert(key, now, rx.clone());
        Lookup::Started(rx)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of 100,000 distinct keys within one SHARE_FOR (none stale):
    /// the map is swept a handful of times (each time it has doubled), not
    /// once per key past the cap, which was quadratic.
    #[test]
    fn a_burst_keeping_recent_over_its_cap_sweeps_it_a_few_times() {
        let mut recent: Recent<u32, ()> = Recent::new();
        let now = recent.pruned;
        for key in 0..100_000u32 {
            assert!(recent.get(&key, now).is_none());
            recent.sweep(now);
            recent.insert(key, now, ());
        }
        assert_eq!(recent.map.len(), 100_000);
        // 4096 -> 8194 -> 16390 -> ... -> past 100,000: five sweeps.
        assert!(recent.sweeps <= 6, "{} sweeps", recent.sweeps);
        // A key of the burst is still shared; after SHARE_FOR all go.
        assert!(recent.get(&7, now).is_some());
        let later = now + SHARE_FOR;
        recent.sweep(later);
        assert!(recent.map.is_empty());
    }
}
