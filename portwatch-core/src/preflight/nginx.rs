//! nginx's configuration as `portwatch check --nginx` reads it: every
//! `listen` of every server block, one socket per address and port.

use std::path::PathBuf;

use super::{InputError, Plan};

/// What `check --nginx[=FILE] [--reload]` names.
#[derive(Debug, Clone, Default)]
pub struct NginxInput {
    /// A configuration file; None: the one `nginx -T` reads.
    pub file: Option<PathBuf>,
    /// The deploy reloads nginx (its sockets are kept) rather than
    /// starting it.
    pub reload: bool,
}

/// The plan of an nginx configuration.
pub fn read(input: &NginxInput) -> Result<Plan, InputError> {
    let _ = input;
    Err(InputError::file(
        "--nginx",
        "nginx configurations are not read yet",
    ))
}
