//! Command-line interface (clap types only; behaviour lives in the subcommands).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    capture::{ArgsSource, BackendChoice},
    request::Errno,
};

pub mod values;

const WATCH_EXAMPLES: &str = "\
EXAMPLES:
    portwatch watch                          # every EADDRINUSE on the machine, live
    portwatch watch --port 80,443,8000-8100  # only these requested ports
    portwatch watch --comm nginx --json      # NDJSON for jq or a log file
    portwatch watch --errno EADDRINUSE,EACCES,EADDRNOTAVAIL
    portwatch watch --all-errors --pid 4242  # any failure of one process
    portwatch watch --all                    # successes too, like bcc's bindsnoop
    portwatch watch --netns /run/netns/blue  # one network namespace (container)
    portwatch watch --no-holders             # events only: no holder lookups
    portwatch watch --record /var/lib/portwatch  # flight recorder; read it with `portwatch report`

Each failure is followed by who holds the port (process, command line, unit
or container, TCP state), a reason code, a diagnosis and a fix; with --json
they are the keys holders, reason, diagnosis and fix (schema in the README).

Scripts can wait for the line `portwatch: ready` (with --json: an object with
\"type\":\"ready\") on stderr before starting the server under test.

EXIT STATUS:
    0  stopped by Ctrl-C / SIGTERM, or stdout closed
    1  failed while running
    2  bad command line
    3  this system cannot run it: not root, no BTF, no usable hook";

/// Catch failed bind() and listen() calls in the kernel and show what was
/// asked for, by whom, who holds the port, why it failed, and what to do.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream failed bind()/listen() calls as they happen, with who holds
    /// the port, why it failed and what to do.
    #[command(after_help = WATCH_EXAMPLES)]
    Watch(WatchArgs),
    /// Read what `watch --record` journalled (or saved `watch --json`
    /// output) and tell, per port, who held it, who failed, and why.
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
}

/// `portwatch watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only these requested ports: comma lists and ranges (80,443,8000-8100); repeatable.
    #[arg(long, value_name = "PORTS", value_parser = values::parse_ports)]
    pub port: Vec<Vec<(u16, u16)>>,

    /// Only these processes (PIDs, comma separated); repeatable.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,

    /// Only these users (numeric uids or names, comma separated); repeatable.
    #[arg(long, value_name = "UID", value_delimiter = ',', value_parser = values::parse_uid)]
    pub uid: Vec<u32>,

    /// Only processes in this cgroup v2: a path (absolute, or relative to the
    /// cgroup2 mount) or a cgroup id; repeatable.
    #[arg(long, value_name = "CGROUP", value_parser = values::parse_cgroup)]
    pub cgroup: Vec<u64>,

    /// Only threads with this comm (at most 15 bytes, as the kernel keeps it); repeatable.
    #[arg(long, value_name = "COMM", value_delimiter = ',', value_parser = values::parse_comm)]
    pub comm: Vec<[u8; 16]>,

    /// Only sockets in this network namespace: a path such as
    /// /run/netns/NAME or /proc/PID/ns/net, or its inode number; repeatable.
    #[arg(long, value_name = "NETNS", value_parser = values::parse_netns)]
    pub netns: Vec<u32>,

    /// Errors to report, by name or number (comma separated).
    #[arg(
        long,
        value_name = "ERRNO",
        value_delimiter = ',',
        default_value = "EADDRINUSE",
        value_parser = values::parse_errno,
        conflicts_with = "all_errors"
    )]
    pub errno: Vec<Errno>,

    /// Report every failing errno, not only --errno's.
    #[arg(long)]
    pub all_errors: bool,

    /// Report successful calls too (implies --all-errors).
    #[arg(long)]
    pub all: bool,

    /// Print one JSON object per line (schema in the README) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Kernel hook to use.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Identical failures (same process, call, errno, requested family,
    /// address and port) within this many milliseconds of the last one
    /// shown are counted, not shown; the next one shown carries the count.
    /// 0 shows every one.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub fold_window: u64,

    /// Kernel-to-user ring buffer size in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 1024, value_parser = values::parse_ring_kib)]
    pub ring_size: u32,

    /// Seconds between reports of lost events on stderr (only when some were lost).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub stats_interval: u64,

    /// Do not look up holders: no kernel record of who binds, no /proc or
    /// sock_diag lookups; events only.
    #[arg(long)]
    pub no_holders: bool,

    /// Longest wait, in milliseconds, for an event's holder lookup before it
    /// is printed with what the kernel recorded alone.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub lookup_timeout: u64,

    /// Delay every holder lookup by this many ms (for tests: the holder is
    /// gone by the time userspace looks).
    #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
    pub enrich_delay: u64,

    /// How the tracepoint backend gets bind()'s arguments (for tests).
    #[arg(long, value_enum, default_value_t = ArgsSource::Auto, hide = true)]
    pub tracepoint_args: ArgsSource,

    /// Read kernel type information from this BTF file instead of
    /// /sys/kernel/btf/vmlinux (for kernels built without it).
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,

    /// Also append every event, and the life of the ports that failed (or
    /// that --port names), to a rotated NDJSON journal in DIR (created 0700;
    /// files 0600; symlinks refused). Read it with `portwatch report DIR`.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,

    /// --record: start a new journal file past this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64, requires = "record", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_size: u64,

    /// --record: keep at most this many journal files (the oldest go first).
    #[arg(long, value_name = "N", default_value_t = 8, requires = "record", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_files: u32,
}

const REPORT_EXAMPLES: &str = "\
EXAMPLES:
    portwatch report /var/lib/portwatch                 # every rotated journal file, in order
    portwatch report /var/lib/portwatch --port 8080 --since 2026-11-24T02:55:00Z --until 2026-11-24T03:10:00Z
    portwatch report /var/lib/portwatch --since 2h      # the last two hours
    portwatch report events.ndjson --json | jq .ports   # saved `watch --json` output, as JSON
    portwatch report /var/lib/portwatch --html restart.html   # one self-contained page

Per port: a timeline of who listened (from when to when), who failed (with
the reason), when the listener closed, TIME_WAIT leftovers, and the restart
patterns recognised (overlap, TIME_WAIT without SO_REUSEADDR, a stray
process, the same failure across restarts, ephemeral-port exhaustion), with
gaps measured between recorded events. Then failures by port, command and
reason. Corrupt and truncated lines are skipped and counted on stderr.

EXIT STATUS:
    0  report written (even when lines were skipped)
    1  a PATH cannot be read, or the report cannot be written
    2  bad command line";

/// `portwatch report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Journal files, journal directories (rotated files read in order), or
    /// saved `watch --json` output.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,

    /// Only these ports (comma separated); repeatable.
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub port: Vec<u16>,

    /// Nothing before this time: RFC 3339 (2026-11-24T03:00:00Z) or a
    /// duration before now (90m, 2h).
    #[arg(long, value_name = "TIME", value_parser = crate::report::parse_time)]
    pub since: Option<std::time::SystemTime>,

    /// Nothing after this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = crate::report::parse_time)]
    pub until: Option<std::time::SystemTime>,

    /// Write the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Also write a self-contained HTML page with a per-port timeline here
    /// (created 0600; a symlink there is refused).
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
}
