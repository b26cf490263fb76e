//! `bpf_rdonly_cast` for the programs' successful-bind path: where the
//! kernel has the kfunc (6.2+), the walk from a bind()'s fd to its sock's
//! port and netns is plain loads instead of six `bpf_probe_read_kernel`
//! calls (BENCHMARKS.md, "A successful bind").
//!
//! Rust's eBPF toolchain cannot declare a kfunc, so the object carries the
//! call as one marked instruction word (`portwatch_common::RDONLY_CAST_CALL`)
//! and this module writes the kfunc's BTF id into it before aya parses the
//! object, as libbpf does for a `__ksym` declaration.

use anyhow::{ensure, Context as _, Result};
use object::{Object as _, ObjectSection as _, SectionKind};
use portwatch_common::{Casts, RDONLY_CAST_CALL};

use super::btf::Btf;

/// The kfunc's BTF id and the type ids the programs cast to, where this
/// kernel has them all.
pub(super) fn resolve(btf: &Btf) -> Option<(u32, Casts)> {
    let func = btf.func_id("bpf_rdonly_cast")?;
    Some((
        func,
        Casts {
            enabled: 1,
            list_head: btf.struct_id("list_head")?,
            file: btf.struct_id("file")?,
            socket: btf.struct_id("socket")?,
        },
    ))
}

/// The eBPF object `elf`, 8-byte aligned as aya's parser wants it, with
/// every `RDONLY_CAST_CALL` in its code made a call of the kfunc whose BTF
/// id is `func`; with None, a move `r0 = r1` instead, on a path the
/// verifier never walks (`Config::casts` is then all zero).
pub(super) fn patch(elf: &[u8], func: Option<u32>) -> Result<Vec<u64>> {
    let mut words = vec![0u64; elf.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..elf.len()].copy_from_slice(elf);
    let with = match func {
        // The same call, its immediate (the upper half) the kfunc's id.
        Some(id) => (RDONLY_CAST_CALL & 0xffff_ffff) | (u64::from(id) << 32),
        // BPF_ALU64 | BPF_MOV | BPF_X, dst r0, src r1.
        None => 0xbf | (0x10 << 8),
    };
    // Parsed from the aligned copy: the ELF reader needs its alignment.
    let code: Vec<(u64, u64)> = {
        let bytes = &bytemuck::cast_slice::<u64, u8>(&words)[..elf.len()];
        let file = object::File::parse(bytes).context("parsing the eBPF object")?;
        file.sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .filter_map(|s| s.file_range())
            .collect()
    };
    let mut patched = 0;
    for (start, len) in code {
        // Instructions are 8 bytes and code sections 8-byte aligned; a
        // 16-byte load's second half has opcode 0, never a call's.
        ensure!(start % 8 == 0, "eBPF code section at an unaligned offset");
        let range = start as usize / 8..(start + len) as usize / 8;
        for word in words
            .get_mut(range)
            .context("eBPF code section out of bounds")?
        {
            if u64::from_le(*word) == RDONLY_CAST_CALL {
                *word = with.to_le();
                patched += 1;
            }
        }
    }
    ensure!(
        patched > 0,
        "the eBPF object has no bpf_rdonly_cast call to patch"
    );
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> &'static [u8] {
        super::super::attach::OBJECT
    }

    #[test]
    fn every_marked_call_gets_the_kfunc_id_or_a_move_and_nothing_else_changes() {
        let elf = object();
        let called = patch(elf, Some(64919)).unwrap();
        let moved = patch(elf, None).unwrap();
        let mut marked = 0;
        for (i, chunk) in elf.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            let word = u64::from_le_bytes(word);
            let (c, m) = (u64::from_le(called[i]), u64::from_le(moved[i]));
            if c == word {
                assert_eq!(m, word, "word {i}");
                continue;
            }
            assert_eq!(word, RDONLY_CAST_CALL, "word {i}");
            assert_eq!(c, 0x85 | 0x20 << 8 | 64919 << 32);
            assert_eq!(m, 0xbf | 0x10 << 8);
            marked += 1;
        }
        // sys_exit_bind and sys_exit_listen each cast the fd array entry,
        // the file and the socket.
        assert!(marked >= 6, "{marked} calls patched");
    }

    #[test]
    fn an_object_without_the_call_is_an_error() {
        let mut elf = object().to_vec();
        let marker = RDONLY_CAST_CALL.to_le_bytes();
        let mut at = 0;
        while let Some(i) = elf[at..].windows(8).position(|w| w == marker) {
            elf[at + i] = 0;
            at += i + 8;
        }
        let err = patch(&elf, Some(1)).unwrap_err();
        assert!(err.to_string().contains("no bpf_rdonly_cast call"), "{err}");
    }
}
