//! `portwatch check`'s arguments (a file of its own: the bindings are
//! parsed by the command, for its one-line errors).

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::values;

/// `--help`'s text after the options.
pub const CHECK_EXAMPLES: &str = "\
EXAMPLES:
    portwatch check 80 443                   # before a deploy: would 0.0.0.0:80 and :443 bind?
    portwatch check 53/udp 127.0.0.1:8080 [::]:9000
    portwatch check [::]:8080                # a server on both families (Go's \":8080\")
    portwatch check 8080 [::]:8080           # two sockets: dual-stack, each in the other's way
    portwatch check 80 --user 1000           # the deploy runs as uid 1000, unprivileged
    portwatch check 8080 --netns /run/netns/blue
    portwatch check 80 443 --json | jq -r 'select(.fails) | .binding'
    portwatch check 80 443 && nginx -c /etc/nginx/new.conf
    portwatch check 80 443 --wait=10s && nginx  # the old one may still be quitting
    portwatch check -f compose.yml && docker-compose up -d
    portwatch check -f compose.yml -f override.yml -p shop --profile debug
    portwatch check --nginx                  # every listen of `nginx -T`
    portwatch check --nginx=/etc/nginx/new.conf --reload
    nginx -s quit; portwatch check --nginx --wait=10s && nginx  # a restart
    portwatch check --unit demo.socket

INPUTS, any number in one call, checked together (two of them wanting one
port is conflict-in-plan):
    BINDING...      plain bindings, as below
    -f FILE...      compose files: each service's published ports, with
                    interpolation (${VAR:-default}, .env, --env-file),
                    merging of -f files, profiles and the project name as
                    compose derives them. portwatch reads the files itself,
                    never through `docker compose config`: it runs nothing
                    of the project's, names FILE:LINE for every port, needs
                    no compose installed, and answers alike on every host.
                    A port published without an address is Docker's two
                    sockets, 0.0.0.0:P and [::]:P (IPV6_V6ONLY); the
                    project's own running containers are \"yours\"
    --nginx[=FILE]  nginx's listen directives, as the sockets nginx makes of
                    them: `nginx -T` (with a timeout, in a network namespace
                    of its own: its test mode binds), or FILE and its
                    includes read directly; the running nginx of the same
                    configuration is taken (a start), or yours (--reload)
    --unit UNIT     a systemd socket unit's ListenStream=/ListenDatagram=
                    (found where systemd finds it, with its drop-ins; or a
                    file); its own active sockets are yours

Each BINDING is PORT, ADDR:PORT or [IPV6]:PORT, with /tcp (the default) or
/udp after it. A bare port means the IPv4 wildcard, 0.0.0.0:PORT, as nginx's
`listen 80` and `portwatch who` take it; a server that binds both families
(Go's `:80`, Docker's `-p 80:80`) is `[::]:PORT` (dual stack: IPV6_V6ONLY
off, the Linux default), or list both entries. Each entry is one socket of
its own, without SO_REUSEADDR or SO_REUSEPORT.

check never binds: a trial bind would hold the port for a moment and could
fail the very deploy it checks. The verdicts come from sock_diag, the
namespace's addresses and sysctls, its NAT tables, and portwatch's model of
the kernel's bind-conflict rules; where the answer hangs on a holder's own
options (SO_REUSEADDR of TIME_WAIT leftovers), it says so.

