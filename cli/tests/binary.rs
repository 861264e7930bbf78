//! The `pando` binary on its own, without a node: usage, and the errors a user meets before any connection. Being an
//! integration test of this package also makes cargo build `pando` in every test run, so the process tests in
//! `fixtures/` start the binary this very build made.

use std::process::{Command, Output};

fn pando(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pando")).args(args).env_remove("PANDO_TICKET").output().expect("pando runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_the_command_groups() {
    let output = pando(&["--help"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let usage = String::from_utf8_lossy(&output.stdout);
    for group in ["kv", "cluster", "lease", "lock", "queue", "blob", "plugin", "bench"] {
        assert!(usage.contains(group), "`pando --help` does not mention `{group}`:\n{usage}");
    }
}

#[test]
fn a_command_without_a_ticket_names_where_to_find_one() {
    let output = pando(&["kv", "get", "x"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("no ticket") && message.contains("PANDO_TICKET"), "{message}");
}

#[test]
fn a_garbage_ticket_is_an_invalid_argument() {
    let output = pando(&["kv", "get", "x", "--ticket", "pando1garbage"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("INVALID_ARGUMENT"), "{}", stderr(&output));
}

#[test]
fn an_unknown_command_is_refused_with_usage() {
    let output = pando(&["kv", "frobnicate"]);
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
    assert!(stderr(&output).contains("frobnicate"), "{}", stderr(&output));
}
