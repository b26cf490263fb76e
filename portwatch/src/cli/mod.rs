//! Command-line interface (clap types only; behaviour lives in the subcommands).

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use portwatch_core::request::{Errno, Proto};

use crate::capture;

mod check;
pub mod values;

pub use check::CheckArgs;

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
    portwatch watch --json --metrics 127.0.0.1:9891   # + Prometheus at /metrics
    portwatch watch -v                       # plus the eBPF programs' own warnings
    portwatch watch --record /var/lib/portwatch  # flight recorder; read it with `portwatch report`

Each failure is followed by who holds the port (process, command line, unit
or container, TCP state), a reason code, a diagnosis and a fix; with --json
they are the keys holders, reason, diagnosis and fix (schema in docs/output.md).

Scripts can wait for the line `portwatch: ready` (with --json: an object with
\"type\":\"ready\") on stderr before starting the server under test.

EXIT STATUS:
    0  stopped by Ctrl-C / SIGTERM, or stdout closed
    1  failed while running
    2  bad command line
    3  this system cannot run it: not root, no BTF, no usable hook";

const RUN_EXAMPLES: &str = "\
EXAMPLES:
    portwatch run -- nginx -c /etc/nginx/test.conf   # a test harness starting a server
    portwatch run --json --output pw.ndjson -- ./deploy.sh
    portwatch run --port 8080 -- make integration-test
    portwatch run --all-errors -- ./server --listen 127.0.0.1:80

CMD runs in a cgroup of its own (cgroup v2), so its children are traced too,
also those that daemonize: under systemd (PID 1) a transient scope unit
portwatch-run-PID.scope that systemd makes, or, where systemd delegated
portwatch's cgroup or is not PID 1, a cgroup portwatch makes under its own;
the line `portwatch: CMD runs in ...` says which, before capture starts.
CMD's stdout and stderr pass through untouched;
portwatch's lines (each failure with holder, diagnosis and fix, then a
summary) go to stderr, or to --output FILE. Ctrl-C, SIGTERM, SIGHUP and
SIGQUIT are forwarded to CMD, which runs in a process group of its own.

EXIT STATUS:
    CMD's own exit status, or 128+N when a signal N ended it
    125  portwatch itself failed (bad command line, not root, no cgroup v2,
         the tracer could not start)
    126  CMD was found but could not be executed
    127  CMD was not found";
const WHO_EXAMPLES: &str = "\
EXAMPLES:
    portwatch who 8080                       # who holds tcp 8080; would 0.0.0.0:8080 bind?
    portwatch who 53/udp                     # a UDP port
    portwatch who 8080 --addr ::             # the IPv6 wildcard, dual stack (v4 and v6)
    portwatch who 8080 --addr 127.0.0.1      # one address
    portwatch who 8080 --netns /run/netns/blue
    portwatch who 8080 --netns 4242          # the network namespace of pid 4242
    portwatch who 8080 --json | jq .sockets
    portwatch who 8080 >/dev/null || echo taken
    portwatch who 8080 --device eth1         # a server bound to eth1 (SO_BINDTODEVICE) or a VRF
    portwatch who 8080 --trial               # each answer by a real bind(), closed at once
    portwatch who 8080 -v --lookup walk      # owners from /proc, not the BPF iterator; say so

Lists every socket on the port in the network namespace (what `ss -tan` /
`ss -uan` show for it, plus bound TCP sockets that never listened, where the
kernel reports them), with its state, addresses, TIME_WAIT time left and
owning processes (pid, comm, uid, systemd unit or container, command line).
Then says whether a new bind() of ADDR:PORT would succeed now: plain, with
SO_REUSEADDR, and with SO_REUSEPORT, and where not, why and what to do.

