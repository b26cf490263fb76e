//! Compose files as `portwatch check -f` reads them: every published port
//! of every service, with interpolation, merging, profiles and the project
//! name as compose derives them.
//!
//! portwatch reads the files itself, always, rather than asking an
//! installed compose (`docker compose config`): it runs nothing of the
//! project's, it knows the file and line of every port, it works where no
//! compose is installed (a CI step before the one that installs it), and
//! it answers the same on every host. The rules are docker-compose
//! 1.29's (Debian 12's), checked against the real `docker-compose config`
//! in the tests; where compose v2 reads more (a top-level `name:`,
//! `host_ip` and a published range in the long syntax), that is read too.

mod ports;
#[cfg(test)]
mod tests;
mod vars;
mod yaml;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ports::{Published, ServicePort};
use vars::{VarError, Vars};
use yaml::{Node, Value};

use super::{read_input, Entry, InputError, Origin, Ours, Plan, Unchecked};
use crate::request::{Binding, Opts, Proto};

/// What `check -f ... [-p P] [--env-file F] [--profile N]` names.
#[derive(Debug, Clone, Default)]
pub struct ComposeInput {
    /// The compose files, merged in order.
    pub files: Vec<PathBuf>,
    /// `-p`: the project name.
    pub project: Option<String>,
    /// `--env-file`: instead of the project directory's `.env`.
    pub env_file: Option<PathBuf>,
    /// `--profile`: the active profiles (with `COMPOSE_PROFILES`).
    pub profiles: Vec<String>,
}

