//! The C ABI from C: programs in `tests/c/` and `examples/c/` compiled with
//! `cc` against the library this build made, run under valgrind (no leak,
//! no invalid access), and the Python example run through ctypes.
//!
//! - `corpus.c` decides every case of the shared corpus
//!   (`testdata/decisions`) through the ABI; each decision's JSON must be
//!   byte-identical to what `policy-core` decides for the same case.
//! - `abi.c` checks the ABI's contract: result codes and messages,
//!   out-pointers on failure, NULL and bad UTF-8, sessions, masking,
//!   tokens, and threads sharing one engine.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use policy_core::{Engine, Policy, Verdict};
use portcullis_testkit::corpus;
use portcullis_testkit::scratch::ScratchDir;

fn repo() -> PathBuf {
    portcullis_testkit::repo("")
}

/// Where cargo put the `libportcullis.a` and `.so` this test build made:
/// `target/<profile>/deps`, next to the test binary. (`cargo build` also
/// copies them up to `target/<profile>`; `cargo test` does not, so those
/// copies may be stale.)
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// Compiles C `sources` into `out`, statically linked with `libportcullis.a`.
fn compile_static(sources: &[PathBuf], out: &Path) {
    let lib = target_dir().join("libportcullis.a");
    assert!(lib.exists(), "{} is missing: cargo builds it with the crate", lib.display());
    let status = Command::new(cc())
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g", "-O1"])
        .arg("-I")
        .arg(repo().join("crates/ffi/include"))
        .args(sources)
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", cc()));
    assert!(status.success(), "compiling {sources:?} failed");
}

/// Runs `program` with `args` under valgrind; fails on any error or leak.
fn valgrind(program: &Path, args: &[&Path]) -> Output {
    let probe = Command::new("valgrind").arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "valgrind is missing: `scripts/install-deps` installs it (apt-get install valgrind)"
    );
    let output = Command::new("valgrind")
        .args([
            "--quiet",
            "--error-exitcode=97",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
        ])
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} under valgrind exited with {:?}:\n{stderr}",
        program.display(),
        output.status.code()
    );
    output
}

// ---------------------------------------------------------------- corpus

