//! `portwatch check`: a verdict for each binding a deploy is about to
//! make, before it makes them, and without binding anything. The verdict
//! engine answers with trials off (the kernel's rules over what sock_diag
//! lists); this module adds what the plan and the namespace decide on
//! their own: two entries of the plan in each other's way, an address the
//! namespace lacks, a privileged port for an unprivileged deploy, a free
//! port an outgoing connection may take first.
//!
//! The checks run in the kernel's order for bind(): the address
//! (EADDRNOTAVAIL), then the port's privilege (EACCES), then the sockets
//! on it (EADDRINUSE); then what no bind() reports: DNAT rules, the plan's
//! own conflicts, the ephemeral range. The first that applies is the
//! binding's verdict.

pub mod compose;
mod host;
pub mod nginx;
mod parse;
mod plan;
#[cfg(test)]
mod tests;
pub mod unit;

use std::net::{IpAddr, SocketAddr};

pub use host::{reserved, Host, Local};
pub use parse::parse_binding;
pub use plan::{read_input, Entry, InputError, Origin, Ours, Plan, Unchecked, MAX_INPUT};
use serde::{Deserialize, Serialize};

use crate::{
    bindcheck::Variant,
    diagnose::Reason,
    engine::{self, Answer, Batch, JudgeError, Judgement},
    holders::{containers::Publishing, dnat::DnatRule, overlaps, Holder},
    request::{Binding, Family},
};

/// A binding's verdict, worded for whose port it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Nothing holds or steers it.
    Free,
    /// Held by what the deploy itself replaces (its compose project's
    /// containers, its socket unit, its nginx on `--reload`).
    Yours,
    /// A socket of another holder is in the way.
    Taken,
    /// Only TIME_WAIT leftovers of closed connections are in the way.
    TimeWait,
    /// An IPv6 wildcard without IPV6_V6ONLY and an IPv4 bind of the port
    /// overlap (a holder's, or two entries of the plan).
    DualStack,
    /// No socket holds it, but a DNAT rule sends its traffic elsewhere.
    Steered,
    /// Free now, but in ip_local_port_range and not reserved: an outgoing
    /// connection may take it first.
    EphemeralRisk,
    /// Two entries of the plan want the same port and would conflict.
    ConflictInPlan,
    /// The address is not in the network namespace (EADDRNOTAVAIL).
    AddressMissing,
    /// Below ip_unprivileged_port_start, and the deploy runs unprivileged.
    Privileged,
}

impl Category {
    /// The name printed and written in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Category::Free => "free",
            Category::Yours => "yours",
            Category::Taken => "taken",
            Category::TimeWait => "time-wait",
            Category::DualStack => "dual-stack",
            Category::Steered => "steered",
            Category::EphemeralRisk => "ephemeral-risk",
            Category::ConflictInPlan => "conflict-in-plan",
            Category::AddressMissing => "address-missing",
            Category::Privileged => "privileged",
        }
    }

    /// The deploy would fail on this binding (or, steered, bind and not
    /// get its traffic).
    pub const fn fails(self) -> bool {
        !matches!(
            self,
            Category::Free | Category::Yours | Category::EphemeralRisk
        )
    }

    /// It would bind now, but may not at deploy time.
    pub const fn risk(self) -> bool {
        matches!(self, Category::EphemeralRisk)
    }
}

/// The verdict on one binding of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The binding as `ADDR:PORT/PROTO` (`0.0.0.0:80/tcp`, `[::]:53/udp`).
    pub binding: String,
    /// Where the plan has it (`compose.yml:12 service web`).
    pub from: Vec<Origin>,
    /// Its protocol, address and port.
    pub proto: crate::request::Proto,
    /// The address.
    pub addr: IpAddr,
    /// The port.
    pub port: u16,
    /// The verdict.
    pub verdict: Category,
    /// The deploy would fail on it.
    pub fails: bool,
    /// The sockets in its way, named as `who` names them.
    pub holders: Vec<Holder>,
    /// The engine's reason code, when the verdict is the engine's.
    pub reason: Option<Reason>,
    /// One sentence for people.
    pub diagnosis: String,
    /// What to do, when anything is to be done.
    pub fix: Option<String>,
    /// Where the answer hangs on what cannot be seen (a holder's options).
    pub note: Option<String>,
    /// Other entries of the plan in its way (`#2 [::]:80/tcp`).
    pub conflicts_with: Vec<String>,
    /// DNAT rules sending its traffic elsewhere.
    pub dnat: Vec<DnatRule>,
    /// Running containers publishing the port.
    pub published: Vec<Publishing>,
}

