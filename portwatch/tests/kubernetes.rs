//! Kubernetes pods on a containerd whose state directory no default names:
//! Debian's containerd, started by the test with k3s's layout
//! (`/run/k3s-test-NAME-PID/containerd`, its own root and socket), an image
//! imported without a registry, and containers in namespace `k8s.io` that
//! carry the CRI plugin's annotations, each in a network namespace of its
//! own. kubelet is not packaged for Debian 12 and no registry is reachable:
//! the pods are made with `ctr` rather than through the CRI API, with the
//! annotations the CRI plugin would write.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{containerd::*, *};
use serde_json::Value;

/// `portwatch who ARGS --json` run inside network namespace of `pid`.
fn who_in(pid: u32, args: &[&str]) -> (i32, Value) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg(bin())
        .arg("who")
        .args(args)
        .arg("--json")
        .output()
        .expect("run nsenter portwatch who");
    parse(&out)
}

/// `who PORT` in `pid`'s namespace, once something listens there.
fn who_listening(pid: u32, port: u16) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, v) = who_in(pid, &[&port.to_string()]);
        if code == 1 && v["sockets"][0]["pid"].is_number() {
            return v;
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A container id as containerd's CRI plugin makes them: 64 hex digits.
fn id(n: u8) -> String {
    format!("{:056x}{n:08x}", std::process::id())
}

/// Asserts that `v`'s first socket is held by container `container` of pod
/// shop/web-0, and that its fix ends the clash in the workload, never with
/// `docker stop`, `podman stop` or `kill`.
fn assert_pod(v: &Value, container: &str) {
    let c = &v["sockets"][0]["container"];
    assert_eq!(c["pod"]["namespace"], "shop", "{v:#}");
    assert_eq!(c["pod"]["name"], "web-0", "{v:#}");
    assert_eq!(c["pod"]["container"], container, "{v:#}");
    let fix = v["fix"].as_str().unwrap();
    for never in ["docker stop", "podman stop", "kill", "kubectl delete"] {
        assert!(!fix.contains(never), "{fix}");
    }
    // `who` stands in the pod's own network namespace: its containerPort.
    assert!(fix.starts_with("Change the port of pod shop/web-0"), "{fix}");
    assert!(fix.contains("`containerPort`"), "{fix}");
    assert!(fix.contains("(a cluster command: run it where the cluster is managed)"), "{fix}");
}

/// A pod's container listening in its own network namespace, under a
/// k3s-style state directory, is named as the cluster knows it: from
/// containerd's flags while it runs, and from the shim above the process
/// while containerd is down (a restart or an upgrade leaves the shims and
/// their containers running).
#[test]
fn pod_under_a_k3s_state_directory_is_named() {
    let mut ctd = Containerd::start("pod");
    let port = port();
    let web = id(1);
    let pid = ctd.run(
        &web,
        &cri_annotations("shop", "web-0", "web"),
        &["/bin/busybox", "httpd", "-f", "-p", &port.to_string()],
    );
    let v = who_listening(pid, port);
    assert_pod(&v, "web");
    assert_eq!(v["sockets"][0]["container"]["id"], web.as_str(), "{v:#}");
    assert_eq!(v["sockets"][0]["comm"], "busybox", "{v:#}");

    ctd.stop_daemon();
    let v = who_listening(pid, port);
    assert_pod(&v, "web");
    drop(ctd);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the container outlived its test"
    );
}
