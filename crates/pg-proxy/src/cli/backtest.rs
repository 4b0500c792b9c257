//! `pg-proxy policy backtest`: every recorded statement decided again
//! under a new policy, and what would change.
//!
//! Each session is replayed in order with its own identity (from its
//! `session_start` record) and session state: its starting `search_path`,
//! then the effects (`SET search_path`, `PREPARE`, ...) of each statement
//! that ran. The baseline is the verdict each record carries (the policy
//! it names by digest), or, with `--baseline`, a second policy decided the
//! same way.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use policy_core::{Actor, Engine, Identity, Session, Verdict};
use serde_json::Value;

/// Which changes make the command fail.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum FailOn {
    /// A statement allowed (or held) before is refused now.
    Refused,
    /// A statement refused (or held) before is allowed now.
    Allowed,
}

/// How a verdict changed: newly refused, held or allowed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Direction {
    Refused,
    Held,
    Allowed,
}

impl Direction {
    fn of(before: Verdict, after: Verdict) -> Option<Direction> {
        match (before, after) {
            (b, a) if b == a => None,
            (_, Verdict::Deny) => Some(Direction::Refused),
            (_, Verdict::RequireApproval) => Some(Direction::Held),
            (_, Verdict::Allow) => Some(Direction::Allowed),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Direction::Refused => "newly refused",
            Direction::Held => "newly held for approval",
            Direction::Allowed => "newly allowed",
        }
    }
}

/// One statement whose verdict changes.
#[derive(serde::Serialize)]
struct Change {
    direction: &'static str,
    session: String,
    n: u64,
    subject: String,
    actor: Option<String>,
    sql: String,
    before: Verdict,
    before_rule: Option<String>,
    after: Verdict,
    after_rule: Option<String>,
    reason: String,
}

/// One session being replayed.
struct Replay {
    identity: Identity,
    new: Session,
    old: Session,
}

fn verdict_of(text: &str) -> Option<Verdict> {
    serde_json::from_value(Value::String(text.to_string())).ok()
}

