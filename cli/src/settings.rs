//! Settings files for the command lines: `pando-node --config FILE` and `pando`'s profile file. A file is TOML whose
//! keys are the program's long flags (`snapshot-every = 5000`, `job-queues = ["default", "mail"]`, `json = true`);
//! `snake_case` spellings are accepted too. The file's settings become flags placed before the command line's, and
//! each is taken only when neither the command line names that flag nor the flag's environment variable is set, so
//! the order of precedence is: command line, then environment, then the file, then the built-in default. One
//! mechanism serves every flag, present and future, so a file can never fall behind the flags it configures.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Largest settings file read (a ticket is a few hundred bytes; nobody has a megabyte of flags).
pub const SETTINGS_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Why a settings file could not be used. Each names the file, and the key where one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is larger than {SETTINGS_FILE_BYTES_MAX} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: unknown setting `{key}`; the settings are the long flags of `{program} --help`")]
    UnknownKey { path: PathBuf, key: String, program: String },
    #[error("{path}: setting `{key}` {problem}")]
    BadValue { path: PathBuf, key: String, problem: String },
    #[error("{path}: no profile `{profile}` (profiles are the file's [profile.NAME] tables)")]
    NoProfile { path: PathBuf, profile: String },
}

/// The value of flag `--NAME` on a command line (`--NAME VALUE` or `--NAME=VALUE`, before any `--`), else of
/// environment variable `env` when set and not empty: how a program finds its settings file or profile before it
/// parses the rest.
pub fn flag_value(args: &[OsString], name: &str, env: &str) -> Option<OsString> {
    let flag = format!("--{name}");
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == flag {
            return rest.next().cloned();
        }
        if let Some(value) = text.strip_prefix(&flag).and_then(|rest| rest.strip_prefix('=')) {
            return Some(value.into());
        }
    }
    std::env::var_os(env).filter(|value| !value.is_empty())
}

/// `VERSION (protocol N)`: what `--version` and `pando version` print for a program of package version `version`.
pub fn version_line(version: &str) -> String {
    format!("{version} (protocol {})", pando_protocol::PROTOCOL_VERSION)
}

