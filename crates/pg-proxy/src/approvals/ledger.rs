//! The approvals ledger: requests, votes and grants, with no I/O.
//!
//! Every operation takes the time it happens at, and answers with what
//! changed ([`Event`]s, for the audit log, the webhook and the live
//! stream); the stores around it keep the ledger, wake the sessions that
//! wait, and share it between replicas. The rules it enforces:
//!
//! - only a person approves: an approver whose token says an agent acts
//!   for them is refused;
//! - the approver is in one of the request's approver groups (a request
//!   whose rules name no group can only be denied or time out);
//! - nobody approves their own request: a person acting alone never; the
//!   person an agent acts for only when the rule says
//!   `self_approval = "delegator"`;
//! - `approvals = N` distinct people must approve; one denial ends it;
//! - a request is decided once; after its expiry it is expired;
//! - a grant is made when every approving vote asked for one, for the
//!   shortest time asked, capped by the ledger's longest grant; it covers
//!   the same fingerprint for the same person and agent.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use pg_proxy::approvals::ledger::{Approver, Ledger, Progress, Request, Requester};
//! use policy_core::ApprovalTerms;
//! let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
//! let mut ledger = Ledger::new(Duration::from_secs(8 * 3600));
//! let agent = Requester::new("alice", Some("copilot"));
//! let request = Request::new("r1", 7, agent, "a4f1", vec!["dba".into()], ApprovalTerms::DEFAULT, now, now + Duration::from_secs(900));
//! ledger.open(request, now)?;
//! let bob = Approver::new("bob", ["dba"]);
//! let (progress, _events) = ledger.approve("r1", &bob, "looks right", None, now)?;
//! assert_eq!(progress, Progress::Approved { grant: None });
//! # Ok::<(), pg_proxy::approvals::ledger::LedgerError>(())
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use policy_core::{ApprovalTerms, SelfApproval};

/// Who asked: the person, and the agent acting for them, if any.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Requester {
    /// The person (the token's subject).
    pub subject: String,
    /// The agent acting for them.
    pub actor: Option<String>,
}

impl Requester {
    /// A requester.
    pub fn new(subject: impl Into<String>, actor: Option<&str>) -> Requester {
        Requester { subject: subject.into(), actor: actor.map(str::to_string) }
    }
}

/// Someone deciding: the identity their own token proved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Approver {
    /// The person.
    pub subject: String,
    /// Their groups.
    pub groups: Vec<String>,
    /// The agent acting for them, if their token says one does: such an
    /// identity never approves.
    pub actor: Option<String>,
}

impl Approver {
    /// A person in `groups`.
    pub fn new<G: Into<String>>(subject: impl Into<String>, groups: impl IntoIterator<Item = G>) -> Approver {
        Approver { subject: subject.into(), groups: groups.into_iter().map(Into::into).collect(), actor: None }
    }
}

/// One statement of a held batch, as the approvers see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldText {
    /// The SQL text.
    pub sql: String,
    /// Its bound parameters as text (`None` is NULL).
    pub parameters: Vec<Option<String>>,
    /// The engine's decision on it, as JSON (the verdict, the rule, the
    /// facts of every statement); `null` when not given.
    #[serde(default)]
    pub decision: serde_json::Value,
}

/// A held batch waiting for people to decide.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// Its id.
    pub id: String,
    /// The gateway session holding it.
    pub session: u64,
    /// Who asked.
    pub requester: Requester,
    /// The statements held, in order (empty until the store adds them).
    pub statements: Vec<HeldText>,
    /// The statements' fingerprints joined by `+`: what a grant covers.
    pub fingerprint: String,
    /// The rule that asked for approval.
    pub rule: Option<String>,
    /// The decision's reason.
    pub reason: String,
    /// The requester's own reason, if given.
    pub justification: Option<String>,
    /// The replica whose session holds it (with a shared store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// The statements' plans, once planned (`None` until then, or when
    /// the gateway does not plan).
    pub plan: Option<Vec<super::plan::StatementPlan>>,
    /// Groups whose members may approve.
    pub approvers: Vec<String>,
    /// What approving takes.
    pub terms: ApprovalTerms,
    /// When it was asked.
    #[serde(serialize_with = "rfc3339", deserialize_with = "from_rfc3339")]
    pub created: SystemTime,
    /// When it expires, undecided.
    #[serde(serialize_with = "rfc3339", deserialize_with = "from_rfc3339")]
    pub expires: SystemTime,
    /// Where it stands.
    pub state: State,
    /// The approving votes so far.
    pub votes: Vec<Vote>,
}

impl Request {
    /// A pending request with no statements shown yet, no rule and no
    /// reasons (set the fields for those).
    #[allow(clippy::too_many_arguments, reason = "a request is made of these, all needed")]
    pub fn new(
        id: impl Into<String>,
        session: u64,
        requester: Requester,
        fingerprint: impl Into<String>,
        approvers: Vec<String>,
        terms: ApprovalTerms,
        created: SystemTime,
        expires: SystemTime,
    ) -> Request {
        Request {
            id: id.into(),
            session,
            requester,
            statements: Vec::new(),
            fingerprint: fingerprint.into(),
            rule: None,
            reason: String::new(),
            justification: None,
            plan: None,
            replica: None,
            approvers,
            terms,
            created,
            expires,
            state: State::Pending,
            votes: Vec::new(),
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Waiting for people.
    Pending,
    /// Approved: the held statement runs.
    Approved {
        /// The grant made with it, if any.
        grant: Option<String>,
    },
    /// Denied.
    Denied {
        /// Who denied it.
        by: String,
        /// Their reason.
        reason: String,
    },
    /// Nobody decided before it expired.
    Expired,
    /// The session stopped waiting (the client cancelled, left, or its
    /// hold timed out).
    Withdrawn {
        /// Why.
        why: String,
    },
}

impl State {
    /// Whether it is still waiting.
    pub fn is_pending(&self) -> bool {
        matches!(self, State::Pending)
    }

    /// The state's name: `pending`, `approved`, `denied`, `expired`,
    /// `withdrawn`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved { .. } => "approved",
            State::Denied { .. } => "denied",
            State::Expired => "expired",
            State::Withdrawn { .. } => "withdrawn",
        }
    }
}

