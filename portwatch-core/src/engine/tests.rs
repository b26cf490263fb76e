//! The engine's batches: how bindings are grouped into dumps (pure), and,
//! with real sockets in a private network namespace (root), that a batch
//! answers each binding as asking for it alone would, for one dump per
//! protocol and one walk of /proc.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
};

use portwatch_test_support::{in_fresh_netns, Process};
use socket2::{Domain, Socket, Type};

use super::{plan::*, *};
use crate::{bindcheck::Apart, diagnose::Reason, holders::netns, request::Proto};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn tcp(addr: &str, port: u16) -> Binding {
    Binding::plain(Proto::Tcp, ip(addr), port)
}

fn udp(addr: &str, port: u16) -> Binding {
    Binding::plain(Proto::Udp, ip(addr), port)
}

fn diag(protocol: u8, local: &str) -> DiagSocket {
    DiagSocket {
        protocol,
        family: 2,
        state: 10,
        bound_inactive: false,
        local: local.parse().expect("test address"),
        remote: "0.0.0.0:0".parse().expect("test address"),
        bound_dev_if: 0,
        uid: 0,
        inode: 1,
        v6only: None,
        time_wait_left: None,
    }
}

#[test]
fn one_dump_per_protocol_each_port_once() {
    let mut reuse = tcp("0.0.0.0", 80);
    reuse.opts.reuseaddr = true;
    let on_lo = Binding {
        device: Some("lo".into()),
        ..tcp("127.0.0.1", 443)
    };
    let bindings = [
        udp("0.0.0.0", 53),
        tcp("0.0.0.0", 80),
        tcp("::", 80),
        reuse,
        on_lo,
        udp("127.0.0.1", 53),
        udp("::1", 5353),
        tcp("127.0.0.1", 8080),
    ];
    let dumps = plan(&bindings).expect("TCP and UDP only");
    assert_eq!(
        dumps,
        [
            Dump {
                proto: Proto::Tcp,
                ports: vec![80, 443, 8080],
            },
            Dump {
                proto: Proto::Udp,
                ports: vec![53, 5353],
            },
        ]
    );
    assert_eq!(plan(&[]).expect("nothing asked"), []);
    let sctp = Binding::plain(Proto::Other(132), ip("0.0.0.0"), 80);
    assert!(matches!(
        plan(&[tcp("0.0.0.0", 80), sctp]),
        Err(JudgeError::Protocol(p)) if p == "sctp"
    ));
}

#[test]
fn dumped_sockets_filed_by_protocol_and_port() {
    let mut dumped = Dumped::default();
    dumped.add(
        Proto::Tcp,
        vec![
            diag(6, "127.0.0.1:80"),
            diag(6, "0.0.0.0:443"),
            diag(6, "127.0.0.2:80"),
        ],
    );
    dumped.add(Proto::Udp, vec![diag(17, "0.0.0.0:80")]);
    let ports =
        |b: &Binding| -> Vec<String> { dumped.on(b).iter().map(|s| s.local.to_string()).collect() };
    assert_eq!(ports(&tcp("0.0.0.0", 80)), ["127.0.0.1:80", "127.0.0.2:80"]);
    assert_eq!(ports(&tcp("::", 443)), ["0.0.0.0:443"]);
    assert_eq!(ports(&udp("0.0.0.0", 80)), ["0.0.0.0:80"]);
    assert!(ports(&udp("0.0.0.0", 443)).is_empty());
}

#[test]
fn asked_option() {
    let mut o = Opts::default();
    assert_eq!(Variant::asked(&o), Variant::Plain);
    o.reuseaddr = true;
    assert_eq!(Variant::asked(&o), Variant::Reuseaddr);
    o.reuseport = true;
    assert_eq!(Variant::asked(&o), Variant::Reuseport);
}

fn batch(bindings: Vec<Binding>, trial: bool) -> Batch {
    Batch {
        netns: netns::current_netns().expect("own netns"),
        bindings,
        trial,
        published: false,
        enter: None,
    }
}

/// A TCP socket bound to `addr` but never listened on (IPV6_V6ONLY off).
fn bound_tcp(addr: &str) -> Socket {
    let addr: SocketAddr = addr.parse().expect("test address");
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    if addr.is_ipv6() {
        s.set_only_v6(false).expect("IPV6_V6ONLY");
    }
    s.bind(&addr.into()).expect("bind");
    s
}

