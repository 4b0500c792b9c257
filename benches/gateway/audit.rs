//! `gateway-bench --audit`: the gateway with the audit log off, and on
//! with each durability (`none`, `commit`, `every`), in one run.
//!
//! Every (configuration, mode) run starts a fresh gateway (a fresh log),
//! warms it for a second, runs pgbench, and stops it with SIGTERM: its
//! closing log line counts the records, writes and syncs of its life,
//! which give the syncs per committed transaction. With `--alternate`,
//! a gateway per (configuration, mode) is started once instead, and
//! rounds of short runs alternate between them ([`run_alternating`]).
//! The machine's own
//! sync latency (4 KiB written and `fdatasync`ed, in the directory the logs
//! are in) is measured beside.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::{
    check_interrupted, fmt_opt, median, number, pgbench, ratio, run_command, start_gateway_in, verdict, BenchConfig,
    Endpoint, Options, Run, Tools, CONFIGS,
};
use pg_proxy::cluster::Cluster;

/// The modes compared, in the report's order.
pub(super) const MODES: [Mode; 4] = [Mode::Off, Mode::None, Mode::Commit, Mode::Every];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Off,
    None,
    Commit,
    Every,
}

impl Mode {
    /// A mode by its name in `--modes`: `off`, or the durability.
    pub(super) fn parse(name: &str) -> Result<Mode, String> {
        MODES
            .into_iter()
            .find(|m| m.durability().unwrap_or("off") == name)
            .ok_or_else(|| format!("unknown mode {name:?} (off, none, commit, every)"))
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Off => "audit off",
            Mode::None => "\"none\"",
            Mode::Commit => "\"commit\"",
            Mode::Every => "\"every\"",
        }
    }

    fn durability(self) -> Option<&'static str> {
        match self {
            Mode::Off => None,
            Mode::None => Some("none"),
            Mode::Commit => Some("commit"),
            Mode::Every => Some("every"),
        }
    }
}

/// One run: pgbench's figures and the log's counters.
struct AuditRun {
    run: Run,
    /// Syncs over the gateway's life per transaction it carried.
    syncs_per_txn: Option<f64>,
    /// Batches of records handed to the OS per transaction.
    writes_per_txn: Option<f64>,
    /// Batches per transaction whose session found the writer's lock
    /// taken.
    lock_waits_per_txn: Option<f64>,
}

/// The configurations the audit comparison runs by default.
pub(super) fn default_configs() -> Vec<&'static BenchConfig> {
    CONFIGS.iter().filter(|c| c.name == "select-prepared-c16" || c.name == "tpcb-c8").collect()
}

pub(super) fn run(
    options: &Options,
    tools: &Tools,
    cluster: &Cluster,
    password: &str,
    command: &str,
) -> Result<String, String> {
    let fsync = fsync_latency(cluster)?;
    eprintln!("fdatasync of 4 KiB here: median {:.3} ms", fsync.as_secs_f64() * 1e3);
    let keys = cluster.dir().join("audit-keys");
    let mut keygen = std::process::Command::new(&tools.pg_proxy);
    keygen.args(["audit", "keygen", "--out"]).arg(&keys);
    run_command(keygen, "pg-proxy audit keygen")?;

    let mut runs: Vec<Vec<Vec<AuditRun>>> =
        (0..options.configs.len()).map(|_| MODES.map(|_| Vec::new()).into()).collect();
    let setup = Setup { tools, cluster, password, keys: &keys, placement: options.placement.as_ref() };
    if options.alternate {
        run_alternating(options, &setup, &mut runs)?;
        return Ok(report(options, command, &runs, fsync));
    }
    let mut serial = 0usize;
    for rep in 0..options.reps {
        for (ci, config) in options.configs.iter().enumerate() {
            for k in 0..options.modes.len() {
                let Some(&mode) = options.modes.get(run_order(rep + ci, k, options.modes.len())) else { continue };
                check_interrupted()?;
                serial += 1;
                let run = one_run(options, &setup, config, mode, serial)?;
                progress(&format!("rep {}/{}", rep + 1, options.reps), config, mode, &run);
                if let Some(slot) = runs.get_mut(ci).and_then(|c| c.get_mut(k_of(mode))) {
                    slot.push(run);
                }
            }
        }
    }
    Ok(report(options, command, &runs, fsync))
}

/// The `k`th mode run in row `row` of a Williams square of `n` modes: the
/// rows rotate `0, 1, n-1, 2, n-2, …`, so over `n` repetitions each mode
/// runs once in each place and right after each other mode once (`n`
/// even). With a plain rotation "commit" always came right after "none",
/// and whatever a run leaves behind (its log's deletion) fell on the
/// same mode every time.
fn run_order(row: usize, k: usize, n: usize) -> usize {
    let step = if k % 2 == 1 { k.div_ceil(2) } else { n - k / 2 };
    (row + if k == 0 { 0 } else { step }) % n
}

/// Lets the previous run's deletion of its directory finish before the
/// next run begins: `sync` commits the file system's journal, and with
/// it the discards of the freed blocks (the disk here is mounted with
/// `discard`); then a moment for the flusher. Every run, audit off's
/// too, begins after the same wait.
fn settle() -> Result<(), String> {
    run_command(std::process::Command::new("sync"), "sync")?;
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}

