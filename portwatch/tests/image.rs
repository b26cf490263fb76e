//! The DaemonSet of deploy/kubernetes/, run for real: the image that
//! `cargo xtask image` builds, loaded into podman (Debian's, rootful, with
//! storage of the test's own), run with the settings read from the
//! manifest itself (hostPID, hostNetwork, user, capabilities, seccomp,
//! read-only root, volumes, the downward API's variables and the args), so
//! that what is tested is what a cluster would run.
//!
//! Emulated, and why: there is no kubelet here (not packaged for Debian 12)
//! and no registry. `hostNetwork` is the network namespace of the node, and
//! the test's own namespace plays the node's (`--network ns:PATH`), so the
//! metrics port (fixed by the manifest) and the failing binds stay out of
//! the host's; the downward API's `status.podIP` is then that namespace's
//! address, 127.0.0.1, and `spec.nodeName` a name of the test's. A
//! hostPath volume whose directory this machine lacks is left out: kubelet
//! would mount an empty directory there, podman refuses a missing source.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{containerd::Containerd, *};
use portwatch_test_support::{Netns, Process};
use saphyr::{LoadableYamlNode as _, Yaml};

/// The manifest under test.
const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/kubernetes/portwatch-daemonset.yaml"
);

/// The refusal's fixed start (main prefixes `portwatch: `).
const REFUSAL: &str =
    "portwatch: needs the host's PID namespace (hostPID: true / --pid=host): a container's own (pid:[";

/// Every capability of include/uapi/linux/capability.h (0 to 40).
#[rustfmt::skip]
const EVERY_CAPABILITY: [&str; 41] = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
];

/// The DaemonSet's pod, as its manifest declares it.
#[derive(Debug, Clone)]
struct Pod {
    image: String,
    host_pid: bool,
    host_network: bool,
    user: Option<i64>,
    args: Vec<String>,
    /// (variable, the downward API's fieldPath).
    env: Vec<(String, String)>,
    drop: Vec<String>,
    add: Vec<String>,
    read_only_root: bool,
    no_new_privileges: bool,
    seccomp: String,
    /// (host path, path in the container, read-only).
    mounts: Vec<(String, String, bool)>,
}

fn get<'a>(y: &'a Yaml<'a>, path: &[&str]) -> Option<&'a Yaml<'a>> {
    path.iter().try_fold(y, |y, key| y.as_mapping_get(key))
}

fn text(y: &Yaml, path: &[&str]) -> String {
    get(y, path)
        .and_then(Yaml::as_str)
        .unwrap_or_else(|| panic!("the manifest has no string at {path:?}"))
        .to_owned()
}

