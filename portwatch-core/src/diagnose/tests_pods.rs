//! Pods: the fix ends the clash in the workload's manifest or moves the
//! other side; never `docker stop`, `podman stop`, `kill` for a pod's
//! container, nor deleting the pod; `kubectl` only as a cluster command.

use super::*;
use crate::{
    clock::Clock,
    event::{
        fixtures::{encode, sample},
        Event,
    },
    holders::{
        containers::{Container, Pod, Runtime},
        sysctl::Scope,
        Holder, State,
    },
    tools::HostTools,
};

/// A failed bind of 8080 by a process (pid from the fixture).
fn event() -> Request {
    let mut raw = sample();
    raw.ret = -98;
    raw.port = 8080;
    raw.folded = 0;
    Event::decode(&encode(&raw), Clock::now())
        .unwrap()
        .request()
}

/// Container `container` of pod shop/web-0, under `runtime`.
fn in_pod(container: &str, runtime: Runtime, id: char) -> Container {
    Container {
        name: Some(container.into()),
        pod: Some(Pod {
            namespace: "shop".into(),
            name: "web-0".into(),
            container: Some(container.into()),
            controller: None,
        }),
        ..Container::bare(&id.to_string().repeat(64), runtime)
    }
}

/// A listener on 8080 held by container `web` of pod shop/web-0.
fn pod_holder(runtime: Runtime) -> Holder {
    let mut h = tests::holder(State::Listen);
    h.comm = Some("busybox".into());
    h.container = Some(in_pod("web", runtime, 'a'));
    h
}

/// Evidence of `holders` in the host's network namespace (`host`: Some
/// true) or a pod's (Some false), or unknown.
fn seen(holders: Vec<Holder>, host: Option<bool>) -> Evidence {
    Evidence {
        holders,
        tools: HostTools::ALL,
        scope: Scope { host, enter: None },
        ..Evidence::default()
    }
}

fn assert_no_end_from_the_host(fix: &str) {
    for never in [
        "docker stop",
        "podman stop",
        "kill",
        "kubectl delete",
        "crictl stop",
    ] {
        assert!(!fix.contains(never), "{never}: {fix}");
    }
}

/// A pod's container (hostNetwork, on the node's own namespace) holds a
/// port a host service wants: its manifest's port or hostNetwork, or the
/// host service moved; `kubectl` as a cluster command; whatever runtime
/// the cgroup path names, even one whose CLI is installed.
#[test]
fn a_pods_container_is_changed_in_its_manifest() {
    for runtime in [Runtime::Containerd, Runtime::Crio, Runtime::Unknown] {
        let v = diagnose(&event(), &seen(vec![pod_holder(runtime)], Some(true)));
        assert_eq!(v.reason, Reason::Listener);
        assert!(
            v.diagnosis
                .contains("busybox (pid 100, pod shop/web-0 (container web))"),
            "{}",
            v.diagnosis
        );
        assert!(
            v.fix.starts_with(
                "Change the port of pod shop/web-0 (container web) in its workload's manifest (it runs with `hostNetwork: true`, so its `containerPort` 8080 is the node's port: change that port or drop `hostNetwork`), or move the other service to another port; deleting the pod is no fix"
            ),
            "{}",
            v.fix
        );
        assert!(
            v.fix.contains("`kubectl -n shop get pod web-0 -o yaml` (a cluster command: run it where the cluster is managed)"),
            "{}",
            v.fix
        );
        // Its controller is not guessed from the pod's name.
        assert!(v.fix.contains("its controller"), "{}", v.fix);
        assert!(
            !v.fix.contains("or give this service another port"),
            "{}",
            v.fix
        );
        assert_no_end_from_the_host(&v.fix);
    }
}

/// Where the port's namespace is unknown (`who` without root), the fix
/// names both fields that put a pod on a node's port; in the pod's own
/// namespace, its containerPort.
#[test]
fn the_port_field_follows_the_namespace() {
    let unknown = diagnose(&event(), &seen(vec![pod_holder(Runtime::Containerd)], None));
    assert!(
        unknown
            .fix
            .contains("its `hostPort` 8080, or its `containerPort` 8080 when it runs with `hostNetwork: true`"),
        "{}",
        unknown.fix
    );
    let own = diagnose(
        &event(),
        &seen(vec![pod_holder(Runtime::Containerd)], Some(false)),
    );
    assert!(
        own.fix
            .contains("its `containerPort` 8080, in the pod's own network namespace"),
        "{}",
        own.fix
    );
    assert_no_end_from_the_host(&own.fix);
}

/// Two containers of one pod want one port in its shared namespace (a
/// sidecar): one of them changes, in the manifest.
#[test]
fn a_sidecar_clash_names_both_containers() {
    let mut s = seen(vec![pod_holder(Runtime::Containerd)], Some(false));
    s.caller.in_container = Some(in_pod("sidecar", Runtime::Containerd, 'b'));
    s.caller.container = Some("b".repeat(64));
    let v = diagnose(&event(), &s);
    assert!(
        v.fix.starts_with(
            "Containers web and sidecar of pod shop/web-0 share its network namespace and both want port 8080: give one of them another port in its workload's manifest"
        ),
        "{}",
        v.fix
    );
    assert_no_end_from_the_host(&v.fix);
}

/// A pod's container cannot bind because a host process holds the port:
/// the pod's manifest first, or the host process moved (its clean stop
/// named as it would be anyway).
#[test]
fn a_pod_against_a_host_process() {
    let mut h = tests::holder(State::Listen);
    h.unit = Some("nginx.service".into());
    let mut s = seen(vec![h], Some(true));
    s.caller.in_container = Some(in_pod("web", Runtime::Containerd, 'b'));
    s.caller.container = Some("b".repeat(64));
    let v = diagnose(&event(), &s);
    assert!(
        v.fix.starts_with(
            "Old (pid 100, nginx.service) already holds port 8080, which pod shop/web-0 (container web) wants: change the pod's port in its workload's manifest (its `containerPort` under `hostNetwork: true`, or drop `hostNetwork`), or move old (pid 100, nginx.service) off port 8080 (`systemctl stop nginx.service`)"
        ),
        "{}",
        v.fix
    );
    assert!(
        v.fix.contains("run it where the cluster is managed"),
        "{}",
        v.fix
    );
}

/// A pod's container whose pod no file on this node names (its cgroup
/// under kubepods, its bundle not found): no `docker stop` or `podman
/// stop` even where both are installed, and the way to name its pod.
#[test]
fn an_unnamed_pod_container_is_not_stopped_as_a_plain_one() {
    let mut h = tests::holder(State::Listen);
    h.container = Some(Container {
        kubernetes: true,
        ..Container::bare(&"e".repeat(64), Runtime::Unknown)
    });
    let v = diagnose(&event(), &seen(vec![h], Some(true)));
    assert!(
        v.diagnosis.contains("Kubernetes container eeeeeeeeeeee"),
        "{}",
        v.diagnosis
    );
    assert!(
        v.fix.starts_with("Change port 8080 in the workload of the pod this container belongs to (`crictl ps --id eeeeeeeeeeee`"),
        "{}",
        v.fix
    );
    assert_no_end_from_the_host(&v.fix);
}
