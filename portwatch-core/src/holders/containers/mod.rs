//! Containers named as their owners know them: name, image, published ports,
//! compose project and service, Kubernetes pod, from local state only.
//!
//! No API server and no daemon is asked. A container's id and runtime come
//! from its cgroup path (`procs::cgroup`); the rest from the runtime's own
//! files: Docker's `containers/ID/config.v2.json` under its data root,
//! Podman's `containers.json` under its storage root, and the OCI bundle's
//! `config.json` that containerd (CRI) and CRI-O write with their
//! `io.kubernetes.*` annotations. The helpers that hold a published port on
//! the host for a container (docker-proxy, conmon) are mapped back to it from
//! their command lines.
//!
//! Every string read here is untrusted (a container's name and labels are
//! whatever its creator chose): files are opened without following
//! symlinks, read with a size cap, and the strings are escaped where printed.

use std::{
    collections::HashMap,
    io::Read as _,
    net::IpAddr,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::procs::Runtime;
use crate::cmdline::flag;

mod files;

use files::{binding, cri_container, docker_container, is_running, read_json, string};

/// The most bytes read from one runtime file (a config.v2.json is a few KiB).
const FILE_CAP: u64 = 1 << 20;
/// Containers remembered by [`Containers`].
const CACHE_CAP: usize = 1024;

/// A Docker Compose project and service, from the container's labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compose {
    /// `com.docker.compose.project`.
    pub project: String,
    /// `com.docker.compose.service`.
    pub service: String,
    /// `com.docker.compose.version`: which Compose made it (1.29.2 is
    /// `docker-compose`, 2.x `docker compose`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `com.docker.compose.project.working_dir`: where it was run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `com.docker.compose.project.config_files`: its compose files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_files: Vec<String>,
}

/// A Kubernetes pod, from the CRI annotations of the container's bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The container's name inside the pod.
    pub container: Option<String>,
}

/// A container, as named by its runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Full id (64 hex digits).
    pub id: String,
    /// Which runtime runs it.
    pub runtime: Runtime,
    /// Its name (`docker ps`'s NAMES), when the runtime's files tell.
    pub name: Option<String>,
    /// Its image, as it was asked for.
    pub image: Option<String>,
    /// Its published ports, `HOST_IP:HOST_PORT->CONTAINER_PORT/PROTO`.
    pub published: Vec<String>,
    /// Compose project and service, when labelled.
    pub compose: Option<Compose>,
    /// Kubernetes pod, for CRI runtimes.
    pub pod: Option<Pod>,
}

impl Container {
    /// A container known only by its cgroup: id and runtime.
    pub fn bare(id: &str, runtime: Runtime) -> Self {
        Container {
            id: id.to_owned(),
            runtime,
            name: None,
            image: None,
            published: Vec::new(),
            compose: None,
            pod: None,
        }
    }

    /// How people call it: `pod NS/NAME`, else `container NAME`, else the
    /// short id.
    pub fn label(&self) -> String {
        if let Some(p) = &self.pod {
            return match &p.container {
                Some(c) => format!("pod {}/{} (container {c})", p.namespace, p.name),
                None => format!("pod {}/{}", p.namespace, p.name),
            };
        }
        let runtime = self
            .runtime
            .cli()
            .map(|r| format!("{r} "))
            .unwrap_or_default();
        match &self.name {
            Some(n) => format!("{runtime}container {n}"),
            None => format!("{runtime}container {}", super::short_id(&self.id)),
        }
    }
}

/// Whether `s` can be printed inside a suggested shell command as it is:
/// the characters Docker allows in names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Where each runtime keeps its state on this host.
#[derive(Debug, Clone)]
pub struct Roots {
    /// Docker's data roots (`--data-root` of each running dockerd, else the
    /// default).
    pub docker: Vec<PathBuf>,
    /// Podman's storage roots.
    pub podman: Vec<PathBuf>,
    /// containerd's runtime v2 task directories (one per namespace inside).
    pub containerd: Vec<PathBuf>,
    /// CRI-O's per-container userdata roots.
    pub crio: Vec<PathBuf>,
}

