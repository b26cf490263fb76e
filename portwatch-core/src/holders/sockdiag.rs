//! Which sockets hold a port: NETLINK_SOCK_DIAG (inet_diag) dumps in the
//! calling thread's network namespace (see `holders::netns` to pick one).

use std::{io, net::SocketAddr, os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

/// One socket as inet_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    /// IP protocol: 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    /// Address family: 2 (`AF_INET`) or 10 (`AF_INET6`).
    pub family: u8,
    /// Kernel state number as reported: TCP 1..=12, 13 (`TCP_BOUND_INACTIVE`)
    /// if the kernel reports it (6.18 reports bound-inactive sockets as 7,
    /// `TCP_CLOSE`); UDP 7 (unconnected) or 1 (connected).
    pub state: u8,
    /// True when the socket came from the bound-inactive dump: bound, but
    /// never listened or connected.
    pub bound_inactive: bool,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (unspecified for unconnected sockets).
    pub remote: SocketAddr,
    /// Interface the socket is bound to (`idiag_if`), 0 if none.
    pub bound_dev_if: u32,
    /// Owner UID.
    pub uid: u32,
    /// Socket inode; 0 for TIME_WAIT and orphaned sockets.
    pub inode: u32,
    /// `IPV6_V6ONLY`, from `INET_DIAG_SKV6ONLY` when the kernel sends it.
    pub v6only: Option<bool>,
    /// TIME_WAIT sockets: time left before the kernel frees the port.
    pub time_wait_left: Option<Duration>,
}

/// Every real TCP state, `TCP_ESTABLISHED` (1) through `TCP_NEW_SYN_RECV` (12).
const ALL_STATES: u32 = 0x1ffe;
const TCP_CLOSE: u8 = 7;
/// `TCP_BOUND_INACTIVE` (recent kernels; portwatch checks BTF): a pseudo-state that only exists in the
/// request's state mask, asking for sockets that are bound but neither
/// listening nor connected.
///
/// Measured on Linux 6.18: such sockets come back with their real state,
/// `TCP_CLOSE` (7), never 13. A dump includes them iff bit 13 is in the mask:
/// not with every real state (0x1ffe), but yes with `!0` (so tools sending an
/// all-ones mask get them), and 1 << 13 alone returns only them.
const TCP_BOUND_INACTIVE: u8 = 13;

/// `INET_DIAG_REQ_BYTECODE`, which the crate has no constant for.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
const INET_DIAG_BC_JMP: u8 = 1;

/// Dump datagrams are at most ~32 KiB (the kernel caps its dump skbs there);
/// twice that leaves room, and `MSG_TRUNC` catches anything bigger.
const RECV_BUF_LEN: usize = 64 * 1024;
const RECV_TIMEOUT: Duration = Duration::from_secs(1);

/// Byte offset of `idiag_expires` in `struct inet_diag_msg`.
const IDIAG_EXPIRES_OFFSET: usize = 52;

/// Sockets of `protocol` (6 TCP, 17 UDP), both families, every state, in the
/// calling thread's current network namespace; only those whose local port is
/// `port` when it is `Some`.
///
/// With `bound_inactive`, TCP dumps also ask for sockets that are bound but
/// neither listening nor connected (`TCP_BOUND_INACTIVE`, where the kernel has it); it
/// has no effect on UDP, whose bound sockets are always reported.
///
/// Each receive times out after 1 s, so a stuck query returns an error
/// rather than hanging.
pub fn dump(protocol: u8, port: Option<u16>, bound_inactive: bool) -> io::Result<Vec<DiagSocket>> {
    let ports = port.as_ref().map(std::slice::from_ref);
    dump_with(protocol, ports, bound_inactive, true)
}

