//! `portwatch who`: the sockets on a port in one network namespace, who
//! holds them, and whether a new bind() would succeed now (plain,
//! SO_REUSEADDR, SO_REUSEPORT), with the reason, diagnosis and fix `watch`
//! would give. One shot, without any eBPF.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{self, Write as _},
    os::fd::AsFd,
    path::Path,
};

use portwatch_core::{
    bindcheck::{self, NewBind, Rule, Variant},
    diagnose::diagnose,
    holders::{
        containers::{Containers, Publishing},
        dnat, netns, overlaps, sockdiag, sysctl, Devices, Enricher, Evidence, State, TrialFailed,
    },
    output::who::{self as out, Answer, BindVerdict, Checked, WhoReport},
    request::{Errno, Family, Proto, Request, Syscall},
};

use super::Error;
use crate::cli::WhoArgs;

/// Exit status of `who`: a plain bind would fail now (scripts rely on it).
pub const EXIT_TAKEN: u8 = 1;

/// Runs `portwatch who`; Ok(true) when a plain bind would succeed now.
pub fn run(args: &WhoArgs) -> Result<bool, Error> {
    let ns = args.netns.as_deref().map(open_netns).transpose()?;
    let report = in_netns(ns.as_ref(), |inode| look(args, inode))?;
    if !nix::unistd::geteuid().is_root() && report.sockets.iter().any(|h| h.pid.is_none()) {
        eprintln!("portwatch: not root: the processes of other users' sockets cannot be named");
    }
    answer(&report, args.json)?;
    Ok(report.free)
}

/// A network namespace named on the command line: its file, inode and path.
pub(crate) struct NamedNetns<'a> {
    file: File,
    inode: u32,
    path: &'a Path,
}

/// Opens the namespace file named by `--netns`.
pub(crate) fn open_netns(path: &Path) -> Result<NamedNetns<'_>, Error> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            Error::Usage(format!("network namespace '{}': {e}", path.display()))
        }
        _ => Error::Unsupported(format!("network namespace '{}': {e}", path.display())),
    })?;
    let inode = nix::sys::stat::fstat(file.as_fd())
        .map_err(|e| Error::Unsupported(format!("network namespace '{}': {e}", path.display())))?
        .st_ino;
    Ok(NamedNetns {
        file,
        inode: inode as u32,
        path,
    })
}

/// Runs `f` with the inode of `ns` (or of portwatch's own namespace) on a
/// thread of its own inside that namespace: setns moves only the calling
/// thread, and the SO_REUSEPORT trial changes the thread's fsuid for a
/// moment.
pub(crate) fn in_netns<T: Send>(
    ns: Option<&NamedNetns<'_>>,
    f: impl FnOnce(u32) -> Result<T, Error> + Send,
) -> Result<T, Error> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| match ns {
                Some(ns) => {
                    netns::in_netns(ns.file.as_fd(), || f(ns.inode)).map_err(|e| {
                        match e.raw_os_error() {
                            Some(libc::EINVAL) => Error::Usage(format!(
                                "'{}' is not a network namespace",
                                ns.path.display()
                            )),
                            _ => Error::Unsupported(format!(
                                "cannot enter network namespace '{}': {e}",
                                ns.path.display()
                            )),
                        }
                    })?
                }
                None => {
                    let inode = netns::current_netns().ok_or_else(|| {
                        Error::Unsupported("cannot read /proc/thread-self/ns/net".into())
                    })?;
                    f(inode)
                }
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Writes the answer to stdout, as text or JSON. A closed pipe (`| head`,
/// `| grep -q`) is no failure: the exit status still answers.
pub(crate) fn answer(report: &WhoReport, json: bool) -> Result<(), Error> {
    let mut stdout = io::stdout().lock();
    let written = if json {
        out::write_json(&mut stdout, report)
    } else {
        out::write_human(&mut stdout, report)
    };
    match written.and_then(|()| stdout.flush()) {
        // 3, not 1: `who`'s and `wait`'s 1 is an answer ("taken").
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Error::Unsupported(format!("writing the answer: {e}")))
        }
        _ => Ok(()),
    }
}

