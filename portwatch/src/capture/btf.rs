//! A minimal reader of the kernel's BTF: enough to find struct member offsets
//! and enum values, which is all the programs need (Rust eBPF has no CO-RE,
//! so the loader does the relocation by hand).
//!
//! Hand-written on purpose: aya-obj keeps its BTF type accessors crate-private,
//! and the one maintained standalone parser (btf-rs) is LGPL, which does not
//! fit this crate's MIT/Apache licence. The format is small and stable.

use std::{ops::Range, path::Path};

use bytes::Buf;
use thiserror::Error;

/// What can go wrong reading BTF or looking something up in it.
#[derive(Debug, Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("cannot read BTF from {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not BTF this reader understands.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// A struct or enum is not in this kernel's BTF.
    #[error("the kernel's BTF has no {0}")]
    Missing(String),
}

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
const KIND_PTR: u32 = 2;

/// Bytes that follow a type's 12-byte header.
fn trailer(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        1..=19 => 0,
        _ => return None,
    })
}

/// One type's header, read on demand from the raw section.
#[derive(Debug, Clone, Copy)]
struct Header {
    name: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Offset of the trailer in the type section.
    body: usize,
}

/// A member found by path: where it starts and how wide it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Offset from the start of the outermost struct, in bits.
    pub bit_offset: u32,
    /// Width in bits for a bit field, 0 for an ordinary member.
    pub bitfield_size: u32,
    /// Size of the member's type in bytes (0 when unknown).
    pub size: u32,
}

/// BTF, kept raw: only an index of where each type starts is built, and the
/// few types portwatch asks about are decoded when asked. This keeps the
/// loader's memory small (the kernel's BTF has some 150,000 types), and the
/// bytes, read once, can go on to aya (`into_bytes`).
pub struct Btf {
    /// The whole file.
    data: Vec<u8>,
    /// Where the type section lies in `data`.
    types: Range<usize>,
    /// Where the string section lies in `data`.
    strings: Range<usize>,
    /// Offset of each type id's header in the type section; index 0 (void) unused.
    index: Vec<u32>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut s = &b[off..off + 4];
    s.get_u32_le()
}

