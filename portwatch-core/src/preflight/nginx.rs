//! nginx's configuration as `portwatch check --nginx` reads it: every
//! `listen` of every server block (`http`, `stream`, `mail`), one socket
//! per address and port as nginx itself makes them.
//!
//! nginx's own rules, read from its sources (1.22, and 1.25+ for `quic`)
//! and checked against the real nginx in the tests:
//! - the same address and port in several server blocks is one socket;
//! - per protocol, family and port, a wildcard (`80`, `*:80`, `[::]:80`)
//!   takes the specific addresses of that port beside it onto its own
//!   socket, unless they ask for a socket of their own (`bind`, or any
//!   socket option: `reuseport`, `ipv6only=`, `backlog=`, `rcvbuf=`,
//!   `sndbuf=`, `deferred`, `fastopen=`, `so_keepalive=`);
//! - IPv4 and IPv6 are separate: `[::]:80 ipv6only=off` beside `80` is two
//!   sockets, and the second to bind fails (dual-stack in the plan);
//! - every listener has SO_REUSEADDR; `[::]` has IPV6_V6ONLY unless
//!   `ipv6only=off`; a host name binds every address it resolves to
//!   (getaddrinfo, AF_UNSPEC, AI_ADDRCONFIG, as nginx asks);
//! - an http server without `listen` gets `*:80` when nginx runs as root,
//!   `*:8000` otherwise.
//!
//! `--nginx` runs `nginx -T` (in a network namespace of its own: nginx's
//! test mode binds and listens on every free `listen` address for a
//! moment, which could fail the very deploy checked); `--nginx=FILE`
//! reads FILE and its includes and runs nothing.

mod conf;

use std::{
    collections::BTreeMap,
    ffi::CString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

pub use conf::{split_dump, Directive, Files};

use super::{Entry, InputError, Origin, Ours, Plan, Unchecked};
use crate::request::{Binding, Opts, Proto};

/// What `check --nginx[=FILE] [--reload]` names.
#[derive(Debug, Clone, Default)]
pub struct NginxInput {
    /// A configuration file; None: the one `nginx -T` reads.
    pub file: Option<PathBuf>,
    /// The deploy reloads nginx (its sockets are kept) rather than
    /// starting it.
    pub reload: bool,
    /// The uid nginx starts as (`--user`); None or 0: root, whose server
    /// blocks without `listen` get port 80 (8000 otherwise).
    pub user: Option<u32>,
}

/// How long `nginx -T` may take.
const DUMP_TIMEOUT: Duration = Duration::from_secs(5);

/// The default configuration of Debian's and nginx.org's packages, for a
/// running master started without `-c` when FILE was named.
const DEFAULT_CONF: &str = "/etc/nginx/nginx.conf";

/// The plan of an nginx configuration.
pub fn read(input: &NginxInput) -> Result<Plan, InputError> {
    let (main, files) = match &input.file {
        Some(f) => (f.clone(), Files::Disk),
        None => {
            let (main, files) = dump()?;
            (main, Files::Dump(files))
        }
    };
    let tree = conf::parse(&main, &files)?;
    let root = input.user.is_none_or(|u| u == 0);
    let mut plan = plan(&tree, root, &resolve)?;
    let default = match &input.file {
        None => main.clone(),
        Some(_) => PathBuf::from(DEFAULT_CONF),
    };
    let masters = masters(&main, &default);
    if !masters.is_empty() {
        let ours = Ours::Nginx {
            masters,
            reload: input.reload,
            // nginx reads a relative -c from its prefix, not from here.
            conf: input
                .file
                .as_ref()
                .map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())),
        };
        for e in &mut plan.entries {
            e.ours = Some(ours.clone());
        }
    }
    Ok(plan)
}

/// `nginx -T`, run in a network namespace of its own (with `lo` up and
/// non-local binds allowed, so every address binds there): its dump split
/// into files, and the main file's name.
fn dump() -> Result<(PathBuf, BTreeMap<PathBuf, String>), InputError> {
    let here = "nginx -T";
    let out = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<u8>, InputError> {
            private_netns().map_err(|e| {
                InputError::file(here, format!(
                    "cannot make a network namespace for it ({e}): nginx's test mode binds every listen address, so portwatch runs it only where that takes no port; use --nginx=FILE to read the files without running nginx"
                ))
            })?;
            let mut cmd = Command::new(nginx_binary());
            cmd.arg("-T");
            crate::subprocess::output(&mut cmd, DUMP_TIMEOUT).map_err(nginx_failed)
        })
        .join()
        .unwrap_or_else(|_| Err(InputError::file(here, "the thread running it panicked")))
    })?;
    let text = String::from_utf8(out)
        .map_err(|_| InputError::file(here, "its output is not UTF-8 text"))?;
    split_dump(&text).map_err(|e| InputError::file(here, e))
}