Each answer comes from the kernel's own conflict rules (inet_bind_conflict,
udp_lib_lport_inuse) applied to the sockets listed: nothing is bound. Where
the answer hangs on whether a holder set SO_REUSEADDR or SO_REUSEPORT (which
sock_diag does not report), portwatch reads them from the holder's socket
itself: a duplicate of its file descriptor (pidfd_getfd, Linux 5.6+, root),
getsockopt, close. That settles every case but one: TIME_WAIT leftovers have
no file descriptor, so with them SO_REUSEADDR / SO_REUSEPORT answer
\"unknown: only if the holder set it too\". Each answer's line ends with what
settled it: `rules`, `rules + holder's options`, `trial bind`.
On kernels before 6.10 sock_diag does not list TCP sockets bound without
listen(); a note says that one may hold the port unseen.

--trial checks each answer by a real bind() instead: a fresh socket with
that option, bound to ADDR:PORT inside the namespace and closed at once,
never listening. It is the kernel's own answer, but a trial that succeeds
holds the port for a few microseconds and can make a server binding it at
that instant fail. The SO_REUSEPORT trial is made under the uid owning the
sockets in the way; with a UDP socket in the way the SO_REUSEADDR /
SO_REUSEPORT answers come from the rules even then (a UDP socket sharing the
port would receive datagrams at once).

Sockets bound to a device (SO_BINDTODEVICE) are in the way only of sockets
bound to no device or to the same one. For TCP, unless
net.ipv4.tcp_l3mdev_accept=1, a socket in a VRF (bound to the VRF or to a
device enslaved to it) and one outside never meet at all. With --device the
new socket is taken to be bound to IFNAME (and is, in trials); every socket is
listed, those another device or VRF keeps apart marked `apart`.

No eBPF, tracefs or BTF is needed; root is needed to name the processes of
other users and to enter another network namespace.

EXIT STATUS:
    0  a plain bind() of ADDR:PORT would succeed now (the port is free)
    1  it would fail: the port is taken (or ADDR cannot be bound here)
    2  bad command line: port 0 or above 65535, unknown protocol, not an IP
       address, no such network namespace path or pid, not a namespace, no
       such --device in it
    3  this system cannot answer: no sock_diag (inet_diag, tcp_diag/udp_diag),
       not permitted (not root), or another error while looking";

const WAIT_EXAMPLES: &str = "\
EXAMPLES:
    portwatch wait 8080 && nginx -c test.conf        # restart only once the old one let go
    portwatch wait 8080 --timeout 10s || exit 1      # give up after 10 s (holders are printed)
    portwatch wait 8080 --reuseaddr                  # leftovers with SO_REUSEADDR are fine
    portwatch wait 8080 --reuseaddr --trial          # TIME_WAIT too, by real binds
    portwatch wait 5353/udp --addr 127.0.0.1
    portwatch wait 8080 --netns /run/netns/blue
    portwatch wait 8080 --device eth1                # a bind to eth1 only (SO_BINDTODEVICE)

Checks at once, then again whenever a socket is destroyed in the network
namespace (the kernel's sock_diag destroy notifications: no eBPF, no
polling), and every 20 ms while only TIME_WAIT leftovers, which expire
without a notification, are in the way. Each check is `portwatch who`'s
answer: the kernel's rules over the sockets on the port, with the holders'
SO_REUSEADDR / SO_REUSEPORT read from their sockets; nothing is bound.
With --reuseaddr, TIME_WAIT leftovers' options cannot be read (they have no
file descriptor): the wait lasts until they expire, unless --trial checks
each time with a real bind() closed at once (see `portwatch who --help`).

EXIT STATUS:
    0  a bind() with those options would succeed now
    1  still taken when --timeout ran out (the holders and diagnosis are printed)
    2  bad command line: port 0 or above 65535, unknown protocol, not an IP
       address, an unparseable duration, no such network namespace
    3  this system cannot answer (not permitted, no sock_diag)";

