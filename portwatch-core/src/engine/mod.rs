//! The verdict engine: for a batch of bindings about to be made, in the
//! calling thread's network namespace, every socket on each one's port and
//! its owner, whether a bind would succeed now with each option (plain,
//! SO_REUSEADDR, SO_REUSEPORT), and why not (reason, diagnosis, fix, as
//! `watch` gives them). `who`, `wait` and `check` differ only in the
//! bindings they ask about and how they print the answers.
//!
//! A batch costs one sock_diag dump per protocol (both families; the ports
//! filtered in the kernel), at most one walk of /proc for the sockets'
//! owners, and one read each of the sysctls, the NAT tables and the
//! containers' port bindings, whatever the number of bindings (the last two
//! only when a binding would succeed or a container may hold its port). The steps,
//! in order: `plan::plan` (which dumps), `plan::dump`, `BatchState::new` (what
//! every binding shares), then per binding `BatchState::judge`: list its
//! sockets with their owners, answer each option (`binds`), diagnose those
//! that fail (`BatchState::evidence` is the one place an `Evidence` is made),
//! look for its traffic sent elsewhere.
//!
//! The answers come from the kernel's rules (`bindcheck`) over the sockets
//! listed, with each holder's SO_REUSEADDR / SO_REUSEPORT read from its
//! socket where the answer hangs on them (`holders::sockopts`: a duplicate
//! of its fd, never a bind). Trial binds are made only when a batch asks
//! for them (`who --trial`).
//!
//! Entering a network namespace is the caller's: everything here (dumps,
//! trial binds, sysctls, NAT tables) reads the calling thread's, as
//! `holders::sockdiag` does. Run it on a thread of its own: a SO_REUSEPORT
//! trial changes the thread's fsuid for a moment.

mod binds;
mod plan;
#[cfg(test)]
mod tests;

use std::io;

pub use binds::{Answer, BindVerdict, Checked};

use crate::{
    bindcheck::{Known, OnDevice, Variant},
    diagnose::{diagnose, Verdict},
    holders::{
        containers::{Containers, Publishing},
        dnat::{ipam, DnatRule, EndpointPod, NatTables},
        inactive,
        sockdiag::DiagSocket,
        sockopts::OptionsFrom,
        sysctl::{self, Sysctls},
        Device, Devices, Enricher, Evidence, Holder, OwnerLookup, State, TrialFailed,
    },
    request::{Binding, Errno, Family, Opts, Proto, Request, Syscall},
};

/// The bindings to judge, and how.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The inode of the calling thread's network namespace, where every
    /// binding is judged.
    pub netns: u32,
    /// The binds about to be made, TCP or UDP.
    pub bindings: Vec<Binding>,
    /// Make trial binds where they are safe (false, the default of every
    /// command: the rules and the holders' options alone).
    pub trial: bool,
    /// Look for containers publishing the ports (Docker's port bindings,
    /// which live in the host's network namespace: set it there only).
    pub published: bool,
    /// How a sysctl fix enters this namespace, as the user named it
    /// (`--netns PATH`); None: the way portwatch itself finds.
    pub enter: Option<String>,
}

/// Everything found about one binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// What was asked.
    pub binding: Binding,
    /// The device it binds to, named, when the namespace has it.
    pub device: Option<Device>,
    /// Every socket on the port, one each, in or out of the way
    /// (`cross_family` marks those in the way from the other family,
    /// `apart` those another device or VRF keeps out of it).
    pub sockets: Vec<Holder>,
    /// plain, SO_REUSEADDR, SO_REUSEPORT; each with its verdict when it
    /// would not succeed.
    pub binds: Vec<BindVerdict>,
    /// Running containers whose published port this is, not already named
    /// as a socket's holder (not looked for when processes of the host's
    /// own, outside containers, hold the port).
    pub published: Vec<Publishing>,
    /// DNAT rules that send the port's traffic elsewhere (not read when
    /// processes of the host's own hold the port).
    pub dnat: Vec<DnatRule>,
    /// The verdict on the bind as asked (its own option), when it would
    /// not succeed.
    pub verdict: Option<Verdict>,
    /// The bind as asked would succeed now, and no container or DNAT rule
    /// takes the port's traffic.
    pub free: bool,
    /// The commands of this host the fixes may name.
    pub tools: crate::tools::HostTools,
    /// How the sockets' owners were found.
    pub lookup: OwnerLookup,
    /// Why by the walk, when the iterator was tried and did not answer.
    pub lookup_note: Option<String>,
}