/// Like [`dump`], for the sockets on any of `ports`: one dump (a request per
/// family) however many ports, each kept or dropped by the kernel's filter.
/// In the order the kernel lists them, which a dump of one port keeps too.
pub fn dump_ports(
    protocol: u8,
    ports: &[u16],
    bound_inactive: bool,
) -> io::Result<Vec<DiagSocket>> {
    dump_with(protocol, Some(ports), bound_inactive, true)
}

/// Ports the kernel's filter tests, at most: its program runs once per
/// socket, 8 bytes per port; past this many, the dump takes every port and
/// the filter runs here.
const MAX_FILTER_PORTS: usize = 256;

fn dump_with(
    protocol: u8,
    ports: Option<&[u16]>,
    bound_inactive: bool,
    kernel_filter: bool,
) -> io::Result<Vec<DiagSocket>> {
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sock_diag: unsupported protocol {protocol}"),
        ));
    }
    // TCP sockets leave the lookup tables before they become TCP_CLOSE, so
    // leaving that bit out costs nothing and makes state 7 in a TCP reply
    // mean "from the bound-inactive walk".
    let states = match protocol {
        IPPROTO_TCP if bound_inactive => ALL_STATES & !(1 << TCP_CLOSE) | 1 << TCP_BOUND_INACTIVE,
        IPPROTO_TCP => ALL_STATES & !(1 << TCP_CLOSE),
        _ => ALL_STATES,
    };
    let filter = ports
        .filter(|p| kernel_filter && !p.is_empty() && p.len() <= MAX_FILTER_PORTS)
        .map(sport_filter);
    let socket = open_socket(NETLINK_SOCK_DIAG)?;
    let mut buf = vec![0; RECV_BUF_LEN];
    let mut sockets = Vec::new();
    for (seq, family) in [(1, AF_INET), (2, AF_INET6)] {
        let request = Request {
            seq,
            family,
            protocol,
            states,
            filter: filter.as_deref(),
        };
        socket.send(&request.to_bytes(), 0)?;
        receive_dump(&socket, &mut buf, seq, protocol, &mut sockets)?;
    }
    // Without the kernel's filter (too many ports, or measuring what it
    // saves), the same choice made here.
    if let (Some(ports), None) = (ports, &filter) {
        sockets.retain(|s| ports.contains(&s.local.port()));
    }
    Ok(sockets)
}

/// A netlink socket of `protocol` whose receives time out after 1 s.
pub(super) fn open_socket(protocol: isize) -> io::Result<Socket> {
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let timeout = libc::timeval {
        tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: RECV_TIMEOUT.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid fd, and optval points to a timeval of the given length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Receives one datagram of a dump into `buf` (retrying on EINTR); a reply
/// later than the socket's timeout, or one larger than `buf`, is an error
/// that names `what` asked.
pub(super) fn recv<'a>(socket: &Socket, buf: &'a mut [u8], what: &str) -> io::Result<&'a [u8]> {
    let len = loop {
        match socket.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
            Ok(len) => break len,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: no reply within 1 s"),
                ))
            }
            Err(e) => return Err(e),
        }
    };
    let size = buf.len();
    buf.get(..len).ok_or_else(|| {
        invalid_data(format!(
            "{what}: datagram of {len} bytes truncated to {size}"
        ))
    })
}

/// One `SOCK_DIAG_BY_FAMILY` dump request.
struct Request<'a> {
    seq: u32,
    family: u8,
    protocol: u8,
    states: u32,
    /// An `INET_DIAG_REQ_BYTECODE` attribute: the kernel drops sockets
    /// whose local port is not one of the ports asked for.
    filter: Option<&'a [u8]>,
}

impl Request<'_> {
    fn to_bytes(&self) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let socket_id = if self.family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let request = InetRequest {
            family: self.family,
            protocol: self.protocol,
            extensions: ExtensionFlags::empty(),
            // The crate's StateFlags lacks TCP_NEW_SYN_RECV and
            // TCP_BOUND_INACTIVE; keep those bits anyway.
            states: StateFlags::from_bits_retain(self.states),
            socket_id,
        };
        let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);

        // InetRequest cannot carry attributes, so append the filter after it
        // and grow nlmsg_len to cover it.
        if let Some(filter) = self.filter {
            buf.extend_from_slice(filter);
            let len = buf.len() as u32;
            NetlinkBuffer::new(&mut buf).set_length(len);
        }
        buf
    }
}

