//! portwatch: catch failed bind()/listen() calls in the kernel, name what
//! holds the port, say why it failed and what to do.
//!
//! The data path, module by module (ARCHITECTURE.md has the picture):

/// Would a bind() succeed now: the kernel's conflict rules, and trial binds.
pub mod bindcheck;
/// Kernel side: BTF offsets, loading the eBPF programs, reading events.
pub mod capture;
/// Command-line types and value parsers (clap).
pub mod cli;
/// One module per subcommand.
pub mod commands;
/// Pure rules: request + evidence -> reason, diagnosis, fix.
pub mod diagnose;
/// Holder side: sock_diag, /proc, network namespaces, sysctls, enrichment.
pub mod holders;
/// Allocator tunables for long runs.
pub mod memory;
/// `watch --metrics`: Prometheus counters and their HTTP endpoint.
pub mod metrics;
/// Human text, the NDJSON schema, notices.
pub mod output;
/// Storm sharing of lookups and the in-order writer.
pub mod pipeline;
/// `report`: journals read back as per-port post-mortems.
pub mod report;
/// What a caller asked for: the request, and the vocabulary of calls.
pub mod request;
