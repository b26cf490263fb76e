//! Captured events -> holder lookups on blocking threads -> an in-order
//! writer.
//!
//! The ring buffer's reader only decodes and submits, so capture never waits
//! for /proc or netlink. Identical failures within [`SHARE_FOR`] share one
//! lookup (a storm costs one lookup per interval, not one per failure), and
//! the writer prints every event in capture order, each once its lookup is
//! in or its deadline has passed. Diagnosis runs in the writer: it is pure
//! and cheap, and a storm shares one verdict per failing process.

use std::{
    collections::HashMap,
    io::{self, Write},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::value::RawValue;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{
    capture::{fold_key, Event},
    diagnose::{diagnose, Verdict},
    holders::{Enricher, Evidence},
    metrics::Metrics,
    output::{self, text, Format},
    request::{Opts, Syscall},
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

/// Events between the reader and the writer: a few seconds of a storm, or
/// the time every lookup of a burst may take (`--lookup-timeout`).
const QUEUE: usize = 16384;

/// Events handed to the writer at once: one cross-thread wake-up per batch,
/// not per event, keeps up with unfolded storms.
pub const BATCH: usize = 256;

/// Storm keys remembered before the stale ones are swept.
const RECENT_CAP: usize = 4096;

/// An event on its way to the output, with its lookup running.
struct Pending {
    ev: Event,
    evidence: Option<Shared>,
    deadline: tokio::time::Instant,
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
    pub record: Option<output::record::Sink>,
}

/// The reader's end of the pipeline.
pub struct Pipeline {
    enricher: Option<Arc<Enricher>>,
    tx: mpsc::Sender<Vec<Pending>>,
    recent: HashMap<StormKey, (Instant, Shared)>,
    /// When `recent` last lost its stale keys.
    pruned: Instant,
    timeout: Duration,
    delay: Duration,
    metrics: Option<Metrics>,
}

/// The writer task; its result is how many lookups timed out.
pub type Writer = JoinHandle<io::Result<u64>>;

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
        let (tx, rx) = mpsc::channel(QUEUE / BATCH);
        let writer = tokio::spawn(write(
            rx,
            out,
            opts.format,
            opts.enricher.clone(),
            opts.timeout,
            metrics.clone(),
            opts.record,
        ));
        let pipeline = Self {
            enricher: opts.enricher,
            tx,
            recent: HashMap::new(),
            pruned: Instant::now(),
            timeout: opts.timeout,
            delay: opts.delay,
            metrics,
        };
        (pipeline, writer)
    }

    /// Starts lookups for `events` and hands them to the writer; waits only
    /// when the writer is a whole queue behind (the output is slower than
    /// the events: then the ring buffer fills and the kernel counts the
    /// loss). Does nothing once the writer is gone with its output.
    pub async fn submit(&mut self, events: &mut Vec<Event>) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let batch: Vec<Pending> = events
            .drain(..)
            .map(|ev| {
                let evidence = match &self.enricher {
                    Some(enricher) if ev.ret != 0 => Some(self.lookup(enricher.clone(), &ev)),
                    _ => None,
                };
                Pending {
                    ev,
                    evidence,
                    deadline,
                }
            })
            .collect();
        if !batch.is_empty() {
            let _ = self.tx.send(batch).await;
        }
    }

    fn lookup(&mut self, enricher: Arc<Enricher>, ev: &Event) -> Shared {
        let key = StormKey::of(ev);
        let now = Instant::now();
        if let Some((at, shared)) = self.recent.get(&key) {
            if now.duration_since(*at) < SHARE_FOR {
                return shared.clone();
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
        let (tx, rx) = watch::channel(None);
        let req = ev.request();
        let delay = self.delay;
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(delay);
            let started = Instant::now();
            let evidence = enricher.evidence(&req);
            if let Some(m) = &metrics {
                m.lookup(&evidence, started.elapsed());
            }
            let _ = tx.send(Some(Arc::new(evidence)));
        });
        self.recent.insert(key, (now, rx.clone()));
        rx
    }
}