impl Outcome {
    fn new(b: &Binding, verdict: Category, diagnosis: String, fix: Option<String>) -> Self {
        Self {
            binding: label(b),
            from: Vec::new(),
            proto: b.proto,
            addr: b.addr,
            port: b.port,
            verdict,
            fails: verdict.fails(),
            holders: Vec::new(),
            reason: None,
            diagnosis,
            fix,
            note: None,
            conflicts_with: Vec::new(),
            dnat: Vec::new(),
            published: Vec::new(),
        }
    }
}

impl Outcome {
    /// It fails because of sockets that may go away on their own (a
    /// holder that exits, TIME_WAIT that expires): what `check --wait`
    /// waits for. Not the plan's own conflicts, addresses, privileges or
    /// DNAT rules, which no waiting changes.
    pub fn may_clear(&self) -> bool {
        matches!(
            self.verdict,
            Category::Taken | Category::TimeWait | Category::DualStack
        ) && self.conflicts_with.is_empty()
    }
}

/// `ADDR:PORT/PROTO`, as `check` prints a binding.
pub fn label(b: &Binding) -> String {
    format!("{}/{}", SocketAddr::new(b.addr, b.port), b.proto.name())
}

/// Why a plan could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The verdict engine could not judge (no sock_diag, ...).
    #[error(transparent)]
    Judge(#[from] JudgeError),
    /// The namespace's addresses could not be listed.
    #[error("cannot list the network namespace's addresses (getifaddrs): {0}")]
    Addresses(std::io::Error),
}

/// Checks the entries of a plan in the calling thread's network namespace (inode
/// `netns`): never a bind, the engine's rules only. `user`: the uid the
/// deploy binds as without CAP_NET_BIND_SERVICE (None or 0: root).
/// `published`: look for containers' published ports (the host's
/// namespace only). `enter`: how a sysctl fix enters the namespace, as
/// the user named it (`--netns PATH`).
pub fn check(
    plan: &[Entry],
    netns: u32,
    user: Option<u32>,
    published: bool,
    enter: Option<&str>,
) -> Result<Vec<Outcome>, CheckError> {
    let mut host = Host::read().map_err(CheckError::Addresses)?;
    host.enter = enter.map(str::to_owned);
    let batch = Batch {
        netns,
        bindings: plan.iter().map(|e| e.binding.clone()).collect(),
        trial: false,
        published,
        enter: host.enter.clone(),
    };
    // SO_REUSEPORT shares only within one uid: the deploy's (root unless
    // --user says otherwise), not the holders'.
    let judged = engine::judge_as(&batch, Some(user.unwrap_or(0)))?;
    let mut checked = classify(plan, &judged.judgements, &host, user);
    // Before Linux 6.10 a TCP socket bound without listen() is not listed:
    // a "free" TCP port may be held unseen, and the answer says so.
    if let Some(unseen) = &judged.unseen {
        for c in checked
            .iter_mut()
            .filter(|c| c.proto == crate::request::Proto::Tcp && !c.fails && c.note.is_none())
        {
            c.note = Some(unseen.clone());
        }
    }
    Ok(checked)
}

/// The verdict on each entry of `plan`, given the engine's judgement of
/// each (in the same order) and the namespace.
pub fn classify(
    plan: &[Entry],
    judgements: &[Judgement],
    host: &Host,
    user: Option<u32>,
) -> Vec<Outcome> {
    let bindings: Vec<Binding> = plan.iter().map(|e| e.binding.clone()).collect();
    plan.iter()
        .zip(judgements)
        .enumerate()
        .map(|(i, (e, j))| {
            let b = &e.binding;
            let mut c = address_missing(b, host)
                .or_else(|| privileged(b, host, user))
                .or_else(|| from_engine(e, j))
                .or_else(|| in_plan(i, &bindings, plan))
                .or_else(|| ephemeral_risk(b, host))
                .unwrap_or_else(|| {
                    let what = format!("nothing holds or steers {}", label(b));
                    Outcome::new(b, Category::Free, what, None)
                });
            c.from.clone_from(&e.from);
            c
        })
        .collect()
}

