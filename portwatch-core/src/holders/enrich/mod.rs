//! Who holds the port: the kernel's record merged with a sock_diag query in
//! the failing socket's network namespace, each socket mapped to its owning
//! processes through /proc.
//!
//! Blocking: `watch` runs it on blocking threads, never on the ring buffer's
//! reader, so a slow /proc or netlink answer delays only the output of its
//! own event (see `crate::pipeline`).

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    os::fd::AsFd,
    sync::Mutex,
    time::{Duration, Instant},
};

mod options;
mod owners;

use owners::{bare, unowned_udp};

use super::{
    containers::{self, Container, Containers},
    kernel, netns, opened, overlaps,
    procs::{self, ProcCache, ProcInfo, SocketIndex},
    sockdiag::{self, DiagSocket},
    sysctl, systemd, CallerInfo, Devices, Evidence, Holder, Seen, State,
};
use crate::{
    bindcheck::apart,
    request::{Errno, Family, HolderRecord, Proto, Request, Syscall},
    tools::HostTools,
};

/// How stale the socket index may be before a lookup that found nothing
/// walks /proc again. Bounds full walks to about one per interval.
const INDEX_MAX_AGE: Duration = Duration::from_secs(1);

/// Holders listed per failure; the rest are summarised by the first ones.
const MAX_HOLDERS: usize = 16;

/// Shared state of every enrichment.
pub struct Enricher {
    index: Mutex<SocketIndex>,
    procs: Mutex<ProcCache>,
    /// Containers named from their runtimes' files.
    containers: Mutex<Containers>,
    /// The kernel dumps bound-but-inactive TCP sockets (`TCP_BOUND_INACTIVE` in its BTF).
    bound_inactive: bool,
    /// Our own network namespace: no setns needed there.
    own_netns: Option<u32>,
    /// Nanoseconds per clock tick, for /proc start times.
    tick_ns: u64,
    /// How stale the socket index may be before a lookup that found
    /// nothing walks /proc again ([`INDEX_MAX_AGE`]; never, in a batch).
    index_max_age: Duration,
    /// The commands of this host fixes may name, probed once.
    tools: HostTools,
    /// When it was made: a batch's sockets (`for_batch`) were dumped
    /// before, so a walk of /proc after it knows their owners.
    created: Instant,
}

