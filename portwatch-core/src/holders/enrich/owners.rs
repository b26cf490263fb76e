//! Who owns each socket in the way: the owning processes from /proc, the
//! kernel's record merged in (the only witness once a holder exited), and
//! each holder's unit and container.

use super::*;
use crate::holders::sockopts::OptionsFrom;

impl Enricher {
    /// The sockets in the way of `req`, merged with the kernel's record:
    /// not those another device or VRF keeps apart (`devices`). `dumped`:
    /// when the dump that listed `sockets` started.
    pub(super) fn holders(
        &self,
        req: &Request,
        sockets: &[DiagSocket],
        devices: &Devices,
        dumped: Instant,
    ) -> Vec<Holder> {
        let hints = hints(req);
        let mut holders: Vec<Holder> = Vec::new();
        let mut time_wait: Option<Holder> = None;
        for s in sockets {
            let Some(cross_family) = in_the_way(req, s, devices) else {
                continue;
            };
            // Bound-inactive sockets come as TCP_CLOSE (or 13): Bound.
            let state = State::from_kernel(req.proto, s.state);
            if state == State::TimeWait {
                let tw = time_wait.get_or_insert_with(|| Holder {
                    sockets: 0,
                    device: devices.named(s.bound_dev_if),
                    ..bare(State::TimeWait, s, cross_family)
                });
                tw.sockets += 1;
                let left = s.time_wait_left.map(|d| d.as_millis() as u64);
                tw.time_left_ms = tw.time_left_ms.max(left);
                continue;
            }
            // Connections are grouped by state: a busy port has thousands.
            if let State::Connection(_) = state {
                if let Some(h) = holders.iter_mut().find(|h| h.state == state) {
                    h.sockets += 1;
                    continue;
                }
            }
            if holders.len() >= MAX_HOLDERS {
                continue;
            }
            let mut h = bare(state, s, cross_family);
            h.device = devices.named(s.bound_dev_if);
            let pids = if s.inode == 0 {
                Vec::new()
            } else {
                self.index
                    .lock()
                    .map(|mut i| i.owners(s.inode, &hints, self.index_max_age, dumped))
                    .unwrap_or_default()
            };
            // listen() failing: its own socket is bound to the port too.
            if req.syscall == Syscall::Listen
                && state == State::Bound
                && req.caller.as_ref().is_some_and(|c| pids.contains(&c.pid))
            {
                continue;
            }
            self.own(&mut h, pids, req.holder_record.as_ref());
            holders.push(h);
        }
        if let Some(r) = &req.holder_record {
            self.merge_record(req, r, &mut holders, time_wait.is_some(), devices);
        }
        holders.sort_by_key(|h| rank(h.state));
        holders.extend(time_wait);
        // The closed-socket record explains TIME_WAIT leftovers: after them.
        if let Some(i) = holders.iter().position(|h| h.state == State::Closed) {
            let closed = holders.remove(i);
            holders.push(closed);
        }
        holders
    }

    /// Fills the owner of a sock_diag socket from the processes holding it.
    pub(super) fn own(&self, h: &mut Holder, mut pids: Vec<u32>, recorded: Option<&HolderRecord>) {
        pids.sort_unstable();
        let infos: Vec<ProcInfo> = {
            let Ok(mut cache) = self.procs.lock() else {
                return;
            };
            pids.iter().filter_map(|&p| cache.get(p)).collect()
        };
        // The binder the kernel recorded, else the eldest: the one whose
        // parent does not share the socket (nginx's master, not a worker).
        let primary = recorded
            .and_then(|r| infos.iter().find(|i| i.pid == r.pid))
            .or_else(|| infos.iter().find(|i| !pids.contains(&i.ppid)))
            .or_else(|| infos.first());
        if let Some(p) = primary {
            h.pid = Some(p.pid);
            h.comm = Some(p.comm.clone());
            // Exiting, its memory gone: still holding the socket, for a
            // moment, without a command line.
            h.exited = p.exiting;
            h.cmdline = (!p.exiting || !p.cmdline.is_empty()).then(|| p.cmdline.clone());
            h.unit = p.unit.clone();
            h.container = self.container_of(p);
            // dockerd listens on published ports itself when its userland
            // proxy is off: the container is the one bound to this port.
            if h.container.is_none() && p.comm == "dockerd" {
                let proto = if h.state == State::Udp { "udp" } else { "tcp" };
                h.container = self.containers.lock().ok().and_then(|mut c| {
                    c.publishing(h.port, proto)
                        .into_iter()
                        .find(|p| p.running)
                        .map(|p| p.container)
                });
            }
            if let Some(user) = systemd_manager(p) {
                h.socket_unit = systemd::socket_unit(
                    SocketAddr::new(h.addr, h.port),
                    h.state != State::Udp,
                    user.then_some(p.uid),
                );
            }
        }
        h.pids = pids;
    }