/// One person's approval.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Vote {
    /// Who.
    pub approver: String,
    /// Their reason.
    pub reason: String,
    /// The grant they asked for with it, if any.
    #[serde(serialize_with = "seconds", deserialize_with = "from_seconds")]
    pub grant_for: Option<Duration>,
    /// When.
    #[serde(serialize_with = "rfc3339", deserialize_with = "from_rfc3339")]
    pub at: SystemTime,
}

/// Leave for a person (and agent) to run statements of one fingerprint
/// without asking again, for a while.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Grant {
    /// Its id.
    pub id: String,
    /// Whom it covers.
    pub requester: Requester,
    /// What it covers.
    pub fingerprint: String,
    /// The request it was made with.
    pub request: String,
    /// The approver groups of that request (their members may revoke it).
    pub approvers: Vec<String>,
    /// Who granted it.
    pub granted_by: Vec<String>,
    /// From when.
    #[serde(serialize_with = "rfc3339", deserialize_with = "from_rfc3339")]
    pub created: SystemTime,
    /// Until when.
    #[serde(serialize_with = "rfc3339", deserialize_with = "from_rfc3339")]
    pub expires: SystemTime,
}

/// What changed, in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A request was opened.
    #[serde(rename = "requested")]
    Requested {
        /// The request.
        id: String,
    },
    /// Someone approved; more approvals are needed.
    Vote {
        /// The request.
        id: String,
        /// Who.
        approver: String,
    },
    /// A request was approved (the held statement runs).
    Approved {
        /// The request.
        id: String,
        /// Who approved it, in order.
        by: Vec<String>,
    },
    /// A request was denied.
    Denied {
        /// The request.
        id: String,
        /// Who.
        by: String,
        /// Why.
        reason: String,
    },
    /// A request expired undecided.
    Expired {
        /// The request.
        id: String,
    },
    /// The requester gave (or changed) the request's reason.
    Justified {
        /// The request.
        id: String,
    },
    /// A request's statements were planned.
    Planned {
        /// The request.
        id: String,
    },
    /// The session stopped waiting.
    Withdrawn {
        /// The request.
        id: String,
        /// Why.
        why: String,
    },
    /// A grant was made.
    Granted {
        /// The grant.
        grant: String,
        /// With this request.
        request: String,
    },
    /// A grant was revoked.
    Revoked {
        /// The grant.
        grant: String,
        /// The request it was made with.
        request: String,
        /// By whom.
        by: String,
    },
    /// A grant ran out.
    GrantExpired {
        /// The grant.
        grant: String,
        /// The request it was made with.
        request: String,
    },
}

impl Event {
    /// The request the event concerns (for a grant, the one it was made
    /// with).
    pub fn request(&self) -> &str {
        match self {
            Event::Requested { id }
            | Event::Vote { id, .. }
            | Event::Approved { id, .. }
            | Event::Denied { id, .. }
            | Event::Expired { id }
            | Event::Planned { id }
            | Event::Justified { id }
            | Event::Withdrawn { id, .. } => id,
            Event::Granted { request, .. } | Event::Revoked { request, .. } | Event::GrantExpired { request, .. } => {
                request
            }
        }
    }

    /// The event's name, as its JSON and the audit log write it.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Requested { .. } => "requested",
            Event::Vote { .. } => "vote",
            Event::Approved { .. } => "approved",
            Event::Denied { .. } => "denied",
            Event::Expired { .. } => "expired",
            Event::Planned { .. } => "planned",
            Event::Justified { .. } => "justified",
            Event::Withdrawn { .. } => "withdrawn",
            Event::Granted { .. } => "granted",
            Event::Revoked { .. } => "revoked",
            Event::GrantExpired { .. } => "grant_expired",
        }
    }
}

/// What an approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Counted; this many more people must approve.
    Counted {
        /// Approvals still needed.
        needed: u32,
    },
    /// The request is approved.
    Approved {
        /// The grant made with it.
        grant: Option<Grant>,
    },
}

