//! Config and scenario files, read through the options' own declarations: a
//! table's keys are the options' field names (`failure_rate` for
//! `--failure-rate`), and each value is checked by the option's own value
//! parser, then handed to clap as if typed, so it is parsed exactly as a flag.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction};

use crate::settings::SettingsError;

/// Where file values come from, for messages.
#[derive(Debug, Clone)]
pub(super) enum Origin {
    /// A file the user named.
    File(PathBuf),
    /// A copy compiled into the binary.
    BuiltIn(&'static str),
}

impl Origin {
    /// How the source is named in a message.
    pub(super) fn name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::BuiltIn(what) => (*what).to_owned(),
        }
    }

    /// A problem with the whole file.
    pub(super) fn unusable(&self, reason: impl Into<String>) -> SettingsError {
        SettingsError::ConfigUnreadable {
            path: self.name(),
            reason: reason.into(),
        }
    }
}

/// Reads and parses the TOML file at `path`.
pub(super) fn load(path: &Path) -> Result<toml::Table, SettingsError> {
    let origin = Origin::File(path.to_owned());
    let text = std::fs::read_to_string(path).map_err(|err| origin.unusable(err.to_string()))?;
    parse(&text, &origin)
}

/// Parses TOML text; the error is one line naming the line it is on.
pub(super) fn parse(text: &str, origin: &Origin) -> Result<toml::Table, SettingsError> {
    text.parse::<toml::Table>().map_err(|err| {
        let message = err.message().replace('\n', " ");
        let reason = match err.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {}", message.trim())
            }
            None => message.trim().to_owned(),
        };
        origin.unusable(reason)
    })
}

/// The options of `command` a file may set, found by key.
fn option<'c>(command: &'c clap::Command, key: &str) -> Option<&'c Arg> {
    command
        .get_arguments()
        .find(|arg| arg.get_id() == key && arg.get_long().is_some() && arg.get_id() != "config")
}

/// Turns the plain (non-table) entries of `table` into `--long=value`
/// arguments of `command`, each checked first by the option's own parser so a
/// bad value is named with its key and file. `section` prefixes keys in
/// messages (`send.`); `skip` says which options were already given.
pub(super) fn arguments(
    command: &clap::Command,
    table: &toml::Table,
    section: &str,
    origin: &Origin,
    skip: impl Fn(&Arg) -> bool,
) -> Result<Vec<OsString>, SettingsError> {
    let mut argv = Vec::new();
    for (key, value) in table {
        if value.is_table() || value_is_tables(value) {
            continue;
        }
        let Some(arg) = option(command, key) else {
            return Err(origin.unusable(unknown_key(command, section, key)));
        };
        let long = arg.get_long().unwrap_or(key);
        let invalid = |value: String, reason: String| SettingsError::Invalid {
            option: format!("{section}{key}"),
            value,
            origin: format!(" in config file '{}'", origin.name()),
            reason,
        };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            let Some(on) = value.as_bool() else {
                return Err(invalid(
                    value.to_string(),
                    "expected true or false".to_owned(),
                ));
            };
            if on && !skip(arg) {
                argv.push(OsString::from(format!("--{long}")));
            }
            continue;
        }
        let Some(text) = scalar(value) else {
            return Err(invalid(
                value.to_string(),
                "expected a single value".to_owned(),
            ));
        };
        check(arg, &text).map_err(|reason| invalid(text.clone(), reason))?;
        if !skip(arg) {
            argv.push(OsString::from(format!("--{long}={text}")));
        }
    }
    Ok(argv)
}

/// Whether `value` is a non-empty array of tables (`[[senders]]`).
fn value_is_tables(value: &toml::Value) -> bool {
    value
        .as_array()
        .is_some_and(|items| !items.is_empty() && items.iter().all(toml::Value::is_table))
}

/// A scalar TOML value as it would be typed on the command line.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Runs the option's own value parser on `text`, on a command holding just
/// that option; the error is the check's reason.
fn check(arg: &Arg, text: &str) -> Result<(), String> {
    let alone = arg
        .clone()
        .env(None::<&str>)
        .global(false)
        .requires(clap::builder::Resettable::Reset)
        .conflicts_with(clap::builder::Resettable::Reset);
    let long = arg.get_long().unwrap_or_default();
    let outcome = clap::Command::new("check")
        .no_binary_name(true)
        .arg(alone)
        .try_get_matches_from([format!("--{long}={text}")]);
    match outcome {
        Ok(_) => Ok(()),
        Err(err) => Err(match std::error::Error::source(&err) {
            Some(reason) => reason.to_string(),
            None => {
                let values: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .map(|v| v.get_name().to_owned())
                    .collect();
                if values.is_empty() {
                    super::one_line_error(&err.render().to_string())
                } else {
                    format!("expected one of {}", values.join(", "))
                }
            }
        }),
    }
}

/// The message for a key no option of `command` has.
fn unknown_key(command: &clap::Command, section: &str, key: &str) -> String {
    let known: Vec<&str> = command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some() && arg.get_id() != "config")
        .map(|arg| arg.get_id().as_str())
        .collect();
    let table = match section.strip_suffix('.') {
        Some(name) => format!(" in [{name}]"),
        None => " at the top level".to_owned(),
    };
    format!(
        "unknown key '{key}'{table}; known keys: {}",
        known.join(", ")
    )
}