/// The plan of a compose project; `env` is the environment compose would
/// see (`std::env::var` in the CLI).
pub fn read(
    input: &ComposeInput,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan, InputError> {
    let first = input
        .files
        .first()
        .ok_or_else(|| InputError::file("-f", "no compose file"))?;
    let dir = project_dir(first);
    let vars = Vars {
        file: env_file(input, &dir, env)?,
        env,
    };
    let mut docs = Vec::with_capacity(input.files.len());
    for f in &input.files {
        let doc = yaml::load(f, &read_input(f)?)?;
        docs.push((f.clone(), interpolate_doc(f, doc, &vars)?));
    }
    let project = project_name(input, &docs, &vars, &dir);
    let active: Vec<String> = if input.profiles.is_empty() {
        vars.get("COMPOSE_PROFILES")
            .map(|p| p.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    } else {
        input.profiles.clone()
    };
    let mut services: Vec<Service> = Vec::new();
    for (f, doc) in &docs {
        for s in services_of(f, doc)? {
            match services.iter_mut().find(|o| o.name == s.name) {
                Some(base) => base.merge(s),
                None => services.push(s),
            }
        }
    }
    let ours = Ours::Compose { project };
    let mut plan = Plan::default();
    for (f, doc) in &docs {
        if let Some(inc) = doc.get("include") {
            plan.unchecked.push(Unchecked {
                from: Origin::at(f, Some(inc.line), "include"),
                why: "the files it includes are not read: name them with -f".into(),
            });
        }
    }
    for s in services.iter().filter(|s| s.enabled(&active)) {
        s.plan(&ours, &mut plan);
    }
    Ok(plan)
}

/// Where compose looks for `.env` and takes the project's name from: the
/// first file's directory (docker-compose 1.29's `get_project_dir`).
fn project_dir(first: &Path) -> PathBuf {
    let parent = first.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = parent.unwrap_or(Path::new("."));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

/// `--env-file`, else the project directory's `.env` when there is one.
fn env_file(
    input: &ComposeInput,
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, String>, InputError> {
    let path = match &input.env_file {
        Some(f) => f.clone(),
        None => {
            let dot = dir.join(".env");
            if std::fs::symlink_metadata(&dot).is_err() {
                return Ok(HashMap::new());
            }
            dot
        }
    };
    Ok(vars::dotenv(&read_input(&path)?, env))
}

/// The top-level sections compose interpolates (not `version`, not `x-`
/// extensions), and v2's `name:`.
const INTERPOLATED: [&str; 6] = [
    "services", "networks", "volumes", "secrets", "configs", "name",
];

fn interpolate_doc(file: &Path, doc: Node, vars: &Vars<'_>) -> Result<Node, InputError> {
    let Node { line, col, value } = doc;
    let value = match value {
        Value::Map(m) => Value::Map(
            m.into_iter()
                .map(|(k, v)| {
                    let v = if INTERPOLATED.contains(&k.as_str()) {
                        interpolate(file, v, vars)?
                    } else {
                        v
                    };
                    Ok((k, v))
                })
                .collect::<Result<_, InputError>>()?,
        ),
        Value::Null => Value::Map(Vec::new()),
        _ => {
            return Err(InputError::at(
                file,
                line,
                Some(col),
                "a compose file is a mapping (services: ...)",
            ))
        }
    };
    Ok(Node { line, col, value })
}

/// Every string under `node`, interpolated.
fn interpolate(file: &Path, node: Node, vars: &Vars<'_>) -> Result<Node, InputError> {
    let Node { line, col, value } = node;
    let value = match value {
        Value::Str(s) => Value::Str(vars.interpolate(&s).map_err(|e| {
            let what = match e {
                VarError::Invalid => format!("invalid interpolation format in \"{s}\""),
                VarError::Required(err) => {
                    format!("a required variable is missing in \"{s}\": {err}")
                }
            };
            InputError::at(file, line, Some(col), what)
        })?),
        Value::Seq(items) => Value::Seq(
            items
                .into_iter()
                .map(|i| interpolate(file, i, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(m) => Value::Map(
            m.into_iter()
                .map(|(k, v)| Ok((k, interpolate(file, v, vars)?)))
                .collect::<Result<_, InputError>>()?,
        ),
        other => other,
    };
    Ok(Node { line, col, value })
}

/// `-p`, else `COMPOSE_PROJECT_NAME` (environment, then `.env`), else the
/// last file's top-level `name:` (compose v2), else the project
/// directory's name; lowercase, only `a-z0-9_-` kept, as docker-compose
/// 1.29 normalises it (the containers' `com.docker.compose.project`).
fn project_name(
    input: &ComposeInput,
    docs: &[(PathBuf, Node)],
    vars: &Vars<'_>,
    dir: &Path,
) -> String {
    let named = || {
        docs.iter()
            .rev()
            .find_map(|(_, d)| d.get("name").and_then(Node::scalar))
    };
    let dir_name = || dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = input
        .project
        .clone()
        .or_else(|| vars.get("COMPOSE_PROJECT_NAME").filter(|n| !n.is_empty()))
        .or_else(named)
        .or_else(dir_name)
        .unwrap_or_default();
    let normal: String = name
        .to_lowercase()
        .chars()
        .filter(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        .collect();
    if normal.is_empty() {
        "default".into()
    } else {
        normal
    }
}

/// What a service says about the host's ports.
#[derive(Debug)]
struct Service {
    name: String,
    /// The file and line of its `network_mode:` (the last file's, when
    /// merged).
    file: PathBuf,
    line: u32,
    profiles: Vec<String>,
    network_mode: Option<String>,
    /// Its ports, each with the file it was read from.
    ports: Vec<(PathBuf, ServicePort)>,
    /// `extends:` (its file and line): ports may come from elsewhere.
    extends: Option<(PathBuf, u32)>,
}

impl Service {
    /// Merged as docker-compose 1.29's `merge_service_dicts`: ports by
    /// (target, published, host_ip, protocol), the later file's entry
    /// replacing an equal one, then sorted by target; profiles joined;
    /// network_mode replaced.
    fn merge(&mut self, over: Service) {
        if !over.ports.is_empty() || !self.ports.is_empty() {
            for p in over.ports {
                match self.ports.iter_mut().find(|(_, o)| o.key() == p.1.key()) {
                    Some(slot) => *slot = p,
                    None => self.ports.push(p),
                }
            }
            self.ports.sort_by_key(|(_, p)| p.target);
        }
        for p in over.profiles {
            if !self.profiles.contains(&p) {
                self.profiles.push(p);
            }
        }
        if over.network_mode.is_some() {
            self.network_mode = over.network_mode;
            self.file = over.file;
            self.line = over.line;
        }
        if over.extends.is_some() {
            self.extends = over.extends;
        }
    }

    /// Without profiles always; with some, when one of them is active.
    fn enabled(&self, active: &[String]) -> bool {
        self.profiles.is_empty() || self.profiles.iter().any(|p| active.contains(p))
    }

    fn origin(&self, file: &Path, line: u32, what: &str) -> Origin {
        Origin::at(file, Some(line), format!("service {}: {what}", self.name))
    }

    /// Its entries (or why there are none to check) into `plan`.
    fn plan(&self, ours: &Ours, plan: &mut Plan) {
        if self.network_mode.as_deref() == Some("host") {
            plan.unchecked.push(Unchecked {
                from: self.origin(&self.file, self.line, "network_mode: host"),
                why: "it binds in the host's own network: which ports is up to its program, not in the compose file (`ports:` is ignored)".into(),
            });
            return;
        }
        if let Some((file, line)) = &self.extends {
            plan.unchecked.push(Unchecked {
                from: self.origin(file, *line, "extends"),
                why: "ports it inherits through `extends:` are not read; its own are".into(),
            });
        }
        for (file, p) in &self.ports {
            let from = self.origin(file, p.line, &p.spec);
            let unchecked = |why: String| Unchecked {
                from: from.clone(),
                why,
            };
            let proto = match p.protocol.as_str() {
                "udp" => Proto::Udp,
                "tcp" => Proto::Tcp,
                _ => {
                    plan.unchecked.push(unchecked(format!(
                        "{}: portwatch checks TCP and UDP only",
                        p.protocol
                    )));
                    continue;
                }
            };
            let port = match p.published {
                Published::Port(port) => port,
                Published::Any => {
                    plan.unchecked.push(unchecked(
                        "Docker picks a free host port: nothing to check".into(),
                    ));
                    continue;
                }
                Published::AnyOf(a, b) => {
                    plan.unchecked.push(unchecked(format!(
                        "Docker picks a free host port in {a}-{b}: nothing to check (it fails only when all are taken)"
                    )));
                    continue;
                }
            };
            for binding in docker_bindings(proto, p.host_ip, port) {
                plan.entries.push(Entry {
                    binding,
                    from: vec![from.clone()],
                    ours: Some(ours.clone()),
                });
            }
        }
    }
}

/// The sockets Docker (docker-proxy, Go listeners) binds for a published
/// port: with no host_ip, 0.0.0.0 and [::] with IPV6_V6ONLY (seen with
/// Debian's docker.io 20.10: two docker-proxy processes, `ss` shows
/// `v6only:1` on the second); an IPv6 address always v6only; TCP
/// listeners with SO_REUSEADDR, as Go sets it on every listener.
fn docker_bindings(proto: Proto, host_ip: Option<IpAddr>, port: u16) -> Vec<Binding> {
    let addrs = match host_ip {
        Some(ip) => vec![ip],
        None => vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ],
    };
    addrs
        .into_iter()
        .map(|addr| Binding {
            opts: Opts {
                reuseaddr: proto == Proto::Tcp,
                v6only: addr.is_ipv6(),
                ..Opts::default()
            },
            ..Binding::plain(proto, addr, port)
        })
        .collect()
}

/// The services of one file, each with what it says about ports.
fn services_of(file: &Path, doc: &Node) -> Result<Vec<Service>, InputError> {
    let Some(services) = doc.get("services") else {
        if let Value::Map(top) = &doc.value {
            let known = [
                "version", "networks", "volumes", "secrets", "configs", "name",
            ];
            if let Some((k, v)) = top
                .iter()
                .find(|(k, _)| !known.contains(&k.as_str()) && !k.starts_with("x-"))
            {
                return Err(v.error(
                    file,
                    format!("\"{k}\" at the top level: a version 1 compose file (no `services:`) is not read; put the services under `services:`"),
                ));
            }
        }
        return Ok(Vec::new());
    };
    let entries = match &services.value {
        Value::Map(m) => m.as_slice(),
        Value::Null => &[],
        _ => return Err(services.error(file, "`services:` is a mapping of service names")),
    };
    let mut out = Vec::with_capacity(entries.len());
    for (name, node) in entries {
        out.push(service(file, name, node)?);
    }
    Ok(out)
}

fn service(file: &Path, name: &str, node: &Node) -> Result<Service, InputError> {
    let mode = node.get("network_mode");
    let mut s = Service {
        name: name.to_owned(),
        file: file.to_owned(),
        line: mode.map_or(node.line, |m| m.line),
        profiles: Vec::new(),
        network_mode: mode.and_then(Node::scalar),
        ports: Vec::new(),
        extends: node.get("extends").map(|e| (file.to_owned(), e.line)),
    };
    match &node.value {
        Value::Map(_) | Value::Null => {}
        _ => return Err(node.error(file, format!("service \"{name}\" is not a mapping"))),
    }
    if let Some(p) = node.get("profiles") {
        let Value::Seq(items) = &p.value else {
            return Err(p.error(file, "`profiles:` is a list of names"));
        };
        s.profiles = items.iter().filter_map(Node::scalar).collect();
    }
    if let Some(p) = node.get("ports") {
        match &p.value {
            Value::Seq(items) => {
                for i in items {
                    // Not deduplicated: compose merges only across files.
                    for sp in ports::parse(file, i)? {
                        s.ports.push((file.to_owned(), sp));
                    }
                }
            }
            Value::Null => {}
            _ => return Err(p.error(file, "`ports:` is a list")),
        }
    }
    Ok(s)
}