/// Why the ledger refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// No such request (or grant).
    #[error("no approval request {0}")]
    NoRequest(String),
    /// No such grant.
    #[error("no grant {0}")]
    NoGrant(String),
    /// A request with this id exists already.
    #[error("approval request {0} exists already")]
    Duplicate(String),
    /// The request is decided (or expired, or withdrawn).
    #[error("approval request {id} is {state} already")]
    Decided {
        /// The request.
        id: String,
        /// Its state's name.
        state: &'static str,
    },
    /// The approver's token says an agent acts for them.
    #[error("{subject}'s token says the agent {actor} acts for them: approvals are given by people, not agents")]
    Agent {
        /// The person.
        subject: String,
        /// The agent.
        actor: String,
    },
    /// The approver is in none of the request's approver groups.
    #[error("{subject} is in none of the groups that may approve this request ({groups})")]
    NotAnApprover {
        /// Who tried.
        subject: String,
        /// The groups that may, joined.
        groups: String,
    },
    /// The approver asked for this request themselves.
    #[error("{subject} cannot approve their own request")]
    OwnRequest {
        /// Who tried.
        subject: String,
    },
    /// The rule wants someone other than the person the agent acts for.
    #[error(
        "{subject} cannot approve what their own agent {actor} asks: the rule wants someone else to (self_approval = \"never\")"
    )]
    OwnAgent {
        /// Who tried.
        subject: String,
        /// Their agent.
        actor: String,
    },
    /// The approver approved this request before.
    #[error("{subject} approved this request already; it needs {needed} more people")]
    AlreadyApproved {
        /// Who tried again.
        subject: String,
        /// Approvals still needed from others.
        needed: u32,
    },
    /// A grant of no time.
    #[error("a grant must last some time")]
    EmptyGrant,
    /// Only the person who asked (or whose agent asked) gives the
    /// request's reason.
    #[error("only {requester} gives the reason for this request")]
    NotTheRequester {
        /// The person who asked, or whose agent asked.
        requester: String,
    },
    /// The shared store could not be reached or written: nothing changed
    /// (or not that this replica knows; the command may be read back).
    #[error("the approvals store is unavailable (the gateway's log says why)")]
    Unavailable(String),
    /// Someone approved already: the reason they read stays.
    #[error("an approver has voted on this request: its reason can no longer change")]
    AlreadyVoted,
    /// A reason that is empty or too long.
    #[error("a reason is 1 to {max} bytes")]
    BadReason {
        /// The longest reason taken.
        max: usize,
    },
}

/// One change to a ledger, as a log of changes replays it: every change
/// the ledger's methods make is one of these, applied at a time given with
/// it ([`Ledger::apply`]). Ledgers that apply the same commands at the same
/// times, in the same order, hold the same requests and grants and emit
/// the same events, which is how several gateways share one.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use pg_proxy::approvals::ledger::{Approver, Command, Ledger, Request, Requester};
/// use policy_core::ApprovalTerms;
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
/// let request = Request::new("r1", 7, Requester::new("alice", Some("copilot")), "f1", vec!["dba".into()],
///     ApprovalTerms::DEFAULT, now, now + Duration::from_secs(900));
/// let log = [
///     Command::Open { request: Box::new(request) },
///     Command::Approve { id: "r1".into(), approver: Approver::new("bob", ["dba"]), reason: "ok".into(), grant_for: None },
/// ];
/// let (mut here, mut there) = (Ledger::new(Duration::from_secs(3600)), Ledger::new(Duration::from_secs(3600)));
/// for command in &log {
///     here.apply(command, now).unwrap();
///     // As another gateway reads it from the shared log.
///     let copy: Command = serde_json::from_str(&serde_json::to_string(command).unwrap()).unwrap();
///     there.apply(&copy, now).unwrap();
/// }
/// assert_eq!(here, there);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// [`Ledger::open`].
    Open {
        /// The request.
        request: Box<Request>,
    },
    /// [`Ledger::approve`].
    Approve {
        /// The request.
        id: String,
        /// Who.
        approver: Approver,
        /// Why.
        reason: String,
        /// The grant asked for, if any.
        #[serde(serialize_with = "seconds", deserialize_with = "from_seconds")]
        grant_for: Option<Duration>,
    },
    /// [`Ledger::deny`].
    Deny {
        /// The request.
        id: String,
        /// Who.
        approver: Approver,
        /// Why.
        reason: String,
    },
    /// [`Ledger::justify`].
    Justify {
        /// The request.
        id: String,
        /// Who (the requester).
        by: Approver,
        /// The reason.
        reason: String,
    },
    /// [`Ledger::set_plan`].
    SetPlan {
        /// The request.
        id: String,
        /// Its statements' plans.
        plan: Vec<super::plan::StatementPlan>,
    },
    /// [`Ledger::withdraw`].
    Withdraw {
        /// The request.
        id: String,
        /// Why.
        why: String,
    },
    /// [`Ledger::revoke`].
    Revoke {
        /// The grant.
        id: String,
        /// Who.
        by: Approver,
    },
    /// [`Ledger::expire`].
    Expire,
}

/// What applying a command gave, besides its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Done.
    Done,
    /// An approval's progress.
    Progress(Progress),
}

/// Requests and grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    requests: BTreeMap<String, Request>,
    grants: BTreeMap<String, Grant>,
    max_grant: Duration,
}

impl Ledger {
    /// An empty ledger whose grants last at most `max_grant`.
    pub fn new(max_grant: Duration) -> Ledger {
        Ledger { requests: BTreeMap::new(), grants: BTreeMap::new(), max_grant }
    }

    /// Applies `command` at time `now`. On an error nothing changed but
    /// what the passing of time changes anyway (expiries up to `now`),
    /// as with the methods it calls.
    pub fn apply(&mut self, command: &Command, now: SystemTime) -> Result<(Applied, Vec<Event>), LedgerError> {
        let done = |events: Vec<Event>| (Applied::Done, events);
        match command {
            Command::Open { request } => self.open((**request).clone(), now).map(done),
            Command::Approve { id, approver, reason, grant_for } => {
                let (progress, events) = self.approve(id, approver, reason, *grant_for, now)?;
                Ok((Applied::Progress(progress), events))
            }
            Command::Deny { id, approver, reason } => self.deny(id, approver, reason, now).map(done),
            Command::Justify { id, by, reason } => self.justify(id, by, reason, now).map(done),
            Command::SetPlan { id, plan } => Ok(done(self.set_plan(id, plan.clone()))),
            Command::Withdraw { id, why } => Ok(done(self.withdraw(id, why, now))),
            Command::Revoke { id, by } => self.revoke(id, by, now).map(done),
            Command::Expire => Ok(done(self.expire(now))),
        }
    }

