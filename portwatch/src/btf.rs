//! A minimal reader of the kernel's BTF: enough to find struct member offsets
//! and enum values, which is all the programs need (Rust eBPF has no CO-RE,
//! so the loader does the relocation by hand).
//!
//! Hand-written on purpose: aya-obj keeps its BTF type accessors crate-private,
//! and the one maintained standalone parser (btf-rs) is LGPL, which does not
//! fit this crate's MIT/Apache licence. The format is small and stable.

use std::{collections::HashMap, path::Path};

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
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
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

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Struct or union.
    Composite {
        size: u32,
        members: Vec<Member>,
    },
    /// Typedefs and qualifiers: look through to `ty`.
    Alias {
        ty: u32,
    },
    Enum {
        values: Vec<(u32, i64)>,
    },
    /// Anything whose inside we never need.
    Opaque {
        size: u32,
    },
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

/// Parsed BTF.
pub struct Btf {
    /// Index 0 is void.
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Struct and union ids by name; complete definitions only.
    by_name: HashMap<String, Vec<u32>>,
    /// Every enum, named or not (the kernel declares many anonymously).
    enums: Vec<u32>,
}

impl Btf {
    /// Reads BTF from a file such as `/sys/kernel/btf/vmlinux`.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses raw little-endian BTF bytes.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let mut hdr = data;
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
                .and_then(|range| data.get(range))
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let strings = section(str_off, str_len)?.to_vec();
        let mut buf = section(type_off, type_len)?;

        let mut btf = Btf {
            types: vec![Type::Opaque { size: 0 }],
            strings,
            by_name: HashMap::new(),
            enums: Vec::new(),
        };
        let short = BtfError::Malformed("truncated type");
        while buf.has_remaining() {
            if buf.remaining() < 12 {
                return Err(short);
            }
            let name = buf.get_u32_le();
            let info = buf.get_u32_le();
            let size_or_type = buf.get_u32_le();
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let need = |n: usize| -> Result<(), BtfError> {
                if buf.remaining() < n {
                    Err(BtfError::Malformed("truncated type"))
                } else {
                    Ok(())
                }
            };
            let id = btf.types.len() as u32;
            let ty = match kind {
                KIND_INT => {
                    need(4)?;
                    buf.advance(4);
                    Type::Opaque { size: size_or_type }
                }
                KIND_PTR => Type::Opaque { size: 8 },
                KIND_ARRAY => {
                    need(12)?;
                    let elem = buf.get_u32_le();
                    let _index = buf.get_u32_le();
                    let n = buf.get_u32_le();
                    // Only the size matters to us; resolved lazily would be
                    // nicer, but element types always come first in vmlinux.
                    let elem_size = btf.size_of(elem).unwrap_or(0);
                    Type::Opaque {
                        size: elem_size.saturating_mul(n),
                    }
                }
                KIND_STRUCT | KIND_UNION => {
                    need(vlen * 12)?;
                    let members = (0..vlen)
                        .map(|_| {
                            let name = buf.get_u32_le();
                            let ty = buf.get_u32_le();
                            let offset = buf.get_u32_le();
                            let (bit_offset, bitfield_size) = if kind_flag {
                                (offset & 0xff_ffff, offset >> 24)
                            } else {
                                (offset, 0)
                            };
                            Member {
                                name,
                                ty,
                                bit_offset,
                                bitfield_size,
                            }
                        })
                        .collect();
                    btf.index(name, id);
                    Type::Composite {
                        size: size_or_type,
                        members,
                    }
                }
                KIND_ENUM => {
                    need(vlen * 8)?;
                    let values = (0..vlen)
                        .map(|_| (buf.get_u32_le(), i64::from(buf.get_i32_le())))
                        .collect();
                    btf.enums.push(id);
                    Type::Enum { values }
                }
                KIND_ENUM64 => {
                    need(vlen * 12)?;
                    let values = (0..vlen)
                        .map(|_| {
                            let name = buf.get_u32_le();
                            let lo = u64::from(buf.get_u32_le());
                            let hi = u64::from(buf.get_u32_le());
                            (name, (hi << 32 | lo) as i64)
                        })
                        .collect();
                    btf.enums.push(id);
                    Type::Enum { values }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias { ty: size_or_type }
                }
                KIND_FWD | KIND_FUNC => Type::Opaque { size: 0 },
                KIND_FLOAT => Type::Opaque { size: size_or_type },
                KIND_FUNC_PROTO => {
                    need(vlen * 8)?;
                    buf.advance(vlen * 8);
                    Type::Opaque { size: 0 }
                }
                KIND_VAR | KIND_DECL_TAG => {
                    need(4)?;
                    buf.advance(4);
                    Type::Opaque { size: 0 }
                }
                KIND_DATASEC => {
                    need(vlen * 12)?;
                    buf.advance(vlen * 12);
                    Type::Opaque { size: size_or_type }
                }
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            btf.types.push(ty);
        }
        Ok(btf)
    }

    fn index(&mut self, name_off: u32, id: u32) {
        if name_off != 0 {
            let name = self.name(name_off).to_owned();
            self.by_name.entry(name).or_default().push(id);
        }
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias { ty } => id = *ty,
                other => return Some(other),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        match self.resolve(id)? {
            Type::Composite { size, .. } | Type::Opaque { size } => Some(*size),
            Type::Enum { .. } => Some(4),
            Type::Alias { .. } => None,
        }
    }

    /// The composite type named `name` (`struct sock`, ...).
    fn composite(&self, name: &str) -> Option<u32> {
        self.by_name
            .get(name)?
            .iter()
            .copied()
            .find(|&id| matches!(self.types[id as usize], Type::Composite { .. }))
    }

    /// Finds `member` directly in composite `id`, looking inside anonymous
    /// structs and unions. Returns (bit offset within `id`, member).
    fn find_member(&self, id: u32, member: &str) -> Option<(u32, Member)> {
        let Type::Composite { members, .. } = self.resolve(id)? else {
            return None;
        };
        for m in members {
            if m.name == 0 {
                if let Some((off, found)) = self.find_member(m.ty, member) {
                    return Some((m.bit_offset + off, found));
                }
            } else if self.name(m.name) == member {
                return Some((m.bit_offset, m.clone()));
            }
        }
        None
    }

    /// Locates a dotted member path in a struct: `field("sock", "__sk_common.skc_family")`.
    pub fn field(&self, strukt: &str, path: &str) -> Result<Field, BtfError> {
        let missing = || BtfError::Missing(format!("{strukt}.{path}"));
        let mut id = self.composite(strukt).ok_or_else(missing)?;
        let mut bit_offset = 0;
        let mut last = None;
        for part in path.split('.') {
            let (off, member) = self.find_member(id, part).ok_or_else(missing)?;
            bit_offset += off;
            id = member.ty;
            last = Some(member);
        }
        let member = last.ok_or_else(missing)?;
        Ok(Field {
            bit_offset,
            bitfield_size: member.bitfield_size,
            size: self.size_of(member.ty).unwrap_or(0),
        })
    }

    /// The value of enumerator `name`, searched in every enum.
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        self.enums
            .iter()
            .find_map(|&id| match &self.types[id as usize] {
                Type::Enum { values } => values
                    .iter()
                    .find(|(n, _)| self.name(*n) == name)
                    .map(|&(_, v)| v),
                _ => None,
            })
    }
}
