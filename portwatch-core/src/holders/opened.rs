//! Which end opened the connections that hold a port: this end's connect()
//! (the port is its source port, given by the kernel from
//! ip_local_port_range or bound by the program) or a listener's accept()
//! (a server's connections, left after its listener closed).
//!
//! sock_diag does not say which side connected, and the peer's port proves
//! nothing (a gRPC server listens on 50051, inside the default range; NFS
//! clients connect from ports below 1024). Only what is known decides:
//! a listener on the port now; the kernel's record of one that closed, or of
//! the connection's own bind(); and, for a peer in the same network
//! namespace, whose port has a listener. Otherwise nothing is claimed.
//!
//! The tracer's `--record` history of state changes cannot help either:
//! connect() enters SYN_SENT before the kernel picks the source port
//! (`tcp_v4_connect`: "sport may be zero"), so that change carries no port,
//! and port life follows only ports of interest, marked after a failure,
//! while the connection in the way was made before it.

use std::net::SocketAddr;

use super::{overlaps, sockdiag::DiagSocket};
use crate::request::{Family, HolderRecord};

const TCP_LISTEN: u8 = 10;
/// Kernel TCP states that are connections (not LISTEN, TIME_WAIT, CLOSE or
/// the bound-inactive pseudo-state).
const CONNECTED: [u8; 8] = [1, 2, 3, 4, 5, 8, 9, 11];
/// Peer ports looked up per failure, one sock_diag dump each: a server's
/// many clients each have their own, and the first few are enough to know
/// (a connection left unchecked leaves the answer unknown, never wrong).
const MAX_PEER_PORTS: usize = 4;

/// Which end opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// This end called connect(): the port is its source port.
    Outgoing,
    /// A listener on this port accepted it.
    Accepted,
}

/// What showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clue {
    /// The peer's end is in this network namespace, and its port has a
    /// listener: this end is the client.
    PeerListens,
    /// A listener holds this port now, on an address that takes the
    /// connection's.
    ListenerNow,
    /// The kernel recorded pid `pid` (`comm`) listening on this port, in a
    /// socket closed since.
    ListenerRecorded {
        /// The recorded listener's pid.
        pid: u32,
        /// Its comm (untrusted).
        comm: String,
    },
    /// The kernel recorded the connection's own bind() before it
    /// connected: no accepted socket ever binds.
    BoundThenConnected,
}

/// Which end opened the connections on the port, and why that is known:
/// set only when every connection on it was shown to be opened the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Who opened them.
    pub by: Opener,
    /// What showed it (for the first connection).
    pub clue: Clue,
}

impl Opened {
    /// How the diagnosis says what showed it.
    pub fn because(&self) -> String {
        match &self.clue {
            Clue::PeerListens => {
                "its peer is in this network namespace and listens on the peer's port".into()
            }
            Clue::ListenerNow => "a listener holds this port now".into(),
            Clue::ListenerRecorded { pid, comm } => format!(
                "the kernel recorded pid {pid} ({comm}) listening on this port in a socket closed since"
            ),
            Clue::BoundThenConnected => {
                "the kernel recorded the socket's own bind() before it connected".into()
            }
        }
    }
}

/// The ports whose sockets [`opened`] needs beside the port's own: the
/// peers' ports of the port's connections, at most [`MAX_PEER_PORTS`].
pub fn peer_ports(port: u16, sockets: &[DiagSocket]) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    for s in sockets.iter().filter(|s| is_connection(s, port)) {
        let p = s.remote.port();
        if p != port && !ports.contains(&p) && ports.len() < MAX_PEER_PORTS {
            ports.push(p);
        }
    }
    ports
}