/// The throughput ratio to audit off implied by the gateway's share of
/// the machine's busy CPU with the log off and on, when the rest of the
/// machine does the same work per transaction and the CPU limits the
/// throughput: the rest takes `1 − share` of the machine in both, so the
/// machine's time per transaction grows by `(1 − off) / (1 − on)`.
fn implied_ratio(off: f64, on: f64) -> Option<f64> {
    (off < 1.0 && on < 1.0).then(|| (1.0 - on) / (1.0 - off))
}

fn k_of(mode: Mode) -> usize {
    MODES.iter().position(|m| *m == mode).unwrap_or(0)
}

/// A gateway running one mode, started and warmed, for one
/// configuration's runs.
struct Gateway {
    proc: super::Proc,
    endpoint: Endpoint,
    /// Its directory's name in the cluster's.
    name: String,
    mode: Mode,
    /// Transactions it carried, the warm-up's too.
    transactions: u64,
    /// Its log's directory under `GATEWAY_BENCH_AUDIT_DIR`, when there:
    /// removed when the gateway is dropped, stopped or not (an error or
    /// an interrupt leaves no log behind on the file system it names).
    outside: Option<std::path::PathBuf>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(dir) = &self.outside {
            // Killed first (a no-op once stopped): nothing writes while
            // the directory goes.
            let _ = self.proc.child.kill();
            let _ = self.proc.child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The log's counters over a gateway's life, per transaction it
/// carried: syncs, writes, and writes whose session found the writer's
/// lock taken (`None` with the log off).
type Counters = (Option<f64>, Option<f64>, Option<f64>);

/// What every gateway of the comparison is started with.
struct Setup<'a> {
    tools: &'a Tools,
    cluster: &'a Cluster,
    /// The upstream role's password.
    password: &'a str,
    /// The directory of the logs' signing key.
    keys: &'a std::path::Path,
    /// Where the gateways run (`--proxy-cpus`).
    placement: Option<&'a crate::cpus::Placement>,
}

/// Starts a gateway in `mode` (its configuration and log in
/// `cluster.dir()/name`) and warms it with a second of `config`.
fn start(setup: &Setup<'_>, config: &BenchConfig, mode: Mode, name: String) -> Result<Gateway, String> {
    let Setup { tools, cluster, password, keys, .. } = *setup;
    // The log in the gateway's directory, or under
    // GATEWAY_BENCH_AUDIT_DIR (another file system: a tmpfs leaves the
    // disk out of the comparison).
    let outside = std::env::var_os("GATEWAY_BENCH_AUDIT_DIR").map(|base| std::path::Path::new(&base).join(&name));
    let dir = match &outside {
        Some(outside) => outside.join("audit").display().to_string(),
        None => "audit".to_string(),
    };
    let extra = match mode.durability() {
        Some(d) => format!(
            "[audit]\ndir = {dir:?}\nsigning_key_file = {:?}\ndurability = \"{d}\"\n",
            keys.join("audit-key.pem").display().to_string()
        ),
        None => String::new(),
    };
    let (proc, port, jwt) = crate::cpus::start_proxy(setup.placement, || {
        start_gateway_in(tools, cluster, password, &name, &extra, "warn,pg_proxy::audit=info")
    })?;
    let endpoint = Endpoint { port, user: "bench".to_string(), password: jwt };
    let mut gateway = Gateway { proc, endpoint, name, mode, transactions: 0, outside };
    gateway.transactions = pgbench(tools, &gateway.endpoint, config.args, 1, None)?.transactions;
    Ok(gateway)
}

impl Gateway {
    /// One pgbench run of `seconds` through this gateway.
    fn run(&mut self, tools: &Tools, config: &BenchConfig, seconds: u64) -> Result<Run, String> {
        let run = pgbench(tools, &self.endpoint, config.args, seconds, Some(self.proc.pid()))?;
        self.proc.check_running()?;
        self.transactions += run.transactions;
        Ok(run)
    }

