//! Which socket unit a systemd manager holds a socket for.
//!
//! When pid 1 (or a user's `systemd --user`) holds a port, the process is
//! not what to stop: the socket unit that asked for it is. The manager is
//! asked with one `systemctl show -p Id -p Listen -p Triggers '*.socket'`
//! (about 10 ms, one process; docs/holders.md says why not D-Bus or
//! /run/systemd), and the socket is matched by address, port and type.
//! The system manager's answer is kept: a lookup that finds its address
//! there costs nothing, and one that does not asks again unless the answer
//! is under [`FRESH`] old, so a unit started since is still found (under
//! qemu without KVM one systemctl call took 0.7 s, past the default lookup
//! timeout of 0.5 s; `watch` asks once at start, see [`prefetch`]).
//! Everything systemd answers is untrusted text: a unit name is kept only
//! if it passes [`is_safe_unit_name`], an address only if it parses.

use std::{
    net::SocketAddr,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::procs::is_safe_unit_name;

/// A socket unit and what it listens on, as the manager reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketUnit {
    /// `demo.socket`.
    pub unit: String,
    /// The listening directive and address: `ListenStream=0.0.0.0:8080`.
    pub listen: String,
    /// The services it starts on the first connection (`demo.service`).
    pub activates: Vec<String>,
    /// Owned by a user's manager (`systemctl --user`), for this uid.
    pub user: Option<u32>,
}

/// How long systemctl may take; a hung manager must not hang a lookup.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Fixed paths: a root tool does not run whatever `systemctl` PATH names.
const SYSTEMCTL: [&str; 2] = ["/usr/bin/systemctl", "/bin/systemctl"];

/// An answer this young is not asked again on a miss.
const FRESH: Duration = Duration::from_secs(1);

/// The system manager's last answer, and when it came.
static SYSTEM: Mutex<Option<(Instant, Vec<Shown>)>> = Mutex::new(None);

/// Asks the system manager once ahead of the first failure, when it is
/// systemd.
pub fn prefetch() {
    if std::path::Path::new("/run/systemd/system").is_dir() {
        if let Some(units) = show(None) {
            if let Ok(mut cache) = SYSTEM.lock() {
                *cache = Some((Instant::now(), units));
            }
        }
    }
}

/// The socket unit holding `addr` (a stream socket when `stream`), asking
/// the system manager, or the manager of `user` when the holder is a
/// `systemd --user`. None when systemctl is missing, fails, or no unit
/// listens there.
pub fn socket_unit(addr: SocketAddr, stream: bool, user: Option<u32>) -> Option<SocketUnit> {
    if user.is_some() {
        return find(&show(user)?, addr, stream).map(|mut u| {
            u.user = user;
            u
        });
    }
    let mut cache = SYSTEM.lock().ok()?;
    if let Some((at, units)) = cache.as_ref() {
        let found = find(units, addr, stream);
        if found.is_some() || at.elapsed() < FRESH {
            return found;
        }
    }
    let units = show(None)?;
    let found = find(&units, addr, stream);
    *cache = Some((Instant::now(), units));
    found
}

/// Every socket unit of the system manager, or of `user`'s.
fn show(user: Option<u32>) -> Option<Vec<Shown>> {
    let systemctl = SYSTEMCTL
        .iter()
        .find(|p| std::path::Path::new(p).is_file())?;
    let mut cmd = Command::new(systemctl);
    if let Some(uid) = user {
        cmd.args(["--user", "--machine", &format!("{uid}@.host")]);
    }
    cmd.args([
        "show",
        "--no-pager",
        "-p",
        "Id",
        "-p",
        "Listen",
        "-p",
        "Triggers",
        "*.socket",
    ])
    .env_clear()
    .env("SYSTEMD_COLORS", "0");
    // A miss is an answer here (no unit named): the lookup goes on without.
    let out = crate::subprocess::output(&mut cmd, TIMEOUT).ok()?;
    Some(parse_show(&String::from_utf8(out).ok()?))
}

/// One unit's block of `systemctl show` output.
#[derive(Debug, Default, PartialEq, Eq)]
struct Shown {
    id: String,
    /// (address as printed, type: Stream, Datagram, ...).
    listen: Vec<(String, String)>,
    triggers: Vec<String>,
}

