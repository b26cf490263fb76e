//! A service's `ports:` entries, both syntaxes, as compose reads them:
//! the short one by docker-py's `split_port` (`[[HOST:][PUB[-END]]:]TARGET[-END][/PROTO]`,
//! ranges expanded port by port), the long one field by field (`target`,
//! `published` as a number, a string or a range, `host_ip`, `protocol`,
//! `mode`).

use std::{net::IpAddr, path::Path};

use super::yaml::{Node, Value};
use crate::preflight::InputError;

/// The host side of one published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// None, or 0: Docker picks a free port.
    Any,
    /// This port.
    Port(u16),
    /// Docker picks a free port in this range (`8000-8010:80`).
    AnyOf(u16, u16),
}

/// One container port and where it is published, as compose's
/// `ServicePort` (one per port of a range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The container's port.
    pub target: u16,
    /// The host's.
    pub published: Published,
    /// `host_ip` (None: Docker's default, every address of both families).
    pub host_ip: Option<IpAddr>,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The entry as written (after interpolation), for the origin.
    pub spec: String,
    /// Its 1-based line.
    pub line: u32,
}

impl ServicePort {
    /// What compose merges ports by (`ServicePort.merge_field`).
    pub fn key(&self) -> (u16, Published, Option<IpAddr>, &str) {
        (self.target, self.published, self.host_ip, &self.protocol)
    }
}

/// Every ServicePort of one entry of `ports:` (already interpolated).
pub fn parse(file: &Path, node: &Node) -> Result<Vec<ServicePort>, InputError> {
    match &node.value {
        Value::Map(_) => long(file, node).map(|p| vec![p]),
        Value::Str(s) => short(s, node.line).map_err(|why| node.error(file, why)),
        Value::Int(i) => short(&i.to_string(), node.line).map_err(|why| node.error(file, why)),
        _ => Err(node.error(
            file,
            "a port is a string (\"8080:80\"), a number or a mapping (target: 80)",
        )),
    }
}

fn number(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `A` or `A-B` (A <= B): the first and last port.
fn range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let a = number(s)?;
            (a, a)
        }
    };
    (a <= b).then_some((a, b))
}

const SHORT: &str = "[[HOST_IP:][HOST_PORT[-END]]:]CONTAINER_PORT[-END][/tcp|udp|sctp]";

/// The short syntax.
fn short(spec: &str, line: u32) -> Result<Vec<ServicePort>, String> {
    let bad = |why: &str| format!("unknown port syntax \"{spec}\": {why} (expected {SHORT})");
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((r, p @ ("tcp" | "udp" | "sctp"))) => (r, p),
        Some((_, p)) => return Err(bad(&format!("protocol \"{p}\" is not tcp, udp or sctp"))),
        None => (spec, "tcp"),
    };
    let (outside, target) = match rest.rsplit_once(':') {
        Some((o, t)) => (Some(o), t),
        None => (None, rest),
    };
    let target = range(target).ok_or_else(|| bad("no container port"))?;
    let (host, published) = match outside {
        None => (None, None),
        Some(o) => match o.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (None, Some(o)),
        },
    };
    let host_ip = match host {
        None => None,
        Some(h) => {
            let h = h.strip_prefix('[').unwrap_or(h);
            let h = h.strip_suffix(']').unwrap_or(h);
            Some(
                h.parse::<IpAddr>()
                    .map_err(|_| bad(&format!("\"{h}\" is not an IP address")))?,
            )
        }
    };
    let one = |target: u16, published: Published| ServicePort {
        target,
        published,
        host_ip,
        protocol: protocol.to_owned(),
        spec: spec.to_owned(),
        line,
    };
    let targets = target.0..=target.1;
    match published {
        // "9090", "7000-7001", "127.0.0.1::80": Docker picks.
        None | Some("") if host_ip.is_some() || published.is_none() => {
            Ok(targets.map(|t| one(t, Published::Any)).collect())
        }
        None | Some("") => Err(bad("an empty host port needs a host address before it")),
        Some(p) => {
            let (a, b) = range(p).ok_or_else(|| bad(&format!("\"{p}\" is not a port or range")))?;
            if target.0 == target.1 && a != b {
                return Ok(vec![one(target.0, Published::AnyOf(a, b))]);
            }
            if b - a != target.1 - target.0 {
                return Err(bad("port ranges don't match in length"));
            }
            Ok(targets
                .zip(a..=b)
                .map(|(t, p)| {
                    one(
                        t,
                        if p == 0 {
                            Published::Any
                        } else {
                            Published::Port(p)
                        },
                    )
                })
                .collect())
        }
    }
}

/// The long syntax.
fn long(file: &Path, node: &Node) -> Result<ServicePort, InputError> {
    let Value::Map(fields) = &node.value else {
        unreachable!("called on mappings")
    };
    for (k, v) in fields {
        let known = matches!(
            k.as_str(),
            "target" | "published" | "host_ip" | "protocol" | "mode" | "name" | "app_protocol"
        );
        if !known && !k.starts_with("x-") {
            return Err(v.error(file, format!("unknown port option \"{k}\" (expected target, published, host_ip, protocol, mode)")));
        }
    }
    let text = |k: &str| node.get(k).and_then(Node::scalar);
    let target_node = node
        .get("target")
        .ok_or_else(|| node.error(file, "a port without `target:`"))?;
    let target = text("target")
        .as_deref()
        .and_then(number)
        .filter(|&t| t != 0)
        .ok_or_else(|| target_node.error(file, "`target:` is not a port (1-65535)"))?;
    let published = match (node.get("published"), text("published")) {
        (None, _) => Published::Any,
        (Some(n), None) if n.value == Value::Null => Published::Any,
        (Some(n), s) => match s.as_deref().and_then(range) {
            Some((0, 0)) => Published::Any,
            Some((a, b)) if a == b => Published::Port(a),
            Some((a, b)) => Published::AnyOf(a, b),
            None => {
                return Err(n.error(file, "`published:` is not a port or range"));
            }
        },
    };
    let host_ip = match (node.get("host_ip"), text("host_ip")) {
        (Some(n), Some(h)) if !h.is_empty() => Some(
            h.parse::<IpAddr>()
                .map_err(|_| n.error(file, format!("`host_ip: {h}` is not an IP address")))?,
        ),
        _ => None,
    };
    let protocol = text("protocol")
        .unwrap_or_else(|| "tcp".into())
        .to_lowercase();
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        let n = node.get("protocol").unwrap_or(node);
        return Err(n.error(
            file,
            format!("`protocol: {protocol}` is not tcp, udp or sctp"),
        ));
    }
    let mut spec = match published {
        Published::Any => format!("target {target}"),
        Published::Port(p) => format!("{p}:{target}"),
        Published::AnyOf(a, b) => format!("{a}-{b}:{target}"),
    };
    if let Some(ip) = host_ip {
        spec = match ip {
            IpAddr::V4(_) => format!("{ip}:{spec}"),
            IpAddr::V6(_) => format!("[{ip}]:{spec}"),
        };
    }
    if protocol != "tcp" {
        spec = format!("{spec}/{protocol}");
    }
    Ok(ServicePort {
        target,
        published,
        host_ip,
        protocol,
        spec,
        line: node.line,
    })
}
