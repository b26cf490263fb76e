//! `watch --metrics`: Prometheus/OpenMetrics counters of failed binds.
//!
//! The writer task counts each event as it is written ([`Metrics::observe`]);
//! the kernel's own counters (sent, folded, lost) and the failures folded in
//! the kernel but not yet carried by an event are read when Prometheus
//! scrapes ([`Metrics::render`]), through a second handle on the maps
//! ([`KernelView`]), so a counter equals the failures made to within one
//! scrape even when a storm is folded in the kernel and nothing reaches
//! user space. Nothing here runs on the ring buffer's reader: a scrape,
//! however slow, never holds up capture.
//!
//! Series are bounded whatever the traffic: no pid, address or command line
//! is ever a label; ports get their own series only for `--port`'s ports or
//! the first [`PORT_SERIES`] seen (the rest are `port="other"`); failure
//! label sets stop at [`FAILURE_SERIES`], the rest go under `"other"` values.

mod collector;
mod endpoint;
mod http;
mod labels;

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use portwatch_common::FoldKey;
use portwatch_core::{diagnose::Verdict, event::Event, fold::fold_key, holders::Evidence};
use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{exponential_buckets, Histogram},
        info::Info,
    },
    registry::Registry,
};

use self::{
    collector::KernelCollector,
    labels::{holder_kind, BuildLabels, MetricLabels, PortLabels, Ports, ResultLabels},
};
pub use self::{
    endpoint::{bind, parse_addr},
    http::serve,
    labels::{parse_node, FailureLabels},
};
use crate::capture::KernelView;

/// Ports with a series of their own when `--port` does not name them.
pub const PORT_SERIES: usize = 64;

/// Label sets of `portwatch_bind_failures_total` before new ones are counted
/// under `"other"`: with the port series and the fixed ones, a host stays
/// under 300 series whatever happens (docs/metrics.md adds them up).
pub const FAILURE_SERIES: usize = 200;

/// Series one `watch` can export at most: ports (64 + other), failure label
/// sets (200 + other), labels folded (2), events (3), fold table full (1),
/// lookups (3), the lookup histogram (10 buckets + +Inf, sum, count: 13),
/// timeouts (1), shed (1), build info (1). docs/metrics.md shows the sum.
#[cfg(test)]
const SERIES_BOUND: usize = PORT_SERIES + 1 + FAILURE_SERIES + 1 + 2 + 3 + 1 + 3 + 13 + 1 + 1 + 1;

/// Streams (fold keys) remembered to attribute kernel-folded failures; the
/// kernel's fold table has as many entries.
const STREAMS: usize = 16384;

/// Of the streams still owed repeats when [`STREAMS`] is reached, those
/// whose last event is older than this many events are forgotten: under
/// process churn most owed streams belong to processes that exited, whose
/// next event never comes to pay the debt back, and keeping them all made
/// the map grow with every process that ever failed.
const OWED_FOR: u64 = STREAMS as u64 / 2;

/// Reason label of a failure printed without a diagnosis (`--no-holders`).
const NOT_DIAGNOSED: &str = "not_diagnosed";

/// One stream of identical failures (a kernel fold key): where its folded
/// failures are counted, and how many of them a scrape already counted.
struct Stream {
    failure: FailureLabels,
    port: PortLabels,
    /// Counted by a scrape from the kernel's pending count, not yet carried
    /// by an event; the next events of the stream pay it back.
    credited: u64,
    /// Counted when a fold-table sweep moved the stream's pending count to
    /// user space (the next event carries it); paid back like `credited`.
    swept: u64,
    /// Events of the stream written so far (a scrape skips a stream whose
    /// event went by while it read the kernel).
    seq: u64,
    /// [`State::events`] at the stream's last event: its age, for eviction.
    used: u64,
}

struct State {
    /// Sweeps seen (a scrape that raced one skips its kernel reading).
    sweeps: u64,
    ports: Ports,
    streams: HashMap<FoldKey, Stream>,
    /// Events observed: the clock [`Stream::used`] is read against.
    events: u64,
    /// Failure label sets in use, and those counted under "other".
    failure_sets: HashSet<FailureLabels>,
    failure_sets_as_other: HashSet<FailureLabels>,
}

struct Inner {
    registry: Registry,
    failures: FailureCounters,
    lookups: LookupCounters,
    state: Mutex<State>,
    kernel: Arc<Mutex<Option<KernelView>>>,
}

/// What `watch` knows before the first event: which series start at 0,
/// and the labels every series carries.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// `--port`'s ports, expanded (empty: any port).
    pub ports: Vec<u16>,
    /// `--metrics-node`: the `node` label of every series (None: no label;
    /// a host's scrape target already names it).
    pub node: Option<String>,
}