impl Btf {
    /// Reads BTF from a file such as `/sys/kernel/btf/vmlinux`.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    /// Parses raw little-endian BTF bytes.
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let mut hdr = data.as_slice();
        if hdr.remaining() < 24 || hdr.get_u16_le() != MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (big-endian BTF is not supported)",
            ));
        }
        let _version = hdr.get_u8();
        let _flags = hdr.get_u8();
        let hdr_len = hdr.get_u32_le() as usize;
        let type_off = hdr.get_u32_le() as usize;
        let type_len = hdr.get_u32_le() as usize;
        let str_off = hdr.get_u32_le() as usize;
        let str_len = hdr.get_u32_le() as usize;
        let section = |off: usize, len: usize| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .filter(|range| range.end <= data.len())
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let (type_range, strings) = (section(type_off, type_len)?, section(str_off, str_len)?);
        let types = &data[type_range.clone()];
        let mut index = vec![0];
        let mut pos = 0;
        while pos < types.len() {
            if types.len() - pos < 12 {
                return Err(BtfError::Malformed("truncated type"));
            }
            let info = u32_at(types, pos + 4);
            let len = trailer((info >> 24) & 0x1f, (info & 0xffff) as usize)
                .ok_or(BtfError::Malformed("unknown type kind"))?;
            index.push(pos as u32);
            pos += 12 + len;
        }
        if pos != types.len() {
            return Err(BtfError::Malformed("truncated type"));
        }
        Ok(Btf {
            data,
            types: type_range,
            strings,
            index,
        })
    }

    /// The bytes read, for a second parser (aya's, which attaches fexit).
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    fn types(&self) -> &[u8] {
        &self.data[self.types.clone()]
    }

    fn header(&self, id: u32) -> Option<Header> {
        let pos = *self.index.get(id as usize).filter(|_| id != 0)? as usize;
        let info = u32_at(self.types(), pos + 4);
        Some(Header {
            name: u32_at(self.types(), pos),
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(self.types(), pos + 8),
            body: pos + 12,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.data[self.strings.clone()]
            .get(off as usize..)
            .unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<Header> {
        for _ in 0..32 {
            let h = self.header(id)?;
            match h.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = h.size_or_type;
                }
                _ => return Some(h),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let h = self.resolve(id)?;
        match h.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Some(h.size_or_type)
            }
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let elem = u32_at(self.types(), h.body);
                let n = u32_at(self.types(), h.body + 8);
                Some(self.size_of(elem)?.saturating_mul(n))
            }
            _ => None,
        }
    }

    /// The struct or union named `name` (a complete definition).
    fn composite(&self, name: &str) -> Option<u32> {
        (1..self.index.len() as u32).find(|&id| {
            self.header(id).is_some_and(|h| {
                matches!(h.kind, KIND_STRUCT | KIND_UNION) && self.name(h.name) == name.as_bytes()
            })
        })
    }

    /// Finds `member` directly in composite `id`, looking inside anonymous
    /// structs and unions. Returns (bit offset within `id`, type, bitfield size).
    fn find_member(&self, id: u32, member: &str) -> Option<(u32, u32, u32)> {
        let h = self.resolve(id)?;
        if !matches!(h.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..h.vlen {
            let at = h.body + i * 12;
            let (name, ty, offset) = (
                u32_at(self.types(), at),
                u32_at(self.types(), at + 4),
                u32_at(self.types(), at + 8),
            );
            let (bit_offset, bitfield) = if h.kind_flag {
                (offset & 0xff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            if name == 0 {
                if let Some((off, ty, bits)) = self.find_member(ty, member) {
                    return Some((bit_offset + off, ty, bits));
                }
            } else if self.name(name) == member.as_bytes() {
                return Some((bit_offset, ty, bitfield));
            }
        }
        None
    }

    /// The type id of struct `name`, for `bpf_rdonly_cast`.
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        self.composite(name)
            .filter(|&id| self.header(id).is_some_and(|h| h.kind == KIND_STRUCT))
    }

    /// The type id of kernel function `name` (a kfunc's id for a call).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        (1..self.index.len() as u32).find(|&id| {
            self.header(id)
                .is_some_and(|h| h.kind == KIND_FUNC && self.name(h.name) == name.as_bytes())
        })
    }

    /// Locates a dotted member path in a struct: `field("sock", "__sk_common.skc_family")`.
    pub fn field(&self, strukt: &str, path: &str) -> Result<Field, BtfError> {
        let missing = || BtfError::Missing(format!("{strukt}.{path}"));
        let mut id = self.composite(strukt).ok_or_else(missing)?;
        let mut bit_offset = 0;
        let mut bitfield_size = 0;
        for part in path.split('.') {
            let (off, ty, bits) = self.find_member(id, part).ok_or_else(missing)?;
            bit_offset += off;
            id = ty;
            bitfield_size = bits;
        }
        Ok(Field {
            bit_offset,
            bitfield_size,
            size: self.size_of(id).unwrap_or(0),
        })
    }

    /// The parameter types of tracepoint `name`'s probes after their
    /// leading `void *` (the arguments a raw tracepoint program gets), as C
    /// spells them without qualifiers: `["struct sock *", "int", "int"]`.
    /// From the `btf_trace_<name>` typedef the kernel declares for every
    /// tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Result<Vec<String>, BtfError> {
        let missing = || BtfError::Missing(format!("tracepoint {name} (btf_trace_{name})"));
        let typedef = format!("btf_trace_{name}");
        let id = (1..self.index.len() as u32)
            .find(|&id| {
                self.header(id).is_some_and(|h| {
                    h.kind == KIND_TYPEDEF && self.name(h.name) == typedef.as_bytes()
                })
            })
            .ok_or_else(missing)?;
        let ptr = self
            .resolve(id)
            .filter(|h| h.kind == KIND_PTR)
            .ok_or_else(missing)?;
        let proto = self
            .resolve(ptr.size_or_type)
            .filter(|h| h.kind == KIND_FUNC_PROTO)
            .ok_or_else(missing)?;
        Ok((1..proto.vlen)
            .map(|i| self.spell(u32_at(self.types(), proto.body + i * 8 + 4)))
            .collect())
    }

    /// A type as C spells it, without qualifiers or typedefs.
    fn spell(&self, id: u32) -> String {
        if id == 0 {
            return "void".to_owned();
        }
        let Some(h) = self.resolve(id) else {
            return "?".to_owned();
        };
        let name = String::from_utf8_lossy(self.name(h.name));
        match h.kind {
            KIND_PTR => format!("{} *", self.spell(h.size_or_type)),
            KIND_STRUCT => format!("struct {name}"),
            KIND_UNION => format!("union {name}"),
            KIND_ENUM | KIND_ENUM64 => format!("enum {name}"),
            _ => name.into_owned(),
        }
    }

    /// The value of enumerator `name`, searched in every enum (the kernel
    /// declares many anonymously).
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        (1..self.index.len() as u32).find_map(|id| {
            let h = self.header(id)?;
            let (stride, wide) = match h.kind {
                KIND_ENUM => (8, false),
                KIND_ENUM64 => (12, true),
                _ => return None,
            };
            (0..h.vlen).find_map(|i| {
                let at = h.body + i * stride;
                if self.name(u32_at(self.types(), at)) != name.as_bytes() {
                    return None;
                }
                let lo = u32_at(self.types(), at + 4);
                Some(if wide {
                    (u64::from(u32_at(self.types(), at + 8)) << 32 | u64::from(lo)) as i64
                } else {
                    i64::from(lo as i32)
                })
            })
        })
    }
}