/// Reads and parses a settings file.
pub fn read(path: &Path) -> Result<toml::Table, SettingsError> {
    let read_error = |source| SettingsError::Read { path: path.to_path_buf(), source };
    let length = std::fs::metadata(path).map_err(read_error)?.len();
    if length > SETTINGS_FILE_BYTES_MAX {
        return Err(SettingsError::TooLarge { path: path.to_path_buf() });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    text.parse::<toml::Table>()
        .map_err(|error| SettingsError::Syntax { path: path.to_path_buf(), message: error.message().to_string() })
}

/// `args` (the program's name first) with `settings` inserted as flags after the name, each only where the command
/// line does not name the flag and its environment variable is unset. `command` is the program's clap command: a key
/// must be one of its long flags. Tables in `settings` are skipped (a profile file's `[profile.NAME]` sections).
/// `related` lists groups of flags that say the same thing two ways (`ticket` and `ticket-file`): a setting of one is
/// skipped when the command line or the environment gives any flag of its group.
pub fn apply(
    command: &clap::Command,
    args: Vec<OsString>,
    settings: &toml::Table,
    path: &Path,
    related: &[&[&str]],
) -> Result<Vec<OsString>, SettingsError> {
    let mut injected = Vec::new();
    for (key, value) in settings {
        if value.is_table() {
            continue;
        }
        let long = key.replace('_', "-");
        let unknown = || SettingsError::UnknownKey {
            path: path.to_path_buf(),
            key: key.clone(),
            program: command.get_name().to_string(),
        };
        let find = |long: &str| command.get_arguments().find(|arg| arg.get_long() == Some(long) && !arg.is_hide_set());
        let arg = find(&long).ok_or_else(unknown)?;
        let group: Vec<&str> = related
            .iter()
            .find(|group| group.contains(&long.as_str()))
            .map_or_else(|| vec![long.as_str()], |group| group.to_vec());
        let given = |long: &str| {
            find(long).is_some_and(|arg| {
                named_on_command_line(&args, long, arg.get_short())
                    || arg.get_env().is_some_and(|name| std::env::var_os(name).is_some())
            })
        };
        if group.iter().any(|long| given(long)) {
            continue;
        }
        let bad = |problem: &str| SettingsError::BadValue {
            path: path.to_path_buf(),
            key: key.clone(),
            problem: problem.to_string(),
        };
        let takes_value = arg.get_action().takes_values();
        // `--flag=VALUE` in one argument, so a value that starts with `-` is never read as a flag.
        let with_value = |value: OsString| {
            let mut argument = OsString::from(format!("--{long}="));
            argument.push(value);
            argument
        };
        match value {
            toml::Value::Boolean(set) if !takes_value => {
                if *set {
                    injected.push(OsString::from(format!("--{long}")));
                }
            }
            toml::Value::Boolean(_) => return Err(bad("takes a value, not true or false")),
            _ if !takes_value => return Err(bad("is a switch: write true or false")),
            toml::Value::Array(items) => {
                for item in items {
                    injected.push(with_value(scalar(item).ok_or_else(|| bad("holds a list of lists or tables"))?));
                }
            }
            other => {
                injected.push(with_value(scalar(other).ok_or_else(|| bad("has a value of an unsupported type"))?));
            }
        }
    }
    let mut args = args.into_iter();
    let mut merged: Vec<OsString> = args.next().into_iter().collect();
    merged.extend(injected);
    merged.extend(args);
    Ok(merged)
}

/// The settings of profile `name` in a profile file: the file's top-level keys, overridden by its `[profile.NAME]`
/// table. `None` takes the top-level keys alone.
pub fn profile(file: &toml::Table, name: Option<&str>, path: &Path) -> Result<toml::Table, SettingsError> {
    let mut settings: toml::Table = file.iter().filter(|(_, value)| !value.is_table()).map(clone_entry).collect();
    if let Some(name) = name {
        let chosen = file
            .get("profile")
            .and_then(|profiles| profiles.get(name))
            .and_then(toml::Value::as_table)
            .ok_or_else(|| SettingsError::NoProfile { path: path.to_path_buf(), profile: name.to_string() })?;
        settings.extend(chosen.iter().map(clone_entry));
    }
    Ok(settings)
}

fn clone_entry((key, value): (&String, &toml::Value)) -> (String, toml::Value) {
    (key.clone(), value.clone())
}

fn scalar(value: &toml::Value) -> Option<OsString> {
    match value {
        toml::Value::String(text) => Some(text.into()),
        toml::Value::Integer(number) => Some(number.to_string().into()),
        toml::Value::Float(number) => Some(number.to_string().into()),
        toml::Value::Boolean(set) => Some(set.to_string().into()),
        toml::Value::Datetime(time) => Some(time.to_string().into()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// Whether `--long`, `--long=VALUE` or `-s` appears among the arguments (the program's name excluded). Everything
/// after `--` is positional.
fn named_on_command_line(args: &[OsString], long: &str, short: Option<char>) -> bool {
    let bare = format!("--{long}");
    let with_value = format!("--{long}=");
    let short = short.map(|short| format!("-{short}"));
    for arg in args.iter().skip(1).filter_map(|arg| arg.to_str()) {
        if arg == "--" {
            return false;
        }
        if arg == bare || arg.starts_with(&with_value) || short.as_deref().is_some_and(|short| arg.starts_with(short)) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("prog")
            .arg(clap::Arg::new("data_dir").long("data-dir").required(true))
            .arg(clap::Arg::new("workers").long("workers").default_value("4"))
            .arg(clap::Arg::new("queue").long("queue").action(clap::ArgAction::Append))
            .arg(clap::Arg::new("verbose").long("verbose").action(clap::ArgAction::SetTrue))
            .arg(clap::Arg::new("bind").long("bind").env("SETTINGS_TEST_BIND_UNSET_ZZ"))
    }

    fn parse(settings: &str, args: &[&str]) -> Result<clap::ArgMatches, SettingsError> {
        let table: toml::Table = settings.parse().expect("test settings parse");
        let args: Vec<OsString> = std::iter::once("prog").chain(args.iter().copied()).map(OsString::from).collect();
        let merged = apply(&command(), args, &table, Path::new("test.toml"), &[&["bind", "workers"]])?;
        Ok(command().try_get_matches_from(merged).expect("merged arguments parse"))
    }

    #[test]
    fn a_flag_is_found_in_either_spelling_before_a_double_dash_else_in_its_environment_variable() {
        let args = |words: &[&str]| -> Vec<OsString> {
            std::iter::once("prog").chain(words.iter().copied()).map(OsString::from).collect()
        };
        let env = "SETTINGS_TEST_FLAG_VALUE_UNSET_ZZ";
        assert_eq!(flag_value(&args(&["--config", "a.toml"]), "config", env), Some("a.toml".into()));
        assert_eq!(flag_value(&args(&["x", "--config=b.toml"]), "config", env), Some("b.toml".into()));
        assert_eq!(flag_value(&args(&["--configs=c"]), "config", env), None);
        assert_eq!(flag_value(&args(&["--", "--config", "d"]), "config", env), None);
        assert_eq!(flag_value(&args(&["--config"]), "config", env), None);
        assert_eq!(version_line("1.2.3"), format!("1.2.3 (protocol {})", pando_protocol::PROTOCOL_VERSION));
    }

    #[test]
    fn a_file_supplies_flags_the_command_line_leaves_out() {
        let matches = parse("data-dir = \"/d\"\nworkers = 8\nverbose = true\nqueue = [\"a\", \"b\"]", &[]).unwrap();
        assert_eq!(matches.get_one::<String>("data_dir").unwrap(), "/d");
        assert_eq!(matches.get_one::<String>("workers").unwrap(), "8");
        assert!(matches.get_flag("verbose"));
        let queues: Vec<&String> = matches.get_many::<String>("queue").unwrap().collect();
        assert_eq!(queues, ["a", "b"]);
    }

    #[test]
    fn the_command_line_takes_precedence_over_the_file() {
        let matches = parse("data-dir = \"/d\"\nworkers = 8", &["--workers", "2", "--data-dir=/e"]).unwrap();
        assert_eq!(matches.get_one::<String>("workers").unwrap(), "2");
        assert_eq!(matches.get_one::<String>("data_dir").unwrap(), "/e");
    }

    #[test]
    fn snake_case_keys_name_the_same_flags() {
        let matches = parse("data_dir = \"/d\"", &[]).unwrap();
        assert_eq!(matches.get_one::<String>("data_dir").unwrap(), "/d");
    }

    #[test]
    fn an_unknown_key_or_a_wrong_kind_of_value_is_refused_by_name() {
        let error = parse("data-dir = \"/d\"\nworkerz = 1", &[]).unwrap_err();
        assert!(error.to_string().contains("unknown setting `workerz`"), "{error}");
        let error = parse("data-dir = \"/d\"\nverbose = 1", &[]).unwrap_err();
        assert!(error.to_string().contains("`verbose` is a switch"), "{error}");
        let error = parse("data-dir = true", &[]).unwrap_err();
        assert!(error.to_string().contains("`data-dir` takes a value"), "{error}");
    }

    #[test]
    fn a_value_that_starts_with_a_dash_stays_a_value() {
        let matches = parse("data-dir = \"-d\"\nqueue = [\"-a\"]", &[]).unwrap();
        assert_eq!(matches.get_one::<String>("data_dir").unwrap(), "-d");
        assert_eq!(matches.get_many::<String>("queue").unwrap().collect::<Vec<_>>(), ["-a"]);
    }

    #[test]
    fn a_flag_given_on_the_command_line_keeps_the_file_from_setting_a_related_one() {
        let matches = parse("data-dir = \"/d\"\nbind = \"a\"", &["--workers", "2"]).unwrap();
        assert_eq!(matches.get_one::<String>("bind"), None);
    }

    #[test]
    fn a_false_switch_adds_nothing() {
        let matches = parse("data-dir = \"/d\"\nverbose = false", &[]).unwrap();
        assert!(!matches.get_flag("verbose"));
    }

    #[test]
    fn a_profile_overrides_the_top_level_settings() {
        let file: toml::Table = "workers = 1\nbind = \"a\"\n[profile.prod]\nworkers = 9".parse().unwrap();
        let chosen = profile(&file, Some("prod"), Path::new("p.toml")).unwrap();
        assert_eq!(chosen.get("workers").and_then(toml::Value::as_integer), Some(9));
        assert_eq!(chosen.get("bind").and_then(toml::Value::as_str), Some("a"));
        assert!(!chosen.contains_key("profile"));
        let error = profile(&file, Some("staging"), Path::new("p.toml")).unwrap_err();
        assert!(error.to_string().contains("no profile `staging`"), "{error}");
    }

    #[test]
    fn arguments_after_a_double_dash_do_not_count_as_flags() {
        let args: Vec<OsString> = ["prog", "--", "--workers"].iter().map(OsString::from).collect();
        assert!(!named_on_command_line(&args, "workers", None));
        let args: Vec<OsString> = ["prog", "--workers", "--"].iter().map(OsString::from).collect();
        assert!(named_on_command_line(&args, "workers", None));
    }
}