/// An `INET_DIAG_REQ_BYTECODE` attribute holding the inet_diag program
/// "accept iff the local port is one of `ports`" (1 to [`MAX_FILTER_PORTS`]).
///
/// Each `struct inet_diag_bc_op { u8 code; u8 yes; u16 no; }` jumps `yes`
/// bytes on a match and `no` bytes otherwise; the socket is accepted iff the
/// program ends exactly at its last byte, so `no = len + 4` means reject.
/// A port comparison is two ops (the second's `no` holds the port). Ports are
/// or-ed as `ss` compiles `sport = A or sport = B`: a match falls through to
/// a `JMP` whose `no` leads to the end; a miss jumps over that `JMP` to the
/// next port. The kernel's audit follows the `yes` path, which passes every op.
fn sport_filter(ports: &[u16]) -> Vec<u8> {
    const CMP: usize = 8;
    const JMP: usize = 4;
    let program = ports.len() * (CMP + JMP) - JMP;
    let mut nla = Vec::with_capacity(4 + program);
    nla.extend_from_slice(&((4 + program) as u16).to_ne_bytes()); // nla_len
    nla.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    let op = |nla: &mut Vec<u8>, code: u8, yes: usize, no: usize| {
        nla.extend_from_slice(&[code, yes as u8]);
        nla.extend_from_slice(&(no as u16).to_ne_bytes());
    };
    for (i, &port) in ports.iter().enumerate() {
        let last = i + 1 == ports.len();
        // Match: on to the JMP (or, for the last port, to the end: accept).
        // No match: over the JMP to the next port (or past the end: reject).
        op(&mut nla, INET_DIAG_BC_S_EQ, CMP, CMP + JMP);
        op(&mut nla, 0, 0, usize::from(port));
        if !last {
            let to_end = program - (i * (CMP + JMP) + CMP);
            // A JMP always takes `no`; its `yes` is the audit's way on.
            op(&mut nla, INET_DIAG_BC_JMP, JMP, to_end);
        }
    }
    nla
}

