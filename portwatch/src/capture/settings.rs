//! What the user asked to capture, in the kernel's terms: the backend
//! choice and the settings the programs' CONFIG and filter maps are made of.

use std::path::PathBuf;

use portwatch_common::{
    Config, FILTER_CGROUP, FILTER_COMM, FILTER_NETNS, FILTER_PID, FILTER_PORT, FILTER_UID,
};
use portwatch_core::request::Errno;

/// Which kernel hook captures the calls (the CLI's `--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// fexit when the kernel allows it, otherwise the syscall tracepoints.
    Auto,
    /// fexit on inet_bind/inet6_bind/inet_listen only.
    Fexit,
    /// The sys_enter/sys_exit tracepoints of bind and listen only.
    Tracepoint,
}

/// How the tracepoint backend learns bind()'s arguments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ArgsSource {
    /// Saved registers when the kernel allows it, else entry pairing.
    #[default]
    Auto,
    /// Read them at sys_exit from the task's saved registers (5.15+).
    Regs,
    /// Record them at sys_enter and pair by thread.
    Entry,
}

/// Test machinery (feature `test-hooks`, absent from the package): a way
/// this kernel is made to look like another, so the tests reach the paths
/// other kernels take.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum KernelQuirk {
    /// `struct socket`'s `sk` points at offset 0 of its struct, a member
    /// that is not what the programs expect: they must say so under -v.
    SocketSk,
    /// The same for `struct socket`'s `file`.
    SocketFile,
    /// The same for `struct file`'s `private_data`.
    FilePrivateData,
    /// The same for `sock_common`'s `skc_family`.
    SkFamily,
    /// Sock fields read one by one, as where the layout does not allow one
    /// read of the sock's head.
    NoSkHead,
    /// Reads through the helper, as on kernels without bpf_rdonly_cast.
    NoCasts,
    /// TCP state changes through the classic tracepoint, as on a kernel
    /// that refuses the raw one.
    NoRawState,
}

#[cfg(feature = "test-hooks")]
impl Settings {
    /// Whether the tests asked for `quirk`.
    pub(super) fn simulates(&self, quirk: KernelQuirk) -> bool {
        self.kernel_quirks.contains(&quirk)
    }
}

/// What to capture, in the kernel's terms.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    /// Errnos to report (ignored with `all_errors`).
    pub errnos: Vec<Errno>,
    /// Report every errno.
    pub all_errors: bool,
    /// Report successes too.
    pub success: bool,
    /// Inclusive port ranges; empty for all.
    pub ports: Vec<(u16, u16)>,
    /// Pids; empty for all.
    pub pids: Vec<u32>,
    /// Uids; empty for all.
    pub uids: Vec<u32>,
    /// cgroup ids; empty for all.
    pub cgroups: Vec<u64>,
    /// comms; empty for all.
    pub comms: Vec<[u8; 16]>,
    /// netns inodes; empty for all.
    pub netns: Vec<u32>,
    /// Fold window in ns, 0 to send every failure.
    pub fold_window_ns: u64,
    /// Ring buffer bytes.
    pub ring_bytes: u32,
    /// BTF file to read instead of the kernel's.
    pub btf: Option<PathBuf>,
    /// Tracepoint backend: where bind()'s arguments come from.
    pub args_source: ArgsSource,
    /// Record port holders in the kernel and attach them to failures.
    pub track_holders: bool,
    /// Entries of the kernel's fold table (`FOLDS`); None for the default.
    pub fold_entries: Option<u32>,
    /// aya-log level of the programs' own diagnostics (`aya_log::Level` as a
    /// number, 0 = off): below it the verifier drops the log calls.
    pub kernel_log: u8,
    /// Test machinery: run as on kernels unlike this one.
    #[cfg(feature = "test-hooks")]
    pub kernel_quirks: Vec<KernelQuirk>,
    /// Send the life of ports of interest (`watch --record`; needs
    /// `track_holders`, whose tracepoint sees the state changes).
    pub record_life: bool,
}

impl Settings {
    pub(super) fn config(&self) -> Config {
        let mut c = Config {
            fold_window_ns: self.fold_window_ns,
            fold_window_jiffies: portwatch_core::clock::window_in_ticks(self.fold_window_ns),
            trace_success: u32::from(self.success),
            track_holders: u32::from(self.track_holders),
            record_life: u32::from(self.record_life && self.track_holders),
            ..Config::default()
        };
        if self.all_errors || self.success {
            c.errno_mask = [!1, !0];
        } else {
            for e in &self.errnos {
                c.errno_mask[(e.0 / 64) as usize] |= 1 << (e.0 % 64);
            }
        }
        for (set, bit) in [
            (!self.ports.is_empty(), FILTER_PORT),
            (!self.pids.is_empty(), FILTER_PID),
            (!self.uids.is_empty(), FILTER_UID),
            (!self.cgroups.is_empty(), FILTER_CGROUP),
            (!self.comms.is_empty(), FILTER_COMM),
            (!self.netns.is_empty(), FILTER_NETNS),
        ] {
            if set {
                c.filters |= bit;
            }
        }
        c
    }
}
