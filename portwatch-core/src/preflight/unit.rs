//! systemd socket units as `portwatch check --unit` reads them: every
//! `ListenStream=` and `ListenDatagram=`, with `BindIPv6Only=`,
//! `ReusePort=`, `FreeBind=`, `Transparent=` and `BindToDevice=`, as
//! systemd (`socket_address_parse`, `socket_address_listen`) reads and
//! binds them:
//! - a bare port is `[::]:PORT` (the IPv4 wildcard only on a kernel
//!   without IPv6), with IPV6_V6ONLY as `BindIPv6Only=` says (`default`:
//!   the kernel's `net.ipv6.bindv6only`, off unless changed: dual-stack);
//! - `ADDR:PORT`, `[ADDR]:PORT`, each with an optional `%IFNAME` after it
//!   (an IPv6 scope); a path, `@abstract`, `vsock:`, and the other
//!   `Listen*=` kinds have no port to check;
//! - an empty `Listen*=` assignment resets every listen before it;
//! - every socket has SO_REUSEADDR.
//!
//! A unit name is looked up where systemd looks (the first of
//! [`UNIT_DIRS`] that has it, a template `foo@.socket` for `foo@bar.socket`),
//! with its drop-ins (`NAME.d/*.conf`, the template's and `socket.d/` in
//! every directory, the first directory's file of each name winning, in
//! order of file name); a path is read with the drop-ins beside it
//! (`PATH.d/*.conf`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use super::{read_input, Entry, InputError, Origin, Ours, Plan, Unchecked};
use crate::request::{Binding, Opts, Proto};

/// Where systemd's system manager finds unit files, highest priority first.
pub const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The plan of a socket unit: a unit name (`demo.socket`, found where
/// systemd finds it) or a unit file's path.
pub fn read(unit: &str) -> Result<Plan, InputError> {
    let bindv6only =
        std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|s| s.trim() == "1");
    let ipv6 = Path::new("/proc/net/if_inet6").exists();
    let files = find(unit, UNIT_DIRS)?;
    let name = files.name.clone();
    let mut texts = Vec::new();
    for f in std::iter::once(&files.main).chain(&files.dropins) {
        texts.push((f.clone(), read_input(f)?));
    }
    let mut plan = parse(&name, &texts, Kernel { ipv6, bindv6only })?;
    for e in &mut plan.entries {
        e.ours = Some(Ours::SocketUnit { unit: name.clone() });
    }
    Ok(plan)
}

/// The files of one unit: its own and its drop-ins, in the order applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFiles {
    /// The unit's name (`demo.socket`, `foo@bar.socket`).
    pub name: String,
    /// Its file.
    pub main: PathBuf,
    /// Its drop-ins, in the order systemd applies them.
    pub dropins: Vec<PathBuf>,
}

/// Finds `unit` (a name, or a path: it has a `/`) in `dirs`.
pub fn find(unit: &str, dirs: &[&str]) -> Result<UnitFiles, InputError> {
    if unit.contains('/') {
        let path = PathBuf::from(unit);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        socket_suffix(&name, unit)?;
        let mut dropins = BTreeMap::new();
        conf_files(&PathBuf::from(format!("{unit}.d")), &mut dropins);
        return Ok(UnitFiles {
            name,
            main: path,
            dropins: dropins.into_values().collect(),
        });
    }
    // `demo` is `demo.socket`; `demo.service` is no socket unit.
    let name = if unit.contains('.') {
        unit.to_owned()
    } else {
        format!("{unit}.socket")
    };
    socket_suffix(&name, unit)?;
    if name.contains("..") || name.is_empty() {
        return Err(InputError::file(unit, "not a unit name"));
    }
    let template = name
        .split_once('@')
        .filter(|(_, rest)| rest != &"socket" && rest.ends_with(".socket"))
        .map(|(prefix, _)| format!("{prefix}@.socket"));
    let main = dirs
        .iter()
        .flat_map(|d| {
            let d = Path::new(d);
            std::iter::once(d.join(&name)).chain(template.iter().map(move |t| d.join(t)))
        })
        .find(|p| std::fs::symlink_metadata(p).is_ok())
        .ok_or_else(|| {
            InputError::file(
                unit,
                format!(
                    "no unit file {name} in {} (give a path to read another file)",
                    dirs.join(", ")
                ),
            )
        })?;
    if std::fs::canonicalize(&main).is_ok_and(|p| p == Path::new("/dev/null")) {
        return Err(InputError::file(
            &main,
            format!("{name} is masked (a link to /dev/null): systemd will not start it"),
        ));
    }
    // Drop-ins of one file name: the highest priority directory's wins.
    let mut dropins = BTreeMap::new();
    for d in dirs {
        let d = Path::new(d);
        let mut here = BTreeMap::new();
        conf_files(&d.join("socket.d"), &mut here);
        if let Some(t) = &template {
            conf_files(&d.join(format!("{t}.d")), &mut here);
        }
        conf_files(&d.join(format!("{name}.d")), &mut here);
        for (k, v) in here {
            dropins.entry(k).or_insert(v);
        }
    }
    Ok(UnitFiles {
        name,
        main,
        dropins: dropins.into_values().collect(),
    })
}