/// Which end opened the TCP connections on `port`, from `sockets` (every
/// socket sock_diag showed on the port and on the [`peer_ports`], in one
/// network namespace) and the kernel's `record` of the port, when a tracer
/// ran. None when there is no connection, or when any connection's opener
/// is unknown or differs from the others'.
pub fn opened(port: u16, sockets: &[DiagSocket], record: Option<&HolderRecord>) -> Option<Opened> {
    let mut found: Option<Opened> = None;
    for c in sockets.iter().filter(|s| is_connection(s, port)) {
        let this = of_one(c, sockets, record)?;
        match &found {
            Some(f) if f.by != this.by => return None,
            Some(_) => {}
            None => found = Some(this),
        }
    }
    found
}

/// A TCP connection whose local port is `port`.
fn is_connection(s: &DiagSocket, port: u16) -> bool {
    s.protocol == 6 && s.local.port() == port && CONNECTED.contains(&s.state)
}

/// Who opened connection `c`, if anything known shows it.
fn of_one(c: &DiagSocket, sockets: &[DiagSocket], record: Option<&HolderRecord>) -> Option<Opened> {
    let found = |by, clue| Some(Opened { by, clue });
    if sockets
        .iter()
        .any(|l| l.state == TCP_LISTEN && takes(l, c.local))
    {
        return found(Opener::Accepted, Clue::ListenerNow);
    }
    if let Some(r) = record.filter(|r| takes_addr(r.family, r.addr, None, c.local)) {
        match r.state {
            None if r.listened => {
                let (pid, comm) = (r.pid, r.comm.clone());
                return found(Opener::Accepted, Clue::ListenerRecorded { pid, comm });
            }
            // The recorded socket is still there, connected, and owned by
            // whoever owns this one (the record names the binder's pid,
            // sock_diag the socket's uid: the state must match).
            Some(state) if !r.listened && state == c.state && r.uid == c.uid => {
                return found(Opener::Outgoing, Clue::BoundThenConnected);
            }
            _ => {}
        }
    }
    // The peer's own end, in this namespace: the same connection seen from
    // the other side.
    let peer_end = sockets
        .iter()
        .any(|p| p.state != TCP_LISTEN && same(p.local, c.remote) && same(p.remote, c.local));
    let peer_listens = sockets
        .iter()
        .any(|l| l.state == TCP_LISTEN && takes(l, c.remote));
    if peer_end && peer_listens {
        return found(Opener::Outgoing, Clue::PeerListens);
    }
    None
}

/// Whether listener `l` takes connections to `to`.
fn takes(l: &DiagSocket, to: SocketAddr) -> bool {
    let Ok(family) = Family::try_from(u16::from(l.family)) else {
        return false;
    };
    l.local.port() == to.port() && takes_addr(family, l.local.ip(), l.v6only, to)
}

/// Whether a socket of `family` bound to `addr` takes `to`'s address.
fn takes_addr(
    family: Family,
    addr: std::net::IpAddr,
    v6only: Option<bool>,
    to: SocketAddr,
) -> bool {
    let to_family = Family::of(to.ip().to_canonical());
    overlaps(
        (to_family, to.ip().to_canonical(), false),
        (family, addr, v6only),
    )
    .is_some()
}

