//! Variables as compose sees them: the project's `.env` (or `--env-file`)
//! under the process environment, and compose's interpolation of
//! `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`,
//! `${VAR?err}` and `$$` (docker-compose 1.29's `TemplateWithDefaults`:
//! an unset plain variable is empty, a default is not interpolated again).

use std::collections::HashMap;

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarError {
    /// A `$` that starts no variable (`$`, `${}`, `${1x}`, `${A`).
    Invalid,
    /// `${VAR:?err}` with VAR unset or empty, `${VAR?err}` with it unset:
    /// the error the file gives (or the variable's name).
    Required(String),
}

/// The variables of a project: `.env`'s, then the environment's over them.
pub struct Vars<'a> {
    /// From `.env` or `--env-file`.
    pub file: HashMap<String, String>,
    /// The environment compose would see.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    /// The value of `name`: the environment first, as compose does.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.env)(name).or_else(|| self.file.get(name).cloned())
    }

    /// `s` with its variables replaced.
    pub fn interpolate(&self, s: &str) -> Result<String, VarError> {
        if !s.contains('$') {
            return Ok(s.to_owned());
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(r) = after.strip_prefix('$') {
                out.push('$');
                rest = r;
            } else if let Some(braced) = after.strip_prefix('{') {
                let end = braced.find('}').ok_or(VarError::Invalid)?;
                out.push_str(&self.braced(&braced[..end])?);
                rest = &braced[end + 1..];
            } else {
                let n = name_len(after);
                if n == 0 {
                    return Err(VarError::Invalid);
                }
                out.push_str(&self.get(&after[..n]).unwrap_or_default());
                rest = &after[n..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The inside of `${...}`.
    fn braced(&self, inner: &str) -> Result<String, VarError> {
        let n = name_len(inner);
        if n == 0 {
            return Err(VarError::Invalid);
        }
        let (name, op) = inner.split_at(n);
        let value = self.get(name);
        let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
        let required = |err: &str| {
            VarError::Required(if err.is_empty() {
                name.to_owned()
            } else {
                err.to_owned()
            })
        };
        if op.is_empty() {
            Ok(value.unwrap_or_default())
        } else if let Some(default) = op.strip_prefix(":-") {
            Ok(if set_nonempty {
                value.unwrap_or_default()
            } else {
                default.to_owned()
            })
        } else if let Some(err) = op.strip_prefix(":?") {
            value.filter(|_| set_nonempty).ok_or_else(|| required(err))
        } else if let Some(default) = op.strip_prefix('-') {
            Ok(value.unwrap_or_else(|| default.to_owned()))
        } else if let Some(err) = op.strip_prefix('?') {
            value.ok_or_else(|| required(err))
        } else {
            Err(VarError::Invalid)
        }
    }
}

/// The length of the variable name at the start of `s`
/// (`[_A-Za-z][_A-Za-z0-9]*`), 0 when there is none.
fn name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.first()
        .is_none_or(|c| !(c.is_ascii_alphabetic() || *c == b'_'))
    {
        return 0;
    }
    b.iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
        .unwrap_or(b.len())
}

/// A `.env` file as python-dotenv reads it for docker-compose: `KEY=VALUE`
/// lines (an optional `export `), `#` comments, values in single quotes
/// (literal), double quotes (with `\n`, `\"`, `\\` escapes) or bare (up
/// to a ` #` comment, trimmed); `${VAR}` and `${VAR:-default}` in
/// unquoted and double-quoted values from the lines above, else the
/// environment. Lines that are not assignments are skipped, as dotenv
/// skips them.
pub fn dotenv(text: &str, env: &dyn Fn(&str) -> Option<String>) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_matches(|c| c == '\'' || c == '"');
        if key.is_empty() || key.contains(char::is_whitespace) {
            continue;
        }
        let value = value.trim();
        let (value, expand) = if let Some(v) = value.strip_prefix('\'') {
            (v.split('\'').next().unwrap_or("").to_owned(), false)
        } else if let Some(v) = value.strip_prefix('"') {
            (unescape_double(v), true)
        } else {
            let bare = match value.find(" #") {
                Some(i) => &value[..i],
                None => value,
            };
            (bare.trim().to_owned(), true)
        };
        let value = if expand {
            expand_dotenv(&value, &vars, env)
        } else {
            value
        };
        vars.insert(key.to_owned(), value);
    }
    vars
}

/// A double-quoted value up to its closing quote, escapes applied.
fn unescape_double(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(o @ ('"' | '\\' | '\'')) => out.push(o),
                Some(o) => {
                    out.push('\\');
                    out.push(o);
                }
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// python-dotenv's expansion: `${NAME}` and `${NAME:-default}` only,
/// earlier lines of the file before the environment.
fn expand_dotenv(
    v: &str,
    vars: &HashMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let inner = &after[..end];
        let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
        let value = vars.get(name).cloned().or_else(|| env(name));
        out.push_str(&value.unwrap_or_else(|| default.to_owned()));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}
