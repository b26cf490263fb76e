//! The writer: events in capture order, each once its lookup is in or its
//! deadline has passed; diagnosed once per storm and process, rendered
//! (text or NDJSON, journald), journalled and counted.
//!
//! Two halves. An async task waits for the lookups (their answers, the
//! deadlines and the hurry are async); a thread of its own, `pw-output`,
//! diagnoses, renders and writes, so a slow stdout (a pipe read slowly, a
//! terminal on a slow link) or journald blocks that thread, never the
//! runtime the ring buffer's reader runs on. Between them a bounded channel
//! of [`OUTPUT_QUEUE`] batches, in order: when the thread is that far
//! behind, the task waits to hand it the next batch, stops taking the
//! reader's, and the reader waits for room as it always did. No event is
//! dropped on the way; a batch's room in the queue is given back once the
//! thread has written it.

use std::{
    collections::HashMap,
    io::{self, Write},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use portwatch_core::{
    diagnose::{diagnose, Verdict},
    event::Event,
    fold::fold_key,
    holders::{Enricher, Evidence},
    output::{self, notice::Unenriched, text, Format},
    request::Opts,
};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{Hurry, Lookup, LookupState, Pending, Progress, StormEvidence, QUEUE, RECENT_CAP};
use crate::metrics::Metrics;

/// The writer's settings.
pub(super) struct WriteOpts {
    pub(super) format: Format,
    pub(super) enricher: Option<Arc<Enricher>>,
    pub(super) timeout: Duration,
    pub(super) metrics: Option<Metrics>,
    pub(super) journal: Option<portwatch_core::journal::Sink>,
    /// Under systemd: events go to journald instead of `out`.
    pub(super) journald: Option<output::journald::Journald>,
    pub(super) hurry: Arc<Hurry>,
    pub(super) room: Arc<Semaphore>,
    /// When the lookup threads last moved on.
    pub(super) progress: Arc<Progress>,
}

/// Batches on their way from the task to the output thread: enough to keep
/// the thread writing while the task waits for a lookup; more would only
/// hold events that the queue before the writer already counts.
const OUTPUT_QUEUE: usize = 4;

/// A batch whose lookups are answered (or given up on), in capture order.
struct Answered {
    events: Vec<(Event, Option<Answer>)>,
    /// The batch's room in the queue, given back once it is written.
    room: OwnedSemaphorePermit,
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
/// deadline has passed, or at once while hurried: waits for the answers
/// here and hands each batch to the output thread, which writes it.
/// Returns what the thread returns: its first write error ends both.
pub(super) async fn write(
    mut rx: mpsc::UnboundedReceiver<(Vec<Pending>, OwnedSemaphorePermit)>,
    out: Box<dyn Write + Send>,
    opts: WriteOpts,
) -> io::Result<Unenriched> {
    let hurry = opts.hurry.clone();
    let waits = Waits {
        timeout: opts.timeout,
        progress: opts.progress.clone(),
    };
    let (to_output, batches) = mpsc::channel(OUTPUT_QUEUE);
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name("pw-output".into())
        .spawn(move || {
            let _ = done.send(write_out(batches, out, opts));
        })?;
    while let Some((batch, room)) = rx.recv().await {
        let mut events = Vec::with_capacity(batch.len());
        for p in batch {
            let answer = answer(p.lookup, p.deadline, &hurry, &waits).await;
            events.push((p.ev, answer));
        }
        // Waits while the thread is a whole channel behind: the push-back
        // that reaches the reader through the queue's room.
        if to_output.send(Answered { events, room }).await.is_err() {
            // The thread ended on an error, which `result` carries.
            break;
        }
    }
    drop(to_output);
    result
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the output thread panicked")))
}

/// The output thread: diagnoses, renders and writes each batch, blocking on
/// its outputs; flushes stdout whenever no batch is waiting.
fn write_out(
    mut batches: mpsc::Receiver<Answered>,
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
    while let Some(Answered { events, room }) = batches.blocking_recv() {
        for (ev, answer) in events {
            let evidence = answer.map(|a| w.evidence(a, &ev));
            let verdict = evidence.as_ref().map(|e| w.verdict(&ev, e));
            w.emit(&ev, evidence.as_ref(), verdict.as_deref())?;
        }
        w.end_batch()?;
        if batches.is_empty() {
            w.out.flush()?;
        }
        // Written (or in the buffer that the next flush writes): room for
        // the reader again.
        drop(room);
    }
    w.out.flush()?;
    Ok(w.unenriched)
}

/// How long the writer waits for lookups.
struct Waits {
    /// `--lookup-timeout`: from the event, and from the moment a lookup
    /// thread takes its lookup.
    timeout: Duration,
    progress: Arc<Progress>,
}

/// The lookup's answer: at once for storms and while hurried, else waited
/// for (see [`wait_answer`]). None: no lookup wanted.
async fn answer(
    lookup: Lookup,
    deadline: tokio::time::Instant,
    hurry: &Hurry,
    waits: &Waits,
) -> Option<Answer> {
    match lookup {
        Lookup::Unwanted => None,
        Lookup::Shed => Some(Answer::Shed),
        // Storms find it ready: no timer for them.
        Lookup::Started(shared) if matches!(&*shared.borrow(), LookupState::Done(_)) => {
            match &*shared.borrow() {
                LookupState::Done(e) => Some(Answer::Found(e.clone())),
                _ => Some(Answer::Failed),
            }
        }
        Lookup::Started(_) if hurry.on.load(Ordering::Relaxed) => Some(Answer::Shed),
        Lookup::Started(mut shared) => Some(wait_answer(&mut shared, deadline, hurry, waits).await),
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
            format == Format::Json || self.opts.journal.is_some() || self.opts.journald.is_some();
        let holders = match evidence {
            Some(e) if wants_json => Some(self.holders_json(e)),
            _ => None,
        };
        // Counted before it is written, whatever the outputs: the metrics
        // follow the failures, not the output's fate.
        if let Some(m) = &self.opts.metrics {
            m.observe(ev, evidence.map(|e| &**e), verdict);
        }
        // The event's NDJSON line, rendered once for every output that
        // takes it: --record's journal (written in place), journald, and
        // stdout with --json.
        let journal_line = output::json::EventLine {
            event: ev,
            holders: holders.as_deref(),
            enriched: evidence.map(|e| !e.shed),
            verdict,
        };
        let mut own_line = Vec::new();
        let line: Option<&[u8]> = if self.opts.journal.is_some() {
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
        if let Some(sink) = &self.opts.journal {
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

/// Waits for a lookup's answer, or until the reader finds the writer a
/// whole queue behind. A lookup has `--lookup-timeout` from the event; past
/// that, it is waited for while the lookup threads get on (see
/// [`Progress`]: a batch taken or answered within the timeout, or a lookup
/// thread running), so a burst's queue is answered in full however long
/// it is, and given up on once they are blocked for the timeout (a lookup
/// that hangs).
async fn wait_answer(
    shared: &mut StormEvidence,
    mut deadline: tokio::time::Instant,
    hurry: &Hurry,
    waits: &Waits,
) -> Answer {
    loop {
        let due = tokio::select! {
            got = shared.wait_for(|s| matches!(s, LookupState::Done(_))) => {
                return match got.as_deref() {
                    Ok(LookupState::Done(e)) => Answer::Found(e.clone()),
                    _ => Answer::Failed,
                };
            }
            () = tokio::time::sleep_until(deadline) => true,
            // A wake-up left from an earlier hurry is not one.
            () = hurry.wake.notified() => {
                if hurry.on.load(Ordering::Relaxed) {
                    return Answer::Shed;
                }
                false
            }
        };
        if due {
            let last = waits.progress.last();
            let since = match &*shared.borrow() {
                LookupState::Running(at) => last.max(*at),
                _ => last,
            };
            let later = tokio::time::Instant::from_std(since + waits.timeout);
            deadline = if later > deadline {
                later
            } else if waits.progress.running() {
                // Working, only slowly (a loaded machine): not hung.
                deadline + waits.timeout
            } else {
                return Answer::TimedOut;
            };
        }
    }
}