/// The same endpoint, an IPv4-mapped IPv6 address being its IPv4 one.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// `sockets` and, after them, the sockets on their connections'
/// [`peer_ports`], dumped in the calling thread's network namespace. A dump
/// that fails leaves its port out: the opener then stays unknown.
pub fn with_peers(port: u16, sockets: &[DiagSocket]) -> Vec<DiagSocket> {
    let mut all = sockets.to_vec();
    for p in peer_ports(port, sockets) {
        all.extend(super::sockdiag::dump(6, Some(p), false).unwrap_or_default());
    }
    all
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use portwatch_test_support::in_fresh_netns;

    use super::*;
    use crate::holders::sockdiag::dump;

    fn port_of(s: &TcpStream) -> u16 {
        s.local_addr().unwrap().port()
    }

    /// The sockets on `port`, with its peers', as enrichment sees them.
    fn seen(port: u16) -> Vec<DiagSocket> {
        with_peers(port, &dump(6, Some(port), false).expect("sock_diag"))
    }

    fn record(listened: bool, state: Option<u8>) -> HolderRecord {
        HolderRecord {
            pid: 77,
            uid: 0,
            comm: "server".into(),
            family: Family::Ipv4,
            addr: "0.0.0.0".parse().unwrap(),
            running_ns: 0,
            state,
            opts: None,
            listened,
            device: None,
        }
    }

    #[test]
    fn a_local_client_is_outgoing_and_the_server_end_accepted() {
        in_fresh_netns(|| {
            let server = TcpListener::bind("127.0.0.1:0").unwrap();
            let sport = server.local_addr().unwrap().port();
            let client = TcpStream::connect(("127.0.0.1", sport)).unwrap();
            let (accepted, _) = server.accept().unwrap();
            let cport = port_of(&client);
            assert_eq!(
                peer_ports(cport, &dump(6, Some(cport), false).unwrap()),
                [sport]
            );
            let o = opened(cport, &seen(cport), None).expect("client's end");
            assert_eq!((o.by, o.clue), (Opener::Outgoing, Clue::PeerListens));
            let o = opened(sport, &seen(sport), None).expect("server's end");
            assert_eq!((o.by, o.clue), (Opener::Accepted, Clue::ListenerNow));

            // The listener closes: nothing seen tells the two ends apart.
            drop(server);
            assert_eq!(opened(sport, &seen(sport), None), None);
            assert_eq!(opened(cport, &seen(cport), None), None);
            // Unless the kernel recorded the listener.
            let o = opened(sport, &seen(sport), Some(&record(true, None))).unwrap();
            assert_eq!(o.by, Opener::Accepted);
            assert!(o.because().contains("pid 77 (server)"), "{o:?}");
            // A record of a bind() whose socket is connected now: outgoing.
            let o = opened(cport, &seen(cport), Some(&record(false, Some(1)))).unwrap();
            assert_eq!((o.by, o.clue), (Opener::Outgoing, Clue::BoundThenConnected));
            // A bind() record of a socket since closed says nothing.
            assert_eq!(
                opened(cport, &seen(cport), Some(&record(false, None))),
                None
            );
            drop((client, accepted));
        });
    }

    /// An IPv6 client reaching an IPv4 listener: its end is ::ffff:127.0.0.1.
    #[test]
    fn a_v4_mapped_client_finds_its_ipv4_peer() {
        in_fresh_netns(|| {
            let server = TcpListener::bind("127.0.0.1:0").unwrap();
            let sport = server.local_addr().unwrap().port();
            let client = TcpStream::connect(("::ffff:127.0.0.1", sport)).unwrap();
            let _accepted = server.accept().unwrap();
            let cport = port_of(&client);
            let o = opened(cport, &seen(cport), None).expect("mapped client");
            assert_eq!(o.by, Opener::Outgoing);
        });
    }

    /// One connection outgoing, another of unknown opener: no claim.
    #[test]
    fn every_connection_must_agree() {
        in_fresh_netns(|| {
            let a = TcpListener::bind("127.0.0.1:0").unwrap();
            let b = TcpListener::bind("127.0.0.1:0").unwrap();
            let (pa, pb) = (
                a.local_addr().unwrap().port(),
                b.local_addr().unwrap().port(),
            );
            // Two clients from one source port, to two servers.
            let mk = |to: u16, from: u16| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                s.set_reuse_address(true).unwrap();
                s.bind(&SocketAddr::from(([127, 0, 0, 1], from)).into())
                    .unwrap();
                s.connect(&SocketAddr::from(([127, 0, 0, 1], to)).into())
                    .unwrap();
                s
            };
            let c1 = mk(pa, 0);
            let from = c1.local_addr().unwrap().as_socket().unwrap().port();
            let c2 = mk(pb, from);
            let _s1 = a.accept().unwrap();
            let _s2 = b.accept().unwrap();
            assert_eq!(
                opened(from, &seen(from), None).map(|o| o.by),
                Some(Opener::Outgoing)
            );
            drop(b);
            assert_eq!(opened(from, &seen(from), None), None);
            drop(c2);
        });
    }
}