fn socket_suffix(name: &str, unit: &str) -> Result<(), InputError> {
    if name.ends_with(".socket") && name.len() > ".socket".len() {
        return Ok(());
    }
    Err(InputError::file(
        unit,
        "not a socket unit: systemd reads a unit's type from its name, and only a .socket unit listens",
    ))
}

/// `DIR/*.conf` into `out` by file name (a later directory's file of the
/// same name replaces an earlier one's: callers pass lower priority last
/// and keep the first).
fn conf_files(dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".conf") {
            out.insert(name, e.path());
        }
    }
}

/// What the kernel decides for a unit's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// It has IPv6 (`/proc/net/if_inet6`): a bare port is `[::]:PORT`.
    pub ipv6: bool,
    /// `net.ipv6.bindv6only`: IPV6_V6ONLY of `BindIPv6Only=default`.
    pub bindv6only: bool,
}

/// One `Listen*=` line.
#[derive(Debug, Clone)]
struct Listen {
    key: String,
    value: String,
    origin: Origin,
}

/// The plan of unit `name` from its files' texts (the unit's own first,
/// then its drop-ins).
pub fn parse(name: &str, texts: &[(PathBuf, String)], k: Kernel) -> Result<Plan, InputError> {
    let mut listens: Vec<Listen> = Vec::new();
    let mut socket_section = false;
    let mut only = "default".to_owned();
    let mut opts = Opts {
        // systemd sets SO_REUSEADDR on every socket it binds.
        reuseaddr: true,
        ..Opts::default()
    };
    let mut device: Option<String> = None;
    for (file, text) in texts {
        let mut section = String::new();
        for (line_no, line) in logical_lines(text) {
            let at = |what: String| InputError::at(file, line_no, None, what);
            let line = line.trim();
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            if let Some(s) = line.strip_prefix('[') {
                section = s
                    .strip_suffix(']')
                    .ok_or_else(|| at(format!("invalid section header '{line}'")))?
                    .to_owned();
                socket_section |= section == "Socket";
                continue;
            }
            if section != "Socket" {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(at(format!("'{line}' is not KEY=VALUE")));
            };
            let (key, value) = (key.trim(), value.trim());
            let value = specifiers(value, name).map_err(at)?;
            match key {
                _ if key.starts_with("Listen") => {
                    if value.is_empty() {
                        // An empty assignment resets every listen before it.
                        listens.clear();
                        continue;
                    }
                    listens.push(Listen {
                        key: key.to_owned(),
                        origin: Origin::at(file, Some(line_no), format!("{key}={value}")),
                        value,
                    });
                }
                "BindIPv6Only" => match value.as_str() {
                    "default" | "both" | "ipv6-only" => only = value,
                    _ => {
                        return Err(at(format!(
                            "BindIPv6Only={value}: not default, both or ipv6-only"
                        )))
                    }
                },
                "ReusePort" => opts.reuseport = boolean(key, &value).map_err(at)?,
                "FreeBind" => opts.freebind = boolean(key, &value).map_err(at)?,
                "Transparent" => opts.transparent = boolean(key, &value).map_err(at)?,
                "BindToDevice" => device = (!value.is_empty()).then_some(value),
                _ => {}
            }
        }
    }
    if !socket_section || listens.is_empty() {
        let file = &texts[0].0;
        return Err(InputError::file(
            file,
            "no ListenStream=, ListenDatagram= or other Listen*= in [Socket]: not a socket unit systemd would start",
        ));
    }
    let mut plan = Plan::default();
    for l in listens {
        let proto = match l.key.as_str() {
            "ListenStream" => Proto::Tcp,
            "ListenDatagram" => Proto::Udp,
            "ListenSequentialPacket"
            | "ListenFIFO"
            | "ListenSpecial"
            | "ListenNetlink"
            | "ListenMessageQueue"
            | "ListenUSBFunction" => {
                plan.unchecked.push(Unchecked {
                    from: l.origin,
                    why: format!("{}= has no TCP or UDP port to check", l.key),
                });
                continue;
            }
            other => {
                let o = &l.origin;
                return Err(InputError {
                    file: o.file.clone(),
                    line: o.line,
                    col: None,
                    what: format!("unknown setting {other}="),
                });
            }
        };
        let bad = |why: &str| {
            let o = &l.origin;
            InputError {
                file: o.file.clone(),
                line: o.line,
                col: None,
                what: format!("{}: {why}", o.what),
            }
        };
        let Some((addr, port, _scope)) = address(&l.value, k).map_err(|e| bad(&e))? else {
            plan.unchecked.push(Unchecked {
                from: l.origin,
                why: "a unix or vsock socket: no port to check".into(),
            });
            continue;
        };
        let mut o = opts;
        o.v6only = addr.is_ipv6()
            && match only.as_str() {
                "ipv6-only" => true,
                "both" => false,
                _ => k.bindv6only,
            };
        plan.entries.push(Entry {
            binding: Binding {
                proto,
                addr,
                port,
                opts: o,
                device: device.clone(),
            },
            from: vec![l.origin],
            ours: None,
        });
    }
    Ok(plan)
}

