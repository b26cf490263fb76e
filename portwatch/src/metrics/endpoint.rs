//! The metrics endpoint's socket: `--metrics`'s address parsed and bound
//! before anything is loaded, and which accept() errors pass. A taken port
//! is diagnosed with portwatch's own holder lookup and diagnosis, the way it
//! would explain anyone else's.

use std::{io, net::SocketAddr};

use anyhow::{anyhow, Context as _, Result};
use portwatch_core::{
    diagnose::{diagnose, named},
    holders::{netns::current_netns, Enricher},
    request::{Caller, Errno, Family, Opts, Proto, Request, Syscall},
};

/// Binds the endpoint before anything is loaded, so a bad or busy address
/// is one line at start-up. EADDRINUSE names the holder and the fix.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            return Err(anyhow!(
                "cannot serve metrics on {addr}: {e}: {}",
                why_taken(addr)
            ))
        }
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            return Err(anyhow!(
                "cannot serve metrics on {addr}: {e} (that address is not on this host; 127.0.0.1 is the default)"
            ))
        }
        Err(e) => return Err(e).with_context(|| format!("cannot serve metrics on {addr}")),
    };
    listener
        .set_nonblocking(true)
        .context("metrics listener: set non-blocking")?;
    Ok(listener)
}

/// What holds `addr` and what to do, in one line.
fn why_taken(addr: SocketAddr) -> String {
    let req = Request {
        netns: current_netns().unwrap_or(0),
        proto: Proto::Tcp,
        family: Family::of(addr.ip()),
        addr: addr.ip(),
        port: addr.port(),
        // What std's bind() set on the socket.
        opts: Some(Opts {
            reuseaddr: true,
            v6only: addr.is_ipv6(),
            ..Opts::default()
        }),
        syscall: Syscall::Bind,
        errno: Some(Errno::ADDRINUSE),
        caller: Some(Caller {
            pid: std::process::id(),
            tid: nix::unistd::gettid().as_raw() as u32,
            uid: nix::unistd::getuid().as_raw(),
            comm: "portwatch".into(),
        }),
        holder_record: None,
        device: 0,
    };
    // A listener is what usually holds a metrics port; bound-only sockets
    // need the kernel's BTF to dump, which is not read yet at this point.
    let evidence = Enricher::new(false).evidence(&req);
    let verdict = diagnose(&req, &evidence);
    // The diagnosis names the holder when it found one.
    let held = match evidence.holders.first() {
        Some(h) if !verdict.diagnosis.contains(&named(h)) => format!("held by {}; ", named(h)),
        _ => String::new(),
    };
    one_line(&format!("{held}{} {}", verdict.diagnosis, verdict.fix))
}

/// Command names and lines come from /proc: no control characters in an
/// error line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Parses `--metrics`: `ADDR:PORT`, `[V6]:PORT`, `localhost:PORT` or a bare
/// `PORT` (127.0.0.1).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("'{port}' is not a port (1-65535)"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!("'{s}' is not ADDR:PORT (e.g. 127.0.0.1:9891, [::1]:9891, or a port alone)")
    })?;
    if addr.port() == 0 {
        return Err("port 0 would pick a random port Prometheus cannot know".into());
    }
    Ok(addr)
}

/// An accept() error that concerns one connection or passes: keep serving.
pub(super) fn is_transient(e: &io::Error) -> bool {
    // Accept errors that concern one connection, or a full fd table that
    // frees up as connections close: the listener keeps going.
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(parse_addr("9891").unwrap().to_string(), "127.0.0.1:9891");
        assert_eq!(
            parse_addr("localhost:9891").unwrap().to_string(),
            "127.0.0.1:9891"
        );
        assert_eq!(parse_addr("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert_eq!(
            parse_addr("0.0.0.0:9891").unwrap().to_string(),
            "0.0.0.0:9891"
        );
        for bad in [
            "",
            "host:80",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "::1:80",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_characters_do_not_break_the_line() {
        assert_eq!(one_line("a\nb\x1b[31m"), "a b [31m");
    }
}
