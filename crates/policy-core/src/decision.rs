//! The answer: a [`Decision`] for a SQL string (docs/policy.md §6).

use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::analyze::StatementFacts;
use crate::identity::Identity;

/// What happens to a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Run it.
    Allow,
    /// Hold it until a person in one of the approver groups approves.
    RequireApproval,
    /// Refuse it.
    Deny,
}

impl Verdict {
    /// The name used in policies and decisions.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::RequireApproval => "require_approval",
            Verdict::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What approving a held statement takes, from the `require_approval`
/// rules that matched it (when several match, the strictest terms of
/// each: the largest number of people, `never` over `delegator`, a
/// justification if any asks for one).
///
/// ```
/// use policy_core::{ApprovalTerms, Engine, Identity, Policy, SelfApproval, Verdict};
/// let policy = Policy::from_toml_str(r#"
///     version = 1
///     [[rule]]
///     name = "deletes-need-two"
///     effect = "require_approval"
///     commands = ["DELETE"]
///     approvers = ["dba"]
///     approvals = 2
///     self_approval = "delegator"
///     justification = true
/// "#, "inline.toml")?;
/// let engine = Engine::new(policy, Default::default())?;
/// let d = engine.decide(&Identity::new("alice"), &engine.new_session(), "DELETE FROM orders WHERE id = 1");
/// assert_eq!(d.verdict, Verdict::RequireApproval);
/// assert_eq!(
///     d.approval,
///     Some(ApprovalTerms { approvals: 2, self_approval: SelfApproval::Delegator, justification: true })
/// );
/// # Ok::<(), policy_core::PolicyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalTerms {
    /// How many distinct people must approve (at least 1).
    pub approvals: u32,
    /// Whether the person an agent acts for may approve the agent's
    /// statement.
    pub self_approval: SelfApproval,
    /// Whether the statement must come with the requester's reason.
    pub justification: bool,
}

impl ApprovalTerms {
    /// The terms of one rule alone: one person, never oneself, no
    /// justification needed.
    pub const DEFAULT: ApprovalTerms =
        ApprovalTerms { approvals: 1, self_approval: SelfApproval::Never, justification: false };

    /// The strictest of both.
    ///
    /// ```
    /// use policy_core::{ApprovalTerms, SelfApproval};
    /// let a = ApprovalTerms { approvals: 2, self_approval: SelfApproval::Delegator, justification: false };
    /// let b = ApprovalTerms { approvals: 1, self_approval: SelfApproval::Never, justification: true };
    /// assert_eq!(a.stricter(b), ApprovalTerms { approvals: 2, self_approval: SelfApproval::Never, justification: true });
    /// ```
    #[must_use]
    pub fn stricter(self, other: ApprovalTerms) -> ApprovalTerms {
        ApprovalTerms {
            approvals: self.approvals.max(other.approvals),
            self_approval: self.self_approval.min(other.self_approval),
            justification: self.justification || other.justification,
        }
    }
}

/// Whether the person an agent acts for may approve that agent's
/// statements. Nobody ever approves their own: the requester (the
/// subject, when no agent acts for it) cannot approve either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelfApproval {
    /// Someone else must approve (four eyes). Stricter than `Delegator`.
    Never,
    /// The person may approve what their own agent asks (a human in the
    /// loop of their agent).
    Delegator,
}

impl SelfApproval {
    /// The name used in policies and decisions.
    pub fn as_str(self) -> &'static str {
        match self {
            SelfApproval::Never => "never",
            SelfApproval::Delegator => "delegator",
        }
    }
}

/// One statement's facts and verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementDecision {
    /// What the analysis found.
    #[serde(flatten)]
    pub facts: Arc<StatementFacts>,
    /// Byte range of the statement in the decided string.
    #[serde(skip)]
    pub span: Range<usize>,
    /// This statement's own verdict.
    pub verdict: Verdict,
    /// The deciding rule; `None` when no rule matched.
    pub rule: Option<Arc<str>>,
    /// Why.
    pub reason: Arc<str>,
}