/// Everything, in the calling thread's network namespace (`netns`).
pub(crate) fn look(args: &WhoArgs, netns: u32) -> Result<WhoReport, Error> {
    let (port, proto) = args.port;
    let addr = args.addr;
    // Bit 13 asks for bound-but-inactive TCP sockets; a kernel without
    // TCP_BOUND_INACTIVE ignores it, so no BTF is needed to decide.
    let sockets = sockdiag::dump(proto.code() as u8, Some(port), true).map_err(|e| {
        Error::Unsupported(match e.raw_os_error() {
            Some(libc::ENOENT) => format!(
                "the kernel has no sock_diag handler for {} (load the inet_diag and {}_diag modules)",
                proto.name(),
                proto.name()
            ),
            _ => format!("sock_diag: {e}"),
        })
    })?;
    let sysctls = sysctl::sysctls();
    let devices = Devices::here(args.device.is_some(), &sockets, sysctls.tcp_l3mdev_accept)
        .map_err(|e| Error::Unsupported(format!("listing the network devices: {e}")))?;
    let device = device_index(args.device.as_deref(), &devices, netns)?;
    let base = Request {
        netns,
        proto,
        family: Family::of(addr),
        addr,
        port,
        opts: Some(Variant::Plain.opts()),
        syscall: Syscall::Bind,
        errno: None,
        caller: None,
        holder_record: None,
        device,
    };
    let enricher = Enricher::new(true);
    let listed = enricher.each_socket(&base, &sockets, &devices);
    let asked = Asked {
        bind: NewBind {
            proto,
            addr,
            device,
        },
        port,
        device: args.device.as_deref(),
        no_trial: args.no_trial,
        beside_apart: listed.iter().any(|h| h.apart.is_some()),
    };
    let reuseport_uid = reuseport_uid(&asked, &sockets, &devices);
    let mut binds: Vec<BindVerdict> = Variant::ALL
        .into_iter()
        .map(|variant| asked.answer(variant, reuseport_uid, &sockets, &devices))
        .collect();
    // The verdicts come after every trial: no fix may recommend an option
    // whose trial bind has just failed.
    let failed = |v: Variant| {
        binds
            .iter()
            .any(|b| b.option == v && b.checked == Checked::TrialBind && b.result == Answer::Fails)
    };
    let trial_failed = TrialFailed {
        reuseaddr: failed(Variant::Reuseaddr),
        reuseport: failed(Variant::Reuseport),
    };
    for b in &mut binds {
        if b.result == Answer::Ok {
            continue;
        }
        let req = Request {
            opts: Some(b.option.opts()),
            errno: b.errno.filter(|&e| e != Errno::ADDRINUSE),
            ..base.clone()
        };
        let evidence = Evidence {
            trial_failed,
            ..enricher.evidence_from(&req, &sockets, sysctls.clone(), &devices)
        };
        b.verdict = Some(diagnose(&req, &evidence));
    }
    // Docker's port bindings live in the host's namespace, which is where
    // `who` stands without --netns.
    let proto_name = proto.name();
    let named: Vec<&str> = listed
        .iter()
        .filter_map(|h| h.container.as_ref().map(|c| c.id.as_str()))
        .collect();
    let published: Vec<Publishing> = if args.netns.is_none() {
        Containers::of_this_host()
            .publishing(port, &proto_name)
            .into_iter()
            .filter(|p| p.running && !named.contains(&p.container.id.as_str()))
            .collect()
    } else {
        Vec::new()
    };
    let dnat = dnat::dnat_rules(port, &proto_name);
    Ok(WhoReport {
        proto,
        addr,
        device: devices.named(device),
        port,
        netns,
        free: binds[0].result == Answer::Ok && published.is_empty() && dnat.is_empty(),
        published,
        dnat,
        verdict: binds[0].verdict.clone(),
        sockets: listed,
        binds,
    })
}

/// The index of `--device` in the namespace; a name it lacks is a usage
/// error.
fn device_index(name: Option<&str>, devices: &Devices, netns: u32) -> Result<u32, Error> {
    let Some(name) = name else {
        return Ok(0);
    };
    devices.index_of(name).ok_or_else(|| {
        Error::Usage(format!(
            "no network device '{}' in network namespace {netns}",
            name.escape_debug()
        ))
    })
}

