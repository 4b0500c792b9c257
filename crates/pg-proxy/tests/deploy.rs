#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]
//! What `deploy/` holds, checked without a container engine or a cluster:
//!
//! - `scripts/deploy-check`: the Helm chart through Helm's own lint and
//!   renderer, the rendered manifests against the Kubernetes API schemas,
//!   the Compose file against the Compose specification, and what each
//!   must say (non-root, read-only, probes, the NetworkPolicy that fences
//!   the database...);
//! - every gateway configuration they carry (the chart's, rendered with
//!   several sets of values, and the Compose file's two replicas) loads
//!   with `pg-proxy check`, with the files it names made here;
//! - the Dockerfile's runtime stage runs pg-proxy as a non-root user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portcullis_testkit::process::output_within;
use portcullis_testkit::scratch::ScratchDir;
use portcullis_testkit::{repo, text};

/// How long `scripts/deploy-check` may take (a first run installs its
/// tools).
const DEADLINE: Duration = Duration::from_secs(900);

fn pg_proxy(args: &[&str]) -> std::process::Output {
    portcullis_testkit::bin!().args(args).output().unwrap()
}

/// `config` with every absolute path under `/etc/portcullis`, `/secrets`
/// and `/var/lib/portcullis` moved under `dir`, and the key set read from
/// a file there instead of fetched (the check is offline); the files it
/// names are made there: keys, passwords, a certificate.
fn rebased(config: &str, dir: &Path) -> String {
    let root = dir.display().to_string();
    let mut text = config
        .replace("\"/etc/portcullis/", &format!("\"{root}/etc/portcullis/"))
        .replace("\"/secrets/", &format!("\"{root}/secrets/"))
        .replace("\"/var/lib/portcullis/", &format!("\"{root}/var/lib/portcullis/"));
    let jwks = dir.join("idp/jwks.json");
    text =
        text.lines()
            .map(|l| {
                if l.starts_with("jwks_url") {
                    format!("jwks_file = {:?}", jwks.display().to_string())
                } else {
                    l.into()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        let key = key.trim();
        let Some(path) = value.trim().strip_prefix('"').and_then(|v| v.strip_suffix('"')) else { continue };
        if !path.starts_with(&root) {
            continue;
        }
        let path = PathBuf::from(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        match key {
            "dir" => std::fs::create_dir_all(&path).unwrap(),
            "signing_key_file" => {
                let keys = path.parent().unwrap().join("made");
                let out = pg_proxy(&["audit", "keygen", "--out", &keys.display().to_string()]);
                assert!(out.status.success(), "{}", text_of(&out));
                std::fs::rename(keys.join("audit-key.pem"), &path).unwrap();
            }
            "cert" | "ca_file" => {
                let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
                std::fs::write(&path, pair.cert.pem()).unwrap();
                let key = path.with_file_name("tls.key");
                std::fs::write(key, pair.key_pair.serialize_pem()).unwrap();
            }
            "key" => {} // made with its certificate
            "jwks_file" => {
                let out = pg_proxy(&["token", "keygen", "--out", &path.parent().unwrap().display().to_string()]);
                assert!(out.status.success(), "{}", text_of(&out));
            }
            "pseudonym_key_file" => std::fs::write(&path, "a pseudonym key of enough bytes for hash masks").unwrap(),
            _ => std::fs::write(&path, "a-password").unwrap(),
        }
    }
    text
}

fn text_of(out: &std::process::Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// Loads `config` (with `policy` beside it) with `pg-proxy check`.
fn check_loads(name: &str, config: &str, policy: &str, dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let config = rebased(config, dir);
    let path = dir.join("gateway.toml");
    std::fs::write(&path, &config).unwrap();
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let out = pg_proxy(&["check", "--config", &path.display().to_string()]);
    assert!(out.status.success(), "{name}: pg-proxy check failed:\n{}\n--- the file:\n{config}", text_of(&out));
}

#[test]
fn the_chart_and_the_compose_file_validate_and_their_configurations_load() {
    let out_dir = ScratchDir::new("deploy");
    let out = output_within(Command::new(repo("scripts/deploy-check")).arg(&*out_dir), DEADLINE)
        .unwrap_or_else(|e| panic!("scripts/deploy-check: {e}"));
    assert!(out.status.success(), "scripts/deploy-check failed:\n{}", text_of(&out));
    assert!(text(&out.stdout).contains("ok"), "{}", text_of(&out));

    let work = out_dir.join("loaded");
    for case in ["default", "full", "single"] {
        let config = std::fs::read_to_string(out_dir.join(case).join("gateway.toml")).unwrap();
        let policy = std::fs::read_to_string(out_dir.join(case).join("policy.toml")).unwrap();
        check_loads(&format!("the chart's {case} values"), &config, &policy, &work.join(case));
    }
    let policy = std::fs::read_to_string(repo("examples/policy.toml")).unwrap();
    for replica in ["gateway-1", "gateway-2"] {
        let config = std::fs::read_to_string(repo(&format!("deploy/compose/{replica}.toml"))).unwrap();
        check_loads(replica, &config, &policy, &work.join(replica));
    }
}

#[test]
fn the_image_runs_pg_proxy_as_a_user_that_is_not_root() {
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile.split("\nFROM ").collect();
    let runtime = stages.last().unwrap();
    assert!(runtime.starts_with("gcr.io/distroless/cc-debian12:nonroot"), "the last stage is the image: {runtime}");
    assert!(runtime.contains("\nUSER 65532:65532\n"), "{runtime}");
    assert!(runtime.contains("ENTRYPOINT [\"/usr/local/bin/pg-proxy\"]"), "{runtime}");
    // The build stage's Rust is at least the workspace's rust-version.
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    let wanted = manifest.lines().find_map(|l| l.strip_prefix("rust-version = ")).unwrap().trim_matches('"');
    let image = dockerfile.lines().find_map(|l| l.strip_prefix("FROM docker.io/library/rust:")).unwrap();
    let version = image.split('-').next().unwrap();
    let parse = |v: &str| v.split('.').map(|n| n.parse::<u32>().unwrap()).collect::<Vec<_>>();
    assert!(parse(version) >= parse(wanted), "rust:{version} builds a workspace that needs {wanted}");
    // The chart and the Compose file run the user the image runs.
    let compose = std::fs::read_to_string(repo("deploy/compose.yaml")).unwrap();
    assert!(compose.contains("user: \"65532:65532\""));
    let deployment = std::fs::read_to_string(repo("deploy/helm/portcullis/templates/deployment.yaml")).unwrap();
    assert!(deployment.contains("runAsUser: 65532"));
}