/// `nginx` on PATH, else where Debian installs it.
fn nginx_binary() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// A failed `nginx -T` as one line: its `[emerg]` line, placed at the
/// file:line nginx names when it names one.
fn nginx_failed(e: crate::subprocess::SubprocessError) -> InputError {
    let here = "nginx -T";
    let crate::subprocess::SubprocessError::Failed { stderr, status, .. } = &e else {
        return InputError::file(here, e.to_string());
    };
    let line = stderr
        .lines()
        .find(|l| l.contains("[emerg]"))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim();
    // `2026/12/07 16:16:10 [emerg] 2948#2948: WHAT in FILE:LINE`
    // or `nginx: [emerg] WHAT in FILE:LINE` before its log is open.
    let what = line.split_once("] ").map_or(line, |(_, r)| {
        r.split_once(": ")
            .filter(|(pid, _)| {
                pid.split('#')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .map_or(r, |(_, w)| w)
    });
    let hint = if what.contains("host not found") {
        " (nginx -T runs in a network namespace of its own, where only /etc/hosts resolves names: use --nginx=FILE)"
    } else {
        ""
    };
    if let Some((what, place)) = what.rsplit_once(" in ") {
        if let Some((file, l)) = place.rsplit_once(':') {
            if let Ok(l) = l.parse() {
                return InputError::at(file, l, None, format!("{what}{hint}"));
            }
        }
    }
    let what = if what.is_empty() {
        format!("failed ({status})")
    } else {
        format!("{what}{hint}")
    };
    InputError::file(here, what)
}

/// Moves the calling thread into a new network namespace with `lo` up and
/// `ip_nonlocal_bind` on, where the children it starts bind nothing of
/// the host's.
fn private_netns() -> std::io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
    // /proc/sys/net follows the network namespace of the thread that
    // opens it.
    for f in ["ipv4/ip_nonlocal_bind", "ipv6/ip_nonlocal_bind"] {
        // A kernel without IPv6 has no ipv6 sysctls, and needs none.
        match std::fs::write(format!("/proc/sys/net/{f}"), "1") {
            Err(e) if f.starts_with("ipv4") => return Err(e),
            _ => {}
        }
    }
    lo_up()
}

/// `ip link set lo up`, with the ioctl.
fn lo_up() -> std::io::Result<()> {
    let s = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid empty request.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *b as libc::c_char;
    }
    use std::os::fd::AsRawFd as _;
    // SAFETY: a socket we own and an ifreq naming "lo", valid for the call.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS as libc::Ioctl, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union's flags member, just filled by SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Which nginx module a server block belongs to: each keeps its own
/// sockets, and its own rules for the same address twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Module {
    Http,
    Stream,
    Mail,
}

/// One address of one `listen` directive.
#[derive(Debug, Clone)]
struct Listen {
    addr: SocketAddr,
    proto: Proto,
    /// Asks for a socket of its own (`bind`, or a socket option).
    bind: bool,
    /// Socket options were given (nginx allows them once per address).
    set: bool,
    reuseport: bool,
    ipv6only: bool,
    default_server: bool,
    /// The server block it belongs to.
    server: usize,
    origin: Origin,
}

/// Resolves a host name as nginx does: every IPv4 and IPv6 address.
pub type Resolver = dyn Fn(&str) -> Result<Vec<IpAddr>, String>;

/// getaddrinfo with nginx's hints (AF_UNSPEC, SOCK_STREAM,
/// AI_ADDRCONFIG), in getaddrinfo's order, without repeats.
pub fn resolve(host: &str) -> Result<Vec<IpAddr>, String> {
    let c = CString::new(host).map_err(|_| "a NUL byte".to_owned())?;
    // SAFETY: addrinfo is plain data; zeroed, then the hints set.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    hints.ai_flags = libc::AI_ADDRCONFIG;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C strings and hints; `res` is freed below.
    let rc = unsafe { libc::getaddrinfo(c.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 {
        return Err("host not found".into());
    }
    let mut out = Vec::new();
    let mut p = res;
    while !p.is_null() {
        // SAFETY: a node of the list getaddrinfo returned.
        let ai = unsafe { &*p };
        let ip = match ai.ai_family {
            // SAFETY: ai_addr of an AF_INET entry is a sockaddr_in.
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(unsafe {
                (*(ai.ai_addr as *const libc::sockaddr_in)).sin_addr.s_addr
            })))),
            // SAFETY: ai_addr of an AF_INET6 entry is a sockaddr_in6.
            libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(unsafe {
                (*(ai.ai_addr as *const libc::sockaddr_in6))
                    .sin6_addr
                    .s6_addr
            }))),
            _ => None,
        };
        if let Some(ip) = ip.filter(|ip| !out.contains(ip)) {
            out.push(ip);
        }
        p = ai.ai_next;
    }
    // SAFETY: the list getaddrinfo allocated, freed once.
    unsafe { libc::freeaddrinfo(res) };
    if out.is_empty() {
        return Err("host not found".into());
    }
    Ok(out)
}

