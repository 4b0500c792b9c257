//! `--proxy-cpus`: the proxies on some CPUs, everything else on the rest.
//!
//! On a small machine the gateway, PostgreSQL and pgbench take turns on
//! the same CPUs, and whatever the gateway adds per statement shows twice
//! in the throughput: once as its own time, and again as the caches it
//! takes from the backends it shares a CPU with. A gateway is usually
//! deployed on CPUs of its own, so a run can place it that way: the
//! proxies (the gateway, pgbouncer, the relay) are started on the CPUs
//! named, and this program, the cluster, pgbench and psql run on the
//! others. The proxies' CPU per transaction is then measured without the
//! backends' cache misses, and the throughput is bound by the CPUs the
//! database has.
//!
//! A CPU mask is per thread and a child starts with its parent thread's:
//! the main thread keeps the rest of the CPUs, and takes the proxies' set
//! only while it starts a proxy.

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// Where the proxies and everything else run.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    proxies: CpuSet,
    rest: CpuSet,
    /// The proxies' CPUs, as given (for the report).
    named: Vec<usize>,
}

impl Placement {
    /// Splits the CPUs this program may use: `list` (`1`, `2,3`, `2-3`)
    /// for the proxies, the others for the rest. Every CPU named must be
    /// one this program may use, and at least one must be left over.
    pub(crate) fn split(list: &str) -> Result<Placement, String> {
        let named = parse_list(list)?;
        let allowed = sched_getaffinity(None).map_err(|e| format!("reading this program's CPUs: {e}"))?;
        let usable: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&cpu| allowed.is_set(cpu)).collect();
        let mut proxies = CpuSet::new();
        for &cpu in &named {
            if !usable.contains(&cpu) {
                return Err(format!(
                    "--proxy-cpus: CPU {cpu} is not one this program may run on (it may use {usable:?})"
                ));
            }
            proxies.set(cpu);
        }
        let mut rest = CpuSet::new();
        for &cpu in usable.iter().filter(|cpu| !named.contains(cpu)) {
            rest.set(cpu);
        }
        if rest.count() == 0 {
            return Err(format!("--proxy-cpus {list} leaves no CPU for PostgreSQL and pgbench (of {usable:?})"));
        }
        Ok(Placement { proxies, rest, named })
    }

    /// Moves the calling thread to the rest of the CPUs: the cluster and
    /// every client started from it afterwards run there.
    pub(crate) fn enter_rest(&self) -> Result<(), String> {
        sched_setaffinity(None, &self.rest).map_err(|e| format!("moving to the CPUs left: {e}"))
    }

    /// Runs `start` (which starts a proxy) on the proxies' CPUs, and
    /// comes back to the rest.
    pub(crate) fn on_proxy_cpus<T>(&self, start: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        sched_setaffinity(None, &self.proxies).map_err(|e| format!("moving to the proxies' CPUs: {e}"))?;
        let started = start();
        self.enter_rest()?;
        started
    }

    /// The proxies' CPUs, for the report: `1` or `2, 3`.
    pub(crate) fn describe(&self) -> String {
        self.named.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// Runs `start` on the proxies' CPUs when a placement is given, else where
/// this thread runs.
pub(crate) fn start_proxy<T>(
    placement: Option<&Placement>,
    start: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    match placement {
        Some(p) => p.on_proxy_cpus(start),
        None => start(),
    }
}

/// `1`, `0,2` or `2-3` (and mixes of them) as a sorted list without
/// repeats.
fn parse_list(list: &str) -> Result<Vec<usize>, String> {
    let cpu = |text: &str| -> Result<usize, String> {
        let n: usize = text.trim().parse().map_err(|_| format!("--proxy-cpus: {text:?} is not a CPU number"))?;
        if n >= CpuSet::MAX_CPU {
            return Err(format!("--proxy-cpus: CPU {n} is past the largest this program handles"));
        }
        Ok(n)
    };
    let mut out = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (cpu(from)?, cpu(to)?);
                if from > to {
                    return Err(format!("--proxy-cpus: {part:?} runs backwards"));
                }
                out.extend(from..=to);
            }
            None => out.push(cpu(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn cpu_lists_are_read_as_taskset_reads_them() {
        assert_eq!(parse_list("1"), Ok(vec![1]));
        assert_eq!(parse_list("3,0-1,1"), Ok(vec![0, 1, 3]));
        assert!(parse_list("").is_err());
        assert!(parse_list("2-1").is_err());
        assert!(parse_list("a").is_err());
        assert!(parse_list("1,").is_err());
    }

    #[test]
    fn a_split_leaves_a_cpu_for_the_database_or_is_refused() {
        let allowed = sched_getaffinity(None).unwrap();
        let usable: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&cpu| allowed.is_set(cpu)).collect();
        let all = usable.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let refused = Placement::split(&all).unwrap_err();
        assert!(refused.contains("leaves no CPU"), "{refused}");
        assert!(Placement::split(&CpuSet::MAX_CPU.saturating_sub(1).to_string()).is_err());
        if let [first, second, ..] = usable[..] {
            let placement = Placement::split(&second.to_string()).unwrap();
            assert!(placement.proxies.is_set(second) && !placement.proxies.is_set(first));
            assert!(placement.rest.is_set(first) && !placement.rest.is_set(second));
            assert_eq!(placement.describe(), second.to_string());
        }
    }
}
