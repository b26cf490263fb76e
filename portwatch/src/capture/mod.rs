//! The kernel side: resolve offsets from the running kernel's BTF, load and
//! attach the eBPF programs, and read their ring buffer into checked events.
//!
//! Nothing here looks at /proc or sock_diag: that is `crate::holders`.

mod btf;
mod clock;
mod event;
mod klog;
mod loader;
mod offsets;
mod session;
mod uring;

pub use clock::Clock;
pub use event::{DecodeError, Event, KernelRecord, Source};
pub use loader::{ArgsSource, Backend, BackendChoice, Settings, Unsupported};
pub use session::{fold_key, Counters, Finish, KernelView, Repeat, Session, Sweep, TAIL_CAP};

#[cfg(test)]
pub(crate) use event::tests as event_tests;