/// Real holders of several ports; every binding judged in one batch gets
/// the answer it gets alone, and the batch made one dump per protocol and
/// one walk of /proc.
#[test]
fn a_batch_answers_as_each_binding_alone() {
    in_fresh_netns(|| {
        let v4 = TcpListener::bind("127.0.0.1:7001").expect("bind");
        let dual = bound_tcp("[::]:7002");
        dual.listen(8).expect("listen");
        let udp_held = UdpSocket::bind("0.0.0.0:7003").expect("bind");
        let idle = bound_tcp("0.0.0.0:7004");
        let other = TcpListener::bind("127.0.0.1:7006").expect("bind");
        // Held by a process of their own: children this process forks
        // meanwhile (other tests' `ip`, the engine's `iptables-save`) share
        // its fds until they exec, and would show as sharers.
        let fds = [
            v4.as_raw_fd(),
            dual.as_raw_fd(),
            udp_held.as_raw_fd(),
            idle.as_raw_fd(),
            other.as_raw_fd(),
        ];
        let holder = Process::sleeper(&fds);
        drop((v4, dual, udp_held, idle, other));
        let mut v6only = tcp("::", 7001);
        v6only.opts.v6only = true;
        let mut reuse = tcp("0.0.0.0", 7001);
        reuse.opts.reuseaddr = true;
        let bindings = vec![
            tcp("0.0.0.0", 7001),
            tcp("127.0.0.1", 7002),
            udp("127.0.0.1", 7003),
            tcp("0.0.0.0", 7004),
            tcp("0.0.0.0", 7005),
            v6only,
            tcp("127.0.0.2", 7006),
            udp("0.0.0.0", 7001),
            reuse,
        ];
        for trial in [true, false] {
            let all = judge(&batch(bindings.clone(), trial)).expect("judge the batch");
            assert_eq!(
                all.stats,
                BatchStats {
                    dumps: 2,
                    proc_walks: 1
                }
            );
            assert_eq!(all.judgements.len(), bindings.len());
            for (b, batched) in bindings.iter().zip(&all.judgements) {
                let alone = judge(&batch(vec![b.clone()], trial)).expect("judge one");
                assert_eq!(alone.stats.dumps, 1);
                assert_eq!(&alone.judgements[0], batched, "{b:?}, trial {trial}");
            }
            answers_make_sense(&all.judgements, holder.pid, trial);
        }
    });
}

/// The batch's answers are the real ones, not merely equal ones.
fn answers_make_sense(j: &[Judgement], holder: u32, trial: bool) {
    let checked = if trial {
        Checked::TrialBind
    } else {
        Checked::Rules
    };
    let taken = &j[0];
    assert!(!taken.free);
    assert_eq!(taken.sockets.len(), 1, "{taken:#?}");
    assert_eq!(taken.sockets[0].pid, Some(holder), "{taken:#?}");
    assert_eq!(taken.sockets[0].pids, [holder], "{taken:#?}");
    assert_eq!(
        (taken.binds[0].result, taken.binds[0].checked),
        (Answer::Fails, checked)
    );
    assert_eq!(
        taken.verdict.as_ref().map(|v| v.reason),
        Some(Reason::Listener)
    );
    assert!(!j[1].free, "the dual-stack listener takes 127.0.0.1");
    assert!(j[1].sockets[0].cross_family, "{:#?}", j[1]);
    assert!(!j[2].free, "UDP 0.0.0.0 takes 127.0.0.1");
    assert_eq!(
        j[3].verdict.as_ref().map(|v| v.reason),
        Some(Reason::BoundNotListening)
    );
    assert!(j[4].free && j[4].sockets.is_empty(), "{:#?}", j[4]);
    assert!(
        j[5].free,
        "IPV6_V6ONLY keeps [::] clear of IPv4: {:#?}",
        j[5]
    );
    assert!(j[6].free && j[6].sockets.len() == 1, "{:#?}", j[6]);
    assert!(j[7].free && j[7].sockets.is_empty(), "UDP is not TCP");
    // Asked with SO_REUSEADDR: that option's answer is the verdict.
    assert!(!j[8].free);
    assert_eq!(j[8].verdict, j[8].binds[1].verdict);
    assert!(j[8].verdict.is_some());
}

/// Sockets bound to different devices do not conflict: by the trial bind
/// (SO_BINDTODEVICE) and by the rules alike. A veth pair in a private
/// namespace gives two devices.
#[test]
fn a_device_keeps_bindings_apart() {
    in_fresh_netns(|| {
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("run ip");
            assert!(status.success(), "ip {args:?}: {status}");
        };
        ip(&[
            "link", "add", "pwe0", "type", "veth", "peer", "name", "pwe1",
        ]);
        ip(&["link", "set", "pwe0", "up"]);
        ip(&["link", "set", "pwe1", "up"]);
        let held = bound_tcp("0.0.0.0:7101");
        held.bind_device(Some(b"pwe0")).expect("SO_BINDTODEVICE");
        held.listen(8).expect("listen");
        let on = |device: Option<&str>| Binding {
            device: device.map(str::to_owned),
            ..tcp("0.0.0.0", 7101)
        };
        for trial in [true, false] {
            let all = judge(&batch(
                vec![on(Some("pwe1")), on(Some("pwe0")), on(None)],
                trial,
            ))
            .expect("judge");
            let [other, same, none] = &all.judgements[..] else {
                panic!("three answers: {all:#?}");
            };
            assert!(other.free, "another device, trial {trial}: {other:#?}");
            assert_eq!(other.sockets.len(), 1, "listed, not in the way");
            assert_eq!(other.sockets[0].apart, Some(Apart::OtherDevice));
            assert_eq!(
                other.device.as_ref().map(|d| d.label()).as_deref(),
                Some("device pwe1")
            );
            assert_eq!(same.sockets[0].apart, None);
            assert_eq!(none.sockets[0].apart, None);
            // No SO_REUSEPORT trial beside a socket kept apart: the rules answer.
            let reuseport = |j: &Judgement| {
                let v = &j.binds[2];
                assert_eq!(v.option, Variant::Reuseport);
                (v.checked, v.note.clone())
            };
            let (checked, note) = reuseport(other);
            assert_eq!(checked, Checked::Rules, "{other:#?}");
            assert_eq!(
                note.is_some_and(|n| n.contains("another device or VRF")),
                trial
            );
            if trial {
                assert_eq!(reuseport(same).0, Checked::TrialBind, "{same:#?}");
            }
            assert!(!same.free, "the same device, trial {trial}: {same:#?}");
            assert!(!none.free, "no device, trial {trial}: {none:#?}");
        }
    });
}
