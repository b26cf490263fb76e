//! `portwatch man [SUBCOMMAND] [--dir DIR]`: the manual, generated from the
//! clap definitions at run time so it cannot drift from `--help`.
//!
//! A root-only tool's pages belong in section 8: portwatch(8), the overview,
//! and one page per subcommand, portwatch-SUB(8), each with its options,
//! examples and exit statuses. Every page's SEE ALSO names only these pages.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_mangen::Man;

use crate::cli::{Cli, ManArgs};

/// The manual section of every page.
pub const SECTION: &str = "8";

/// One manual page: its file name (`portwatch-who.8`) and its roff text.
pub struct Page {
    /// The file name, `NAME.8`.
    pub file: String,
    /// The page in roff.
    pub roff: Vec<u8>,
}

/// Prints one page to stdout (portwatch(8), or SUBCOMMAND's), or with
/// `--dir` writes every page into DIR.
pub fn run(args: &ManArgs) -> Result<()> {
    if let Some(dir) = &args.dir {
        for page in pages()? {
            write_page(dir, &page)?;
            println!("{}", dir.join(&page.file).display());
        }
        return Ok(());
    }
    let name = match &args.subcommand {
        Some(sub) => format!("portwatch-{sub}.{SECTION}"),
        None => format!("portwatch.{SECTION}"),
    };
    let page = pages()?
        .into_iter()
        .find(|p| p.file == name)
        .with_context(|| format!("no page {name}"))?;
    let mut stdout = io::stdout().lock();
    match stdout.write_all(&page.roff).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

/// The command the pages describe: no `help` subcommand (it has no page).
fn command() -> clap::Command {
    let mut cmd = Cli::command()
        .name("portwatch")
        .disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Every page, portwatch(8) first, then one per subcommand.
pub fn pages() -> Result<Vec<Page>> {
    let cmd = command();
    let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    let names: Vec<String> = std::iter::once("portwatch".to_owned())
        .chain(subs.iter().map(|s| format!("portwatch-{}", s.get_name())))
        .collect();
    let source = format!("portwatch {}", cmd.get_version().unwrap_or_default());

    let mut pages = Vec::with_capacity(names.len());
    let man = Man::new(cmd.clone())
        .title("PORTWATCH")
        .section(SECTION)
        .source(source.clone());
    let mut roff = head(&man)?;
    // Names each portwatch-SUB(8) with its one-line summary.
    man.render_subcommands_section(&mut roff)?;
    man.render_version_section(&mut roff)?;
    see_also(&mut roff, &names, "portwatch");
    pages.push(Page {
        file: format!("portwatch.{SECTION}"),
        roff,
    });

    for sub in subs {
        let name = format!("portwatch-{}", sub.get_name());
        let sub = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("portwatch {}", sub.get_name()));
        let man = Man::new(sub)
            .title(name.to_uppercase())
            .section(SECTION)
            .source(source.clone());
        let mut roff = head(&man)?;
        let mut extra = Vec::new();
        man.render_extra_section(&mut extra)?;
        roff.extend_from_slice(&headings(&extra));
        see_also(&mut roff, &names, &name);
        pages.push(Page {
            file: format!("{name}.{SECTION}"),
            roff,
        });
    }
    Ok(pages)
}

/// What every page starts with: title, name, synopsis, description, options.
fn head(man: &Man) -> Result<Vec<u8>> {
    let mut roff = Vec::new();
    man.render_title(&mut roff)?;
    man.render_name_section(&mut roff)?;
    man.render_synopsis_section(&mut roff)?;
    man.render_description_section(&mut roff)?;
    man.render_options_section(&mut roff)?;
    Ok(roff)
}

/// The after-help text's own headings (`EXAMPLES:`, `EXIT STATUS:`) become
/// sections of the page instead of lines under one "EXTRA", and its
/// indented lines (commands, exit statuses) are kept as written, not filled.
fn headings(extra: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    let mut verbatim = false;
    for line in String::from_utf8_lossy(extra).lines() {
        if line == ".SH EXTRA" {
            continue;
        }
        let indented = line.starts_with("    ");
        if indented != verbatim {
            out.push_str(if indented { ".nf\n" } else { ".fi\n" });
            verbatim = indented;
        }
        match line.strip_suffix(':') {
            Some(h) if !h.is_empty() && h.chars().all(|c| c.is_ascii_uppercase() || c == ' ') => {
                out.push_str(&format!(".SH \"{h}\"\n"));
            }
            // The section already indents: drop the help text's own four spaces.
            _ => {
                out.push_str(if indented { &line[4..] } else { line });
                out.push('\n');
            }
        }
    }
    if verbatim {
        out.push_str(".fi\n");
    }
    out.into_bytes()
}

/// A SEE ALSO section naming every page but `this` one.
fn see_also(roff: &mut Vec<u8>, names: &[String], this: &str) {
    let refs: Vec<String> = names
        .iter()
        .filter(|n| *n != this)
        .map(|n| format!("\\fB{}\\fR({SECTION})", n.replace('-', "\\-")))
        .collect();
    roff.extend_from_slice(format!(".SH \"SEE ALSO\"\n.nh\n{}\n.hy\n", refs.join(", ")).as_bytes());
}

/// Writes `page` into `dir` (created if missing). Documentation, not data:
/// 0644 so `man` reads it as any user; O_NOFOLLOW so a symlink planted in
/// DIR is refused rather than followed.
fn write_page(dir: &Path, page: &Page) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(&page.file);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(&page.roff)
        .with_context(|| format!("writing {}", path.display()))
}
