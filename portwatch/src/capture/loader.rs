//! Start-up: check the system, read the kernel's BTF and tracefs once, then
//! try the backends the user's choice allows, in order, until one attaches.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use portwatch_common::Config;

use super::{
    attach::{
        attach_fexit, attach_state, attach_tracepoints, attach_uring, ebpf_loader, fill_filters,
        object, StateHooks, OBJECT,
    },
    btf::Btf,
    casts, offsets,
    settings::{ArgsSource, BackendChoice, Settings},
    uring,
};

/// The system cannot run portwatch (exit status 3), as opposed to a failure
/// while running.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

fn unsupported(msg: impl Into<String>) -> anyhow::Error {
    Unsupported(msg.into()).into()
}

/// The hook in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// fexit on inet_bind / inet6_bind / inet_listen.
    Fexit,
    /// Syscall tracepoints.
    Tracepoint,
}

impl Backend {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fexit => "fexit",
            Self::Tracepoint => "tracepoint",
        }
    }
}

/// Loaded and attached programs. Dropping it detaches them.
pub struct Loaded {
    /// The object; maps are taken from it by the reader.
    pub ebpf: Ebpf,
    /// Which hook is attached.
    pub backend: Backend,
    /// Why that one (shown on the `ready` line).
    pub why: String,
    /// Where portwatch mounted tracefs, if it had to.
    pub mounted_tracefs: Option<&'static Path>,
    /// Why `--record` sees no TCP state changes (port life), when it cannot.
    pub life_note: Option<String>,
    /// The kernel can dump bound-but-inactive TCP sockets (`TCP_BOUND_INACTIVE` in its BTF).
    pub bound_inactive_dump: bool,
    /// Why io_uring's binds and listens are not captured, when they are not
    /// (tracepoint backend only: fexit sees them through inet_bind).
    pub uring_note: Option<String>,
}

/// Calls between sys_enter and sys_exit at once, machine-wide (entry pairing).
const CALLS_IN_FLIGHT: u32 = 16384;

/// Fails unless this process may load tracing programs.
fn check_privileges() -> Result<()> {
    use portwatch_core::caps;
    let eff = caps::effective();
    if eff.has(caps::SYS_ADMIN) || (eff.has(caps::BPF) && eff.has(caps::PERFMON)) {
        return Ok(());
    }
    Err(unsupported(
        "needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: run it with sudo",
    ))
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when nothing is
/// mounted (a new machine mounts neither tracefs nor debugfs); says whether
/// it did.
pub(crate) fn tracefs() -> Result<(&'static Path, bool)> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok((Path::new(dir), false));
        }
    }
    let dir = Path::new("/sys/kernel/tracing");
    nix::mount::mount(
        Some("tracefs"),
        dir,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        unsupported(format!(
            "tracefs is not mounted and mounting it at {} failed: {e}",
            dir.display()
        ))
    })?;
    Ok((dir, true))
}

/// Test machinery (`--test-kernel-quirks`): makes this kernel look like
/// another to the programs: an offset pointed at offset 0 of its struct (a
/// member that is not what the programs expect, so a test can check that
/// they report the contradiction), or the sock's head read field by field.
#[cfg(feature = "test-hooks")]
fn simulate_quirks(settings: &Settings, config: &mut Config) {
    use super::KernelQuirk as Q;
    for quirk in &settings.kernel_quirks {
        match quirk {
            Q::SocketSk => config.offsets.socket_sk = 0,
            Q::SocketFile => config.offsets.socket_file = 0,
            Q::FilePrivateData => config.offsets.file_private_data = 0,
            Q::SkFamily => config.offsets.sk_family = 0,
            Q::NoSkHead => config.sk_head = 0,
            // Applied where the casts and the state hooks are chosen.
            Q::NoCasts | Q::NoRawState => {}
        }
    }
}

/// The first line of an error chain's root cause, for one-line messages.
fn root(e: &anyhow::Error) -> String {
    e.root_cause()
        .to_string()
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// One way of attaching the programs: `load` tries the ones the user's
/// choice allows, in order, until the kernel accepts one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// fexit on inet_bind / inet6_bind / inet_listen.
    Fexit,
    /// The sys_exit tracepoints alone, arguments from the saved registers.
    Regs,
    /// The sys_enter and sys_exit tracepoints, paired by thread.
    Entry,
}