fn list<'a>(y: &'a Yaml<'a>, path: &[&str]) -> &'a [Yaml<'a>] {
    get(y, path)
        .and_then(Yaml::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn strings(y: &Yaml, path: &[&str]) -> Vec<String> {
    list(y, path)
        .iter()
        .map(|s| s.as_str().expect("a list of strings").to_owned())
        .collect()
}

impl Pod {
    fn from_manifest() -> Pod {
        let text_of = std::fs::read_to_string(MANIFEST).expect("read the manifest");
        let docs = Yaml::load_from_str(&text_of).expect("the manifest is YAML");
        let ds = &docs[0];
        assert_eq!(text(ds, &["kind"]), "DaemonSet");
        let spec = get(ds, &["spec", "template", "spec"]).expect("a pod template");
        let flag = |key| get(spec, &[key]).and_then(Yaml::as_bool) == Some(true);
        let containers = list(spec, &["containers"]);
        assert_eq!(containers.len(), 1, "one container");
        let c = &containers[0];
        let sc = get(c, &["securityContext"]).expect("a securityContext");
        let volumes: Vec<(String, String)> = list(spec, &["volumes"])
            .iter()
            .map(|v| (text(v, &["name"]), text(v, &["hostPath", "path"])))
            .collect();
        let mounts = list(c, &["volumeMounts"])
            .iter()
            .map(|m| {
                let name = text(m, &["name"]);
                let host = volumes
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("volume {name} is declared"))
                    .1
                    .clone();
                let ro = get(m, &["readOnly"]).and_then(Yaml::as_bool) == Some(true);
                (host, text(m, &["mountPath"]), ro)
            })
            .collect();
        Pod {
            image: text(c, &["image"]),
            host_pid: flag("hostPID"),
            host_network: flag("hostNetwork"),
            user: get(sc, &["runAsUser"]).and_then(Yaml::as_integer),
            args: strings(c, &["args"]),
            env: list(c, &["env"])
                .iter()
                .map(|e| {
                    (
                        text(e, &["name"]),
                        text(e, &["valueFrom", "fieldRef", "fieldPath"]),
                    )
                })
                .collect(),
            drop: strings(sc, &["capabilities", "drop"]),
            add: strings(sc, &["capabilities", "add"]),
            read_only_root: get(sc, &["readOnlyRootFilesystem"]).and_then(Yaml::as_bool)
                == Some(true),
            no_new_privileges: get(sc, &["allowPrivilegeEscalation"]).and_then(Yaml::as_bool)
                == Some(false),
            seccomp: text(sc, &["seccompProfile", "type"]),
            mounts,
        }
    }

    /// `podman run` options for this pod on `node`.
    fn podman_options(&self, node: &Node) -> Vec<String> {
        let mut o = vec![
            // What podman needs on this host (PLATFORM.md).
            "--ulimit=nofile=1024:1024".to_owned(),
            "--ulimit=nproc=1024:1024".to_owned(),
            "--runtime=runc".to_owned(),
        ];
        if self.host_pid {
            o.push("--pid=host".to_owned());
        }
        assert!(self.host_network, "the manifest sets hostNetwork");
        o.push(format!("--network=ns:{}", node.netns.display()));
        if let Some(uid) = self.user {
            o.push(format!("--user={uid}:{uid}"));
        }
        o.extend(self.drop.iter().map(|c| format!("--cap-drop={c}")));
        o.extend(self.add.iter().map(|c| format!("--cap-add={c}")));
        if self.read_only_root {
            o.push("--read-only".to_owned());
        }
        if self.no_new_privileges {
            o.push("--security-opt=no-new-privileges".to_owned());
        }
        match self.seccomp.as_str() {
            // podman's default profile is its RuntimeDefault.
            "RuntimeDefault" => {}
            "Unconfined" => o.push("--security-opt=seccomp=unconfined".to_owned()),
            other => panic!("seccompProfile {other} is not emulated here"),
        }
        for (host, path, ro) in &self.mounts {
            if Path::new(host).exists() {
                let ro = if *ro { ":ro" } else { "" };
                o.push(format!("--volume={host}:{path}{ro}"));
            }
        }
        for (name, value) in self.env_values(node) {
            o.push(format!("--env={name}={value}"));
        }
        o
    }

    /// `ctr run` options for this pod on `node`: the same settings in
    /// containerd's words (no-new-privileges has no `ctr run` flag).
    fn ctr_options(&self, node: &Node) -> Vec<String> {
        let mut o = Vec::new();
        if self.host_pid {
            o.push(format!("--with-ns=pid:/proc/{}/ns/pid", std::process::id()));
        }
        assert!(self.host_network, "the manifest sets hostNetwork");
        o.push(format!("--with-ns=network:{}", node.netns.display()));
        // `ctr run` has no --user: the image's user, 0 (it names none).
        assert_eq!(self.user, Some(0), "runAsUser other than 0 is not emulated");
        // `ctr run` takes no ALL, and drops after adding: each capability
        // by name but those added (Kubernetes drops first).
        for c in &self.drop {
            if c == "ALL" {
                o.extend(
                    EVERY_CAPABILITY
                        .iter()
                        .filter(|c| !self.add.iter().any(|a| a == *c))
                        .map(|c| format!("--cap-drop=CAP_{c}")),
                );
            } else {
                o.push(format!("--cap-drop=CAP_{c}"));
            }
        }
        o.extend(self.add.iter().map(|c| format!("--cap-add=CAP_{c}")));
        if self.read_only_root {
            o.push("--read-only".to_owned());
        }
        match self.seccomp.as_str() {
            "RuntimeDefault" => o.push("--seccomp".to_owned()),
            "Unconfined" => {}
            other => panic!("seccompProfile {other} is not emulated here"),
        }
        for (host, path, ro) in &self.mounts {
            if Path::new(host).exists() {
                let ro = if *ro { ":ro" } else { "" };
                o.push(format!(
                    "--mount=type=bind,src={host},dst={path},options=rbind{ro}"
                ));
            }
        }
        for (name, value) in self.env_values(node) {
            o.push(format!("--env={name}={value}"));
        }
        o
    }

    /// The variables, as the downward API fills them in on `node`.
    fn env_values(&self, node: &Node) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(name, field)| {
                let value = match field.as_str() {
                    "status.podIP" => "127.0.0.1",
                    "spec.nodeName" => node.name,
                    other => panic!("fieldPath {other} is not emulated here"),
                };
                (name.clone(), value.to_owned())
            })
            .collect()
    }

    /// The args with `$(VAR)` expanded, as kubelet does.
    fn expanded_args(&self, node: &Node) -> Vec<String> {
        let env = self.env_values(node);
        self.args
            .iter()
            .map(|a| {
                env.iter()
                    .fold(a.clone(), |a, (k, v)| a.replace(&format!("$({k})"), v))
            })
            .collect()
    }
}