/// SO_REUSEPORT shares only within one uid: the uid of the live sockets in
/// the way, when there is one, else ours.
fn reuseport_uid(asked: &Asked<'_>, sockets: &[sockdiag::DiagSocket], devices: &Devices) -> u32 {
    let NewBind {
        proto,
        addr,
        device,
    } = asked.bind;
    let owners: BTreeSet<u32> = sockets
        .iter()
        .filter(|s| {
            State::from_kernel(proto, s.state) != State::TimeWait
                && bindcheck::apart(proto, device, s.bound_dev_if, devices).is_none()
                && Family::try_from(u16::from(s.family)).is_ok_and(|f| {
                    overlaps((Family::of(addr), addr, false), (f, s.local.ip(), s.v6only)).is_some()
                })
        })
        .map(|s| s.uid)
        .collect();
    let me = nix::unistd::geteuid().as_raw();
    match owners.len() {
        1 => owners.first().copied().unwrap_or(me),
        _ => me,
    }
}

/// The bind `who` asks about.
struct Asked<'a> {
    bind: NewBind,
    port: u16,
    /// `--device`, for the trial binds.
    device: Option<&'a str>,
    no_trial: bool,
    /// A socket on the port is kept apart by its device or VRF: a
    /// SO_REUSEPORT trial that succeeds beside it would leave the kernel's
    /// fast-reuse state of the port behind (`inet_csk_update_fastreuse`
    /// marks the bucket for the trial's uid and address, and it stays when
    /// the trial closes), letting later SO_REUSEPORT binds of that uid skip
    /// the conflict check against sockets that never set SO_REUSEPORT.
    beside_apart: bool,
}

impl Asked<'_> {
    /// The answer for `variant`: a trial bind's, else the rules'.
    fn answer(
        &self,
        variant: Variant,
        reuseport_uid: u32,
        sockets: &[sockdiag::DiagSocket],
        devices: &Devices,
    ) -> BindVerdict {
        let me = nix::unistd::geteuid().as_raw();
        let uid = if variant == Variant::Reuseport {
            reuseport_uid
        } else {
            me
        };
        let NewBind { proto, addr, .. } = self.bind;
        let rule = bindcheck::by_rules(self.bind, variant, uid, sockets, devices);
        // A UDP socket that shares the port receives datagrams from the
        // moment it is bound: never risk taking one from the holder.
        let shares_udp = proto == Proto::Udp && matches!(rule, Rule::IfHolderSet(_));
        let trial = if self.no_trial {
            Err("--no-trial".to_owned())
        } else if shares_udp {
            Err("no trial bind: a UDP socket sharing the port would receive its datagrams".into())
        } else if variant == Variant::Reuseport && self.beside_apart {
            Err("no trial bind: beside a socket on another device or VRF, a SO_REUSEPORT trial would change how the kernel checks later SO_REUSEPORT binds of the port".into())
        } else {
            let as_uid = (uid != me).then_some(uid);
            bindcheck::trial(proto, addr, self.port, variant, as_uid, self.device)
                .map_err(|e| format!("no trial bind ({e})"))
        };
        let (result, errno, checked, note) = match trial {
            Ok(None) => (Answer::Ok, None, Checked::TrialBind, None),
            Ok(Some(e)) => (Answer::Fails, Some(e), Checked::TrialBind, None),
            Err(why) => {
                let why = (!self.no_trial).then_some(why);
                match rule {
                    Rule::Free => (Answer::Ok, None, Checked::Rules, why),
                    Rule::Taken => (Answer::Fails, Some(Errno::ADDRINUSE), Checked::Rules, why),
                    Rule::IfHolderSet(o) => {
                        let hangs = format!(
                            "only if the holder set {o} too{} (sock_diag does not show it)",
                            if o == "SO_REUSEPORT" {
                                format!(" and the new socket is uid {uid}'s")
                            } else {
                                String::new()
                            }
                        );
                        let note = match why {
                            Some(why) => format!("{hangs}; {why}"),
                            None => hangs,
                        };
                        (Answer::Unknown, None, Checked::Rules, Some(note))
                    }
                }
            }
        };
        BindVerdict {
            option: variant,
            result,
            errno,
            checked,
            uid,
            note,
            verdict: None,
        }
    }
}
