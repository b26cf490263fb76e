//! The kernel side: resolve offsets from the running kernel's BTF, load and
//! attach the eBPF programs, and read their ring buffer into checked events.
//!
//! Nothing here looks at /proc or sock_diag: that is `portwatch_core::holders`.

mod attach;
mod btf;
mod casts;
mod klog;
pub mod life;
mod loader;
mod offsets;
pub mod owners;
mod ring;
mod session;
mod settings;
mod uring;

pub use loader::{Backend, Unsupported};
pub use session::{KernelView, Session, Sweep, TAIL_CAP};
#[cfg(feature = "test-hooks")]
pub use settings::KernelQuirk;
pub use settings::{ArgsSource, BackendChoice, Settings};