/// The node the pod runs on: its network namespace and name.
struct Node {
    netns: PathBuf,
    name: &'static str,
}

/// Rootful podman with storage of the test's own; dropping it removes the
/// containers it ran, the image and the storage.
struct Podman {
    dir: PathBuf,
    names: Vec<String>,
}

impl Podman {
    fn new(tag: &str) -> Podman {
        let dir = std::env::temp_dir().join(format!("pw-image-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Podman {
            dir,
            names: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        cmd
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run podman")
    }

    /// `podman run --name NAME OPTIONS IMAGE ARGS`, not started.
    fn run(&mut self, name: &str, options: &[String], image: &str, args: &[String]) -> Command {
        self.names.push(name.to_owned());
        let mut cmd = self.command();
        cmd.args(["run", "--rm", "--name", name])
            .args(options)
            .arg(image)
            .args(args);
        cmd
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.cli(&["rm", "-f", "-t", "0", name]);
        }
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("root"))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds the image with `cargo xtask image` from the binary under test
/// (debug info stripped: 118 MB of it would make every gzip slow), into
/// `dir`; returns the archive.
fn build_image(dir: &Path) -> PathBuf {
    let binary = dir.join("portwatch");
    let out = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(bin())
        .arg(&binary)
        .output()
        .expect("objcopy (binutils)");
    assert!(out.status.success(), "objcopy: {out:?}");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["xtask", "image", "--binary"])
        .arg(&binary)
        .arg("--out")
        .arg(dir.join("image"))
        .output()
        .expect("run cargo xtask image");
    assert!(out.status.success(), "cargo xtask image: {out:?}");
    dir.join("image/portwatch.tar")
}

/// The image's ENTRYPOINT, read from the OCI layout next to `tar`.
fn entrypoint(tar: &Path) -> Vec<String> {
    let layout = tar.with_file_name("portwatch-oci");
    let blob = |digest: &serde_json::Value| -> serde_json::Value {
        let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = blob(&index["manifests"][0]["digest"]);
    let config = blob(&manifest["config"]["digest"]);
    serde_json::from_value(config["config"]["Entrypoint"].clone()).expect("an Entrypoint")
}

/// Loads the image into `podman` and checks that it carries the name the
/// manifest runs.
fn load(podman: &Podman, pod: &Pod) {
    let tar = build_image(&podman.dir);
    let out = podman.cli(&["load", "-i", tar.to_str().unwrap()]);
    assert!(out.status.success(), "podman load: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.lines()
            .any(|l| l.trim() == format!("Loaded image: {}", pod.image)),
        "the image built is not the manifest's {}: {said}",
        pod.image
    );
}

/// A listener on 127.0.0.1:`port` of `ns`, held by python3 as uid 65534
/// (its /proc/PID/fd is then not root's: CAP_DAC_READ_SEARCH is needed).
fn nobody_listens(ns: &Netns, port: u16) -> Process {
    let holder = ns.run(move || {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["/usr/bin/python3", "-c"])
            .arg(format!(
                "import socket,sys\na=socket.socket(); a.bind(('127.0.0.1',{port})); a.listen()\nsys.stdin.read()"
            ))
            .stdin(Stdio::piped());
        Process::spawn(cmd, &[])
    });
    let deadline = Instant::now() + WAIT;
    while ns
        .run(move || TcpStream::connect(("127.0.0.1", port)))
        .is_err()
    {
        assert!(Instant::now() < deadline, "python3 did not listen in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    holder
}

/// GET /metrics at `addr` from inside `ns`: the status line and the body.
fn scrape(ns: &Netns, addr: String) -> String {
    ns.run(move || {
        let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    })
}

/// Asserts that process `pid` (the pod's portwatch, seen from the host)
/// runs with exactly the capabilities the manifest adds, in every set that
/// counts, and as uid 0.
fn assert_capabilities(pid: u32, pod: &Pod) {
    let want: u64 = pod
        .add
        .iter()
        .map(|c| {
            let bit = EVERY_CAPABILITY
                .iter()
                .position(|e| e == c)
                .expect("a capability");
            1u64 << bit
        })
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{set}:")))
            .unwrap_or_else(|| panic!("{set} in {status}"));
        let have = u64::from_str_radix(line.trim(), 16).unwrap();
        assert_eq!(have, want, "{set} of pid {pid}: {have:x}, want {want:x}");
    }
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t0\t0\t0\t0")),
        "{status}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "portwatch"
    );
}

/// The node of a test: a network namespace of its own.
fn node(ns: &Netns) -> Node {
    Node {
        netns: PathBuf::from(format!(
            "/proc/{}/task/{}/ns/net",
            std::process::id(),
            ns.tid
        )),
        name: "node-a",
    }
}

/// With the pod running as `tracer` on `ns`'s node (its args `args`): its
/// metrics endpoint answers on the pod's address, and the failing bind of
/// a host process there is named with its holder (a python3 of uid 65534
/// listening on `port`) as portwatch on the host names it. Then it stops
/// cleanly on SIGINT.
fn assert_names_host_holder(tracer: Tracer, ns: &Netns, args: &[String], port: u16) {
    // The args serve metrics on $(POD_IP): the node's address.
    let at = args
        .iter()
        .skip_while(|a| *a != "--metrics")
        .nth(1)
        .expect("the manifest's args serve metrics")
        .clone();
    assert!(at.starts_with("127.0.0.1:"), "{at}");
    let reply = scrape(ns, at);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("portwatch_"), "{reply}");
    // PORTWATCH_NODE (the downward API's spec.nodeName) labels every series.
    let series: Vec<&str> = reply
        .lines()
        .filter(|l| l.starts_with("portwatch_"))
        .collect();
    assert!(!series.is_empty(), "{reply}");
    for line in series {
        assert!(line.contains("node=\"node-a\""), "{line}");
    }