/// The metrics of one `watch`; cheap to clone (one shared registry).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the metrics down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The failure counters: by label set, by port, and the label values
/// counted under "other" to keep both bounded.
struct FailureCounters {
    by_labels: Family<FailureLabels, Counter>,
    by_port: Family<PortLabels, Counter>,
    labels_as_other: Family<MetricLabels, Counter>,
}

impl FailureCounters {
    /// Registered, with the series whose labels are always known at 0.
    /// Failure label sets appear with their first failure: with the holder's
    /// kind they are too many to start (the alert rules allow for it).
    fn register(registry: &mut Registry) -> Self {
        let counters = Self {
            by_labels: Family::default(),
            by_port: Family::default(),
            labels_as_other: Family::default(),
        };
        registry.register(
            "portwatch_bind_failures",
            "Failed bind()/listen() calls, including identical ones folded in the kernel, by call, errno, protocol, address family, diagnosis reason (not_diagnosed without holder lookups) and kind of holder (pod, container, unit, process, kernel, none, unknown).",
            counters.by_labels.clone(),
        );
        registry.register(
            "portwatch_port_failures",
            "Failed bind()/listen() calls by requested port: --port's ports or the first 64 seen; the rest under port=\"other\".",
            counters.by_port.clone(),
        );
        // "folded" in the name is older than the word's one meaning here
        // (identical failures counted in the kernel): a new name would
        // break dashboards and alerts.
        registry.register(
            "portwatch_labels_folded",
            "Distinct label values counted under \"other\" to bound the number of series, by metric.",
            counters.labels_as_other.clone(),
        );
        counters
            .by_labels
            .get_or_create(&FailureLabels::other())
            .inc_by(0);
        counters
            .by_port
            .get_or_create(&PortLabels {
                port: "other".into(),
            })
            .inc_by(0);
        for metric in ["bind_failures", "port_failures"] {
            counters
                .labels_as_other
                .get_or_create(&MetricLabels { metric })
                .inc_by(0);
        }
        counters
    }

    /// Starts the series of `--port`'s ports at 0 (when they are few
    /// enough to have their own); the ports with a series.
    fn start_ports(&self, known: &[u16]) -> Ports {
        let ports = Ports::new(known);
        for port in ports.named() {
            self.by_port
                .get_or_create(&PortLabels {
                    port: port.to_string(),
                })
                .inc_by(0);
        }
        ports
    }
}

/// The holder lookups: how many by result, how long, and the events
/// printed without one.
struct LookupCounters {
    results: Family<ResultLabels, Counter>,
    seconds: Histogram,
    timeouts: Counter,
    shed: Counter,
}

impl LookupCounters {
    /// Registered, every result at 0.
    fn register(registry: &mut Registry) -> Self {
        let counters = Self {
            results: Family::default(),
            seconds: Histogram::new(exponential_buckets(0.0005, 2.5, 10)),
            timeouts: Counter::default(),
            shed: Counter::default(),
        };
        registry.register(
            "portwatch_holder_lookups",
            "Holder lookups (sock_diag + /proc; one per storm) by result: found a holder, found none, or blind (could not look).",
            counters.results.clone(),
        );
        registry.register_with_unit(
            "portwatch_holder_lookup_duration",
            "Time one holder lookup took.",
            prometheus_client::registry::Unit::Seconds,
            counters.seconds.clone(),
        );
        registry.register(
            "portwatch_holder_lookup_timeouts",
            "Events printed without their holders because the lookup took longer than --lookup-timeout.",
            counters.timeouts.clone(),
        );
        registry.register(
            "portwatch_holder_lookups_shed",
            "Events printed with the kernel's record of the holder alone because failures came faster than holder lookups.",
            counters.shed.clone(),
        );
        for result in ["found", "none", "blind"] {
            counters
                .results
                .get_or_create(&ResultLabels { result })
                .inc_by(0);
        }
        counters
    }
}

impl Metrics {
    /// The registry of one `watch`. Series whose labels are known now
    /// (always, or from `known`) start at 0, so the first failure is an
    /// increase, not the appearance of a series.
    pub fn new(known: &Known) -> Self {
        // One node label on every series, the kernel's counters included.
        let mut registry = Registry::with_labels(
            known
                .node
                .clone()
                .map(|node| (Cow::Borrowed("node"), Cow::Owned(node)))
                .into_iter(),
        );
        let failures = FailureCounters::register(&mut registry);
        let lookups = LookupCounters::register(&mut registry);
        registry.register(
            "portwatch_build",
            "portwatch's version.",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let kernel = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(KernelCollector(kernel.clone())));
        let state = State {
            sweeps: 0,
            ports: failures.start_ports(&known.ports),
            streams: HashMap::new(),
            events: 0,
            failure_sets: HashSet::new(),
            failure_sets_as_other: HashSet::new(),
        };
        Self(Arc::new(Inner {
            registry,
            failures,
            lookups,
            state: Mutex::new(state),
            kernel,
        }))
    }