/// The decision for one SQL string: the strictest of its statements.
///
/// ```
/// use policy_core::{Engine, Identity, Policy, Verdict};
/// let policy = Policy::from_toml_str(r#"
///     version = 1
///     [[rule]]
///     name = "read-orders"
///     effect = "allow"
///     classes = ["read"]
///     tables = ["public.orders"]
/// "#, "inline.toml")?;
/// let engine = Engine::new(policy, Default::default())?;
/// let session = engine.new_session();
/// let me = Identity::new("alice");
/// let d = engine.decide(&me, &session, "SELECT * FROM orders; SELECT * FROM secrets");
/// assert_eq!(d.verdict, Verdict::Deny);
/// assert_eq!(d.statements[0].verdict, Verdict::Allow);
/// assert_eq!(d.statements[1].verdict, Verdict::Deny);
/// # Ok::<(), policy_core::PolicyError>(())
/// ```
///
/// Decisions come from [`crate::Engine::decide`]; a caller that refuses on
/// its own (a message it cannot read, a limit of its own) builds one with
/// [`Decision::refusal`] or [`Decision::refusal_for`]. The struct is
/// `#[non_exhaustive]`: new facts may be added without breaking callers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Decision {
    /// The strictest statement verdict (allow for an empty string).
    pub verdict: Verdict,
    /// Why, as shown to the client and recorded.
    pub reason: Arc<str>,
    /// The rule behind the verdict; `None` when no rule matched.
    pub rule: Option<Arc<str>>,
    /// Cap on rows any statement may return; 0 = none.
    pub max_rows: u64,
    /// Groups that may approve (require_approval only).
    pub approvers: Vec<String>,
    /// What approving it takes (require_approval only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalTerms>,
    /// The person or workload the decision was made for.
    pub subject: Arc<str>,
    /// The agent acting for the subject, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Arc<str>>,
    /// Every statement, in order (shared: cloning a decision is cheap).
    pub statements: Arc<[StatementDecision]>,
    /// Problems met while deciding (each one made the answer stricter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<String>,
}

impl Decision {
    /// Whether `other` is this decision in all but where its statements
    /// lie in their text ([`StatementDecision::span`], which is not
    /// serialised): what the engine answers for another text of the same
    /// shape, whose JSON is this one's.
    ///
    /// ```
    /// use policy_core::{Engine, Identity, Policy};
    /// let policy = Policy::from_toml_str(r#"
    ///     version = 1
    ///     [[rule]]
    ///     name = "read-orders"
    ///     effect = "allow"
    ///     classes = ["read"]
    ///     tables = ["public.orders"]
    /// "#, "inline.toml")?;
    /// let engine = Engine::new(policy, Default::default())?;
    /// let session = engine.new_session();
    /// let me = Identity::new("alice");
    /// let a = engine.decide(&me, &session, "SELECT total FROM orders WHERE id = 7");
    /// let b = engine.decide(&me, &session, "SELECT total FROM orders WHERE id = 1234");
    /// let c = engine.decide(&me, &session, "SELECT id FROM orders WHERE id = 7");
    /// assert_ne!(a.statements[0].span, b.statements[0].span);
    /// assert!(a.same_apart_from_spans(&b));
    /// assert_eq!(a.to_json(), b.to_json());
    /// assert!(!a.same_apart_from_spans(&c));
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn same_apart_from_spans(&self, other: &Decision) -> bool {
        // Destructured, so that a field added later is compared too.
        let Decision { verdict, reason, rule, max_rows, approvers, approval, subject, actor, statements, diagnostics } =
            self;
        // Statements of other shapes differ in their fingerprints: that is
        // compared first (a caller may hold a few decisions to compare).
        statements.len() == other.statements.len()
            && statements.iter().zip(other.statements.iter()).all(|(a, b)| a.facts.fingerprint == b.facts.fingerprint)
            && *verdict == other.verdict
            && *reason == other.reason
            && *rule == other.rule
            && *max_rows == other.max_rows
            && *approvers == other.approvers
            && *approval == other.approval
            && *subject == other.subject
            && *actor == other.actor
            && *diagnostics == other.diagnostics
            && statements.len() == other.statements.len()
            && statements.iter().zip(other.statements.iter()).all(|(a, b)| {
                let StatementDecision { facts, span: _, verdict, rule, reason } = a;
                (Arc::ptr_eq(facts, &b.facts) || *facts == b.facts)
                    && *verdict == b.verdict
                    && *rule == b.rule
                    && *reason == b.reason
            })
    }

