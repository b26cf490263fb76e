//! The `portwatch` binary: parse, dispatch.

use std::process::ExitCode;

use clap::{
    error::{ContextKind, ContextValue, ErrorKind},
    CommandFactory as _, Parser as _,
};
use portwatch::{
    cli::Cli,
    commands::{EXIT_RUN_FAILED, EXIT_USAGE},
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line: what was wrong. The full usage is one --help away.
            eprintln!("portwatch: {}", usage_line(&e));
            // `run` leaves CMD's statuses to CMD: its own failures are 125.
            let run = std::env::args().nth(1).as_deref() == Some("run");
            return ExitCode::from(if run { EXIT_RUN_FAILED } else { EXIT_USAGE });
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    portwatch::memory::limit_arenas();
    match cli.command.execute() {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("portwatch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// One line for a command-line error, from clap's error kind and context
/// (never from its rendered text, which is for terminals).
fn usage_line(e: &clap::Error) -> String {
    let ctx = |kind| {
        e.get(kind).map(|v| match v {
            ContextValue::String(s) => s.clone(),
            ContextValue::Strings(v) => v.join(", "),
            ContextValue::StyledStr(s) => s.to_string(),
            ContextValue::StyledStrs(v) => v
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            ContextValue::Number(n) => n.to_string(),
            other => other.to_string(),
        })
    };
    let arg = ctx(ContextKind::InvalidArg).unwrap_or_default();
    let value = ctx(ContextKind::InvalidValue).unwrap_or_default();
    let suggestion = |kind| {
        ctx(kind)
            .map(|s| format!(" (did you mean '{s}'?)"))
            .unwrap_or_default()
    };
    match e.kind() {
        ErrorKind::ValueValidation => match std::error::Error::source(e) {
            Some(why) => format!("invalid value '{value}' for '{arg}': {why}"),
            None => format!("invalid value '{value}' for '{arg}'"),
        },
        ErrorKind::InvalidValue if value.is_empty() => format!("'{arg}' needs a value"),
        ErrorKind::InvalidValue => match ctx(ContextKind::ValidValue) {
            Some(valid) => format!("invalid value '{value}' for '{arg}' (one of: {valid})"),
            None => format!("invalid value '{value}' for '{arg}'"),
        },
        ErrorKind::UnknownArgument => format!(
            "unexpected argument '{arg}'{}",
            suggestion(ContextKind::SuggestedArg)
        ),
        ErrorKind::InvalidSubcommand => format!(
            "unknown subcommand '{}'{}",
            ctx(ContextKind::InvalidSubcommand).unwrap_or_default(),
            suggestion(ContextKind::SuggestedSubcommand)
        ),
        ErrorKind::MissingRequiredArgument => format!("missing argument {arg}"),
        ErrorKind::ArgumentConflict => match ctx(ContextKind::PriorArg) {
            Some(prior) => format!("'{arg}' cannot be used with '{prior}'"),
            None => format!("'{arg}' cannot be used here"),
        },
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let names: Vec<String> = Cli::command()
                .get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(|c| c.get_name().to_owned())
                .collect();
            format!("a subcommand is needed: {} (see --help)", names.join(", "))
        }
        ErrorKind::TooManyValues => format!("unexpected value '{value}' for '{arg}'"),
        ErrorKind::WrongNumberOfValues | ErrorKind::TooFewValues => {
            format!("wrong number of values for '{arg}'")
        }
        ErrorKind::NoEquals => format!("'{arg}' needs '=' before its value"),
        ErrorKind::InvalidUtf8 => "an argument is not valid UTF-8".to_owned(),
        kind => kind.as_str().unwrap_or("bad command line").to_owned(),
    }
}