    /// From now on scrapes read the kernel's counters and fold table.
    pub fn attach(&self, view: KernelView) {
        *lock(&self.0.kernel) = Some(view);
    }

    /// Counts one event as it is written: itself and the failures folded
    /// into it, less what a scrape already counted from the kernel. The
    /// evidence names the holder's kind; None: not looked up.
    pub fn observe(&self, ev: &Event, evidence: Option<&Evidence>, verdict: Option<&Verdict>) {
        if ev.ret == 0 {
            return;
        }
        let reason = verdict.map_or(NOT_DIAGNOSED, |v| v.reason.as_str());
        let kind = holder_kind(evidence);
        let mut state = lock(&self.0.state);
        let failure = self.failure_labels(&mut state, FailureLabels::of(ev, reason, kind));
        let (port, first) = state.ports.label(ev.port);
        if first {
            self.0
                .failures
                .labels_as_other
                .get_or_create(&MetricLabels {
                    metric: "port_failures",
                })
                .inc();
        }
        state.events += 1;
        let now = state.events;
        if state.streams.len() >= STREAMS {
            // Keep the streams a scrape has counted ahead, they are owed,
            // but only the recent ones: the rest is a debt no event will
            // come to pay (see OWED_FOR).
            state
                .streams
                .retain(|_, s| s.credited + s.swept > 0 && now.saturating_sub(s.used) < OWED_FOR);
        }
        let stream = state.streams.entry(fold_key(ev)).or_insert_with(|| Stream {
            failure: failure.clone(),
            port: PortLabels { port: port.clone() },
            credited: 0,
            swept: 0,
            seq: 0,
            used: now,
        });
        stream.used = now;
        let made = 1 + ev.folded;
        let paid = made.min(stream.credited + stream.swept);
        let from_swept = paid.min(stream.swept);
        stream.swept -= from_swept;
        stream.credited -= paid - from_swept;
        stream.seq += 1;
        // The stream's next folded failures count under the latest labels.
        stream.failure = failure.clone();
        stream.port = PortLabels { port: port.clone() };
        drop(state);
        self.0
            .failures
            .by_labels
            .get_or_create(&failure)
            .inc_by(made - paid);
        self.0
            .failures
            .by_port
            .get_or_create(&PortLabels { port })
            .inc_by(made - paid);
    }

    fn failure_labels(&self, state: &mut State, labels: FailureLabels) -> FailureLabels {
        if state.failure_sets.contains(&labels) {
            return labels;
        }
        if state.failure_sets.len() < FAILURE_SERIES {
            state.failure_sets.insert(labels.clone());
            return labels;
        }
        if state.failure_sets_as_other.insert(labels) {
            self.0
                .failures
                .labels_as_other
                .get_or_create(&MetricLabels {
                    metric: "bind_failures",
                })
                .inc();
        }
        FailureLabels::other()
    }

    /// Counts one finished holder lookup.
    pub fn lookup(&self, evidence: &Evidence, took: Duration) {
        let result = if !evidence.holders.is_empty() {
            "found"
        } else if evidence.blind.is_some() {
            "blind"
        } else {
            "none"
        };
        self.0
            .lookups
            .results
            .get_or_create(&ResultLabels { result })
            .inc();
        self.0.lookups.seconds.observe(took.as_secs_f64());
    }

    /// Counts an event printed without waiting longer for its lookup.
    pub fn lookup_timed_out(&self) {
        self.0.lookups.timeouts.inc();
    }

    /// Counts an event printed without its lookup because lookups could
    /// not keep up.
    pub fn lookup_shed(&self) {
        self.0.lookups.shed.inc();
    }

    /// Counts the failures folded in the kernel that no event carried yet
    /// (runs on a scrape, off the capture path).
    fn credit_pending(&self) {
        let kernel = lock(&self.0.kernel);
        let Some(view) = kernel.as_ref() else {
            return;
        };
        // Which event each stream was at before the kernel is read: a
        // stream whose event is written meanwhile may have had its pending
        // count moved into that event, so it waits for the next scrape.
        let (before, sweeps): (HashMap<FoldKey, u64>, u64) = {
            let state = lock(&self.0.state);
            let seqs = state.streams.iter().map(|(k, s)| (*k, s.seq)).collect();
            (seqs, state.sweeps)
        };
        let pending = view.pending();
        drop(kernel);
        let mut state = lock(&self.0.state);
        // A sweep meanwhile may have moved what was read out of the kernel:
        // the next scrape counts it.
        if state.sweeps != sweeps {
            return;
        }
        for (key, pending) in pending {
            let Some(stream) = state.streams.get_mut(&key) else {
                // Its first event is still on its way: counted with it.
                continue;
            };
            if before.get(&key) != Some(&stream.seq) || pending <= stream.credited {
                continue;
            }
            let more = pending - stream.credited;
            stream.credited = pending;
            self.0
                .failures
                .by_labels
                .get_or_create(&stream.failure)
                .inc_by(more);
            self.0
                .failures
                .by_port
                .get_or_create(&stream.port)
                .inc_by(more);
        }
    }

