//! systemd socket units as `portwatch check --unit` reads them: every
//! `ListenStream=` and `ListenDatagram=`, with `BindIPv6Only=`,
//! `ReusePort=`, `FreeBind=` and `BindToDevice=`.

use super::{InputError, Plan};

/// The plan of a socket unit: a unit name (`demo.socket`, found where
/// systemd finds it) or a unit file's path.
pub fn read(unit: &str) -> Result<Plan, InputError> {
    let _ = unit;
    Err(InputError::file("--unit", "socket units are not read yet"))
}
