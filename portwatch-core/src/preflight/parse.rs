//! Plain bindings as `portwatch check` takes them on its command line:
//! `PORT`, `ADDR:PORT`, `[IPV6]:PORT`, each with an optional `/tcp` or
//! `/udp`.

use std::net::{IpAddr, Ipv4Addr};

use crate::request::{Binding, Proto};

/// One plain binding: `80` (TCP, the IPv4 wildcard `0.0.0.0`), `53/udp`,
/// `127.0.0.1:8080`, `[::]:9000` (the IPv6 wildcard without IPV6_V6ONLY,
/// Linux's default: it takes IPv4 too), `[::1]:9000/tcp`. Err: what is
/// wrong, for a one-line message (the caller names the input).
pub fn parse_binding(s: &str) -> Result<Binding, String> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((rest, proto)) => (rest, parse_proto(proto)?),
        None => (s, Proto::Tcp),
    };
    let (addr, port) = split_addr(rest)?;
    Ok(Binding::plain(proto, addr, parse_port(port)?))
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(format!("unknown protocol '{s}' (tcp or udp)")),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!("'{s}' is not a port (1-65535)")),
    }
}

/// The address (the IPv4 wildcard when left out) and the port's text.
fn split_addr(s: &str) -> Result<(IpAddr, &str), String> {
    if let Some(v6) = s.strip_prefix('[') {
        let (addr, port) = v6
            .split_once("]:")
            .ok_or_else(|| "an IPv6 address in brackets needs ':PORT' after ']'".to_owned())?;
        let addr = addr
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("'{addr}' is not an IPv6 address"))?;
        return Ok((IpAddr::V6(addr), port));
    }
    match s.rsplit_once(':') {
        None => Ok((IpAddr::V4(Ipv4Addr::UNSPECIFIED), s)),
        Some((addr, _)) if addr.contains(':') => Err(format!(
            "write an IPv6 address in brackets: '[{addr}]:PORT'"
        )),
        Some((addr, port)) => addr
            .parse::<Ipv4Addr>()
            .map(|a| (IpAddr::V4(a), port))
            .map_err(|_| format!("'{addr}' is not an IPv4 address (host names are not resolved)")),
    }
}