/// What `Judged::unseen` says on a kernel that does not list TCP
/// sockets bound without listen().
pub const UNSEEN_BOUND: &str = "this kernel's sock_diag does not list TCP sockets bound without listen() (it lacks TCP_BOUND_INACTIVE, Linux 6.10+): one may hold the port unseen, and only the tracer's record (`portwatch watch`) names it";

/// [`UNSEEN_BOUND`] for a batch with a TCP binding, on such a kernel.
fn unseen(bindings: &[Binding]) -> Option<String> {
    (bindings.iter().any(|b| b.proto == Proto::Tcp) && !inactive::listed())
        .then(|| UNSEEN_BOUND.to_owned())
}

/// What one batch cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// sock_diag dumps made (one per protocol asked about).
    pub dumps: usize,
    /// Walks of /proc for the sockets' owners.
    pub proc_walks: usize,
}

/// The answers to a batch, in the order of its bindings.
#[derive(Debug, Clone)]
pub struct Judged {
    /// One per binding.
    pub judgements: Vec<Judgement>,
    /// What it cost.
    pub stats: BatchStats,
    /// What may hold a TCP binding's port unseen: on a kernel whose
    /// sock_diag does not list TCP sockets bound without listen() (no
    /// TCP_BOUND_INACTIVE, before Linux 6.10), such a socket, which only
    /// the tracer's record names ([`UNSEEN_BOUND`]). None where everything
    /// that can hold the ports is listed.
    pub unseen: Option<String>,
}

/// Why a batch could not be judged.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// Not TCP or UDP.
    #[error("portwatch judges TCP and UDP binds, not {0}")]
    Protocol(String),
    /// The kernel lacks inet_diag or its protocol's module.
    #[error(
        "the kernel has no sock_diag handler for {0} (load the inet_diag and {0}_diag modules)"
    )]
    NoDiagHandler(String),
    /// Any other sock_diag failure.
    #[error("sock_diag: {0}")]
    SockDiag(io::Error),
    /// The network devices, needed for the device rule, could not be listed.
    #[error("listing the network devices: {0}")]
    Devices(io::Error),
}

/// Judges every binding of `batch` in the calling thread's network
/// namespace. The SO_REUSEPORT answers are for a socket of the uid owning
/// the sockets in the way (SO_REUSEPORT shares only within one uid), or
/// ours when they have none or several.
pub fn judge(batch: &Batch) -> Result<Judged, JudgeError> {
    judge_as(batch, None)
}

/// [`judge`], with the SO_REUSEPORT answers for a socket of `uid` when it
/// is given (a deploy that runs as that user), whoever owns the sockets.
pub fn judge_as(batch: &Batch, uid: Option<u32>) -> Result<Judged, JudgeError> {
    let dumps = plan::plan(&batch.bindings)?;
    let dumped = plan::dump(&dumps)?;
    let mut shared = BatchState::new(batch, &dumped)?;
    shared.reuseport_uid = uid;
    let judgements = batch
        .bindings
        .iter()
        .map(|b| shared.judge(b, dumped.on(b)))
        .collect();
    Ok(Judged {
        judgements,
        stats: BatchStats {
            dumps: dumps.len(),
            proc_walks: shared.enricher.proc_walks(),
        },
        unseen: unseen(&batch.bindings),
    })
}

/// `wait`'s question, asked again and again until it says yes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindNow {
    /// The bind as asked would succeed now.
    pub free: bool,
    /// TIME_WAIT leftovers are on the port (they expire without the
    /// kernel announcing it).
    pub time_wait: bool,
    /// It hangs on options of a holder that cannot be read (TIME_WAIT
    /// leftovers' SO_REUSEADDR): what it hangs on. Not free until that
    /// holder is gone.
    pub unknown: Option<String>,
}

