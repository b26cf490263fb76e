//! A deploy's plan: the bindings it is about to make, each with where it
//! was read (`compose.yml:12`, `nginx.conf:40`, `demo.socket`, an
//! argument) and what the deploy replaces (its own compose project, its
//! socket unit, its nginx on `--reload`), and what was read but cannot be
//! checked (a container-only port, a `unix:` listen).
//!
//! Every input (plain bindings, compose files, nginx's configuration,
//! systemd socket units) becomes a [`Plan`]; [`super::check_plan`] judges
//! all of them in one batch.

use std::{fmt, path::PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    holders::{containers::Container, Holder},
    request::Binding,
};

/// Where one entry of the plan was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, when read from one.
    pub file: Option<PathBuf>,
    /// Its line (1-based), when known.
    pub line: Option<u32>,
    /// What it is there: `service web`, `listen [::]:80 ipv6only=off`,
    /// `ListenStream=8080`, `argument 2`.
    pub what: String,
}

impl Origin {
    /// An entry of the command line (1-based).
    pub fn argument(n: usize) -> Self {
        Self {
            file: None,
            line: None,
            what: format!("argument {n}"),
        }
    }

    /// `what` at `file:line`.
    pub fn at(file: impl Into<PathBuf>, line: Option<u32>, what: impl Into<String>) -> Self {
        Self {
            file: Some(file.into()),
            line,
            what: what.into(),
        }
    }

    /// `file:line`, or the file, or None.
    pub fn place(&self) -> Option<String> {
        let file = self.file.as_ref()?.display().to_string();
        Some(match self.line {
            Some(l) => format!("{file}:{l}"),
            None => file,
        })
    }
}

impl fmt::Display for Origin {
    /// `compose.yml:12 service web`, `argument 2` (untrusted: escape it
    /// before printing).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.place() {
            Some(place) => write!(f, "{place} {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Origin {
    /// Read back as written: the whole text as `what` (the place is not
    /// taken apart again).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            file: None,
            line: None,
            what: String::deserialize(d)?,
        })
    }
}

/// What the deploy itself replaces: sockets it holds are "yours", not in
/// the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ours {
    /// The containers of this compose project (their
    /// `com.docker.compose.project` label): `up` recreates them.
    Compose {
        /// The project's name, as compose derives it.
        project: String,
    },
    /// This systemd socket unit (`demo.socket`): restarting it rebinds.
    SocketUnit {
        /// Its name.
        unit: String,
    },
    /// The nginx master(s) running this configuration: on `--reload`, what
    /// the deploy keeps (a reload keeps the sockets); for a start, what is
    /// in its way, with nginx's own fix.
    Nginx {
        /// Their pids.
        masters: Vec<u32>,
        /// The deploy reloads them (`--reload`) rather than starting
        /// another nginx.
        reload: bool,
        /// The configuration file named (`--nginx=FILE`); None: nginx's
        /// default one.
        conf: Option<PathBuf>,
    },
}

impl Ours {
    /// Whether the socket `h` is held by what the deploy replaces.
    pub fn holds(&self, h: &Holder) -> bool {
        match self {
            Ours::Compose { .. } => h.container.as_ref().is_some_and(|c| self.runs(c)),
            Ours::SocketUnit { unit } => h.socket_unit.as_ref().is_some_and(|s| &s.unit == unit),
            Ours::Nginx { masters, .. } => h.pid.iter().chain(&h.pids).any(|p| masters.contains(p)),
        }
    }

    /// Whether the deploy replaces (or keeps) what [`Ours::holds`]: its
    /// sockets are "yours". A start of nginx beside the running one
    /// replaces nothing: they are in its way.
    pub fn replaced(&self) -> bool {
        match self {
            Ours::Compose { .. } | Ours::SocketUnit { .. } => true,
            Ours::Nginx { reload, .. } => *reload,
        }
    }

    /// The diagnosis and fix when the sockets in the way of `port` are
    /// all held by what this is and the deploy does not replace it (the
    /// running nginx of the same configuration, for a start).
    pub fn in_the_way(&self, port: u16, holders: &[Holder]) -> Option<(String, String)> {
        let Ours::Nginx {
            masters,
            reload: false,
            conf,
        } = self
        else {
            return None;
        };
        let pids = holding(masters, holders);
        let c = conf.as_ref().map_or_else(String::new, |c| {
            format!(
                " -c {}",
                crate::diagnose::shell_word(&c.display().to_string())
            )
        });
        let diagnosis = format!(
            "the running nginx of this same configuration (master pid {}) holds port {port}: a second nginx started beside it fails with EADDRINUSE",
            pids.join(", ")
        );
        let fix = format!(
            "reload it instead (`nginx{c} -s reload`: the new configuration, the same sockets), or stop it (`nginx{c} -s quit`) and `portwatch wait {port}` before the start: the old master lets go of its sockets only when it has quit"
        );
        Some((diagnosis, fix))
    }

    /// Whether container `c` is one the deploy replaces.
    pub fn runs(&self, c: &Container) -> bool {
        match self {
            Ours::Compose { project } => c.compose.as_ref().is_some_and(|k| &k.project == project),
            _ => false,
        }
    }