/// Catch failed bind() and listen() calls in the kernel and show what was
/// asked for, by whom, who holds the port, why it failed, and what to do.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands. `defer`: a subcommand's arguments are built only when it
/// is the one invoked (help, completions and man pages build them all):
/// building all eight was ~12% of a `who` under an emulated CPU, which
/// translates every instruction a run executes afresh (BENCHMARKS.md).
/// The argument structs carry `//` comments, not doc comments: clap makes
/// a struct's doc comment the about of the subcommand it is built into,
/// and once deferred it would replace the variant's.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Stream failed bind()/listen() calls as they happen, with who holds
    /// the port, why it failed and what to do.
    #[command(after_help = WATCH_EXAMPLES)]
    Watch(WatchArgs),
    /// Who holds a port, and would a new bind() of it succeed now (plain,
    /// SO_REUSEADDR, SO_REUSEPORT)? One shot, no eBPF.
    #[command(after_help = WHO_EXAMPLES)]
    Who(WhoArgs),
    /// Wait until a bind() of a port would succeed (the holder let go), then
    /// exit 0; on timeout, say who still holds it. Replaces `sleep 5` and
    /// `fuser -k` in restart scripts and test harnesses.
    #[command(after_help = WAIT_EXAMPLES)]
    Wait(WaitArgs),
    /// Run a command and report the bind()/listen() failures of it and all
    /// its descendants (daemonized ones too), then exit with its status.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Before a deploy: would each of these bindings bind, and if not,
    /// why and who is in the way? Never binds; no eBPF.
    #[command(after_help = check::CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Print a shell completion script for bash, zsh or fish.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
    /// Print the manual page portwatch(8), or a subcommand's, in roff; or
    /// write every page (one per subcommand) into a directory.
    #[command(after_help = MAN_EXAMPLES)]
    Man(ManArgs),
    /// Read what `watch --record` journalled (or saved `watch --json`
    /// output) and tell, per port, who held it, who failed, and why.
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
}

const COMPLETIONS_EXAMPLES: &str = "\
EXAMPLES:
    portwatch completions bash > /etc/bash_completion.d/portwatch
    portwatch completions zsh  > /usr/share/zsh/vendor-completions/_portwatch
    portwatch completions fish > /usr/share/fish/vendor_completions.d/portwatch.fish";

const MAN_EXAMPLES: &str = "\
EXAMPLES:
    portwatch man | man -l -                 # portwatch(8)
    portwatch man who | man -l -             # portwatch-who(8)
    portwatch man --dir /usr/local/share/man/man8   # all pages, one file each

The pages are in section 8 (system administration: portwatch runs as root)
and are generated from this --help, so they say what this binary does.";

// `portwatch man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Print this subcommand's page instead of portwatch(8): `portwatch man
    /// who` prints portwatch-who(8).
    #[arg(value_name = "SUBCOMMAND", value_parser = values::parse_subcommand, conflicts_with = "dir")]
    pub subcommand: Option<String>,

    /// Write every page into DIR (created if missing), one file per page,
    /// and print their paths.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

// `portwatch completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

// `portwatch who`.
#[derive(Debug, Args)]
pub struct WhoArgs {
    /// The port (1-65535), optionally with its protocol: 8080, 8080/tcp, 53/udp.
    #[arg(value_name = "PORT[/tcp|/udp]", value_parser = values::parse_port_proto)]
    pub port: (u16, Proto),

    /// The address a new bind() would ask for. `--addr ::` checks the IPv6
    /// wildcard, dual stack (IPV6_V6ONLY off: it takes IPv4 too).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0", value_parser = values::parse_addr)]
    pub addr: IpAddr,

    /// Look in this network namespace: a path (/run/netns/NAME,
    /// /proc/PID/ns/net) or a PID (its /proc/PID/ns/net). Default: portwatch's own.
    #[arg(long, value_name = "PATH|PID", value_parser = values::parse_netns_target)]
    pub netns: Option<PathBuf>,

    /// Print one JSON object (holder objects have the keys of `watch --json`'s).
    #[arg(long)]
    pub json: bool,