/// Pure: `Id=`, `Listen=ADDR (TYPE)` (one line each) and `Triggers=`
/// blocks, separated by empty lines.
fn parse_show(text: &str) -> Vec<Shown> {
    let mut units = Vec::new();
    let mut cur = Shown::default();
    for line in text.lines().chain(std::iter::once("")) {
        if line.is_empty() {
            if !cur.id.is_empty() {
                units.push(std::mem::take(&mut cur));
            }
            cur = Shown::default();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "Id" => cur.id = value.to_owned(),
            "Listen" => {
                if let Some((addr, kind)) = value
                    .rsplit_once(" (")
                    .and_then(|(a, k)| Some((a, k.strip_suffix(')')?)))
                {
                    cur.listen.push((addr.to_owned(), kind.to_owned()));
                }
            }
            "Triggers" => {
                cur.triggers = value.split_whitespace().map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    units
}

/// Pure: the unit of `units` listening on `addr` with the right type.
fn find(units: &[Shown], addr: SocketAddr, stream: bool) -> Option<SocketUnit> {
    let want = if stream { "Stream" } else { "Datagram" };
    units
        .iter()
        .filter(|u| is_safe_unit_name(&u.id) && u.id.ends_with(".socket"))
        .find_map(|u| {
            let (_, kind) = u.listen.iter().find(|(a, k)| {
                k == want && a.parse::<SocketAddr>().is_ok_and(|a| same_addr(a, addr))
            })?;
            Some(SocketUnit {
                unit: u.id.clone(),
                // Printed from the parsed address: nothing of systemd's text
                // but a checked unit name reaches the output.
                listen: format!("Listen{kind}={addr}"),
                activates: u
                    .triggers
                    .iter()
                    .filter(|t| is_safe_unit_name(t))
                    .cloned()
                    .collect(),
                user: None,
            })
        })
}

/// The same socket address, an IPv4-mapped IPv6 address equal to its IPv4.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |s: SocketAddr| (s.ip().to_canonical(), s.port());
    canon(a) == canon(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What systemd 252 printed in the systemd VM for three socket units.
    const SHOWN: &str = "Id=dbus.socket\n\
        Listen=/run/dbus/system_bus_socket (Stream)\n\
        Triggers=dbus.service\n\
        \n\
        Id=demo.socket\n\
        Listen=0.0.0.0:8080 (Stream)\n\
        Listen=[::]:9090 (Datagram)\n\
        Triggers=demo.service\n\
        \n\
        Id=many.socket\n\
        Listen=127.0.0.1:7000 (Stream)\n\
        Triggers=a.service b.service\n";

    #[test]
    fn finds_the_unit_by_address_and_type() {
        let units = parse_show(SHOWN);
        assert_eq!(units.len(), 3);
        let u = find(&units, "0.0.0.0:8080".parse().unwrap(), true).unwrap();
        assert_eq!(u.unit, "demo.socket");
        assert_eq!(u.listen, "ListenStream=0.0.0.0:8080");
        assert_eq!(u.activates, ["demo.service"]);
        let u = find(&units, "[::]:9090".parse().unwrap(), false).unwrap();
        assert_eq!(u.listen, "ListenDatagram=[::]:9090");
        // Wrong type, wrong address, wrong port.
        assert!(find(&units, "[::]:9090".parse().unwrap(), true).is_none());
        assert!(find(&units, "127.0.0.1:8080".parse().unwrap(), true).is_none());
        assert!(find(&units, "0.0.0.0:8081".parse().unwrap(), true).is_none());
        let u = find(&units, "127.0.0.1:7000".parse().unwrap(), true).unwrap();
        assert_eq!(u.activates, ["a.service", "b.service"]);
        let u = find(&units, "[::ffff:127.0.0.1]:7000".parse().unwrap(), true).unwrap();
        assert_eq!(u.unit, "many.socket");
    }

    #[test]
    fn untrusted_names_are_dropped() {
        let units = parse_show(
            "Id=evil;reboot.socket\nListen=0.0.0.0:1 (Stream)\n\n\
             Id=ok.socket\nListen=0.0.0.0:2 (Stream)\nTriggers=$(id).service ok.service\n\n\
             Id=x.service\nListen=0.0.0.0:3 (Stream)\n\n\
             garbage\nId=\nListen=nonsense\n",
        );
        assert!(find(&units, "0.0.0.0:1".parse().unwrap(), true).is_none());
        let u = find(&units, "0.0.0.0:2".parse().unwrap(), true).unwrap();
        assert_eq!(u.activates, ["ok.service"]);
        assert!(find(&units, "0.0.0.0:3".parse().unwrap(), true).is_none());
        assert!(parse_show("").is_empty());
    }
}
