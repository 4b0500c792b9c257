//! The audit log reader on hostile bytes: a segment verified, its lines
//! classified, its checkpoints opened, a receipt read and checked. Nothing
//! may panic; a segment that verifies must describe a consistent tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_audit::note::{self, NoteSigner, NoteVerifier};
use portcullis_audit::proof::{check, Receipt};
use portcullis_audit::segment::Line;
use portcullis_audit::verify::verify_bytes;

/// The key of the seed corpus (fixed, so that seeds carry valid
/// signatures and the fuzzer reaches past them).
fn verifier() -> NoteVerifier {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    match NoteSigner::new("fuzz.example/audit", key) {
        Ok(s) => s.verifier(),
        Err(e) => panic!("the fuzz key: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let verifier = verifier();
    if let Ok(report) = verify_bytes(std::path::Path::new("fuzz.jsonl"), data, &verifier, &[]) {
        assert!(report.size >= report.first);
        assert!(report.last_checkpoint <= report.size);
    }
    for line in data.split(|&b| b == b'\n') {
        if let Ok(Line::Checkpoint(text)) = Line::classify(line) {
            let _ = note::open(&text, &verifier);
            let _ = note::signers(&text);
        }
    }
    if let Ok(receipt) = serde_json::from_slice::<Receipt>(data) {
        let _ = check(&receipt, &verifier);
    }
});