/// Whether `b` (with its own option) would bind now, by the same answer
/// [`judge`] gives: one dump of its port; the holders' options only when
/// the answer hangs on them (then one walk of /proc); a trial bind only
/// if `trial`; no diagnosis.
pub fn bind_now(b: &Binding, trial: bool) -> Result<BindNow, JudgeError> {
    let dumps = plan::plan(std::slice::from_ref(b))?;
    let dumped = plan::dump(&dumps)?;
    let sockets = dumped.on(b);
    let want = b.device.is_some() || dumped.on_a_device();
    let devices = devices(want, || sysctl::sysctls().tcp_l3mdev_accept)?;
    let on = OnDevice::of(b, &devices);
    let me = nix::unistd::geteuid().as_raw();
    let variant = Variant::asked(&b.opts);
    let uid = match variant {
        Variant::Reuseport => binds::reuseport_uid(b, on, sockets, me),
        _ => me,
    };
    let bare = binds::Seen {
        sockets,
        known: &[],
    };
    let mut answer = binds::answer(b, on, variant, (uid, me), bare, trial);
    // Hangs on a holder's options: read them (one walk of /proc), unless
    // only TIME_WAIT leftovers, which have no fd, are on the port (then
    // this runs every 20 ms and could read nothing).
    let readable = sockets
        .iter()
        .any(|s| s.inode != 0 && State::from_kernel(b.proto, s.state) != State::TimeWait);
    if answer.result == Answer::Unknown && readable {
        let enricher = Enricher::for_batch(true);
        let req = request_for(b, Variant::Plain, 0, on.index);
        let mut listed = enricher.each_socket(&req, sockets, &devices);
        let known = read_options(&enricher, b, on, sockets, &mut listed);
        let seen = binds::Seen {
            sockets,
            known: &known,
        };
        answer = binds::answer(b, on, variant, (uid, me), seen, trial);
    }
    Ok(BindNow {
        free: answer.result == Answer::Ok,
        time_wait: sockets
            .iter()
            .any(|s| State::from_kernel(b.proto, s.state) == State::TimeWait),
        unknown: (answer.result == Answer::Unknown)
            .then_some(answer.note)
            .flatten(),
    })
}

/// Sockets whose options are read, at most, per binding: beyond them
/// (thousands of connections on a busy port), the rules say "it depends".
const MAX_OPTION_READS: usize = 64;

/// What is known of each listed socket's options (`listed[i]` is
/// `sockets[i]`'s holder), read from the sockets in `b`'s way where they
/// have an owner (not TIME_WAIT leftovers, which have no fd), else the
/// tracer's record the holder carries. The holders are told what was read.
fn read_options(
    enricher: &Enricher,
    b: &Binding,
    on: OnDevice<'_>,
    sockets: &[DiagSocket],
    listed: &mut [Holder],
) -> Vec<(Known, Option<OptionsFrom>)> {
    let mut reads = 0;
    sockets
        .iter()
        .zip(listed.iter_mut())
        .map(|(s, h)| {
            let in_way = on.apart(b.proto, s).is_none()
                && crate::holders::overlaps(
                    (Family::of(b.addr), b.addr, b.opts.v6only),
                    (
                        Family::try_from(u16::from(s.family)).unwrap_or(Family::Ipv4),
                        s.local.ip(),
                        s.v6only,
                    ),
                )
                .is_some();
            let readable = in_way
                && s.inode != 0
                && !h.pids.is_empty()
                && h.state != State::TimeWait
                && reads < MAX_OPTION_READS;
            if readable {
                reads += 1;
                if let Ok(o) = enricher.socket_options(s.inode, &h.pids) {
                    h.reuseaddr = Some(o.reuseaddr);
                    h.reuseport = Some(o.reuseport);
                    h.v6only = h.v6only.or(o.v6only);
                    h.options_from = Some(OptionsFrom::Socket);
                }
            }
            let known = Known {
                reuseaddr: h.reuseaddr,
                reuseport: h.reuseport,
            };
            (known, h.options_from)
        })
        .collect()
}

/// The request for `b` made with `variant`'s option, in network namespace
/// `netns`, on device `device`: a bind not made yet, by nobody known.
fn request_for(b: &Binding, variant: Variant, netns: u32, device: u32) -> Request {
    let opts = Opts {
        reuseaddr: variant == Variant::Reuseaddr,
        reuseport: variant == Variant::Reuseport,
        ..b.opts
    };
    Request {
        netns,
        proto: b.proto,
        family: Family::of(b.addr),
        addr: b.addr,
        port: b.port,
        opts: Some(opts),
        syscall: Syscall::Bind,
        errno: None,
        caller: None,
        holder_record: None,
        device,
    }
}

/// The namespace's devices as the device rule needs them: its links (one
/// rtnetlink dump) when `want` (a binding or a socket is bound to a
/// device), else none, which no socket needs then.
fn devices(
    want: bool,
    tcp_l3mdev_accept: impl FnOnce() -> Option<bool>,
) -> Result<Devices, JudgeError> {
    if !want {
        return Ok(Devices::default());
    }
    Devices::here(true, &[], tcp_l3mdev_accept()).map_err(JudgeError::Devices)
}