    /// Opens a request (its state is set to pending).
    pub fn open(&mut self, mut request: Request, now: SystemTime) -> Result<Vec<Event>, LedgerError> {
        let mut events = self.expire(now);
        if self.requests.contains_key(&request.id) {
            return Err(LedgerError::Duplicate(request.id));
        }
        request.state = State::Pending;
        request.votes.clear();
        events.push(Event::Requested { id: request.id.clone() });
        self.requests.insert(request.id.clone(), request);
        Ok(events)
    }

    /// A request.
    pub fn request(&self, id: &str) -> Option<&Request> {
        self.requests.get(id)
    }

    /// Requests, oldest first, pending ones or decided ones.
    pub fn requests(&self, pending: bool) -> Vec<&Request> {
        let mut out: Vec<&Request> = self.requests.values().filter(|r| r.state.is_pending() == pending).collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// Live grants, oldest first.
    pub fn grants(&self, now: SystemTime) -> Vec<&Grant> {
        let mut out: Vec<&Grant> = self.grants.values().filter(|g| g.expires > now).collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// The live grant that covers `fingerprint` for `requester`, if any.
    pub fn grant_for(&self, requester: &Requester, fingerprint: &str, now: SystemTime) -> Option<&Grant> {
        self.grants.values().find(|g| g.expires > now && g.requester == *requester && g.fingerprint == fingerprint)
    }

    /// Whether `approver` may decide `request` at all (approve or deny):
    /// a person, in one of its groups.
    fn check_approver(request: &Request, approver: &Approver) -> Result<(), LedgerError> {
        if let Some(actor) = &approver.actor {
            return Err(LedgerError::Agent { subject: approver.subject.clone(), actor: actor.clone() });
        }
        if !request.approvers.iter().any(|g| approver.groups.contains(g)) {
            return Err(LedgerError::NotAnApprover {
                subject: approver.subject.clone(),
                groups: if request.approvers.is_empty() {
                    "the rule names none".to_string()
                } else {
                    request.approvers.join(", ")
                },
            });
        }
        Ok(())
    }

    fn pending_mut(&mut self, id: &str, now: SystemTime, events: &mut Vec<Event>) -> Result<&mut Request, LedgerError> {
        events.extend(self.expire(now));
        let request = self.requests.get_mut(id).ok_or_else(|| LedgerError::NoRequest(id.to_string()))?;
        if !request.state.is_pending() {
            return Err(LedgerError::Decided { id: id.to_string(), state: request.state.name() });
        }
        Ok(request)
    }

    /// `approver` approves request `id`, asking for a grant of
    /// `grant_for` if given.
    pub fn approve(
        &mut self,
        id: &str,
        approver: &Approver,
        reason: &str,
        grant_for: Option<Duration>,
        now: SystemTime,
    ) -> Result<(Progress, Vec<Event>), LedgerError> {
        if grant_for.is_some_and(|d| d.is_zero()) {
            return Err(LedgerError::EmptyGrant);
        }
        let mut events = Vec::new();
        let max_grant = self.max_grant;
        let request = self.pending_mut(id, now, &mut events)?;
        Self::check_approver(request, approver)?;
        if approver.subject == request.requester.subject {
            match &request.requester.actor {
                None => return Err(LedgerError::OwnRequest { subject: approver.subject.clone() }),
                Some(actor) if request.terms.self_approval == SelfApproval::Never => {
                    return Err(LedgerError::OwnAgent { subject: approver.subject.clone(), actor: actor.clone() });
                }
                Some(_) => {}
            }
        }
        let needed = |votes: usize| request.terms.approvals.max(1).saturating_sub(votes as u32);
        if request.votes.iter().any(|v| v.approver == approver.subject) {
            return Err(LedgerError::AlreadyApproved {
                subject: approver.subject.clone(),
                needed: needed(request.votes.len()),
            });
        }
        request.votes.push(Vote { approver: approver.subject.clone(), reason: reason.to_string(), grant_for, at: now });
        let left = needed(request.votes.len());
        if left > 0 {
            events.push(Event::Vote { id: id.to_string(), approver: approver.subject.clone() });
            return Ok((Progress::Counted { needed: left }, events));
        }
        // A grant only when every approver asked for one, for the shortest
        // time asked.
        let asked: Option<Vec<Duration>> = request.votes.iter().map(|v| v.grant_for).collect();
        let grant = asked.and_then(|d| d.into_iter().min()).map(|d| Grant {
            id: format!("{id}-grant"),
            requester: request.requester.clone(),
            fingerprint: request.fingerprint.clone(),
            request: id.to_string(),
            approvers: request.approvers.clone(),
            granted_by: request.votes.iter().map(|v| v.approver.clone()).collect(),
            created: now,
            // A time past what the clock can hold: the grant ends at once.
            expires: now.checked_add(d.min(max_grant)).unwrap_or(now),
        });
        request.state = State::Approved { grant: grant.as_ref().map(|g| g.id.clone()) };
        events.push(Event::Approved {
            id: id.to_string(),
            by: request.votes.iter().map(|v| v.approver.clone()).collect(),
        });
        if let Some(g) = &grant {
            events.push(Event::Granted { grant: g.id.clone(), request: id.to_string() });
            self.grants.insert(g.id.clone(), g.clone());
        }
        Ok((Progress::Approved { grant }, events))
    }

    /// `approver` denies request `id`. Anyone who may approve it may deny
    /// it, and so may the person whose agent asked.
    pub fn deny(
        &mut self,
        id: &str,
        approver: &Approver,
        reason: &str,
        now: SystemTime,
    ) -> Result<Vec<Event>, LedgerError> {
        let mut events = Vec::new();
        let request = self.pending_mut(id, now, &mut events)?;
        let delegator = approver.actor.is_none()
            && request.requester.actor.is_some()
            && approver.subject == request.requester.subject;
        if !delegator {
            Self::check_approver(request, approver)?;
        }
        request.state = State::Denied { by: approver.subject.clone(), reason: reason.to_string() };
        events.push(Event::Denied { id: id.to_string(), by: approver.subject.clone(), reason: reason.to_string() });
        Ok(events)
    }

    /// The requester gives pending request `id` its reason (the
    /// justification approvers see), after the fact: the person who asked,
    /// or the person whose agent asked, with their own token (not the
    /// agent's).
    pub fn justify(
        &mut self,
        id: &str,
        by: &Approver,
        reason: &str,
        now: SystemTime,
    ) -> Result<Vec<Event>, LedgerError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > policy_core::MAX_REASON_BYTES {
            return Err(LedgerError::BadReason { max: policy_core::MAX_REASON_BYTES });
        }
        let mut events = Vec::new();
        let request = self.pending_mut(id, now, &mut events)?;
        if by.actor.is_some() || by.subject != request.requester.subject {
            // Someone who may not see the request learns nothing of it.
            if !request.approvers.iter().any(|g| by.groups.contains(g)) && by.subject != request.requester.subject {
                return Err(LedgerError::NoRequest(id.to_string()));
            }
            return Err(LedgerError::NotTheRequester { requester: request.requester.subject.clone() });
        }
        // What approvers voted on stays what they read.
        if !request.votes.is_empty() {
            return Err(LedgerError::AlreadyVoted);
        }
        request.justification = Some(reason.to_string());
        events.push(Event::Justified { id: id.to_string() });
        Ok(events)
    }

    /// Attaches the plans of request `id`'s statements (whatever its
    /// state: a decided request keeps what its approvers could see).
    pub fn set_plan(&mut self, id: &str, plan: Vec<super::plan::StatementPlan>) -> Vec<Event> {
        match self.requests.get_mut(id) {
            Some(request) => {
                request.plan = Some(plan);
                vec![Event::Planned { id: id.to_string() }]
            }
            None => Vec::new(),
        }
    }

    /// The session stopped waiting for request `id`. Nothing happens to a
    /// request decided already.
    pub fn withdraw(&mut self, id: &str, why: &str, now: SystemTime) -> Vec<Event> {
        let mut events = self.expire(now);
        if let Some(request) = self.requests.get_mut(id).filter(|r| r.state.is_pending()) {
            request.state = State::Withdrawn { why: why.to_string() };
            events.push(Event::Withdrawn { id: id.to_string(), why: why.to_string() });
        }
        events
    }

    /// `by` revokes grant `id`: a member of its approver groups, or one of
    /// those who granted it.
    pub fn revoke(&mut self, id: &str, by: &Approver, now: SystemTime) -> Result<Vec<Event>, LedgerError> {
        let mut events = self.expire(now);
        let grant = self.grants.get(id).ok_or_else(|| LedgerError::NoGrant(id.to_string()))?;
        if let Some(actor) = &by.actor {
            return Err(LedgerError::Agent { subject: by.subject.clone(), actor: actor.clone() });
        }
        let may = grant.granted_by.contains(&by.subject) || grant.approvers.iter().any(|g| by.groups.contains(g));
        if !may {
            return Err(LedgerError::NotAnApprover { subject: by.subject.clone(), groups: grant.approvers.join(", ") });
        }
        let request = grant.request.clone();
        self.grants.remove(id);
        events.push(Event::Revoked { grant: id.to_string(), request, by: by.subject.clone() });
        Ok(events)
    }

    /// Expires pending requests and grants whose time is up; forgets
    /// decided requests a day after they expired.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Event> {
        let mut events = Vec::new();
        for r in self.requests.values_mut() {
            if r.state.is_pending() && r.expires <= now {
                r.state = State::Expired;
                events.push(Event::Expired { id: r.id.clone() });
            }
        }
        let forget = now.checked_sub(DECIDED_KEPT).unwrap_or(SystemTime::UNIX_EPOCH);
        self.requests.retain(|_, r| r.state.is_pending() || r.expires >= forget);
        let gone: Vec<(String, String)> =
            self.grants.values().filter(|g| g.expires <= now).map(|g| (g.id.clone(), g.request.clone())).collect();
        for (id, request) in gone {
            self.grants.remove(&id);
            events.push(Event::GrantExpired { grant: id, request });
        }
        events
    }
}