    /// The diagnosis of a binding `label` held only by this (`held`: the
    /// holder as `who` names it).
    pub fn yours(&self, label: &str, held: &str, holders: &[Holder]) -> String {
        match self {
            Ours::Nginx { masters, .. } => {
                let pids = holding(masters, holders);
                format!(
                    "{label} is held by the running nginx of this configuration (master pid {}), which a reload keeps: its new workers take over the same sockets; a second nginx started beside it would fail",
                    pids.join(", ")
                )
            }
            Ours::SocketUnit { unit } => {
                let listen = holders
                    .iter()
                    .find_map(|h| h.socket_unit.as_ref())
                    .map_or_else(String::new, |s| format!(" ({})", s.listen));
                format!(
                    "{label} is held by systemd ({held}) for this deploy's own socket unit {unit}{listen}, which `systemctl restart {unit}` binds again; a second instance beside it would fail"
                )
            }
            Ours::Compose { .. } => format!(
                "{label} is held by this deploy's own {} ({held}), which the deploy replaces: it binds again when that lets go; a second instance beside it would fail",
                self.describe()
            ),
        }
    }

    /// What it is, for the diagnosis: `compose project shop`.
    pub fn describe(&self) -> String {
        match self {
            Ours::Compose { project } => format!("compose project {project}"),
            Ours::SocketUnit { unit } => format!("socket unit {unit}"),
            Ours::Nginx { masters, .. } => {
                let pids: Vec<String> = masters.iter().map(u32::to_string).collect();
                format!("nginx (master pid {})", pids.join(", "))
            }
        }
    }
}

/// The masters among the processes of `holders` (a master of the same
/// configuration in another network namespace holds nothing here), or all
/// of them when none is.
fn holding(masters: &[u32], holders: &[Holder]) -> Vec<String> {
    let here: Vec<u32> = masters
        .iter()
        .copied()
        .filter(|m| {
            holders
                .iter()
                .any(|h| h.pid == Some(*m) || h.pids.contains(m))
        })
        .collect();
    let pids = if here.is_empty() { masters } else { &here[..] };
    pids.iter().map(u32::to_string).collect()
}

/// One socket the deploy will bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it binds (its options as the deploy sets them: nginx sets
    /// SO_REUSEADDR, `reuseport` SO_REUSEPORT, ...).
    pub binding: Binding,
    /// Where it was read; several when one socket serves several
    /// directives (nginx's `listen 80` in two server blocks).
    pub from: Vec<Origin>,
    /// What the deploy replaces, whose sockets are not in the way.
    pub ours: Option<Ours>,
}

impl Entry {
    /// A binding from the command line (argument `n`, 1-based).
    pub fn argument(binding: Binding, n: usize) -> Self {
        Self {
            binding,
            from: vec![Origin::argument(n)],
            ours: None,
        }
    }
}

/// Something the input names that has no binding to check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unchecked {
    /// Where it was read.
    pub from: Origin,
    /// Why nothing is checked (`9090 is a container port only: Docker
    /// picks a free host port`).
    pub why: String,
}

/// Everything a deploy is about to bind, from any number of inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The sockets, in the order read.
    pub entries: Vec<Entry>,
    /// What was read and cannot be checked.
    pub unchecked: Vec<Unchecked>,
}

impl Plan {
    /// Appends `other`'s entries after this one's.
    pub fn extend(&mut self, other: Plan) {
        self.entries.extend(other.entries);
        self.unchecked.extend(other.unchecked);
    }
}

/// Why an input could not be read: one line, `file:line:col: what`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.line())]
pub struct InputError {
    /// The file (or `-` for none).
    pub file: Option<PathBuf>,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub col: Option<u32>,
    /// What is wrong (untrusted parts escaped by whoever prints it).
    pub what: String,
}

impl InputError {
    /// An error about `file` as a whole.
    pub fn file(file: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Self {
            file: Some(file.into()),
            line: None,
            col: None,
            what: what.into(),
        }
    }

    /// An error at `file:line:col`.
    pub fn at(
        file: impl Into<PathBuf>,
        line: u32,
        col: Option<u32>,
        what: impl Into<String>,
    ) -> Self {
        Self {
            file: Some(file.into()),
            line: Some(line),
            col,
            what: what.into(),
        }
    }

    fn line(&self) -> String {
        let mut s = String::new();
        if let Some(f) = &self.file {
            s.push_str(&f.display().to_string());
            if let Some(l) = self.line {
                s.push_str(&format!(":{l}"));
                if let Some(c) = self.col {
                    s.push_str(&format!(":{c}"));
                }
            }
            s.push_str(": ");
        }
        s.push_str(&self.what);
        s
    }
}

/// The largest input file read (compose files and nginx configs are a
/// few KiB; this is far above any real one and far below harm).
pub const MAX_INPUT: u64 = 4 << 20;

/// Reads an input file as text: symlinks followed, as compose and nginx
/// follow them (`sites-enabled/` is made of them), but only to a regular
/// file of at most [`MAX_INPUT`] bytes, in UTF-8. Opened with O_NONBLOCK
/// so that a FIFO cannot hang the check; nothing of the file is run.
pub fn read_input(path: &std::path::Path) -> Result<String, InputError> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let err = |what: String| InputError::file(path, what);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| err(format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| err(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink());
        return Err(err(format!(
            "not a regular file{}",
            if link {
                " (a symlink to something else)"
            } else {
                ""
            }
        )));
    }
    if meta.len() > MAX_INPUT {
        return Err(err(format!(
            "{} bytes is too large for a configuration file (at most {MAX_INPUT})",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_INPUT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_INPUT {
        return Err(err(format!("larger than {MAX_INPUT} bytes")));
    }
    String::from_utf8(bytes).map_err(|e| err(format!("not UTF-8 text: {e}")))
}