/// The plan of a parsed configuration: `root`, nginx runs as root (the
/// default port of a server without `listen`); `resolve` names hosts.
pub fn plan(tree: &[Directive], root: bool, resolve: &Resolver) -> Result<Plan, InputError> {
    let mut plan = Plan::default();
    let mut server = 0;
    for block in tree {
        let module = match block.name() {
            "http" => Module::Http,
            "stream" => Module::Stream,
            "mail" => Module::Mail,
            _ => continue,
        };
        let mut listens = Vec::new();
        for s in block.block.iter().flatten() {
            if s.name() != "server" {
                continue;
            }
            let Some(body) = &s.block else { continue };
            server += 1;
            let mut any = false;
            for d in body.iter().filter(|d| d.name() == "listen") {
                any = true;
                listens.extend(listen(d, module, server, resolve, &mut plan.unchecked)?);
            }
            if !any {
                match module {
                    Module::Http => listens.push(default_listen(s, server, root)),
                    _ => {
                        return Err(s.error(format!(
                            "no \"listen\" is defined for server in {}:{}",
                            s.file.display(),
                            s.line
                        )))
                    }
                }
            }
        }
        plan.entries.extend(sockets(module, listens)?);
    }
    Ok(plan)
}

/// nginx's `listen` of a server block without one.
fn default_listen(s: &Directive, server: usize, root: bool) -> Listen {
    let port = if root { 80 } else { 8000 };
    Listen {
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        proto: Proto::Tcp,
        bind: false,
        set: false,
        reuseport: false,
        ipv6only: true,
        default_server: false,
        server,
        origin: Origin::at(
            s.file.as_ref(),
            Some(s.line),
            format!(
                "server without listen: nginx's default *:{port} ({})",
                if root { "as root" } else { "not as root" }
            ),
        ),
    }
}

/// One `listen` directive: its addresses (a host name's every address, a
/// port range's every port) with its options.
fn listen(
    d: &Directive,
    module: Module,
    server: usize,
    resolve: &Resolver,
    unchecked: &mut Vec<Unchecked>,
) -> Result<Vec<Listen>, InputError> {
    let what = d.words.join(" ");
    let origin = Origin::at(d.file.as_ref(), Some(d.line), what.clone());
    let Some(url) = d.words.get(1) else {
        return Err(d.error("invalid number of arguments in \"listen\" directive"));
    };
    if url.len() >= 5 && url[..5].eq_ignore_ascii_case("unix:") {
        unchecked.push(Unchecked {
            from: origin,
            why: "a unix socket: no port to check".into(),
        });
        return Ok(Vec::new());
    }
    let mut l = Listen {
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        proto: Proto::Tcp,
        bind: false,
        set: false,
        reuseport: false,
        ipv6only: true,
        default_server: false,
        server,
        origin,
    };
    for p in &d.words[2..] {
        options(&mut l, p, module).map_err(|e| d.error(e))?;
    }
    let default_port = if module == Module::Http { 80 } else { 0 };
    let (hosts, ports) = parse_url(url, default_port, resolve)
        .map_err(|e| d.error(format!("{e} in \"{url}\" of the \"listen\" directive")))?;
    let mut out = Vec::new();
    for ip in hosts {
        for port in ports.clone() {
            let mut one = l.clone();
            one.addr = SocketAddr::new(ip, port);
            out.push(one);
        }
    }
    Ok(out)
}