    let failed = ns.run(move || bind(&socket(false, false), v4(port)));
    assert_eq!(failed, Err(libc::EADDRINUSE));
    let deadline = Instant::now() + WAIT;
    let ev = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tracer
            .next_event(left)
            .expect("no event from the pod in time");
        if ev["comm"] == ns.comm.as_str() {
            break ev;
        }
    };
    assert_ours(&ev, ns);
    assert_eq!(ev["port"], port, "{ev:#}");
    // The same holder, field for field, as portwatch on the host names it.
    let (code, host) = who(ns, &[&port.to_string()]);
    assert_eq!(code, 1, "{host:#}");
    let in_pod = holder(&ev);
    let on_host = &host["sockets"][0];
    for key in ["pid", "comm", "cmdline", "uid", "state", "addr", "port"] {
        assert_eq!(in_pod[key], on_host[key], "{key}: pod {ev:#} host {host:#}");
    }
    assert_eq!(in_pod["uid"], 65534, "{ev:#}");
    assert_eq!(in_pod["comm"], "python3", "{ev:#}");
    let (status, _, _) = tracer.stop();
    assert!(status.success(), "the pod did not stop cleanly: {status}");
}

/// The sandbox id CNI portmap's rule comment names (64 hex digits).
const SANDBOX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// kube-proxy's nftables NodePort `port` for Service shop/web, endpoint
/// 10.244.0.5:8080: the few lines of its `ip kube-proxy` table that
/// steer it (tests/kube_proxy.rs loads the whole table and connects).
fn kube_proxy_rules(port: u16) -> String {
    let ext = "external-KHN6ECMT-shop/web/tcp/http";
    let svc = "service-KHN6ECMT-shop/web/tcp/http";
    let ep = "endpoint-YDREIN3S-shop/web/tcp/http__10.244.0.5/8080";
    format!(
        "add table ip kube-proxy
add map ip kube-proxy service-nodeports {{ type inet_proto . inet_service : verdict ; }}
add chain ip kube-proxy nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain ip kube-proxy {svc}
add chain ip kube-proxy {ext}
add chain ip kube-proxy {ep}
add rule ip kube-proxy nat-prerouting meta l4proto . th dport vmap @service-nodeports
add rule ip kube-proxy {ext} goto {svc}
add rule ip kube-proxy {svc} numgen random mod 1 vmap {{ 0 : goto {ep} }}
add rule ip kube-proxy {ep} meta l4proto tcp dnat to 10.244.0.5:8080
add element ip kube-proxy service-nodeports {{ tcp . {port} : goto {ext} }}
"
    )
}

