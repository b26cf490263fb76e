//! What the runtimes' own files say about a container: Docker's
//! `config.v2.json` and `hostconfig.json` (name, image, compose project,
//! published ports, running or not) and the CRI runtimes' bundle
//! annotations (Kubernetes pod). Every file is read as root's, capped,
//! without following a symlink.

use super::*;

/// Reads a runtime's file: no symlink followed, at most [`FILE_CAP`], and
/// only root's (runtimes run as root; anyone else's file could lie).
pub(crate) fn read_root_file(path: &Path) -> Option<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    if file.metadata().ok()?.uid() != 0 {
        return None;
    }
    let mut buf = Vec::new();
    file.take(FILE_CAP).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// A runtime's JSON file, read as [`read_root_file`] reads it.
pub(super) fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&read_root_file(path)?).ok()
}

pub(super) fn string(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The binding of `hostconfig.json`'s PortBindings for host `port`/`proto`,
/// as `docker run -p` writes it.
pub(super) fn binding(hostconfig: &Value, port: u16, proto: &str) -> Option<String> {
    let bindings = hostconfig.get("PortBindings")?.as_object()?;
    let port = port.to_string();
    for (inside, list) in bindings {
        let (cport, cproto) = inside.split_once('/').unwrap_or((inside, "tcp"));
        if cproto != proto {
            continue;
        }
        for b in list.as_array().into_iter().flatten() {
            if b.get("HostPort").and_then(Value::as_str) != Some(port.as_str()) {
                continue;
            }
            let ip = b.get("HostIp").and_then(Value::as_str).unwrap_or("");
            let suffix = if proto == "tcp" { "" } else { "/udp" };
            return Some(if ip.is_empty() {
                format!("{port}:{cport}{suffix}")
            } else {
                format!("{ip}:{port}:{cport}{suffix}")
            });
        }
    }
    None
}

pub(super) fn is_running(config: &Value) -> bool {
    config.pointer("/State/Running").and_then(Value::as_bool) == Some(true)
}

/// A Docker container from its `config.v2.json`.
pub(super) fn docker_container(id: &str, config: &Value) -> Container {
    let labels = config.pointer("/Config/Labels");
    let label = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let compose = match (
        label("com.docker.compose.project"),
        label("com.docker.compose.service"),
    ) {
        (Some(project), Some(service)) => Some(Compose {
            project,
            service,
            version: label("com.docker.compose.version"),
            working_dir: label("com.docker.compose.project.working_dir"),
            // Comma-separated, as Compose writes it.
            config_files: label("com.docker.compose.project.config_files")
                .map(|f| {
                    f.split(',')
                        .filter(|f| !f.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }),
        _ => None,
    };
    let mut published = Vec::new();
    if let Some(ports) = config
        .pointer("/NetworkSettings/Ports")
        .and_then(Value::as_object)
    {
        for (inside, bindings) in ports {
            for b in bindings.as_array().into_iter().flatten() {
                let host_ip = b.get("HostIp").and_then(Value::as_str).unwrap_or("");
                let host_port = b.get("HostPort").and_then(Value::as_str).unwrap_or("");
                let host = match host_ip.parse::<IpAddr>() {
                    Ok(IpAddr::V6(a)) => format!("[{a}]"),
                    _ => host_ip.to_owned(),
                };
                published.push(format!("{host}:{host_port}->{inside}"));
            }
        }
        published.sort();
    }
    Container {
        name: string(config, "/Name").map(|n| n.trim_start_matches('/').to_owned()),
        image: string(config, "/Config/Image"),
        published,
        compose,
        ..Container::bare(id, Runtime::Docker)
    }
}

/// A CRI container from its OCI bundle's `config.json` annotations:
/// containerd writes `io.kubernetes.cri.*`, CRI-O `io.kubernetes.pod.*`.
pub(super) fn cri_container(id: &str, runtime: Runtime, config: &Value) -> Container {
    let a = |k: &str| string(config, &format!("/annotations/{}", k.replace('/', "~1")));
    let namespace =
        a("io.kubernetes.cri.sandbox-namespace").or_else(|| a("io.kubernetes.pod.namespace"));
    let pod_name = a("io.kubernetes.cri.sandbox-name").or_else(|| a("io.kubernetes.pod.name"));
    let container =
        a("io.kubernetes.cri.container-name").or_else(|| a("io.kubernetes.container.name"));
    let pod = match (namespace, pod_name) {
        (Some(namespace), Some(name)) => Some(Pod {
            namespace,
            name,
            container: container.clone(),
            controller: None,
        }),
        _ => None,
    };
    Container {
        name: container,
        image: a("io.kubernetes.cri.image-name").or_else(|| a("io.kubernetes.cri-o.ImageName")),
        pod,
        ..Container::bare(id, runtime)
    }
}