/// One option of `listen` (http, stream or mail).
fn options(l: &mut Listen, p: &str, module: Module) -> Result<(), String> {
    let bind_opt = |l: &mut Listen| {
        l.set = true;
        l.bind = true;
    };
    let number = |v: &str| v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty();
    let size = |v: &str| {
        let v = v.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
        number(v)
    };
    let (key, value) = p.split_once('=').map_or((p, None), |(k, v)| (k, Some(v)));
    match (key, value) {
        ("default_server" | "default", None) if module == Module::Http => {
            l.default_server = true;
        }
        ("bind", None) => bind_opt(l),
        ("backlog", Some(v)) if number(v) && v != "0" && !v.is_empty() => bind_opt(l),
        ("fastopen", Some(v)) if number(v) => bind_opt(l),
        ("rcvbuf" | "sndbuf", Some(v)) if size(v) => bind_opt(l),
        ("deferred", None) if module == Module::Http => bind_opt(l),
        // Not on Linux: nginx warns and ignores it.
        ("accept_filter", Some(_)) if module == Module::Http => {}
        ("ipv6only", Some("on")) => {
            l.ipv6only = true;
            bind_opt(l);
        }
        ("ipv6only", Some("off")) => {
            l.ipv6only = false;
            bind_opt(l);
        }
        ("ipv6only", Some(v)) => return Err(format!("invalid ipv6only flags \"{v}\"")),
        ("reuseport", None) => {
            l.reuseport = true;
            bind_opt(l);
        }
        ("so_keepalive", Some(_)) => bind_opt(l),
        ("ssl" | "proxy_protocol", None) => {}
        ("http2", None) if module == Module::Http => {}
        // HTTP/3 (nginx 1.25+): a UDP socket of its own per address.
        ("quic", None) if module == Module::Http => l.proto = Proto::Udp,
        ("udp", None) if module == Module::Stream => l.proto = Proto::Udp,
        ("backlog" | "fastopen" | "rcvbuf" | "sndbuf", Some(v)) => {
            return Err(format!("invalid {key} \"{v}\""))
        }
        _ => return Err(format!("invalid parameter \"{p}\"")),
    }
    Ok(())
}

/// `ngx_parse_url` for a listen: the addresses (a host name resolved) and
/// the ports (a range `8000-8010` expanded).
fn parse_url(
    url: &str,
    default_port: u16,
    resolve: &Resolver,
) -> Result<(Vec<IpAddr>, std::ops::RangeInclusive<u16>), String> {
    let ports = |s: &str| -> Result<std::ops::RangeInclusive<u16>, String> {
        let one = |p: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err("invalid port".to_owned()),
        };
        match s.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (one(a)?, one(b)?);
                if a > b {
                    return Err("invalid port range".into());
                }
                Ok(a..=b)
            }
            None => one(s).map(|p| p..=p),
        }
    };
    let need_port = |p: u16| {
        if p == 0 {
            Err("no port".to_owned())
        } else {
            Ok(p..=p)
        }
    };
    if let Some(rest) = url.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("invalid host")?;
        let ip: Ipv6Addr = host.parse().map_err(|_| "invalid IPv6 address")?;
        let range = match after {
            "" => need_port(default_port)?,
            _ => ports(after.strip_prefix(':').ok_or("invalid host")?)?,
        };
        return Ok((vec![IpAddr::V6(ip)], range));
    }
    if url.contains(['/', '?']) {
        return Err("invalid host".into());
    }
    let (host, range) = match url.split_once(':') {
        Some((host, port)) => (host, ports(port)?),
        // A port alone (or a range) is the IPv4 wildcard.
        None if url.bytes().next().is_some_and(|b| b.is_ascii_digit())
            && url.bytes().all(|b| b.is_ascii_digit() || b == b'-') =>
        {
            return Ok((vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)], ports(url)?));
        }
        None => (url, need_port(default_port)?),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if host == "*" {
        return Ok((vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)], range));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((vec![IpAddr::V4(ip)], range));
    }
    Ok((resolve(host)?, range))
}

/// One address of a port: its listens, in order, and which of them gave
/// the socket's options.
struct Addr {
    listens: Vec<Listen>,
    opts: usize,
}

