//! nginx's configuration syntax, read as `ngx_conf_read_token` reads it:
//! words (quoted with `"` or `'`, backslash escapes), `;` ending a
//! directive, `{ ... }` a block, `#` a comment; `include` expanded in
//! place (globs sorted as glob(3) sorts them, relative to the directory of
//! the main file, nginx's conf prefix). Nothing is run or resolved here.

use std::{
    collections::BTreeMap,
    ffi::{CStr, CString},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    rc::Rc,
};

use crate::preflight::{read_input, InputError};

/// One directive with its arguments, and its block's directives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The file it was read from.
    pub file: Rc<PathBuf>,
    /// Its line (1-based).
    pub line: u32,
    /// Its name and arguments (`listen`, `80`, `default_server`).
    pub words: Vec<String>,
    /// The directives of its `{ ... }` block, if it has one.
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    /// The directive's name.
    pub fn name(&self) -> &str {
        &self.words[0]
    }

    /// An error at this directive's place.
    pub fn error(&self, what: impl Into<String>) -> InputError {
        InputError::at(self.file.as_ref(), self.line, None, what)
    }
}

/// Where the files come from: the disk (`--nginx=FILE`), or the dump of
/// `nginx -T` (every file nginx read, each once, by its full name).
#[derive(Debug)]
pub enum Files {
    /// Read each file (and glob each include) from the disk.
    Disk,
    /// The files of a `nginx -T` dump.
    Dump(BTreeMap<PathBuf, String>),
}

impl Files {
    fn read(&self, path: &Path, at: Option<&Directive>) -> Result<String, InputError> {
        match self {
            Files::Disk => read_input(path),
            Files::Dump(files) => files.get(path).cloned().ok_or_else(|| {
                let what = format!("{} is not in nginx -T's dump", path.display());
                at.map_or_else(
                    || InputError::file(path, what.clone()),
                    |d| d.error(what.clone()),
                )
            }),
        }
    }

    /// The files an `include` pattern names, in glob(3)'s order; none for
    /// a pattern that matches nothing (nginx accepts it).
    fn glob(&self, pattern: &Path, at: &Directive) -> Result<Vec<PathBuf>, InputError> {
        let c = CString::new(pattern.as_os_str().as_bytes())
            .map_err(|_| at.error("a NUL byte in an include path"))?;
        match self {
            Files::Disk => disk_glob(&c)
                .map_err(|e| at.error(format!("glob() \"{}\" failed: {e}", pattern.display()))),
            Files::Dump(files) => Ok(files
                .keys()
                .filter(|name| fnmatch(&c, name))
                .cloned()
                .collect()),
        }
    }
}

/// glob(3) as nginx calls it (flags 0: sorted, no match for dot files by
/// `*`); GLOB_NOMATCH is an empty list.
fn disk_glob(pattern: &CStr) -> Result<Vec<PathBuf>, String> {
    use std::os::unix::ffi::OsStringExt as _;
    // SAFETY: glob_t is plain data; zeroed is its documented initial state.
    let mut g: libc::glob_t = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated pattern, no error callback, and `g`
    // outlives the call; globfree below releases what glob allocated.
    let rc = unsafe { libc::glob(pattern.as_ptr(), 0, None, &mut g) };
    let out = match rc {
        0 => {
            let mut paths = Vec::with_capacity(g.gl_pathc);
            for i in 0..g.gl_pathc {
                // SAFETY: glob filled gl_pathv with gl_pathc valid C strings.
                let p = unsafe { CStr::from_ptr(*g.gl_pathv.add(i)) };
                paths.push(PathBuf::from(std::ffi::OsString::from_vec(
                    p.to_bytes().to_vec(),
                )));
            }
            Ok(paths)
        }
        libc::GLOB_NOMATCH => Ok(Vec::new()),
        libc::GLOB_NOSPACE => Err("out of memory".into()),
        _ => Err("read error".into()),
    };
    // SAFETY: `g` was filled by glob (or is zeroed, which globfree accepts).
    unsafe { libc::globfree(&mut g) };
    out
}