/// An address the namespace does not have, without ip_nonlocal_bind.
fn address_missing(b: &Binding, host: &Host) -> Option<Outcome> {
    // IP_FREEBIND and IP_TRANSPARENT bind an address the host lacks.
    if host.can_bind(b.addr) || b.opts.freebind || b.opts.transparent {
        return None;
    }
    let have: Vec<String> = host.addresses().iter().map(ToString::to_string).collect();
    let sysctl = match b.addr {
        IpAddr::V4(_) => "net.ipv4.ip_nonlocal_bind",
        IpAddr::V6(_) => "net.ipv6.ip_nonlocal_bind",
    };
    let diagnosis = format!(
        "{} is not an address of any interface in this network namespace, so bind() fails with EADDRNOTAVAIL; it has {}",
        b.addr,
        if have.is_empty() { "none".to_owned() } else { have.join(", ") }
    );
    let fix = format!(
        "bind one of the addresses it has (or the wildcard), or bring {} up first; to start before the address comes up, set IP_FREEBIND on the socket (systemd: `FreeBind=yes`) or `sysctl -w {sysctl}=1`",
        b.addr
    );
    Some(Outcome::new(
        b,
        Category::AddressMissing,
        diagnosis,
        Some(fix),
    ))
}

/// A port below ip_unprivileged_port_start for a deploy that runs as
/// `user`, not root (the caller says it has no CAP_NET_BIND_SERVICE).
fn privileged(b: &Binding, host: &Host, user: Option<u32>) -> Option<Outcome> {
    let uid = user.filter(|&u| u != 0)?;
    // The kernel's default when the sysctl cannot be read.
    let start = host.sysctls.unprivileged_port_start.unwrap_or(1024);
    if u32::from(b.port) >= start {
        return None;
    }
    let diagnosis = format!(
        "port {} is below ip_unprivileged_port_start ({start}) and the deploy runs as uid {uid}: bind() fails with EACCES without CAP_NET_BIND_SERVICE",
        b.port
    );
    let fix = format!(
        "grant CAP_NET_BIND_SERVICE (systemd: `AmbientCapabilities=CAP_NET_BIND_SERVICE`; a binary: `setcap cap_net_bind_service=+ep FILE`; rootless podman/docker: publish a port >= {start}), or use a port >= {start}; lowering `net.ipv4.ip_unprivileged_port_start` opens low ports to every user of the host"
    );
    Some(Outcome::new(b, Category::Privileged, diagnosis, Some(fix)))
}

/// The engine's answer: a socket in the way (taken, time-wait,
/// dual-stack), a container publishing the port (taken), a DNAT rule
/// (steered).
fn from_engine(e: &Entry, j: &Judgement) -> Option<Outcome> {
    let b = &e.binding;
    let holders: Vec<Holder> = j
        .sockets
        .iter()
        .filter(|h| in_the_way(b, h))
        .cloned()
        .collect();
    let replaced = e.ours.as_ref().filter(|o| o.replaced());
    if let Some(yours) = replaced.and_then(|o| yours(b, o, &holders, j)) {
        return Some(yours);
    }
    if let Some(v) = &j.verdict {
        let category = match v.reason {
            Reason::DualStack => Category::DualStack,
            Reason::TimeWait => Category::TimeWait,
            _ => Category::Taken,
        };
        // The deploy's own running predecessor (nginx of the same
        // configuration, started again): its own fix, not a stranger's.
        let own = e
            .ours
            .as_ref()
            .filter(|o| !holders.is_empty() && holders.iter().all(|h| o.holds(h)))
            .and_then(|o| o.in_the_way(b.port, &holders));
        let (diagnosis, fix) = own.unwrap_or_else(|| (v.diagnosis.clone(), v.fix.clone()));
        let mut c = Outcome::new(b, category, diagnosis, Some(fix));
        c.reason = Some(v.reason);
        c.note = if category == Category::TimeWait {
            reuseaddr_depends(j)
        } else {
            depends(b, j)
        };
        c.holders = holders;
        c.dnat.clone_from(&j.dnat);
        return Some(c);
    }
    if let Some(p) = j.published.first() {
        let name = p.container.label();
        let stop = crate::diagnose::container_stop(&p.container, &j.tools)
            .map_or_else(|| "stop it".into(), |cmd| format!("`{cmd}`"));
        let elsewhere = crate::diagnose::publish_elsewhere(&p.container, &p.mapping, &j.tools);
        let diagnosis = format!(
            "{name} publishes {} port {} (-p {}): its traffic goes to the container",
            b.proto.name(),
            b.port,
            p.mapping
        );
        let fix = format!("{stop}, or {elsewhere}; or give this service another port");
        let mut c = Outcome::new(b, Category::Taken, diagnosis, Some(fix));
        c.published.clone_from(&j.published);
        return Some(c);
    }
    steered(b, j)
}

