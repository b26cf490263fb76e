//! The sock_diag dumps a batch needs: one per protocol, both families, for
//! every port its bindings ask about, however many bindings share a port.

use std::{collections::HashMap, io};

use super::JudgeError;
use crate::{
    holders::sockdiag::{self, DiagSocket},
    request::{Binding, Proto},
};

/// One sock_diag dump: a protocol and the ports asked about, each once, in
/// the order first asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Dump {
    pub proto: Proto,
    pub ports: Vec<u16>,
}

/// The dumps `bindings` need: one per protocol, TCP first. Other protocols
/// are refused: sock_diag's inet dumps are asked for TCP and UDP only.
pub(super) fn plan(bindings: &[Binding]) -> Result<Vec<Dump>, JudgeError> {
    let mut dumps: Vec<Dump> = Vec::new();
    for b in bindings {
        if let Proto::Other(_) = b.proto {
            return Err(JudgeError::Protocol(b.proto.name()));
        }
        let at = match dumps.iter().position(|d| d.proto == b.proto) {
            Some(at) => at,
            None => {
                dumps.push(Dump {
                    proto: b.proto,
                    ports: Vec::new(),
                });
                dumps.len() - 1
            }
        };
        let ports = &mut dumps[at].ports;
        if !ports.contains(&b.port) {
            ports.push(b.port);
        }
    }
    dumps.sort_by_key(|d| d.proto.code());
    Ok(dumps)
}

/// What the dumps found: the sockets on each protocol's ports.
#[derive(Debug, Default)]
pub(super) struct Dumped {
    on: HashMap<(Proto, u16), Vec<DiagSocket>>,
}

impl Dumped {
    /// Files `proto`'s `sockets` (one dump's) by their port, in order.
    pub fn add(&mut self, proto: Proto, sockets: Vec<DiagSocket>) {
        for s in sockets {
            self.on.entry((proto, s.local.port())).or_default().push(s);
        }
    }

    /// Whether any socket dumped is bound to a device (SO_BINDTODEVICE).
    pub fn on_a_device(&self) -> bool {
        self.on.values().flatten().any(|s| s.bound_dev_if != 0)
    }

    /// Every socket on `b`'s port and protocol, in the kernel's order.
    pub fn on(&self, b: &Binding) -> &[DiagSocket] {
        self.on.get(&(b.proto, b.port)).map_or(&[], Vec::as_slice)
    }
}

/// Makes the dumps, in the calling thread's network namespace. Bound but
/// inactive TCP sockets are asked for (bit 13; a kernel without
/// TCP_BOUND_INACTIVE ignores it, so no BTF is needed to decide).
pub(super) fn dump(plan: &[Dump]) -> Result<Dumped, JudgeError> {
    let mut dumped = Dumped::default();
    for d in plan {
        let sockets = sockdiag::dump_ports(d.proto.code() as u8, &d.ports, true)
            .map_err(|e| dump_error(d.proto, e))?;
        dumped.add(d.proto, sockets);
    }
    Ok(dumped)
}

/// The kernel answers ENOENT when no sock_diag handler is registered:
/// tcp_diag/udp_diag are modules on most distributions.
fn dump_error(proto: Proto, e: io::Error) -> JudgeError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => JudgeError::NoDiagHandler(proto.name()),
        _ => JudgeError::SockDiag(e),
    }
}
