//! Kubernetes pods on a containerd whose state directory no default names:
//! Debian's containerd, started by the test with k3s's layout
//! (`/run/k3s-test-NAME-PID/containerd`, its own root and socket) and its
//! CRI plugin, in a network namespace of its own (the pods' node), driven
//! over the CRI gRPC API as kubelet drives it (`common/cri.rs`: kubelet's
//! own sandbox and container configs), with CNI's bridge, host-local and
//! portmap from Debian's containernetworking-plugins. kubelet is not
//! packaged for Debian 12 and no registry is reachable: the images are
//! imported, and the test stands in for kubelet. One case keeps `ctr`: a
//! container without the CRI plugin's annotations, which the plugin never
//! makes.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{containerd::*, cri::*, *};
use serde_json::Value;

/// A container id as containerd's CRI plugin makes them: 64 hex digits.
fn id(n: u8) -> String {
    format!("{:056x}{n:08x}", std::process::id())
}

/// Container `name` of `pod`, busybox's httpd serving on `port`; its id
/// and pid.
fn httpd(ctd: &Containerd, pod: &RunningPod, name: &str, port: u16) -> (String, u32) {
    let argv = ["/bin/busybox", "httpd", "-f", "-p", &port.to_string()];
    run_container(ctd, pod, name, &[port], &argv)
}

/// The inode of `pid`'s network namespace.
fn netns_of(pid: u32) -> u64 {
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("a network namespace");
    std::os::unix::fs::MetadataExt::ino(&ns)
}

/// Asserts that `v`'s first socket is held by container `container` of pod
/// `shop/POD`, that its fix ends the clash in `manifest` (the pod template
/// of the controller its labels name, or "its workload's manifest" when
/// the CRI socket did not answer), and never with `docker stop`, `podman
/// stop`, `kill` or `kubectl delete`.
fn assert_pod(v: &Value, pod: &str, container: &str, manifest: &str) {
    let c = &v["sockets"][0]["container"];
    assert_eq!(c["pod"]["namespace"], "shop", "{v:#}");
    assert_eq!(c["pod"]["name"], pod, "{v:#}");
    assert_eq!(c["pod"]["container"], container, "{v:#}");
    let fix = v["fix"].as_str().unwrap();
    for never in ["docker stop", "podman stop", "kill", "kubectl delete"] {
        assert!(!fix.contains(never), "{fix}");
    }
    assert!(
        fix.starts_with(&format!(
            "Change the port of pod shop/{pod} (container {container}) in {manifest} ("
        )),
        "{fix}"
    );
    assert!(
        fix.contains("(a cluster command: run it where the cluster is managed)"),
        "{fix}"
    );
}

