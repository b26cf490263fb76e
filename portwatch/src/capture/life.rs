//! `watch --record`: the kernel's `LIFE` ring buffer (the life of the ports
//! of interest) read into the journal beside the events.

use anyhow::{Context as _, Result};
use portwatch_core::{
    clock::Clock,
    journal::{life_line, Journal, JournalOptions, JournalStats, Sink},
    output::{Notice, Notices},
};

use super::ring::Ring;

/// Reads the kernel's `LIFE` ring buffer into the journal until `stop`
/// fires, then drains what is left.
pub async fn record_life(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    sink: Sink,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use std::hash::{BuildHasher as _, Hasher as _};
    let hide = {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x7077);
        h.finish()
    };
    let Ok(mut ring) = Ring::new(ring) else {
        return;
    };
    let mut clock = None;
    let mut drain = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>| {
        let now = Clock::follow(clock, Clock::now());
        clock = Some(now);
        let (mut chunk, mut lines) = (Vec::new(), 0);
        while let Some(item) = ring.next() {
            if let Some(life) = life_line(&item, now, hide) {
                if serde_json::to_writer(&mut chunk, &life).is_ok() {
                    chunk.push(b'\n');
                    lines += 1;
                }
            }
        }
        if lines > 0 {
            sink.send(chunk, lines);
        }
    };
    loop {
        tokio::select! {
            read = ring.drain_when_ready(|r| (drain(r), true)) => {
                if read.is_err() {
                    return;
                }
            }
            _ = &mut stop => {
                drain(ring.get_mut());
                return;
            }
        }
    }
}

/// A journal and the reader of port life records feeding it (`watch --record`).
pub struct JournalSession {
    journal: Journal,
    life: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl JournalSession {
    /// Starts recording into `opts.dir`; `life` is the kernel's `LIFE` ring
    /// buffer when port lives are recorded (holders tracked).
    pub fn start(
        opts: JournalOptions,
        notices: Notices,
        life: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    ) -> Result<Self> {
        let dir = opts.dir.clone();
        let journal =
            Journal::start(opts, notices).with_context(|| format!("--record {}", dir.display()))?;
        let life = life.map(|ring| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (tx, tokio::spawn(record_life(ring, journal.sink(), rx)))
        });
        Ok(Self { journal, life })
    }

    /// A handle for the pipeline's writer.
    pub fn sink(&self) -> Sink {
        self.journal.sink()
    }

    /// Journals `notices` as lines (`{"type":...}`), e.g. the fold tail.
    pub fn notices(&self, notices: impl IntoIterator<Item = Notice>) {
        let (mut chunk, mut lines) = (Vec::new(), 0);
        for n in notices {
            if serde_json::to_writer(&mut chunk, &n).is_ok() {
                chunk.push(b'\n');
                lines += 1;
            }
        }
        if lines > 0 {
            self.sink().send(chunk, lines);
        }
    }

    /// Drains the port life records, writes everything handed over, and
    /// returns the account (the writer's `Sink` must be dropped first).
    pub async fn finish(self) -> JournalStats {
        if let Some((stop, task)) = self.life {
            let _ = stop.send(());
            let _ = task.await;
        }
        tokio::task::spawn_blocking(move || self.journal.finish())
            .await
            .unwrap_or_default()
    }
}