/// What every binding of a batch shares: one owner lookup, the sysctls,
/// the devices, the NAT tables, the containers' port bindings.
struct BatchState<'a> {
    batch: &'a Batch,
    /// Walks /proc once, at the first owner lookup: after the dumps.
    enricher: Enricher,
    sysctls: Sysctls,
    /// Links read once, when a binding or a socket is bound to a device.
    devices: Devices,
    /// Read once, when the first binding needs them.
    nat: Option<NatTables>,
    /// Only when the batch looks for published ports.
    containers: Option<Containers>,
    /// Pods named for hostPort rules, made at the first such rule.
    cri: Option<Containers>,
    /// The pod sandboxes' addresses, read at the first endpoint that
    /// host-local's records do not name.
    sandbox_addresses: Option<Vec<(std::net::IpAddr, String)>>,
    /// Our euid: the new socket's owner.
    me: u32,
    /// The uid the SO_REUSEPORT answers are for, when the caller says.
    reuseport_uid: Option<u32>,
}

impl<'a> BatchState<'a> {
    fn new(batch: &'a Batch, dumped: &plan::Dumped) -> Result<Self, JudgeError> {
        let sysctls = sysctl::sysctls();
        let want = batch.bindings.iter().any(|b| b.device.is_some()) || dumped.on_a_device();
        let devices = devices(want, || sysctls.tcp_l3mdev_accept)?;
        Ok(Self {
            batch,
            enricher: Enricher::for_batch(true),
            sysctls,
            devices,
            nat: None,
            containers: batch.published.then(Containers::of_this_host),
            cri: None,
            sandbox_addresses: None,
            me: nix::unistd::geteuid().as_raw(),
            reuseport_uid: None,
        })
    }

