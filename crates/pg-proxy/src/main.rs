//! `pg-proxy`: the Portcullis gateway binary and its command-line tools.
//!
//! For now it carries the policy tools (`pg-proxy policy check|test|explain`)
//! and development tokens (`pg-proxy token keygen|mint`); the gateway itself
//! (`serve`, `demo`) builds on the same engine.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
