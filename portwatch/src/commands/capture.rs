//! What `watch` and `run` share: a capture from the loaded programs to the
//! exit summary. Both read [`CaptureArgs`], load the kernel side, start
//! holder lookups, say how capture runs, start the pipeline that prints the
//! events, pump the ring buffer into it, and at the end account for every
//! matched call. They differ only in what they filter on, where the events
//! go and when they stop.

use std::{
    io::{self, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use portwatch_core::{
    event::Event,
    fold::Finish,
    holders::Enricher,
    journal::Sink,
    output::{journald::Journald, notice::Unenriched, Format, Notice, Notices, Summary},
};

use crate::{
    capture::{Session, Settings},
    cli::CaptureArgs,
    metrics::Metrics,
    pipeline::{self, Pipeline, PipelineOptions, Writer, BATCH},
};

impl CaptureArgs {
    /// How events and notices are printed.
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            Format::Human
        }
    }

    /// The settings these flags make; each command adds its own filters.
    pub fn settings(&self) -> Settings {
        let settings = Settings {
            errnos: self.errno.clone(),
            all_errors: self.all_errors,
            ports: self.port.iter().flatten().copied().collect(),
            fold_window_ns: self.fold_window.saturating_mul(1_000_000),
            ring_bytes: self.ring_size.saturating_mul(1024),
            btf: self.btf.clone(),
            track_holders: !self.no_holders,
            kernel_log: self.kernel_log(),
            ..Settings::default()
        };
        #[cfg(feature = "test-hooks")]
        let settings = Settings {
            args_source: self.test.tracepoint_args.into(),
            fold_entries: self.test.fold_table_size,
            kernel_quirks: self.test.test_kernel_quirks.clone(),
            ..settings
        };
        settings
    }

    #[cfg(feature = "test-hooks")]
    fn lookup_delay(&self) -> pipeline::LookupDelay {
        Duration::from_millis(self.test.enrich_delay)
    }

    #[cfg(not(feature = "test-hooks"))]
    fn lookup_delay(&self) -> pipeline::LookupDelay {}
}

/// The kernel side loaded and holder lookups warming up; the pipeline not
/// started yet (`watch` takes what it needs from the session first).
pub struct Loaded {
    /// The loaded, attached programs.
    pub session: Session,
    enricher: Option<Arc<Enricher>>,
    format: Format,
    lookup_timeout: Duration,
    lookup_delay: pipeline::LookupDelay,
    started: Instant,
}

/// Loads and attaches the programs for `settings`; `started` is when the
/// command started (for the ready notice and the summary).
pub fn load(args: &CaptureArgs, settings: &Settings, started: Instant) -> Result<Loaded> {
    let session = Session::start(settings, args.backend.into())?;
    if !args.no_holders {
        // `watch` keeps the iterator loaded and runs it once per full scan.
        crate::capture::owners::install(args.lookup.lookup).map_err(anyhow::Error::msg)?;
    }
    let enricher = (!args.no_holders).then(|| Arc::new(Enricher::new(session.bound_inactive_dump)));
    if let Some(e) = &enricher {
        let e = e.clone();
        // The first failures should not pay for walking /proc.
        tokio::task::spawn_blocking(move || e.warm());
    }
    Ok(Loaded {
        session,
        enricher,
        format: args.format(),
        lookup_timeout: Duration::from_millis(args.lookup_timeout),
        lookup_delay: args.lookup_delay(),
        started,
    })
}

/// Where events go besides the output: `watch`'s journal, journald and
/// metrics; `run` has none.
#[derive(Default)]
pub struct Sinks {
    /// `--record`'s journal.
    pub journal: Option<Sink>,
    /// journald's structured entries, when stdout is the journal.
    pub journald: Option<Journald>,
    /// `--metrics`' counters.
    pub metrics: Option<Metrics>,
}

impl Loaded {
    /// Says how capture runs: a mount made, the backend and why, what is
    /// degraded.
    pub fn announce(&self, notices: &Notices) {
        let session = &self.session;
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

    /// Starts the pipeline writing events to `out` (and `sinks`).
    pub fn start(self, out: Box<dyn Write + Send>, sinks: Sinks) -> (Capture, Writer) {
        let (pipeline, writing) = Pipeline::start_observed(
            PipelineOptions {
                enricher: self.enricher,
                format: self.format,
                timeout: self.lookup_timeout,
                delay: self.lookup_delay,
                journal: sinks.journal,
                journald: sinks.journald,
            },
            out,
            sinks.metrics,
        );
        let capture = Capture {
            session: self.session,
            pipeline,
            batch: Vec::with_capacity(BATCH),
            started: self.started,
        };
        (capture, writing)
    }
}

/// A running capture: the session's events flow into the pipeline.
pub struct Capture {
    /// The loaded, attached programs.
    pub session: Session,
    pipeline: Pipeline,
    batch: Vec<Event>,
    started: Instant,
}

/// How a capture ended.
pub struct Ended {
    /// The kernel's and the reader's final account.
    pub finish: Finish,
    /// What the writer wrote without a lookup's answer.
    pub unenriched: Unenriched,
    started: Instant,
}

impl Capture {
    /// Says capture is on: scripts can start what they want watched.
    pub fn ready(&self, notices: &Notices) {
        notices.say(&Notice::Ready {
            backend: Some(self.session.backend.name().into()),
            startup_ms: self.started.elapsed().as_millis() as u64,
        });
    }

    /// Waits for events and hands one batch to the pipeline. Cancel-safe
    /// (see [`Session::read`]): for `select!` loops.
    pub async fn pump(&mut self) -> io::Result<()> {
        self.session.read(&mut self.batch, BATCH).await?;
        self.pipeline.submit(&mut self.batch).await;
        Ok(())
    }

    /// Keeps pumping for `grace`: events of a moment ago may still be on
    /// their way.
    pub async fn pump_for(&mut self, grace: Duration) -> io::Result<()> {
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return Ok(()),
                read = self.pump() => read?,
            }
        }
    }

    /// Detaches the programs, writes what was still in flight and waits
    /// for the writer (`written`: its result, when the caller saw it end),
    /// then says the folded repeats nobody saw.
    pub async fn end(
        mut self,
        writing: Writer,
        written: Option<Result<io::Result<Unenriched>, tokio::task::JoinError>>,
        notices: &Notices,
    ) -> Result<Ended> {
        let unenriched = pipeline::wind_down(
            &mut self.session,
            self.pipeline,
            &mut self.batch,
            writing,
            written,
        )
        .await?;
        let finish = self.session.finish();
        for repeat in &finish.repeats {
            notices.say(&Notice::Repeat(repeat.clone()));
        }
        Ok(Ended {
            finish,
            unenriched,
            started: self.started,
        })
    }
}

impl Ended {
    /// The exit summary: every matched call accounted for.
    pub fn summarise(&self, notices: &Notices) {
        notices.say(&Notice::Summary(Summary::new(
            self.started.elapsed().as_secs_f64(),
            &self.finish,
            self.unenriched,
        )));
    }
}
