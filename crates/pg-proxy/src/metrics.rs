//! The gateway's Prometheus metrics, served on the admin server's
//! `/metrics` in the text exposition format.
//!
//! Counters and histograms are kept where things happen (the session core
//! counts its statements, the audit log times its writes); gauges of what
//! is live now (sessions by state, approvals pending, connections) are
//! read when the metrics are scraped ([`Metrics::render`]). No label
//! carries an identity, a client address or SQL text: the rule a statement
//! matched is the only label that comes from the policy, and a policy has
//! few rules.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `portcullis_sessions` | gauge | `state`: `idle`, `running`, `held` |
//! | `portcullis_client_connections` | gauge | |
//! | `portcullis_logins_total` | counter | `outcome`: `ok`, `refused` |
//! | `portcullis_statements_total` | counter | `verdict`, `rule` (empty when no rule matched) |
//! | `portcullis_decision_seconds` | histogram | |
//! | `portcullis_masked_cells_total` | counter | |
//! | `portcullis_row_cap_hits_total` | counter | |
//! | `portcullis_approvals_pending` | gauge | |
//! | `portcullis_holds_ended_total` | counter | `outcome`: `released`, `refused`, `timed_out`, `cancelled`, `session_ended` |
//! | `portcullis_audit_write_seconds` | histogram | |
//! | `portcullis_audit_sync_seconds` | histogram | |
//! | `portcullis_audit_failures_total` | counter | |
//! | `portcullis_upstream_connect_errors_total` | counter | |
//! | `portcullis_reloads_total` | counter | `what`: `policy`, `keys`, `tls`; `outcome`: `ok`, `failed` |
//!
//! ```
//! use std::sync::Arc;
//! use pg_proxy::metrics::{Live, Metrics, Reloaded, StatementCounters};
//! use policy_core::Verdict;
//! let metrics = Metrics::default();
//! let mut counters = StatementCounters::default();
//! metrics.count_statement(&mut counters, Verdict::Deny, Some(&Arc::from("no-ddl")));
//! metrics.reload(Reloaded::Policy, false);
//! let text = metrics.render(&Live::default());
//! assert!(text.contains(r#"portcullis_statements_total{verdict="deny",rule="no-ddl"} 1"#));
//! assert!(text.contains(r#"portcullis_reloads_total{what="policy",outcome="failed"} 1"#));
//! assert!(text.ends_with("# EOF\n"));
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use policy_core::Verdict;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub mod durations;

use durations::DurationHistogram;

/// A session's handles on the `portcullis_statements_total` counters it
/// counted into, by verdict and rule ([`Metrics::count_statement`]).
#[derive(Debug, Default)]
pub struct StatementCounters {
    known: Vec<(Verdict, Option<Arc<str>>, Counter)>,
}

/// How many counters a session keeps handles on.
const STATEMENT_COUNTERS_KEPT: usize = 16;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A session's state, as a label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are written as they are named")]
enum State {
    idle,
    running,
    held,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: State,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatementLabels {
    verdict: &'static str,
    rule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    what: &'static str,
    outcome: &'static str,
}

/// What a reload reloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The policy file.
    Policy,
    /// The identity provider's key set.
    Keys,
    /// The TLS certificate and key.
    Tls,
}

impl Reloaded {
    /// Its name, as in the metric's label and the reload API's answer.
    pub fn as_str(self) -> &'static str {
        match self {
            Reloaded::Policy => "policy",
            Reloaded::Keys => "keys",
            Reloaded::Tls => "tls",
        }
    }
}

/// How a held statement's hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// Approved (or granted): it ran.
    Released,
    /// Denied, expired or withdrawn.
    Refused,
    /// The hold timeout passed.
    TimedOut,
    /// Cancelled: by the client's `CancelRequest` or through the sessions
    /// API.
    Cancelled,
    /// The session ended while it was held (the client left, or the
    /// session was ended through the sessions API).
    SessionEnded,
}

