//! Matching statements against rules (docs/policy.md §4).
//!
//! A rule matches when every condition it states holds. Table and function
//! conditions are asymmetric: an allow rule needs *every* table (function)
//! covered, a deny or approval rule matches on *any*; an opaque statement
//! touches everything, so allow rules with such conditions never match it
//! and deny/approval rules with them always do. Any matching deny wins, then
//! any require_approval, then any allow, then `settings.default`; class
//! `unknown` always gets `settings.on_parse_error`. Rule order never changes
//! a verdict; it only picks which of several matching rules is named.

use std::sync::Arc;

use crate::analyze::{Analysis, Class, GatewayCommand, StatementFacts};
use crate::decision::{ApprovalTerms, Decision, StatementDecision, Verdict};
use crate::identity::Identity;
use crate::policy::{Effect, Patterns, Policy, Rule};

/// Whether the rule's who-conditions hold for this caller.
pub(crate) fn applies_to(rule: &Rule, identity: &Identity) -> bool {
    if let Some(groups) = &rule.groups {
        if !groups.iter().any(|g| identity.groups.contains(g)) {
            return false;
        }
    }
    if let Some(subjects) = &rule.subjects {
        if !subjects.contains(&identity.subject) {
            return false;
        }
    }
    if let Some(actors) = &rule.actors {
        let Some(actor) = &identity.actor else { return false };
        let named = [actor.subject.as_deref(), actor.client_id.as_deref()];
        if !named.iter().flatten().any(|n| actors.covers(n)) {
            return false;
        }
    }
    true
}

fn names_match(patterns: &Patterns, names: &[String], opaque: bool, effect: Effect) -> bool {
    match effect {
        Effect::Allow => !opaque && names.iter().all(|n| patterns.covers(n)),
        Effect::Deny | Effect::RequireApproval => opaque || names.iter().any(|n| patterns.covers(n)),
    }
}

/// Whether the rule's what-conditions hold for this statement.
pub(crate) fn matches(rule: &Rule, facts: &StatementFacts, text: &str) -> bool {
    if let Some(classes) = &rule.classes {
        if !classes.contains(&facts.class) {
            return false;
        }
    }
    if let Some(commands) = &rule.commands {
        // Same asymmetry as tables: an allow rule covers every command the
        // statement runs, a deny or approval rule matches any of them.
        let covered = |c: &String| commands.contains(c);
        let hit = match rule.effect {
            Effect::Allow => facts.commands.iter().all(covered),
            Effect::Deny | Effect::RequireApproval => facts.commands.iter().any(covered),
        };
        if !hit {
            return false;
        }
    }
    if let Some(tables) = &rule.tables {
        if !names_match(tables, &facts.tables, facts.opaque, rule.effect) {
            return false;
        }
    }
    if let Some(functions) = &rule.functions {
        if !names_match(functions, &facts.functions, facts.opaque, rule.effect) {
            return false;
        }
    }
    if rule.where_missing && facts.has_where != Some(false) {
        return false;
    }
    if rule.limit_missing && (facts.class != Class::Read || facts.has_limit) {
        return false;
    }
    if let Some(pattern) = &rule.pattern {
        // The decision now depends on the text itself, constants included.
        crate::analyze::literal::note_read();
        if !pattern.is_match(text) {
            return false;
        }
    }
    true
}

fn tighter(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    }
}

struct Outcome {
    verdict: Verdict,
    rule: Option<String>,
    reason: String,
    max_rows: u64,
    approvers: Vec<String>,
    approval: Option<ApprovalTerms>,
}

fn decide_statement(policy: &Policy, rules: &[&Rule], facts: &StatementFacts, text: &str) -> Outcome {
    let settings = &policy.settings;
    if facts.class == Class::Unknown {
        let why = facts.notes.first().cloned().unwrap_or_else(|| "the parser cannot read this text".to_string());
        return Outcome {
            verdict: settings.on_parse_error.verdict(),
            rule: None,
            reason: format!("{why} (settings.on_parse_error)"),
            max_rows: settings.max_rows,
            approvers: Vec::new(),
            approval: None,
        };
    }
    let matching: Vec<&Rule> = rules.iter().copied().filter(|r| matches(r, facts, text)).collect();
    let reason_of = |r: &Rule| {
        let reason = r.reason.clone().unwrap_or_else(|| format!("rule `{}`", r.name));
        match facts.notes.first() {
            // Opaque statements match deny/approval rules through what they
            // might touch: say so, or the reason reads like a false accusation.
            Some(note) if facts.opaque && r.effect != Effect::Allow => format!("{reason} (opaque statement: {note})"),
            _ => reason,
        }
    };
    if let Some(r) = matching.iter().find(|r| r.effect == Effect::Deny) {
        return Outcome {
            verdict: Verdict::Deny,
            rule: Some(r.name.clone()),
            reason: reason_of(r),
            max_rows: settings.max_rows,
            approvers: Vec::new(),
            approval: None,
        };
    }
    let approvals: Vec<&&Rule> = matching.iter().filter(|r| r.effect == Effect::RequireApproval).collect();
    if let Some(first) = approvals.first() {
        let mut approvers: Vec<String> = Vec::new();
        let mut terms: Option<ApprovalTerms> = None;
        for r in &approvals {
            for a in &r.approvers {
                if !approvers.contains(a) {
                    approvers.push(a.clone());
                }
            }
            terms = Some(terms.map_or(r.approval, |t| t.stricter(r.approval)));
        }
        return Outcome {
            verdict: Verdict::RequireApproval,
            rule: Some(first.name.clone()),
            reason: reason_of(first),
            max_rows: settings.max_rows,
            approvers,
            approval: terms,
        };
    }
    let allows: Vec<&&Rule> = matching.iter().filter(|r| r.effect == Effect::Allow).collect();
    if let Some(first) = allows.first() {
        let cap = allows.iter().filter_map(|r| r.max_rows).fold(settings.max_rows, tighter);
        return Outcome {
            verdict: Verdict::Allow,
            rule: Some(first.name.clone()),
            reason: reason_of(first),
            max_rows: cap,
            approvers: Vec::new(),
            approval: None,
        };
    }
    let verdict = settings.default.verdict();
    let mut reason = format!("no rule matches this {} statement (settings.default = {verdict})", facts.class);
    if facts.opaque {
        if let Some(note) = facts.notes.first() {
            reason = format!("{reason}; {note}");
        }
    }
    Outcome { verdict, rule: None, reason, max_rows: settings.max_rows, approvers: Vec::new(), approval: None }
}

