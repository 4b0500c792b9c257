//! A histogram of durations that the gateway's threads observe at once
//! without taking a lock or sharing a cache line.
//!
//! `prometheus_client`'s `Histogram` takes a mutex per observation. The
//! engine's decision time and the audit log's write time are observed for
//! every statement, from every runtime thread, and under load that mutex's
//! cache line moves between the cores at each one. Here each thread adds
//! to a shard of its own (atomics, one cache line apart from the other
//! shards'); a scrape adds the shards up.
//!
//! The buckets are a first upper bound doubling, as
//! `prometheus_client::metrics::histogram::exponential_buckets(first, 2.0,
//! bounds)` makes them, and the text is that of a `Histogram`.
//!
//! ```
//! use std::time::Duration;
//! use pg_proxy::metrics::durations::DurationHistogram;
//! use prometheus_client::registry::{Registry, Unit};
//!
//! let write = DurationHistogram::new(Duration::from_micros(10), 20);
//! write.observe(Duration::from_micros(15));
//! write.observe(Duration::from_millis(3));
//! let mut registry = Registry::default();
//! registry.register_with_unit("write", "Time of a write", Unit::Seconds, write.clone());
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains("write_seconds_bucket{le=\"0.00002\"} 1\n"), "{text}");
//! assert!(text.contains("write_seconds_count 2\n"), "{text}");
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Most upper bounds a histogram has (the `+Inf` bucket comes after them).
pub const MAX_BOUNDS: usize = 24;

/// Shards of a histogram: threads beyond this many share them.
const SHARDS: usize = 8;

/// One thread's counts: per bucket (the last is `+Inf`), and the sum.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    buckets: [AtomicU64; MAX_BOUNDS + 1],
    sum_nanos: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    /// The first upper bound, in nanoseconds.
    first_nanos: u64,
    /// Upper bounds (`first_nanos` doubling), at most [`MAX_BOUNDS`].
    bounds: usize,
    shards: [Shard; SHARDS],
}

/// A histogram of durations in doubling buckets, observed without a lock.
/// Clones share the counts.
#[derive(Debug, Clone)]
pub struct DurationHistogram {
    inner: Arc<Inner>,
}

