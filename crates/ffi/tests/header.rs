//! `include/portcullis.h` is what the pinned cbindgen generates from this
//! crate: regenerated here and compared byte for byte.
//!
//! After changing the ABI: `PORTCULLIS_BLESS=1 cargo test -p portcullis-ffi --test header`.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The header cbindgen generates from `src/` with `cbindgen.toml`.
fn generate() -> String {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    // `lib.rs` declares the modules; cbindgen follows them.
    let builder = cbindgen::Builder::new().with_config(config).with_src(dir.join("src/lib.rs"));
    let mut out = Vec::new();
    builder.generate().expect("cbindgen").write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

#[test]
fn the_committed_header_is_what_cbindgen_generates() {
    let path: &Path = &crate_dir().join("include/portcullis.h");
    let generated = generate();
    if std::env::var_os("PORTCULLIS_BLESS").is_some() {
        std::fs::write(path, &generated).expect("write the header");
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| committed.lines().count().min(generated.lines().count()) + 1, |i| i + 1);
        panic!(
            "{} is not what cbindgen generates (first difference at line {line}); \
             run `PORTCULLIS_BLESS=1 cargo test -p portcullis-ffi --test header` and commit it",
            path.display()
        );
    }
    for name in ["portcullis_engine_new", "portcullis_decide", "portcullis_mask_row", "PORTCULLIS_RESULT_OK"] {
        assert!(generated.contains(name), "the header lacks {name}");
    }
}

/// Every result code the header declares has a message: `portcullis_error`
/// knows each number (its lookup table is kept by hand next to the enum).
#[test]
fn every_result_code_in_the_header_has_a_message() {
    let header = generate();
    let mut codes = 0;
    for line in header.lines().map(str::trim).filter(|l| l.starts_with("PORTCULLIS_RESULT_")) {
        let (name, n) = line.trim_end_matches(',').split_once(" = ").expect("NAME = N");
        let n: u32 = n.parse().expect("a number");
        let mut buf = [0 as std::ffi::c_char; 256];
        let mut written = 0usize;
        // SAFETY: a local buffer of its length and a local count.
        unsafe { portcullis::portcullis_error(n, buf.as_mut_ptr(), buf.len(), &mut written) };
        let message: String = buf[..written].iter().map(|&c| c as u8 as char).collect();
        assert!(!message.starts_with("unknown result code"), "{name} = {n} has no message");
        codes += 1;
    }
    assert!(codes >= 29, "found only {codes} result codes in the header");
}
