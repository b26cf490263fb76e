//! Kernel structure offsets for the eBPF programs, from the running kernel's
//! BTF (and the syscall tracepoints' record formats from tracefs).

use anyhow::{bail, Context as _, Result};
use portwatch_common::{BitLoc, Offsets, SK_HEAD_BYTES};

use super::btf::{Btf, BtfError, Field};

fn byte_offset(btf: &Btf, strukt: &str, path: &str) -> Result<u32, BtfError> {
    let field = btf.field(strukt, path)?;
    if field.bitfield_size != 0 || field.bit_offset % 8 != 0 {
        return Err(BtfError::Missing(format!(
            "{strukt}.{path} as a whole-byte member (it is a bit field on this kernel)"
        )));
    }
    Ok(field.bit_offset / 8)
}

fn bit_loc(field: Field, name: &str) -> Result<BitLoc, BtfError> {
    let width = if field.bitfield_size == 0 {
        field.size * 8
    } else {
        field.bitfield_size
    };
    let shift = field.bit_offset % 8;
    if width == 0 || shift + width > 8 {
        return Err(BtfError::Missing(format!(
            "{name} within one byte (width {width}, shift {shift})"
        )));
    }
    Ok(BitLoc {
        off: field.bit_offset / 8,
        shift: shift as u8,
        width: width as u8,
        _pad: [0; 2],
    })
}

/// An `inet_sock` flag: one bit of `inet_flags` (Linux 6.6+) or a bit field
/// of its own (older kernels).
fn inet_flag(btf: &Btf, enumerator: &str, bitfield: &str) -> Result<BitLoc, BtfError> {
    if let (Ok(flags), Some(bit)) = (
        btf.field("inet_sock", "inet_flags"),
        btf.enum_value(enumerator),
    ) {
        let bit = u32::try_from(bit).map_err(|_| BtfError::Missing(enumerator.to_owned()))?;
        // inet_flags is an unsigned long; little-endian, so bit n sits in byte n/8.
        return Ok(BitLoc {
            off: flags.bit_offset / 8 + bit / 8,
            shift: (bit % 8) as u8,
            width: 1,
            _pad: [0; 2],
        });
    }
    bit_loc(btf.field("inet_sock", bitfield)?, bitfield)
}

/// Whether every `sock_common` field the holder table reads (port, family,
/// state, netns, both bound addresses) lies within the first
/// `SK_HEAD_BYTES` of a sock, so the programs read them in one go.
pub fn sk_head_fits(o: &Offsets) -> bool {
    [
        (o.sk_num, 2),
        (o.sk_family, 2),
        (o.sk_state, 1),
        (o.sk_net, 8),
        (o.sk_rcv_saddr, 4),
        (o.sk_v6_rcv_saddr, 16),
    ]
    .iter()
    .all(|&(off, size)| {
        off.checked_add(size)
            .is_some_and(|end| end <= SK_HEAD_BYTES)
    })
}