    /// Check each answer with a real bind() of a fresh socket, closed at
    /// once (it holds the port for microseconds). Default: the kernel's
    /// rules and the holders' own options, nothing bound.
    #[arg(long)]
    pub trial: bool,

    /// The default now (no trial bind); accepted for old scripts.
    #[arg(long, hide = true, conflicts_with = "trial")]
    pub no_trial: bool,

    /// The device the new socket would be bound to (SO_BINDTODEVICE), as a
    /// server bound to one interface or VRF binds: sockets bound to other
    /// devices (and, for TCP, in other VRFs) are then not in the way.
    #[arg(long, value_name = "IFNAME", value_parser = values::parse_device)]
    pub device: Option<String>,

    /// How the holders are found.
    #[command(flatten)]
    pub lookup: LookupArgs,

    /// Say on stderr how the holders were found, and why not with the BPF
    /// iterator when it was not used.
    #[arg(short, long)]
    pub verbose: bool,
}

// How sockets' owners are found (`who`, `wait`, `check`, `watch`).
#[derive(Debug, Clone, Copy, Args)]
pub struct LookupArgs {
    /// How to find the processes that hold a socket: `iterator`, a BPF
    /// iterator over every task's files (one pass in the kernel, Linux
    /// 5.8+); `walk`, reading every /proc/PID/fd; `auto` (default), the
    /// iterator where the kernel loads it, else the walk. `iterator` fails
    /// when the kernel refuses it, saying why (for debugging).
    #[arg(long, value_enum, value_name = "HOW", default_value = "auto")]
    pub lookup: capture::owners::LookupChoice,
}

// The capture flags `watch` and `run` share: what to report, the kernel
// side, holder lookups, the output format. A new capture flag goes here,
// once, and both commands have it.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Only these requested ports: comma lists and ranges (80,443,8000-8100); repeatable.
    #[arg(long, value_name = "PORTS", value_parser = values::parse_ports)]
    pub port: Vec<Vec<(u16, u16)>>,

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

    /// Print one JSON object per line (schema in docs/output.md), notices
    /// too, instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Kernel hook to use.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Identical failures (same process, call, errno, requested family,
    /// address and port) within this many milliseconds of the last one
    /// shown are counted, not shown; the next one shown carries the count.
    /// Measured in kernel ticks: exact to within one tick (1-4 ms).
    /// 0 shows every one.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub fold_window: u64,

    /// Kernel-to-user ring buffer size in KiB (a power of two, at least 4).
    /// The default holds about 24,000 events: a burst of distinct failures
    /// that long fits even while the reader waits for a CPU.
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = values::parse_ring_kib)]
    pub ring_size: u32,

    /// Do not look up holders: no kernel record of who binds, no /proc or
    /// sock_diag lookups; events only.
    #[arg(long)]
    pub no_holders: bool,

    /// Longest wait, in milliseconds, for an event's holder lookup before it
    /// is printed with what the kernel recorded alone; past it, a lookup is
    /// still waited for while the lookup threads are working (a burst's
    /// queue), and given up on once they have been blocked this long.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub lookup_timeout: u64,

    /// How the holders are found.
    #[command(flatten)]
    pub lookup: LookupArgs,

    /// Read kernel type information from this BTF file instead of
    /// /sys/kernel/btf/vmlinux (for kernels built without it).
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,

    /// Show the eBPF programs' own diagnostics on stderr (a kernel read
    /// that failed or contradicts the kernel's BTF): -v warnings, -vv debug,
    /// -vvv trace. Off by default: the verifier then drops them, at no cost.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Level of the eBPF programs' diagnostics (overrides -v).
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<KernelLogLevel>,

    /// Hooks for the integration tests, only in a build with the
    /// `test-hooks` feature (the tests' own build): never in the package.
    #[cfg(feature = "test-hooks")]
    #[command(flatten)]
    pub test: TestHooks,
}