/// Writes events in capture order, each once its lookup is in or its
/// deadline has passed. Returns how many lookups timed out.
async fn write(
    mut rx: mpsc::Receiver<Vec<Pending>>,
    out: Box<dyn Write + Send>,
    format: Format,
    enricher: Option<Arc<Enricher>>,
    timeout: Duration,
    metrics: Option<Metrics>,
    record: Option<output::record::Sink>,
) -> io::Result<u64> {
    // The journal's lines of one batch, handed over at once.
    let mut journal: Vec<u8> = Vec::new();
    let mut journal_lines = 0;
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut timeouts = 0;
    // The block last printed under each stream of identical failures, as a
    // hash (keyed per process, so no input can aim at a collision): 8 bytes
    // instead of a whole block per stream.
    let mut shown: HashMap<portwatch_common::FoldKey, u64> = HashMap::new();
    let block_hasher = std::hash::RandomState::new();
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
                                if let Some(m) = &metrics {
                                    m.lookup_timed_out();
                                }
                                format!(
                                    "looking up the holders took longer than {} ms",
                                    timeout.as_millis()
                                )
                            } else {
                                "looking up the holders failed".to_owned()
                            };
                            let mut e = enricher
                                .as_ref()
                                .map(|e| e.recorded_only(&p.ev.request(), false))
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
                    let v = Arc::new(diagnose(&p.ev.request(), e));
                    last = Some((e.clone(), who, v.clone()));
                    v
                }
            });
            let found = evidence.as_deref().zip(verdict.as_deref());
            let mut repeat = false;
            if let (Format::Human, Some((e, v))) = (format, found) {
                let block = text::human_block(e, v);
                let hash = std::hash::BuildHasher::hash_one(&block_hasher, &block);
                repeat = shown.get(&fold_key(&p.ev)) == Some(&hash);
                if shown.len() > RECENT_CAP {
                    shown.clear();
                }
                shown.insert(fold_key(&p.ev), hash);
            }
            let holders = match (&evidence, format) {
                (Some(e), _) if format == Format::Json || record.is_some() => match &rendered {
                    Some((prev, raw)) if Arc::ptr_eq(prev, e) => Some(raw.clone()),
                    _ => {
                        let raw: Arc<RawValue> = output::json::holders_json(e).into();
                        rendered = Some((e.clone(), raw.clone()));
                        Some(raw)
                    }
                },
                _ => None,
            };
            // Counted before it is written, whatever the outputs: the
            // metrics follow the failures, not the output's fate.
            if let Some(m) = &metrics {
                m.observe(&p.ev, verdict.as_deref());
            }
            if record.is_some() {
                let start = journal.len();
                output::json::write(&mut journal, &p.ev, holders.as_deref(), verdict.as_deref())?;
                journal_lines += 1;
                if format == Format::Json {
                    // Rendered once for both.
                    out.write_all(&journal[start..])?;
                    continue;
                }
            }
            output::write_event(&mut out, format, &p.ev, found, holders.as_deref(), repeat)?;
        }
        if let Some(sink) = &record {
            if journal_lines > 0 {
                sink.send(
                    std::mem::take(&mut journal),
                    std::mem::take(&mut journal_lines),
                );
            }
        }
        if rx.is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(timeouts)
}

/// Ends a capture: detaches the programs (from then on the kernel's
/// counters and fold table are final), accounts for what was still in the
/// ring buffer (also when the output is gone), closes the pipeline and waits
/// for its writer. `written` is the writer's result when the caller already
/// saw it end. Returns how many lookups timed out.
pub async fn wind_down(
    session: &mut crate::capture::Session,
    mut pipeline: Pipeline,
    batch: &mut Vec<Event>,
    writing: Writer,
    written: Option<Result<io::Result<u64>, tokio::task::JoinError>>,
) -> anyhow::Result<u64> {
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
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e).context("writing events"),
    }
}