/// Resolves every structure offset the programs read. Tracepoint record
/// offsets are left zero: see [`TracepointFormats`].
pub fn resolve(btf: &Btf) -> Result<Offsets, BtfError> {
    let o = |s: &str, p: &str| byte_offset(btf, s, p);
    let sk_common = |p: &str| o("sock", &format!("__sk_common.{p}"));
    Ok(Offsets {
        task_files: o("task_struct", "files")?,
        task_real_parent: o("task_struct", "real_parent")?,
        task_tgid: o("task_struct", "tgid")?,
        task_pid: o("task_struct", "pid")?,
        task_comm: o("task_struct", "comm")?,
        task_cred: o("task_struct", "cred")?,
        // Renamed from `real_start_time` (boot-based ns too) in 5.5.
        task_start: o("task_struct", "start_boottime")
            .or_else(|_| o("task_struct", "real_start_time"))?,
        cred_uid: o("cred", "uid")?,
        files_fdt: o("files_struct", "fdt")?,
        fdt_max_fds: o("fdtable", "max_fds")?,
        fdt_fd: o("fdtable", "fd")?,
        file_private_data: o("file", "private_data")?,
        socket_sk: o("socket", "sk")?,
        socket_type: o("socket", "type")?,
        socket_file: o("socket", "file")?,
        sk_family: sk_common("skc_family")?,
        sk_num: sk_common("skc_num")?,
        sk_rcv_saddr: sk_common("skc_rcv_saddr")?,
        sk_v6_rcv_saddr: sk_common("skc_v6_rcv_saddr")?,
        sk_bound_dev_if: sk_common("skc_bound_dev_if")?,
        sk_net: sk_common("skc_net")?,
        sk_protocol: o("sock", "sk_protocol")?,
        net_inum: o("net", "ns.inum")?,
        regs_arg: syscall_arg_regs(btf)?,
        sk_state: sk_common("skc_state")?,
        tp_state_sk: 0,
        tp_state_new: 0,
        tp_state_proto: 0,
        tp_fd: 0,
        tp_addr: 0,
        tp_addrlen: 0,
        tp_ret: 0,
        reuse: bit_loc(btf.field("sock", "__sk_common.skc_reuse")?, "skc_reuse")?,
        reuseport: bit_loc(
            btf.field("sock", "__sk_common.skc_reuseport")?,
            "skc_reuseport",
        )?,
        v6only: bit_loc(
            btf.field("sock", "__sk_common.skc_ipv6only")?,
            "skc_ipv6only",
        )?,
        freebind: inet_flag(btf, "INET_FLAGS_FREEBIND", "freebind")?,
        transparent: inet_flag(btf, "INET_FLAGS_TRANSPARENT", "transparent")?,
        bind_address_no_port: inet_flag(
            btf,
            "INET_FLAGS_BIND_ADDRESS_NO_PORT",
            "bind_address_no_port",
        )?,
    })
}

/// `pt_regs` members that hold a syscall's first three arguments.
fn syscall_arg_regs(btf: &Btf) -> Result<[u32; 3], BtfError> {
    #[cfg(target_arch = "x86_64")]
    let names = ["di", "si", "dx"];
    #[cfg(not(target_arch = "x86_64"))]
    compile_error!(
        "portwatch reads syscall arguments from x86_64 registers; port syscall_arg_regs"
    );
    let mut out = [0; 3];
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = byte_offset(btf, "pt_regs", name)?;
    }
    Ok(out)
}

/// Offset of `field` in a tracepoint's `format` text.
pub(super) fn format_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
        let name = decl.rsplit([' ', '*']).next()?;
        if name != field {
            return None;
        }
        let off = line
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        off.trim().parse().ok()
    })
}

/// Fills the `tp_state_*` offsets from `sock/inet_sock_set_state`'s format.
pub fn apply_state_format(tracefs: &std::path::Path, offsets: &mut Offsets) -> Result<()> {
    let path = tracefs.join("events/sock/inet_sock_set_state/format");
    let format = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let get = |field: &str| {
        format_offset(&format, field)
            .with_context(|| format!("tracepoint sock/inet_sock_set_state has no field {field}"))
    };
    offsets.tp_state_sk = get("skaddr")?;
    offsets.tp_state_new = get("newstate")?;
    offsets.tp_state_proto = get("protocol")?;
    // `watch --record` reads `oldstate` at `newstate - 4`.
    if get("oldstate")?.checked_add(4) != Some(offsets.tp_state_new) {
        anyhow::bail!("tracepoint sock/inet_sock_set_state: oldstate is not right before newstate");
    }
    Ok(())
}

/// Record layouts of the syscall tracepoints, as tracefs describes them.
pub struct TracepointFormats {
    /// `sys_enter_bind/format`.
    pub enter_bind: String,
    /// `sys_exit_bind/format`.
    pub exit_bind: String,
    /// `sys_enter_listen/format`.
    pub enter_listen: String,
    /// `sys_exit_listen/format`.
    pub exit_listen: String,
}