/// Runs the backtest; prints the report; the exit code says whether a
/// change of the `fail_on` direction was found.
pub(crate) fn run(
    new: &Engine,
    baseline: Option<&Engine>,
    dir: &Path,
    fail_on: Option<FailOn>,
    json: bool,
) -> ExitCode {
    let records = match super::audit::records(dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut sessions: BTreeMap<String, Replay> = BTreeMap::new();
    // Statements waiting for their result (whether they ran decides
    // whether their effects apply).
    let mut waiting: BTreeMap<(String, u64), Vec<policy_core::SessionEffect>> = BTreeMap::new();
    let mut changes: Vec<Change> = Vec::new();
    let (mut statements, mut unknown_sessions) = (0u64, 0u64);
    for r in &records {
        let (Some(kind), Some(id)) = (r["type"].as_str(), r["session"].as_str()) else { continue };
        match kind {
            "session_start" => {
                let mut identity = Identity::new(r["subject"].as_str().unwrap_or_default());
                identity.groups = r["groups"]
                    .as_array()
                    .map(|g| g.iter().filter_map(Value::as_str).map(str::to_string).collect())
                    .unwrap_or_default();
                identity.actor = serde_json::from_value::<Actor>(r["act"].clone()).ok();
                let path: Option<Vec<String>> = serde_json::from_value(r["search_path"].clone()).ok();
                let session = |engine: &Engine| match &path {
                    Some(p) => Session::default().with_startup_search_path(p.clone()),
                    None => engine.new_session(),
                };
                let old = session(baseline.unwrap_or(new));
                sessions.insert(id.to_string(), Replay { identity, new: session(new), old });
            }
            "statement" => {
                statements += 1;
                let Some(replay) = sessions.get_mut(id) else {
                    // Its start is in a deleted segment: no identity to
                    // decide with.
                    unknown_sessions += 1;
                    continue;
                };
                let sql = r["sql"].as_str().unwrap_or_default();
                let n = r["n"].as_u64().unwrap_or(0);
                let after = new.decide(&replay.identity, &replay.new, sql);
                let (before, before_rule) = match baseline {
                    Some(old) => {
                        let d = old.decide(&replay.identity, &replay.old, sql);
                        (d.verdict, d.rule.as_deref().map(str::to_string))
                    }
                    None => (
                        r["verdict"].as_str().and_then(verdict_of).unwrap_or(Verdict::Deny),
                        r["rule"].as_str().map(str::to_string),
                    ),
                };
                let effects = after.statements.iter().flat_map(|s| s.facts.session_effects.iter().cloned()).collect();
                waiting.insert((id.to_string(), n), effects);
                if let Some(direction) = Direction::of(before, after.verdict) {
                    changes.push(Change {
                        direction: direction.label(),
                        session: id.to_string(),
                        n,
                        subject: replay.identity.subject.clone(),
                        actor: replay.identity.actor.as_ref().map(|a| a.name().to_string()),
                        sql: sql.to_string(),
                        before,
                        before_rule,
                        after: after.verdict,
                        after_rule: after.rule.as_deref().map(str::to_string),
                        reason: after.reason.to_string(),
                    });
                }
            }
            "result" => {
                let key = (id.to_string(), r["n"].as_u64().unwrap_or(0));
                let effects = waiting.remove(&key).unwrap_or_default();
                if r["ran"].as_bool() == Some(true) && r["error"].is_null() {
                    if let Some(replay) = sessions.get_mut(id) {
                        for e in &effects {
                            replay.new.apply(e);
                            replay.old.apply(e);
                        }
                    }
                }
            }
            "session_end" => {
                sessions.remove(id);
            }
            _ => {}
        }
    }
    let failed = fail_on.is_some_and(|f| {
        let label = match f {
            FailOn::Refused => Direction::Refused.label(),
            FailOn::Allowed => Direction::Allowed.label(),
        };
        changes.iter().any(|c| c.direction == label)
    });
    let mut out = std::io::stdout().lock();
    if json {
        for c in &changes {
            let _ = writeln!(out, "{}", serde_json::to_string(c).unwrap_or_default());
        }
    } else {
        report(&mut out, &changes, statements, baseline.is_some());
        if unknown_sessions > 0 {
            let _ = writeln!(
                out,
                "{unknown_sessions} statement(s) skipped: their session began in a segment no longer kept"
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn report(out: &mut impl Write, changes: &[Change], statements: u64, baseline: bool) {
    let against = if baseline { "the baseline policy" } else { "the verdicts recorded" };
    let _ = writeln!(out, "{statements} recorded statements decided again; {} change against {against}", changes.len());
    // Direction, then the rule behind the new verdict (or the old one's,
    // for newly allowed statements).
    let mut groups: BTreeMap<(&str, String), Vec<&Change>> = BTreeMap::new();
    for c in changes {
        let rule = match c.direction {
            "newly allowed" => c.before_rule.clone().map(|r| format!("was {r}")),
            _ => c.after_rule.clone(),
        };
        groups.entry((c.direction, rule.unwrap_or_else(|| "no rule (the default)".into()))).or_default().push(c);
    }
    let mut last = "";
    for ((direction, rule), list) in &groups {
        if *direction != last {
            let total = changes.iter().filter(|c| c.direction == *direction).count();
            let _ = writeln!(out, "\n{direction}: {total}");
            last = direction;
        }
        let _ = writeln!(out, "  {rule}: {}", list.len());
        for c in list.iter().take(3) {
            let who = match &c.actor {
                Some(a) => format!("{} ({a})", c.subject),
                None => c.subject.clone(),
            };
            let sql: String = c.sql.split_whitespace().collect::<Vec<_>>().join(" ");
            let sql = if sql.chars().count() > 100 {
                format!("{}...", sql.chars().take(100).collect::<String>())
            } else {
                sql
            };
            let _ = writeln!(out, "    {} #{} {who}: {sql}", c.session, c.n);
        }
        if list.len() > 3 {
            let _ = writeln!(out, "    ... and {} more", list.len() - 3);
        }
    }
}