impl Attempt {
    /// What `choice` and `args` allow, cheapest for the rest of the system first.
    fn list(choice: BackendChoice, args: ArgsSource) -> Vec<Self> {
        let fexit = (choice != BackendChoice::Tracepoint).then_some(Self::Fexit);
        let tracepoints: &[Self] = match (choice, args) {
            (BackendChoice::Fexit, _) => &[],
            (_, ArgsSource::Auto) => &[Self::Regs, Self::Entry],
            (_, ArgsSource::Regs) => &[Self::Regs],
            (_, ArgsSource::Entry) => &[Self::Entry],
        };
        fexit
            .into_iter()
            .chain(tracepoints.iter().copied())
            .collect()
    }

    fn backend(self) -> Backend {
        match self {
            Self::Fexit => Backend::Fexit,
            Self::Regs | Self::Entry => Backend::Tracepoint,
        }
    }

    /// Attaches this way's programs; fexit uses up `fexit_btf`.
    fn attach(self, ebpf: &mut Ebpf, fexit_btf: &mut Option<aya::Btf>) -> Result<()> {
        match self {
            Self::Fexit => {
                let btf = fexit_btf
                    .take()
                    .context("the BTF for fexit was not parsed")?;
                attach_fexit(ebpf, &btf)
            }
            Self::Regs => attach_tracepoints(ebpf, false),
            Self::Entry => attach_tracepoints(ebpf, true),
        }
    }

    /// The `why` of the `backend` line when this attempt loaded.
    fn why(self, choice: BackendChoice, earlier: &Earlier) -> String {
        let how = match self {
            Self::Fexit if choice == BackendChoice::Fexit => return "asked for".to_owned(),
            Self::Fexit => return "the kernel allows it".to_owned(),
            Self::Regs => "sys_exit only, arguments from saved registers".to_owned(),
            Self::Entry => match &earlier.regs {
                Some(e) => format!("sys_enter + sys_exit; saved registers unreadable: {e}"),
                None => "sys_enter + sys_exit".to_owned(),
            },
        };
        let how = match (self, &earlier.casts) {
            (Self::Regs, Casts::Used) => format!("{how}, plain loads (bpf_rdonly_cast)"),
            (Self::Regs, Casts::Refused(e)) => {
                format!("{how}, read with helpers (bpf_rdonly_cast refused: {e})")
            }
            _ => how,
        };
        match &earlier.fexit {
            Some(e) => format!("{how}; fexit unavailable: {e}"),
            None => format!("{how}; asked for"),
        }
    }

    /// The error when this attempt, the last one left, failed with `e`.
    fn refusal(self, e: &anyhow::Error) -> anyhow::Error {
        unsupported(match self {
            Self::Fexit => format!(
                "the fexit backend is not available: {e}: {} (try --backend tracepoint)",
                root(e)
            ),
            Self::Regs | Self::Entry => format!("{e}: {}", root(e)),
        })
    }
}

/// Why earlier attempts failed, for the `why` of the one that loads.
#[derive(Debug, Default)]
struct Earlier {
    fexit: Option<String>,
    regs: Option<String>,
    /// Whether the saved-registers path reads with `bpf_rdonly_cast`.
    casts: Casts,
}

/// Whether the saved-registers path reads a successful bind's socket with
/// plain loads (`capture::casts`).
#[derive(Debug, Default)]
enum Casts {
    /// The kernel has no `bpf_rdonly_cast` (or `no_casts`): helper reads.
    #[default]
    Unavailable,
    /// Plain loads.
    Used,
    /// The verifier refused them (why): helper reads.
    Refused(String),
}

impl Earlier {
    fn note(&mut self, attempt: Attempt, e: &anyhow::Error) {
        match attempt {
            Attempt::Fexit => self.fexit = Some(format!("{e}: {}", root(e))),
            Attempt::Regs => self.regs = Some(root(e)),
            // Entry pairing is never followed by another attempt.
            Attempt::Entry => {}
        }
    }
}

/// The configs the attempts load the object with.
#[derive(Clone)]
struct Configs {
    /// fexit's; the tracepoint configs start from it.
    fexit: Config,
    /// The tracepoint backend's, or why it cannot run; None when no attempt
    /// uses tracepoints.
    tracepoint: Option<Result<TracepointConfigs, String>>,
}

/// The tracepoint backend's configs, one per way of reading bind()'s arguments.
#[derive(Clone)]
struct TracepointConfigs {
    regs: Config,
    entry: Config,
    /// Ok: attach the io_uring program too; Err: why io_uring's calls are missed.
    uring: Result<(), String>,
}

impl Configs {
    /// These configs with helper reads instead of `bpf_rdonly_cast`.
    fn without_casts(&self) -> Self {
        let mut plain = self.clone();
        plain.fexit.casts = Default::default();
        if let Some(Ok(tp)) = &mut plain.tracepoint {
            tp.regs.casts = Default::default();
            tp.entry.casts = Default::default();
        }
        plain
    }