    /// Counts the pending failures a fold-table sweep took out of the kernel
    /// (scrapes no longer see them there; the stream's next event carries
    /// them and pays this back).
    pub fn credit_swept(&self, moved: &[(FoldKey, u64)]) {
        let mut state = lock(&self.0.state);
        state.sweeps += 1;
        for (key, pending) in moved {
            let Some(stream) = state.streams.get_mut(key) else {
                // Its first event is still on its way: counted with it.
                continue;
            };
            // A scrape already counted `credited` of them from the kernel.
            let more = pending.saturating_sub(stream.credited);
            stream.credited = stream.credited.saturating_sub(*pending);
            stream.swept += pending;
            let (failure, port) = (stream.failure.clone(), stream.port.clone());
            self.0
                .failures
                .by_labels
                .get_or_create(&failure)
                .inc_by(more);
            self.0.failures.by_port.get_or_create(&port).inc_by(more);
        }
    }

    /// The exposition: OpenMetrics, or the Prometheus text format 0.0.4.
    pub fn render(&self, openmetrics: bool) -> String {
        self.credit_pending();
        let mut out = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.0.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.0.registry)
        };
        // Writing into a String cannot fail; an encoder bug shows as an
        // incomplete page, which Prometheus reports as a failed scrape.
        let _ = encoded;
        out
    }
}

#[cfg(test)]
mod tests {
    use portwatch_core::{
        clock::Clock,
        event::fixtures::{encode, sample},
        request::Errno,
    };

    use super::*;

    /// Churn: every process fails once, its repeats are swept out of the
    /// kernel (owed to an event that never comes: the process exited). The
    /// streams map must not keep them all.
    #[test]
    fn owed_streams_of_exited_processes_are_forgotten() {
        let m = Metrics::new(&Known::default());
        let mut ev = Event::decode(&encode(&sample()), Clock::now()).unwrap();
        ev.folded = 0;
        for pid in 1..=(3 * STREAMS as u32) {
            ev.pid = pid;
            m.observe(&ev, None, None);
            m.credit_swept(&[(fold_key(&ev), 9)]);
        }
        let n = lock(&m.0.state).streams.len();
        assert!(n <= STREAMS, "{n} streams kept");
        // Every failure counted once: 1 shown + 9 swept per process.
        let text = m.render(false);
        let total = 10 * 3 * STREAMS as u64;
        let line = format!(
            "portwatch_port_failures_total{{port=\"{}\"}} {total}",
            ev.port
        );
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }

    #[test]
    fn known_series_start_at_zero() {
        let m = Metrics::new(&Known {
            ports: vec![80, 443],
            node: None,
        });
        let text = m.render(false);
        for line in [
            "portwatch_port_failures_total{port=\"80\"} 0",
            "portwatch_port_failures_total{port=\"other\"} 0",
            "portwatch_bind_failures_total{syscall=\"other\",errno=\"other\",protocol=\"other\",family=\"other\",reason=\"other\",holder_kind=\"other\"} 0",
            "portwatch_events_total{outcome=\"lost\"} 0",
            "portwatch_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains("node="),
            "no --metrics-node, no node label:\n{text}"
        );
    }

    /// The bound docs/metrics.md adds up: every label set of every metric
    /// used at once, the node label on each.
    #[test]
    fn series_stay_under_the_documented_bound() {
        let m = Metrics::new(&Known {
            ports: vec![],
            node: Some("node-1".into()),
        });
        let mut ev = Event::decode(&encode(&sample()), Clock::now()).unwrap();
        for port in 1..=1000u16 {
            ev.port = port;
            ev.pid = u32::from(port);
            // 1000 distinct label sets: the errno varies.
            ev.errno = Some(Errno(i32::from(port)));
            m.observe(&ev, None, None);
        }
        for took in [1, 10, 100, 1000, 10_000] {
            m.lookup(&Evidence::default(), Duration::from_micros(took));
        }
        m.lookup_shed();
        m.lookup_timed_out();
        let text = m.render(false);
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(series.len(), SERIES_BOUND, "{text}");
        assert!(
            series.iter().all(|l| l.contains("node=\"node-1\"")),
            "every series carries the node:\n{text}"
        );
    }
}
