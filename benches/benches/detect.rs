//! `Detectors::redact` throughput on ~1 MB texts: English prose and
//! service logs with no PII (the common case: every byte scanned, nothing
//! allocated), and PII-dense records. Every text's match count is checked
//! before it is timed, so the benchmark is also a correctness check.
//!
//! Run: `cargo bench -p portcullis-benches --bench detect -- --warm-up-time 1 --measurement-time 3`.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use policy_core::{Detectors, Policy};

/// All nine built-in kinds, one detector each (the PII corpus's policy).
const POLICY: &str = include_str!("../../testdata/pii/policy.toml");

const TARGET: usize = 1 << 20;

const PROSE: &str = "The committee met on a grey Tuesday morning to review the quarterly \
figures. Revenue had grown, though more slowly than anyone had hoped, and the new \
warehouse in the north was still not running at full capacity. Several members asked \
whether the delays were caused by the supplier or by the software migration, which had \
taken three weeks longer than planned. The operations lead explained that both had \
played a part: the supplier shipped the wrong shelving twice, and the inventory system \
could not import the old records until the vendor released a patch. After some \
discussion, the committee agreed to revisit the question in the spring, when the \
numbers for the first two quarters would be available. Before closing, the chair \
thanked the team for their patience and reminded everyone that the annual report was \
due at the end of the month, with drafts to be circulated by the 20th. ";

/// A small deterministic generator, so the texts are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Service logs: timestamps, levels, paths, ids, durations, hex request
/// ids, versions, epoch milliseconds. No PII.
fn log_line(rng: &mut Rng, out: &mut String) {
    let (h, m, s, ms) = (rng.below(24), rng.below(60), rng.below(60), rng.below(1000));
    let ts = format!("2024-01-{:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z", 1 + rng.below(28));
    let level =
        ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"].get(rng.below(6) as usize).copied().unwrap_or("INFO");
    let line = match rng.below(5) {
        0 => format!(
            "{ts} {level} [http] GET /api/v1/orders/{}?page={} status=200 duration={}.{}ms bytes={} request_id={:016x}\n",
            rng.below(100_000),
            rng.below(50),
            rng.below(900),
            rng.below(10),
            rng.below(60_000),
            rng.next()
        ),
        1 => format!(
            "{ts} {level} [db] query took {}ms rows={} pool=primary conn={} txn={:08x}\n",
            rng.below(5_000),
            rng.below(10_000),
            rng.below(64),
            rng.next() as u32
        ),
        2 => format!(
            "{ts} {level} [worker-{}] job {} finished in {}.{:03}s (attempt {}/5, queue=default, ts={})\n",
            rng.below(16),
            rng.below(1_000_000),
            rng.below(60),
            rng.below(1000),
            1 + rng.below(5),
            1_705_000_000_000 + rng.below(1_000_000_000)
        ),
        3 => format!(
            "{ts} {level} [deploy] service checkout-api version 2.{}.{} build {:07x} commit {:016x}{:016x}{:08x} replicas={}\n",
            rng.below(40),
            rng.below(20),
            rng.next() & 0xfff_ffff,
            rng.next(),
            rng.next(),
            rng.next() as u32,
            1 + rng.below(12)
        ),
        _ => format!(
            "{ts} {level} [cache] hit ratio {}.{}% evictions={} size={}MB keys={} uuid={:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}\n",
            rng.below(100),
            rng.below(100),
            rng.below(1000),
            rng.below(4096),
            rng.below(900_000),
            rng.next() as u32,
            rng.below(0x10000),
            rng.below(0x1000),
            rng.below(0x1000),
            rng.next() & 0xffff_ffff_ffff
        ),
    };
    out.push_str(&line);
}

/// Records with PII: (line, number of matches in it).
fn pii_line(rng: &mut Rng, n: u64, out: &mut String) -> usize {
    let (a, b) = (rng.below(256), rng.below(256));
    let (line, count) = match n % 4 {
        0 => (
            format!(
                "{n}: alice{n}@example.com paid with 4111 1111 1111 1111 from 192.168.{a}.{b}, phone (555) 123-4567, ssn 123-45-6789\n"
            ),
            5,
        ),
        1 => (
            format!("{n}: refund to DE89 3704 0044 0532 0130 00 for bob@example.org (+44 20 7946 0958) card 5555555555554444\n"),
            4,
        ),
        2 => (
            format!(
                "{n}: key AKIAIOSFODNN7EXAMPLE used by 10.0.{a}.{b} with eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl\n"
            ),
            3,
        ),
        _ => (format!("{n}: {{\"ssn\":\"078-05-1120\",\"email\":\"carol@example.net\",\"phone\":\"555-867-5309\"}}\n"), 3),
    };
    out.push_str(&line);
    count
}

fn prose_text() -> String {
    let mut text = String::with_capacity(TARGET + PROSE.len());
    while text.len() < TARGET {
        text.push_str(PROSE);
    }
    text
}

fn log_text() -> String {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut text = String::with_capacity(TARGET + 256);
    while text.len() < TARGET {
        log_line(&mut rng, &mut text);
    }
    text
}

fn pii_text() -> (String, usize) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut text = String::with_capacity(TARGET + 256);
    let (mut n, mut count) = (0, 0);
    while text.len() < TARGET {
        count += pii_line(&mut rng, n, &mut text);
        n += 1;
    }
    (text, count)
}

fn bench(c: &mut Criterion) {
    let policy = match Policy::from_toml_str(POLICY, "testdata/pii/policy.toml") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let detectors = Detectors::new(&policy.detectors, None);
    let active = vec![true; policy.detectors.len()];
    let (pii, pii_matches) = pii_text();
    let texts = [("english_no_pii", prose_text(), 0), ("logs_no_pii", log_text(), 0), ("pii_dense", pii, pii_matches)];

    let mut group = c.benchmark_group("detect_redact_1MB");
    for (name, text, expected) in &texts {
        let mut matches = Vec::new();
        detectors.find(text, &active, &mut matches);
        assert_eq!(matches.len(), *expected, "{name}: match count");
        assert_eq!(detectors.redact(text, &active).is_some(), *expected > 0, "{name}");
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(*name, |b| b.iter(|| detectors.redact(black_box(text), black_box(&active))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