/// Reads the replies to the request numbered `seq` until `NLMSG_DONE`.
fn receive_dump(
    socket: &Socket,
    buf: &mut [u8],
    seq: u32,
    protocol: u8,
    out: &mut Vec<DiagSocket>,
) -> io::Result<()> {
    loop {
        let datagram = recv(socket, buf, "sock_diag")?;
        if parse_datagram(datagram, seq, protocol, out)? == Dump::Done {
            return Ok(());
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Dump {
    More,
    Done,
}

/// Parses the netlink messages of one datagram (a dump packs several into
/// each), appending sockets to `out`.
fn parse_datagram(
    mut datagram: &[u8],
    seq: u32,
    protocol: u8,
    out: &mut Vec<DiagSocket>,
) -> io::Result<Dump> {
    while !datagram.is_empty() {
        // Checks that nlmsg_len is at least a header and fits the datagram.
        let buffer = NetlinkBuffer::new_checked(datagram).map_err(invalid_data)?;
        let len = buffer.length() as usize;
        if buffer.sequence_number() != seq {
            return Err(invalid_data(format!(
                "reply for request {} while waiting for {seq}",
                buffer.sequence_number()
            )));
        }
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&datagram[..len])
            .map_err(invalid_data)?;
        match message.payload {
            // A dump that failed part-way ends with a negative errno here.
            NetlinkPayload::Done(done) if done.code < 0 => return Err(errno(done.code)),
            NetlinkPayload::Done(_) => return Ok(Dump::Done),
            NetlinkPayload::Error(error) => match error.code {
                Some(code) => return Err(errno(code.get())),
                // A bare ACK: nothing more is coming.
                None => return Ok(Dump::Done),
            },
            NetlinkPayload::Noop => {}
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                out.push(diag_socket(protocol, &response, buffer.payload()));
            }
            other => return Err(invalid_data(format!("unexpected message {other:?}"))),
        }
        // Messages are padded to 4 bytes, except possibly the last one.
        datagram = datagram.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(Dump::More)
}

fn diag_socket(protocol: u8, response: &InetResponse, raw: &[u8]) -> DiagSocket {
    let header = &response.header;
    let id = &header.socket_id;
    let v6only = response.nlas.iter().find_map(|nla| match nla {
        Nla::SkV6Only(v6only) => Some(*v6only),
        _ => None,
    });
    // The crate parses `Timer::TimeWait` without its expiry (unlike the other
    // timers), so read `idiag_expires` (milliseconds) from the raw message.
    let time_wait_left = match header.timer {
        Some(Timer::TimeWait) => raw
            .get(IDIAG_EXPIRES_OFFSET..IDIAG_EXPIRES_OFFSET + 4)
            .and_then(|b| b.try_into().ok())
            .map(|b| Duration::from_millis(u32::from_ne_bytes(b).into())),
        _ => None,
    };
    DiagSocket {
        protocol,
        family: header.family,
        state: header.state,
        // 13 in case a future kernel reports the pseudo-state itself.
        bound_inactive: protocol == IPPROTO_TCP
            && (header.state == TCP_CLOSE || header.state == TCP_BOUND_INACTIVE),
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        bound_dev_if: id.interface_id,
        uid: header.uid,
        inode: header.inode,
        v6only,
        time_wait_left,
    }
}

/// The error for a negative errno from the kernel. Not
/// `ErrorMessage::to_io`: its `abs()` overflows (a panic in debug builds) on a
/// forged `i32::MIN`.
fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code.saturating_neg())
}