/// The sockets nginx opens for one module's listens (see the module's doc).
fn sockets(module: Module, listens: Vec<Listen>) -> Result<Vec<Entry>, InputError> {
    // (proto, family, port) in order of appearance, each with its addresses.
    let mut ports: Vec<((Proto, bool, u16), Vec<Addr>)> = Vec::new();
    for l in listens {
        let key = (l.proto, l.addr.is_ipv6(), l.addr.port());
        let i = match ports.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                ports.push((key, Vec::new()));
                ports.len() - 1
            }
        };
        let addrs = &mut ports[i].1;
        match addrs
            .iter_mut()
            .find(|a| a.listens[0].addr.ip() == l.addr.ip())
        {
            None => addrs.push(Addr {
                listens: vec![l],
                opts: 0,
            }),
            Some(same) => {
                same_address(module, &same.listens, &l)?;
                // The socket's options are those of the listen that set them.
                if l.set {
                    same.opts = same.listens.len();
                }
                same.listens.push(l);
            }
        }
    }
    let mut entries = Vec::new();
    for (_, addrs) in ports {
        let wildcard = addrs
            .iter()
            .position(|a| a.listens[0].addr.ip().is_unspecified());
        let mut mine = Vec::new();
        let mut served = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            if wildcard.is_some_and(|w| w != i) && !a.listens[a.opts].bind {
                served.push(i);
            } else {
                mine.push((i, entry(a)));
            }
        }
        // Addresses without a socket of their own are served by the
        // wildcard's: their directives are among its origins.
        if let Some((_, e)) = mine.iter_mut().find(|(i, _)| Some(*i) == wildcard) {
            let label = super::label(&e.binding);
            for i in served {
                for l in &addrs[i].listens {
                    let mut o = l.origin.clone();
                    o.what = format!("{} (served by the {label} socket)", o.what);
                    e.from.push(o);
                }
            }
        }
        entries.extend(mine.into_iter().map(|(_, e)| e));
    }
    Ok(entries)
}

/// nginx's errors for an address listed twice.
fn same_address(module: Module, earlier: &[Listen], l: &Listen) -> Result<(), InputError> {
    let err = |what: String| {
        let o = &l.origin;
        InputError {
            file: o.file.clone(),
            line: o.line,
            col: None,
            what,
        }
    };
    if module != Module::Http {
        return Err(err(format!(
            "duplicate \"{}\" address and port pair",
            l.addr
        )));
    }
    if earlier.iter().any(|e| e.server == l.server) {
        return Err(err(format!("a duplicate listen {}", l.addr)));
    }
    if l.set && earlier.iter().any(|e| e.set) {
        return Err(err(format!("duplicate listen options for {}", l.addr)));
    }
    if l.default_server && earlier.iter().any(|e| e.default_server) {
        return Err(err(format!("a duplicate default server for {}", l.addr)));
    }
    Ok(())
}

/// The entry of one socket: its options, every origin.
fn entry(a: &Addr) -> Entry {
    let l = &a.listens[a.opts];
    let opts = Opts {
        // nginx sets SO_REUSEADDR on every listening socket.
        reuseaddr: true,
        reuseport: l.reuseport,
        v6only: l.addr.is_ipv6() && l.ipv6only,
        ..Opts::default()
    };
    Entry {
        binding: Binding {
            proto: l.proto,
            addr: l.addr.ip(),
            port: l.addr.port(),
            opts,
            device: None,
        },
        from: a.listens.iter().map(|l| l.origin.clone()).collect(),
        ours: None,
    }
}

/// The running nginx masters of configuration `conf` (compared by the
/// file's identity, through each master's root): comm `nginx`, command
/// line `nginx: master process ...` with `-c` naming it, or without `-c`
/// when `conf` is `default`.
pub fn masters(conf: &Path, default: &Path) -> Vec<u32> {
    let Ok(want) = std::fs::metadata(conf).map(|m| (m.dev(), m.ino())) else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for pid in dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Some(info) = crate::holders::procs::proc_info(pid) else {
            continue;
        };
        let Some(args) = info.cmdline.strip_prefix("nginx: master process ") else {
            continue;
        };
        if info.comm != "nginx" {
            continue;
        }
        let Some(path) = master_conf(args, default) else {
            continue;
        };
        // The master's own view of the file system (a container's, or
        // another mount namespace's).
        let seen =
            Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(&path));
        if std::fs::metadata(&seen).is_ok_and(|m| (m.dev(), m.ino()) == want) {
            found.push(pid);
        }
    }
    found
}

/// The configuration file of a master whose command line (after `nginx:
/// master process `) is `args`: `-c FILE` (relative to `-p PREFIX`), or
/// `default`. None when it cannot be told.
fn master_conf(args: &str, default: &Path) -> Option<PathBuf> {
    let words: Vec<&str> = args.split(' ').skip(1).collect();
    let value = |flag: &str| {
        words.iter().enumerate().find_map(|(i, w)| {
            if *w == flag {
                words.get(i + 1).map(|v| v.to_string())
            } else {
                w.strip_prefix(flag)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            }
        })
    };
    match value("-c") {
        None => Some(default.to_path_buf()),
        Some(c) if c.starts_with('/') => Some(PathBuf::from(c)),
        Some(c) => value("-p").map(|p| Path::new(&p).join(c)),
    }
}

#[cfg(test)]
mod tests;