    /// The config `attempt` loads the object with.
    fn get(&self, attempt: Attempt) -> Result<&Config> {
        let tracepoint = || match &self.tracepoint {
            Some(Ok(tp)) => Ok(tp),
            Some(Err(why)) => Err(unsupported(why.clone())),
            None => unreachable!("tracepoint configs are made whenever tracepoints are tried"),
        };
        Ok(match attempt {
            Attempt::Fexit => &self.fexit,
            Attempt::Regs => &tracepoint()?.regs,
            Attempt::Entry => &tracepoint()?.entry,
        })
    }
}

/// What the running kernel offers, read once before the first attempt.
struct Kernel {
    configs: Configs,
    /// The eBPF object, its `bpf_rdonly_cast` calls patched (`casts`).
    elf: Vec<u64>,
    /// Whether `configs` use `bpf_rdonly_cast`.
    casts: bool,
    /// The same configs and object without, made only for a verifier that
    /// refuses the kfunc although the BTF has it.
    without_casts: std::cell::OnceCell<(Configs, Vec<u64>)>,
    /// aya's parse of the BTF, for fexit's attach points; None when fexit is
    /// not tried.
    fexit_btf: Option<aya::Btf>,
    /// Where portwatch mounted tracefs, if it had to.
    mounted_tracefs: Option<&'static Path>,
    /// The hooks port life may use; None without `--record`.
    state_hooks: Option<StateHooks>,
    /// The kernel's BTF has `TCP_BOUND_INACTIVE`.
    bound_inactive_dump: bool,
}

impl Kernel {
    /// Reads the BTF (once) and tracefs for every attempt in `attempts`.
    fn read(settings: &Settings, attempts: &[Attempt]) -> Result<Self> {
        let (btf, btf_path) = read_btf(settings)?;
        let mut fexit = settings.config();
        fexit.offsets = offsets::resolve(&btf)
            .map_err(|e| unsupported(format!("cannot read socket fields on this kernel: {e}")))?;
        fexit.sk_head = u32::from(offsets::sk_head_fits(&fexit.offsets));
        let resolved = casts::resolve(&btf);
        #[cfg(feature = "test-hooks")]
        let resolved = resolved.filter(|_| !settings.simulates(super::KernelQuirk::NoCasts));
        let kfunc = resolved.map(|(func, ids)| {
            fexit.casts = ids;
            func
        });
        let elf = casts::patch(OBJECT, kfunc)?;
        #[cfg(feature = "test-hooks")]
        simulate_quirks(settings, &mut fexit);
        // TCP_BOUND_INACTIVE is the inet_diag pseudo-state that dumps
        // bound-but-inactive TCP sockets; not every kernel has it.
        let bound_inactive_dump = btf.enum_value("TCP_BOUND_INACTIVE").is_some();
        let uses_tracepoints = attempts.iter().any(|&a| a != Attempt::Fexit);
        // The tracepoint backend needs tracefs, and so does port life's
        // classic tracepoint (the fallback for its raw one).
        let life = settings.record_life && settings.track_holders;
        let tracefs = (life || uses_tracepoints).then(|| tracefs().map_err(|e| e.to_string()));
        let mounted_tracefs = match &tracefs {
            Some(Ok((dir, true))) => Some(*dir),
            _ => None,
        };
        let dir = tracefs.map(|t| t.map(|(dir, _)| dir));
        let state_hooks = life.then(|| StateHooks {
            raw: raw_state_args(&btf),
            classic: match &dir {
                Some(Ok(dir)) => offsets::apply_state_format(dir, &mut fexit.offsets)
                    .map_err(|e| format!("{e:#}")),
                Some(Err(e)) => Err(e.clone()),
                None => unreachable!("tracefs is looked up for port life"),
            },
        });
        #[cfg(feature = "test-hooks")]
        let state_hooks = state_hooks.map(|mut hooks| {
            if settings.simulates(super::KernelQuirk::NoRawState) {
                hooks.raw = Err("the test asked for the classic tracepoint".to_owned());
            }
            hooks
        });
        let tracepoint = dir
            .filter(|_| uses_tracepoints)
            .map(|dir| tracepoint_configs(&btf, fexit, dir?));
        let fexit_btf = attempts
            .contains(&Attempt::Fexit)
            .then(|| fexit_btf(btf, &btf_path))
            .transpose()?;
        Ok(Self {
            configs: Configs { fexit, tracepoint },
            elf,
            casts: kfunc.is_some(),
            without_casts: std::cell::OnceCell::new(),
            fexit_btf,
            mounted_tracefs,
            state_hooks,
            bound_inactive_dump,
        })
    }