fn invalid_data(e: impl ToString) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("sock_diag: {}", e.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use std::{
        io::Read,
        net::{TcpListener, TcpStream, UdpSocket},
        os::unix::fs::MetadataExt,
        time::Instant,
    };

    use netlink_packet_sock_diag::SOCK_DIAG_BY_FAMILY;
    use portwatch_test_support::{in_fresh_netns, inode_of};
    use socket2::{Domain, Type};

    use super::*;

    const TCP: u8 = IPPROTO_TCP;
    const UDP: u8 = IPPROTO_UDP;
    const LISTEN: u8 = 10;
    const ESTABLISHED: u8 = 1;
    const TIME_WAIT: u8 = 6;

    fn my_uid() -> u32 {
        std::fs::metadata("/proc/self")
            .expect("stat /proc/self")
            .uid()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn tcp6_socket(port: u16, only_v6: bool) -> socket2::Socket {
        let socket = socket2::Socket::new(Domain::IPV6, Type::STREAM, None).expect("socket");
        socket.set_only_v6(only_v6).expect("IPV6_V6ONLY");
        socket
            .bind(&addr(&format!("[::]:{port}")).into())
            .expect("bind");
        socket
    }

    fn only(sockets: Vec<DiagSocket>) -> DiagSocket {
        assert_eq!(sockets.len(), 1, "{sockets:#?}");
        sockets.into_iter().next().expect("one socket")
    }

    #[test]
    fn tcp_listeners_v4_and_v6() {
        in_fresh_netns(|| {
            let v4 = TcpListener::bind("127.0.0.1:8001").expect("bind");
            let dual = tcp6_socket(8002, false);
            dual.listen(16).expect("listen");
            let v6only = tcp6_socket(8003, true);
            v6only.listen(16).expect("listen");

            assert_eq!(
                only(dump(TCP, Some(8001), false).expect("dump")),
                DiagSocket {
                    protocol: TCP,
                    family: AF_INET,
                    state: LISTEN,
                    bound_inactive: false,
                    local: addr("127.0.0.1:8001"),
                    remote: addr("0.0.0.0:0"),
                    bound_dev_if: 0,
                    uid: my_uid(),
                    inode: inode_of(&v4),
                    v6only: None,
                    time_wait_left: None,
                }
            );

            let got = only(dump(TCP, Some(8002), false).expect("dump"));
            assert_eq!((got.family, got.state), (AF_INET6, LISTEN));
            assert_eq!(got.local, addr("[::]:8002"));
            assert_eq!(got.inode, inode_of(&dual));
            assert_eq!(got.v6only, Some(false));

            let got = only(dump(TCP, Some(8003), false).expect("dump"));
            assert_eq!((got.family, got.state), (AF_INET6, LISTEN));
            assert_eq!(got.inode, inode_of(&v6only));
            assert_eq!(got.v6only, Some(true));
        });
    }

    #[test]
    fn udp_bound_and_connected() {
        in_fresh_netns(|| {
            let bound = UdpSocket::bind("127.0.0.1:5300").expect("bind");
            let connected = UdpSocket::bind("127.0.0.1:5301").expect("bind");
            connected.connect("127.0.0.1:5300").expect("connect");
            let v6 = UdpSocket::bind("[::1]:5302").expect("bind");

            let got = only(dump(UDP, Some(5300), false).expect("dump"));
            assert_eq!((got.protocol, got.family, got.state), (UDP, AF_INET, 7));
            assert_eq!(
                (got.local, got.remote),
                (addr("127.0.0.1:5300"), addr("0.0.0.0:0"))
            );
            assert_eq!(got.inode, inode_of(&bound));
            assert!(!got.bound_inactive);

            let got = only(dump(UDP, Some(5301), false).expect("dump"));
            assert_eq!(got.state, ESTABLISHED);
            assert_eq!(got.remote, addr("127.0.0.1:5300"));
            assert_eq!(got.inode, inode_of(&connected));

            let got = only(dump(UDP, Some(5302), false).expect("dump"));
            assert_eq!((got.family, got.local), (AF_INET6, addr("[::1]:5302")));
            assert_eq!(got.inode, inode_of(&v6));
            assert!(got.v6only.is_some());

            assert!(dump(TCP, Some(5300), true).expect("dump").is_empty());
        });
    }

    #[test]
    fn established_pair() {
        in_fresh_netns(|| {
            for (listen_on, port) in [("127.0.0.1:8100", 8100), ("[::1]:8101", 8101)] {
                let listener = TcpListener::bind(listen_on).expect("bind");
                let client = TcpStream::connect(listen_on).expect("connect");
                let (accepted, _) = listener.accept().expect("accept");
                let client_addr = client.local_addr().expect("local_addr");

                let mut got = dump(TCP, Some(port), false).expect("dump");
                got.sort_by_key(|s| s.state);
                assert_eq!(got.len(), 2, "{got:#?}");
                assert_eq!((got[0].state, got[1].state), (ESTABLISHED, LISTEN));
                assert_eq!(got[0].local, addr(listen_on));
                assert_eq!(got[0].remote, client_addr);
                assert_eq!(got[0].inode, inode_of(&accepted));
                assert_eq!(got[1].inode, inode_of(&listener));

                let got = only(dump(TCP, Some(client_addr.port()), false).expect("dump"));
                assert_eq!(got.state, ESTABLISHED);
                assert_eq!((got.local, got.remote), (client_addr, addr(listen_on)));
                assert_eq!(got.inode, inode_of(&client));
            }
        });
    }

    #[test]
    fn time_wait_after_active_close_on_bound_port() {
        in_fresh_netns(|| {
            let listener = TcpListener::bind("127.0.0.1:8200").expect("bind");
            let mut client = TcpStream::connect("127.0.0.1:8200").expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            let client_addr = client.local_addr().expect("local_addr");

            // The side holding port 8200 closes first, so it ends in TIME_WAIT.
            drop(accepted);
            assert_eq!(client.read(&mut [0; 1]).expect("read EOF"), 0);
            drop(client);

            let deadline = Instant::now() + Duration::from_secs(5);
            let tw = loop {
                let got = dump(TCP, Some(8200), false).expect("dump");
                if let Some(tw) = got.into_iter().find(|s| s.state == TIME_WAIT) {
                    break tw;
                }
                assert!(Instant::now() < deadline, "no TIME_WAIT socket on 8200");
                std::thread::sleep(Duration::from_millis(10));
            };
            assert_eq!((tw.local, tw.remote), (addr("127.0.0.1:8200"), client_addr));
            assert_eq!(tw.inode, 0);
            let left = tw.time_wait_left.expect("time_wait_left");
            assert!(
                left > Duration::from_secs(1) && left <= Duration::from_secs(60),
                "{left:?}"
            );
        });
    }

    #[test]
    fn bound_inactive_tcp() {
        in_fresh_netns(|| {
            let v4 = socket2::Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            v4.bind(&addr("127.0.0.1:8300").into()).expect("bind");
            let v6 = tcp6_socket(8301, true);
            let listener = TcpListener::bind("127.0.0.1:8302").expect("bind");

            // Not in a plain dump of every state...
            assert!(dump(TCP, Some(8300), false).expect("dump").is_empty());
            // ...only when asked for.
            let got = only(dump(TCP, Some(8300), true).expect("dump"));
            assert!(got.bound_inactive);
            assert_eq!((got.family, got.state), (AF_INET, TCP_CLOSE));
            assert_eq!(
                (got.local, got.remote),
                (addr("127.0.0.1:8300"), addr("0.0.0.0:0"))
            );
            assert_eq!(got.inode, inode_of(&v4));

            let got = only(dump(TCP, Some(8301), true).expect("dump"));
            assert!(got.bound_inactive);
            assert_eq!((got.family, got.v6only), (AF_INET6, Some(true)));
            assert_eq!(got.inode, inode_of(&v6));

            let got = only(dump(TCP, Some(8302), true).expect("dump"));
            assert!(!got.bound_inactive);
            assert_eq!(got.inode, inode_of(&listener));
        });
    }

    #[test]
    fn port_filter() {
        in_fresh_netns(|| {
            let _a = TcpListener::bind("127.0.0.1:8400").expect("bind");
            let _b = TcpListener::bind("127.0.0.1:8401").expect("bind");
            let _c = TcpListener::bind("[::]:8402").expect("bind");
            let _d = UdpSocket::bind("127.0.0.1:8400").expect("bind");

            for kernel_filter in [true, false] {
                let got = only(dump_with(TCP, Some(&[8400]), true, kernel_filter).expect("dump"));
                assert_eq!((got.protocol, got.local.port()), (TCP, 8400));
                let got = only(dump_with(UDP, Some(&[8400]), true, kernel_filter).expect("dump"));
                assert_eq!((got.protocol, got.local.port()), (UDP, 8400));
                let got = only(dump_with(TCP, Some(&[8402]), true, kernel_filter).expect("dump"));
                assert_eq!(got.family, AF_INET6);
                assert!(dump_with(TCP, Some(&[9999]), true, kernel_filter)
                    .expect("dump")
                    .is_empty());
            }
            let mut ports: Vec<_> = dump(TCP, None, true)
                .expect("dump")
                .iter()
                .map(|s| s.local.port())
                .collect();
            ports.sort();
            assert_eq!(ports, [8400, 8401, 8402]);
        });
    }

    /// Several ports in one dump: the kernel's or-ed filter keeps exactly
    /// those (nothing filters after it), and so does the filter here past
    /// the kernel filter's size.
    #[test]
    fn several_ports_one_dump() {
        in_fresh_netns(|| {
            let _a = TcpListener::bind("127.0.0.1:8500").expect("bind");
            let _b = TcpListener::bind("127.0.0.1:8501").expect("bind");
            let _c = TcpListener::bind("[::]:8502").expect("bind");
            let _d = TcpListener::bind("127.0.0.1:8503").expect("bind");
            let ports = |sockets: Vec<DiagSocket>| -> Vec<u16> {
                let mut p: Vec<u16> = sockets.iter().map(|s| s.local.port()).collect();
                p.sort();
                p
            };
            let asked = [8502, 8500, 9999, 8503];
            let got = dump_ports(TCP, &asked, true).expect("dump");
            assert_eq!(ports(got), [8500, 8502, 8503]);
            let got = dump_ports(TCP, &[8501], true).expect("dump");
            assert_eq!(ports(got), [8501]);
            let many: Vec<u16> = (9000..9000 + MAX_FILTER_PORTS as u16)
                .chain([8501])
                .collect();
            assert_eq!(ports(dump_ports(TCP, &many, true).expect("dump")), [8501]);
            // One port: the program `dump` always sent.
            assert_eq!(
                sport_filter(&[8080]),
                [12, 0, 1, 0, 11, 8, 12, 0, 0, 0, 0x90, 0x1f]
            );
        });
    }

    #[test]
    fn unsupported_protocol() {
        let err = dump(1, None, false).expect_err("ICMP is not supported");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// One netlink message: header, then `payload` padded to 4 bytes.
    fn nlmsg(message_type: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut msg = Vec::new();
        msg.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        msg.extend_from_slice(&message_type.to_ne_bytes());
        msg.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        msg.resize(msg.len().next_multiple_of(4), 0);
        msg
    }

    #[test]
    fn malformed_replies_are_errors() {
        const NOOP: u16 = 1;
        const ERROR: u16 = 2;
        const DONE: u16 = 3;
        let parse = |datagram: &[u8]| parse_datagram(datagram, 7, TCP, &mut Vec::new());

        let done = nlmsg(DONE, 7, &0i32.to_ne_bytes());
        assert_eq!(parse(&done).expect("done"), Dump::Done);
        assert_eq!(
            parse(&[nlmsg(NOOP, 7, &[]), done.clone()].concat()).expect("done"),
            Dump::Done
        );
        assert_eq!(parse(&[]).expect("empty"), Dump::More);

        let eperm = nlmsg(ERROR, 7, &[(-libc::EPERM).to_ne_bytes(), [0; 4]].concat());
        assert_eq!(
            parse(&eperm).expect_err("NLMSG_ERROR").raw_os_error(),
            Some(libc::EPERM)
        );
        let failed_done = nlmsg(DONE, 7, &(-libc::ENOBUFS).to_ne_bytes());
        assert_eq!(
            parse(&failed_done).expect_err("DONE < 0").raw_os_error(),
            Some(libc::ENOBUFS)
        );
        // Forged codes whose negation overflows.
        for message_type in [ERROR, DONE] {
            let forged = nlmsg(message_type, 7, &[i32::MIN.to_ne_bytes(), [0; 4]].concat());
            assert!(parse(&forged).is_err());
        }

        let mut too_long = done.clone();
        too_long[0] = 200;
        let mut too_short = done.clone();
        too_short[0] = 4;
        let truncated_socket = nlmsg(SOCK_DIAG_BY_FAMILY, 7, &[AF_INET, 10, 0, 0, 1, 2, 3]);
        let unknown_type = nlmsg(999, 7, &[0; 72]);
        let stale = nlmsg(DONE, 8, &0i32.to_ne_bytes());
        let bad: [&[u8]; 6] = [
            &done[..10],
            &too_long[..],
            &too_short[..],
            &stale,
            &truncated_socket,
            &unknown_type,
        ];
        for bad in bad {
            let err = parse(bad).expect_err("malformed");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}: {err}");
        }
    }
}
