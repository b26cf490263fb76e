//! io_uring's bind and listen requests (IORING_OP_BIND / IORING_OP_LISTEN,
//! Linux 6.11+): where the tracepoint backend's `io_uring_complete` program
//! finds the opcode, the socket and the requested address in a request,
//! from the running kernel's BTF and the tracepoint's tracefs format.
//!
//! A kernel without the opcode, the tracepoint or one of these types simply
//! goes without: `resolve` says why, and the loader attaches nothing.

use std::path::Path;

use portwatch_common::UringOffsets;

use super::{btf::Btf, offsets::format_offset};

/// Where the completion tracepoint's format lives under tracefs.
const FORMAT: &str = "events/io_uring/io_uring_complete/format";

/// Byte offset of a whole-byte member.
fn byte(btf: &Btf, strukt: &str, path: &str) -> Result<u32, String> {
    let f = btf.field(strukt, path).map_err(|e| e.to_string())?;
    if f.bitfield_size != 0 || f.bit_offset % 8 != 0 {
        return Err(format!("{strukt}.{path} is a bit field on this kernel"));
    }
    Ok(f.bit_offset / 8)
}

/// The opcode's value, if this kernel's BTF names it and it fits the u8
/// `io_kiocb.opcode` holds.
fn opcode(btf: &Btf, name: &str) -> Option<u8> {
    btf.enum_value(name).and_then(|v| u8::try_from(v).ok())
}

/// Resolves the layout, or says in one line why io_uring binds cannot be
/// captured on this kernel.
pub fn resolve(btf: &Btf, tracefs: &Path) -> Result<UringOffsets, String> {
    let op_bind = opcode(btf, "IORING_OP_BIND").ok_or_else(|| {
        "this kernel has no IORING_OP_BIND (Linux 6.11+): io_uring cannot bind sockets here"
            .to_owned()
    })?;
    // IORING_OP_LISTEN came with IORING_OP_BIND; 0 (IORING_OP_NOP) disables it.
    let op_listen = opcode(btf, "IORING_OP_LISTEN").unwrap_or(0);
    let path = tracefs.join(FORMAT);
    let format = std::fs::read_to_string(&path)
        .map_err(|e| format!("no io_uring_complete tracepoint ({}: {e})", path.display()))?;
    let field = |name: &str| {
        format_offset(&format, name)
            .ok_or_else(|| format!("tracepoint io_uring/io_uring_complete has no field {name}"))
    };
    Ok(UringOffsets {
        tp_req: field("req")?,
        tp_res: field("res")?,
        req_opcode: byte(btf, "io_kiocb", "opcode")?,
        req_file: byte(btf, "io_kiocb", "file")?,
        req_cmd: byte(btf, "io_kiocb", "cmd")?,
        bind_addr_len: byte(btf, "io_bind", "addr_len")?,
        req_async_data: byte(btf, "io_kiocb", "async_data")?,
        msghdr_addr: byte(btf, "io_async_msghdr", "addr")?,
        op_bind,
        op_listen,
        _pad: [0; 6],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checked against bpftool's reading of this kernel's BTF, an
    /// independent reader, where the kernel has the opcode.
    #[test]
    fn io_uring_layout_matches_bpftool() {
        let btf = Btf::from_file(Path::new("/sys/kernel/btf/vmlinux")).unwrap();
        // As `watch` does: a new machine has no tracefs mounted.
        let (tracefs, _) = crate::capture::loader::tracefs()
            .expect("tracefs is mounted, or can be (the tests run as root)");
        let Some(bind) = opcode(&btf, "IORING_OP_BIND") else {
            let err = resolve(&btf, tracefs).unwrap_err();
            assert!(err.contains("IORING_OP_BIND"), "{err}");
            return;
        };
        let dump = std::process::Command::new("bpftool")
            .args([
                "btf",
                "dump",
                "file",
                "/sys/kernel/btf/vmlinux",
                "format",
                "raw",
            ])
            .output()
            .expect("bpftool is the oracle (cargo xtask test installs it)");
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.contains(&format!("'IORING_OP_BIND' val={bind}")));
        let member = |strukt: &str, name: &str| -> u32 {
            let header = format!("STRUCT '{strukt}' size=");
            let mut lines = dump.lines().skip_while(|l| !l.contains(&header));
            lines.next().expect(strukt);
            let line = lines
                .take_while(|l| l.starts_with('\t'))
                .find(|l| l.trim_start().starts_with(&format!("'{name}' ")))
                .unwrap_or_else(|| panic!("bpftool shows no {strukt}.{name}"));
            let bits: u32 = line
                .split("bits_offset=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            bits / 8
        };
        assert!(
            tracefs.join(FORMAT).exists(),
            "{} has no io_uring_complete event",
            tracefs.display()
        );
        let o = resolve(&btf, tracefs).unwrap();
        assert_eq!(o.op_bind, bind);
        assert_eq!(o.req_opcode, member("io_kiocb", "opcode"));
        assert_eq!(o.req_async_data, member("io_kiocb", "async_data"));
        assert_eq!(o.bind_addr_len, member("io_bind", "addr_len"));
        // file and cmd share io_kiocb's first (anonymous) union.
        assert_eq!((o.req_file, o.req_cmd), (0, 0));
        assert!(o.msghdr_addr > 0 && o.tp_res > o.tp_req);
    }
}