// `portwatch watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// What to capture and how (shared with `run`).
    #[command(flatten)]
    pub capture: CaptureArgs,

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

    /// Report successful calls too (implies --all-errors).
    #[arg(long)]
    pub all: bool,

    /// Seconds between reports of lost events on stderr (only when some were lost).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub stats_interval: u64,

    /// Serve Prometheus/OpenMetrics counters at http://ADDR:PORT/metrics
    /// (GET only). A port alone listens on 127.0.0.1; any other address
    /// only when given. Metric names are in docs/metrics.md.
    #[arg(long, value_name = "ADDR:PORT", value_parser = crate::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// --metrics: put this node name in a `node` label on every series
    /// (a DaemonSet passes spec.nodeName); empty: no label.
    #[arg(long, value_name = "NAME", env = "PORTWATCH_NODE", value_parser = crate::metrics::parse_node)]
    pub metrics_node: Option<String>,

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

/// `--backend`: which kernel hook captures the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// fexit when the kernel allows it, otherwise the syscall tracepoints.
    Auto,
    /// fexit on inet_bind/inet6_bind/inet_listen: no cost to other syscalls,
    /// sees io_uring's binds; needs BPF trampolines (x86_64/arm64, 5.5+).
    Fexit,
    /// sys_enter/sys_exit tracepoints of bind and listen: works almost
    /// everywhere; every syscall pays a little while attached.
    Tracepoint,
}

impl From<BackendChoice> for capture::BackendChoice {
    fn from(c: BackendChoice) -> Self {
        match c {
            BackendChoice::Auto => Self::Auto,
            BackendChoice::Fexit => Self::Fexit,
            BackendChoice::Tracepoint => Self::Tracepoint,
        }
    }
}

/// `--tracepoint-args`: how the tracepoint backend learns bind()'s arguments.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ArgsSource {
    /// Saved registers when the kernel allows it, else entry pairing.
    #[default]
    Auto,
    /// Read them at sys_exit from the task's saved registers (5.15+).
    Regs,
    /// Record them at sys_enter and pair by thread.
    Entry,
}

#[cfg(feature = "test-hooks")]
impl From<ArgsSource> for capture::ArgsSource {
    fn from(a: ArgsSource) -> Self {
        match a {
            ArgsSource::Auto => Self::Auto,
            ArgsSource::Regs => Self::Regs,
            ArgsSource::Entry => Self::Entry,
        }
    }
}

/// `--log-level`: aya-log's levels, plus off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum KernelLogLevel {
    /// Nothing (the default).
    Off,
    /// Errors only.
    Error,
    /// Contradictions and failed reads.
    Warn,
    /// Informational.
    Info,
    /// Also expected non-events (a non-inet socket, a holder that moved).
    Debug,
    /// Everything.
    Trace,
}

impl CaptureArgs {
    /// The programs' aya-log level (0 off, 1 error ... 5 trace).
    pub fn kernel_log(&self) -> u8 {
        let level = self.log_level.unwrap_or(match self.verbose {
            0 => KernelLogLevel::Off,
            1 => KernelLogLevel::Warn,
            2 => KernelLogLevel::Debug,
            _ => KernelLogLevel::Trace,
        });
        // Off = 0, Error = 1 ... Trace = 5, as aya_log::Level numbers them.
        level as u8
    }
}

// `portwatch run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to capture and how (shared with `watch`).
    #[command(flatten)]
    pub capture: CaptureArgs,

    /// Write portwatch's lines to FILE (created 0600; an existing symlink
    /// is refused) instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<std::ffi::OsString>,
}

