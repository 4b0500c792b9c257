//! The `pg-proxy policy` commands, run as a user runs them.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};

use portcullis_testkit::scratch::ScratchDir;
use portcullis_testkit::{bin, repo, text};

fn run(args: &[&str]) -> Output {
    bin!().args(args).output().unwrap()
}

/// `pg-proxy policy explain --policy examples/policy.toml ARGS...`.
fn explain_example(args: &[&str]) -> Output {
    let policy = repo("examples/policy.toml");
    bin!().args(["policy", "explain", "--policy"]).arg(policy).args(args).output().unwrap()
}

/// `text` as `policy.toml` in a fresh directory, removed with the
/// returned guard.
fn temp_policy(name: &str, text: &str) -> (ScratchDir, PathBuf) {
    let dir = ScratchDir::new(&format!("cli-{name}"));
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn check_accepts_the_example_and_names_the_line_of_an_error() {
    let ok = run(&["policy", "check", repo("examples/policy.toml").to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("ok"));

    let (_bad_dir, bad) =
        temp_policy("bad", "version = 1\n[[rule]]\nname = \"r\"\neffect = \"allow\"\nclasses = [\"reed\"]\n");
    let out = run(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{}:5:", bad.display())), "{err}");
    assert!(err.contains("reed"), "{err}");

    let missing = run(&["policy", "check", "/nonexistent/policy.toml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("cannot read policy"));
}

#[test]
fn test_runs_embedded_tests_and_fails_loudly() {
    let ok = run(&["policy", "test", repo("examples/policy.toml").to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stdout));
    assert!(text(&ok.stdout).contains(" 0 failed"));

    let (_failing_dir, failing) = temp_policy(
        "failing",
        "version = 1\n[[rule]]\nname = \"r\"\neffect = \"allow\"\nclasses = [\"read\"]\n\n[[test]]\nsql = \"DROP TABLE t\"\nexpect = \"allow\"\n",
    );
    let out = run(&["policy", "test", failing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains(":7:"), "the failing test's line: {stdout}");
    assert!(stdout.contains("got      deny"), "{stdout}");
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
    // Its reader gone (`| head -1` under `set -o pipefail`), it still
    // exits 1.
    let (code, stderr) = portcullis_testkit::process::reader_gone(bin!().args(["policy", "test"]).arg(&failing));
    assert_eq!(code, Some(1), "{stderr}");
}

#[test]
fn explain_prints_the_decision() {
    let out = explain_example(&["--groups", "ai-agents", "SELECT * FROM orders; DROP TABLE orders"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["verdict"], "deny");
    assert_eq!(d["rule"], "no-ddl-for-agents");
    assert_eq!(d["statements"][0]["verdict"], "allow");
    assert_eq!(d["statements"][1]["command"], "DROP TABLE");

    let usage = explain_example(&[]);
    assert_eq!(usage.status.code(), Some(2), "no SQL and no --jsonl is a usage error");
}

#[test]
fn explain_search_path_is_where_a_reset_returns() {
    let out = explain_example(&[
        "--groups",
        "ai-agents",
        "--search-path",
        "private",
        "SET search_path = public; RESET search_path; SELECT * FROM customers",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["statements"][2]["tables"], serde_json::json!(["private.customers"]), "{d}");
    assert_eq!(d["verdict"], "deny");
}

#[test]
fn explain_jsonl_answers_line_for_line() {
    let mut child = bin!()
        .args(["policy", "explain", "--policy", repo("examples/policy.toml").to_str().unwrap(), "--jsonl"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = concat!(
        r#"{"sql": "SELECT * FROM orders", "groups": ["ai-agents"]}"#,
        "\n",
        "this is not json\n",
        r#"{"sql": "SELECT * FROM orders"}"#,
        "\n",
        "\n",
        r#"{"sql": "SELECT * FROM orders", "groups": ["ai-agents"], "search_path": ["private"]}"#,
        "\n",
        r#"{"sql": "DELETE FROM orders WHERE id = 1", "groups": ["ai-agents"], "actor": "copilot-1", "subject": "alice"}"#,
        "\n",
        r#"{"query": "SELECT 1"}"#,
        "\n",
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.write_all(&[0xff, 0xfe, b'\n']).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert_eq!(lines[0]["verdict"], "allow");
    assert!(lines[1]["error"].as_str().unwrap().starts_with("line 2:"), "{}", lines[1]);
    assert_eq!(lines[2]["verdict"], "deny", "no groups: default deny");
    assert!(lines[3]["error"].as_str().unwrap().contains("empty"));
    assert_eq!(lines[4]["verdict"], "deny", "private.orders is not allowed");
    assert_eq!(lines[5]["verdict"], "require_approval");
    assert_eq!(lines[5]["subject"], "alice");
    assert_eq!(lines[5]["actor"], "copilot-1");
    assert!(lines[6]["error"].as_str().unwrap().contains("query"), "{}", lines[6]);
    assert!(lines[7]["error"].as_str().unwrap().contains("UTF-8"), "{}", lines[7]);

    let bad = bin!()
        .args(["policy", "explain", "--policy", "/nonexistent.toml", "--jsonl"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn help_explains_the_commands() {
    let out = run(&["policy", "explain", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.contains("--jsonl") && help.contains("--search-path"), "{help}");
}

#[test]
fn minted_tokens_verify_and_tampered_ones_do_not() {
    use policy_core::{verify_jwt, IdentityError, IdentityRules, Jwks};
    for key_type in ["ed25519", "rsa"] {
        let dir = ScratchDir::new(&format!("token-{key_type}"));
        let out = run(&["token", "keygen", "--out", dir.to_str().unwrap(), "--key-type", key_type]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let key = dir.join("signing-key.pem");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let jwks = Jwks::from_json(&std::fs::read(dir.join("jwks.json")).unwrap()).unwrap();
        assert_eq!(jwks.len(), 1, "{:?}", jwks.diagnostics());

        let out = run(&[
            "token",
            "mint",
            "--key",
            key.to_str().unwrap(),
            "--sub",
            "alice@example.com",
            "--groups",
            "developers,ai-agents",
            "--actor",
            "copilot-7",
            "--ttl",
            "10m",
            "--iss",
            "https://idp.test",
            "--aud",
            "portcullis",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let token = text(&out.stdout).trim().to_string();
        let rules = IdentityRules {
            issuer: Some("https://idp.test".into()),
            audience: vec!["portcullis".into()],
            ..IdentityRules::default()
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let id = verify_jwt(&token, &jwks, &rules, now).unwrap_or_else(|e| panic!("{key_type}: {e}"));
        assert_eq!(id.subject, "alice@example.com");
        assert_eq!(id.groups, ["developers", "ai-agents"]);
        assert_eq!(id.actor.as_ref().and_then(|a| a.subject.as_deref()), Some("copilot-7"));
        // Expired after its ttl.
        assert_eq!(verify_jwt(&token, &jwks, &rules, now + 3600), Err(IdentityError::Expired));

        // Tampered claims.
        let parts: Vec<&str> = token.split('.').collect();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["groups"] = serde_json::json!(["dba"]);
        let forged = format!("{}.{}.{}", parts[0], b64.encode(claims.to_string()), parts[2]);
        assert_eq!(verify_jwt(&forged, &jwks, &rules, now), Err(IdentityError::BadSignature));
    }

    let bad = run(&["token", "mint", "--key", "/nonexistent.pem", "--sub", "x"]);
    assert_eq!(bad.status.code(), Some(1));
    let ttl = run(&["token", "mint", "--key", "/nonexistent.pem", "--sub", "x", "--ttl", "1w"]);
    assert_eq!(ttl.status.code(), Some(2));
}

#[test]
fn demo_script_plays_the_agent_session_and_cleans_up() {
    let audit = ScratchDir::new("demo-audit");
    let out = bin!()
        .args(["demo", "--script", "--policy"])
        .arg(repo("examples/policy.toml"))
        .arg("--audit-dir")
        .arg(&audit)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    // The psql command lines for both identities.
    assert_eq!(stdout.matches("psql \"host=127.0.0.1 port=").count(), 2, "{stdout}");
    // The masked read, the two refusals and the row cap.
    assert!(stdout.contains("| ****@example.com | ****6789 | ****1111 |"), "{stdout}");
    assert!(stdout.contains("card on file: ****1881"), "{stdout}");
    assert!(!stdout.contains("123-45-6789") && !stdout.contains("4111 1111"), "{stdout}");
    assert!(stdout.contains("ERROR 42501: refused by policy (rule no-ddl-for-agents)"), "{stdout}");
    assert!(stdout.contains("ERROR 42501: refused by policy (rule no-unbounded-writes)"), "{stdout}");
    assert!(stdout.contains("ERROR 54000: row limit reached"), "{stdout}");
    // The held DELETE, approved by bob through the admin API, then run.
    assert!(stdout.contains("held: waiting for approval, request "), "{stdout}");
    assert!(stdout.contains(r#""state":"approved""#), "{stdout}");
    assert!(stdout.contains("DELETE 1: it ran once approved"), "{stdout}");
    assert!(stdout.contains("open http://127.0.0.1:"), "{stdout}");
    // The session as the audit log recorded it, and the log verified.
    assert!(stdout.contains("$ pg-proxy audit replay --session "), "{stdout}");
    assert!(stdout.contains("DENY [no-ddl-for-agents]  DROP TABLE customers"), "{stdout}");
    assert!(stdout.contains("requested: order 7 was a duplicate from the import"), "{stdout}");
    assert!(stdout.contains("approved by bob: checked: a duplicate"), "{stdout}");
    assert!(stdout.contains("ERROR 54000: row limit reached"), "{stdout}");
    assert!(stdout.contains("intact: records 0.."), "{stdout}");
    // Everything it made is gone, but the audit log it was asked to keep.
    let dir = stdout.lines().find_map(|l| l.strip_prefix("Stopping PostgreSQL and removing ")).unwrap();
    let dir = dir.trim_end_matches(" ...");
    assert!(!std::path::Path::new(dir).exists(), "{dir} is still there");
    let verify =
        bin!().args(["audit", "verify", "--key"]).arg(audit.join("audit-key.pub")).arg(&audit).output().unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stdout));
    assert!(text(&verify.stdout).contains("closed"), "{}", text(&verify.stdout));
}

#[test]
fn demo_stopped_by_a_signal_removes_its_cluster() {
    use std::io::BufRead;
    // SIGTERM with its output read; SIGHUP with no one reading any more
    // (a closed terminal): the demo stops cleanly either way.
    for (signal, reader_gone) in [("TERM", false), ("HUP", true)] {
        let mut demo = bin!()
            .args(["demo", "--policy"])
            .arg(repo("examples/policy.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(demo.stdout.take().unwrap()).lines();
        let mut data = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some((_, dir)) = line.split_once("(data in ") {
                data = Some(PathBuf::from(dir.trim_end_matches(')')));
            }
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        let data = data.expect("the demo names its cluster's data directory");
        assert!(data.exists());
        let rest: Vec<String> = if reader_gone {
            drop(lines);
            portcullis_testkit::process::signal(demo.id(), signal);
            Vec::new()
        } else {
            portcullis_testkit::process::signal(demo.id(), signal);
            lines.map(Result::unwrap).collect()
        };
        let out = demo.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "SIG{signal}: {rest:?} {stderr}");
        assert!(!stderr.contains("panicked"), "SIG{signal}: {stderr}");
        if !reader_gone {
            assert!(rest.iter().any(|l| l.starts_with("Stopping PostgreSQL and removing ")), "{rest:?}");
        }
        assert!(!data.exists(), "SIG{signal}: {} is still there", data.display());
    }
}

/// A policy with a `hash` mask (and a test that passes).
const HASHED: &str = "version = 1
[[rule]]
name = \"r\"
effect = \"allow\"
classes = [\"read\"]

[[mask]]
name = \"pseudonymous-email\"
columns = [\"public.customers.email\"]
strategy = \"hash\"

[[test]]
sql = \"SELECT email FROM customers\"
expect = \"allow\"
rule = \"r\"
";

/// `run` without the key's environment variable, plus `env`.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = bin!();
    cmd.args(args).env_remove("PORTCULLIS_PSEUDONYM_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn policies_with_hash_masks_need_the_pseudonymisation_key_to_run() {
    let (_policy_dir, policy) = temp_policy("hashed", HASHED);
    let policy = policy.to_str().unwrap();
    let key_file = std::path::Path::new(policy).with_file_name("pseudonym.key");
    let secret = "a-pseudonymisation-key-never-printed";
    std::fs::write(&key_file, secret).unwrap();
    let key_file = key_file.to_str().unwrap();
    let never_printed = |out: &Output| {
        assert!(!text(&out.stdout).contains(secret) && !text(&out.stderr).contains(secret), "the key was printed");
    };

    // check: valid without a key, with a note naming the mask's place.
    let out = run_env(&["policy", "check", policy], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok (1 rules, 1 masks"), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.starts_with(&format!("note: {policy}:7:1:")), "{err}");
    assert!(err.contains("pseudonymous-email") && err.contains("pseudonym_key_"), "{err}");
    // ... and with a key, silently; a key file that cannot be read is bad usage.
    let out = run_env(&["policy", "check", policy, "--pseudonym-key-file", key_file], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    never_printed(&out);
    let out = run_env(&["policy", "check", policy, "--pseudonym-key-file", "/nonexistent/key"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--pseudonym-key-file `/nonexistent/key`"), "{}", text(&out.stderr));

    // test and explain: without a key, an error naming both ways to give it.
    let explain = ["policy", "explain", "--policy", policy, "--groups", "g", "SELECT email FROM customers"];
    for args in [&["policy", "test", policy][..], &explain[..]] {
        let out = run_env(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.starts_with(&format!("error: {policy}:7:1: mask `pseudonymous-email`")), "{err}");
        assert!(err.contains("--pseudonym-key-file") && err.contains("PORTCULLIS_PSEUDONYM_KEY"), "{err}");
        assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
    }

    // With --pseudonym-key-file, or the key in the environment: they run.
    fn with_file<'a>(args: &[&'a str], key_file: &'a str) -> Vec<&'a str> {
        args.iter().copied().chain(["--pseudonym-key-file", key_file]).collect()
    }
    for (args, env) in [
        (with_file(&["policy", "test", policy], key_file), &[][..]),
        (vec!["policy", "test", policy], &[("PORTCULLIS_PSEUDONYM_KEY", secret)][..]),
    ] {
        let out = run_env(&args, env);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        assert!(text(&out.stdout).contains("1 passed, 0 failed"), "{}", text(&out.stdout));
        never_printed(&out);
    }
    for (args, env) in
        [(with_file(&explain, key_file), &[][..]), (explain.to_vec(), &[("PORTCULLIS_PSEUDONYM_KEY", secret)][..])]
    {
        let out = run_env(&args, env);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(d["verdict"], "allow");
        never_printed(&out);
    }

    // --help explains the option.
    for command in ["check", "test", "explain"] {
        let out = run(&["policy", command, "--help"]);
        let help = text(&out.stdout);
        assert!(help.contains("--pseudonym-key-file") && help.contains("PORTCULLIS_PSEUDONYM_KEY"), "{help}");
    }
}

/// `examples/gateway.toml`, beside the files it names (made here as the
/// demo makes them), passes `pg-proxy check` without a warning.
#[test]
fn the_example_configuration_passes_check() {
    let dir = ScratchDir::new("cli-example");
    for name in ["gateway.toml", "policy.toml"] {
        std::fs::copy(repo(&format!("examples/{name}")), dir.join(name)).unwrap();
    }
    let keys = dir.join("keys");
    assert!(run(&["token", "keygen", "--out", keys.to_str().unwrap()]).status.success());
    std::fs::copy(keys.join("jwks.json"), dir.join("jwks.json")).unwrap();
    let server = rcgen::generate_simple_self_signed(vec!["gateway.internal".to_string()]).unwrap();
    std::fs::write(dir.join("server.crt"), server.cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server.key_pair.serialize_pem()).unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["db-ca".to_string()]).unwrap();
    std::fs::write(dir.join("db-ca.pem"), ca.cert.pem()).unwrap();

    let out = bin!()
        .arg("check")
        .arg(dir.join("gateway.toml"))
        .env("PORTCULLIS_UPSTREAM_PASSWORD", "example")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(": ok"), "{}", text(&out.stdout));
    assert_eq!(text(&out.stderr), "", "no warning for the example");
}

/// Completion scripts and the manual page come from the same definition
/// as `--help`: every subcommand is in them.
#[test]
fn completions_and_manual_page() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef pg-proxy"), ("fish", "complete -c pg-proxy")] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for sub in ["serve", "check", "policy", "token", "demo"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2), "an unknown shell is a usage error");
    let man = run(&["man"]);
    assert!(man.status.success(), "{}", text(&man.stderr));
    let page = text(&man.stdout);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{}", &page[..page.len().min(200)]);
    assert!(page.contains(".TH pg-proxy") && page.contains("serve") && page.contains("check"), "{page}");
}

/// A reader that goes away early (`| head -1`) ends a command quietly, with
/// exit 0: no panic, no error message.
#[test]
fn a_closed_pipe_is_not_a_crash() {
    let policy = repo("examples/policy.toml");
    let commands: [&[&str]; 3] = [
        &["policy", "explain", "--policy", policy.to_str().unwrap(), "SELECT 1"],
        &["policy", "test", policy.to_str().unwrap()],
        &["completions", "bash"],
    ];
    for args in commands {
        let mut child = bin!().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
}
