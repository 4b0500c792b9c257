//! Every way of altering a log that `verify` must catch, and the two ways
//! a log may end that are not tampering (a closed log, a crash).
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use portcullis_audit::note::{NoteSigner, NoteVerifier};
use portcullis_audit::proof::{check, prove_dir};
use portcullis_audit::segment::{content, hex, Line};
use portcullis_audit::tree::{leaf_hash, Frontier};
use portcullis_audit::verify::{verify_dir, Published, Report, VerifyError};
use portcullis_audit::writer::{list_segments, Writer, WriterOptions};
use portcullis_testkit::scratch::ScratchDir;

const ORIGIN: &str = "test.example/audit";

struct Log {
    dir: ScratchDir,
    verifier: NoteVerifier,
    signer: NoteSigner,
}

fn temp_dir(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("audit-{name}"))
}

/// A log of `records` records in segments of about `segment_bytes`,
/// checkpointed every 7 records, closed when `close`.
fn log(name: &str, records: u64, segment_bytes: u64, close: bool) -> Log {
    let dir = temp_dir(name);
    let signer = NoteSigner::generate(ORIGIN).unwrap();
    let verifier = signer.verifier();
    let mut options = WriterOptions::new(&*dir, signer.clone());
    options.segment_bytes = segment_bytes;
    let mut w = Writer::open(options).unwrap();
    for i in 0..records {
        w.append(format!(r#"{{"type":"statement","session":"s-{}","sql":"SELECT {i}"}}"#, i % 3), SystemTime::now())
            .unwrap();
        w.write().unwrap();
        if i % 7 == 6 {
            w.checkpoint().unwrap();
        }
    }
    if close {
        w.close().unwrap();
    } else {
        w.write().unwrap();
    }
    Log { dir, verifier, signer }
}

fn verify(log: &Log) -> Result<Report, VerifyError> {
    verify_dir(&log.dir, &log.verifier, &[], &mut |_| {})
}

fn segments(log: &Log) -> Vec<PathBuf> {
    list_segments(&log.dir).unwrap().into_iter().map(|(_, p)| p).collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

/// The line numbers (from 1) of a file's records.
fn record_lines(path: &Path) -> Vec<usize> {
    lines(path)
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(Line::classify(l.as_bytes()), Ok(Line::Record { .. })))
        .map(|(i, _)| i + 1)
        .collect()
}

#[track_caller]
fn tampered_at(result: Result<Report, VerifyError>, file: &Path, line: u64) -> String {
    match result {
        Err(VerifyError::Tampered { place, what }) => {
            assert_eq!((place.file.as_path(), place.line), (file, line), "{what}");
            what
        }
        other => panic!("expected tampering at {}:{line}, got {other:?}", file.display()),
    }
}

#[test]
fn a_clean_log_verifies() {
    let log = log("clean", 100, 2048, true);
    assert!(segments(&log).len() > 3, "the test needs several segments");
    let report = verify(&log).unwrap();
    assert_eq!((report.first, report.size, report.records()), (0, 100, 100));
    assert!(report.closed);
    assert_eq!(report.tail, 0);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[test]
fn an_edited_field_is_found() {
    let log = log("edit", 30, 1 << 20, true);
    let file = &segments(&log)[0];
    let mut l = lines(file);
    let at = record_lines(file)[4];
    l[at - 1] = l[at - 1].replace("SELECT 4", "SELECT 5");
    write_lines(file, &l);
    // The next record's chain names the old bytes.
    let what = tampered_at(verify(&log), file, at as u64 + 1);
    assert!(what.contains("chain"), "{what}");
}

#[test]
fn an_edited_last_record_before_a_checkpoint_is_found() {
    let log = log("edit-last", 7, 1 << 20, true);
    let file = &segments(&log)[0];
    let mut l = lines(file);
    let at = *record_lines(file).last().unwrap();
    l[at - 1] = l[at - 1].replace("SELECT 6", "SELECT 9");
    write_lines(file, &l);
    let what = tampered_at(verify(&log), file, at as u64 + 1);
    assert!(what.contains("root does not match"), "{what}");
}

#[test]
fn a_deleted_record_is_found() {
    let log = log("delete", 30, 1 << 20, true);
    let file = &segments(&log)[0];
    let mut l = lines(file);
    let at = record_lines(file)[10];
    l.remove(at - 1);
    write_lines(file, &l);
    let what = tampered_at(verify(&log), file, at as u64);
    assert!(what.contains("record number 11 where 10 was due"), "{what}");
}

#[test]
fn swapped_records_are_found() {
    let log = log("swap", 30, 1 << 20, true);
    let file = &segments(&log)[0];
    let mut l = lines(file);
    let (a, b) = (record_lines(file)[2], record_lines(file)[3]);
    l.swap(a - 1, b - 1);
    write_lines(file, &l);
    tampered_at(verify(&log), file, a as u64);
}

#[test]
fn a_cut_segment_is_found_by_the_next() {
    let log = log("cut", 100, 2048, true);
    let files = segments(&log);
    let l = lines(&files[1]);
    write_lines(&files[1], &l[..l.len() - 3]);
    let what = tampered_at(verify(&log), &files[2], 1);
    assert!(what.contains("takes the log up at record"), "{what}");
}

#[test]
fn a_cut_last_segment_is_found_by_a_published_checkpoint() {
    let log = log("cut-tail", 40, 1 << 20, true);
    // A checkpoint kept elsewhere at size 35.
    let file = &segments(&log)[0];
    let note = lines(file)
        .iter()
        .filter_map(|l| match Line::classify(l.as_bytes()) {
            Ok(Line::Checkpoint(c)) => Some(c),
            _ => None,
        })
        .find(|c| c.contains("\n35\n"))
        .unwrap();
    let published = Published {
        source: "ticket-123".into(),
        checkpoint: portcullis_audit::note::open(&note, &log.verifier).unwrap(),
    };
    assert_eq!(
        verify_dir(&log.dir, &log.verifier, std::slice::from_ref(&published), &mut |_| {}).unwrap().published_checked,
        1
    );
    // Cut after record 20: without the published checkpoint it looks
    // like a crash, with it it is caught.
    let l = lines(file);
    let at = record_lines(file)[21];
    write_lines(file, &l[..at - 1]);
    let report = verify(&log).unwrap();
    assert_eq!(report.size, 21);
    match verify_dir(&log.dir, &log.verifier, &[published], &mut |_| {}) {
        Err(VerifyError::Tampered { what, .. }) => assert!(what.contains("records were removed"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_record_appended_after_close_is_found() {
    let log = log("append", 10, 1 << 20, true);
    let file = &segments(&log)[0];
    let mut l = lines(file);
    // A forger who knows the format computes the chain.
    let last = l.iter().rev().find(|x| matches!(Line::classify(x.as_bytes()), Ok(Line::Record { .. }))).unwrap();
    let prev = hex(&leaf_hash(last.as_bytes()));
    l.push(format!(
        r#"{{"v":1,"seq":10,"prev":"{prev}","time":"2026-12-04T00:00:00.000000Z","type":"statement","sql":"forged"}}"#
    ));
    write_lines(file, &l);
    let what = tampered_at(verify(&log), file, l.len() as u64);
    assert!(what.contains("closed the log"), "{what}");
}

#[test]
fn a_rewritten_segment_is_found() {
    let log = log("rewrite", 60, 2048, true);
    let files = segments(&log);
    // Segment 1 rewritten consistently: every record after the edit
    // re-chained, every checkpoint re-signed with a key of the forger's.
    let forger = NoteSigner::generate(ORIGIN).unwrap();
    let target = &files[1];
    let original = lines(target);
    let header = match Line::classify(original[0].as_bytes()).unwrap() {
        Line::Header(h) => h,
        _ => unreachable!(),
    };
    let nodes = header.frontier.iter().map(|h| portcullis_audit::segment::hash_from_hex(h).unwrap()).collect();
    let mut frontier = Frontier::from_parts(header.first, nodes).unwrap();
    let mut prev = portcullis_audit::segment::hash_from_hex(&header.prev).unwrap();
    let mut out = vec![original[0].clone()];
    for line in &original[1..] {
        match Line::classify(line.as_bytes()).unwrap() {
            Line::Record { seq, .. } => {
                let rest = line.split_once(r#","time":"#).unwrap().1.replace("SELECT", "DELETE FROM audit; SELECT");
                let new = format!(r#"{{"v":1,"seq":{seq},"prev":"{}","time":{rest}"#, hex(&prev));
                prev = leaf_hash(new.as_bytes());
                frontier.push(prev);
                out.push(new);
            }
            Line::Checkpoint(_) => {
                let c = portcullis_audit::note::Checkpoint {
                    origin: ORIGIN.into(),
                    size: frontier.size(),
                    root: frontier.root(),
                    extensions: vec![],
                };
                let note = serde_json::to_string(&forger.sign(&c)).unwrap();
                out.push(format!(r#"{{"type":"checkpoint","checkpoint":{note}}}"#));
            }
            Line::Header(_) => unreachable!(),
        }
    }
    write_lines(target, &out);
    // The chain holds; the first checkpoint's signature does not.
    let first_checkpoint = out.iter().position(|l| l.starts_with(r#"{"type":"checkpoint""#)).unwrap() + 1;
    let what = tampered_at(verify(&log), target, first_checkpoint as u64);
    assert!(what.contains("does not verify with the key"), "{what}");
}

#[test]
fn checkpoints_signed_by_another_key_are_found() {
    let log = log("resign", 20, 1 << 20, true);
    let other = NoteSigner::generate(ORIGIN).unwrap().verifier();
    match verify_dir(&log.dir, &other, &[], &mut |_| {}) {
        Err(VerifyError::Tampered { place, what }) => {
            assert_eq!(place.line, 1, "{what}");
            assert!(what.contains("does not verify with the key"), "{what}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_crash_is_told_from_tampering() {
    let log = log("crash", 10, 1 << 20, false);
    let file = &segments(&log)[0];
    // A writer that did not close leaves the space it had reserved after
    // the log, zeros; a crash in the middle of a copy leaves part of a
    // record there.
    let mut bytes = std::fs::read(file).unwrap();
    let end = content(&bytes).len();
    assert!(bytes.len() > end && bytes[end..].iter().all(|&b| b == 0), "no reserved zeros after the log");
    let torn = br#"{"v":1,"seq":10,"prev":"00"#;
    bytes[end..end + torn.len()].copy_from_slice(torn);
    std::fs::write(file, bytes).unwrap();
    let report = verify(&log).unwrap();
    assert!(!report.closed);
    assert_eq!((report.size, report.last_checkpoint, report.tail), (10, 7, 3));
    assert!(
        report.warnings.iter().any(|w| w.contains("ends at record 9, 3 records after the checkpoint of size 7")),
        "{:?}",
        report.warnings
    );
    assert!(report.warnings.iter().any(|w| w.contains("incomplete")), "{:?}", report.warnings);

    // The gateway restarted: the log goes on in a new segment that vouches
    // for the crash's records.
    let mut w = Writer::open(WriterOptions::new(&*log.dir, log.signer.clone())).unwrap();
    // The zeros are gone; the torn record is left as the crash left it.
    assert!(std::fs::read(file).unwrap().ends_with(torn));
    w.append(r#"{"type":"statement","sql":"after"}"#, SystemTime::now()).unwrap();
    w.close().unwrap();
    let report = verify(&log).unwrap();
    assert_eq!(report.size, 11);
    assert!(report.closed);
    assert!(report.warnings.iter().any(|w| w.contains("resumed in segment 1")), "{:?}", report.warnings);
}

#[test]
fn a_copy_torn_by_a_crash_is_told_from_tampering() {
    let log = log("torn", 10, 1 << 20, false);
    let file = &segments(&log)[0];
    // The last record copied in part, its beginning still zeros (a copy
    // fills its place in no fixed order): seen once after a kill -9.
    let mut bytes = std::fs::read(file).unwrap();
    let end = content(&bytes).len();
    let last = bytes[..end - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    bytes[last..last + 29].fill(0);
    std::fs::write(file, &bytes).unwrap();
    let report = verify(&log).unwrap();
    assert_eq!(report.size, 9, "the log ends before the torn record");
    assert!(report.warnings.iter().any(|w| w.contains("copied in part")), "{:?}", report.warnings);
    // The gateway starts again and goes on in a new segment.
    let mut w = Writer::open(WriterOptions::new(&*log.dir, log.signer.clone())).unwrap();
    w.append(r#"{"type":"statement","sql":"after"}"#, SystemTime::now()).unwrap();
    w.close().unwrap();
    let report = verify(&log).unwrap();
    assert_eq!(report.size, 10);
    assert!(report.closed);

    // A NUL byte with more than a write's worth after it is no crash.
    let log = log_with_nul_early();
    let err = verify(&log).unwrap_err();
    assert!(err.to_string().contains("a crash tears only the last write"), "{err}");
}

/// A log whose second record has a NUL byte, followed by more than
/// [`MAX_TORN_BYTES`] of lines.
fn log_with_nul_early() -> Log {
    let log = log("nul-early", 3, 1 << 30, false);
    let file = &segments(&log)[0];
    let mut l = lines(file);
    let at = record_lines(file)[1];
    l[at - 1].replace_range(10..11, "\0");
    let filler = format!("{{\"v\":1,\"filler\":\"{}\"}}", "x".repeat(1000));
    l.extend(std::iter::repeat_n(filler, portcullis_audit::verify::MAX_TORN_BYTES / 1000 + 10));
    write_lines(file, &l);
    log
}

#[test]
fn a_writer_does_not_continue_a_tampered_log() {
    let log = log("no-continue", 10, 1 << 20, true);
    let file = &segments(&log)[0];
    let mut l = lines(file);
    let at = record_lines(file)[1];
    l[at - 1] = l[at - 1].replace("SELECT 1", "SELECT 2");
    write_lines(file, &l);
    let err = Writer::open(WriterOptions::new(&*log.dir, log.signer.clone())).unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[test]
fn retention_keeps_a_verifiable_log_and_receipts() {
    let log = log("retention", 100, 2048, true);
    let before = segments(&log).len();
    // Every closed segment is older than "no time at all".
    let mut options = WriterOptions::new(&*log.dir, log.signer.clone());
    options.keep = Some(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(20));
    let mut w = Writer::open(options).unwrap();
    w.append(r#"{"type":"statement","sql":"after retention"}"#, SystemTime::now()).unwrap();
    w.close().unwrap();
    let after = segments(&log);
    assert!(after.len() < before, "{} segments, {} before", after.len(), before);
    let report = verify(&log).unwrap();
    assert_eq!(report.size, 101);
    assert!(report.first > 0);
    assert!(report.warnings.iter().any(|w| w.contains("older segments")), "{:?}", report.warnings);
    // The last record's receipt is made from the frontier and what is kept.
    let receipt = prove_dir(&log.dir, 100).unwrap();
    check(&receipt, &log.verifier).unwrap();
}

#[test]
fn receipts_verify_and_fail_when_altered() {
    let log = log("receipts", 50, 2048, true);
    for record in [0, 1, 17, 48, 49] {
        let receipt = prove_dir(&log.dir, record).unwrap();
        check(&receipt, &log.verifier).unwrap();
        let mut bad = receipt.clone();
        bad.leaf = bad.leaf.replace("SELECT", "DELETE");
        assert!(check(&bad, &log.verifier).is_err());
        let mut bad = receipt.clone();
        bad.record += 1;
        assert!(check(&bad, &log.verifier).is_err());
        let other = NoteSigner::generate(ORIGIN).unwrap().verifier();
        assert!(check(&receipt, &other).is_err());
        if let Some(p) = receipt.proof.first() {
            let mut bad = receipt.clone();
            bad.proof[0] = p.chars().rev().collect();
            assert!(check(&bad, &log.verifier).is_err());
        }
    }
    assert!(prove_dir(&log.dir, 50).is_err());
}

/// Writes the seed corpus of the `audit_log` fuzz target (a log signed
/// with the target's fixed key, cut into segments, and a receipt):
/// `cargo test -p portcullis-audit --test tamper -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/audit_log"]
fn write_fuzz_seeds() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/audit_log");
    std::fs::create_dir_all(&out).unwrap();
    let dir = temp_dir("fuzz-seeds");
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let signer = NoteSigner::new("fuzz.example/audit", key).unwrap();
    let mut options = WriterOptions::new(&*dir, signer);
    options.segment_bytes = 1500;
    let mut w = Writer::open(options).unwrap();
    for i in 0..12 {
        w.append(format!(r#"{{"type":"statement","session":"s-1","n":{i},"sql":"SELECT {i}"}}"#), SystemTime::now())
            .unwrap();
        w.write().unwrap();
        if i % 4 == 3 {
            w.checkpoint().unwrap();
        }
    }
    w.close().unwrap();
    for (index, path) in list_segments(&dir).unwrap() {
        std::fs::copy(&path, out.join(format!("segment-{index}"))).unwrap();
    }
    let receipt = prove_dir(&dir, 5).unwrap();
    std::fs::write(out.join("receipt"), serde_json::to_string(&receipt).unwrap()).unwrap();
}