/// The shard of the calling thread: threads take them in turn.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl DurationHistogram {
    /// A histogram whose upper bounds are `first`, twice `first`, and so
    /// on, `bounds` of them (at most [`MAX_BOUNDS`]; more are dropped),
    /// then `+Inf`. `first` is taken as 1 ns when it is shorter.
    pub fn new(first: Duration, bounds: usize) -> DurationHistogram {
        let first_nanos = u64::try_from(first.as_nanos()).unwrap_or(u64::MAX).max(1);
        let inner = Inner { first_nanos, bounds: bounds.min(MAX_BOUNDS), shards: Default::default() };
        DurationHistogram { inner: Arc::new(inner) }
    }

    /// Counts one duration: in the first bucket whose upper bound it does
    /// not exceed.
    pub fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.bucket_of(nanos);
        let shard = self.inner.shards.get(shard_index()).unwrap_or(&self.inner.shards[0]);
        if let Some(count) = shard.buckets.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The bucket of a duration of `nanos`: the smallest `i` with `nanos ≤
    /// first × 2^i`, or `bounds` (`+Inf`).
    fn bucket_of(&self, nanos: u64) -> usize {
        // nanos ≤ first × 2^i  ⇔  ⌈nanos / first⌉ ≤ 2^i.
        let ratio = nanos.div_ceil(self.inner.first_nanos);
        let i = if ratio <= 1 { 0 } else { (u64::BITS - (ratio - 1).leading_zeros()) as usize };
        i.min(self.inner.bounds)
    }

    /// The upper bounds in seconds, as `exponential_buckets` computes them.
    fn bounds_seconds(&self) -> impl Iterator<Item = f64> {
        let first = self.inner.first_nanos as f64 / 1e9;
        std::iter::successors(Some(first), |b| Some(b * 2.0)).take(self.inner.bounds)
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut counts = [0u64; MAX_BOUNDS + 1];
        let mut sum_nanos = 0u64;
        for shard in &self.inner.shards {
            for (total, count) in counts.iter_mut().zip(&shard.buckets) {
                *total = total.wrapping_add(count.load(Ordering::Relaxed));
            }
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
        }
        let bounds = self.inner.bounds;
        let mut buckets: Vec<(f64, u64)> = self.bounds_seconds().zip(counts.iter().copied()).collect::<Vec<_>>();
        buckets.push((f64::INFINITY, counts.get(bounds).copied().unwrap_or(0)));
        // The count is the buckets' total, so that `+Inf` always equals it.
        let count = buckets.iter().map(|(_, c)| c).sum();
        encoder.encode_histogram::<NoLabelSet>(sum_nanos as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
    use prometheus_client::registry::{Registry, Unit};

    fn render(metric: impl EncodeMetric + TypedMetric + Clone + std::fmt::Debug + Send + Sync + 'static) -> String {
        let mut registry = Registry::default();
        registry.register_with_unit("took", "Time taken", Unit::Seconds, metric);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    /// Every line but the sum's, which adds in another order.
    fn without_sum(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with("took_seconds_sum")).collect()
    }

    fn sum_of(text: &str) -> f64 {
        let line = text.lines().find(|l| l.starts_with("took_seconds_sum")).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn renders_as_prometheus_clients_histogram_of_the_same_durations() {
        let ours = DurationHistogram::new(Duration::from_micros(10), 20);
        let theirs = Histogram::new(exponential_buckets(1e-5, 2.0, 20));
        let nanos =
            [0, 1, 9_999, 10_001, 19_999, 20_001, 123_456, 7_000_000, 5_242_879_999, 9_000_000_000, u64::MAX / 4];
        for n in nanos {
            ours.observe(Duration::from_nanos(n));
            theirs.observe(Duration::from_nanos(n).as_secs_f64());
        }
        let (a, b) = (render(ours), render(theirs));
        assert_eq!(without_sum(&a), without_sum(&b), "\n{a}\n{b}");
        assert!((sum_of(&a) - sum_of(&b)).abs() <= sum_of(&b) * 1e-12, "\n{a}\n{b}");
    }

    #[test]
    fn a_duration_equal_to_a_bound_counts_in_that_bound() {
        let h = DurationHistogram::new(Duration::from_micros(1), 21);
        for (nanos, bucket) in [(0, 0), (1_000, 0), (1_001, 1), (2_000, 1), (2_001, 2), (4_000, 2), (1_048_576_000, 20)]
        {
            assert_eq!(h.bucket_of(nanos), bucket, "{nanos} ns");
        }
        assert_eq!(h.bucket_of(1_048_576_001), 21, "past the last bound: +Inf");
        assert_eq!(h.bucket_of(u64::MAX), 21);
    }

    /// Twice as many threads as shards: some share one.
    #[test]
    fn threads_observing_at_once_lose_no_count() {
        let h = DurationHistogram::new(Duration::from_micros(10), 20);
        let threads = 2 * SHARDS as u64;
        let each = 200_000u64;
        let start = std::sync::Barrier::new(threads as usize);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let (h, start) = (h.clone(), &start);
                scope.spawn(move || {
                    start.wait();
                    for i in 0..each {
                        h.observe(Duration::from_micros(i % 50));
                    }
                });
            }
        });
        let text = render(h);
        let all = threads * each;
        assert!(text.contains(&format!("took_seconds_count {all}\n")), "{text}");
        assert!(text.contains(&format!("took_seconds_bucket{{le=\"+Inf\"}} {all}\n")), "{text}");
        // 0–10 µs: 11 of every 50 values.
        assert!(text.contains(&format!("took_seconds_bucket{{le=\"0.00001\"}} {}\n", all / 50 * 11)), "{text}");
    }
}
