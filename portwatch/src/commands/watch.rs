//! `portwatch watch`: load, attach, then stream events until told to stop.

use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use anyhow::Result;
use portwatch_core::{
    journal::JournalOptions,
    output::{journald::Journald, text, Format, Notice, Notices},
};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    time::Interval,
};

use super::capture::{self, Capture, Loaded, Sinks};
use crate::{
    capture::{life::JournalSession, Session, Settings},
    cli::WatchArgs,
    pipeline::Writer,
};

/// How often the fold table is swept of stale entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

fn settings(args: &WatchArgs) -> Settings {
    Settings {
        success: args.all,
        pids: args.pid.clone(),
        uids: args.uid.clone(),
        cgroups: args.cgroup.clone(),
        comms: args.comm.clone(),
        netns: args.netns.clone(),
        record_life: args.record.is_some(),
        ..args.capture.settings()
    }
}

/// Runs `portwatch watch` until SIGINT/SIGTERM or stdout closes.
pub async fn run(args: WatchArgs) -> Result<()> {
    let started = Instant::now();
    let notices = Notices::new(args.capture.format());
    // Bound before loading anything: a busy port is a one-line error now.
    let listener = args.metrics.map(crate::metrics::bind).transpose()?;
    let mut loaded = capture::load(&args.capture, &settings(&args), started)?;
    let metrics = match listener {
        Some(listener) => Some(serve_metrics(listener, &args, &loaded.session)?),
        None => None,
    };
    let mut wake = Wake::new(args.stats_interval).await?;
    loaded.announce(&notices);
    let recording = start_recording(&args, &notices, &mut loaded)?;
    let sinks = Sinks {
        journal: recording.as_ref().map(JournalSession::sink),
        journald: start_output(args.capture.format())?,
        metrics: metrics.clone(),
    };
    let (mut capture, mut writing) = loaded.start(Box::new(io::stdout()), sinks);
    capture.ready(&notices);
    let written = stream(
        &args,
        &notices,
        &mut capture,
        &mut writing,
        &mut wake,
        metrics,
    )
    .await?;
    let ended = capture.end(writing, written, &notices).await?;
    if let Some(recording) = recording {
        // The fold tail goes into the journal too: its failures count.
        recording.notices(ended.finish.repeats.iter().cloned().map(Notice::Repeat));
        notices.say(&Notice::Recorded(recording.finish().await));
    }
    ended.summarise(&notices);
    Ok(())
}

/// `--record`: the journal, with the session's port life records.
fn start_recording(
    args: &WatchArgs,
    notices: &Notices,
    loaded: &mut Loaded,
) -> Result<Option<JournalSession>> {
    let Some(dir) = &args.record else {
        return Ok(None);
    };
    Ok(Some(JournalSession::start(
        JournalOptions {
            dir: dir.clone(),
            max_size: args.max_size.saturating_mul(1 << 20),
            max_files: args.max_files,
        },
        notices.clone(),
        loaded.session.take_life(),
    )?))
}

/// What ended the stream: the writer's result when it ended first (stdout
/// closed), None for a signal.
type Written =
    Option<Result<io::Result<portwatch_core::output::notice::Unenriched>, tokio::task::JoinError>>;

/// Streams events until a signal or until the writer ends; sweeps the fold
/// table and reports lost events on the way.
async fn stream(
    args: &WatchArgs,
    notices: &Notices,
    capture: &mut Capture,
    writing: &mut Writer,
    wake: &mut Wake,
    metrics: Option<crate::metrics::Metrics>,
) -> Result<Written> {
    let mut lost_reported = 0;
    Ok(loop {
        tokio::select! {
            read = capture.pump() => read?,
            // The writer only ends early when stdout fails.
            done = &mut *writing => break Some(done),
            _ = wake.sigint.recv() => break None,
            _ = wake.sigterm.recv() => break None,
            _ = wake.sweeper.tick() => {
                let swept = capture.session.sweep();
                if let Some(m) = &metrics {
                    m.credit_swept(&swept.moved_by_key);
                }
                crate::memory::trim();
            }
            _ = wake.ticker.tick() => {
                let lost = capture.session.counters().lost;
                if lost > lost_reported {
                    notices.say(&Notice::Lost {
                        lost: lost - lost_reported,
                        total_lost: lost,
                        seconds: args.stats_interval,
                    });
                    lost_reported = lost;
                }
            }
        }
    })
}

/// What wakes the main loop besides events: the signals that stop it, and
/// its two timers. Made before `ready`, so a signal after it stops cleanly.
struct Wake {
    sigint: Signal,
    sigterm: Signal,
    /// Every `--stats-interval`: report events the ring buffer lost.
    ticker: Interval,
    /// Stale fold-table entries go once they are older than the window; a
    /// sweep per second keeps up with thousands of new processes a second.
    sweeper: Interval,
}

impl Wake {
    async fn new(stats_interval: u64) -> io::Result<Self> {
        let mut ticker = tokio::time::interval(Duration::from_secs(stats_interval));
        ticker.tick().await;
        let mut sweeper = tokio::time::interval(SWEEP_EVERY);
        sweeper.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweeper.tick().await;
        Ok(Self {
            sigint: signal(SignalKind::interrupt())?,
            sigterm: signal(SignalKind::terminate())?,
            ticker,
            sweeper,
        })
    }
}

/// Starts serving `/metrics` on `listener`, with the kernel's counters.
fn serve_metrics(
    listener: std::net::TcpListener,
    args: &WatchArgs,
    session: &Session,
) -> Result<crate::metrics::Metrics> {
    let m = crate::metrics::Metrics::new(&metrics_known(args));
    m.attach(session.kernel_view()?);
    let served = m.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::metrics::serve(listener, served).await {
            eprintln!("portwatch: the metrics endpoint stopped: {e}");
        }
    });
    Ok(m)
}

/// Where human-readable output goes: journald's fields when stdout is the
/// journal, else a terminal or file, which gets the column header first.
fn start_output(format: Format) -> io::Result<Option<Journald>> {
    let journald = if format == Format::Human {
        Journald::when_stdout_is_journal()
    } else {
        None
    };
    // A column header means nothing between journal entries.
    if format == Format::Human && journald.is_none() {
        let mut out = io::stdout().lock();
        writeln!(out, "{}", text::HEADER)?;
        out.flush()?;
    }
    Ok(journald)
}

/// The series `--metrics` can start at 0 (`--port`'s ports), and its node.
fn metrics_known(args: &WatchArgs) -> crate::metrics::Known {
    let mut ports = Vec::new();
    for &(lo, hi) in args.capture.port.iter().flatten() {
        // A range wider than the series budget gets no fixed series anyway.
        if ports.len() > crate::metrics::PORT_SERIES {
            break;
        }
        ports.extend((lo..=hi).take(crate::metrics::PORT_SERIES + 1));
    }
    ports.sort_unstable();
    ports.dedup();
    crate::metrics::Known {
        ports,
        node: args.metrics_node.clone().filter(|n| !n.is_empty()),
    }
}
