//! kube-proxy's nftables and IPVS modes, and its iptables mode on legacy
//! iptables, each in the test's own network namespace (never the host's).
//! nftables: its `ip kube-proxy` table, in the shape its nftables proxier
//! writes it, loaded with Debian's `nft -f`: NodePorts (`service-nodeports`)
//! and an externalIP on the node's address (`service-ips`). Legacy
//! iptables: its rules loaded with Debian's `iptables-legacy-restore`,
//! beside an iptables-nft rule. IPVS: virtual servers on the node's address
//! and on the ClusterIP on a `kube-ipvs0` dummy device, written through
//! IPVS's generic netlink family as kube-proxy's IPVS proxier writes them,
//! beside an SCTP and a firewall-mark virtual server; this host's kernel
//! has no ip_vs, so that test runs in the VM suites, whose Debian kernels
//! load it as a module. In each, a connection to the port really reaches a
//! server behind it, and `who` and `check` name where it goes. kube-proxy
//! itself is not packaged for Debian 12: its rules are written here as it
//! writes them.

mod common;

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::*;

/// kube-proxy's `ip kube-proxy` table for Service shop/web (ClusterIP
/// 10.96.0.50:80, port `http`, NodePort 30080, externalIP 192.168.0.2,
/// endpoints 10.244.0.5:8080 and 10.244.0.6:8080) on a node whose address
/// is 192.168.0.2, and for Service shop/dns (UDP NodePort 30053) without
/// endpoints. The lines are those of pkg/proxy/nftables/proxier_test.go's
/// `baseRules` and TestOverallNFTablesRules expectations (its NodePort
/// Service svc3, the externalIP element of its svc2, and its no-endpoint
/// elements), with the names, addresses and ports above
/// (pod CIDR 10.244.0.0/16, service CIDR 10.96.0.0/16); the chains' hashes
/// are computed as kube-proxy's `hashAndTruncate` does (the first 8
/// characters of the base32 SHA-256 of `shop/web/tcp/http`, or of
/// `shop/web/tcp/http__10.244.0.5/8080` for an endpoint's chain; the same
/// gives its test's `ULMVA6XW` and `5OJB2KTY`). One order differs:
/// the test lists the chains sorted after the rules that use them; a
/// single `nft -f` transaction needs each chain before a rule goes to it,
/// as kube-proxy's own transaction adds them.
const RULES: &str = r#"add table ip kube-proxy { comment "rules for kube-proxy" ; }
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
add chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr { 10.96.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add element ip kube-proxy nodeport-ips { 192.168.0.2 }
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add chain ip kube-proxy service-KHN6ECMT-shop/web/tcp/http
add chain ip kube-proxy external-KHN6ECMT-shop/web/tcp/http
add chain ip kube-proxy endpoint-YDREIN3S-shop/web/tcp/http__10.244.0.5/8080
add chain ip kube-proxy endpoint-K6YIHJT7-shop/web/tcp/http__10.244.0.6/8080
add rule ip kube-proxy service-KHN6ECMT-shop/web/tcp/http ip daddr 10.96.0.50 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
add rule ip kube-proxy service-KHN6ECMT-shop/web/tcp/http numgen random mod 2 vmap { 0 : goto endpoint-YDREIN3S-shop/web/tcp/http__10.244.0.5/8080 , 1 : goto endpoint-K6YIHJT7-shop/web/tcp/http__10.244.0.6/8080 }
add rule ip kube-proxy external-KHN6ECMT-shop/web/tcp/http jump mark-for-masquerade
add rule ip kube-proxy external-KHN6ECMT-shop/web/tcp/http goto service-KHN6ECMT-shop/web/tcp/http
add rule ip kube-proxy endpoint-YDREIN3S-shop/web/tcp/http__10.244.0.5/8080 ip saddr 10.244.0.5 jump mark-for-masquerade
add rule ip kube-proxy endpoint-YDREIN3S-shop/web/tcp/http__10.244.0.5/8080 meta l4proto tcp dnat to 10.244.0.5:8080
add rule ip kube-proxy endpoint-K6YIHJT7-shop/web/tcp/http__10.244.0.6/8080 ip saddr 10.244.0.6 jump mark-for-masquerade
add rule ip kube-proxy endpoint-K6YIHJT7-shop/web/tcp/http__10.244.0.6/8080 meta l4proto tcp dnat to 10.244.0.6:8080
add element ip kube-proxy cluster-ips { 10.96.0.50 }
add element ip kube-proxy service-ips { 10.96.0.50 . tcp . 80 : goto service-KHN6ECMT-shop/web/tcp/http }
add element ip kube-proxy service-ips { 192.168.0.2 . tcp . 80 : goto external-KHN6ECMT-shop/web/tcp/http }
add element ip kube-proxy service-nodeports { tcp . 30080 : goto external-KHN6ECMT-shop/web/tcp/http }
add element ip kube-proxy cluster-ips { 10.96.0.53 }
add element ip kube-proxy no-endpoint-nodeports { udp . 30053 comment "shop/dns:dns" : drop }
add element ip kube-proxy no-endpoint-services { 10.96.0.53 . udp . 53 comment "shop/dns:dns" : goto reject-chain }
"#;

/// The IPv6 table of a dual-stack node (kube-proxy runs one proxier per
/// family) for the same Service, with one endpoint: only the NodePort's
/// path of [`RULES`], in `ip6` syntax as the proxier writes it for
/// IPv6 (`ip6 daddr`, `ipv6_addr`; an endpoint chain's colons written as
/// dots, `hashAndTruncate` of `shop/web/tcp/http__fd00.10..5/8080`).
const RULES_V6: &str = r#"add table ip6 kube-proxy { comment "rules for kube-proxy" ; }
add set ip6 kube-proxy nodeport-ips { type ipv6_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip6 kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add chain ip6 kube-proxy mark-for-masquerade
add chain ip6 kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip6 kube-proxy services
add rule ip6 kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip6 kube-proxy nat-output jump services
add rule ip6 kube-proxy services ip6 daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add element ip6 kube-proxy nodeport-ips { 2001:db8::1 }
add chain ip6 kube-proxy service-KHN6ECMT-shop/web/tcp/http
add chain ip6 kube-proxy external-KHN6ECMT-shop/web/tcp/http
add chain ip6 kube-proxy endpoint-5QWG3TD2-shop/web/tcp/http__fd00.10..5/8080
add rule ip6 kube-proxy service-KHN6ECMT-shop/web/tcp/http ip6 daddr fd00:10:96::50 ip6 saddr != fd00:10::/64 jump mark-for-masquerade
add rule ip6 kube-proxy service-KHN6ECMT-shop/web/tcp/http numgen random mod 1 vmap { 0 : goto endpoint-5QWG3TD2-shop/web/tcp/http__fd00.10..5/8080 }
add rule ip6 kube-proxy external-KHN6ECMT-shop/web/tcp/http jump mark-for-masquerade
add rule ip6 kube-proxy external-KHN6ECMT-shop/web/tcp/http goto service-KHN6ECMT-shop/web/tcp/http
add rule ip6 kube-proxy endpoint-5QWG3TD2-shop/web/tcp/http__fd00.10..5/8080 ip6 saddr fd00:10::5 jump mark-for-masquerade
add rule ip6 kube-proxy endpoint-5QWG3TD2-shop/web/tcp/http__fd00.10..5/8080 meta l4proto tcp dnat to [fd00:10::5]:8080
add element ip6 kube-proxy service-nodeports { tcp . 30080 : goto external-KHN6ECMT-shop/web/tcp/http }
"#;

/// The endpoints' addresses.
const ENDPOINTS: [&str; 2] = ["10.244.0.5:8080", "10.244.0.6:8080"];

/// Loads `rules` with `nft -f -` (Debian's nftables) in the calling
/// thread's network namespace.
fn nft_load(rules: &str) {
    feed("nft", &["-f", "-"], rules);
}

/// `portwatch ARGS` from `ns`'s thread.
fn portwatch(ns: &Netns, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    ns.run(move || {
        Command::new(bin())
            .args(&args)
            .output()
            .expect("run portwatch")
    })
}

/// In `ns`: the node's address (192.168.0.2) and the endpoints' on `lo`,
/// kube-proxy's rules made by `rules`, and a server on each endpoint
/// (non-blocking, for [`accepted_by`]).
fn node(ns: &Netns, rules: fn()) -> [TcpListener; 2] {
    ns.run(move || {
        ip("link set lo up");
        for addr in ["192.168.0.2", "10.244.0.5", "10.244.0.6"] {
            ip(&format!("addr add {addr}/32 dev lo"));
        }
        rules();
        ENDPOINTS.map(|a| {
            let s = TcpListener::bind(a).expect("an endpoint's server");
            s.set_nonblocking(true).unwrap();
            s
        })
    })
}

/// A connection to NodePort 30080 on the node's address.
fn connect_node_port() -> TcpStream {
    TcpStream::connect_timeout(
        &"192.168.0.2:30080".parse().unwrap(),
        Duration::from_secs(5),
    )
    .expect("connect to the NodePort")
}

/// Which of `servers` accepts a connection within 5 s.
fn accepted_by(servers: &[TcpListener]) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for s in servers {
            match s.accept() {
                Ok((conn, _)) => return conn.local_addr().unwrap(),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
        }
        assert!(Instant::now() < deadline, "no endpoint got the connection");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `who PORT` says `diagnosis` on its `service:` line and `fix` in its
/// fix, and `check PORT --json` says `steered` with the same diagnosis
/// (exit 1); returns check's object.
fn assert_steered(ns: &Netns, port: &str, diagnosis: &str, fix: &str) -> serde_json::Value {
    let out = portwatch(ns, &["who", port]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("service:   {diagnosis}")), "{text}");
    let fix_line = text
        .lines()
        .find(|l| l.starts_with("fix:"))
        .unwrap_or_default();
    assert!(fix_line.contains(fix), "{text}");
    let (code, c) = parse(&portwatch(ns, &["check", port, "--json"]));
    assert_eq!(code, 1, "{c:#}");
    assert_eq!(c["verdict"], "steered", "{c:#}");
    assert_eq!(c["diagnosis"], diagnosis, "{c:#}");
    c
}

/// The address that `server` (in `ns`) accepts a connection to `to` on.
fn accepted_through(ns: &Netns, to: &'static str, server: TcpListener) -> SocketAddr {
    ns.run(move || {
        let _client = TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
        server.accept().unwrap().0.local_addr().unwrap()
    })
}

/// `who PORT --json`'s only DNAT rule, when no socket holds the port.
fn only_rule(ns: &Netns, port: &str) -> serde_json::Value {
    let (code, v) = who(ns, &[port]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["sockets"].as_array().unwrap().len(), 0, "{v:#}");
    let rules = v["dnat"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{v:#}");
    rules[0].clone()
}

/// [`only_rule`]: `rule` in kube-proxy's `ip kube-proxy` table, to Service
/// shop/web (port `http`) reached as `kind`, with both endpoints.
fn web_rule(ns: &Netns, port: &str, kind: &str, rule: &str) -> serde_json::Value {
    let found = only_rule(ns, port);
    assert_eq!(found["from"], "nft", "{found:#}");
    assert_eq!(found["table"], "ip kube-proxy", "{found:#}");
    assert_eq!(found["service"]["namespace"], "shop", "{found:#}");
    assert_eq!(found["service"]["name"], "web", "{found:#}");
    assert_eq!(found["service"]["port_name"], "http", "{found:#}");
    assert_eq!(found["service"]["kind"], kind, "{found:#}");
    assert_eq!(
        found["endpoints"],
        serde_json::json!(ENDPOINTS),
        "{found:#}"
    );
    assert_eq!(found["rule"], rule, "{found:#}");
    found
}

/// kube-proxy's nftables rules send NodePort 30080 of the node's address
/// to one of the Service's endpoints: a connection reaches a server there
/// (and a port kube-proxy has no rule for is refused). `who` (JSON and
/// text) and `check` say that no socket holds the port but Service
/// shop/web takes its traffic, with both endpoints. A NodePort whose
/// Service has no endpoints is named from kube-proxy's comment.
#[test]
fn nftables_node_port_names_its_service() {
    let ns = Netns::new("pw-kp-nft");
    let servers = node(&ns, || nft_load(RULES));
    let reached = ns.run(move || {
        let client = connect_node_port();
        let to = accepted_by(&servers);
        let refused = TcpStream::connect_timeout(
            &"192.168.0.2:30081".parse().unwrap(),
            Duration::from_secs(5),
        );
        (client.peer_addr().unwrap(), to, refused.is_err())
    });
    assert_eq!(reached.0.to_string(), "192.168.0.2:30080");
    assert!(
        ENDPOINTS.contains(&reached.1.to_string().as_str()),
        "{reached:?}"
    );
    assert!(reached.2, "a port without rules answered: {reached:?}");

    web_rule(
        &ns,
        "30080",
        "NodePort",
        "service-nodeports { tcp . 30080 : goto external-KHN6ECMT-shop/web/tcp/http }",
    );

    let diagnosis = "no socket holds tcp port 30080, but kube-proxy sends it to Service shop/web (NodePort, port http; endpoints 10.244.0.5:8080, 10.244.0.6:8080): a process listening here never sees that traffic";
    let c = assert_steered(
        &ns,
        "30080",
        diagnosis,
        "`kubectl -n shop get service web -o yaml` (a cluster command",
    );
    assert_eq!(c["dnat"][0]["service"]["name"], "web", "{c:#}");
    let out = portwatch(&ns, &["check", "30080"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("steered           Service shop/web (NodePort)"),
        "{text}"
    );
    // Its lines wrap at the terminal's width.
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains(diagnosis), "{text}");

    // No endpoints: kube-proxy drops the NodePort's traffic; still its.
    let (code, v) = who(&ns, &["30053/udp"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["dnat"][0]["service"]["name"], "dns", "{v:#}");
    assert_eq!(v["dnat"][0]["endpoints"], serde_json::Value::Null, "{v:#}");
    let out = portwatch(&ns, &["who", "30053/udp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("but kube-proxy sends it to Service shop/dns (NodePort, port dns; no endpoints, so it is dropped or rejected)"),
        "{text}"
    );
    // A port kube-proxy has nothing for stays free.
    let (code, v) = who(&ns, &["30081"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["dnat"], serde_json::json!([]), "{v:#}");
}

/// kube-proxy's nftables `service-ips` map sends port 80 of externalIP
/// 192.168.0.2 (an address of the node) to the Service's endpoints: a
/// connection there reaches one, and `who` and `check` name Service
/// shop/web as they do for its NodePort. A bind to another address of the
/// node (127.0.0.1) is not steered, and the ClusterIP, on no device of the
/// node, steers nothing.
#[test]
fn nftables_external_ip_names_its_service() {
    let ns = Netns::new("pw-kp-extip");
    let servers = node(&ns, || nft_load(RULES));
    let to = ns.run(move || {
        let _client =
            TcpStream::connect_timeout(&"192.168.0.2:80".parse().unwrap(), Duration::from_secs(5))
                .expect("connect to the externalIP");
        accepted_by(&servers)
    });
    assert!(ENDPOINTS.contains(&to.to_string().as_str()), "{to}");

    let rule = web_rule(
        &ns,
        "80",
        "External",
        "service-ips { 192.168.0.2 . tcp . 80 : goto external-KHN6ECMT-shop/web/tcp/http }",
    );
    assert_eq!(rule["service"]["address"], "192.168.0.2", "{rule:#}");

    let diagnosis = "no socket holds tcp port 80, but kube-proxy sends it to Service shop/web (externalIP or LoadBalancer IP 192.168.0.2, port http; endpoints 10.244.0.5:8080, 10.244.0.6:8080): a process listening here never sees that traffic";
    assert_steered(
        &ns,
        "80",
        diagnosis,
        "take 192.168.0.2 out of Service shop/web's externalIPs",
    );
    let out = portwatch(&ns, &["check", "80"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("Service shop/web (externalIP or LoadBalancer IP 192.168.0.2)"),
        "{text}"
    );
    // A bind to another address of the node takes none of that traffic.
    let (code, c) = parse(&portwatch(&ns, &["check", "127.0.0.1:80", "--json"]));
    assert_eq!(code, 0, "{c:#}");
    assert_eq!(c["verdict"], "free", "{c:#}");
    let (code, c) = parse(&portwatch(&ns, &["check", "192.168.0.2:80", "--json"]));
    assert_eq!(code, 1, "{c:#}");
    assert_eq!(c["dnat"][0]["service"]["address"], "192.168.0.2", "{c:#}");
}

/// kube-proxy's iptables-mode rules of before KUBE-EXT (up to 1.23: the
/// NodePort's rules mark and jump to KUBE-SVC straight; an unnamed port),
/// written with `iptables-legacy-restore`, as a node on legacy iptables has
/// them, in the shape of that release's pkg/proxy/iptables/proxier.go and
/// the expectations of its proxier_test.go (Service default/nginx-svc,
/// NodePort 30080, endpoint 10.244.1.2:80).
const LEGACY_RULES: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SEP-XYZ3NGHJBRQWT5GB - [0:0]
:KUBE-SVC-R2VK7O5AFVLRAXSH - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p tcp -m comment --comment \"default/nginx-svc:\" -m tcp --dport 30080 -j KUBE-MARK-MASQ
-A KUBE-NODEPORTS -p tcp -m comment --comment \"default/nginx-svc:\" -m tcp --dport 30080 -j KUBE-SVC-R2VK7O5AFVLRAXSH
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -m mark --mark 0x4000/0x4000 -j MASQUERADE
-A KUBE-SEP-XYZ3NGHJBRQWT5GB -s 10.244.1.2/32 -m comment --comment \"default/nginx-svc:\" -j KUBE-MARK-MASQ
-A KUBE-SEP-XYZ3NGHJBRQWT5GB -p tcp -m comment --comment \"default/nginx-svc:\" -m tcp -j DNAT --to-destination 10.244.1.2:80
-A KUBE-SERVICES -d 10.96.0.60/32 -p tcp -m comment --comment \"default/nginx-svc: cluster IP\" -m tcp --dport 80 -j KUBE-SVC-R2VK7O5AFVLRAXSH
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-R2VK7O5AFVLRAXSH -m comment --comment \"default/nginx-svc:\" -j KUBE-SEP-XYZ3NGHJBRQWT5GB
COMMIT
";

/// A rule iptables-nft writes beside them (CNI portmap's hostPort DNAT,
/// as the `kubernetes` suite's pods get it).
const NFT_HOSTPORT: &str = "*nat
:PREROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 18097 -j DNAT --to-destination 10.244.1.2:80
COMMIT
";

/// A port forward written with `ip6tables-legacy` (IPv6's legacy nat
/// table, listed from its own /proc file).
const LEGACY_V6_FORWARD: &str = "*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -d ::1/128 -p tcp -m tcp --dport 30081 -j DNAT --to-destination [fd00::7]:80
COMMIT
";

/// Rules written with iptables-legacy are invisible to nft and to
/// iptables-nft's `iptables-save`; portwatch reads them with
/// `iptables-legacy-save` (the legacy nat table exists in the namespace),
/// beside iptables-nft's, and names each rule once: NodePort 30080 (legacy)
/// goes to Service default/nginx-svc, and a connection to it reaches the
/// endpoint; hostPort 18097 (iptables-nft) is listed by `iptables`; an
/// IPv6 forward by `ip6tables-legacy-save`.
#[test]
fn iptables_legacy_node_port_names_its_service() {
    let ns = Netns::new("pw-kp-legacy");
    let server = ns.run(|| {
        ip("link set lo up");
        ip("addr add 10.244.1.2/32 dev lo");
        feed("iptables-legacy-restore", &[], LEGACY_RULES);
        feed("iptables-nft-restore", &["--noflush"], NFT_HOSTPORT);
        feed("ip6tables-legacy-restore", &[], LEGACY_V6_FORWARD);
        TcpListener::bind("10.244.1.2:80").expect("the endpoint's server")
    });
    let to = accepted_through(&ns, "127.0.0.1:30080", server);
    assert_eq!(to.to_string(), "10.244.1.2:80");

    let rule = only_rule(&ns, "30080");
    assert_eq!(rule["from"], "iptables-legacy", "{rule:#}");
    assert_eq!(rule["service"]["namespace"], "default", "{rule:#}");
    assert_eq!(rule["service"]["name"], "nginx-svc", "{rule:#}");
    assert_eq!(rule["service"]["kind"], "NodePort", "{rule:#}");
    assert_eq!(
        rule["endpoints"],
        serde_json::json!(["10.244.1.2:80"]),
        "{rule:#}"
    );
    let diagnosis = "no socket holds tcp port 30080, but kube-proxy sends it to Service default/nginx-svc (NodePort; endpoints 10.244.1.2:80): a process listening here never sees that traffic";
    assert_steered(
        &ns,
        "30080",
        diagnosis,
        "`kubectl -n default get service nginx-svc -o yaml`",
    );

    let (code, v) = who(&ns, &["18097"]);
    assert_eq!(code, 1, "{v:#}");
    let froms: Vec<&str> = v["dnat"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["from"].as_str())
        .collect();
    assert_eq!(froms, ["iptables"], "{v:#}");
    let rule = only_rule(&ns, "30081");
    assert_eq!(rule["from"], "ip6tables-legacy", "{rule:#}");
    assert_eq!(rule["to"], "[fd00::7]:80", "{rule:#}");

    // As in a pod whose manifest leaves NET_RAW out: the legacy lister
    // fails, and portwatch says what it lacks instead of a bare "you must
    // be root".
    let out = ns.run(|| {
        Command::new("capsh")
            .args(["--drop=cap_net_raw", "--"])
            .arg("-c")
            .arg(format!("exec {} who 30080", bin()))
            .output()
            .expect("run capsh")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "/usr/sbin/iptables-legacy-save needs CAP_NET_RAW beside CAP_NET_ADMIN (a raw socket)"
        ),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("nginx-svc"),
        "a rule named without its lister"
    );
}

/// IPVS's generic netlink family on a socket of the calling thread's
/// network namespace.
type IpvsSocket = nlrs::genetlink::socket::GenericNetlinkSocket<
    Vec<u8>,
    Vec<u8>,
    nlrs::netlink::socket::NlSocket,
>;

/// Opens [`IpvsSocket`] (ip_vs loaded).
fn ipvs_socket() -> IpvsSocket {
    use nlrs::{ipvs::IPVS_FAMILY, netlink::socket::NlSocketType, socket::NetlinkSocket};
    let socket = NetlinkSocket::new_vectored(NlSocketType::NETLINK_GENERIC).expect("netlink");
    IpvsSocket::from_netlink_socket(socket, IPVS_FAMILY.to_string())
        .expect("the IPVS family (ip_vs loaded)")
}

/// Adds virtual server `vip` (TCP, round robin) with real servers `reals`
/// (masquerading, weight 1), as kube-proxy's IPVS proxier makes one
/// (pkg/proxy/ipvs/proxier.go: scheduler `rr` by default, the `masq`
/// forwarding method), through IPVS's generic netlink family in the
/// calling thread's network namespace.
fn ipvs_add(vip: &str, reals: &[&str]) {
    use nlrs::{
        genetlink::socket::GenericRequestBuilder,
        ipvs::{
            destination::{IpvsForwardMethod, NewDestinationMessageBuilder},
            service::NewServiceMessageBuilder,
            IpvsService, Protocol,
        },
    };
    let mut socket = ipvs_socket();
    let service = IpvsService {
        service_address: vip.parse().unwrap(),
        protocol: Protocol::TCP,
    };
    let mut add = socket.message_builder::<NewServiceMessageBuilder<_>>(service);
    add.sched_name = "rr".into();
    add.call().expect("add the virtual server");
    for real in reals {
        let mut add = socket
            .message_builder::<NewDestinationMessageBuilder<_>>((service, real.parse().unwrap()));
        add.set_forwarding_method(IpvsForwardMethod::Masquerade);
        add.call().expect("add a real server");
    }
}

/// Adds a virtual server that nlrs's own dump parser cannot read: one of
/// SCTP on `vip` (kube-proxy makes them for SCTP Services), or, with
/// `fwmark`, one by firewall mark (keepalived's `virtual_server fwmark`).
/// nlrs's builder has no firewall mark: its attribute is added to the
/// message it built, and the lengths before it grown to match, as the
/// kernel's ip_vs_genl_parse_service reads one (a mark wins over the
/// address and port).
fn ipvs_add_unreadable(vip: &str, fwmark: Option<u32>) {
    use nlrs::{
        genetlink::{socket::GenericRequestBuilder, GenericMessageBuilder},
        ipvs::{
            service::{service_attributes::IPVS_SVC_ATTR_FWMARK, NewServiceMessageBuilder},
            IpvsService, Protocol,
        },
        netlink::{attr::write_u32_attr, msg::validate_ack},
    };
    let mut socket = ipvs_socket();
    let service = IpvsService {
        service_address: vip.parse().unwrap(),
        protocol: Protocol::TCP,
    };
    let mut add = socket.message_builder::<NewServiceMessageBuilder<_>>(service);
    add.sched_name = "rr".into();
    let Some(mark) = fwmark else {
        add.protocol = 132; // IPPROTO_SCTP
        add.call().expect("add an SCTP virtual server");
        return;
    };
    let (socket, _) = add.build().expect("build the message");
    let grown = write_u32_attr(socket, IPVS_SVC_ATTR_FWMARK, mark).unwrap();
    let message = socket.snd_buffer.get_mut();
    // The netlink header's length (offset 0), then the nested service
    // attribute's (after the 16-byte netlink and 4-byte generic headers).
    let len = u32::from_ne_bytes(message[0..4].try_into().unwrap()) + grown as u32;
    message[0..4].copy_from_slice(&len.to_ne_bytes());
    let nested = u16::from_ne_bytes(message[20..22].try_into().unwrap()) + grown as u16;
    message[20..22].copy_from_slice(&nested.to_ne_bytes());
    socket.send().expect("send");
    socket.receive().expect("receive");
    validate_ack(socket).expect("add a virtual server by firewall mark");
}

/// kube-proxy's IPVS mode for Service shop/web: NodePort 30080 on the
/// node's address and ClusterIP 10.96.0.50:80 on `kube-ipvs0`, both with
/// the two endpoints as real servers. A connection to the NodePort
/// reaches an endpoint's server; `who` (JSON and text) and `check` say
/// that kube-proxy's IPVS sends the port to both endpoints (IPVS carries
/// no Service name).
#[test]
#[ignore = "needs the ip_vs module: runs in the VM suites (cargo xtask vm-test)"]
fn ipvs_node_port_names_its_endpoints() {
    let ns = Netns::new("pw-kp-ipvs");
    let servers = node(&ns, || {
        // kube-proxy's dummy device, holding the ClusterIPs.
        ip("link add kube-ipvs0 type dummy");
        ip("addr add 10.96.0.50/32 dev kube-ipvs0");
        ipvs_add("192.168.0.2:30080", &ENDPOINTS);
        ipvs_add("10.96.0.50:80", &ENDPOINTS);
        // What nlrs's dump parser fails on, beside them.
        ipvs_add_unreadable("192.168.0.2:30090", None);
        ipvs_add_unreadable("0.0.0.0:0", Some(7));
    });
    let to = ns.run(move || {
        let _client = connect_node_port();
        accepted_by(&servers)
    });
    assert!(ENDPOINTS.contains(&to.to_string().as_str()), "{to}");

    let out = portwatch(&ns, &["who", "30080", "--json"]);
    let (code, v) = parse(&out);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["sockets"].as_array().unwrap().len(), 0, "{v:#}");
    let rule = &v["dnat"][0];
    assert_eq!(rule["from"], "ipvs", "{v:#}");
    // The SCTP and firewall-mark virtual servers are passed over and
    // counted once; the TCP ones are all read.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("portwatch: IPVS: passed over 2 virtual servers (1 by firewall mark, 1 neither TCP nor UDP); the TCP and UDP ones are read\n").count(),
        1,
        "{stderr}"
    );
    assert_eq!(rule["made_by"], "kube-proxy", "{v:#}");
    assert_eq!(rule["endpoints"], serde_json::json!(ENDPOINTS), "{v:#}");
    assert_eq!(
        rule["rule"], "virtual servers TCP 192.168.0.2:30080 rr",
        "{v:#}"
    );

    let diagnosis = "no socket holds tcp port 30080, but kube-proxy (IPVS) sends it to 10.244.0.5:8080, 10.244.0.6:8080: a process listening here never sees that traffic";
    assert_steered(
        &ns,
        "30080",
        diagnosis,
        "`kubectl get services -A | grep 30080` (a cluster command",
    );
    let out = portwatch(&ns, &["check", "30080"]);
    let text = String::from_utf8_lossy(&out.stdout);
    // The holder is long: on a line of its own.
    assert!(text.contains("steered\n"), "{text}");
    assert!(
        text.contains("holder: kube-proxy (IPVS) to 10.244.0.5:8080, 10.244.0.6:8080"),
        "{text}"
    );
    // The ClusterIP's port is no node port: a bind to 80 is not steered
    // on the node's addresses, but the virtual server is still named.
    let (_, v) = who(&ns, &["80"]);
    assert_eq!(
        v["dnat"][0]["rule"], "virtual servers TCP 10.96.0.50:80 rr",
        "{v:#}"
    );
}

/// The IPv6 side of a dual-stack node: kube-proxy's `ip6 kube-proxy` table
/// sends NodePort 30080 of the node's IPv6 address to the endpoint's
/// IPv6 server, and `who` names the Service with that endpoint as
/// `[fd00:10::5]:8080`.
#[test]
fn nftables_ipv6_node_port_names_its_service() {
    let ns = Netns::new("pw-kp-nft6");
    let server = ns.run(|| {
        ip("link set lo up");
        for addr in ["2001:db8::1", "fd00:10::5"] {
            ip(&format!("-6 addr add {addr}/128 dev lo nodad"));
        }
        nft_load(RULES_V6);
        TcpListener::bind("[fd00:10::5]:8080").expect("the endpoint's server")
    });
    let to = accepted_through(&ns, "[2001:db8::1]:30080", server);
    assert_eq!(to.to_string(), "[fd00:10::5]:8080");

    let rule = only_rule(&ns, "30080");
    assert_eq!(rule["from"], "nft", "{rule:#}");
    assert_eq!(rule["service"]["name"], "web", "{rule:#}");
    assert_eq!(
        rule["endpoints"],
        serde_json::json!(["[fd00:10::5]:8080"]),
        "{rule:#}"
    );
}