/// A Kubernetes hostPort on the node as CNI portmap writes it (its chains,
/// its comment naming the sandbox) and a NodePort as kube-proxy's nftables
/// mode writes it, loaded in `ns`: `who` run inside the pod by `exec` (the
/// pod's namespaces and capabilities, the image's own `iptables-save` and
/// `nft`) names each rule, its target, its sandbox or Service exactly as
/// `who` on the host does.
fn assert_names_dnat_as_host(ns: &Netns, mut exec: impl FnMut(&[&str]) -> Output) {
    let (host_port, node_port) = (port(), port());
    let dn = "CNI-DN-0123456789abcdef01234";
    let portmap = format!(
        r#"*nat
:CNI-HOSTPORT-DNAT - [0:0]
:{dn} - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"{SANDBOX}\"" -m multiport --dports {host_port} -j {dn}
-A {dn} -p tcp -m tcp --dport {host_port} -j DNAT --to-destination 10.88.0.2:80
COMMIT
"#
    );
    let kube_proxy = kube_proxy_rules(node_port);
    ns.run(move || {
        feed("iptables-restore", &["--noflush"], &portmap);
        feed("nft", &["-f", "-"], &kube_proxy);
    });
    for (port, key, want) in [
        (host_port, "sandbox", SANDBOX),
        (node_port, "service", "web"),
    ] {
        let (code, host) = who(ns, &[&port.to_string()]);
        assert_eq!(code, 1, "{host:#}");
        let rule = &host["dnat"][0];
        assert!(rule[key] == want || rule[key]["name"] == want, "{host:#}");
        let (code, in_pod) = parse(&exec(&[
            "/usr/bin/portwatch",
            "who",
            &port.to_string(),
            "--json",
        ]));
        assert_eq!(code, 1, "{in_pod:#}");
        assert_eq!(in_pod["dnat"], host["dnat"], "pod {in_pod:#} host {host:#}");
    }
}

