//! The kernel's own counters (sent, folded, lost, fold table full), read
//! through [`KernelView`] when Prometheus scrapes.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::counter::ConstCounter,
};

use super::lock;
use crate::capture::KernelView;

/// Reads the kernel's counters at scrape time.
#[derive(Debug)]
pub(super) struct KernelCollector(pub(super) Arc<Mutex<Option<KernelView>>>);

impl std::fmt::Debug for KernelView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelView")
    }
}

/// The label of `portwatch_events_total`: sent, folded or lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Before the programs are loaded every count is 0: still show them.
        let counters = lock(&self.0)
            .as_ref()
            .map(KernelView::counters)
            .unwrap_or_default();
        let events = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "portwatch_events",
            "Calls matched in the kernel, by what became of them: sent to user space as an event, folded into a count (identical failure within --fold-window), or lost (ring buffer full). Read from the kernel at scrape time.",
            None,
            events.metric_type(),
        )?;
        for (outcome, n) in [
            ("sent", counters.sent),
            ("folded", counters.folded),
            ("lost", counters.lost),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&OutcomeLabels { outcome })?)?;
        }
        let full = ConstCounter::new(counters.fold_table_full);
        full.encode(encoder.encode_descriptor(
            "portwatch_fold_table_full",
            "Failures sent unfolded because the kernel's fold table was full.",
            None,
            full.metric_type(),
        )?)?;
        Ok(())
    }
}
