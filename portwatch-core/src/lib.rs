//! portwatch's core: everything that needs no eBPF. It builds and tests on
//! stable Rust without bpf-linker or aya; the `portwatch` crate adds the
//! kernel side (capture), the commands and the binary.
//!
//! In data-path order (ARCHITECTURE.md has the picture):

/// Would a bind() succeed now: the kernel's conflict rules, and trial binds.
pub mod bindcheck;
/// This process's effective capabilities.
pub mod caps;
/// The kernel's boot clock mapped to wall time.
pub mod clock;
/// A command line's flags, as /proc gives it.
pub mod cmdline;
/// Pure rules: request + evidence -> reason, diagnosis, fix.
pub mod diagnose;
/// The verdict engine: a batch of binds about to be made -> holders,
/// per-option answers, verdicts (`who`, `wait`, `check`).
pub mod engine;
/// One failed call as decoded from the kernel, and the holder record the
/// kernel took beside it.
pub mod event;
/// The account of failures folded in the kernel.
pub mod fold;
/// Holder side: sock_diag, /proc, network namespaces, sysctls, containers,
/// systemd, enrichment.
pub mod holders;
/// The flight recorder of `watch --record`: rotated NDJSON journals.
pub mod journal;
/// Human text, the NDJSON schema, notices.
pub mod output;
/// `check`: a verdict per binding a deploy is about to make, without
/// binding (the engine's rules, the plan, the namespace).
pub mod preflight;
/// `report`: journals read back as per-port post-mortems.
pub mod report;
/// What a caller asked for: the request, and the vocabulary of calls.
pub mod request;
/// What is never stopped nor killed to free a port, and what is said instead.
pub mod safety;
/// Programs portwatch runs for an answer, each with a deadline.
pub mod subprocess;
/// How times are written: RFC 3339 timestamps, durations for people.
pub mod time;
/// Which commands a fix may name on this host.
pub mod tools;