/// The pod as the manifest declares it, under podman, on a node emulated by
/// a network namespace of the test's.
#[test]
fn the_daemonset_names_a_host_holder_as_on_the_host() {
    let pod = Pod::from_manifest();
    let mut podman = Podman::new("host");
    load(&podman, &pod);
    let ns = Netns::new("pw-node");
    let node = node(&ns);
    let port = port();
    let _holder = nobody_listens(&ns, port);
    let options = pod.podman_options(&node);
    let args = pod.expanded_args(&node);
    let cmd = podman.run("pw-daemonset", &options, &pod.image, &args);
    let tracer = Tracer::try_spawn(cmd).unwrap_or_else(|e| panic!("the pod refused: {e}"));
    let out = podman.cli(&["inspect", "--format", "{{.State.Pid}}", "pw-daemonset"]);
    let pid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("its pid");
    assert_capabilities(pid, &pod);
    assert_names_dnat_as_host(&ns, |cmd| {
        podman
            .command()
            .args(["exec", "pw-daemonset"])
            .args(cmd)
            .output()
            .expect("podman exec")
    });
    assert_names_host_holder(tracer, &ns, &args, port);
}

/// A container that `ctr run` started, ended and removed on drop (drop it
/// before its containerd).
struct CtrTask<'a>(&'a Containerd, &'static str);

impl Drop for CtrTask<'_> {
    fn drop(&mut self) {
        let _ = self.0.ctr(&["tasks", "kill", "-s", "KILL", self.1]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.ctr(&["tasks", "delete", self.1]).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.ctr(&["containers", "delete", self.1]);
    }
}

