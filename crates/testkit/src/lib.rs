//! The tests' shared kit: what the test files of `policy-core`, `pg-proxy`
//! and `portcullis-ffi` need in common, written once.
//!
//! - [`corpus`]: the shared decision corpus (`testdata/decisions`), read
//!   into one set of types, with each case's identity and session;
//! - `wire` (feature `wire`): a raw client that speaks the PostgreSQL
//!   protocol byte by byte, for what no client library would send;
//! - `stack` (feature `stack`, which brings `wire` too): a throwaway
//!   PostgreSQL cluster with the gateway in front of it, in the test's
//!   process;
//! - [`process`]: running a program under a deadline;
//! - [`scratch`]: temporary directories removed when the test is done,
//!   and how much of a file the page cache holds;
//! - `browser` (feature `browser`): headless Chromium over WebDriver, for
//!   the gateway's web pages.
//!
//! The features keep the engine's own tests light: `corpus` needs only
//! `policy-core`, while `wire` and `stack` bring in the gateway (`pg-proxy`,
//! tokio), which `policy-core`'s tests have no use for. (`pg-proxy` itself
//! depends on `policy-core`; Cargo allows that cycle through a
//! dev-dependency, but without the features `cargo test -p policy-core`
//! would build the whole gateway first.)
//!
//! Everything here fails the calling test with a message rather than
//! returning an error: a kit for tests has no caller that could do better.
//!
//! ```
//! let cases = portcullis_testkit::corpus::cases();
//! assert!(cases.iter().all(|c| !c.case.name.is_empty()));
//! ```
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test code: a failure is reported by failing the calling test"
)]

use std::path::PathBuf;

#[cfg(feature = "browser")]
pub mod browser;
pub mod corpus;
pub mod process;
pub mod scratch;
#[cfg(feature = "stack")]
pub mod stack;
pub mod webhook;
#[cfg(feature = "wire")]
pub mod wire;

/// `path`, relative to the repository's root.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// Bytes a program printed, as text (invalid UTF-8 replaced).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A [`std::process::Command`] for the `pg-proxy` binary that cargo built
/// for the calling test.
///
/// The binary's path (`CARGO_BIN_EXE_pg-proxy`) is known only while cargo
/// compiles `pg-proxy`'s own integration tests, so this is a macro: it
/// expands in the calling test, where the variable is set. Elsewhere it
/// does not compile.
///
/// ```ignore
/// let out = portcullis_testkit::bin!().args(["policy", "check", "policy.toml"]).output()?;
/// ```
#[macro_export]
macro_rules! bin {
    () => {
        ::std::process::Command::new(env!("CARGO_BIN_EXE_pg-proxy"))
    };
}

/// A [`scratch::ScratchDir`] labelled `label` holding a fresh audit
/// signing key (`audit-key.pem`) and its verifier key (`audit-key.pub`),
/// made by `pg-proxy audit keygen --out DIR` as an operator would make
/// them. A macro for the reason [`bin!`] is one.
///
/// ```ignore
/// let keys = portcullis_testkit::audit_keys!("my-test");
/// let signing_key = keys.join("audit-key.pem");
/// ```
#[macro_export]
macro_rules! audit_keys {
    ($label:expr) => {
        $crate::scratch::with_audit_keys($label, $crate::bin!())
    };
}