/// Appends one fixture record: `<key> <len>\n<bytes>\n`.
fn record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(format!("{key} {}\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// One case's expectation: its name, and the Rust core's decision.
struct Expected {
    name: String,
    verdict: Verdict,
    rule: String,
    json: String,
    corpus_expect: Verdict,
}

/// The whole corpus as a fixture for `corpus.c`, and what the Rust core
/// decides for each case.
fn corpus_fixture() -> (Vec<u8>, Vec<Expected>) {
    let (mut fixture, mut expected) = (Vec::new(), Vec::new());
    for file in corpus::files() {
        let policy_text = std::fs::read_to_string(&file.policy).unwrap();
        let engine = Engine::new(Policy::from_toml_str(&policy_text, "policy.toml").unwrap(), Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
        record(&mut fixture, "policy", policy_text.as_bytes());
        for case in file.cases {
            let name = format!("{} / {}", file.name, case.name);
            record(&mut fixture, "case", name.as_bytes());
            let identity = case.identity();
            record(&mut fixture, "identity", serde_json::to_string(&identity).unwrap().as_bytes());
            if let Some(path) = case.search_path_setting() {
                // As portcullis_session_set_search_path: the startup value.
                record(&mut fixture, "search_path", path.as_bytes());
            }
            if let Some(scs) = case.standard_conforming_strings {
                record(&mut fixture, "scs", if scs { b"on" } else { b"off" });
            }
            for (name, sql) in &case.prepared {
                record(&mut fixture, "prepared", name.as_bytes());
                record(&mut fixture, "prepared_sql", sql.as_bytes());
            }
            record(&mut fixture, "sql", case.sql.as_bytes());
            let d = engine.decide(&identity, &case.session(&engine), &case.sql);
            expected.push(Expected {
                name,
                verdict: d.verdict,
                rule: d.rule.as_deref().unwrap_or_default().to_string(),
                json: d.to_json(),
                corpus_expect: case.expect,
            });
        }
    }
    (fixture, expected)
}

/// Reads `corpus.c`'s output: (name, verdict number, rule, json) per case.
fn parse_output(bytes: &[u8]) -> Vec<(String, u32, String, String)> {
    fn field<'a>(rest: &mut &'a [u8], key: &str) -> &'a [u8] {
        let nl = rest.iter().position(|&b| b == b'\n').expect("a header line");
        let header = std::str::from_utf8(&rest[..nl]).unwrap();
        let (k, n) = header.split_once(' ').unwrap_or_else(|| panic!("bad header `{header}`"));
        assert_eq!(k, key, "expected `{key}`, got `{header}`");
        if key == "verdict" {
            *rest = &rest[nl + 1..];
            return n.as_bytes();
        }
        let n: usize = n.parse().unwrap();
        let value = &rest[nl + 1..nl + 1 + n];
        *rest = &rest[nl + 1 + n + 1..];
        value
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    let mut rest = bytes;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let name = text(field(&mut rest, "case"));
        let verdict = text(field(&mut rest, "verdict")).parse().unwrap();
        let rule = text(field(&mut rest, "rule"));
        let json = text(field(&mut rest, "json"));
        out.push((name, verdict, rule, json));
    }
    out
}

fn verdict_number(v: Verdict) -> u32 {
    match v {
        Verdict::Allow => 1,
        Verdict::RequireApproval => 3,
        _ => 2,
    }
}

#[test]
fn the_shared_corpus_decides_the_same_through_the_c_abi() {
    let scratch = ScratchDir::new("ffi-corpus");
    let program = scratch.join("corpus");
    compile_static(&[repo().join("crates/ffi/tests/c/corpus.c")], &program);
    let (fixture, expected) = corpus_fixture();
    assert!(expected.len() > 700, "the corpus holds {} cases", expected.len());
    let (fixture_path, output_path) = (scratch.join("fixture"), scratch.join("output"));
    std::fs::write(&fixture_path, fixture).unwrap();
    let run = valgrind(&program, &[&fixture_path, &output_path]);
    let summary = String::from_utf8_lossy(&run.stderr);
    assert!(summary.contains(&format!("corpus: {} cases decided", expected.len())), "{summary}");

    let got = parse_output(&std::fs::read(&output_path).unwrap());
    assert_eq!(got.len(), expected.len(), "one answer per case");
    let mut differences = Vec::new();
    for ((name, verdict, rule, json), want) in got.iter().zip(&expected) {
        assert_eq!(name, &want.name, "cases out of order");
        if *verdict != verdict_number(want.verdict) || rule != &want.rule || json != &want.json {
            differences.push(format!("{name}:\n    C:    {verdict} {rule} {json}\n    Rust: {}", want.json));
        }
    }
    assert!(differences.is_empty(), "{} of {} cases differ:\n{}", differences.len(), got.len(), differences.join("\n"));
    // The Rust core itself agrees with the corpus (its own test says where not).
    let agree = expected.iter().filter(|e| e.verdict == e.corpus_expect).count();
    assert_eq!(agree, expected.len(), "the Rust core disagrees with the corpus on some cases");
    eprintln!("corpus through the C ABI: {} cases, 0 differences", got.len());
}

// ---------------------------------------------------------------- contract

/// A key set and a token it signs (alice@example.com in ai-agents, acting
/// through copilot-7), written into `scratch`.
fn token_files(scratch: &ScratchDir) -> (PathBuf, PathBuf) {
    let (key, jwks) = pg_proxy::token::keygen(scratch, pg_proxy::token::KeyType::Ed25519).unwrap();
    let groups = vec!["ai-agents".to_string()];
    let token = pg_proxy::token::mint(&pg_proxy::token::MintRequest {
        key: &key,
        subject: "alice@example.com",
        groups: &groups,
        actor: Some("copilot-7"),
        ttl_seconds: 3600,
        issuer: None,
        audience: None,
    })
    .unwrap();
    let token_path = scratch.join("token");
    std::fs::write(&token_path, token).unwrap();
    (jwks, token_path)
}

#[test]
fn the_abi_contract_holds_in_c_under_valgrind() {
    let scratch = ScratchDir::new("ffi-abi");
    let program = scratch.join("abi");
    compile_static(&[repo().join("crates/ffi/tests/c/abi.c")], &program);
    let (jwks, token) = token_files(&scratch);
    let policy = repo().join("examples/policy.toml");
    let run = valgrind(&program, &[&policy, &jwks, &token]);
    let summary = String::from_utf8_lossy(&run.stderr);
    assert!(summary.contains(", 0 failed"), "{summary}");
    eprintln!("{}", summary.trim());
}

#[test]
fn the_header_compiles_as_strict_c99_and_as_cpp() {
    let scratch = ScratchDir::new("ffi-header");
    let source = scratch.join("h.c");
    std::fs::write(&source, "#include \"portcullis.h\"\nint main(void) { return portcullis_version() == 0; }\n")
        .unwrap();
    let include = repo().join("crates/ffi/include");
    for (compiler, flags) in [(cc(), vec!["-std=c99"]), ("c++".to_string(), vec!["-x", "c++", "-std=c++11"])] {
        let status = Command::new(&compiler)
            .args(&flags)
            .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
            .arg(&include)
            .arg(&source)
            .status()
            .unwrap_or_else(|e| panic!("cannot run `{compiler}`: {e}"));
        assert!(status.success(), "the header does not compile with {compiler} {flags:?}");
    }
}

// ---------------------------------------------------------------- examples

/// What the three embedding examples print.
fn expected_example_output() -> String {
    std::fs::read_to_string(repo().join("examples/expected-output.txt")).unwrap()
}

fn bad_policy(scratch: &ScratchDir) -> PathBuf {
    let bad = scratch.join("bad.toml");
    std::fs::write(&bad, "version = 1\n\n[[rule]]\nname = \"x\"\nefect = \"allow\"\n").unwrap();
    bad
}

#[test]
fn the_c_example_runs_against_the_shared_library() {
    let scratch = ScratchDir::new("ffi-example-c");
    let program = scratch.join("decide");
    let lib_dir = target_dir();
    assert!(lib_dir.join("libportcullis.so").exists(), "libportcullis.so is missing from {}", lib_dir.display());
    let status = Command::new(cc())
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g", "-I"])
        .arg(repo().join("crates/ffi/include"))
        .arg(repo().join("examples/c/decide.c"))
        .arg("-L")
        .arg(&lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lportcullis", "-o"])
        .arg(&program)
        .status()
        .unwrap();
    assert!(status.success(), "compiling examples/c/decide.c failed");
    let run = valgrind(&program, &[&repo().join("examples/policy.toml")]);
    assert_eq!(String::from_utf8_lossy(&run.stdout), expected_example_output());

    let out = Command::new(&program).arg(bad_policy(&scratch)).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:5:1: unknown field `efect`") && stderr.contains("(code 2000)"), "{stderr}");
}

#[test]
fn the_python_example_runs_through_ctypes() {
    let scratch = ScratchDir::new("ffi-example-python");
    let run = |policy: &Path| {
        Command::new("python3")
            .arg(repo().join("examples/python/decide.py"))
            .arg(policy)
            .env("PORTCULLIS_LIB", target_dir().join("libportcullis.so"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3: {e}"))
    };
    let out = run(&repo().join("examples/policy.toml"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected_example_output());

    let out = run(&bad_policy(&scratch));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:5:1: unknown field `efect`") && stderr.contains("(code 2000)"), "{stderr}");

    // The example's typed handles: ctypes refuses an identity where an engine goes.
    let probe = "import sys, ctypes, decide\n\
                 who = decide.Identity('{\"subject\": \"a\"}')\n\
                 try:\n    decide.LIB.portcullis_decide(who._h, who._h, None, b'SELECT 1', 8, ctypes.byref(decide.DecisionP()))\n\
                 except ctypes.ArgumentError as e:\n    print('refused:', e)\n";
    let out = Command::new("python3")
        .args(["-c", probe])
        .env("PYTHONPATH", repo().join("examples/python"))
        .env("PORTCULLIS_LIB", target_dir().join("libportcullis.so"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("refused: argument 1"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
}
