//! A compose file as a small tree that remembers where each node was
//! (line and column), read with saphyr (YAML 1.2). YAML 1.1's merge key
//! (`<<: *defaults`), which compose files use for shared settings and
//! PyYAML and go-yaml both apply, is applied here too (every `<<` key is
//! taken as the merge key: saphyr does not say whether it was quoted).

use std::path::Path;

use saphyr::{LoadableYamlNode as _, MarkedYaml, Scalar, YamlData};

use crate::preflight::InputError;

/// One node, with its 1-based line and column.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
    /// What it holds.
    pub value: Value,
}

/// A node's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing.
    Null,
    /// `true`, `false`.
    Bool(bool),
    /// A number without a fraction.
    Int(i64),
    /// A number with one (kept as written).
    Float(String),
    /// Any other scalar.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in the file's order; keys as text.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The value under `key`, when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A scalar as compose would print it: strings as they are, numbers
    /// in decimal; None for null, sequences and mappings.
    pub fn scalar(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) | Value::Float(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// An error at this node.
    pub fn error(&self, file: &Path, what: impl Into<String>) -> InputError {
        InputError::at(file, self.line, Some(self.col), what)
    }
}

/// The first document of `text`, or the syntax error at `file:line:col`.
/// An empty file is an empty mapping, as compose takes it.
pub fn load(file: &Path, text: &str) -> Result<Node, InputError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| {
        let m = e.marker();
        InputError::at(
            file,
            to_u32(m.line()),
            Some(to_u32(m.col() + 1)),
            format!("YAML syntax error: {}", e.info()),
        )
    })?;
    if docs.len() > 1 {
        return Err(InputError::file(
            file,
            "several YAML documents in one compose file (compose reads one)",
        ));
    }
    match docs.into_iter().next() {
        Some(doc) => convert(file, &doc),
        None => Ok(Node {
            line: 1,
            col: 1,
            value: Value::Map(Vec::new()),
        }),
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn convert(file: &Path, y: &MarkedYaml<'_>) -> Result<Node, InputError> {
    let start = y.span.start;
    let (line, col) = (to_u32(start.line()), to_u32(start.col() + 1));
    let at = |what: &str| InputError::at(file, line, Some(col), what.to_owned());
    let value = match &y.data {
        YamlData::Value(s) => scalar(s),
        YamlData::Representation(s, _, _) => Value::Str(s.to_string()),
        YamlData::Sequence(items) => Value::Seq(
            items
                .iter()
                .map(|i| convert(file, i))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut own: Vec<(String, Node)> = Vec::with_capacity(map.len());
            let mut merged: Vec<(String, Node)> = Vec::new();
            for (k, v) in map {
                let key = convert(file, k)?;
                let value = convert(file, v)?;
                let Some(name) = key.scalar() else {
                    return Err(key.error(file, "a mapping key that is not a scalar"));
                };
                if name == "<<" {
                    merge_into(file, &mut merged, value)?;
                } else {
                    own.push((name, value));
                }
            }
            // The mapping's own keys win over merged ones.
            for (k, v) in merged {
                if !own.iter().any(|(o, _)| o == &k) {
                    own.push((k, v));
                }
            }
            Value::Map(own)
        }
        YamlData::Tagged(_, inner) => return convert(file, inner),
        YamlData::Alias(_) => return Err(at("an alias that names no anchor")),
        YamlData::BadValue => return Err(at("a value that does not fit its tag")),
    };
    Ok(Node { line, col, value })
}

/// `<<: *a` or `<<: [*a, *b]`: the first mapping to name a key wins.
fn merge_into(file: &Path, out: &mut Vec<(String, Node)>, v: Node) -> Result<(), InputError> {
    let maps = match v.value {
        Value::Map(m) => vec![m],
        Value::Seq(items) => items
            .into_iter()
            .map(|i| match i.value {
                Value::Map(m) => Ok(m),
                _ => Err(i.error(file, "`<<` merges mappings only")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(v.error(file, "`<<` merges mappings only")),
    };
    for m in maps {
        for (k, v) in m {
            if !out.iter().any(|(o, _)| o == &k) {
                out.push((k, v));
            }
        }
    }
    Ok(())
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Int(*i),
        Scalar::FloatingPoint(f) => Value::Float(f.to_string()),
        Scalar::String(s) => Value::Str(s.to_string()),
    }
}