impl Enricher {
    /// A new enricher; call `warm` on a blocking thread to build the index.
    pub fn new(bound_inactive: bool) -> Self {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            index: Mutex::new(SocketIndex::new()),
            procs: Mutex::new(ProcCache::new()),
            containers: Mutex::new(Containers::of_this_host()),
            bound_inactive,
            own_netns: netns::current_netns(),
            tick_ns: 1_000_000_000 / u64::try_from(hz).unwrap_or(100).max(1),
            index_max_age: INDEX_MAX_AGE,
            tools: HostTools::probe(),
            created: Instant::now(),
        }
    }

    /// The commands of this host fixes may name.
    pub fn tools(&self) -> HostTools {
        self.tools
    }

    /// An enricher for one batch of questions asked at one moment (`who`,
    /// `check`): /proc is walked once, at the first owner lookup, and every
    /// lookup after it verifies that walk's entries but never walks again
    /// (none at all when no socket needs an owner). Ask it about sockets
    /// dumped before that first lookup, so their owners are in the walk.
    pub fn for_batch(bound_inactive: bool) -> Self {
        Self {
            index_max_age: Duration::MAX,
            ..Self::new(bound_inactive)
        }
    }

    /// Which path found the sockets' owners: the last full scan's, or,
    /// before any, the one a scan would take.
    pub fn lookup(&self) -> super::OwnerLookup {
        self.index
            .lock()
            .ok()
            .and_then(|i| i.last_lookup())
            .unwrap_or_else(procs::source::planned)
    }

    /// Why owners were found by walking /proc: the iterator could not be
    /// loaded, or its last pass failed. None when it answered, or when no
    /// one asked for it.
    pub fn lookup_note(&self) -> Option<String> {
        let failed = self
            .index
            .lock()
            .ok()
            .and_then(|i| i.source_failed().map(str::to_owned));
        failed
            .map(|why| format!("the BPF iterator failed: {why}"))
            .or_else(procs::source::why_walk)
    }

    /// How many times /proc was walked for socket owners.
    pub fn proc_walks(&self) -> usize {
        self.index.lock().map_or(0, |i| i.walks())
    }

    /// Walks /proc once so that the first failures find their holders fast.
    pub fn warm(&self) {
        if let Ok(mut index) = self.index.lock() {
            index.rescan();
        }
        systemd::prefetch();
    }

    /// Everything known about what stands in the way of `req`.
    pub fn evidence(&self, req: &Request) -> Evidence {
        let Some(protocol) = protocol(req) else {
            return Evidence {
                blind: Some(format!(
                    "portwatch looks up TCP and UDP sockets, not {}",
                    req.proto.name()
                )),
                ..self.recorded_only(req, true)
            };
        };
        let in_use = req.errno_or_in_use() == Errno::ADDRINUSE;
        let port = (req.port != 0).then_some(req.port);
        let looked = self.look(
            req.netns,
            protocol,
            in_use.then_some(port),
            &callers(req),
            req.device,
        );
        match looked {
            Ok(look) => self.conclude(req, in_use, &look.sockets, &look),
            Err(e) => self.blind(req, &e),
        }
    }

    /// Evidence for each of `reqs`, in order. Failures in one network
    /// namespace on one protocol share one sock_diag dump of every port
    /// (a burst of distinct ports costs one dump, not one per port).
    pub fn evidence_many(&self, reqs: &[Request]) -> Vec<Evidence> {
        let mut out: Vec<Option<Evidence>> = vec![None; reqs.len()];
        let mut groups: HashMap<(u32, u8), Vec<usize>> = HashMap::new();
        for (i, req) in reqs.iter().enumerate() {
            match protocol(req) {
                // Only named ports in use: port 0 and other errors need
                // nothing or everything, as `evidence` decides.
                Some(p) if req.port != 0 && req.errno_or_in_use() == Errno::ADDRINUSE => {
                    groups.entry((req.netns, p)).or_default().push(i);
                }
                _ => out[i] = Some(self.evidence(req)),
            }
        }
        for ((netns, protocol), members) in groups {
            if let [one] = members[..] {
                out[one] = Some(self.evidence(&reqs[one]));
                continue;
            }
            let mut candidates: Vec<(u32, u32)> =
                members.iter().flat_map(|&i| callers(&reqs[i])).collect();
            candidates.sort_unstable();
            candidates.dedup();
            // Any device asked about: the links are read once for all.
            let device = members.iter().map(|&i| reqs[i].device).max().unwrap_or(0);
            match self.look(netns, protocol, Some(None), &candidates, device) {
                Ok(mut look) => {
                    let mut by_port: HashMap<u16, Vec<DiagSocket>> = HashMap::new();
                    for s in std::mem::take(&mut look.sockets) {
                        by_port.entry(s.local.port()).or_default().push(s);
                    }
                    for i in members {
                        let sockets = by_port.get(&reqs[i].port).map_or(&[][..], Vec::as_slice);
                        out[i] = Some(self.conclude(&reqs[i], true, sockets, &look));
                    }
                }
                Err(e) => {
                    for i in members {
                        out[i] = Some(self.blind(&reqs[i], &e));
                    }
                }
            }
        }
        out.into_iter().map(Option::unwrap_or_default).collect()
    }

    /// Reads `netns`'s sockets of `protocol` (`dump`: None for none, else
    /// those on the port, or every one for `Some(None)`), its sysctls and,
    /// when `device` or a socket is bound to a device, its links, entering
    /// it through one of `candidates`' threads when it is not ours.
    fn look(
        &self,
        netns: u32,
        protocol: u8,
        dump: Option<Option<u16>>,
        candidates: &[(u32, u32)],
        device: u32,
    ) -> io::Result<Looked> {
        let bound_inactive = self.bound_inactive && protocol == 6;
        let look = || -> io::Result<Looked> {
            // Before the dump: a walk of /proc from now on knows every
            // owner of what it lists.
            let at = Instant::now();
            let sockets = match dump {
                Some(port) => sockdiag::dump(protocol, port, bound_inactive)?,
                None => Vec::new(),
            };
            let sysctls = sysctl::sysctls();
            // Without the links, the plain device rule still holds.
            let devices =
                Devices::here(device != 0, &sockets, sysctls.tcp_l3mdev_accept).unwrap_or_default();
            Ok(Looked {
                sockets,
                sysctls,
                devices,
                at,
            })
        };
        self.in_netns(netns, candidates, look)?
    }

    /// Evidence when the look failed.
    fn blind(&self, req: &Request, e: &io::Error) -> Evidence {
        // The kernel answers ENOENT when no sock_diag handler is
        // registered: tcp_diag/udp_diag are modules on most distributions.
        let why = if e.raw_os_error() == Some(libc::ENOENT) {
            format!(
                "the kernel has no sock_diag handler for {} (load the inet_diag and {}_diag modules)",
                req.proto.name(),
                req.proto.name()
            )
        } else {
            e.to_string()
        };
        Evidence {
            blind: Some(why),
            ..self.recorded_only(req, true)
        }
    }

    /// Evidence from what a look found: `sockets` on the port (every port,
    /// for a bind to port 0), its sysctls and devices.
    fn conclude(
        &self,
        req: &Request,
        in_use: bool,
        sockets: &[DiagSocket],
        look: &Looked,
    ) -> Evidence {
        let mut evidence = Evidence {
            sysctls: Some(look.sysctls.clone()),
            caller: self.caller(req),
            tools: self.tools,
            scope: sysctl::Scope::of(
                req.netns,
                req.caller.as_ref().map(|c| (c.pid, c.tid)),
                self.own_netns,
            ),
            device: look.devices.named(req.device),
            ..Evidence::default()
        };
        if !in_use {
            return evidence;
        }
        if req.port == 0 {
            // bind(port 0): how much of the ephemeral range is taken.
            if let Some(Some((lo, hi))) = evidence.sysctls.as_ref().map(|s| s.local_port_range) {
                let taken: std::collections::HashSet<u16> = sockets
                    .iter()
                    .map(|s| s.local.port())
                    .filter(|p| (lo..=hi).contains(p))
                    .collect();
                evidence.ephemeral_in_use = Some(taken.len());
            }
            return evidence;
        }
        evidence.holders = self.holders(req, sockets, &look.devices, look.at);
        // Only connections without a listener need to know who opened
        // them: a storm on a listener's port pays no peer dumps.
        let connections_only = evidence
            .holders
            .iter()
            .any(|h| matches!(h.state, State::Connection(_)))
            && !evidence.holders.iter().any(|h| h.state == State::Listen);
        if connections_only {
            evidence.opened = self.opened(req, sockets);
        }
        if evidence.holders.iter().any(unowned_udp) {
            if let Ok(devices) = self.in_netns(req.netns, &callers(req), || {
                kernel::udp_port_devices(req.port)
            }) {
                name_kernel_holders(devices, &mut evidence.holders);
            }
        }
        evidence
    }

    /// Runs `f` in network namespace `netns`, entered through one of
    /// `candidates`' threads when it is not ours.
    fn in_netns<T>(
        &self,
        netns: u32,
        candidates: &[(u32, u32)],
        f: impl FnOnce() -> T,
    ) -> io::Result<T> {
        if Some(netns) == self.own_netns {
            return Ok(f());
        }
        match netns::open_netns(netns, candidates) {
            Some(ns) => netns::in_netns(ns.as_fd(), f),
            None => Err(io::Error::other(format!(
                "no process is left in network namespace {netns}"
            ))),
        }
    }

    /// Evidence for `req` from `sockets`, already dumped in its network
    /// namespace by the caller (`who`, which lists them all first): the same
    /// holders, grouped and ordered as [`Enricher::evidence`] gives them.
    pub fn evidence_from(
        &self,
        req: &Request,
        sockets: &[DiagSocket],
        sysctls: sysctl::Sysctls,
        devices: &Devices,
    ) -> Evidence {
        let mut holders = self.holders(req, sockets, devices, self.created);
        if holders.iter().any(unowned_udp) {
            name_kernel_holders(kernel::udp_port_devices(req.port), &mut holders);
        }
        Evidence {
            holders,
            opened: opened::opened(req.port, &opened::with_peers(req.port, sockets), None),
            // The caller stands in the namespace: no way in to name.
            scope: sysctl::Scope::of(req.netns, None, Some(req.netns)),
            sysctls: Some(sysctls),
            tools: self.tools,
            device: devices.named(req.device),
            ..Evidence::default()
        }
    }

    /// Which end opened the connections on `req`'s port: the peers' ports
    /// are dumped in its namespace only when a connection has a peer.
    fn opened(&self, req: &Request, sockets: &[DiagSocket]) -> Option<opened::Opened> {
        let record = req.holder_record.as_ref();
        if opened::peer_ports(req.port, sockets).is_empty() {
            return opened::opened(req.port, sockets, record);
        }
        let all = self
            .in_netns(req.netns, &callers(req), || {
                opened::with_peers(req.port, sockets)
            })
            .ok()?;
        opened::opened(req.port, &all, record)
    }

    /// Every socket of `sockets`, one holder each with its owners, none
    /// grouped or left out, in the order given: what `who` lists.
    /// `cross_family` is set for those that take `req`'s address from the
    /// other family; `apart` for those another device or VRF keeps out of
    /// its way; `remote` for every connected socket, TIME_WAIT too.
    pub fn each_socket(
        &self,
        req: &Request,
        sockets: &[DiagSocket],
        devices: &Devices,
    ) -> Vec<Holder> {
        sockets
            .iter()
            .map(|s| {
                let cross_family = Family::try_from(u16::from(s.family))
                    .ok()
                    .and_then(|f| {
                        overlaps(
                            (req.family, req.addr, req.v6only()),
                            (f, s.local.ip(), s.v6only),
                        )
                    })
                    .unwrap_or(false);
                let state = State::from_kernel(req.proto, s.state);
                let mut h = bare(state, s, cross_family);
                h.device = devices.named(s.bound_dev_if);
                h.apart = apart(req.proto, req.device, s.bound_dev_if, devices);
                h.time_left_ms = s.time_wait_left.map(|d| d.as_millis() as u64);
                if s.remote.port() != 0 {
                    h.remote = Some(match s.remote {
                        SocketAddr::V4(a) => a.to_string(),
                        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                    });
                }
                if s.inode != 0 {
                    let pids = self
                        .index
                        .lock()
                        .map(|mut i| i.owners(s.inode, &[], self.index_max_age, self.created))
                        .unwrap_or_default();
                    self.own(&mut h, pids, None);
                }
                if unowned_udp(&h) {
                    name_kernel_holders(
                        kernel::udp_port_devices(req.port),
                        std::slice::from_mut(&mut h),
                    );
                }
                h
            })
            .collect()
    }

    /// Evidence from the kernel's record alone, when sock_diag cannot be
    /// asked. `look`: whether /proc may be read to tell if the holder still
    /// runs (not after a lookup timed out: /proc may be what hangs).
    pub fn recorded_only(&self, req: &Request, look: bool) -> Evidence {
        let mut holders = Vec::new();
        // Without a look, no links: the plain device rule, which already
        // keeps sockets on two different devices apart.
        let devices = Devices::default();
        if let Some(r) = &req.holder_record {
            let on_another_device = r
                .device
                .is_some_and(|d| apart(req.proto, req.device, d, &devices).is_some());
            if let Some(h) = self
                .recorded_holder(req, r, look, &devices)
                .filter(|_| !on_another_device)
            {
                holders.push(h);
            }
        }
        Evidence {
            holders,
            tools: self.tools,
            device: devices.named(req.device),
            ..Evidence::default()
        }
    }

    /// The requester's unit and container, from the cache (one stat read
    /// when it is known), so advice can tell an old instance of the same
    /// service from another program.
    fn caller(&self, req: &Request) -> CallerInfo {
        let Some(c) = &req.caller else {
            return CallerInfo::default();
        };
        let info = self.procs.lock().ok().and_then(|mut p| p.get(c.pid));
        // docker-proxy exits at once when its bind fails: which container
        // it was publishing comes from Docker's port bindings, the one of
        // the container that failed to start first.
        let publishing = (c.comm == "docker-proxy")
            .then(|| {
                let proto = req.proto.name();
                let mut resolver = self.containers.lock().ok()?;
                resolver
                    .publishing(req.port, &proto)
                    .into_iter()
                    .min_by_key(|p| p.running)
            })
            .flatten();
        CallerInfo {
            unit: info.as_ref().and_then(|i| i.unit.clone()),
            in_container: info.as_ref().and_then(|i| {
                i.container.as_ref()?;
                self.container_of(i)
            }),
            container: info.and_then(|i| i.container),
            publishing,
        }
    }
}