    /// The pod sandbox holding `endpoint`'s address: host-local's record,
    /// else the sandbox whose network namespace has that address.
    fn endpoint_sandbox(&mut self, endpoint: &str) -> Option<String> {
        if let Some(id) = ipam::sandbox_of(endpoint) {
            return Some(id);
        }
        let ip = ipam::endpoint_ip(endpoint)?;
        let cri = &mut self.cri;
        let known = self.sandbox_addresses.get_or_insert_with(|| {
            ipam::sandbox_addresses(&cri.get_or_insert_with(Containers::of_this_host).sandboxes())
        });
        known
            .iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, id)| id.clone())
    }

    /// One binding, given the sockets on its port.
    fn judge(&mut self, b: &Binding, sockets: &[DiagSocket]) -> Judgement {
        let on = OnDevice::of(b, &self.devices);
        let mut listed =
            self.enricher
                .each_socket(&self.request(b, Variant::Plain), sockets, &self.devices);
        let known = read_options(&self.enricher, b, on, sockets, &mut listed);
        // Sockets another device or VRF keeps apart are listed, but not in the way.
        let in_way: Vec<DiagSocket> = sockets
            .iter()
            .filter(|s| on.apart(b.proto, s).is_none())
            .cloned()
            .collect();
        let seen = binds::Seen {
            sockets,
            known: &known,
        };
        let mut binds = binds::answers(b, on, seen, self.batch.trial, self.me, self.reuseport_uid);
        let device = self.devices.named(on.index);
        self.add_verdicts(b, &in_way, &listed, &mut binds);
        let asked = binds.iter().find(|v| v.option == Variant::asked(&b.opts));
        // Containers' port bindings (every process's comm, to find
        // dockerd's data roots) and the NAT tables (three subprocesses)
        // only when they can change the answer: the bind would succeed, or
        // a container (its runtime's helper, a socket without a process)
        // may be what holds the port.
        let taken_by_plain_processes = asked.is_some_and(|v| v.result != Answer::Ok)
            && listed
                .iter()
                .filter(|h| h.apart.is_none())
                .all(Holder::plain_process);
        let (published, dnat) = if taken_by_plain_processes {
            (Vec::new(), Vec::new())
        } else {
            let published = self.published(b, &listed);
            let mut dnat = self.nat.get_or_insert_with(NatTables::read).rules(
                b.addr,
                b.opts.v6only,
                b.port,
                &b.proto.name(),
            );
            // A hostPort (CNI portmap) names its pod sandbox: the pod, from
            // the runtime's files (which lie outside any network namespace).
            // A Service's endpoints (or IPVS's real servers) name theirs
            // through the address records of CNI's host-local IPAM, else
            // through the addresses of the pod sandboxes' namespaces.
            for rule in &mut dnat {
                let ids: Vec<(String, String)> = rule
                    .endpoints
                    .iter()
                    .filter_map(|e| Some((e.clone(), self.endpoint_sandbox(e)?)))
                    .collect();
                if rule.sandbox.is_none() && ids.is_empty() {
                    continue;
                }
                let cri = self.cri.get_or_insert_with(Containers::of_this_host);
                if let Some(id) = &rule.sandbox {
                    rule.pod = cri.pod_of_sandbox(id);
                }
                rule.endpoint_pods = ids
                    .into_iter()
                    .filter_map(|(endpoint, id)| {
                        Some(EndpointPod {
                            endpoint,
                            pod: cri.pod_of_sandbox(&id)?,
                        })
                    })
                    .collect();
            }
            (published, dnat)
        };
        Judgement {
            binding: b.clone(),
            device,
            free: asked.is_some_and(|v| v.result == Answer::Ok)
                && published.is_empty()
                && dnat.is_empty(),
            verdict: asked.and_then(|v| v.verdict.clone()),
            sockets: listed,
            binds,
            published,
            dnat,
            tools: self.enricher.tools(),
            lookup: self.enricher.lookup(),
            lookup_note: self.enricher.lookup_note(),
        }
    }

    /// The request for `b` made with `variant`'s option: a bind not made
    /// yet, by nobody known.
    fn request(&self, b: &Binding, variant: Variant) -> Request {
        request_for(
            b,
            variant,
            self.batch.netns,
            OnDevice::of(b, &self.devices).index,
        )
    }

    /// Reason, diagnosis and fix for each option that would not succeed.
    /// After every answer: no fix may recommend an option a bind has just
    /// been shown to fail with. The holders' options read (`listed`) are
    /// told to the diagnosis.
    fn add_verdicts(
        &self,
        b: &Binding,
        in_way: &[DiagSocket],
        listed: &[Holder],
        binds: &mut [BindVerdict],
    ) {
        if binds.iter().all(|v| v.result == Answer::Ok) {
            return;
        }
        let trial_failed = binds::trial_failed(binds);
        // The holders depend on the address and IPV6_V6ONLY alone, which
        // every option shares.
        let mut evidence = self.evidence(&self.request(b, Variant::Plain), in_way, trial_failed);
        with_options(&mut evidence.holders, listed);
        for v in binds.iter_mut().filter(|v| v.result != Answer::Ok) {
            let req = Request {
                errno: v.errno.filter(|&e| e != Errno::ADDRINUSE),
                ..self.request(b, v.option)
            };
            v.verdict = Some(diagnose(&req, &evidence));
        }
    }

    /// Everything diagnosis is told about `req`: the one place `who`,
    /// `wait` and `check` make an [`Evidence`], so a field added to it is
    /// filled here once.
    fn evidence(
        &self,
        req: &Request,
        in_way: &[DiagSocket],
        trial_failed: TrialFailed,
    ) -> Evidence {
        let mut evidence = Evidence {
            trial_failed,
            ..self
                .enricher
                .evidence_from(req, in_way, self.sysctls.clone(), &self.devices)
        };
        if let Some(path) = &self.batch.enter {
            evidence.scope.enter = Some(path.clone());
        }
        evidence
    }

    /// Running containers publishing `b`'s port, not already named as the
    /// holder of one of its sockets (`listed`).
    fn published(&mut self, b: &Binding, listed: &[Holder]) -> Vec<Publishing> {
        let Some(containers) = self.containers.as_mut() else {
            return Vec::new();
        };
        let named: Vec<&str> = listed
            .iter()
            .filter_map(|h| h.container.as_ref().map(|c| c.id.as_str()))
            .collect();
        containers
            .publishing(b.port, &b.proto.name())
            .into_iter()
            .filter(|p| p.running && !named.contains(&p.container.id.as_str()))
            .collect()
    }
}

/// Gives each holder of a diagnosis the options read from its socket
/// (`listed`: one holder per socket), matched by address, state and owner.
fn with_options(holders: &mut [Holder], listed: &[Holder]) {
    for h in holders.iter_mut().filter(|h| h.options_from.is_none()) {
        let read = listed.iter().find(|l| {
            l.options_from.is_some()
                && l.addr == h.addr
                && l.state == h.state
                && l.pid.is_some()
                && l.pid == h.pid
        });
        if let Some(l) = read {
            h.reuseaddr = l.reuseaddr;
            h.reuseport = l.reuseport;
            h.options_from = l.options_from;
        }
    }
}
