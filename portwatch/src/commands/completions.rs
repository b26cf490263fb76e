//! `portwatch completions SHELL` and `portwatch man`: generated from the clap
//! definitions at run time, so they cannot drift from `--help`.

use std::io::{self, Write as _};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// Prints the completion script for `shell`.
pub fn completions(shell: Shell) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "portwatch", &mut out);
    write_out(&out)
}

/// Prints the manual page: portwatch(1) with every subcommand's options,
/// examples and exit statuses in sections of their own.
pub fn man() -> Result<()> {
    let mut out = Vec::new();
    page(&mut out)?;
    write_out(&out)
}

/// Renders the whole manual into `out`.
pub fn page(out: &mut Vec<u8>) -> Result<()> {
    let cmd = Cli::command().name("portwatch");
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    // Each subcommand's own options and its EXAMPLES (the after_help text).
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("portwatch {}", sub.get_name());
        let sub = sub.clone().display_name(full.clone()).bin_name(full);
        let page = clap_mangen::Man::new(sub.clone());
        let mut section = Vec::new();
        page.render_synopsis_section(&mut section)?;
        page.render_description_section(&mut section)?;
        page.render_options_section(&mut section)?;
        page.render_extra_section(&mut section)?;
        // The sub-page's headings become sub-headings of one SUBCOMMAND section.
        let text = String::from_utf8_lossy(&section)
            .replace(".SH ", ".SS ")
            .replace(
                ".SS SYNOPSIS",
                &format!(".SH \"{}\"", sub.get_name().to_uppercase()),
            );
        out.extend_from_slice(text.as_bytes());
    }
    man.render_version_section(out)?;
    Ok(())
}

fn write_out(bytes: &[u8]) -> Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}