impl Roots {
    /// [`Roots::find`] over the processes running now.
    pub fn of_this_host() -> Self {
        let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        Roots::find(procs.filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            // One small read per process; the whole of /proc only for dockerd.
            let comm = std::fs::read(entry.path().join("comm")).ok()?;
            if comm.strip_suffix(b"\n").unwrap_or(&comm) != b"dockerd" {
                return None;
            }
            let info = super::procs::proc_info(pid)?;
            (info.uid == 0).then_some((info.comm, info.cmdline))
        }))
    }

    /// The defaults, plus the `--data-root` of every dockerd among
    /// `processes` (comm, command line): pass only root's, since a
    /// process of another user could name itself dockerd.
    pub fn find(processes: impl Iterator<Item = (String, String)>) -> Self {
        let mut roots = Roots {
            docker: vec![PathBuf::from("/var/lib/docker")],
            podman: vec![PathBuf::from("/var/lib/containers/storage")],
            containerd: vec![PathBuf::from(
                "/run/containerd/io.containerd.runtime.v2.task",
            )],
            crio: vec![PathBuf::from("/run/containers/storage/overlay-containers")],
        };
        for (comm, cmdline) in processes {
            if comm == "dockerd" {
                if let Some(root) = flag(&cmdline, &["--data-root", "-g", "--graph"]) {
                    push_new(&mut roots.docker, PathBuf::from(root));
                }
            }
        }
        roots
    }
}

fn push_new(v: &mut Vec<PathBuf>, p: PathBuf) {
    if p.is_absolute() && !v.contains(&p) {
        v.insert(0, p);
    }
}

/// A container that publishes a host port (Docker's port bindings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publishing {
    /// The container.
    pub container: Container,
    /// Whether it runs (a container that failed to start keeps its bindings).
    pub running: bool,
    /// The binding as `docker run -p` reads it: `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/udp]`.
    pub mapping: String,
}

/// What a host helper process tells about the container it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serves {
    /// docker-proxy: the container's address and port.
    DockerProxy {
        /// `-container-ip`.
        ip: IpAddr,
        /// `-container-port`.
        port: u16,
    },
    /// conmon: the container's id (`-c`), and the storage root its bundle
    /// (`-b ROOT/overlay-containers/ID/userdata`) lies under.
    Conmon {
        /// `-c`.
        id: String,
        /// The storage root, where `containers.json` names it.
        storage: Option<PathBuf>,
    },
}