/// What one look in a network namespace found.
struct Looked {
    /// The sockets dumped.
    sockets: Vec<DiagSocket>,
    /// Its sysctls.
    sysctls: sysctl::Sysctls,
    /// Its devices, as far as the device rule needs them.
    devices: Devices,
    /// When the dump started.
    at: Instant,
}

/// Names the device configured with the port (from one rtnetlink dump in
/// the socket's namespace) as the holder of every unowned UDP socket.
pub fn name_kernel_holders(devices: io::Result<Vec<kernel::KernelDevice>>, holders: &mut [Holder]) {
    let Some(device) = devices.ok().and_then(|d| d.into_iter().next()) else {
        return;
    };
    for h in holders.iter_mut().filter(|h| unowned_udp(h)) {
        h.kernel = Some(device.clone());
    }
}

/// The sock_diag protocol number of `req`, if sock_diag reports it.
fn protocol(req: &Request) -> Option<u8> {
    match req.proto {
        Proto::Tcp => Some(6),
        Proto::Udp => Some(17),
        Proto::Other(_) => None,
    }
}

/// The threads through which `req`'s network namespace can be entered: the
/// caller's, and the recorded holder's.
fn callers(req: &Request) -> Vec<(u32, u32)> {
    let mut candidates: Vec<(u32, u32)> = req.caller.iter().map(|c| (c.pid, c.tid)).collect();
    if let Some(r) = &req.holder_record {
        candidates.push((r.pid, r.pid));
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        fixtures::{encode, sample},
        Event,
    };

    /// A recorded binder that has exited but is not reaped yet (a zombie:
    /// its pid and comm remain, its command line is gone) is named as
    /// exited, not as a live process without a command line.
    #[test]
    fn a_recorded_holder_not_reaped_yet_has_exited() {
        let enricher = Enricher::new(false);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !procs::proc_info(pid).is_some_and(|p| p.exiting) {
            assert!(Instant::now() < deadline, "{pid} never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut req = Event::decode(&encode(&sample()), crate::clock::Clock::now())
            .unwrap()
            .request();
        if let Some(r) = req.holder_record.as_mut() {
            r.pid = pid;
            // Bound after the child started: the same process.
            r.running_ns = u64::MAX / 2;
        }
        let seen = enricher.recorded_only(&req, true);
        child.wait().unwrap();
        assert_eq!(seen.holders.len(), 1, "{seen:?}");
        let h = &seen.holders[0];
        assert_eq!(h.pid, Some(pid));
        assert!(h.exited && h.cmdline.is_none(), "{h:?}");
    }

    /// The kernel's record alone (the lookup timed out): a holder on
    /// another device than the failing socket's is not in its way; one on
    /// no device, or on the same, is.
    #[test]
    fn record_alone_keeps_the_device_rule() {
        let enricher = Enricher::new(false);
        let mut raw = sample();
        raw.bound_dev_if = 5;
        let base = Event::decode(&encode(&raw), crate::clock::Clock::now())
            .unwrap()
            .request();
        let with_record_on = |device: u32| {
            let mut req = base.clone();
            if let Some(r) = req.holder_record.as_mut() {
                r.device = Some(device);
            }
            enricher.recorded_only(&req, false)
        };
        assert!(with_record_on(3).holders.is_empty());
        for device in [0, 5] {
            let seen = with_record_on(device);
            assert_eq!(seen.holders.len(), 1, "{device}");
        }
        assert_eq!(
            with_record_on(0).device.map(|d| d.label()).as_deref(),
            Some("interface 5")
        );
    }
}