    /// Stops the gateway with SIGTERM (it closes its log and says what
    /// it did), removes its directory, and gives its log's counters.
    fn stop(mut self, cluster: &Cluster) -> Result<Counters, String> {
        let pid = self.proc.pid().to_string();
        run_command(
            {
                let mut kill = std::process::Command::new("kill");
                kill.args(["-TERM", &pid]);
                kill
            },
            "kill -TERM",
        )?;
        let deadline = Instant::now() + Duration::from_secs(40);
        while self.proc.child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                return Err("the gateway did not stop within 40 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let counters = match self.mode {
            Mode::Off => (None, None, None),
            _ => {
                let log = std::fs::read_to_string(&self.proc.log).map_err(|e| e.to_string())?;
                let line = log
                    .lines()
                    .find(|l| l.contains("audit log closed"))
                    .ok_or_else(|| format!("no \"audit log closed\" line in the gateway's log:\n{log}"))?;
                let transactions = self.transactions.max(1) as f64;
                let per_txn = |name| field(line, name).map(|n| Some(n as f64 / transactions));
                (per_txn("syncs")?, per_txn("writes")?, per_txn("lock_waits")?)
            }
        };
        // The log under GATEWAY_BENCH_AUDIT_DIR goes when `self` is
        // dropped, here or on any way out.
        let _ = std::fs::remove_dir_all(cluster.dir().join(&self.name));
        Ok(counters)
    }
}

/// One run with a gateway of its own: started, warmed, run, stopped, and
/// its directory deleted before the next run begins ([`settle`]).
fn one_run(
    options: &Options,
    setup: &Setup<'_>,
    config: &BenchConfig,
    mode: Mode,
    serial: usize,
) -> Result<AuditRun, String> {
    let mut gateway = start(setup, config, mode, format!("gateway-audit-{serial}"))?;
    let run = gateway.run(setup.tools, config, options.duration)?;
    let (syncs_per_txn, writes_per_txn, lock_waits_per_txn) = gateway.stop(setup.cluster)?;
    settle()?;
    Ok(AuditRun { run, syncs_per_txn, writes_per_txn, lock_waits_per_txn })
}

/// `--alternate`: a gateway per (configuration, mode), started once and
/// kept running; every round runs each configuration's modes one after
/// the other, `options.duration` seconds each, in the order
/// [`run_order`] gives. Short runs alternated this way give many pairs
/// in the time a few long ones take: on the shared host of
/// `benches/README.md` a pair's log-ratio spread 0.09–0.14 at 3 s against
/// about 0.08 at 15 s (the host's speed moves on every time scale), and a
/// round took a fifth of the time, so for the same hours the verdicts'
/// intervals narrow about two to four times as much. The log's counters
/// are those of each gateway's whole life.
fn run_alternating(options: &Options, setup: &Setup<'_>, runs: &mut [Vec<Vec<AuditRun>>]) -> Result<(), String> {
    let mut gateways: Vec<Vec<Option<Gateway>>> = Vec::new();
    for config in &options.configs {
        let mut row: Vec<Option<Gateway>> = MODES.map(|_| None).into();
        for &mode in &options.modes {
            check_interrupted()?;
            let name = format!("gateway-audit-{}-{}", config.name, mode.durability().unwrap_or("off"));
            if let Some(slot) = row.get_mut(k_of(mode)) {
                *slot = Some(start(setup, config, mode, name)?);
            }
        }
        gateways.push(row);
    }
    for round in 0..options.reps {
        for (ci, config) in options.configs.iter().enumerate() {
            for k in 0..options.modes.len() {
                let Some(&mode) = options.modes.get(run_order(round + ci, k, options.modes.len())) else { continue };
                check_interrupted()?;
                let Some(gateway) =
                    gateways.get_mut(ci).and_then(|row| row.get_mut(k_of(mode))).and_then(Option::as_mut)
                else {
                    continue;
                };
                let run = gateway.run(setup.tools, config, options.duration)?;
                let run = AuditRun { run, syncs_per_txn: None, writes_per_txn: None, lock_waits_per_txn: None };
                progress(&format!("round {}/{}", round + 1, options.reps), config, mode, &run);
                if let Some(slot) = runs.get_mut(ci).and_then(|c| c.get_mut(k_of(mode))) {
                    slot.push(run);
                }
            }
        }
    }
    for (ci, row) in gateways.into_iter().enumerate() {
        for gateway in row.into_iter().flatten() {
            let mode = gateway.mode;
            let (syncs, writes, lock_waits) = gateway.stop(setup.cluster)?;
            for run in runs.get_mut(ci).and_then(|c| c.get_mut(k_of(mode))).into_iter().flatten() {
                run.syncs_per_txn = syncs;
                run.writes_per_txn = writes;
                run.lock_waits_per_txn = lock_waits;
            }
            if mode != Mode::Off {
                eprintln!(
                    "{} {:<10} over the gateway's life: syncs/txn {}  writes/txn {}  lock waits/txn {}",
                    options.configs.get(ci).map_or("", |c| c.name),
                    mode.name(),
                    fmt_opt(syncs, 3),
                    fmt_opt(writes, 3),
                    fmt_opt(lock_waits, 3)
                );
            }
        }
    }
    Ok(())
}

/// A run's line on standard error.
fn progress(place: &str, config: &BenchConfig, mode: Mode, run: &AuditRun) {
    let (idle, steal) = run.run.machine.shares();
    eprintln!(
        "{place} {:<20} {:<10} tps {:>9.1}  gateway CPU {} µs/txn (kernel {})  machine CPU {} µs/txn (kernel {}; idle {idle:.1} %, steal {steal:.1} %)  switches/txn {}  syncs/txn {}  writes/txn {}  lock waits/txn {}",
        config.name,
        mode.name(),
        run.run.tps,
        fmt_opt(run.run.cpu_us_per_txn(), 1),
        fmt_opt(run.run.per_txn(|c| c.kernel), 1),
        fmt_opt(run.run.machine_us_per_txn(), 1),
        fmt_opt(run.run.machine_kernel_us_per_txn(), 1),
        fmt_opt(run.run.switches_per_txn(), 2),
        fmt_opt(run.syncs_per_txn, 3),
        fmt_opt(run.writes_per_txn, 3),
        fmt_opt(run.lock_waits_per_txn, 3)
    );
}

/// `name=value` of a log line.
fn field(line: &str, name: &str) -> Result<u64, String> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .ok_or_else(|| format!("no {name}= in {line:?}"))
        .and_then(number)
}