    /// Attaches what goes with either backend (port life's program under
    /// `--record`, and io_uring's program for tracepoints) and hands the
    /// object over.
    fn finish(&self, mut ebpf: Ebpf, attempt: Attempt, why: String) -> Loaded {
        // Which of the two programs sees the state changes matters to no
        // one but the benchmarks (BENCHMARKS.md): only a failure is said.
        let life_note = self
            .state_hooks
            .as_ref()
            .and_then(|hooks| attach_state(&mut ebpf, hooks).err());
        // fexit sees io_uring's binds through inet_bind already.
        let uring = match (attempt, &self.configs.tracepoint) {
            (Attempt::Fexit, _) => Ok(false),
            (_, Some(Ok(tp))) => tp.uring.clone().map(|()| true),
            (_, _) => unreachable!("a tracepoint attempt loaded without its config"),
        };
        let uring_note = match uring {
            Ok(true) => attach_uring(&mut ebpf)
                .err()
                .map(|e| format!("{e}: {}", root(&e))),
            Ok(false) => None,
            Err(note) => Some(note),
        };
        Loaded {
            ebpf,
            backend: attempt.backend(),
            why,
            mounted_tracefs: self.mounted_tracefs,
            life_note,
            bound_inactive_dump: self.bound_inactive_dump,
            uring_note,
        }
    }
}

/// Whether the raw tracepoint `inet_sock_set_state` passes the arguments
/// the raw program reads, per the kernel's BTF; Err says what it passes.
fn raw_state_args(btf: &Btf) -> Result<(), String> {
    let args = btf
        .tracepoint_args("inet_sock_set_state")
        .map_err(|e| e.to_string())?;
    if args != ["struct sock *", "int", "int"] {
        return Err(format!(
            "raw tracepoint inet_sock_set_state passes ({}), not (struct sock *, int, int)",
            args.join(", ")
        ));
    }
    Ok(())
}

/// Reads the BTF file the settings name, or the running kernel's.
fn read_btf(settings: &Settings) -> Result<(Btf, PathBuf)> {
    let path = settings
        .btf
        .clone()
        .unwrap_or_else(|| PathBuf::from("/sys/kernel/btf/vmlinux"));
    if !path.exists() {
        return Err(unsupported(if settings.btf.is_some() {
            format!("BTF file {} does not exist", path.display())
        } else {
            "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing; it needs CONFIG_DEBUG_INFO_BTF=y, or pass --btf FILE)".to_owned()
        }));
    }
    let btf = Btf::from_file(&path).map_err(|e| unsupported(e.to_string()))?;
    Ok((btf, path))
}

/// aya's parse of the bytes `btf` read: FExit::load takes nothing else, and
/// aya keeps private the type lookups `btf::Btf` does for the offsets.
fn fexit_btf(btf: Btf, path: &Path) -> Result<aya::Btf> {
    aya::Btf::parse(&btf.into_bytes(), aya::Endianness::default())
        .map_err(|e| unsupported(format!("cannot parse BTF {}: {e}", path.display())))
}

/// The tracepoint backend's configs: fexit's plus where the syscall
/// tracepoints' records keep the arguments; Err says why it cannot run.
fn tracepoint_configs(
    btf: &Btf,
    fexit: Config,
    tracefs: &Path,
) -> Result<TracepointConfigs, String> {
    let mut tp = fexit;
    offsets::TracepointFormats::read(tracefs)
        .and_then(|f| f.apply(&mut tp.offsets))
        .map_err(|e| format!("{e:#}"))?;
    let uring = uring::resolve(btf, tracefs).map(|o| tp.uring = o);
    Ok(TracepointConfigs {
        regs: Config {
            args_from_regs: 1,
            ..tp
        },
        entry: Config {
            args_from_regs: 0,
            ..tp
        },
        uring,
    })
}