/// A Deployment's pod (its ReplicaSet's `pod-template-hash` label) whose
/// container listens in the pod's own network namespace, under a
/// k3s-style state directory, is named as the cluster knows it, its fix in
/// its ReplicaSet/Deployment's pod template (the labels from a
/// ListPodSandbox on containerd's CRI socket, found from its config). With
/// containerd down (a restart or an upgrade leaves the shims and their
/// containers running) the pod is still named, from the shim above the
/// process, and the fix names no controller: the socket does not answer.
#[test]
fn pod_under_a_k3s_state_directory_is_named() {
    let mut ctd = Containerd::start_with("pod", true);
    let port = port();
    let name = "web-7d9f8b6c5-x2x4q";
    let pod = Pod::new("shop", name, "web").labelled(&[("pod-template-hash", "7d9f8b6c5")]);
    let pod = run_pod(&mut ctd, pod);
    let (web, pid) = httpd(&ctd, &pod, "web", port);
    let v = who_listening(pid, port);
    assert_pod(
        &v,
        name,
        "web",
        "the pod template of its ReplicaSet/Deployment",
    );
    let c = &v["sockets"][0]["container"];
    assert_eq!(c["id"], web.as_str(), "{v:#}");
    assert_eq!(c["pod"]["controller"], "replicaset", "{v:#}");
    assert_eq!(v["sockets"][0]["comm"], "busybox", "{v:#}");
    assert!(
        v["fix"]
            .as_str()
            .unwrap()
            .contains("under ownerReferences, its ReplicaSet/Deployment"),
        "{v:#}"
    );

    ctd.stop_daemon();
    let v = who_listening(pid, port);
    assert_pod(&v, name, "web", "its workload's manifest");
    assert!(
        v["sockets"][0]["container"]["pod"]["controller"].is_null(),
        "{v:#}"
    );
    drop(ctd);
    // StopPodSandbox killed it; its shim reaps it a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the container outlived its test");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A StatefulSet's pod (`controller-revision-hash` and
/// `statefulset.kubernetes.io/pod-name`) with `hostNetwork: true` listens
/// on the node: a host process's bind there fails, and `who` names the pod
/// and says the port is the node's, its fix in the StatefulSet's pod
/// template.
#[test]
fn host_process_against_a_host_network_pod() {
    let mut ctd = Containerd::start_with("hostnet", true);
    let port = port();
    let mut pod = Pod::new("shop", "web-0", "web").labelled(&[
        ("controller-revision-hash", "web-5d4f8c7b9"),
        ("statefulset.kubernetes.io/pod-name", "web-0"),
    ]);
    pod.host_network = true;
    let pod = run_pod(&mut ctd, pod);
    let (_, pid) = httpd(&ctd, &pod, "web", port);
    let v = who_listening(pid, port);
    // The node's network namespace is the pod's.
    let node = ctd.node();
    assert_eq!(netns_of(pid), node.inode);
    let refused = node.run(move || std::net::TcpListener::bind(("0.0.0.0", port)).map(|_| ()));
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::AddrInUse,
        "the host process's bind"
    );
    assert_eq!(
        v["sockets"][0]["container"]["pod"]["controller"], "statefulset",
        "{v:#}"
    );
    let (code, v) = who(node, &[&port.to_string()]);
    assert_eq!(code, 1, "{v:#}");
    // The node here is the test's network namespace, not the host's: the
    // fix cannot tell that the port is the node's (`hostNetwork: true`),
    // as it does on a real node, and names the `containerPort`.
    assert_pod(&v, "web-0", "web", "the pod template of its StatefulSet");
    let fix = v["fix"].as_str().unwrap();
    assert!(fix.contains("`containerPort` "), "{fix}");
    assert!(
        fix.contains("under ownerReferences, its StatefulSet"),
        "{fix}"
    );
    drop(ctd);
}

/// A hostNetwork pod's container wants a port a host process already
/// holds on the node: its failed bind is caught by `watch`, and the holder
/// is named as the host process, never as the pod.
#[test]
fn pod_against_a_host_process() {
    let mut ctd = Containerd::start_with("vshost", true);
    let port = port();
    let node = ctd.node();
    let held = node.run(move || std::net::TcpListener::bind(("0.0.0.0", port)).unwrap());
    let tracer = Tracer::start(&["--netns", &node.arg()]);
    let mut pod = Pod::new("shop", "api-0", "api");
    pod.host_network = true;
    let pod = run_pod(&mut ctd, pod);
    httpd(&ctd, &pod, "api", port);
    let ev = tracer.event();
    assert_eq!(ev["errno"], "EADDRINUSE", "{ev:#}");
    assert_eq!(ev["port"], port, "{ev:#}");
    let h = holder(&ev);
    assert_eq!(h["pid"], std::process::id(), "{ev:#}");
    assert!(h["container"].is_null(), "{ev:#}");
    let fix = ev["fix"].as_str().unwrap_or_default();
    for never in ["docker stop", "podman stop", "kubectl delete"] {
        assert!(!fix.contains(never), "{fix}");
    }
    drop(tracer);
    drop(held);
    drop(ctd);
}