/// The median latency of writing 4 KiB and `fdatasync`ing it, in the
/// cluster's directory (where the logs are).
fn fsync_latency(cluster: &Cluster) -> Result<Duration, String> {
    use std::io::Write;
    let path = cluster.dir().join("fsync-probe");
    let mut file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let block = [0x5au8; 4096];
    let mut times = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        file.write_all(&block).and_then(|()| file.sync_data()).map_err(|e| format!("{}: {e}", path.display()))?;
        times.push(start.elapsed().as_secs_f64());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(Duration::from_secs_f64(median(&times).unwrap_or(0.0)))
}

/// The median of `f` over the runs of configuration `ci` in mode `m`.
fn median_of(runs: &[Vec<Vec<AuditRun>>], ci: usize, m: Mode, f: impl Fn(&AuditRun) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = runs.get(ci).and_then(|c| c.get(k_of(m))).map(|rs| rs.iter().filter_map(f).collect())?;
    median(&values)
}

/// The most of the machine's CPU the hypervisor may take (steal, in
/// percent) during either run of a pair for the pair to count in a
/// target's verdict: a run that lost more lost it to another tenant,
/// not to the gateway, and on a shared VM such a loss is often larger
/// than the margin the targets are about.
const STEAL_LIMIT: f64 = 2.0;

/// The fewest pairs without steal a ratio target's verdict is given on.
const QUIET_PAIRS_NEEDED: usize = 3;

/// One repetition's run of a mode and its run with the audit log off (the
/// four modes of a repetition run back to back, so a pair shares the
/// machine's state of that minute).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pair {
    /// TPS with the mode.
    on: f64,
    /// TPS with the audit log off.
    off: f64,
    /// The larger share of the machine the hypervisor took during the two
    /// runs, in percent.
    steal: f64,
}

impl Pair {
    fn ratio(&self) -> Option<f64> {
        (self.off > 0.0).then(|| self.on / self.off)
    }

    fn quiet(&self) -> bool {
        self.steal <= STEAL_LIMIT
    }
}