/// Whether `comm` with `cmdline` is a runtime's helper that holds a port
/// for a container, and which.
pub fn serves(comm: &str, cmdline: &str) -> Option<Serves> {
    match comm {
        "docker-proxy" => Some(Serves::DockerProxy {
            ip: flag(cmdline, &["-container-ip"])?.parse().ok()?,
            port: flag(cmdline, &["-container-port"])?.parse().ok()?,
        }),
        "conmon" => {
            let id = flag(cmdline, &["-c", "--cid"]).filter(|id| is_id(id))?;
            let storage = flag(cmdline, &["-b", "--bundle"])
                .and_then(|b| b.strip_suffix(&format!("/overlay-containers/{id}/userdata")))
                .map(PathBuf::from)
                .filter(|p| p.is_absolute());
            Some(Serves::Conmon {
                id: id.to_owned(),
                storage,
            })
        }
        _ => None,
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Names containers from the runtimes' files, remembering what it read.
#[derive(Debug)]
pub struct Containers {
    roots: Roots,
    /// Looks for the host's roots again on a miss, at most this often: a
    /// dockerd may start with another `--data-root` after portwatch.
    refresh: Option<(std::time::Instant, std::time::Duration)>,
    cache: HashMap<String, Container>,
}

impl Containers {
    /// A resolver over `roots`, which never change.
    pub fn new(roots: Roots) -> Self {
        Containers {
            roots,
            refresh: None,
            cache: HashMap::new(),
        }
    }

    /// A resolver over this host's runtimes, found lazily.
    pub fn of_this_host() -> Self {
        Containers {
            roots: Roots::find(std::iter::empty()),
            refresh: Some((
                std::time::Instant::now() - std::time::Duration::from_secs(3600),
                std::time::Duration::from_secs(5),
            )),
            cache: HashMap::new(),
        }
    }

    fn refresh_roots(&mut self) {
        if let Some((last, every)) = &mut self.refresh {
            if last.elapsed() >= *every {
                *last = std::time::Instant::now();
                self.roots = Roots::of_this_host();
            }
        }
    }

    /// The container `id` run by `runtime`, named from its runtime's files
    /// where they are found; bare otherwise.
    pub fn get(&mut self, id: &str, runtime: Runtime) -> Container {
        if let Some(c) = self.cache.get(id) {
            return c.clone();
        }
        self.refresh_roots();
        let found = match runtime {
            Runtime::Docker => self.docker(id),
            Runtime::Podman => self.podman(id),
            Runtime::Containerd | Runtime::Crio => self.cri(id, runtime),
            // A cgroupfs path under /kubepods names no runtime: ask each.
            Runtime::Unknown => self
                .docker(id)
                .or_else(|| self.cri(id, Runtime::Containerd))
                .or_else(|| self.cri(id, Runtime::Crio))
                .or_else(|| self.podman(id)),
        }
        .unwrap_or_else(|| Container::bare(id, runtime));
        if found.name.is_some() || found.pod.is_some() {
            if self.cache.len() >= CACHE_CAP {
                self.cache.clear();
            }
            self.cache.insert(id.to_owned(), found.clone());
        }
        found
    }

    /// The container a host helper serves.
    pub fn served(&mut self, serves: &Serves) -> Option<Container> {
        self.refresh_roots();
        match serves {
            Serves::Conmon { id, storage } => {
                if let Some(root) = storage {
                    push_new(&mut self.roots.podman, root.clone());
                }
                Some(self.get(id, Runtime::Podman))
            }
            Serves::DockerProxy { ip, .. } => {
                let id = self.docker_by_ip(*ip)?;
                Some(self.get(&id, Runtime::Docker))
            }
        }
    }

    /// Docker containers whose port bindings ask for host `port` of
    /// `proto` ("tcp", "udp"): the running ones first. Found whether or not
    /// a process holds the port (docker-proxy does, or dockerd itself with
    /// `userland-proxy=false`; a container that is not running holds nothing).
    pub fn publishing(&mut self, port: u16, proto: &str) -> Vec<Publishing> {
        self.refresh_roots();
        let mut found = Vec::new();
        for (id, dir) in self.docker_containers() {
            let Some(host) = read_json(&dir.join("hostconfig.json")) else {
                continue;
            };
            let Some(mapping) = binding(&host, port, proto) else {
                continue;
            };
            let Some(config) = read_json(&dir.join("config.v2.json")) else {
                continue;
            };
            found.push(Publishing {
                running: is_running(&config),
                container: docker_container(&id, &config),
                mapping,
            });
        }
        found.sort_by_key(|p| !p.running);
        found
    }

    fn docker(&self, id: &str) -> Option<Container> {
        self.roots.docker.iter().find_map(|root| {
            let config = read_json(&root.join("containers").join(id).join("config.v2.json"))?;
            Some(docker_container(id, &config))
        })
    }

    /// Every Docker container directory under the data roots: (id, dir).
    fn docker_containers(&self) -> impl Iterator<Item = (String, PathBuf)> + '_ {
        self.roots.docker.iter().flat_map(|root| {
            std::fs::read_dir(root.join("containers"))
                .into_iter()
                .flatten()
                .flatten()
                .take(CACHE_CAP * 4)
                .filter_map(|entry| {
                    let id = entry.file_name().into_string().ok().filter(|n| is_id(n))?;
                    Some((id, entry.path()))
                })
        })
    }

    /// The running Docker container with `ip` on one of its networks.
    fn docker_by_ip(&self, ip: IpAddr) -> Option<String> {
        let ip = ip.to_string();
        self.docker_containers().find_map(|(id, dir)| {
            let config = read_json(&dir.join("config.v2.json"))?;
            let nets = config
                .pointer("/NetworkSettings/Networks")
                .and_then(Value::as_object)?;
            let has_ip = nets
                .values()
                .any(|net| net.get("IPAddress").and_then(Value::as_str) == Some(&ip));
            (is_running(&config) && has_ip).then_some(id)
        })
    }

    fn podman(&self, id: &str) -> Option<Container> {
        self.roots.podman.iter().find_map(|root| {
            let list = read_json(&root.join("overlay-containers/containers.json"))?;
            let entry = list
                .as_array()?
                .iter()
                .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?;
            let metadata: Option<Value> = entry
                .get("metadata")
                .and_then(Value::as_str)
                .and_then(|m| serde_json::from_str(m).ok());
            Some(Container {
                name: string(entry, "/names/0")
                    .or_else(|| metadata.as_ref().and_then(|m| string(m, "/name"))),
                image: metadata.as_ref().and_then(|m| string(m, "/image-name")),
                ..Container::bare(id, Runtime::Podman)
            })
        })
    }

    fn cri(&self, id: &str, runtime: Runtime) -> Option<Container> {
        let bundles: Vec<PathBuf> = match runtime {
            Runtime::Containerd => self
                .roots
                .containerd
                .iter()
                .flat_map(|root| {
                    // One directory per containerd namespace ("k8s.io", ...).
                    std::fs::read_dir(root)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .take(64)
                        .map(|ns| ns.path().join(id).join("config.json"))
                })
                .collect(),
            _ => self
                .roots
                .crio
                .iter()
                .map(|root| root.join(id).join("userdata/config.json"))
                .collect(),
        };
        bundles
            .iter()
            .find_map(|b| read_json(b))
            .map(|config| cri_container(id, runtime, &config))
    }
}

#[cfg(test)]
mod tests {
    use portwatch_test_support::Scratch;

    use super::*;

    const ID: &str = "4f8b2c1d9e7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c";

    fn roots(base: &Path) -> Roots {
        Roots {
            docker: vec![base.join("docker")],
            podman: vec![base.join("podman")],
            containerd: vec![base.join("containerd")],
            crio: vec![base.join("crio")],
        }
    }

    /// The fields of docker 20.10's config.v2.json that are read (the real
    /// file has many more; unknown ones are ignored).
    fn docker_config(name: &str, labels: &str) -> String {
        format!(
            r#"{{"ID":"{ID}","Name":"/{name}","State":{{"Running":true,"Pid":4242}},
            "Config":{{"Image":"pwtest:1","Labels":{{{labels}}}}},
            "NetworkSettings":{{"Ports":{{"80/tcp":[{{"HostIp":"0.0.0.0","HostPort":"8080"}},{{"HostIp":"::","HostPort":"8080"}}]}},
            "Networks":{{"bridge":{{"IPAddress":"172.17.0.2"}}}}}}}}"#
        )
    }

    #[test]
    fn docker_container_by_id_and_by_proxy_ip() {
        let s = Scratch::new("docker");
        s.write(
            &format!("docker/containers/{ID}/config.v2.json"),
            &docker_config("web", ""),
        );
        let mut c = Containers::new(roots(&s.0));
        let web = c.get(ID, Runtime::Docker);
        assert_eq!(web.name.as_deref(), Some("web"));
        assert_eq!(web.image.as_deref(), Some("pwtest:1"));
        assert_eq!(web.published, ["0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp"]);
        assert_eq!(
            crate::diagnose::container_stop(&web, &crate::tools::HostTools::ALL).unwrap(),
            "docker stop web"
        );
        assert_eq!(web.label(), "docker container web");
        let proxy = serves(
            "docker-proxy",
            "/usr/sbin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.17.0.2 -container-port 80",
        )
        .unwrap();
        assert_eq!(c.served(&proxy).unwrap().name.as_deref(), Some("web"));
        let elsewhere = Serves::DockerProxy {
            ip: "172.17.0.9".parse().unwrap(),
            port: 80,
        };
        assert_eq!(c.served(&elsewhere), None);
    }

    #[test]
    fn port_bindings_name_the_container_that_wants_a_port() {
        let s = Scratch::new("bindings");
        s.write(
            &format!("docker/containers/{ID}/config.v2.json"),
            &docker_config("web2", "").replace(r#""Running":true"#, r#""Running":false"#),
        );
        s.write(
            &format!("docker/containers/{ID}/hostconfig.json"),
            r#"{"NetworkMode":"default","PortBindings":{"80/tcp":[{"HostIp":"","HostPort":"8081"}],"53/udp":[{"HostIp":"127.0.0.1","HostPort":"5353"}]}}"#,
        );
        let mut c = Containers::new(roots(&s.0));
        let p = c.publishing(8081, "tcp");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].container.name.as_deref(), Some("web2"));
        assert_eq!(p[0].mapping, "8081:80");
        assert!(!p[0].running);
        assert_eq!(
            c.publishing(5353, "udp")[0].mapping,
            "127.0.0.1:5353:53/udp"
        );
        assert_eq!(c.publishing(8081, "udp"), vec![]);
        assert_eq!(c.publishing(8082, "tcp"), vec![]);
    }

    #[test]
    fn compose_labels_name_the_project_its_compose_and_files() {
        let s = Scratch::new("compose");
        s.write(
            &format!("docker/containers/{ID}/config.v2.json"),
            &docker_config(
                "shop_cart_1",
                r#""com.docker.compose.project":"shop","com.docker.compose.service":"cart",
                "com.docker.compose.version":"1.29.2",
                "com.docker.compose.project.working_dir":"/srv/shop",
                "com.docker.compose.project.config_files":"/srv/shop/base.yml,/srv/shop/prod.yml""#,
            ),
        );
        let mut c = Containers::new(roots(&s.0));
        let cart = c.get(ID, Runtime::Docker);
        let compose = cart.compose.as_ref().unwrap();
        assert_eq!(
            (compose.project.as_str(), compose.service.as_str()),
            ("shop", "cart")
        );
        assert_eq!(compose.version.as_deref(), Some("1.29.2"));
        assert_eq!(compose.working_dir.as_deref(), Some("/srv/shop"));
        assert_eq!(
            compose.config_files,
            ["/srv/shop/base.yml", "/srv/shop/prod.yml"]
        );
        let tools = crate::tools::HostTools {
            docker_compose: true,
            ..Default::default()
        };
        assert_eq!(
            crate::diagnose::container_stop(&cart, &tools).unwrap(),
            "cd /srv/shop && docker-compose -p shop -f /srv/shop/base.yml -f /srv/shop/prod.yml stop cart"
        );
    }

    #[test]
    fn hostile_names_never_reach_a_command() {
        let s = Scratch::new("hostile");
        s.write(
            &format!("docker/containers/{ID}/config.v2.json"),
            &docker_config(
                "x; rm -rf /",
                r#""com.docker.compose.project":"$(reboot)","com.docker.compose.service":"web""#,
            ),
        );
        let mut c = Containers::new(roots(&s.0));
        let web = c.get(ID, Runtime::Docker);
        assert_eq!(
            crate::diagnose::container_stop(&web, &crate::tools::HostTools::ALL).unwrap(),
            format!("docker stop {}", &ID[..12])
        );
    }

    #[test]
    fn a_symlinked_config_is_not_followed() {
        let s = Scratch::new("symlink");
        s.write("elsewhere.json", &docker_config("web", ""));
        std::fs::create_dir_all(s.0.join(format!("docker/containers/{ID}"))).unwrap();
        std::os::unix::fs::symlink(
            s.0.join("elsewhere.json"),
            s.0.join(format!("docker/containers/{ID}/config.v2.json")),
        )
        .unwrap();
        let mut c = Containers::new(roots(&s.0));
        assert_eq!(
            c.get(ID, Runtime::Docker),
            Container::bare(ID, Runtime::Docker)
        );
    }

    #[test]
    fn podman_from_containers_json_and_conmon() {
        let s = Scratch::new("podman");
        s.write(
            "elsewhere/overlay-containers/containers.json",
            &format!(
                r#"[{{"id":"{ID}","names":["web"],"image":"abc","layer":"def",
                "metadata":"{{\"image-name\":\"localhost/pwtest:1\",\"image-id\":\"abc\",\"name\":\"web\",\"created-at\":1700000000}}"}}]"#
            ),
        );
        let mut c = Containers::new(roots(&s.0));
        let conmon = serves(
            "conmon",
            &format!(
                "/usr/bin/conmon --api-version 1 -c {ID} -u {ID} -r /usr/sbin/runc -b {}/overlay-containers/{ID}/userdata -n web",
                s.0.join("elsewhere").display()
            ),
        )
        .unwrap();
        let web = c.served(&conmon).unwrap();
        assert_eq!(web.name.as_deref(), Some("web"));
        assert_eq!(web.image.as_deref(), Some("localhost/pwtest:1"));
        assert_eq!(
            crate::diagnose::container_stop(&web, &crate::tools::HostTools::ALL).unwrap(),
            "podman stop web"
        );
    }

    /// The annotations containerd's CRI plugin writes into a container's
    /// OCI bundle (`/run/containerd/io.containerd.runtime.v2.task/k8s.io/ID/config.json`).
    #[test]
    fn kubernetes_pod_from_containerd_annotations() {
        let s = Scratch::new("containerd");
        s.write(
            &format!("containerd/k8s.io/{ID}/config.json"),
            r#"{"ociVersion":"1.1.0","process":{"args":["nginx"]},"annotations":{
            "io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.container-name":"web",
            "io.kubernetes.cri.image-name":"docker.io/library/nginx:1.25",
            "io.kubernetes.cri.sandbox-id":"aaaa",
            "io.kubernetes.cri.sandbox-name":"shop-7d9f8b-x2x4q",
            "io.kubernetes.cri.sandbox-namespace":"prod"}}"#,
        );
        let mut c = Containers::new(roots(&s.0));
        let web = c.get(ID, Runtime::Containerd);
        assert_eq!(web.label(), "pod prod/shop-7d9f8b-x2x4q (container web)");
        assert_eq!(web.image.as_deref(), Some("docker.io/library/nginx:1.25"));
        assert_eq!(
            crate::diagnose::container_stop(&web, &crate::tools::HostTools::ALL),
            None
        );
    }

    /// CRI-O's bundle (`/run/containers/storage/overlay-containers/ID/userdata/config.json`).
    #[test]
    fn kubernetes_pod_from_crio_annotations() {
        let s = Scratch::new("crio");
        s.write(
            &format!("crio/{ID}/userdata/config.json"),
            r#"{"ociVersion":"1.0.2-dev","annotations":{
            "io.kubernetes.container.name":"web",
            "io.kubernetes.cri-o.ImageName":"quay.io/acme/web:2",
            "io.kubernetes.pod.name":"web-0",
            "io.kubernetes.pod.namespace":"default"}}"#,
        );
        let mut c = Containers::new(roots(&s.0));
        let web = c.get(ID, Runtime::Crio);
        assert_eq!(web.label(), "pod default/web-0 (container web)");
        assert_eq!(web.image.as_deref(), Some("quay.io/acme/web:2"));
    }

    #[test]
    fn dockerd_data_root_from_its_command_line() {
        let roots = Roots::find(
            [
                (
                    "dockerd".to_owned(),
                    "dockerd --data-root /srv/docker -p /run/d.pid".to_owned(),
                ),
                ("bash".to_owned(), "bash --data-root /tmp/evil".to_owned()),
            ]
            .into_iter(),
        );
        assert_eq!(
            roots.docker,
            [
                PathBuf::from("/srv/docker"),
                PathBuf::from("/var/lib/docker")
            ]
        );
        assert_eq!(flag("x --data-root=/a b", &["--data-root"]), Some("/a"));
    }

    #[test]
    fn runtime_helpers() {
        for comm in [
            "dockerd",
            "docker-proxy",
            "conmon",
            "rootlessport",
            "containerd-shim-runc-v2",
        ] {
            let found = crate::safety::find(Some(comm), None, None).map(|f| f.entry.kind);
            assert_eq!(found, Some(crate::safety::Kind::RuntimeHelper), "{comm}");
        }
        assert!(crate::safety::find(Some("nginx"), None, None).is_none());
    }
}
