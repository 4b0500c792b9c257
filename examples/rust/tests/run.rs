//! The Rust embedding example prints what the C and Python examples print
//! (`examples/expected-output.txt`; the C and Python runs are checked in
//! `crates/ffi/tests/c.rs`).
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::Path;
use std::process::Command;

#[test]
fn the_rust_example_prints_the_expected_output() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_embed")).arg(examples.join("policy.toml")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = std::fs::read_to_string(examples.join("expected-output.txt")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[test]
fn a_bad_policy_is_reported_with_its_line_and_column() {
    let dir = std::env::temp_dir().join(format!("portcullis-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "version = 1\n\n[[rule]]\nname = \"x\"\nefect = \"allow\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_embed")).arg(&bad).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:5:1: unknown field `efect`"), "{stderr}");
}
