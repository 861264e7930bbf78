//! The `pando-node` binary before it serves: usage, refused flags and refused data directories, each failing at once
//! with a message naming what is wrong. Being an integration test of this package also makes cargo build `pando-node`
//! in every test run, so the process tests in `fixtures/` start the binary this very build made.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn pando_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pando-node"))
        .args(args)
        .env_remove("PANDO_DATA_DIR")
        .env_remove("PANDO_BIND")
        .env_remove("PANDO_JOIN")
        .env("PANDO_LOG", "warn")
        .output()
        .expect("pando-node runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_names_the_data_directory() {
    let output = pando_node(&["--help"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("--data-dir"));
}

#[test]
fn a_node_without_a_data_directory_is_refused() {
    let output = pando_node(&[]);
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
    assert!(stderr(&output).contains("--data-dir"), "{}", stderr(&output));
}

#[test]
fn an_out_of_range_flag_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = pando_node(&["--data-dir", data_dir.to_str().unwrap(), "--blob-replicas", "0"]);
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
    assert!(stderr(&output).contains("--blob-replicas"), "{}", stderr(&output));
    assert!(!data_dir.exists(), "a refused start created its data directory");
}

#[test]
fn a_data_directory_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let output = pando_node(&["--data-dir", file.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("cannot create data directory"), "{}", stderr(&output));
}

#[test]
fn a_node_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = pando_node(&["--data-dir", dir.path().to_str().unwrap(), "--bind", "127.0.0.1:0"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("readable by others") && message.contains("chmod 600"), "{message}");
}