    /// Adds what only the kernel saw: the holder's socket options, and the
    /// holder itself when it is gone by now.
    fn merge_record(
        &self,
        req: &Request,
        r: &HolderRecord,
        holders: &mut Vec<Holder>,
        time_wait: bool,
        devices: &Devices,
    ) {
        // The recorded socket is on another device: not in the way.
        if r.device
            .is_some_and(|d| apart(req.proto, req.device, d, devices).is_some())
        {
            return;
        }
        match r.state {
            Some(state) => {
                let state = State::from_kernel(req.proto, state);
                let same = holders
                    .iter_mut()
                    .find(|h| h.addr == r.addr && (h.pids.contains(&r.pid) || h.state == state));
                if let Some(h) = same {
                    h.seen = Seen::KernelAndSockDiag;
                    if let Some(o) = r.opts {
                        h.reuseaddr = Some(o.reuseaddr);
                        h.reuseport = Some(o.reuseport);
                        h.options_from = Some(OptionsFrom::Record);
                    }
                    // No process holds it by now: the record says who did.
                    if h.pid.is_none() {
                        if let Some(k) = self.recorded_holder(req, r, true, devices) {
                            h.pid = k.pid;
                            h.comm = k.comm;
                            h.cmdline = k.cmdline;
                            h.exited = k.exited;
                            h.unit = k.unit;
                            h.container = k.container;
                            h.pids = k.pids;
                        }
                    }
                    return;
                }
            }
            // Closed before the failure: worth naming only as whoever left
            // TIME_WAIT leftovers behind.
            None if !(time_wait && holders.is_empty()) => return,
            None => {}
        }
        if let Some(h) = self.recorded_holder(req, r, true, devices) {
            holders.push(h);
        }
    }

    /// The container `p` runs in, or the one it holds a port for (a
    /// runtime's helper on the host), named from the runtime's files.
    pub(super) fn container_of(&self, p: &ProcInfo) -> Option<Container> {
        let mut resolver = self.containers.lock().ok()?;
        match &p.container {
            Some(id) => {
                let runtime = p.runtime.unwrap_or(containers::Runtime::Unknown);
                let mut found = resolver.get(id, runtime);
                // Under a state directory not known yet: the shim (or
                // conmon) above the process says where its bundles are.
                if !found.is_named()
                    && runtime.cli().is_none()
                    && containers::bundle_root_above(p.ppid)
                        .is_some_and(|root| resolver.learn(root))
                {
                    found = resolver.get(id, runtime);
                }
                // kubelet's cgroups: a pod's container, whatever names it
                // (cri-dockerd's containers are Docker's, named k8s_...).
                found.kubernetes |= found.pod.is_none() && p.cgroup.contains("/kubepods");
                Some(found)
            }
            None => containers::serves(&p.comm, &p.cmdline).and_then(|s| resolver.served(&s)),
        }
    }