/// kube-proxy 1.28+'s nat rules for NodePort 30080 of Service shop/web
/// (port `http`, one endpoint 10.244.0.5:8080), in the shape its iptables
/// proxier writes (pkg/proxy/iptables/proxier.go, and the expected
/// rulesets of its proxier_test.go), for iptables-restore.
const KUBE_PROXY_RULES: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXT-QZ7VV5GTKAJA7T3Q - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SVC-QZ7VV5GTKAJA7T3Q - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-NODEPORTS -m comment --comment shop/web:http -m tcp -p tcp --dport 30080 -j KUBE-EXT-QZ7VV5GTKAJA7T3Q
-A KUBE-SERVICES -m comment --comment \"shop/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.50 --dport 80 -j KUBE-SVC-QZ7VV5GTKAJA7T3Q
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-QZ7VV5GTKAJA7T3Q -m comment --comment \"masquerade traffic for shop/web:http external destinations\" -j KUBE-MARK-MASQ
-A KUBE-EXT-QZ7VV5GTKAJA7T3Q -j KUBE-SVC-QZ7VV5GTKAJA7T3Q
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE
-A KUBE-SEP-AAAAAAAAAAAAAAAA -m comment --comment shop/web:http -s 10.244.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-AAAAAAAAAAAAAAAA -m comment --comment shop/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.0.5:8080
-A KUBE-SVC-QZ7VV5GTKAJA7T3Q -m comment --comment \"shop/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.50 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-QZ7VV5GTKAJA7T3Q -m comment --comment \"shop/web:http -> 10.244.0.5:8080\" -j KUBE-SEP-AAAAAAAAAAAAAAAA
COMMIT
";

/// kube-proxy's iptables-mode rules, loaded with iptables-restore into the
/// test's own network namespace (never the host's), send NodePort 30080
/// to the Service's endpoint: a connection to it reaches the server there,
/// and `who` and `check` say that no socket holds the port but the Service
/// takes its traffic.
#[test]
fn node_port_names_its_service() {
    let ns = Netns::new("pw-nodeport");
    let server = ns.run(|| {
        ip("link set lo up");
        ip("addr add 10.244.0.5/32 dev lo");
        feed("iptables-restore", &[], KUBE_PROXY_RULES);
        std::net::TcpListener::bind("10.244.0.5:8080").expect("the endpoint's server")
    });
    // Traffic to the node port reaches the Service's endpoint.
    let reached = ns.run(move || {
        let client = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:30080".parse().unwrap(),
            Duration::from_secs(5),
        )
        .expect("connect to the NodePort");
        let (accepted, _) = server.accept().unwrap();
        (client.peer_addr().unwrap(), accepted.local_addr().unwrap())
    });
    assert_eq!(reached.1.to_string(), "10.244.0.5:8080");

    let (code, v) = who(&ns, &["30080"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["sockets"].as_array().unwrap().len(), 0, "{v:#}");
    let rule = &v["dnat"][0];
    assert_eq!(rule["service"]["namespace"], "shop", "{v:#}");
    assert_eq!(rule["service"]["name"], "web", "{v:#}");
    assert_eq!(rule["service"]["kind"], "NodePort", "{v:#}");
    assert_eq!(rule["endpoints"][0], "10.244.0.5:8080", "{v:#}");

    let text = who_text(&ns, "30080");
    assert!(
        text.contains("no socket holds tcp port 30080, but kube-proxy sends it to Service shop/web (NodePort, port http; endpoints 10.244.0.5:8080): a process listening here never sees that traffic"),
        "{text}"
    );
    assert!(
        text.contains("`kubectl -n shop get service web -o yaml` (a cluster command"),
        "{text}"
    );

    let out = ns.run(|| {
        Command::new(bin())
            .args(["check", "30080", "--json"])
            .output()
            .expect("run portwatch check")
    });
    let (code, c) = parse(&out);
    assert_eq!(code, 1, "{c:#}");
    assert_eq!(c["verdict"], "steered", "{c:#}");
    assert!(
        c["diagnosis"]
            .as_str()
            .unwrap()
            .contains("kube-proxy sends it to Service shop/web"),
        "{c:#}"
    );
}

/// Pod shop/web-0 as kubelet and containerd's CRI plugin make it: a
/// sandbox (id `id(ids.0)`) with its own network namespace, attached by
/// CNI's bridge to network `net` (`cni0`, host-local addresses in
/// 10.88.0.0/16, or 10.89.0.0/16 when `ipam` is not empty; `ipam` adds
/// host-local settings such as `"dataDir":...,`),
/// and its container `web` (id `id(ids.1)`) joining that namespace, serving
/// HTTP on :80. The bridge's rules live in `ns`.
struct BridgedPod {
    /// The bridge plugin's CNI result.
    bridge: Value,
}