/// How long decided requests stay listed after their expiry.
pub const DECIDED_KEPT: Duration = Duration::from_secs(24 * 3600);

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&portcullis_audit::time::format_utc(*t))
}

fn from_rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    portcullis_audit::time::parse_utc(&text)
        .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 UTC time")))
}

fn from_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(<Option<u64> as serde::Deserialize>::deserialize(d)?.map(Duration::from_secs))
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(d.as_secs()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn terms(approvals: u32, self_approval: SelfApproval) -> ApprovalTerms {
        ApprovalTerms { approvals, self_approval, justification: false }
    }

    /// A ledger with request `r` from `requester` for fingerprint `f1`,
    /// approvable by `dba`, expiring after 15 minutes.
    fn ledger_with(requester: Requester, terms: ApprovalTerms) -> Ledger {
        let mut ledger = Ledger::new(8 * 60 * MINUTE);
        let request = Request::new("r", 1, requester, "f1", vec!["dba".into()], terms, t0(), t0() + 15 * MINUTE);
        ledger.open(request, t0()).unwrap();
        ledger
    }

    fn agent() -> Requester {
        Requester::new("alice", Some("copilot"))
    }

    fn dba(name: &str) -> Approver {
        Approver::new(name, ["dba"])
    }

    /// A ledger rebuilt from the log of commands another one applied (each
    /// read back from its JSON) holds the same, and every command answered
    /// the same on both: the ground a shared log stands on.
    #[test]
    fn replaying_the_command_log_rebuilds_the_same_ledger() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let people =
            [dba("bob"), dba("carol"), Approver::new("alice", ["developers"]), Approver::new("mallory", ["x"])];
        let (mut here, mut there) = (Ledger::new(60 * MINUTE), Ledger::new(60 * MINUTE));
        let mut now = t0();
        for step in 0..2000 {
            now += Duration::from_secs(rng.gen_range(0..240));
            let id = format!("r{}", rng.gen_range(0..6));
            let who = people[rng.gen_range(0..people.len())].clone();
            let command = match rng.gen_range(0..9) {
                0 | 1 => {
                    let approvals = rng.gen_range(1..3);
                    let terms = terms(approvals, if rng.gen() { SelfApproval::Never } else { SelfApproval::Delegator });
                    let mut request = Request::new(
                        format!("r{step}"),
                        1,
                        agent(),
                        "f1",
                        vec!["dba".into()],
                        terms,
                        now,
                        now + 15 * MINUTE,
                    );
                    request.id = id.clone();
                    Command::Open { request: Box::new(request) }
                }
                2 | 3 => {
                    let grant_for = rng.gen::<bool>().then(|| Duration::from_secs(rng.gen_range(0..7200)));
                    Command::Approve { id, approver: who, reason: "ok".into(), grant_for }
                }
                4 => Command::Deny { id, approver: who, reason: "no".into() },
                5 => Command::Justify { id, by: who, reason: "why".into() },
                6 => Command::Withdraw { id, why: "gone".into() },
                7 => Command::Revoke { id: format!("{id}-grant"), by: who },
                _ => Command::Expire,
            };
            let copy: Command = serde_json::from_str(&serde_json::to_string(&command).unwrap()).unwrap();
            assert_eq!(copy, command);
            assert_eq!(here.apply(&command, now), there.apply(&copy, now), "step {step}: {command:?}");
        }
        assert_eq!(here, there);
        assert!(!here.requests(false).is_empty() && !here.requests.is_empty(), "the walk decided requests");
    }

    #[test]
    fn only_the_person_who_asked_gives_the_reason_while_it_waits() {
        let mut ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        let alice = Approver::new("alice", ["developers"]);
        let mut her_agent = alice.clone();
        her_agent.actor = Some("copilot".into());
        let refused = |e: LedgerError| matches!(e, LedgerError::NotTheRequester { requester } if requester == "alice");
        assert!(refused(ledger.justify("r", &her_agent, "I say so", t0()).unwrap_err()));
        assert!(refused(ledger.justify("r", &dba("bob"), "for her", t0()).unwrap_err()));
        // Someone who may not see it learns nothing of it.
        let stranger = Approver::new("mallory", ["developers"]);
        assert!(matches!(ledger.justify("r", &stranger, "hm", t0()), Err(LedgerError::NoRequest(id)) if id == "r"));
        for empty in ["", "   "] {
            assert!(matches!(ledger.justify("r", &alice, empty, t0()), Err(LedgerError::BadReason { .. })));
        }
        let long = "x".repeat(policy_core::MAX_REASON_BYTES + 1);
        assert!(matches!(ledger.justify("r", &alice, &long, t0()), Err(LedgerError::BadReason { .. })));
        assert_eq!(ledger.justify("r", &alice, " INC-1 ", t0()).unwrap(), [Event::Justified { id: "r".into() }]);
        assert_eq!(ledger.request("r").unwrap().justification.as_deref(), Some("INC-1"));
        ledger.deny("r", &dba("bob"), "no", t0()).unwrap();
        assert!(matches!(ledger.justify("r", &alice, "late", t0()), Err(LedgerError::Decided { .. })));
    }

    #[test]
    fn the_reason_approvers_voted_on_stays() {
        let terms = ApprovalTerms { approvals: 2, ..ApprovalTerms::DEFAULT };
        let mut ledger = ledger_with(agent(), terms);
        let alice = Approver::new("alice", ["developers"]);
        ledger.justify("r", &alice, "INC-1", t0()).unwrap();
        ledger.approve("r", &dba("bob"), "fine", None, t0()).unwrap();
        assert!(matches!(ledger.justify("r", &alice, "something else", t0()), Err(LedgerError::AlreadyVoted)));
        assert_eq!(ledger.request("r").unwrap().justification.as_deref(), Some("INC-1"));
    }

    #[test]
    fn one_approver_in_the_group_approves() {
        let mut ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        let (progress, events) = ledger.approve("r", &dba("bob"), "fine", None, t0()).unwrap();
        assert_eq!(progress, Progress::Approved { grant: None });
        assert_eq!(events, [Event::Approved { id: "r".into(), by: vec!["bob".into()] }]);
        assert_eq!(ledger.request("r").unwrap().state, State::Approved { grant: None });
        assert!(ledger.requests(true).is_empty());
        assert_eq!(ledger.requests(false).len(), 1);
        // Decided once.
        let again = ledger.approve("r", &dba("carol"), "", None, t0());
        assert_eq!(again, Err(LedgerError::Decided { id: "r".into(), state: "approved" }));
    }

    #[test]
    fn nobody_approves_their_own_request() {
        let mut ledger = ledger_with(Requester::new("alice", None), terms(1, SelfApproval::Delegator));
        let e = ledger.approve("r", &dba("alice"), "", None, t0()).unwrap_err();
        assert_eq!(e, LedgerError::OwnRequest { subject: "alice".into() });
        assert!(ledger.request("r").unwrap().state.is_pending());
    }

    #[test]
    fn the_person_an_agent_acts_for_approves_only_when_the_rule_says_delegator() {
        let mut never = ledger_with(agent(), terms(1, SelfApproval::Never));
        let e = never.approve("r", &dba("alice"), "", None, t0()).unwrap_err();
        assert_eq!(e, LedgerError::OwnAgent { subject: "alice".into(), actor: "copilot".into() });
        assert!(e.to_string().contains("self_approval"), "{e}");
        let mut delegator = ledger_with(agent(), terms(1, SelfApproval::Delegator));
        let (progress, _) = delegator.approve("r", &dba("alice"), "my agent, my call", None, t0()).unwrap();
        assert_eq!(progress, Progress::Approved { grant: None });
    }

    #[test]
    fn approvers_are_people_in_the_request_groups() {
        let mut ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        let e = ledger.approve("r", &Approver::new("mallory", ["developers"]), "", None, t0()).unwrap_err();
        assert_eq!(e, LedgerError::NotAnApprover { subject: "mallory".into(), groups: "dba".into() });
        let mut robot = dba("bob");
        robot.actor = Some("approver-bot".into());
        let e = ledger.approve("r", &robot, "", None, t0()).unwrap_err();
        assert!(matches!(e, LedgerError::Agent { .. }), "{e}");
        assert!(ledger.deny("r", &robot, "", t0()).is_err(), "an agent denies nothing either");
        assert!(ledger.request("r").unwrap().state.is_pending());

        // A request whose rules name no group: only denial or time ends it.
        let mut none = Ledger::new(MINUTE);
        let request = Request::new("n", 1, agent(), "f", Vec::new(), ApprovalTerms::DEFAULT, t0(), t0() + MINUTE);
        none.open(request, t0()).unwrap();
        let e = none.approve("n", &dba("bob"), "", None, t0()).unwrap_err();
        assert!(e.to_string().contains("the rule names none"), "{e}");
    }

    #[test]
    fn a_quorum_needs_that_many_distinct_people() {
        let mut ledger = ledger_with(agent(), terms(2, SelfApproval::Never));
        let (progress, events) = ledger.approve("r", &dba("bob"), "one", None, t0()).unwrap();
        assert_eq!(progress, Progress::Counted { needed: 1 });
        assert_eq!(events, [Event::Vote { id: "r".into(), approver: "bob".into() }]);
        let e = ledger.approve("r", &dba("bob"), "two", None, t0()).unwrap_err();
        assert_eq!(e, LedgerError::AlreadyApproved { subject: "bob".into(), needed: 1 });
        let (progress, _) = ledger.approve("r", &dba("carol"), "two", None, t0() + MINUTE).unwrap();
        assert_eq!(progress, Progress::Approved { grant: None });
        let votes: Vec<&str> = ledger.request("r").unwrap().votes.iter().map(|v| v.approver.as_str()).collect();
        assert_eq!(votes, ["bob", "carol"]);
    }

    #[test]
    fn one_denial_ends_it_and_the_delegator_may_deny() {
        let mut ledger = ledger_with(agent(), terms(2, SelfApproval::Never));
        ledger.approve("r", &dba("bob"), "ok", None, t0()).unwrap();
        let events = ledger.deny("r", &dba("carol"), "not on a Friday", t0()).unwrap();
        assert_eq!(events, [Event::Denied { id: "r".into(), by: "carol".into(), reason: "not on a Friday".into() }]);
        assert_eq!(ledger.request("r").unwrap().state.name(), "denied");
        assert!(ledger.approve("r", &dba("dave"), "", None, t0()).is_err());

        // Alice is no approver, but may stop what her own agent asks.
        let mut ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        let e = ledger.deny("r", &Approver::new("mallory", ["developers"]), "", t0()).unwrap_err();
        assert!(matches!(e, LedgerError::NotAnApprover { .. }), "{e}");
        ledger.deny("r", &Approver::new("alice", ["developers"]), "not that", t0()).unwrap();
        assert_eq!(ledger.request("r").unwrap().state.name(), "denied");
    }

    #[test]
    fn requests_expire_and_are_forgotten_a_day_later() {
        let mut ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        let late = t0() + 15 * MINUTE;
        let e = ledger.approve("r", &dba("bob"), "", None, late).unwrap_err();
        assert_eq!(e, LedgerError::Decided { id: "r".into(), state: "expired" });
        assert_eq!(ledger.request("r").unwrap().state, State::Expired);
        assert!(ledger.expire(late + DECIDED_KEPT).is_empty());
        assert!(ledger.request("r").is_some());
        ledger.expire(late + DECIDED_KEPT + Duration::from_secs(1));
        assert!(ledger.request("r").is_none());
    }

    #[test]
    fn expiry_is_reported_once() {
        let mut ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        let late = t0() + 16 * MINUTE;
        assert_eq!(ledger.expire(late), [Event::Expired { id: "r".into() }]);
        assert!(ledger.expire(late).is_empty());
    }

    #[test]
    fn a_withdrawn_request_is_not_approved_later() {
        let mut ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        let events = ledger.withdraw("r", "the client cancelled", t0());
        assert_eq!(events, [Event::Withdrawn { id: "r".into(), why: "the client cancelled".into() }]);
        assert!(ledger.withdraw("r", "again", t0()).is_empty());
        let e = ledger.approve("r", &dba("bob"), "", None, t0()).unwrap_err();
        assert_eq!(e, LedgerError::Decided { id: "r".into(), state: "withdrawn" });
    }

    #[test]
    fn a_grant_needs_every_approver_to_ask_and_lasts_the_shortest_time_asked_capped() {
        // Only one of two asked: no grant.
        let mut ledger = ledger_with(agent(), terms(2, SelfApproval::Never));
        ledger.approve("r", &dba("bob"), "", Some(30 * MINUTE), t0()).unwrap();
        let (progress, _) = ledger.approve("r", &dba("carol"), "", None, t0()).unwrap();
        assert_eq!(progress, Progress::Approved { grant: None });
        assert!(ledger.grants(t0()).is_empty());

        // Both asked: the shorter.
        let mut ledger = ledger_with(agent(), terms(2, SelfApproval::Never));
        ledger.approve("r", &dba("bob"), "", Some(30 * MINUTE), t0()).unwrap();
        let (progress, events) = ledger.approve("r", &dba("carol"), "", Some(10 * MINUTE), t0() + MINUTE).unwrap();
        let Progress::Approved { grant: Some(grant) } = progress else { panic!("{progress:?}") };
        assert_eq!(grant.expires, t0() + 11 * MINUTE, "the clock starts at approval");
        assert_eq!(grant.granted_by, ["bob", "carol"]);
        assert!(events.contains(&Event::Granted { grant: grant.id.clone(), request: "r".into() }));

        // Capped by the longest grant.
        let mut ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        let (progress, _) = ledger.approve("r", &dba("bob"), "", Some(100 * 60 * MINUTE), t0()).unwrap();
        let Progress::Approved { grant: Some(grant) } = progress else { panic!("{progress:?}") };
        assert_eq!(grant.expires, t0() + 8 * 60 * MINUTE);
        assert_eq!(ledger.approve("x", &dba("bob"), "", Some(Duration::ZERO), t0()), Err(LedgerError::EmptyGrant));
    }

    #[test]
    fn a_grant_covers_the_same_fingerprint_for_the_same_person_and_agent_until_it_ends() {
        let mut ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        ledger.approve("r", &dba("bob"), "", Some(30 * MINUTE), t0()).unwrap();
        let soon = t0() + MINUTE;
        assert!(ledger.grant_for(&agent(), "f1", soon).is_some());
        assert!(ledger.grant_for(&agent(), "f2", soon).is_none(), "another statement shape");
        assert!(ledger.grant_for(&Requester::new("alice", Some("other-agent")), "f1", soon).is_none());
        assert!(ledger.grant_for(&Requester::new("alice", None), "f1", soon).is_none(), "alice alone");
        assert!(ledger.grant_for(&Requester::new("bob", Some("copilot")), "f1", soon).is_none());
        let end = t0() + 30 * MINUTE;
        assert!(ledger.grant_for(&agent(), "f1", end).is_none());
        assert_eq!(ledger.expire(end), [Event::GrantExpired { grant: "r-grant".into(), request: "r".into() }]);
        assert!(ledger.grants(end).is_empty());
    }

    #[test]
    fn grants_are_revoked_by_their_approvers() {
        let mut ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        ledger.approve("r", &dba("bob"), "", Some(30 * MINUTE), t0()).unwrap();
        let e = ledger.revoke("r-grant", &Approver::new("alice", ["developers"]), t0()).unwrap_err();
        assert!(matches!(e, LedgerError::NotAnApprover { .. }), "{e}");
        let events = ledger.revoke("r-grant", &dba("carol"), t0()).unwrap();
        assert_eq!(events, [Event::Revoked { grant: "r-grant".into(), request: "r".into(), by: "carol".into() }]);
        assert!(ledger.grant_for(&agent(), "f1", t0()).is_none());
        assert_eq!(ledger.revoke("r-grant", &dba("carol"), t0()), Err(LedgerError::NoGrant("r-grant".into())));
    }

    #[test]
    fn event_names_are_those_their_json_carries() {
        let events = [
            Event::Requested { id: "r".into() },
            Event::Vote { id: "r".into(), approver: "a".into() },
            Event::Approved { id: "r".into(), by: Vec::new() },
            Event::Denied { id: "r".into(), by: "a".into(), reason: String::new() },
            Event::Expired { id: "r".into() },
            Event::Withdrawn { id: "r".into(), why: String::new() },
            Event::Granted { grant: "g".into(), request: "r".into() },
            Event::Revoked { grant: "g".into(), request: "r".into(), by: "a".into() },
            Event::GrantExpired { grant: "g".into(), request: "r".into() },
        ];
        for e in events {
            assert_eq!(serde_json::to_value(&e).unwrap()["event"], e.name());
            assert_eq!(e.request(), "r");
        }
    }

    #[test]
    fn ids_are_unique_and_unknown_ones_are_named() {
        let mut ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        let request = Request::new("r", 2, agent(), "f", Vec::new(), ApprovalTerms::DEFAULT, t0(), t0() + MINUTE);
        assert_eq!(ledger.open(request, t0()), Err(LedgerError::Duplicate("r".into())));
        let e = ledger.approve("nope", &dba("bob"), "", None, t0()).unwrap_err();
        assert_eq!(e.to_string(), "no approval request nope");
    }

    #[test]
    fn requests_serialise_with_times_as_text() {
        let ledger = ledger_with(agent(), ApprovalTerms::DEFAULT);
        let json = serde_json::to_value(ledger.request("r").unwrap()).unwrap();
        assert_eq!(json["state"]["state"], "pending");
        assert_eq!(json["created"], "2027-01-15T08:00:00.000000Z");
        assert_eq!(json["terms"]["self_approval"], "never");
        assert_eq!(json["requester"]["actor"], "copilot");
    }
}
