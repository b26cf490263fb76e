//! portwatch: catch failed bind()/listen() calls in the kernel, name what
//! holds the port, say why it failed and what to do.
//!
//! The data path, module by module (ARCHITECTURE.md has the picture):

/// Kernel side: BTF offsets, loading the eBPF programs, reading events.
pub mod capture;
/// Command-line types and value parsers (clap).
pub mod cli;
/// One module per subcommand.
pub mod commands;
/// Allocator tunables for long runs.
pub mod memory;
/// `watch --metrics`: Prometheus counters and their HTTP endpoint.
pub mod metrics;
/// The host's PID namespace, or a one-line refusal.
pub mod pidns;
/// Storm sharing of lookups and the in-order writer.
pub mod pipeline;