/// Held only by what the deploy replaces: every socket in the way (and
/// every container publishing the port) is `ours`'.
fn yours(b: &Binding, ours: &Ours, holders: &[Holder], j: &Judgement) -> Option<Outcome> {
    if j.published.iter().any(|p| !ours.runs(&p.container))
        || (holders.is_empty() && j.published.is_empty())
        || !holders.iter().all(|h| ours.holds(h))
    {
        return None;
    }
    let held = holders
        .first()
        .map(Holder::who)
        .or_else(|| j.published.first().map(|p| p.container.label()))
        .unwrap_or_default();
    let diagnosis = ours.yours(&label(b), &held, holders);
    let mut c = Outcome::new(b, Category::Yours, diagnosis, None);
    c.holders = holders.to_vec();
    c.published.clone_from(&j.published);
    Some(c)
}

/// No socket in the way, but DNAT rules take the port's traffic.
fn steered(b: &Binding, j: &Judgement) -> Option<Outcome> {
    let rule = j.dnat.iter().find(|r| reaches(r, b))?;
    if let Some((diagnosis, fix)) =
        crate::diagnose::steered_to_service(&b.proto.name(), b.port, rule)
    {
        let mut c = Outcome::new(b, Category::Steered, diagnosis, Some(fix));
        c.dnat.clone_from(&j.dnat);
        return Some(c);
    }
    let to = rule.to.as_deref().unwrap_or("another address");
    let diagnosis = format!(
        "no socket holds {} port {}, but this {} rule sends its traffic to {to}: {}; a bind succeeds, and receives none of it",
        b.proto.name(),
        b.port,
        rule.from,
        rule.rule
    );
    let fix = format!(
        "give this service another port, or remove the rule if nothing needs it any more (whatever made it owns it: a Kubernetes hostPort or NodePort, a port forward); traffic to port {} goes to {to} while it stays",
        b.port
    );
    let mut c = Outcome::new(b, Category::Steered, diagnosis, Some(fix));
    c.dnat.clone_from(&j.dnat);
    Some(c)
}

/// Whether traffic `rule` steers could have reached `b`: iptables' rules
/// take IPv4 traffic, which an IPv6 socket gets only as the dual-stack
/// wildcard; ip6tables' take IPv6 traffic, which no IPv4 socket gets
/// (Docker's IPv4 DNAT for a port says nothing about its `[::]` side).
/// nft rules by their table's family (`ip`, `ip6`; `inet` and unknown: kept).
fn reaches(rule: &DnatRule, b: &Binding) -> bool {
    let dual = b.addr.is_unspecified() && !b.opts.v6only;
    match rule.from.as_str() {
        "iptables" | "iptables-legacy" => b.addr.is_ipv4() || dual,
        "ip6tables" | "ip6tables-legacy" => b.addr.is_ipv6(),
        // An nft table steers its family's traffic: `ip` IPv4's, `ip6`
        // IPv6's, `inet` both.
        "nft" => match rule.table.as_deref().and_then(|t| t.split_once(' ')) {
            Some(("ip", _)) => b.addr.is_ipv4() || dual,
            Some(("ip6", _)) => b.addr.is_ipv6(),
            _ => true,
        },
        _ => true,
    }
}

/// What the bind as asked (its own options: nginx's `reuseport`, systemd's
/// `ReusePort=`) hangs on, when the engine's rules could not tell: a
/// holder's SO_REUSEPORT, which sock_diag does not show.
fn depends(b: &Binding, j: &Judgement) -> Option<String> {
    let asked = Variant::asked(&b.opts);
    let v = j
        .binds
        .iter()
        .find(|v| v.option == asked && v.result == Answer::Unknown)?;
    Some(format!(
        "it depends: this {} bind succeeds {}",
        asked.label(),
        v.note
            .as_deref()
            .unwrap_or("only if the holder set the same option")
    ))
}

/// What a bind with SO_REUSEADDR hangs on, as the engine's rules said it.
fn reuseaddr_depends(j: &Judgement) -> Option<String> {
    let v = j
        .binds
        .iter()
        .find(|v| v.option == Variant::Reuseaddr && v.result == Answer::Unknown)?;
    Some(format!(
        "it depends: a server that sets SO_REUSEADDR (nginx, docker-proxy and Go's net package do) binds {}",
        v.note.as_deref().unwrap_or("only if the closed connections' socket set it too")
    ))
}

/// Whether holder `h` (one of the sockets on the port) is in `b`'s way.
fn in_the_way(b: &Binding, h: &Holder) -> bool {
    let family = Family::of(h.addr);
    overlaps(
        (Family::of(b.addr), b.addr, b.opts.v6only),
        (family, h.addr, h.v6only),
    )
    .is_some()
}