    /// A refusal the caller decided itself, for `subject`: verdict
    /// [`Verdict::Deny`] with `reason`, no rule, no row cap, no approvers,
    /// no statements.
    ///
    /// ```
    /// use policy_core::{Decision, Verdict};
    /// let d = Decision::refusal("alice", "the message is not valid UTF-8");
    /// assert_eq!(d.verdict, Verdict::Deny);
    /// assert_eq!((&*d.subject, &*d.reason), ("alice", "the message is not valid UTF-8"));
    /// assert!(d.rule.is_none() && d.statements.is_empty() && d.actor.is_none());
    /// assert_eq!(
    ///     d.to_json(),
    ///     r#"{"verdict":"deny","reason":"the message is not valid UTF-8","rule":null,"max_rows":0,"approvers":[],"subject":"alice","statements":[]}"#
    /// );
    /// ```
    pub fn refusal(subject: &str, reason: impl Into<String>) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            reason: Arc::from(reason.into()),
            rule: None,
            max_rows: 0,
            approvers: Vec::new(),
            approval: None,
            subject: Arc::from(subject),
            actor: None,
            statements: Arc::from(Vec::new()),
            diagnostics: Vec::new(),
        }
    }

    /// [`Decision::refusal`] for `identity`: its subject, and the agent
    /// acting for it, if any, as [`crate::Engine::decide`] names them.
    ///
    /// ```
    /// use policy_core::{Actor, Decision, Identity};
    /// let agent = Identity::new("alice").with_actor(Actor::new("copilot-7"));
    /// let d = Decision::refusal_for(&agent, "row limit reached");
    /// assert_eq!((&*d.subject, d.actor.as_deref()), ("alice", Some("copilot-7")));
    /// ```
    pub fn refusal_for(identity: &Identity, reason: impl Into<String>) -> Decision {
        Decision {
            actor: identity.actor.as_ref().map(|a| Arc::from(a.name())),
            ..Decision::refusal(&identity.subject, reason)
        }
    }

    /// Whether the statements' spans are `spans`, in order.
    pub(crate) fn has_spans(&self, spans: &[Range<usize>]) -> bool {
        self.statements.len() == spans.len() && self.statements.iter().zip(spans).all(|(s, r)| s.span == *r)
    }

    /// This decision with its statements' spans replaced by `spans`, in
    /// order (a statement past their end keeps its own).
    pub(crate) fn with_spans(&self, spans: &[Range<usize>]) -> Decision {
        if self.has_spans(spans) {
            return self.clone();
        }
        let Decision { verdict, reason, rule, max_rows, approvers, approval, subject, actor, statements, diagnostics } =
            self;
        let moved = statements.iter().enumerate().map(|(i, s)| StatementDecision {
            span: spans.get(i).cloned().unwrap_or_else(|| s.span.clone()),
            ..s.clone()
        });
        Decision {
            verdict: *verdict,
            reason: Arc::clone(reason),
            rule: rule.clone(),
            max_rows: *max_rows,
            approvers: approvers.clone(),
            approval: *approval,
            subject: Arc::clone(subject),
            actor: actor.clone(),
            statements: moved.collect(),
            diagnostics: diagnostics.clone(),
        }
    }

    /// The decision as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"verdict\":\"deny\",\"reason\":\"decision could not be serialised: {e}\"}}")
        })
    }
}