impl TracepointFormats {
    /// Reads the formats from a mounted tracefs.
    pub fn read(tracefs: &std::path::Path) -> Result<Self> {
        let read = |name: &str| {
            let path = tracefs.join("events/syscalls").join(name).join("format");
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read {} (kernel built without CONFIG_FTRACE_SYSCALLS?)",
                    path.display()
                )
            })
        };
        Ok(Self {
            enter_bind: read("sys_enter_bind")?,
            exit_bind: read("sys_exit_bind")?,
            enter_listen: read("sys_enter_listen")?,
            exit_listen: read("sys_exit_listen")?,
        })
    }

    /// Fills the `tp_*` offsets. bind and listen must agree on `fd` and `ret`,
    /// since the programs share one offset for each.
    pub fn apply(&self, offsets: &mut Offsets) -> Result<()> {
        let get = |format: &str, field: &str, tp: &str| {
            format_offset(format, field)
                .with_context(|| format!("tracepoint {tp} has no field {field}"))
        };
        offsets.tp_fd = get(&self.enter_bind, "fd", "sys_enter_bind")?;
        offsets.tp_addr = get(&self.enter_bind, "umyaddr", "sys_enter_bind")?;
        offsets.tp_addrlen = get(&self.enter_bind, "addrlen", "sys_enter_bind")?;
        offsets.tp_ret = get(&self.exit_bind, "ret", "sys_exit_bind")?;
        if get(&self.enter_listen, "fd", "sys_enter_listen")? != offsets.tp_fd
            || get(&self.exit_listen, "ret", "sys_exit_listen")? != offsets.tp_ret
        {
            bail!("sys_*_listen and sys_*_bind records disagree on where fd/ret are");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTER_BIND: &str = "name: sys_enter_bind
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:struct sockaddr * umyaddr;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;
";

    #[test]
    fn tracepoint_format_offsets() {
        assert_eq!(format_offset(ENTER_BIND, "fd"), Some(16));
        assert_eq!(format_offset(ENTER_BIND, "umyaddr"), Some(24));
        assert_eq!(format_offset(ENTER_BIND, "addrlen"), Some(32));
        assert_eq!(format_offset(ENTER_BIND, "__syscall_nr"), Some(8));
        assert_eq!(format_offset(ENTER_BIND, "ret"), None);
    }

    #[test]
    fn mismatched_listen_layout_is_refused() {
        let formats = TracepointFormats {
            enter_bind: ENTER_BIND.to_owned(),
            exit_bind: "\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n".to_owned(),
            enter_listen: "\tfield:int fd;\toffset:24;\tsize:8;\tsigned:0;\n".to_owned(),
            exit_listen: "\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n".to_owned(),
        };
        let err = formats.apply(&mut Offsets::default()).unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }
}

/// Offsets checked against the real BTF of two kernels: this machine's, and
/// a second one (Debian's packaged kernel, which `cargo xtask test` downloads
/// and names in PORTWATCH_OTHER_BTF). An independent reader, bpftool, is the
/// oracle for plain members.
#[cfg(test)]
mod btf_tests {
    use std::{path::PathBuf, process::Command};

    use super::*;

    fn other_btf() -> PathBuf {
        PathBuf::from(std::env::var_os("PORTWATCH_OTHER_BTF").expect(
            "PORTWATCH_OTHER_BTF is not set: run the tests with `cargo xtask test`, which fetches a second kernel's BTF",
        ))
    }

    fn load(path: &std::path::Path) -> Btf {
        Btf::from_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// `bits_offset` of a direct member, per `bpftool btf dump ... format raw`.
    fn bpftool_offset(dump: &str, strukt: &str, member: &str) -> u32 {
        let header = format!("STRUCT '{strukt}' size=");
        let mut lines = dump.lines().skip_while(|l| !l.contains(&header));
        lines
            .next()
            .unwrap_or_else(|| panic!("bpftool shows no struct {strukt}"));
        let line = lines
            .take_while(|l| l.starts_with('\t'))
            .find(|l| l.trim_start().starts_with(&format!("'{member}' ")))
            .unwrap_or_else(|| panic!("bpftool shows no {strukt}.{member}"));
        let bits = line
            .split("bits_offset=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        bits.parse().unwrap()
    }

    fn check_against_bpftool(path: &std::path::Path) -> Offsets {
        let offsets = resolve(&load(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out = Command::new("bpftool")
            .args(["btf", "dump", "file"])
            .arg(path)
            .args(["format", "raw"])
            .output()
            .expect("bpftool is needed as the oracle (cargo xtask test installs it)");
        assert!(out.status.success(), "bpftool failed on {}", path.display());
        let dump = String::from_utf8_lossy(&out.stdout);
        for (strukt, member, ours) in [
            ("task_struct", "files", offsets.task_files),
            ("task_struct", "real_parent", offsets.task_real_parent),
            ("task_struct", "tgid", offsets.task_tgid),
            ("task_struct", "pid", offsets.task_pid),
            ("task_struct", "comm", offsets.task_comm),
            ("task_struct", "cred", offsets.task_cred),
            ("task_struct", "start_boottime", offsets.task_start),
            ("cred", "uid", offsets.cred_uid),
            ("files_struct", "fdt", offsets.files_fdt),
            ("fdtable", "max_fds", offsets.fdt_max_fds),
            ("fdtable", "fd", offsets.fdt_fd),
            ("file", "private_data", offsets.file_private_data),
            ("socket", "sk", offsets.socket_sk),
            ("socket", "type", offsets.socket_type),
            ("socket", "file", offsets.socket_file),
            ("sock", "sk_protocol", offsets.sk_protocol),
        ] {
            assert_eq!(
                ours * 8,
                bpftool_offset(&dump, strukt, member),
                "{strukt}.{member} in {}",
                path.display()
            );
        }
        offsets
    }

    #[test]
    fn this_kernel_offsets_match_bpftool() {
        let o = check_against_bpftool(std::path::Path::new("/sys/kernel/btf/vmlinux"));
        // Fields inside anonymous unions: sock_common's layout has been stable for years.
        assert_eq!(
            (o.sk_family, o.sk_num, o.sk_rcv_saddr, o.sk_state),
            (16, 14, 4, 18)
        );
        assert_eq!(o.reuse.width, 4);
        assert_eq!(o.reuseport.width, 1);
        assert_eq!(o.v6only.width, 1);
    }

    #[test]
    fn sock_head_holds_the_holder_fields_on_both_kernels_and_not_past_it() {
        for path in [PathBuf::from("/sys/kernel/btf/vmlinux"), other_btf()] {
            let mut o = resolve(&load(&path)).unwrap();
            assert!(sk_head_fits(&o), "{}: {o:?}", path.display());
            // One field past the head (or an overflowing offset) and the
            // programs read field by field.
            o.sk_v6_rcv_saddr = SK_HEAD_BYTES - 15;
            assert!(!sk_head_fits(&o));
            o.sk_v6_rcv_saddr = SK_HEAD_BYTES - 16;
            assert!(sk_head_fits(&o));
            o.sk_net = u32::MAX - 2;
            assert!(!sk_head_fits(&o));
        }
    }

    #[test]
    fn second_kernel_offsets_match_bpftool_and_differ_where_the_layout_moved() {
        let here = check_against_bpftool(std::path::Path::new("/sys/kernel/btf/vmlinux"));
        let there = check_against_bpftool(&other_btf());
        // Kernels 6.6+ keep IP_FREEBIND and friends as bits of inet_flags;
        // older ones as bit fields of their own. Both must resolve, and to
        // different places: a baked-in offset would be wrong on one of them.
        let here_btf = load(std::path::Path::new("/sys/kernel/btf/vmlinux"));
        let there_btf = load(&other_btf());
        let new_style = |b: &Btf| b.field("inet_sock", "inet_flags").is_ok();
        assert_ne!(
            new_style(&here_btf),
            new_style(&there_btf),
            "expected one pre-6.6 and one post-6.6 kernel"
        );
        assert_ne!(here.freebind, there.freebind);
        assert_ne!(here.transparent, there.transparent);
        assert!(here.freebind.width == 1 && there.freebind.width == 1);
        // And task_struct, which every event reads, is laid out differently.
        assert_ne!(here.task_files, there.task_files);
    }

    #[test]
    fn raw_tracepoint_arguments_read_from_both_kernels() {
        for path in [PathBuf::from("/sys/kernel/btf/vmlinux"), other_btf()] {
            let btf = load(&path);
            assert_eq!(
                btf.tracepoint_args("inet_sock_set_state").unwrap(),
                ["struct sock *", "int", "int"],
                "{}",
                path.display()
            );
            assert_eq!(
                btf.tracepoint_args("sys_enter").unwrap(),
                ["struct pt_regs *", "long int"]
            );
            assert!(btf.tracepoint_args("no_such_tracepoint").is_err());
        }
    }

    #[test]
    fn malformed_btf_is_an_error_not_a_panic() {
        assert!(Btf::parse(b"not btf".to_vec()).is_err());
        let mut truncated = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
        truncated.truncate(4096);
        assert!(Btf::parse(truncated).is_err());
    }
}