/// Other entries of the plan that want entry `i`'s port and would
/// conflict with it: each is a socket of its own, so any overlap fails the
/// one bound second, unless both set SO_REUSEPORT (one deploy, one user:
/// the kernel lets them share). Across families, that is the IPv6
/// wildcard without IPV6_V6ONLY (dual-stack). `entries`: the same plan
/// with origins, to name the other entry's file and line.
fn in_plan(i: usize, plan: &[Binding], entries: &[Entry]) -> Option<Outcome> {
    let b = &plan[i];
    let me = (Family::of(b.addr), b.addr, b.opts.v6only);
    let others: Vec<(usize, bool)> = plan
        .iter()
        .enumerate()
        .filter(|&(k, o)| k != i && o.proto == b.proto && o.port == b.port)
        .filter(|(_, o)| !(o.opts.reuseport && b.opts.reuseport))
        .filter(|(_, o)| !other_devices(b, o))
        .filter_map(|(k, o)| {
            overlaps(me, (Family::of(o.addr), o.addr, Some(o.opts.v6only))).map(|cross| (k, cross))
        })
        .collect();
    if others.is_empty() {
        return None;
    }
    let names: Vec<String> = others
        .iter()
        .map(|&(k, _)| format!("#{} {}", k + 1, label(&plan[k])))
        .collect();
    let cross = others.iter().all(|&(_, cross)| cross);
    let (category, why, fix) = if cross {
        (
            Category::DualStack,
            "an IPv6 wildcard without IPV6_V6ONLY takes the IPv4 side of the port too",
            format!(
                "keep one: `[::]:{port}` alone serves both families; or set IPV6_V6ONLY on the IPv6 socket to keep both (nginx: `listen [::]:{port} ipv6only=on`; systemd: `BindIPv6Only=ipv6-only`)",
                port = b.port
            ),
        )
    } else {
        (
            Category::ConflictInPlan,
            "each is a socket of its own",
            "give one of them another port; or, if they are one service, bind one socket (or SO_REUSEPORT on every one of them, under one user, to balance load)".to_owned(),
        )
    };
    // Entries read from files say where (compose.yml:12 service web: ...).
    let placed: Vec<String> = others
        .iter()
        .zip(&names)
        .map(|(&(k, _), name)| match entries[k].from.first() {
            Some(o) if o.file.is_some() => format!("{name} ({o})"),
            _ => name.clone(),
        })
        .collect();
    let diagnosis = format!(
        "entry #{} {} and {} of this plan want the same port: whichever binds second fails with EADDRINUSE ({why})",
        i + 1,
        label(b),
        placed.join(", ")
    );
    let mut c = Outcome::new(b, category, diagnosis, Some(fix));
    c.conflicts_with = names;
    Some(c)
}

/// Two sockets bound to two different devices (SO_BINDTODEVICE) are out
/// of each other's way; one unbound socket is in the way of every device.
fn other_devices(a: &Binding, b: &Binding) -> bool {
    matches!((&a.device, &b.device), (Some(x), Some(y)) if x != y)
}

/// Free now, but inside ip_local_port_range and not reserved.
fn ephemeral_risk(b: &Binding, host: &Host) -> Option<Outcome> {
    let (low, high) = host.sysctls.local_port_range?;
    let list = host.sysctls.local_reserved_ports.as_deref().unwrap_or("");
    if !(low..=high).contains(&b.port) || reserved(list, b.port) {
        return None;
    }
    let port = b.port;
    let keep = if list.is_empty() {
        port.to_string()
    } else {
        format!("{list},{port}")
    };
    let diagnosis = format!(
        "free now, but port {port} is inside ip_local_port_range ({low}-{high}) and not in ip_local_reserved_ports: an outgoing connection may take it as its source port at any moment before the deploy binds it"
    );
    let name = "net.ipv4.ip_local_reserved_ports";
    let fix = match &host.enter {
        // Another namespace's own list: aim the fix at it, not the host's.
        Some(path) => format!(
            "reserve it in that network namespace: `nsenter --net={} sysctl -w {name}={keep}` now (its own setting, not the host's; lost with the namespace), and for good where the namespace is made (`--sysctl {name}={keep}` for a container); or move the service below {low}",
            crate::diagnose::shell_word(path)
        ),
        None => format!(
            "reserve it: `sysctl -w {name}={keep}` now, and the line `{name} = {keep}` in a file under /etc/sysctl.d/ for the next boot (the list keeps what is reserved today); or move the service below {low}"
        ),
    };
    Some(Outcome::new(
        b,
        Category::EphemeralRisk,
        diagnosis,
        Some(fix),
    ))
}