/// A statement of the gateway's own ([`GatewayCommand`]): the policy's
/// rules are about what reaches the server, and this never does. It is
/// refused when the gateway cannot take it: an unknown `portcullis.*`
/// setting, a value it cannot read, or a string that holds other
/// statements too (the gateway sends the server a substitute for the whole
/// text, so it takes its own statements one query at a time).
fn decide_gateway(policy: &Policy, command: &GatewayCommand, alone: bool) -> Outcome {
    let (verdict, reason) = match command {
        GatewayCommand::Invalid { why } => (Verdict::Deny, why.clone()),
        _ if !alone => (
            Verdict::Deny,
            "SET portcullis.reason must be sent as a query of its own, not with other statements".to_string(),
        ),
        GatewayCommand::SetReason(_) => {
            (Verdict::Allow, "the gateway keeps the reason for the next held statement".to_string())
        }
        _ => (Verdict::Allow, "the gateway forgets the reason".to_string()),
    };
    Outcome { verdict, rule: None, reason, max_rows: policy.settings.max_rows, approvers: Vec::new(), approval: None }
}

/// Decides every statement of an analysis and combines them.
///
/// `guard` may refuse a statement the rules would let through (the
/// masking's data-flow check): it returns the reason.
pub(crate) fn decide(
    policy: &Policy,
    identity: &Identity,
    analysis: Analysis,
    sql: &str,
    guard: impl Fn(&StatementFacts) -> Option<String>,
) -> Decision {
    let rules: Vec<&Rule> = policy.rules.iter().filter(|r| applies_to(r, identity)).collect();
    let mut statements = Vec::with_capacity(analysis.statements.len());
    let mut verdict = Verdict::Allow;
    let mut rule: Option<Arc<str>> = None;
    let mut reason: Arc<str> = Arc::from("nothing to run: the string holds no statement");
    let mut max_rows = policy.settings.max_rows;
    let mut approvers: Vec<String> = Vec::new();
    let mut approval: Option<ApprovalTerms> = None;
    let spans = analysis.spans;
    let alone = analysis.statements.len() == 1;
    for (i, facts) in analysis.statements.into_iter().enumerate() {
        let span = spans.get(i).cloned().unwrap_or(0..sql.len());
        let text = sql.get(span.clone()).unwrap_or(sql);
        let mut outcome = match &facts.gateway {
            Some(command) => decide_gateway(policy, command, alone),
            None => decide_statement(policy, &rules, &facts, text),
        };
        if outcome.verdict != Verdict::Deny {
            if let Some(reason) = guard(&facts) {
                outcome = Outcome {
                    verdict: Verdict::Deny,
                    rule: None,
                    reason,
                    max_rows: outcome.max_rows,
                    approvers: Vec::new(),
                    approval: None,
                };
            }
        }
        let statement_rule = outcome.rule.map(Arc::from);
        let statement_reason = Arc::from(outcome.reason);
        if i == 0 || outcome.verdict > verdict {
            verdict = outcome.verdict;
            rule.clone_from(&statement_rule);
            reason = Arc::clone(&statement_reason);
        }
        max_rows = tighter(max_rows, outcome.max_rows);
        for a in &outcome.approvers {
            if !approvers.contains(a) {
                approvers.push(a.clone());
            }
        }
        if let Some(terms) = outcome.approval {
            approval = Some(approval.map_or(terms, |a| a.stricter(terms)));
        }
        statements.push(StatementDecision {
            facts: Arc::new(facts),
            span,
            verdict: outcome.verdict,
            rule: statement_rule,
            reason: statement_reason,
        });
    }
    if verdict != Verdict::RequireApproval {
        approvers.clear();
        approval = None;
    }
    Decision {
        verdict,
        reason,
        rule,
        max_rows,
        approvers,
        approval,
        subject: Arc::from(identity.subject.as_str()),
        actor: identity.actor.as_ref().map(|a| Arc::from(a.name())),
        statements: statements.into(),
        diagnostics: Vec::new(),
    }
}