impl BridgedPod {
    fn start(ns: &Netns, ctd: &mut Containerd, net: &str, ipam: &str, ids: (u8, u8)) -> Self {
        let sandbox = id(ids.0);
        let pause = ctd.run(
            &sandbox,
            &sandbox_annotations(&sandbox, "shop", "web-0"),
            &["/bin/busybox", "sleep", "600"],
        );
        let subnet = if ipam.is_empty() { 88 } else { 89 };
        let bridge = cni(
            ns,
            "bridge",
            format!(
                r#"{{"cniVersion":"0.4.0","name":"{net}","type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"ipam":{{"type":"host-local",{ipam}"ranges":[[{{"subnet":"10.{subnet}.0.0/16"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#
            ),
            &sandbox,
            pause,
        );
        let mut annotations = cri_annotations("shop", "web-0", "web");
        annotations.push(("io.kubernetes.cri.sandbox-id".into(), sandbox.clone()));
        let netns = format!("network:/proc/{pause}/ns/net");
        ctd.run_with(
            &id(ids.1),
            &annotations,
            &["--with-ns", &netns],
            &["/bin/busybox", "httpd", "-f", "-p", "80"],
        );
        BridgedPod { bridge }
    }
}

/// `portwatch who PORT`'s text, from `ns`.
fn who_text(ns: &Netns, port: &'static str) -> String {
    let out = ns.run(move || {
        Command::new(bin())
            .args(["who", port])
            .output()
            .expect("run portwatch who")
    });
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HTTP/1.0 GET of `addr` from `ns`, retried until an HTTP answer comes
/// (a container's server starts a moment after its container).
fn http_get(ns: &Netns, addr: &'static str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = ns.run(move || {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect_timeout(
                &addr.parse().unwrap(),
                Duration::from_secs(2),
            )
            .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).ok()?;
            Some(answer)
        });
        if let Some(a) = got.filter(|a| a.starts_with("HTTP/")) {
            return a;
        }
        assert!(Instant::now() < deadline, "{addr} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// host-local's records of network `name` in its default data directory
/// (where portwatch looks for them), removed when dropped.
struct IpamRecords(std::path::PathBuf);

impl Drop for IpamRecords {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Service's endpoint that is a pod: kube-proxy's NodePort rules (the
/// iptables mode's, as above) send port 30080 to the address CNI's bridge
/// and host-local gave a pod sandbox, where the pod's container `web`
/// serves. A request to the NodePort reaches it, and `who` names the
/// endpoint's pod from host-local's record of that address (the sandbox's
/// id) and the sandbox's bundle.
#[test]
fn node_port_endpoint_is_named_as_its_pod() {
    endpoint_named_as_its_pod(true);
}

/// The same with an IPAM that keeps no host-local records where portwatch
/// reads them (Calico's and Cilium's keep none: emulated here by giving
/// host-local a data directory of the test's own): the endpoint's pod is
/// found by the address of the pod sandbox's network namespace.
#[test]
fn node_port_endpoint_without_ipam_records_is_named_as_its_pod() {
    endpoint_named_as_its_pod(false);
}

/// The endpoint test; `records` says whether host-local writes its records
/// in its default data directory.
fn endpoint_named_as_its_pod(records: bool) {
    let ns = Netns::new(if records {
        "pw-kp-pod"
    } else {
        "pw-kp-pod-nip"
    });
    ns.run(|| ip("link set lo up"));
    let mut ctd = Containerd::start(if records { "kp" } else { "kpn" });
    let net = format!("pw-kp-{}-{records}", std::process::id());
    let (_records, ipam) = if records {
        // host-local's default data directory, as kubelet's CNI setups use it.
        let dir = std::path::Path::new("/var/lib/cni/networks").join(&net);
        (IpamRecords(dir), String::new())
    } else {
        let dir = std::env::temp_dir().join(&net);
        let ipam = format!(r#""dataDir":"{}","#, dir.display());
        (IpamRecords(dir), ipam)
    };
    let ids = if records { (8, 9) } else { (12, 13) };
    let pod = BridgedPod::start(&ns, &mut ctd, &net, &ipam, ids);
    let pod_ip = pod.bridge["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .expect("the pod's address")
        .to_owned();
    let rules = KUBE_PROXY_RULES
        .replace("10.244.0.5:8080", &format!("{pod_ip}:80"))
        .replace("-s 10.244.0.5 ", &format!("-s {pod_ip} "));
    ns.run(move || feed("iptables-restore", &[], &rules));

    // The NodePort reaches the pod's httpd (through the bridge's address,
    // a local one, as a client on the node would).
    let gateway = if records {
        "10.88.0.1:30080"
    } else {
        "10.89.0.1:30080"
    };
    http_get(&ns, gateway);

    let endpoint = format!("{pod_ip}:80");
    let (code, v) = who(&ns, &["30080"]);
    assert_eq!(code, 1, "{v:#}");
    let rule = &v["dnat"][0];
    assert_eq!(rule["service"]["name"], "web", "{v:#}");
    assert_eq!(
        rule["endpoint_pods"][0]["endpoint"],
        endpoint.as_str(),
        "{v:#}"
    );
    assert_eq!(
        rule["endpoint_pods"][0]["pod"]["namespace"], "shop",
        "{v:#}"
    );
    assert_eq!(rule["endpoint_pods"][0]["pod"]["name"], "web-0", "{v:#}");
    let text = who_text(&ns, "30080");
    assert!(
        text.contains(&format!(
            "kube-proxy sends it to Service shop/web (NodePort, port http; endpoints {endpoint} (pod shop/web-0)): a process"
        )),
        "{text}"
    );
    drop(ctd);
}

/// Runs CNI plugin `plugin` (Debian's containernetworking-plugins) with
/// `conf` on stdin and the CNI_* environment, from `ns`; returns its result.
fn cni(ns: &Netns, plugin: &str, conf: String, sandbox: &str, pid: u32) -> Value {
    let sandbox = sandbox.to_owned();
    let plugin = format!("/usr/lib/cni/{plugin}");
    let out = ns.run(move || {
        use std::io::Write as _;
        let mut child = Command::new(&plugin)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &sandbox)
            .env("CNI_NETNS", format!("/proc/{pid}/ns/net"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{plugin} (containernetworking-plugins): {e}"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    });
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("a CNI result")
}

/// A hostPort as kubelet asks for it: the pod's sandbox config carries a
/// port mapping (hostPort 18097 -> containerPort 80), and containerd's CRI
/// plugin has CNI's bridge (host-local addresses) and portmap make it, in
/// the node's network namespace (the test's own). Traffic to the hostPort
/// reaches the container's server, and `who 18097` names the pod and the
/// container, its fix in the pod template of the controller its labels
/// name (`controller-revision-hash` alone: a DaemonSet's or a
/// StatefulSet's).
#[test]
fn host_port_leads_to_its_pod() {
    let mut ctd = Containerd::start_with("hp", true);
    let mut pod = Pod::new("shop", "web-0", "web").labelled(&[
        ("controller-revision-hash", "7c9d5b8f6"),
        ("pod-template-generation", "1"),
    ]);
    pod.host_ports = vec![(18097, 80)];
    let pod = run_pod(&mut ctd, pod);
    httpd(&ctd, &pod, "web", 80);
    let ns = ctd.node();

    // The hostPort reaches the container's httpd (through the bridge's
    // address, a local one, as a client on the node would).
    let answer = http_get(ns, "10.88.0.1:18097");
    assert!(answer.starts_with("HTTP/1."), "{answer}");

    let (code, v) = who(ns, &["18097"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["sockets"].as_array().unwrap().len(), 0, "{v:#}");
    let rule = &v["dnat"][0];
    assert_eq!(rule["sandbox"], pod.sandbox.as_str(), "{v:#}");
    assert_eq!(rule["pod"]["namespace"], "shop", "{v:#}");
    assert_eq!(rule["pod"]["name"], "web-0", "{v:#}");
    assert_eq!(rule["pod"]["container"], "web", "{v:#}");
    assert_eq!(
        rule["pod"]["controller"], "daemonset_or_statefulset",
        "{v:#}"
    );
    let text = who_text(ns, "18097");
    assert!(
        text.contains("hostport:  hostPort 18097 → pod shop/web-0 container web :80: no socket holds tcp port 18097"),
        "{text}"
    );
    let fix = text
        .lines()
        .find(|l| l.starts_with("fix:"))
        .unwrap_or_default();
    assert!(
        fix.contains("change hostPort 18097 of pod shop/web-0 in the pod template of its DaemonSet or StatefulSet"),
        "{text}"
    );
    for never in ["docker stop", "podman stop", "kill", "kubectl delete"] {
        assert!(!fix.contains(never), "{fix}");
    }

    // check gives the same answer.
    let out = ns.run(|| {
        Command::new(bin())
            .args(["check", "18097"])
            .output()
            .expect("run portwatch check")
    });
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("steered           hostPort of pod shop/web-0"),
        "{text}"
    );
    let out = ns.run(|| {
        Command::new(bin())
            .args(["check", "18097", "--json"])
            .output()
            .expect("run portwatch check")
    });
    let (_, c) = parse(&out);
    assert_eq!(c["verdict"], "steered", "{c:#}");
    assert!(
        c["diagnosis"]
            .as_str()
            .unwrap()
            .starts_with("hostPort 18097 → pod shop/web-0 container web :80"),
        "{c:#}"
    );
    drop(ctd);
}

/// Two containers of one pod want one port in the pod's shared network
/// namespace (a sidecar): the sidecar's failed bind is caught by `watch`,
/// and the holder is named as the pod's other container, with a fix in the
/// pod template of its controller (labels without a controller's hash:
/// "its controller", not a guess from the name), never a stop or a kill.
#[test]
fn sidecar_clash_inside_one_pod() {
    let mut ctd = Containerd::start_with("side", true);
    let pod = run_pod(&mut ctd, Pod::new("shop", "web-0", "web"));
    let pause = pod.pause_pid(&ctd);
    let inode = netns_of(pause).to_string();
    let port = port();
    httpd(&ctd, &pod, "web", port);
    // The web container listens before the sidecar starts.
    let v = who_listening(pause, port);
    assert_eq!(
        v["sockets"][0]["container"]["pod"]["controller"], "unknown",
        "{v:#}"
    );
    let tracer = Tracer::start(&["--netns", &inode]);
    httpd(&ctd, &pod, "sidecar", port);
    let ev = tracer.event();
    assert_eq!(ev["errno"], "EADDRINUSE", "{ev:#}");
    let h = holder(&ev);
    assert_eq!(h["container"]["pod"]["name"], "web-0", "{ev:#}");
    assert_eq!(h["container"]["pod"]["container"], "web", "{ev:#}");
    let fix = ev["fix"].as_str().unwrap();
    assert!(fix.contains("pod shop/web-0"), "{fix}");
    // The sidecar's httpd exits right after its failed bind: when the
    // lookup still finds it, the fix names both containers ("Containers web
    // and sidecar of pod shop/web-0 share its network namespace..."), else
    // the holder's pod alone. Either ends the clash in the manifest.
    assert!(
        fix.starts_with("Containers web and sidecar of pod shop/web-0 share")
            || fix.starts_with(
                "Change the port of pod shop/web-0 (container web) in the pod template of its controller"
            ),
        "{fix}"
    );
    assert!(
        fix.contains("under ownerReferences, its controller"),
        "{fix}"
    );
    for never in ["docker stop", "podman stop", "kill", "kubectl delete"] {
        assert!(!fix.contains(never), "{fix}");
    }
    drop(tracer);
    drop(ctd);
}

/// A pod's container that no runtime file names (no CRI annotations in
/// its bundle; made with `ctr`, since the CRI plugin always writes them) is still known as a pod's by its cgroup under kubelet's
/// `kubepods`: never `docker stop` or `podman stop`, though both are
/// installed here.
#[test]
fn an_unnamed_pod_container_is_not_stopped_as_a_plain_one() {
    let mut ctd = Containerd::start("bare");
    let port = port();
    let bare = id(7);
    let pid = ctd.run(
        &bare,
        &[],
        &["/bin/busybox", "httpd", "-f", "-p", &port.to_string()],
    );
    let v = who_listening(pid, port);
    let c = &v["sockets"][0]["container"];
    assert_eq!(c["id"], bare.as_str(), "{v:#}");
    assert_eq!(c["kubernetes"], true, "{v:#}");
    assert!(c["pod"].is_null(), "{v:#}");
    let fix = v["fix"].as_str().unwrap();
    assert!(
        fix.starts_with(&format!(
            "Change port {port} in the workload of the pod this container belongs to (`crictl ps --id {}`",
            &bare[..12]
        )),
        "{fix}"
    );
    for never in ["docker stop", "podman stop", "kill", "kubectl delete"] {
        assert!(!fix.contains(never), "{fix}");
    }
    drop(ctd);
}