/// The same pod under containerd (Debian's 1.6, a daemon of the test's
/// own): the image imports with `ctr images import`, and `ctr run` with the
/// manifest's settings names the holder as podman's run did.
#[test]
fn under_containerd_the_daemonset_names_a_host_holder() {
    let pod = Pod::from_manifest();
    let c = Containerd::start("image");
    let tar = build_image(&c.dir);
    let said = c
        .ctr(&["images", "import", tar.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let listed = c.ctr(&["images", "ls", "-q"]).unwrap();
    assert!(
        listed.lines().any(|l| l == pod.image),
        "the image imported is not the manifest's {}: {said}\n{listed}",
        pod.image
    );
    let ns = Netns::new("pw-node-ctr");
    let node = node(&ns);
    let port = port();
    let _holder = nobody_listens(&ns, port);
    let args = pod.expanded_args(&node);
    let mut cmd = Command::new("ctr");
    cmd.arg("-a")
        .arg(c.state.join("containerd.sock"))
        .args(["-n", "k8s.io", "run", "--rm"])
        .args(pod.ctr_options(&node))
        .args([pod.image.as_str(), "pw-daemonset"])
        // Kubernetes' args keep the image's ENTRYPOINT; ctr's replace it.
        .args(entrypoint(&tar))
        .args(&args);
    let _task = CtrTask(&c, "pw-daemonset");
    let tracer =
        Tracer::try_spawn(cmd).unwrap_or_else(|e| panic!("the pod refused: {e}\n{}", c.log()));
    let pid = std::fs::read_to_string(c.bundle("pw-daemonset").join("init.pid")).unwrap();
    assert_capabilities(pid.trim().parse().unwrap(), &pod);
    let mut execs = 0;
    assert_names_dnat_as_host(&ns, |cmd| {
        execs += 1;
        Command::new("ctr")
            .arg("-a")
            .arg(c.state.join("containerd.sock"))
            .args(["-n", "k8s.io", "tasks", "exec", "--exec-id"])
            .arg(format!("pw-who-{execs}"))
            .arg("pw-daemonset")
            .args(cmd)
            .output()
            .expect("ctr tasks exec")
    });
    assert_names_host_holder(tracer, &ns, &args, port);
}

/// The same pod without hostPID: every command that names holders refuses
/// with the one line that says what to set, exit 3 (125 for `run`, whose
/// other statuses are CMD's), and prints nothing else.
#[test]
fn without_host_pid_the_pod_refuses_in_one_line() {
    let pod = Pod {
        host_pid: false,
        ..Pod::from_manifest()
    };
    let mut podman = Podman::new("nopid");
    load(&podman, &pod);
    // Built again from the same binary: the same bytes, so the same digest.
    let again = podman.dir.join("again");
    std::fs::create_dir_all(&again).unwrap();
    let index = |tar: &Path| std::fs::read(tar.with_file_name("portwatch-oci/index.json")).unwrap();
    assert_eq!(
        index(&podman.dir.join("image/portwatch.tar")),
        index(&build_image(&again)),
        "two builds gave two digests"
    );
    let ns = Netns::new("pw-node");
    let node = Node {
        netns: PathBuf::from(format!(
            "/proc/{}/task/{}/ns/net",
            std::process::id(),
            ns.tid
        )),
        name: "node-a",
    };
    let options = pod.podman_options(&node);
    let manifest_args = pod.expanded_args(&node);
    let cases: [(Vec<String>, i32); 5] = [
        (manifest_args, 3),
        (vec!["who".into(), "80".into()], 3),
        (vec!["wait".into(), "80".into()], 3),
        (vec!["check".into(), "80".into()], 3),
        (
            vec!["run".into(), "--".into(), "/usr/bin/portwatch".into()],
            125,
        ),
    ];
    for (i, (args, code)) in cases.into_iter().enumerate() {
        let out = podman
            .run(&format!("pw-nopid-{i}"), &options, &pod.image, &args)
            .output()
            .expect("podman run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with(REFUSAL), "{args:?}: {stderr}");
        assert!(
            stderr.trim_end().ends_with(
                ") hides the processes that hold ports; set PORTWATCH_NODE_PIDNS=1 only \
                 where this namespace holds the whole node (kind)"
            ),
            "{args:?}: {stderr}"
        );
    }
}

/// The check itself, without a container: a private PID namespace is
/// refused, with its own /proc or without; one declared whole with
/// PORTWATCH_NODE_PIDNS=1 is not.
#[test]
fn a_private_pid_namespace_is_refused() {
    let ns = Netns::new("pw-pidns");
    let in_pidns = |mount_proc: bool, env: Option<&str>| {
        let env = env.map(str::to_owned);
        ns.run(move || {
            let mut cmd = Command::new("unshare");
            cmd.args(["-p", "-f"]);
            if mount_proc {
                cmd.arg("--mount-proc");
            }
            if let Some(v) = env {
                cmd.env("PORTWATCH_NODE_PIDNS", v);
            }
            cmd.arg(bin())
                .args(["who", "80", "--json"])
                .output()
                .expect("unshare (util-linux)")
        })
    };
    for mount_proc in [true, false] {
        let out = in_pidns(mount_proc, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(REFUSAL), "{stderr}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    // Anything but exactly 1 is no declaration.
    let out = in_pidns(true, Some("yes"));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // Port 80 of a new network namespace is free: exit 0, an answer.
    let out = in_pidns(true, Some("1"));
    let (code, v) = parse(&out);
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(v["free"], true, "{v:#}");
    // There the BPF iterator's pids (the initial namespace's) are not
    // /proc's: the walk answers, and says why.
    let out = ns.run(|| {
        let _held = std::net::TcpListener::bind("127.0.0.1:8080").expect("listener");
        Command::new("unshare")
            .args(["-p", "-f", "--mount-proc"])
            .env("PORTWATCH_NODE_PIDNS", "1")
            .arg(bin())
            .args(["who", "8080", "--json"])
            .output()
            .expect("unshare (util-linux)")
    });
    let (_, v) = parse(&out);
    assert_eq!(v["lookup"], "walk", "{v:#}");
    assert!(
        v["lookup_note"]
            .as_str()
            .is_some_and(|n| n.contains("nested pid namespace")),
        "{v:#}"
    );
}
