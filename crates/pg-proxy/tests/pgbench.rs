//! pgbench through the gateway: the tpcb-like and select-only scripts in
//! the simple, extended and prepared protocols, every transaction
//! processed, none failed.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use portcullis_testkit::stack::Stack;
use portcullis_testkit::text;

#[test]
fn pgbench_runs_unchanged_through_the_gateway() {
    let stack = Stack::start();
    stack.pgbench_init(1);

    let token = stack.token("bench", &["developers"], None);
    for args in [
        &["-M", "simple"][..],
        &["-M", "extended"],
        &["-M", "prepared"],
        &["-S", "-M", "prepared"],
        &["-S", "-M", "simple"],
    ] {
        let out = stack
            .program("pgbench")
            .args(["-n", "-t", "100", "-c", "4", "-j", "2", "-h", "127.0.0.1", "-p"])
            .arg(stack.addr.port().to_string())
            .args(["-U", "bench"])
            .args(args)
            .arg("app")
            .env("PGPASSWORD", &token)
            .env("PGSSLMODE", "disable")
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "pgbench {args:?}: {stdout}\n{}", text(&out.stderr));
        assert!(stdout.contains("number of transactions actually processed: 400/400"), "{args:?}: {stdout}");
        assert!(
            !stdout.contains("number of failed transactions: ") || stdout.contains("number of failed transactions: 0"),
            "{stdout}"
        );
    }

    // An agent may read but not write: the tpcb-like script is refused on its first UPDATE.
    let agent = stack.token("agent", &["ai-agents"], None);
    let out = stack
        .program("pgbench")
        .args(["-n", "-t", "5", "-c", "1", "-h", "127.0.0.1", "-p"])
        .arg(stack.addr.port().to_string())
        .args(["-U", "agent", "app"])
        .env("PGPASSWORD", &agent)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("refused by policy"), "{}", text(&out.stderr));
}