/// Lines with their 1-based numbers, a trailing `\` joining the next.
fn logical_lines(text: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(u32, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i as u32 + 1;
        let (start, mut acc) = pending.take().unwrap_or((n, String::new()));
        match raw.strip_suffix('\\') {
            Some(head) => {
                acc.push_str(head);
                acc.push(' ');
                pending = Some((start, acc));
            }
            None => {
                acc.push_str(raw);
                out.push((start, acc));
            }
        }
    }
    out.extend(pending);
    out
}

/// systemd's booleans.
fn boolean(key: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => Err(format!("{key}={v}: not a boolean (yes or no)")),
    }
}

/// The specifiers a socket unit's listen uses: `%i`/`%I` (the instance),
/// `%n`, `%N`, `%p`, `%%`.
fn specifiers(v: &str, name: &str) -> Result<String, String> {
    if !v.contains('%') {
        return Ok(v.to_owned());
    }
    let stem = name.strip_suffix(".socket").unwrap_or(name);
    let (prefix, instance) = stem.split_once('@').unwrap_or((stem, ""));
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('i' | 'I') => out.push_str(instance),
            Some('n') => out.push_str(name),
            Some('N') => out.push_str(stem),
            Some('p' | 'P') => out.push_str(prefix),
            Some(o) => {
                return Err(format!(
                    "specifier %{o} in '{v}' is not one portwatch reads"
                ))
            }
            None => return Err(format!("'{v}' ends with a lone %")),
        }
    }
    Ok(out)
}

/// A `ListenStream=`/`ListenDatagram=` value as `socket_address_parse`
/// reads it: None for a unix or vsock socket; else the address, port and
/// interface named after `%`.
fn address(v: &str, k: Kernel) -> Result<Option<(IpAddr, u16, Option<String>)>, String> {
    if v.starts_with(['/', '@']) || v.starts_with("vsock:") {
        return Ok(None);
    }
    const FORMS: &str =
        "not PORT, ADDR:PORT, [ADDR]:PORT (each with an optional %IFNAME), a path or vsock:CID:PORT";
    let port = |s: &str| -> Result<u16, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FORMS.to_owned());
        }
        match s.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
            _ => Err(format!("port {s} is out of range (1-65535)")),
        }
    };
    if v.bytes().all(|b| b.is_ascii_digit()) {
        let p = port(v)?;
        let any = if k.ipv6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        return Ok(Some((any, p, None)));
    }
    let (s, ifname) = match v.split_once('%') {
        Some((s, i)) if !i.is_empty() => (s, Some(i.to_owned())),
        Some(_) => return Err(FORMS.into()),
        None => (v, None),
    };
    let (host, p) = s.rsplit_once(':').ok_or_else(|| FORMS.to_owned())?;
    if let Some(h) = host.strip_prefix('[') {
        let h = h.strip_suffix(']').ok_or_else(|| FORMS.to_owned())?;
        let ip: Ipv6Addr = h
            .parse()
            .map_err(|_| format!("'{h}' is not an IPv6 address"))?;
        return Ok(Some((IpAddr::V6(ip), port(p)?, ifname)));
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Err("an IPv6 address needs brackets and a port: [ADDR]:PORT".into());
    }
    let ip: Ipv4Addr = host
        .parse()
        .map_err(|_| format!("'{host}' is not an IP address (systemd resolves no names)"))?;
    Ok(Some((IpAddr::V4(ip), port(p)?, ifname)))
}

#[cfg(test)]
mod tests;