// `portwatch wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The port, with its protocol: 8080, 8080/tcp or 53/udp.
    #[arg(value_name = "PORT[/tcp|/udp]", value_parser = values::parse_port_proto)]
    pub port: (u16, Proto),

    /// The address the bind will ask for (:: is the IPv6 wildcard, dual stack).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0", value_parser = values::parse_addr)]
    pub addr: IpAddr,

    /// Wait for a bind with SO_REUSEADDR to work (what most servers set):
    /// TIME_WAIT leftovers of a socket that had it too are then no obstacle.
    #[arg(long)]
    pub reuseaddr: bool,

    /// Give up after this long (30s, 500ms, 2m); 0 waits forever.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = values::parse_duration)]
    pub timeout: std::time::Duration,

    /// The network namespace: a path (/run/netns/NAME, /proc/PID/ns/net) or a PID.
    #[arg(long, value_name = "PATH|PID", value_parser = values::parse_netns_target)]
    pub netns: Option<PathBuf>,

    /// On timeout, print the holders as one JSON object (`who --json`).
    #[arg(long)]
    pub json: bool,

    /// The device the bind will be bound to (SO_BINDTODEVICE): see `who --device`.
    #[arg(long, value_name = "IFNAME", value_parser = values::parse_device)]
    pub device: Option<String>,

    /// Check with a real bind() of a fresh socket each time, closed at once
    /// (see `who --trial`). Default: the kernel's rules and the holders'
    /// own options, nothing bound.
    #[arg(long)]
    pub trial: bool,

    /// How the holders are found.
    #[command(flatten)]
    pub lookup: LookupArgs,
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

// `portwatch report`.
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
    #[arg(long, value_name = "TIME", value_parser = portwatch_core::report::parse_time)]
    pub since: Option<std::time::SystemTime>,

    /// Nothing after this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = portwatch_core::report::parse_time)]
    pub until: Option<std::time::SystemTime>,

    /// Write the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Also write a self-contained HTML page with a per-port timeline here
    /// (created 0600; a symlink there is refused).
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
}

// The capture options of tests: hidden flags of a build with the
// `test-hooks` feature (the tests' own build); a build without it has
// neither the flags nor the code behind them.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Default, Args)]
pub struct TestHooks {
    /// Delay every holder lookup by this many ms (the holder is gone by the
    /// time user space looks).
    #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
    pub enrich_delay: u64,

    /// Entries of the kernel's fold table (fill it with fewer keys).
    #[arg(long, value_name = "N", hide = true)]
    pub fold_table_size: Option<u32>,

    /// How the tracepoint backend gets bind()'s arguments.
    #[arg(long, value_enum, default_value_t = ArgsSource::Auto, hide = true)]
    pub tracepoint_args: ArgsSource,

    /// Run as on a kernel unlike this one (comma separated): a wrong
    /// offset (the programs must say so under -v rather than report
    /// silently wrong events), no room for one read of the sock's head,
    /// no bpf_rdonly_cast, no raw state tracepoint.
    #[arg(
        long,
        value_name = "QUIRK",
        value_enum,
        value_delimiter = ',',
        hide = true
    )]
    pub test_kernel_quirks: Vec<capture::KernelQuirk>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Building a deferred subcommand (as running it, or its --help, does)
    /// keeps the about its variant's doc gave it: no argument struct may
    /// bring an about of its own (see [`super::Command`]).
    #[test]
    fn deferred_arguments_keep_each_subcommands_about() {
        let about = |c: &clap::Command| {
            (
                c.get_about().map(ToString::to_string),
                c.get_long_about().map(ToString::to_string),
            )
        };
        for sub in Cli::command().get_subcommands() {
            let mut built = sub.clone();
            built.build();
            assert!(sub.get_about().is_some(), "portwatch {}", sub.get_name());
            assert_eq!(about(sub), about(&built), "portwatch {}", sub.get_name());
            assert_eq!(
                sub.get_arguments().count(),
                0,
                "portwatch {}: arguments built before it runs",
                sub.get_name()
            );
            assert!(
                built.get_arguments().count() > 0,
                "portwatch {}",
                sub.get_name()
            );
        }
    }
}