/// Loads the programs configured by `settings` and attaches the first
/// backend `choice` allows that the kernel accepts.
pub fn load(settings: &Settings, choice: BackendChoice) -> Result<Loaded> {
    check_privileges()?;
    let attempts = Attempt::list(choice, settings.args_source);
    let mut kernel = Kernel::read(settings, &attempts)?;
    let mut loader = ebpf_loader(settings);
    let mut earlier = Earlier::default();
    if kernel.casts {
        earlier.casts = Casts::Used;
    }
    let mut i = 0;
    while let Some(&attempt) = attempts.get(i) {
        // Only entry pairing uses the CALLS table.
        let calls = if attempt == Attempt::Entry {
            CALLS_IN_FLIGHT
        } else {
            1
        };
        loader.map_max_entries("CALLS", calls);
        // With bpf_rdonly_cast where the kernel has it, unless refused.
        let (configs, elf) = match kernel.without_casts.get() {
            Some((configs, elf)) => (configs, elf),
            None => (&kernel.configs, &kernel.elf),
        };
        let mut ebpf = object(&mut loader, configs.get(attempt)?, elf)?;
        fill_filters(&mut ebpf, settings)?;
        // A failure drops `ebpf`, which detaches whatever did attach.
        match attempt.attach(&mut ebpf, &mut kernel.fexit_btf) {
            Ok(()) => {
                let why = attempt.why(choice, &earlier);
                return Ok(kernel.finish(ebpf, attempt, why));
            }
            // Only the saved-registers path casts: retry it with helper reads.
            Err(e) if attempt == Attempt::Regs && matches!(earlier.casts, Casts::Used) => {
                earlier.casts = Casts::Refused(root(&e));
                let plain = (kernel.configs.without_casts(), casts::patch(OBJECT, None)?);
                let _ = kernel.without_casts.set(plain);
                continue;
            }
            Err(e) if i + 1 == attempts.len() => return Err(attempt.refusal(&e)),
            Err(e) => earlier.note(attempt, &e),
        }
        i += 1;
    }
    unreachable!("every choice allows at least one attempt")
}

#[cfg(test)]
mod tests {
    use anyhow::anyhow;
    use ArgsSource as A;
    use BackendChoice as B;

    use super::*;

    #[test]
    fn attempts_follow_the_choice_cheapest_first() {
        use Attempt::{Entry, Fexit, Regs};
        assert_eq!(Attempt::list(B::Auto, A::Auto), [Fexit, Regs, Entry]);
        assert_eq!(Attempt::list(B::Auto, A::Entry), [Fexit, Entry]);
        assert_eq!(Attempt::list(B::Fexit, A::Regs), [Fexit]);
        assert_eq!(Attempt::list(B::Tracepoint, A::Auto), [Regs, Entry]);
        assert_eq!(Attempt::list(B::Tracepoint, A::Regs), [Regs]);
        assert_eq!(Attempt::list(B::Tracepoint, A::Entry), [Entry]);
    }

    #[test]
    fn why_names_every_earlier_failure_and_the_last_one_refuses() {
        let fexit_failed = || anyhow!("EINVAL").context("loading fexit on inet_bind");
        let mut earlier = Earlier::default();
        assert_eq!(
            Attempt::Fexit.why(B::Auto, &earlier),
            "the kernel allows it"
        );
        assert_eq!(Attempt::Fexit.why(B::Fexit, &earlier), "asked for");
        assert_eq!(
            Attempt::Entry.why(B::Tracepoint, &earlier),
            "sys_enter + sys_exit; asked for"
        );
        earlier.note(Attempt::Fexit, &fexit_failed());
        earlier.note(Attempt::Regs, &anyhow!("no saved registers"));
        assert_eq!(
            Attempt::Regs.why(B::Auto, &earlier),
            "sys_exit only, arguments from saved registers; \
             fexit unavailable: loading fexit on inet_bind: EINVAL"
        );
        assert_eq!(
            Attempt::Entry.why(B::Auto, &earlier),
            "sys_enter + sys_exit; saved registers unreadable: no saved registers; \
             fexit unavailable: loading fexit on inet_bind: EINVAL"
        );
        earlier.casts = Casts::Used;
        assert_eq!(
            Attempt::Regs.why(B::Tracepoint, &Earlier { casts: Casts::Used, ..Earlier::default() }),
            "sys_exit only, arguments from saved registers, plain loads (bpf_rdonly_cast); asked for"
        );
        earlier.casts = Casts::Refused("Permission denied".into());
        assert_eq!(
            Attempt::Regs.why(B::Auto, &earlier),
            "sys_exit only, arguments from saved registers, read with helpers \
             (bpf_rdonly_cast refused: Permission denied); \
             fexit unavailable: loading fexit on inet_bind: EINVAL"
        );
        // Only the saved-registers path casts.
        assert!(!Attempt::Entry
            .why(B::Auto, &earlier)
            .contains("bpf_rdonly_cast"));
        let refusal = Attempt::Fexit.refusal(&fexit_failed());
        assert!(refusal.downcast_ref::<Unsupported>().is_some());
        assert_eq!(
            refusal.to_string(),
            "the fexit backend is not available: loading fexit on inet_bind: EINVAL \
             (try --backend tracepoint)"
        );
    }
}