/// Mode `m`'s runs of configuration `ci` paired with audit off's, by
/// repetition.
fn pairs(runs: &[Vec<Vec<AuditRun>>], ci: usize, m: Mode) -> Vec<Pair> {
    let of = |mode: Mode| runs.get(ci).and_then(|c| c.get(k_of(mode)));
    match (of(m), of(Mode::Off)) {
        (Some(on), Some(off)) => on
            .iter()
            .zip(off)
            .map(|(on, off)| Pair {
                on: on.run.tps,
                off: off.run.tps,
                steal: on.run.machine.shares().1.max(off.run.machine.shares().1),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The ratio of mode `m`'s TPS to audit off's within each repetition of
/// configuration `ci`.
fn paired_ratios(runs: &[Vec<Vec<AuditRun>>], ci: usize, m: Mode) -> Vec<f64> {
    pairs(runs, ci, m).iter().filter_map(Pair::ratio).collect()
}

/// `median [lowest–highest]` of paired ratios, with `decimals` digits.
fn spread(ratios: &[f64], decimals: usize) -> String {
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match median(ratios) {
        Some(m) if ratios.len() > 1 => format!("{m:.decimals$} [{lowest:.decimals$}–{highest:.decimals$}]"),
        Some(m) => format!("{m:.decimals$}"),
        None => "–".to_string(),
    }
}

/// Student's t for a two-sided 95 % interval with `df` degrees of
/// freedom (1 to 30 from the table, 1.96 beyond).
fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    df.checked_sub(1).and_then(|i| T.get(i)).copied().unwrap_or(1.96)
}

/// The 95 % interval of the paired ratios' geometric mean: a t interval
/// on their logarithms, `(low, high, half width in logarithm)`. `None`
/// with fewer than two ratios or one that is not positive.
fn interval(ratios: &[f64]) -> Option<(f64, f64, f64)> {
    if ratios.len() < 2 || ratios.iter().any(|r| r.is_nan() || *r <= 0.0) {
        return None;
    }
    let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    let variance = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = t95(logs.len() - 1) * (variance / n).sqrt();
    Some(((mean - half).exp(), (mean + half).exp(), half))
}

/// The most repetitions a verdict names as needed: beyond it, the
/// estimate sits on the target, and the number says nothing useful.
const MOST_REPETITIONS_NAMED: u64 = 10_000;

/// About how many quiet repetitions an interval as wide as this one per
/// repetition would need to lie wholly on one side of `target`, from a
/// geometric mean of `mean` (the normal's 1.96 in place of t).
fn repetitions_needed(n: usize, half: f64, mean: f64, target: f64) -> Option<u64> {
    let distance = (mean.ln() - target.ln()).abs();
    let sd = half / t95(n.checked_sub(1)?) * (n as f64).sqrt();
    (distance > 0.0).then(|| ((1.96 * sd / distance).powi(2)).ceil() as u64)
}

/// A ratio target's verdict, from the pairs without steal
/// ([`STEAL_LIMIT`]). Met only when the ratio of their medians and the
/// median of their ratios both reach `target` (one estimator's luck does
/// not decide it) and the 95 % interval of the ratios' geometric mean
/// ([`interval`]) lies at or above it; NOT met when both estimates and
/// the interval fall short of it. Otherwise undetermined: the runs
/// spread more than the distance to the target, and the verdict says
/// about how many repetitions it would take at this spread. Undetermined
/// too when fewer than [`QUIET_PAIRS_NEEDED`] pairs are left. The
/// estimates over every pair follow. The figures have three digits, so
/// that a ratio just short of the target does not print as the target.
fn ratio_check(name: &str, what: &str, pairs: &[Pair], target: f64) -> String {
    let estimates = |pairs: &[&Pair]| {
        let on: Vec<f64> = pairs.iter().map(|p| p.on).collect();
        let off: Vec<f64> = pairs.iter().map(|p| p.off).collect();
        let paired: Vec<f64> = pairs.iter().filter_map(|p| p.ratio()).collect();
        (ratio(median(&on), median(&off)), paired)
    };
    let quiet: Vec<&Pair> = pairs.iter().filter(|p| p.quiet()).collect();
    let all: Vec<&Pair> = pairs.iter().collect();
    let (all_of_medians, all_paired) = estimates(&all);
    let every = format!("ratio of medians {}, paired {}", fmt_opt(all_of_medians, 3), spread(&all_paired, 3));
    let head = format!("- `{name}` with {what}: ≥ {target:.2}× audit off:");
    if pairs.is_empty() {
        return format!("{head} {}", verdict(None));
    }
    if quiet.len() < QUIET_PAIRS_NEEDED {
        return format!(
            "{head} undetermined: the hypervisor took over {STEAL_LIMIT} % of the CPU in {} of {} repetitions (every repetition: {every})",
            pairs.len() - quiet.len(),
            pairs.len()
        );
    }
    let (of_medians, paired) = estimates(&quiet);
    let bounds = interval(&paired);
    let figures = format!(
        "ratio of medians {}, paired {}, 95 % interval {}",
        fmt_opt(of_medians, 3),
        spread(&paired, 3),
        bounds.map_or("–".to_string(), |(low, high, _)| format!("{low:.3}–{high:.3}"))
    );
    let set_aside = match pairs.len() - quiet.len() {
        0 => String::new(),
        n => format!("; {n} of {} repetitions set aside for steal, every repetition: {every}", pairs.len()),
    };
    let reached = of_medians.zip(median(&paired)).map(|(a, b)| (a >= target, b >= target));
    let outcome = match (reached, bounds) {
        (Some((true, true)), Some((low, _, _))) if low >= target => "met".to_string(),
        (Some((false, false)), Some((_, high, _))) if high < target => "NOT met".to_string(),
        (_, Some((low, high, half))) => {
            let mean = (low * high).sqrt();
            let needed = match repetitions_needed(paired.len(), half, mean, target) {
                Some(n) if n > MOST_REPETITIONS_NAMED => format!(
                    "; the geometric mean is within a hair of {target:.2}: more than {MOST_REPETITIONS_NAMED} quiet \
                     repetitions would tell"
                ),
                Some(n) => format!("; at this spread, about {n} quiet repetitions would tell"),
                None => String::new(),
            };
            format!("undetermined: the estimates and the interval do not all fall on one side of {target:.2}{needed}")
        }
        _ => "undetermined".to_string(),
    };
    format!("{head} {outcome} ({figures}{set_aside})")
}

/// A table of one row per configuration and one cell per mode.
fn mode_table(w: &mut String, options: &Options, cell: impl Fn(usize, Mode) -> String) {
    let _ = writeln!(w, "| configuration | audit off | \"none\" | \"commit\" | \"every\" |");
    let _ = writeln!(w, "|---|---|---|---|---|");
    for (ci, config) in options.configs.iter().enumerate() {
        let cells: Vec<String> = MODES.iter().map(|&m| cell(ci, m)).collect();
        let _ = writeln!(w, "| `{}` | {} |", config.args.join(" "), cells.join(" | "));
    }
}

fn report(options: &Options, command: &str, runs: &[Vec<Vec<AuditRun>>], fsync: Duration) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "\n## The audit log's cost\n");
    let _ = writeln!(w, "Command: `{command}`  ");
    let method = match options.alternate {
        true => format!(
            "{} round(s) of {} s per (configuration, mode), each mode's gateway started once and kept running \
             (`--alternate`; its log's counters are over its whole life)",
            options.reps, options.duration
        ),
        false => format!(
            "{} repetition(s) of {} s per (configuration, mode), a fresh gateway for every run",
            options.reps, options.duration
        ),
    };
    let _ = writeln!(
        w,
        "Machine: {}; pgbench scale {}, {method}, medians; \
         `fdatasync` of 4 KiB in the log's file system: {:.3} ms (median of 200).\n",
        super::machine(options.placement.as_ref()),
        options.scale,
        fsync.as_secs_f64() * 1e3
    );
    let _ = writeln!(
        w,
        "| configuration | audit off TPS | \"none\" TPS | \"commit\" TPS | \"every\" TPS | none/off | commit/off | \
         every/off | syncs/txn commit | syncs/txn every |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
    let mut checks = Vec::new();
    for (ci, config) in options.configs.iter().enumerate() {
        let tps = |m: Mode| median_of(runs, ci, m, |r| Some(r.run.tps));
        let syncs = |m: Mode| median_of(runs, ci, m, |r| r.syncs_per_txn);
        let off = tps(Mode::Off);
        let _ = writeln!(
            w,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            config.args.join(" "),
            fmt_opt(off, 0),
            fmt_opt(tps(Mode::None), 0),
            fmt_opt(tps(Mode::Commit), 0),
            fmt_opt(tps(Mode::Every), 0),
            fmt_opt(ratio(tps(Mode::None), off), 2),
            fmt_opt(ratio(tps(Mode::Commit), off), 2),
            fmt_opt(ratio(tps(Mode::Every), off), 2),
            fmt_opt(syncs(Mode::Commit), 3),
            fmt_opt(syncs(Mode::Every), 3),
        );
        checks.push(ratio_check(config.name, "`\"none\"`", &pairs(runs, ci, Mode::None), 0.95));
        if config.name == "select-prepared-c16" {
            checks.push(ratio_check(
                config.name,
                "`\"commit\"` (reads need no sync)",
                &pairs(runs, ci, Mode::Commit),
                0.95,
            ));
        }
        if config.name == "tpcb-c8" {
            checks.push(format!(
                "- `{}` with `\"commit\"`: ≤ 0.5 syncs per committed transaction (group commit): {}",
                config.name,
                verdict(syncs(Mode::Commit).map(|s| s <= 0.5))
            ));
        }
    }
    let _ = writeln!(
        w,
        "\nThe same ratios taken within each repetition or round (its modes run back to back), \
         median [lowest–highest]:\n"
    );
    let _ = writeln!(w, "| configuration | none/off | commit/off | every/off |");
    let _ = writeln!(w, "|---|---|---|---|");
    for (ci, config) in options.configs.iter().enumerate() {
        let _ = writeln!(
            w,
            "| `{}` | {} | {} | {} |",
            config.args.join(" "),
            spread(&paired_ratios(runs, ci, Mode::None), 2),
            spread(&paired_ratios(runs, ci, Mode::Commit), 2),
            spread(&paired_ratios(runs, ci, Mode::Every), 2)
        );
    }
    let _ = writeln!(
        w,
        "\nThe gateway's CPU µs per transaction, and in brackets its user / kernel parts (each a median of its \
         own, so the two need not add up to the first), medians:\n"
    );
    mode_table(w, options, |ci, m| {
        let total = median_of(runs, ci, m, |r| r.run.cpu_us_per_txn());
        let user = median_of(runs, ci, m, |r| r.run.per_txn(|c| c.user));
        let kernel = median_of(runs, ci, m, |r| r.run.per_txn(|c| c.kernel));
        format!("{} ({} / {})", fmt_opt(total, 1), fmt_opt(user, 1), fmt_opt(kernel, 1))
    });
    let _ = writeln!(
        w,
        "\nThe whole machine's busy CPU µs per transaction (pgbench, PostgreSQL, the gateway and the kernel's \
         threads; from /proc/stat), in brackets its user / kernel parts (medians of their own) and the share of \
         the machine's CPU left idle, medians:\n"
    );
    mode_table(w, options, |ci, m| {
        let busy = median_of(runs, ci, m, |r| r.run.machine_us_per_txn());
        let kernel = median_of(runs, ci, m, |r| r.run.machine_kernel_us_per_txn());
        let user = median_of(runs, ci, m, |r| {
            r.run.machine_us_per_txn().zip(r.run.machine_kernel_us_per_txn()).map(|(b, k)| b - k)
        });
        let idle = median_of(runs, ci, m, |r| Some(r.run.machine.shares().0));
        format!("{} ({} / {}; idle {} %)", fmt_opt(busy, 1), fmt_opt(user, 1), fmt_opt(kernel, 1), fmt_opt(idle, 1))
    });
    let _ = writeln!(
        w,
        "\nThe gateway's share of the machine's busy CPU (medians over the runs with no steal over {STEAL_LIMIT} %), \
         and in brackets the throughput ratio to audit off that the shares imply when the rest of the machine \
         does the same work per transaction and the CPU is what limits the throughput (not so with \"every\", \
         which leaves much of it idle waiting for the disk): (1 − the mode's share) / (1 − off's share). A run on \
         a slower host is slower in every process alike, so the shares move little between runs where the throughput moves \
         by a fifth. Not counted: the kernel's writeback of the log, what else the log makes the rest \
         of the machine do per transaction (it has moved by several µs from one invocation to the next), \
         and the longer time a transaction holds its rows' locks, so these do not stand in for the \
         throughput ratios:\n"
    );
    let share = |ci: usize, m: Mode| {
        median_of(runs, ci, m, |r| {
            let quiet = r.run.machine.shares().1 <= STEAL_LIMIT;
            r.run.cpu_us_per_txn().zip(r.run.machine_us_per_txn()).filter(|_| quiet).map(|(g, all)| g / all)
        })
    };
    mode_table(w, options, |ci, m| match m {
        Mode::Off => fmt_opt(share(ci, m), 3),
        _ => {
            let implied = share(ci, Mode::Off).zip(share(ci, m)).and_then(|(off, on)| implied_ratio(off, on));
            format!("{} ({})", fmt_opt(share(ci, m), 3), fmt_opt(implied, 3))
        }
    });
    let _ = writeln!(w, "\nTargets:\n\n{}", checks.join("\n"));
    let _ = writeln!(w, "\nEvery run (TPS; syncs per transaction; the hypervisor's steal, when any):\n");
    for (ci, config) in options.configs.iter().enumerate() {
        for m in MODES {
            let list: Vec<String> = runs
                .get(ci)
                .and_then(|c| c.get(k_of(m)))
                .map(|rs| {
                    rs.iter()
                        .map(|r| {
                            let steal = r.run.machine.shares().1;
                            let notes: Vec<String> = r
                                .syncs_per_txn
                                .map(|s| format!("{s:.3}"))
                                .into_iter()
                                .chain((steal >= 0.05).then(|| format!("steal {steal:.1} %")))
                                .collect();
                            match notes.is_empty() {
                                true => format!("{:.0}", r.run.tps),
                                false => format!("{:.0} ({})", r.run.tps, notes.join(", ")),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(w, "- {} {}: {}", config.name, m.name(), list.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{implied_ratio, interval, ratio_check, repetitions_needed, run_order, spread, t95, Pair};

    /// A gateway taking 0.30 of the machine with the log off and 0.33
    /// with it on, the rest doing the same work: the machine's time per
    /// transaction grows by 0.70 / 0.67.
    #[test]
    fn a_larger_share_implies_a_lower_throughput() {
        let implied = implied_ratio(0.30, 0.33).unwrap();
        assert!((implied - 0.67 / 0.70).abs() < 1e-12, "{implied}");
        assert_eq!(implied_ratio(0.30, 0.30), Some(1.0));
        assert_eq!(implied_ratio(1.0, 0.5), None);
    }

    /// Over `n` repetitions every mode runs once in each row and each
    /// place, and right after every other mode exactly once.
    #[test]
    fn each_mode_follows_each_other_once_in_n_rows() {
        for n in [2, 4, 6] {
            let rows: Vec<Vec<usize>> = (0..n).map(|r| (0..n).map(|k| run_order(r, k, n)).collect()).collect();
            for row in &rows {
                let mut sorted = row.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "{rows:?}");
            }
            let mut pairs: Vec<(usize, usize)> = rows.iter().flat_map(|r| r.windows(2).map(|w| (w[0], w[1]))).collect();
            pairs.sort_unstable();
            pairs.dedup();
            assert_eq!(pairs.len(), n * (n - 1), "{rows:?}");
        }
    }

    fn quiet(on: f64, off: f64) -> Pair {
        Pair { on, off, steal: 0.4 }
    }

    fn stolen(on: f64, off: f64) -> Pair {
        Pair { on, off, steal: 12.0 }
    }

    #[test]
    fn a_ratio_target_is_met_only_when_both_estimates_and_the_interval_reach_it() {
        let none = "`\"none\"`";
        let close = [quiet(97.0, 100.0), quiet(96.5, 100.0), quiet(97.5, 100.0), quiet(97.0, 100.0)];
        let met = ratio_check("tpcb-c8", none, &close, 0.95);
        assert!(
            met.contains(": met (ratio of medians 0.970, paired 0.970 [0.965–0.975], 95 % interval 0.964–0.977)"),
            "{met}"
        );
        // Just short of the target, and the runs agree: NOT met, and its
        // digits say so too.
        let short = ratio_check("tpcb-c8", none, &[quiet(94.59, 100.0), quiet(94.68, 100.0), quiet(94.7, 100.0)], 0.95);
        assert!(
            short.contains("NOT met (ratio of medians 0.947, paired 0.947 [0.946–0.947], 95 % interval 0.945–0.948)"),
            "{short}"
        );
        // Both estimates reach it, and the runs spread past it.
        let wide = [quiet(97.0, 100.0), quiet(90.0, 100.0), quiet(103.0, 100.0), quiet(96.0, 100.0)];
        let undecided = ratio_check("tpcb-c8", none, &wide, 0.95);
        assert!(undecided.contains(": undetermined: the estimates and the interval do not all fall on one side of 0.95; at this spread, about "), "{undecided}");
        assert!(undecided.contains("quiet repetitions would tell (ratio of medians 0.965"), "{undecided}");
        // A geometric mean a hair from the target: no absurd count.
        let on_target = [quiet(97.0, 100.0), quiet(93.0, 100.0), quiet(95.0, 100.0), quiet(95.02, 100.0)];
        let hair = ratio_check("tpcb-c8", none, &on_target, 0.95);
        assert!(
            hair.contains("the geometric mean is within a hair of 0.95: more than 10000 quiet repetitions would tell"),
            "{hair}"
        );
        // The medians' ratio 1.000, the pairs' median 0.939: one
        // estimator's luck does not decide it either way.
        let paired_short =
            ratio_check("tpcb-c8", none, &[quiet(100.0, 100.0), quiet(90.0, 100.0), quiet(200.0, 213.0)], 0.95);
        assert!(
            paired_short.contains("undetermined: the estimates and the interval do not all fall on one side of 0.95"),
            "{paired_short}"
        );
        assert!(paired_short.contains("(ratio of medians 1.000, paired 0.939"), "{paired_short}");
        assert!(ratio_check("x", "y", &[], 0.95).contains("not measured"));
    }

    #[test]
    fn the_interval_is_a_t_interval_of_the_ratios_logarithms() {
        assert_eq!(interval(&[1.0, 1.0]), Some((1.0, 1.0, 0.0)));
        assert_eq!(interval(&[1.0]), None);
        assert_eq!(interval(&[1.0, 0.0]), None);
        assert_eq!(interval(&[1.0, f64::NAN]), None);
        // Logarithms 0.1 and -0.1: mean 0, standard deviation 0.1414,
        // t 12.706 with one degree of freedom.
        let (low, high, half) = interval(&[0.1f64.exp(), (-0.1f64).exp()]).unwrap_or_default();
        assert!((half - 1.2706).abs() < 1e-4, "{half}");
        assert!((low * high - 1.0).abs() < 1e-9 && (low - (-1.2706f64).exp()).abs() < 1e-4, "{low} {high}");
        assert_eq!(t95(3), 3.182);
        assert_eq!(t95(100), 1.96);
    }

    #[test]
    fn the_repetitions_a_verdict_needs_grow_with_the_spread_and_nearness() {
        // Four repetitions with logarithms spread by 0.05, a geometric
        // mean of 0.96 against 0.95: (1.96 × 0.05 / ln(0.96 / 0.95))² = 87.6.
        let half = t95(3) * 0.05 / 2.0;
        assert_eq!(repetitions_needed(4, half, 0.96, 0.95), Some(88));
        assert_eq!(repetitions_needed(4, half / 2.0, 0.96, 0.95), Some(22));
        assert_eq!(repetitions_needed(4, half, 0.95, 0.95), None);
        assert_eq!(repetitions_needed(0, half, 0.96, 0.95), None);
    }

    #[test]
    fn repetitions_the_hypervisor_took_cpu_from_are_set_aside() {
        let none = "`\"none\"`";
        let pairs = [
            quiet(97.0, 100.0),
            stolen(50.0, 100.0),
            quiet(96.9, 100.0),
            stolen(70.0, 100.0),
            quiet(97.1, 100.0),
            quiet(97.0, 100.0),
        ];
        let check = ratio_check("tpcb-c8", none, &pairs, 0.95);
        assert!(check.contains(": met (ratio of medians 0.970, paired 0.970 [0.969–0.971]"), "{check}");
        assert!(
            check.contains("2 of 6 repetitions set aside for steal, every repetition: ratio of medians 0.970"),
            "{check}"
        );
        // Steal in the run with the audit log off counts too: the pair is
        // what is compared.
        let off_stolen = Pair { on: 100.0, off: 80.0, steal: 2.5 };
        let too_few = ratio_check("tpcb-c8", none, &[quiet(90.0, 100.0), off_stolen, quiet(91.0, 100.0)], 0.95);
        assert!(
            too_few.contains(
                "undetermined: the hypervisor took over 2 % of the CPU in 1 of 3 repetitions (every repetition: ratio of medians 0.910"
            ),
            "{too_few}"
        );
        assert!(!too_few.contains("NOT met") && !too_few.contains(": met"), "{too_few}");
    }

    #[test]
    fn a_spread_names_the_median_and_the_extremes() {
        assert_eq!(spread(&[1.02, 0.91, 0.97, 0.95], 2), "0.96 [0.91–1.02]");
        assert_eq!(spread(&[0.93], 2), "0.93");
        assert_eq!(spread(&[0.9468], 3), "0.947");
        assert_eq!(spread(&[], 2), "–");
    }

    /// The CPU tables of the report give each mode's time per transaction
    /// with its user and kernel parts, the gateway's and the machine's.
    #[test]
    fn the_cpu_tables_split_user_and_kernel_time() {
        use super::{report, AuditRun, Mode, MODES};
        let args: Vec<String> =
            ["--audit", "--modes", "off,none", "--configs", "select-prepared-c16"].map(String::from).to_vec();
        let options = crate::Options::parse(&args).unwrap().unwrap();
        // A million transactions: a CPU second is a µs per transaction.
        let run = |user: f64, kernel: f64, machine_busy: f64, machine_kernel: f64| AuditRun {
            run: crate::Run {
                tps: 10_000.0,
                transactions: 1_000_000,
                proxy_cpu: Some(crate::Cpu { user, kernel }),
                machine: crate::Machine {
                    busy: machine_busy,
                    kernel: machine_kernel,
                    idle: 5.0,
                    steal: 0.0,
                    switches: 0,
                },
            },
            syncs_per_txn: None,
            writes_per_txn: None,
            lock_waits_per_txn: None,
        };
        let runs = vec![MODES
            .iter()
            .map(|m| match m {
                Mode::Off => vec![run(10.0, 30.0, 150.0, 90.0)],
                Mode::None => vec![run(15.0, 33.0, 165.0, 95.0)],
                _ => Vec::new(),
            })
            .collect()];
        let text = report(&options, "gateway-bench --audit", &runs, std::time::Duration::from_millis(1));
        assert!(text.contains("| 40.0 (10.0 / 30.0) | 48.0 (15.0 / 33.0) | – (– / –) |"), "{text}");
        assert!(text.contains("| 150.0 (60.0 / 90.0; idle 3.2 %) | 165.0 (70.0 / 95.0; idle 2.9 %) |"), "{text}");
    }
}