/// Whether `name` matches `pattern` as glob(3) would match it.
fn fnmatch(pattern: &CStr, name: &Path) -> bool {
    let Ok(name) = CString::new(name.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: two NUL-terminated strings that outlive the call.
    unsafe {
        libc::fnmatch(
            pattern.as_ptr(),
            name.as_ptr(),
            libc::FNM_PATHNAME | libc::FNM_PERIOD,
        ) == 0
    }
}

/// How deep includes may nest: nginx has no limit, but a file that
/// includes itself would never end here.
const MAX_DEPTH: usize = 32;

/// The configuration rooted at `main`, includes expanded.
pub fn parse(main: &Path, files: &Files) -> Result<Vec<Directive>, InputError> {
    let prefix = main.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut p = Parser {
        files,
        prefix,
        depth: 0,
    };
    p.file(main, None)
}

struct Parser<'a> {
    files: &'a Files,
    prefix: PathBuf,
    depth: usize,
}

impl Parser<'_> {
    fn file(&mut self, path: &Path, at: Option<&Directive>) -> Result<Vec<Directive>, InputError> {
        if self.depth >= MAX_DEPTH {
            let what = format!("includes nest deeper than {MAX_DEPTH} (a file includes itself?)");
            return Err(at.map_or_else(
                || InputError::file(path, what.clone()),
                |d| d.error(what.clone()),
            ));
        }
        let text = self.files.read(path, at)?;
        let name = Rc::new(path.to_path_buf());
        let mut lexer = Lexer::new(&text, name.clone());
        self.depth += 1;
        let list = self.block(&mut lexer, false)?;
        self.depth -= 1;
        Ok(list)
    }

    /// Directives up to the end of the file (`inner`: up to the `}`).
    fn block(&mut self, lx: &mut Lexer<'_>, inner: bool) -> Result<Vec<Directive>, InputError> {
        let mut list = Vec::new();
        loop {
            let (words, end, line) = lx.directive()?;
            match end {
                End::Eof if inner => {
                    return Err(lx.error("unexpected end of file, expecting \"}\""));
                }
                End::Eof => return Ok(list),
                End::Close if !inner => return Err(lx.error("unexpected \"}\"")),
                End::Close => return Ok(list),
                End::Semicolon | End::Open => {}
            }
            let mut d = Directive {
                file: lx.file.clone(),
                line,
                words,
                block: None,
            };
            if end == End::Open {
                d.block = Some(self.block(lx, true)?);
                list.push(d);
                continue;
            }
            if d.name() == "include" {
                if d.words.len() != 2 {
                    return Err(d.error("invalid number of arguments in \"include\" directive"));
                }
                let pattern = self.prefix.join(&d.words[1]);
                if d.words[1].contains(['*', '?', '[']) {
                    for f in self.files.glob(&pattern, &d)? {
                        list.extend(self.file(&f, Some(&d))?);
                    }
                } else {
                    list.extend(self.file(&pattern, Some(&d))?);
                }
                continue;
            }
            list.push(d);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Semicolon,
    Open,
    Close,
    Eof,
}

struct Lexer<'a> {
    text: &'a [u8],
    pos: usize,
    line: u32,
    col: u32,
    file: Rc<PathBuf>,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str, file: Rc<PathBuf>) -> Self {
        Self {
            text: text.as_bytes(),
            pos: 0,
            line: 1,
            col: 1,
            file,
        }
    }

    fn error(&self, what: &str) -> InputError {
        InputError::at(self.file.as_ref(), self.line, Some(self.col), what)
    }

    fn next(&mut self) -> Option<u8> {
        let c = *self.text.get(self.pos)?;
        self.pos += 1;
        if c == b'\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    /// One directive's words and what ended it, with the line of its
    /// first word.
    fn directive(&mut self) -> Result<(Vec<String>, End, u32), InputError> {
        let mut words = Vec::new();
        let mut line = self.line;
        loop {
            // Between words: spaces and comments.
            let Some(c) = self.peek() else {
                if words.is_empty() {
                    return Ok((words, End::Eof, line));
                }
                return Err(self.error("unexpected end of file, expecting \";\" or \"}\""));
            };
            match c {
                b' ' | b'\t' | b'\r' | b'\n' => {
                    self.next();
                }
                b'#' => while self.next().is_some_and(|c| c != b'\n') {},
                b';' | b'{' => {
                    self.next();
                    if words.is_empty() {
                        return Err(self.error(&format!("unexpected \"{}\"", c as char)));
                    }
                    let end = if c == b';' { End::Semicolon } else { End::Open };
                    return Ok((words, end, line));
                }
                b'}' => {
                    self.next();
                    if !words.is_empty() {
                        return Err(self.error("unexpected \"}\""));
                    }
                    return Ok((words, End::Close, line));
                }
                _ => {
                    if words.is_empty() {
                        line = self.line;
                    }
                    words.push(self.word()?);
                }
            }
        }
    }

    /// One word, unquoted and unescaped as nginx does.
    fn word(&mut self) -> Result<String, InputError> {
        let quote = match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                self.next();
                Some(q)
            }
            _ => None,
        };
        let mut out = Vec::new();
        let mut variable = false;
        loop {
            let Some(c) = self.peek() else {
                if quote.is_some() {
                    return Err(self.error("unexpected end of file, expecting \";\" or \"}\""));
                }
                break;
            };
            if quote.is_none() && matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b';') {
                break;
            }
            // `${name}` keeps its braces; any other `{` ends the word.
            if quote.is_none() && c == b'{' && !variable {
                break;
            }
            self.next();
            variable = c == b'$';
            if c == b'\\' {
                match self.next() {
                    Some(e @ (b'"' | b'\'' | b'\\')) => out.push(e),
                    Some(b't') => out.push(b'\t'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b'n') => out.push(b'\n'),
                    Some(e) => out.extend([b'\\', e]),
                    None => out.push(b'\\'),
                }
                continue;
            }
            if Some(c) == quote {
                // A quoted word must be followed by a space, `;` or `{`.
                match self.peek() {
                    None | Some(b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' | b')') => {}
                    Some(o) => return Err(self.error(&format!("unexpected \"{}\"", o as char))),
                }
                break;
            }
            out.push(c);
        }
        String::from_utf8(out).map_err(|_| self.error("a word that is not UTF-8"))
    }
}