impl HoldEnd {
    fn as_str(self) -> &'static str {
        match self {
            HoldEnd::Released => "released",
            HoldEnd::Refused => "refused",
            HoldEnd::TimedOut => "timed_out",
            HoldEnd::Cancelled => "cancelled",
            HoldEnd::SessionEnded => "session_ended",
        }
    }
}

/// What is live when the metrics are scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// Sessions waiting for their client.
    pub idle: u64,
    /// Sessions with a statement on its way or running.
    pub running: u64,
    /// Sessions whose statement is held for approval.
    pub held: u64,
    /// Client connections, logged in or logging in.
    pub connections: u64,
    /// Approval requests pending.
    pub approvals_pending: u64,
}

/// The gateway's metrics. Cheap to update from any thread: counters are
/// atomics, and a labelled family takes a read lock once its label set
/// exists.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions: Family<StateLabels, Gauge>,
    connections: Gauge,
    logins: Family<OutcomeLabels, Counter>,
    statements: Family<StatementLabels, Counter>,
    decision_seconds: DurationHistogram,
    masked_cells: Counter,
    row_cap_hits: Counter,
    approvals_pending: Gauge,
    holds_ended: Family<OutcomeLabels, Counter>,
    audit_write_seconds: DurationHistogram,
    audit_sync_seconds: DurationHistogram,
    audit_failures: Counter,
    upstream_connect_errors: Counter,
    reloads: Family<ReloadLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let sessions = Family::<StateLabels, Gauge>::default();
        registry.register("sessions", "Live client sessions, by what they are doing", sessions.clone());
        let connections = Gauge::default();
        registry.register(
            "client_connections",
            "Client connections open now, logged in or logging in",
            connections.clone(),
        );
        let logins = Family::<OutcomeLabels, Counter>::default();
        registry.register("logins", "Logins that ended in a session (ok) or were refused", logins.clone());
        let statements = Family::<StatementLabels, Counter>::default();
        registry.register(
            "statements",
            "Statements decided, by verdict and by the rule that decided them",
            statements.clone(),
        );
        // 1 µs to about 1 s.
        let decision_seconds = DurationHistogram::new(Duration::from_micros(1), 21);
        registry.register_with_unit(
            "decision",
            "Time the engine took to decide a statement",
            Unit::Seconds,
            decision_seconds.clone(),
        );
        let masked_cells = Counter::default();
        registry.register("masked_cells", "Result values the masks changed", masked_cells.clone());
        let row_cap_hits = Counter::default();
        registry.register("row_cap_hits", "Results stopped at their rule's row cap", row_cap_hits.clone());
        let approvals_pending = Gauge::default();
        registry.register("approvals_pending", "Approval requests waiting for a decision", approvals_pending.clone());
        let holds_ended = Family::<OutcomeLabels, Counter>::default();
        registry.register("holds_ended", "Held statements whose hold ended, by how", holds_ended.clone());
        // 10 µs to about 5 s.
        let audit_write_seconds = DurationHistogram::new(Duration::from_micros(10), 20);
        registry.register_with_unit(
            "audit_write",
            "Time to append a batch of audit records (serialise, hash) and hand it to the OS",
            Unit::Seconds,
            audit_write_seconds.clone(),
        );
        let audit_sync_seconds = DurationHistogram::new(Duration::from_micros(10), 20);
        registry.register_with_unit(
            "audit_sync",
            "Time of one fdatasync of the audit log",
            Unit::Seconds,
            audit_sync_seconds.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Record batches refused because the audit log could not be written or synced",
            audit_failures.clone(),
        );
        let upstream_connect_errors = Counter::default();
        registry.register(
            "upstream_connect_errors",
            "Connections to the database that failed (connect, TLS or authentication)",
            upstream_connect_errors.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register("reloads", "Reloads of the policy, the key set and the TLS certificate", reloads.clone());
        Metrics {
            registry,
            sessions,
            connections,
            logins,
            statements,
            decision_seconds,
            masked_cells,
            row_cap_hits,
            approvals_pending,
            holds_ended,
            audit_write_seconds,
            audit_sync_seconds,
            audit_failures,
            upstream_connect_errors,
            reloads,
        }
    }

    /// Counts a decided statement under its verdict and rule, through a
    /// session's own handles on the counters ([`StatementCounters`]): no
    /// label string made and no look in the family's map once the session
    /// met the verdict and rule. Sessions counting alike add to one
    /// series.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use pg_proxy::metrics::{Live, Metrics, StatementCounters};
    /// use policy_core::Verdict;
    /// let metrics = Metrics::default();
    /// let mut counters = StatementCounters::default();
    /// let rule: Arc<str> = Arc::from("no-ddl");
    /// metrics.count_statement(&mut counters, Verdict::Deny, Some(&rule));
    /// metrics.count_statement(&mut counters, Verdict::Deny, Some(&rule));
    /// let mut other_session = StatementCounters::default();
    /// metrics.count_statement(&mut other_session, Verdict::Deny, Some(&Arc::from("no-ddl")));
    /// let text = metrics.render(&Live::default());
    /// assert!(text.contains(r#"portcullis_statements_total{verdict="deny",rule="no-ddl"} 3"#), "{text}");
    /// ```
    pub fn count_statement(&self, counters: &mut StatementCounters, verdict: Verdict, rule: Option<&Arc<str>>) {
        // An `Arc<str>` compares its address first: a rule of the engine
        // in force is found without reading its name.
        if let Some((_, _, counter)) = counters.known.iter().find(|(v, r, _)| *v == verdict && r.as_ref() == rule) {
            counter.inc();
            return;
        }
        let labels =
            StatementLabels { verdict: verdict.as_str(), rule: rule.map(|r| r.to_string()).unwrap_or_default() };
        let counter = self.statements.get_or_create(&labels).clone();
        counter.inc();
        // Reloads bring new rules: a session keeps the latest few.
        if counters.known.len() >= STATEMENT_COUNTERS_KEPT {
            counters.known.remove(0);
        }
        counters.known.push((verdict, rule.cloned(), counter));
    }

    /// Runs `decide`, timing it.
    pub fn time_decision<T>(&self, decide: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let decided = decide();
        self.decision_seconds.observe(start.elapsed());
        decided
    }

    /// Counts values the masks changed.
    pub fn masked(&self, cells: u64) {
        if cells > 0 {
            self.masked_cells.inc_by(cells);
        }
    }

    /// Counts a result stopped at its row cap.
    pub fn row_cap_hit(&self) {
        self.row_cap_hits.inc();
    }

    /// Counts a hold that ended.
    pub fn hold_ended(&self, end: HoldEnd) {
        self.holds_ended.get_or_create(&OutcomeLabels { outcome: end.as_str() }).inc();
    }

    /// Counts a login: a session began, or the client was refused.
    pub fn login(&self, ok: bool) {
        self.logins.get_or_create(&OutcomeLabels { outcome: if ok { "ok" } else { "refused" } }).inc();
    }

    /// Counts a failed connection to the database.
    pub fn upstream_connect_error(&self) {
        self.upstream_connect_errors.inc();
    }

    /// Counts a reload.
    pub fn reload(&self, what: Reloaded, ok: bool) {
        let labels = ReloadLabels { what: what.as_str(), outcome: if ok { "ok" } else { "failed" } };
        self.reloads.get_or_create(&labels).inc();
    }

    /// Times an audit write.
    pub fn audit_write(&self, took: Duration) {
        self.audit_write_seconds.observe(took);
    }

    /// Times an audit sync.
    pub fn audit_sync(&self, took: Duration) {
        self.audit_sync_seconds.observe(took);
    }

    /// Counts batches the audit log refused.
    pub fn audit_failure(&self) {
        self.audit_failures.inc();
    }

    /// The metrics as text, with the gauges set to `live`.
    pub fn render(&self, live: &Live) -> String {
        for (state, n) in [(State::idle, live.idle), (State::running, live.running), (State::held, live.held)] {
            self.sessions.get_or_create(&StateLabels { state }).set(gauge(n));
        }
        self.connections.set(gauge(live.connections));
        self.approvals_pending.set(gauge(live.approvals_pending));
        let mut text = String::new();
        // Writing into a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session's handles count into the series the family renders: a
    /// rule of a reloaded policy (another `Arc`, the same name) into the
    /// same one, and rules past the handles kept are still counted.
    #[test]
    fn a_session_s_handles_count_into_the_family_s_series() {
        let metrics = Metrics::new();
        let mut counters = StatementCounters::default();
        let rules: Vec<Arc<str>> = (0..STATEMENT_COUNTERS_KEPT + 4).map(|i| Arc::from(format!("rule-{i}"))).collect();
        // Found again: the handles kept.
        for _ in 0..3 {
            metrics.count_statement(&mut counters, Verdict::Allow, rules.first());
            metrics.count_statement(&mut counters, Verdict::Deny, None);
        }
        // More rules than handles kept, in turn: none is found again.
        for _ in 0..3 {
            for rule in rules.iter().skip(1) {
                metrics.count_statement(&mut counters, Verdict::Allow, Some(rule));
            }
        }
        let reloaded: Arc<str> = Arc::from("rule-0");
        metrics.count_statement(&mut counters, Verdict::Allow, Some(&reloaded));
        metrics.count_statement(&mut counters, Verdict::Deny, Some(&reloaded));
        let text = metrics.render(&Live::default());
        let count = |verdict: &str, rule: &str| {
            let series = format!("portcullis_statements_total{{verdict=\"{verdict}\",rule=\"{rule}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(series.as_str())).map(str::to_string)
        };
        assert_eq!(count("allow", "rule-0").as_deref(), Some("4"), "{text}");
        let last = format!("rule-{}", STATEMENT_COUNTERS_KEPT + 3);
        assert_eq!(count("allow", &last).as_deref(), Some("3"), "{text}");
        assert_eq!(count("deny", "").as_deref(), Some("3"), "{text}");
        assert_eq!(count("deny", "rule-0").as_deref(), Some("1"), "{text}");
        assert!(counters.known.len() <= STATEMENT_COUNTERS_KEPT);
    }

    #[test]
    fn every_metric_is_named_in_the_table_and_the_table_names_no_other() {
        let metrics = Metrics::new();
        metrics.count_statement(&mut StatementCounters::default(), Verdict::Allow, None);
        metrics.hold_ended(HoldEnd::TimedOut);
        metrics.login(true);
        metrics.reload(Reloaded::Tls, true);
        let text = metrics.render(&Live { idle: 2, held: 1, ..Live::default() });
        let mut rendered: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        rendered.sort_unstable();
        let doc = include_str!("metrics.rs");
        let mut documented: Vec<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `portcullis_"))
            .filter_map(|l| l.split('`').next())
            .map(|name| format!("portcullis_{}", name.trim_end_matches("_total")))
            .collect();
        documented.sort_unstable();
        assert_eq!(rendered, documented);
        assert!(text.contains("portcullis_sessions{state=\"idle\"} 2"), "{text}");
        assert!(text.contains("portcullis_sessions{state=\"held\"} 1"), "{text}");
        assert!(text.contains("portcullis_statements_total{verdict=\"allow\",rule=\"\"} 1"), "{text}");
        assert!(text.contains("portcullis_holds_ended_total{outcome=\"timed_out\"} 1"), "{text}");
    }

    #[test]
    fn decisions_are_timed_into_the_histogram() {
        let metrics = Metrics::new();
        let answer = metrics.time_decision(|| 42);
        assert_eq!(answer, 42);
        let text = metrics.render(&Live::default());
        assert!(text.contains("portcullis_decision_seconds_count 1"), "{text}");
    }
}