    /// A holder described by the kernel's record alone.
    pub(super) fn recorded_holder(
        &self,
        req: &Request,
        r: &HolderRecord,
        look: bool,
        devices: &Devices,
    ) -> Option<Holder> {
        let v6only = r.opts.map(|o| o.v6only);
        let cross_family = overlaps(
            (req.family, req.addr, req.v6only()),
            (r.family, r.addr, v6only),
        );
        // A record that no longer overlaps the request is not in the way.
        let cross_family = match (r.state, cross_family) {
            (Some(_), None) => return None,
            (_, c) => c.unwrap_or(false),
        };
        let state = r
            .state
            .map_or(State::Closed, |s| State::from_kernel(req.proto, s));
        // Read afresh, not from the cache: this is the one question the
        // cache could answer wrong. A process started after the record is
        // a reused pid, not the holder; one not reaped yet has exited.
        let alive = look
            .then(|| procs::proc_info(r.pid))
            .flatten()
            .filter(|p| p.start_time.saturating_mul(self.tick_ns) <= r.running_ns + self.tick_ns)
            .filter(|p| !p.exiting);
        Some(Holder {
            pid: Some(r.pid),
            comm: Some(
                alive
                    .as_ref()
                    .map_or_else(|| r.comm.clone(), |p| p.comm.clone()),
            ),
            cmdline: alive.as_ref().map(|p| p.cmdline.clone()),
            uid: Some(r.uid),
            state,
            addr: r.addr,
            port: req.port,
            exited: look && alive.is_none(),
            unit: alive.as_ref().and_then(|p| p.unit.clone()),
            container: alive.as_ref().and_then(|p| self.container_of(p)),
            kernel: None,
            pids: vec![r.pid],
            sockets: 1,
            time_left_ms: None,
            remote: None,
            v6only: (r.family == Family::Ipv6).then_some(v6only).flatten(),
            reuseaddr: r.opts.map(|o| o.reuseaddr),
            reuseport: r.opts.map(|o| o.reuseport),
            options_from: r.opts.map(|_| OptionsFrom::Record),
            cross_family,
            seen: Seen::Kernel,
            socket_unit: None,
            device: r.device.and_then(|d| devices.named(d)),
            apart: None,
        })
    }
}

/// A UDP socket that no process owns: a tunnel device's, most often.
pub(super) fn unowned_udp(h: &Holder) -> bool {
    h.pid.is_none() && h.state == State::Udp
}

/// Whether `p` is a systemd manager, which holds sockets for its socket
/// units: Some(false) for pid 1, Some(true) for a `systemd --user` (whose
/// cgroup is its user@UID.service's init.scope).
pub(super) fn systemd_manager(p: &ProcInfo) -> Option<bool> {
    let init_scope = p.unit.as_deref() == Some("init.scope");
    match (p.pid, p.comm.as_str()) {
        (1, _) => Some(false),
        (_, "systemd") if init_scope && p.cgroup.contains("/user@") => Some(true),
        _ => None,
    }
}

/// Where the holder most likely is: the recorded binder, the children it
/// forked (workers inherit the listening socket), the caller.
fn hints(req: &Request) -> Vec<u32> {
    let mut hints = Vec::new();
    if let Some(r) = &req.holder_record {
        hints.push(r.pid);
        hints.extend(procs::children(r.pid));
    }
    hints.extend(req.caller.as_ref().map(|c| c.pid));
    hints
}

/// Whether socket `s` is in `req`'s way by its address (Some: whether
/// from the other family) and not kept apart by its device or VRF.
fn in_the_way(req: &Request, s: &DiagSocket, devices: &Devices) -> Option<bool> {
    let family = Family::try_from(u16::from(s.family)).ok()?;
    let cross_family = overlaps(
        (req.family, req.addr, req.v6only()),
        (family, s.local.ip(), s.v6only),
    )?;
    apart(req.proto, req.device, s.bound_dev_if, devices)
        .is_none()
        .then_some(cross_family)
}

/// A holder for socket `s` before its owner is known.
pub(super) fn bare(state: State, s: &DiagSocket, cross_family: bool) -> Holder {
    let remote = matches!(state, State::Connection(_)).then(|| match s.remote {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    });
    Holder {
        pid: None,
        comm: None,
        cmdline: None,
        uid: (state != State::TimeWait).then_some(s.uid),
        state,
        addr: s.local.ip(),
        port: s.local.port(),
        exited: false,
        unit: None,
        container: None,
        kernel: None,
        pids: Vec::new(),
        sockets: 1,
        time_left_ms: None,
        remote,
        v6only: s.v6only,
        reuseaddr: None,
        reuseport: None,
        options_from: None,
        cross_family,
        seen: Seen::SockDiag,
        socket_unit: None,
        device: None,
        apart: None,
    }
}

/// Most telling first.
pub(super) fn rank(state: State) -> u8 {
    match state {
        State::Listen => 0,
        State::Udp => 1,
        State::Bound => 2,
        State::Connection(_) => 3,
        State::TimeWait => 4,
        State::Closed => 5,
    }
}