/// The files of a `nginx -T` dump, by full name: each starts with a line
/// `# configuration file NAME:` and ends with the newline nginx adds. The
/// first is the main file. (A comment of exactly that form inside a file
/// would be taken for a header: nginx's dump has no other delimiter.)
pub fn split_dump(dump: &str) -> Result<(PathBuf, BTreeMap<PathBuf, String>), String> {
    let mut files = BTreeMap::new();
    let mut main = None;
    let mut current: Option<(PathBuf, String)> = None;
    for line in dump.split_inclusive('\n') {
        let header = line
            .strip_prefix("# configuration file ")
            .and_then(|r| r.trim_end_matches('\n').strip_suffix(':'))
            .filter(|name| name.starts_with('/'));
        match header {
            Some(name) => {
                if let Some((n, text)) = current.take() {
                    files.insert(n, text);
                }
                let name = PathBuf::from(name);
                main.get_or_insert_with(|| name.clone());
                current = Some((name, String::new()));
            }
            None => match &mut current {
                Some((_, text)) => text.push_str(line),
                None if line.trim().is_empty() => {}
                None => return Err("nginx -T printed no \"# configuration file\" header".into()),
            },
        }
    }
    if let Some((n, mut text)) = current.take() {
        // The newline nginx writes after each file.
        if text.ends_with('\n') {
            text.pop();
        }
        files.insert(n, text);
    }
    let main = main.ok_or("nginx -T printed no configuration")?;
    Ok((main, files))
}
