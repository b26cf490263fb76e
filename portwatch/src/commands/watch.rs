//! `portwatch watch`: load, attach, then stream events until told to stop.

use std::{
    io::{self, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use portwatch_core::{
    holders::Enricher,
    journal::JournalOptions,
    output::{journald::Journald, text, Format, Notice, Notices, Summary},
};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    time::Interval,
};

use crate::{
    capture::{life::JournalSession, Session, Settings},
    cli::WatchArgs,
    pipeline::{self, Pipeline, BATCH},
};

/// How often the fold table is swept of stale entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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
        args_source: args.test.tracepoint_args.into(),
        track_holders: !args.no_holders,
        fold_entries: args.test.fold_table_size,
        kernel_log: args.kernel_log(),
        bad_offset: args.test.test_bad_offset.clone(),
        classic_state: args.test.test_classic_state,
        record_life: args.record.is_some(),
    }
}

/// Runs `portwatch watch` until SIGINT/SIGTERM or stdout closes.
pub async fn run(args: WatchArgs) -> Result<()> {
    let started = Instant::now();
    let format = if args.json {
        Format::Json
    } else {
        Format::Human
    };
    let notices = Notices::new(format);
    // Bound before loading anything: a busy port is a one-line error now.
    let listener = args.metrics.map(crate::metrics::bind).transpose()?;
    let mut session = Session::start(&settings(&args), args.backend.into())?;
    let metrics = match listener {
        Some(listener) => Some(serve_metrics(listener, &args, &session)?),
        None => None,
    };
    let mut wake = Wake::new(args.stats_interval).await?;
    let enricher = (!args.no_holders).then(|| Arc::new(Enricher::new(session.bound_inactive_dump)));
    if let Some(e) = &enricher {
        let e = e.clone();
        // The first failures should not pay for walking /proc.
        tokio::task::spawn_blocking(move || e.warm());
    }
    let startup_ms = started.elapsed().as_millis() as u64;
    announce(&notices, &session);
    let journald = start_output(format)?;
    let recording = match &args.record {
        Some(dir) => Some(JournalSession::start(
            JournalOptions {
                dir: dir.clone(),
                max_size: args.max_size.saturating_mul(1 << 20),
                max_files: args.max_files,
            },
            notices.clone(),
            session.take_life(),
        )?),
        None => None,
    };
    let (mut pipeline, mut writing) = Pipeline::start_observed(
        pipeline::PipelineOptions {
            enricher,
            format,
            timeout: Duration::from_millis(args.lookup_timeout),
            delay: Duration::from_millis(args.test.enrich_delay),
            journal: recording.as_ref().map(JournalSession::sink),
            journald,
        },
        Box::new(io::stdout()),
        metrics.clone(),
    );
    notices.say(&Notice::Ready {
        backend: Some(session.backend.name().into()),
        startup_ms,
    });

    let mut batch = Vec::with_capacity(BATCH);
    let mut lost_reported = 0;
    let written = loop {
        tokio::select! {
            read = session.read(&mut batch, BATCH) => {
                read?;
                pipeline.submit(&mut batch).await;
            }
            // The writer only ends early when stdout fails.
            done = &mut writing => break Some(done),
            _ = wake.sigint.recv() => break None,
            _ = wake.sigterm.recv() => break None,
            _ = wake.sweeper.tick() => {
                let swept = session.sweep();
                if let Some(m) = &metrics {
                    m.credit_swept(&swept.moved_by_key);
                }
                crate::memory::trim();
            }
            _ = wake.ticker.tick() => {
                let lost = session.counters().lost;
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
    };

    let unenriched =
        pipeline::wind_down(&mut session, pipeline, &mut batch, writing, written).await?;
    let finish = session.finish();
    for repeat in &finish.repeats {
        notices.say(&Notice::Repeat(repeat.clone()));
    }
    if let Some(recording) = recording {
        // The fold tail goes into the journal too: its failures count.
        recording.notices(finish.repeats.iter().cloned().map(Notice::Repeat));
        notices.say(&Notice::Recorded(recording.finish().await));
    }
    notices.say(&Notice::Summary(Summary::new(
        started.elapsed().as_secs_f64(),
        &finish,
        unenriched,
    )));
    Ok(())
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

/// Says how capture runs: a mount made, the backend and why, what is
/// degraded.
fn announce(notices: &Notices, session: &Session) {
    if let Some(path) = session.mounted_tracefs {
        notices.say(&Notice::Mount {
            fs: "tracefs".into(),
            path: path.into(),
        });
    }
    notices.say(&Notice::Backend {
        backend: session.backend.name().into(),
        why: session.why.clone(),
    });
    for (what, note) in [
        ("port_life", &session.life_note),
        ("io_uring", &session.uring_note),
    ] {
        if let Some(note) = note {
            notices.say(&Notice::Degraded {
                what: what.into(),
                why: note.clone(),
            });
        }
    }
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

/// The series `--metrics` can start at 0: `--port`'s ports, `--errno`'s errnos.
fn metrics_known(args: &WatchArgs) -> crate::metrics::Known {
    let mut ports = Vec::new();
    for &(lo, hi) in args.port.iter().flatten() {
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
        errnos: if args.all_errors || args.all {
            Vec::new()
        } else {
            args.errno.clone()
        },
    }
}
