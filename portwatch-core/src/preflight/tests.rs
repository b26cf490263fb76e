use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::{
    diagnose::Verdict,
    holders::sysctl::Sysctls,
    request::{Binding, Proto},
};

fn b(s: &str) -> Binding {
    parse_binding(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A namespace with loopback (127.0.0.1/8, ::1/128) and 10.0.0.5/24.
fn host() -> Host {
    Host {
        addrs: vec![
            Local {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                prefix: 8,
                loopback: true,
            },
            Local {
                addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                prefix: 128,
                loopback: true,
            },
            Local {
                addr: "10.0.0.5".parse().unwrap(),
                prefix: 24,
                loopback: false,
            },
        ],
        sysctls: Sysctls {
            local_port_range: Some((32768, 60999)),
            unprivileged_port_start: Some(1024),
            nonlocal_bind_v4: Some(false),
            nonlocal_bind_v6: Some(false),
            local_reserved_ports: Some("40000,50000-50010".into()),
            tcp_l3mdev_accept: None,
        },
        enter: None,
    }
}

/// What the engine says of a binding nothing holds.
fn nothing(b: &Binding) -> Judgement {
    Judgement {
        binding: b.clone(),
        sockets: Vec::new(),
        binds: Vec::new(),
        published: Vec::new(),
        dnat: Vec::new(),
        verdict: None,
        free: true,
        device: None,
        tools: Default::default(),
        lookup: Default::default(),
        lookup_note: None,
    }
}

fn verdicts(plan: &[&str], host: &Host, user: Option<u32>) -> Vec<Category> {
    let plan: Vec<Binding> = plan.iter().map(|s| b(s)).collect();
    let judged: Vec<Judgement> = plan.iter().map(nothing).collect();
    classify(&entries(&plan), &judged, host, user)
        .into_iter()
        .map(|c| c.verdict)
        .collect()
}

#[test]
fn plain_bindings_parse() {
    let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    assert_eq!(b("80"), Binding::plain(Proto::Tcp, any4, 80));
    assert_eq!(b("53/udp"), Binding::plain(Proto::Udp, any4, 53));
    assert_eq!(b("443/TCP"), Binding::plain(Proto::Tcp, any4, 443));
    assert_eq!(
        b("127.0.0.1:8080"),
        Binding::plain(Proto::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)
    );
    assert_eq!(
        b("[::]:9000/udp"),
        Binding::plain(Proto::Udp, IpAddr::V6(Ipv6Addr::UNSPECIFIED), 9000)
    );
    assert!(!b("[::]:9000").opts.v6only, "Linux's default: dual stack");
    assert_eq!(label(&b("[::1]:9000")), "[::1]:9000/tcp");
    for (bad, why) in [
        ("80x", "'80x' is not a port (1-65535)"),
        ("0", "'0' is not a port (1-65535)"),
        ("65536", "not a port"),
        ("+80", "not a port"),
        ("80/sctp", "unknown protocol 'sctp'"),
        ("::1:80", "in brackets"),
        ("[::1]80", "needs ':PORT'"),
        ("[10.0.0.1]:80", "not an IPv6 address"),
        (
            "localhost:80",
            "not an IPv4 address (host names are not resolved)",
        ),
        ("", "not a port"),
    ] {
        let e = parse_binding(bad).expect_err(bad);
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn reserved_ports_as_the_kernel_prints_them() {
    assert!(reserved("8080,9000-9010", 8080));
    assert!(reserved("8080,9000-9010", 9005));
    assert!(!reserved("8080,9000-9010", 9011));
    assert!(!reserved("", 8080));
}

#[test]
fn addresses_the_namespace_has() {
    let h = host();
    for ok in [
        "0.0.0.0",
        "::",
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "10.0.0.5",
        "224.0.0.1",
        "ff02::1",
    ] {
        assert!(h.can_bind(ok.parse().unwrap()), "{ok}");
    }
    for missing in ["10.0.0.6", "192.0.2.1", "2001:db8::1"] {
        assert!(!h.can_bind(missing.parse().unwrap()), "{missing}");
    }
    let mut nonlocal = host();
    nonlocal.sysctls.nonlocal_bind_v4 = Some(true);
    assert!(nonlocal.can_bind("192.0.2.1".parse().unwrap()));
    assert!(!nonlocal.can_bind("2001:db8::1".parse().unwrap()));
}

#[test]
fn verdicts_from_the_plan_and_the_namespace() {
    let h = host();
    use Category::*;
    assert_eq!(verdicts(&["8080", "53/udp"], &h, None), [Free, Free]);
    assert_eq!(verdicts(&["192.0.2.1:80"], &h, None), [AddressMissing]);
    // Privileged only for an unprivileged deploy; root is assumed.
    assert_eq!(verdicts(&["80"], &h, None), [Free]);
    assert_eq!(verdicts(&["80"], &h, Some(0)), [Free]);
    assert_eq!(
        verdicts(&["80", "1024"], &h, Some(1000)),
        [Privileged, Free]
    );
    // The address comes first, as in the kernel.
    assert_eq!(
        verdicts(&["192.0.2.1:80"], &h, Some(1000)),
        [AddressMissing]
    );
    // In the ephemeral range and not reserved.
    assert_eq!(
        verdicts(&["40001", "40000", "50005", "32767"], &h, None),
        [EphemeralRisk, Free, Free, Free]
    );
}

#[test]
fn the_plans_own_conflicts() {
    let h = host();
    use Category::*;
    // One entry is one socket: the same binding twice conflicts.
    assert_eq!(verdicts(&["8080", "8080"], &h, None), [ConflictInPlan; 2]);
    assert_eq!(
        verdicts(&["127.0.0.1:8080", "0.0.0.0:8080"], &h, None),
        [ConflictInPlan; 2]
    );
    // Other protocol, other address, other port: no conflict.
    assert_eq!(verdicts(&["8080", "8080/udp", "8081"], &h, None), [Free; 3]);
    assert_eq!(
        verdicts(&["127.0.0.1:8080", "10.0.0.5:8080"], &h, None),
        [Free; 2]
    );
    // The IPv6 wildcard without IPV6_V6ONLY takes IPv4 too.
    assert_eq!(
        verdicts(&["0.0.0.0:9000", "[::]:9000"], &h, None),
        [DualStack; 2]
    );
    assert_eq!(
        verdicts(&["[::1]:9000", "0.0.0.0:9000"], &h, None),
        [Free; 2]
    );

    let plan = [b("8080"), b("[::]:8080")];
    let judged: Vec<Judgement> = plan.iter().map(nothing).collect();
    let c = classify(&entries(&plan), &judged, &h, None);
    assert_eq!(c[0].conflicts_with, ["#2 [::]:8080/tcp"]);
    assert_eq!(c[1].conflicts_with, ["#1 0.0.0.0:8080/tcp"]);
    assert!(
        c[0].fix.as_deref().unwrap().contains("IPV6_V6ONLY"),
        "{c:?}"
    );
}

#[test]
fn verdicts_from_the_engine() {
    let h = host();
    let plan = [b("8080"), b("8081"), b("8082")];
    let mut judged: Vec<Judgement> = plan.iter().map(nothing).collect();
    for (j, reason) in
        judged
            .iter_mut()
            .zip([Reason::Listener, Reason::TimeWait, Reason::DualStack])
    {
        j.free = false;
        j.verdict = Some(Verdict {
            reason,
            diagnosis: "held\u{1b}[31m".into(),
            fix: "kill it".into(),
        });
    }
    let c = classify(&entries(&plan), &judged, &h, None);
    let got: Vec<Category> = c.iter().map(|c| c.verdict).collect();
    assert_eq!(
        got,
        [Category::Taken, Category::TimeWait, Category::DualStack]
    );
    assert!(c
        .iter()
        .all(|c| c.fails && c.fix.as_deref() == Some("kill it")));
    // A socket in the way outranks the plan's own conflict.
    let plan = [b("8080"), b("8080")];
    let mut judged: Vec<Judgement> = plan.iter().map(nothing).collect();
    judged[0] = Judgement {
        free: false,
        verdict: Some(Verdict {
            reason: Reason::Listener,
            diagnosis: String::new(),
            fix: String::new(),
        }),
        ..nothing(&plan[0])
    };
    let got: Vec<Category> = classify(&entries(&plan), &judged, &h, None)
        .iter()
        .map(|c| c.verdict)
        .collect();
    assert_eq!(got, [Category::Taken, Category::ConflictInPlan]);

    // Free of sockets, but DNAT sends the traffic away.
    let plan = [b("8080")];
    let j = Judgement {
        free: false,
        dnat: vec![DnatRule {
            from: "iptables".into(),
            rule: "-A PREROUTING -p tcp --dport 8080 -j DNAT --to-destination 10.9.9.9:80".into(),
            to: Some("10.9.9.9:80".into()),
            service: None,
            endpoints: Vec::new(),
            ..DnatRule::default()
        }],
        ..nothing(&plan[0])
    };
    let c = classify(&entries(&plan), &[j], &h, None);
    assert_eq!(c[0].verdict, Category::Steered);
    assert!(!c[0].may_clear());
    assert!(c[0].diagnosis.contains("10.9.9.9:80"), "{c:?}");
}

/// An nft rule steers its table's family only: Docker's IPv4 DNAT (in
/// iptables-nft's `ip nat`, or a native `ip` table) says nothing of the
/// `[::]` v6only socket it publishes beside it; `inet` takes both.
#[test]
fn nft_rules_steer_their_tables_family() {
    let rule = |table: &str| DnatRule {
        from: "nft".into(),
        rule: "tcp dport 8080 dnat to 10.9.9.9:80".into(),
        table: Some(table.into()),
        ..DnatRule::default()
    };
    let mut v6only = b("[::]:8080");
    v6only.opts.v6only = true;
    let mut dual = b("[::]:8080");
    dual.opts.v6only = false;
    let v4 = b("0.0.0.0:8080");
    let got = |table: &str| [&v4, &dual, &v6only].map(|binding| reaches(&rule(table), binding));
    assert_eq!(got("ip nat"), [true, true, false]);
    assert_eq!(got("ip6 kube-proxy"), [false, true, true]);
    assert_eq!(got("inet filter"), [true, true, true]);
    // Legacy iptables' rules by their tool's family, as iptables-nft's.
    let legacy = |from: &str| DnatRule {
        from: from.into(),
        ..rule("")
    };
    let got = |from: &str| [&v4, &dual, &v6only].map(|binding| reaches(&legacy(from), binding));
    assert_eq!(got("iptables-legacy"), [true, true, false]);
    assert_eq!(got("ip6tables-legacy"), [false, true, true]);
}

#[test]
fn what_fails_and_what_is_a_risk() {
    use Category::*;
    let all = [
        Free,
        Taken,
        TimeWait,
        DualStack,
        Steered,
        EphemeralRisk,
        ConflictInPlan,
        AddressMissing,
        Privileged,
    ];
    let fails: Vec<Category> = all.into_iter().filter(|c| c.fails()).collect();
    assert_eq!(
        fails,
        [
            Taken,
            TimeWait,
            DualStack,
            Steered,
            ConflictInPlan,
            AddressMissing,
            Privileged
        ]
    );
    assert_eq!(
        all.into_iter().filter(|c| c.risk()).collect::<Vec<_>>(),
        [EphemeralRisk]
    );
    for c in all {
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            c.as_str(),
            "serde and as_str agree"
        );
    }
}

/// The reservation is aimed at the namespace that was checked: the host's
/// with a plain `sysctl -w`, another through `nsenter` (issue: a plain
/// sysctl there writes the host's list, built from another namespace's).
#[test]
fn ephemeral_risk_fix_is_aimed_at_the_checked_namespace() {
    let plan = [b("55000")];
    let judged: Vec<Judgement> = plan.iter().map(nothing).collect();
    let here = classify(&entries(&plan), &judged, &host(), None);
    let fix = here[0].fix.as_deref().expect("a fix");
    assert!(fix.starts_with("reserve it: `sysctl -w"), "{fix}");
    assert!(!fix.contains("nsenter"), "{fix}");
    let mut other = host();
    other.enter = Some("/run/netns/blue".into());
    let there = classify(&entries(&plan), &judged, &other, None);
    let fix = there[0].fix.as_deref().expect("a fix");
    assert!(
        fix.contains("`nsenter --net=/run/netns/blue sysctl -w net.ipv4.ip_local_reserved_ports=40000,50000-50010,55000`"),
        "{fix}"
    );
    assert!(!fix.contains("/etc/sysctl.d"), "{fix}");
}

/// Plain bindings as the command line gives them.
fn entries(plan: &[Binding]) -> Vec<Entry> {
    plan.iter()
        .enumerate()
        .map(|(i, b)| Entry::argument(b.clone(), i + 1))
        .collect()
}