--wait waits while every failure is a socket that may go away (a holder
that exits, TIME_WAIT that expires): it looks again whenever a socket is
destroyed in the namespace (sock_diag's notifications), every 250 ms while
TIME_WAIT is in the way, and every second in any case. Failures that no
waiting changes (the plan's own, an address, a privilege, a DNAT rule)
answer at once.

VERDICTS (the first that applies, in the kernel's order):
    address-missing   ADDR is not in the namespace (EADDRNOTAVAIL), and
                      ip_nonlocal_bind is off
    privileged        below ip_unprivileged_port_start, with --user (without
                      it, the deploy is taken to run as root)
    taken             a socket of another holder, named as `who` names it
    time-wait         only TIME_WAIT leftovers of closed connections
    dual-stack        an IPv6 wildcard without IPV6_V6ONLY and an IPv4 bind
                      (a holder's, or two entries of the plan)
    steered           no socket, but a DNAT rule sends the port elsewhere
    conflict-in-plan  two entries of the plan want the same port
    ephemeral-risk    free now, but in ip_local_port_range and not in
                      ip_local_reserved_ports
    yours             held by what the deploy itself replaces: its compose
                      project's containers, its socket unit, its running
                      nginx with --reload (a second instance would fail)
    free              nothing holds or steers it

EXIT STATUS:
    0  every binding is free, yours, or only at risk (ephemeral-risk)
    1  a binding would fail: taken, time-wait, dual-stack, steered,
       conflict-in-plan, address-missing, privileged (with --strict, also
       ephemeral-risk); with --wait, still so when TIMEOUT ran out
    2  bad input: a binding that does not parse, no such network
       namespace path or pid; a file that cannot be read or parsed
       (FILE:LINE:COL: what is wrong), an unset ${VAR:?}
    3  this system cannot answer: no sock_diag (inet_diag, tcp_diag/udp_diag),
       not permitted (not root), or another error while looking";

// `portwatch check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// What the deploy will bind: PORT, ADDR:PORT or [IPV6]:PORT, each
    /// with an optional /tcp (default) or /udp. A bare port is 0.0.0.0:PORT.
    #[arg(value_name = "BINDING")]
    pub bindings: Vec<String>,

    /// How the holders are found.
    #[command(flatten)]
    pub lookup: super::LookupArgs,

    /// A compose file: every published port of its services (repeat to
    /// merge, as compose does).
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Vec<PathBuf>,

    /// The compose project's name (default: COMPOSE_PROJECT_NAME, the
    /// file's `name:`, else its directory's name).
    #[arg(short = 'p', long, value_name = "NAME", requires = "file")]
    pub project_name: Option<String>,

    /// The compose project's variables from this file instead of `.env`
    /// in its directory.
    #[arg(long, value_name = "FILE", requires = "file")]
    pub env_file: Option<PathBuf>,

    /// A compose profile to enable (repeat; with COMPOSE_PROFILES).
    #[arg(long, value_name = "NAME", requires = "file")]
    pub profile: Vec<String>,

    /// nginx's configuration: every `listen` of every server block, from
    /// `nginx -T` (run with a timeout), or read from FILE directly.
    #[arg(
        long,
        value_name = "FILE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = ""
    )]
    pub nginx: Option<String>,

    /// With --nginx: the deploy reloads nginx (`nginx -s reload`), which
    /// keeps its sockets: the running nginx of this configuration is
    /// "yours", not in the way.
    #[arg(long, requires = "nginx")]
    pub reload: bool,

    /// A systemd socket unit (`demo.socket`, or its file): every
    /// ListenStream= and ListenDatagram= (repeat for more).
    #[arg(long, value_name = "UNIT|FILE")]
    pub unit: Vec<String>,

    /// Look in this network namespace: a path (/run/netns/NAME,
    /// /proc/PID/ns/net) or a PID (its /proc/PID/ns/net). Default: portwatch's own.
    #[arg(long, value_name = "PATH|PID", value_parser = values::parse_netns_target)]
    pub netns: Option<PathBuf>,

    /// The deploy binds as this user (uid or name) without
    /// CAP_NET_BIND_SERVICE: ports below ip_unprivileged_port_start fail.
    /// Default: root.
    #[arg(long, value_name = "UID", value_parser = values::parse_uid)]
    pub user: Option<u32>,

    /// Exit 1 on risks too (ephemeral-risk), not only on bindings that
    /// would fail now.
    #[arg(long)]
    pub strict: bool,

    /// Print one JSON object per binding, one per line.
    #[arg(long)]
    pub json: bool,

    /// While the only failures are sockets that may go away (taken,
    /// time-wait, dual-stack by a holder), wait for them, up to TIMEOUT
    /// (30s, 2m; without it, or 0: no limit); then answer as without it.
    #[arg(
        long,
        value_name = "TIMEOUT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "0",
        value_parser = values::parse_duration
    )]
    pub wait: Option<Duration>,
}
