//! Where approvals live while the gateway runs, and the hold handler that
//! turns a held batch into a request and waits for people to decide.
//!
//! [`ApprovalStore`] keeps the gateway's [`Ledger`] in memory, alone or as
//! one replica of a log shared with others in PostgreSQL
//! ([`super::shared`]), and tells whoever waits that something changed;
//! [`ApprovalHandler`] is the
//! sessions' [`HoldHandler`]: a held batch that a live grant covers goes on
//! at once; otherwise a request is opened, the client is told its id and
//! how to approve it, and the session waits for the outcome. When the
//! session stops waiting first (its hold timed out, the client cancelled
//! or left), the request is withdrawn.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use policy_core::{ApprovalTerms, Decision};
use tokio::sync::watch;

use super::ledger::{
    Applied, Approver, Command, Event, Grant, HeldText, Ledger, LedgerError, Progress, Request, Requester, State,
};
use super::plan::{self, PlanRequest, Planner, StatementPlan};
use super::shared::SharedLog;
use crate::session::hold::{HoldHandler, HoldOutcome, HoldRequest, Holding};
use crate::session::record::{ApprovalRecord, Record, RecordSink};

/// The gateway's approvals: its ledger, changed only by commands (applied
/// here, or appended to the shared log and applied from there).
#[derive(Debug)]
pub struct ApprovalStore {
    /// Where events are recorded (the audit log), if anywhere.
    sink: Option<Arc<dyn RecordSink>>,
    /// Where requests and outcomes are announced, if anywhere.
    webhook: Option<super::webhook::Webhook>,
    ledger: Mutex<Ledger>,
    /// The number of the last event; waiters look again when it moves.
    changes: watch::Sender<u64>,
    /// The last [`EVENTS_KEPT`] events, numbered from 1 (for the live
    /// stream).
    events: Mutex<std::collections::VecDeque<(u64, Event)>>,
    /// The log shared with other replicas, if any.
    shared: Option<Arc<dyn SharedLog>>,
    /// How much of the shared log the ledger holds; held while applying.
    pub(crate) position: tokio::sync::Mutex<u64>,
    /// Whether the shared log is followed already.
    following: std::sync::atomic::AtomicBool,
}

/// Where a change comes from, which decides who is told of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Made here: waiters, the live stream, the audit log and the webhook.
    Here,
    /// Made by another replica: all but the webhook (told by that one).
    Elsewhere,
    /// Read back from the shared log at start: nobody (it was told when
    /// it happened).
    History,
}

/// Events a [`ApprovalStore`] keeps.
const EVENTS_KEPT: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ApprovalStore {
    /// An empty store whose grants last at most `max_grant`.
    pub fn new(max_grant: Duration) -> ApprovalStore {
        ApprovalStore {
            sink: None,
            webhook: None,
            ledger: Mutex::new(Ledger::new(max_grant)),
            changes: watch::channel(0).0,
            events: Mutex::new(std::collections::VecDeque::new()),
            shared: None,
            position: tokio::sync::Mutex::new(0),
            following: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The same, kept in `log`, shared with other replicas: every change
    /// is appended there and applied from there (see
    /// [`super::shared`]). [`ApprovalStore::follow`] starts reading it.
    #[must_use]
    pub fn with_shared_log(mut self, log: Arc<dyn SharedLog>) -> ApprovalStore {
        self.shared = Some(log);
        self
    }

    /// Starts following the shared log on the current runtime, once
    /// (nothing without a shared log or a runtime). It stops when the
    /// store is dropped.
    pub fn follow(self: &Arc<ApprovalStore>) {
        use std::sync::atomic::Ordering;
        let (Some(log), Ok(runtime)) = (&self.shared, tokio::runtime::Handle::try_current()) else { return };
        if !self.following.swap(true, Ordering::AcqRel) {
            runtime.spawn(Arc::clone(log).follow(Arc::downgrade(self)));
        }
    }

    /// This replica's name, when the store is shared.
    pub fn replica(&self) -> Option<&str> {
        self.shared.as_deref().map(|log| log.replica())
    }

    /// The same, recording every event in `sink` (the audit log).
    #[must_use]
    pub fn with_sink(mut self, sink: Arc<dyn RecordSink>) -> ApprovalStore {
        self.sink = Some(sink);
        self
    }

    /// The same, announcing requests and outcomes to `webhook`.
    #[must_use]
    pub fn with_webhook(mut self, webhook: super::webhook::Webhook) -> ApprovalStore {
        self.webhook = Some(webhook);
        self
    }

    /// Publishes `events`: to waiters and the live stream always; to the
    /// webhook when this replica made the change (`own`), so that it is
    /// told once; to the audit log for the requests of this replica's
    /// sessions.
    fn changed(&self, events: Vec<Event>, origin: Origin) {
        if events.is_empty() {
            return;
        }
        let own = origin == Origin::Here;
        if origin == Origin::History {
            // Read back at start: announced and recorded when it happened.
            self.changes.send_modify(|_| {});
            return;
        }
        if let Some(webhook) = self.webhook.as_ref().filter(|_| own) {
            let ledger = lock(&self.ledger);
            for e in &events {
                // The webhook tells which events it announces.
                let id = e.request();
                if let Some(request) = ledger.request(id) {
                    webhook.notify(e, request);
                }
            }
        }
        if let Some(sink) = &self.sink {
            let records = self.records(&events);
            sink.log(&records);
        }
        let last = {
            let mut kept = lock(&self.events);
            let mut n = kept.back().map_or(0, |(n, _)| *n);
            for e in events {
                n += 1;
                kept.push_back((n, e));
            }
            while kept.len() > EVENTS_KEPT {
                kept.pop_front();
            }
            n
        };
        self.changes.send_replace(last);
    }

    /// Events as audit records, each naming the session its request was
    /// held for.
    fn records(&self, events: &[Event]) -> Vec<Record> {
        let ledger = lock(&self.ledger);
        let replica = self.replica();
        events
            .iter()
            // Plans are what approvers see, not what anyone did.
            .filter(|e| !matches!(e, Event::Planned { .. }))
            // Each replica records its own sessions' requests (grants,
            // which no session holds, are recorded where they change).
            .filter(|e| match ledger.request(e.request()) {
                Some(q) => q.replica.as_deref() == replica,
                None => true,
            })
            .map(|e| {
                let request = ledger.request(e.request());
                let mut r = ApprovalRecord::new(request.map_or(0, |q| q.session), e.request(), e.name());
                match e {
                    Event::Vote { approver, .. } => r.by = vec![approver.clone()],
                    Event::Approved { by, .. } => r.by.clone_from(by),
                    Event::Denied { by, reason, .. } => {
                        r.by = vec![by.clone()];
                        r.reason = Some(reason.clone());
                    }
                    Event::Withdrawn { why, .. } => r.reason = Some(why.clone()),
                    Event::Granted { grant, .. } | Event::GrantExpired { grant, .. } => r.grant = Some(grant.clone()),
                    Event::Revoked { grant, by, .. } => {
                        r.by = vec![by.clone()];
                        r.grant = Some(grant.clone());
                    }
                    // The requester's reason, as approvers saw it.
                    Event::Requested { .. } => r.reason = request.and_then(|q| q.justification.clone()),
                    Event::Justified { .. } => r.reason = request.and_then(|q| q.justification.clone()),
                    Event::Expired { .. } | Event::Planned { .. } => {}
                }
                // The votes' reasons are in the request; an approval's
                // record names the last approver's.
                if let Event::Approved { .. } | Event::Vote { .. } = e {
                    r.reason = request.and_then(|q| q.votes.last()).map(|v| v.reason.clone());
                }
                Record::Approval(r)
            })
            .collect()
    }

    /// Applies `command` at `now` and publishes its events: every change
    /// to the store is one ([`Command`]). With a shared log, appended
    /// there first.
    async fn commit(&self, command: Command, now: SystemTime) -> Result<Applied, LedgerError> {
        match &self.shared {
            Some(log) => log.append(self, command, now).await,
            None => self.commit_here(&command, now),
        }
    }

    /// [`ApprovalStore::commit`] without a shared log.
    fn commit_here(&self, command: &Command, now: SystemTime) -> Result<Applied, LedgerError> {
        let (applied, events) = lock(&self.ledger).apply(command, now)?;
        self.changed(events, Origin::Here);
        Ok(applied)
    }

    /// What `command` would answer now, changing nothing.
    pub(crate) fn try_apply(&self, command: &Command, now: SystemTime) -> Result<(), LedgerError> {
        let mut trial = lock(&self.ledger).clone();
        trial.apply(command, now).map(drop)
    }

    /// Applies entry `n` of the shared log and publishes its events to
    /// those `origin` says.
    pub(crate) fn apply_logged(
        &self,
        position: &mut u64,
        n: u64,
        command: &Command,
        now: SystemTime,
        origin: Origin,
    ) -> Result<Applied, LedgerError> {
        let outcome = lock(&self.ledger).apply(command, now);
        *position = n;
        match outcome {
            Ok((applied, events)) => {
                self.changed(events, origin);
                Ok(applied)
            }
            Err(e) => {
                // Refused where it was appended too (the same ledger):
                // written by a replica that did not try it first.
                tracing::debug!(entry = n, "approvals log entry refused: {e}");
                Err(e)
            }
        }
    }

    /// Makes the ledger stand as at `now` when no other replica shares
    /// it: pending requests past their expiry expire here (and the events
    /// are published). With a shared log, the log changes only by the
    /// commands in it: reads show such requests expired ([`seen_at`]).
    fn expire_here(&self, now: SystemTime) {
        if self.shared.is_none() {
            let _ = self.commit_here(&Command::Expire, now);
        }
    }

    /// Opens a request.
    pub async fn open(&self, request: Request, now: SystemTime) -> Result<(), LedgerError> {
        self.commit(Command::Open { request: Box::new(request) }, now).await.map(drop)
    }

    /// A request as it stands now (expiring what is due).
    pub fn request(&self, id: &str, now: SystemTime) -> Option<Request> {
        self.expire_here(now);
        lock(&self.ledger).request(id).cloned().map(|r| seen_at(r, now))
    }

    /// Pending (or decided) requests, oldest first (expiring what is due).
    pub fn requests(&self, pending: bool, now: SystemTime) -> Vec<Request> {
        self.expire_here(now);
        let ledger = lock(&self.ledger);
        // A pending request may read as expired, so both lists are looked at.
        let mut out: Vec<Request> = ledger
            .requests(true)
            .into_iter()
            .chain(ledger.requests(false))
            .cloned()
            .map(|r| seen_at(r, now))
            .filter(|r| r.state.is_pending() == pending)
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// Live grants, oldest first.
    pub fn grants(&self, now: SystemTime) -> Vec<Grant> {
        lock(&self.ledger).grants(now).into_iter().cloned().collect()
    }

    /// The live grant covering `fingerprint` for `requester`. With a
    /// shared log not read lately (the database out of reach), none: a
    /// revoke made elsewhere might be unseen.
    pub fn grant_for(&self, requester: &Requester, fingerprint: &str, now: SystemTime) -> Option<Grant> {
        if self.shared.as_ref().is_some_and(|log| !log.fresh()) {
            return None;
        }
        lock(&self.ledger).grant_for(requester, fingerprint, now).cloned()
    }

    /// `approver` approves request `id` (see [`Ledger::approve`]).
    pub async fn approve(
        &self,
        id: &str,
        approver: &Approver,
        reason: &str,
        grant_for: Option<Duration>,
        now: SystemTime,
    ) -> Result<Progress, LedgerError> {
        let command =
            Command::Approve { id: id.to_string(), approver: approver.clone(), reason: reason.to_string(), grant_for };
        match self.commit(command, now).await? {
            Applied::Progress(progress) => Ok(progress),
            Applied::Done => Err(LedgerError::NoRequest(id.to_string())),
        }
    }

    /// `approver` denies request `id`.
    pub async fn deny(&self, id: &str, approver: &Approver, reason: &str, now: SystemTime) -> Result<(), LedgerError> {
        let command = Command::Deny { id: id.to_string(), approver: approver.clone(), reason: reason.to_string() };
        self.commit(command, now).await.map(drop)
    }

    /// The requester gives request `id` its reason (see [`Ledger::justify`]).
    pub async fn justify(&self, id: &str, by: &Approver, reason: &str, now: SystemTime) -> Result<(), LedgerError> {
        let command = Command::Justify { id: id.to_string(), by: by.clone(), reason: reason.to_string() };
        self.commit(command, now).await.map(drop)
    }

    /// `by` revokes grant `id`.
    pub async fn revoke(&self, id: &str, by: &Approver, now: SystemTime) -> Result<(), LedgerError> {
        self.commit(Command::Revoke { id: id.to_string(), by: by.clone() }, now).await.map(drop)
    }

    /// Attaches the plans of request `id`'s statements.
    pub async fn set_plan(&self, id: &str, plan: Vec<StatementPlan>) {
        let _ = self.commit(Command::SetPlan { id: id.to_string(), plan }, SystemTime::now()).await;
    }

    /// The session stopped waiting for request `id`.
    pub async fn withdraw(&self, id: &str, why: &str, now: SystemTime) {
        let _ = self.commit(Command::Withdraw { id: id.to_string(), why: why.to_string() }, now).await;
    }

    /// The events numbered after `after` that are still kept, with their
    /// numbers, oldest first.
    pub fn events_since(&self, after: u64) -> Vec<(u64, Event)> {
        lock(&self.events).iter().filter(|(n, _)| *n > after).cloned().collect()
    }

    /// The number of the last event so far (0 before any).
    pub fn last_event(&self) -> u64 {
        *self.changes.borrow()
    }

    /// A receiver that sees the number of the last event move.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until request `id` is decided, or expires (at its expiry
    /// time, without anyone looking), and returns its state.
    pub async fn decided(&self, id: &str) -> State {
        let mut changes = self.changes.subscribe();
        loop {
            let now = SystemTime::now();
            let Some(request) = self.request(id, now) else { return State::Expired };
            if !request.state.is_pending() {
                return request.state;
            }
            let left = request.expires.duration_since(now).unwrap_or_default();
            // Woken by any change, or at the expiry.
            let _ = tokio::time::timeout(left, changes.changed()).await;
        }
    }
}

/// `request` as it reads at `now`: expired once pending past its expiry
/// (what [`Ledger::expire`] would make it).
fn seen_at(mut request: Request, now: SystemTime) -> Request {
    if request.state.is_pending() && request.expires <= now {
        request.state = State::Expired;
    }
    request
}

/// Settings of the [`ApprovalHandler`].
#[derive(Debug, Clone)]
pub struct HandlerSettings {
    /// How long a request stays open (the session's hold timeout).
    pub timeout: Duration,
    /// The admin address's URL, for the notice (`None`: not told).
    pub admin_url: Option<String>,
}

/// The sessions' hold handler: requests in a [`ApprovalStore`].
#[derive(Debug, Clone)]
pub struct ApprovalHandler {
    store: Arc<ApprovalStore>,
    settings: HandlerSettings,
    planner: Option<Arc<dyn Planner>>,
}

impl ApprovalHandler {
    /// A handler opening requests in `store`.
    pub fn new(store: Arc<ApprovalStore>, settings: HandlerSettings) -> ApprovalHandler {
        ApprovalHandler { store, settings, planner: None }
    }

    /// The same, attaching each request's plans from `planner` once it is
    /// open (the session's wait does not wait for them).
    #[must_use]
    pub fn with_planner(mut self, planner: Arc<dyn Planner>) -> ApprovalHandler {
        self.planner = Some(planner);
        self
    }

    /// Starts planning request `id`'s statements.
    fn plan(&self, id: &str, held: &HoldRequest) {
        let Some(planner) = &self.planner else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut statements = Vec::new();
        for s in &held.statements {
            let more = plan::statements(s, statements.len());
            statements.extend(more);
        }
        let request = PlanRequest { database: held.database.clone(), statements };
        let (planner, store, id) = (Arc::clone(planner), Arc::clone(&self.store), id.to_string());
        runtime.spawn(async move {
            // Planning stops once the request is decided: nobody needs
            // the plan, and its connection is closed.
            tokio::select! {
                plans = planner.plan(request) => store.set_plan(&id, plans).await,
                _ = store.decided(&id) => {}
            }
        });
    }
}

/// The fingerprints of a decision's statements, joined by `+`.
fn fingerprint(decision: &Decision) -> String {
    let mut out = String::new();
    for s in decision.statements.iter() {
        if !out.is_empty() {
            out.push('+');
        }
        out.push_str(&s.facts.fingerprint);
    }
    out
}

/// A new request id: 16 hex digits, random (ids are unique across
/// replicas and restarts, and not guessable from one another).
fn new_id() -> String {
    use rand::RngCore;
    format!("{:016x}", rand::thread_rng().next_u64())
}

impl HoldHandler for ApprovalHandler {
    fn hold(&self, held: HoldRequest) -> Holding {
        let refuse = |reason: &str| Holding {
            notice: None,
            outcome: Box::pin(std::future::ready(HoldOutcome::Refuse { reason: reason.to_string() })),
        };
        let Some(first) = held.statements.first() else { return refuse("nothing was held") };
        let now = SystemTime::now();
        let decision = &first.decision;
        let requester = Requester::new(&*decision.subject, decision.actor.as_deref());
        let fingerprint = held.statements.iter().map(|s| fingerprint(&s.decision)).collect::<Vec<_>>().join("+");
        if let Some(grant) = self.store.grant_for(&requester, &fingerprint, now) {
            return Holding {
                notice: Some(format!(
                    "approval request skipped: grant {} (approved by {}) covers this statement until {}",
                    grant.id,
                    grant.granted_by.join(", "),
                    portcullis_audit::time::format_utc(grant.expires)
                )),
                outcome: Box::pin(std::future::ready(HoldOutcome::Release)),
            };
        }
        let mut approvers: Vec<String> = Vec::new();
        let mut terms: Option<ApprovalTerms> = None;
        for s in &held.statements {
            for a in &s.decision.approvers {
                if !approvers.contains(a) {
                    approvers.push(a.clone());
                }
            }
            if let Some(t) = s.decision.approval {
                terms = Some(terms.map_or(t, |old| old.stricter(t)));
            }
        }
        let terms = terms.unwrap_or(ApprovalTerms::DEFAULT);
        if approvers.is_empty() {
            // Nobody could approve it: said now rather than at the timeout.
            return refuse(&format!(
                "rule {} names no approver group, so nobody can approve this statement",
                decision.rule.as_deref().unwrap_or("(none)")
            ));
        }
        if terms.justification && held.reason.is_none() {
            return refuse(&format!(
                "rule {} wants a reason with this statement: send `SET portcullis.reason = '...'` first, then the statement again",
                decision.rule.as_deref().unwrap_or("(none)")
            ));
        }
        let id = new_id();
        let mut request = Request::new(
            id.clone(),
            held.session,
            requester,
            fingerprint,
            approvers,
            terms,
            now,
            now + self.settings.timeout,
        );
        request.statements = held
            .statements
            .iter()
            .map(|s| HeldText {
                sql: s.sql.to_string(),
                parameters: s.parameters.clone(),
                decision: serde_json::to_value(&*s.decision).unwrap_or_default(),
            })
            .collect();
        request.rule = decision.rule.as_deref().map(str::to_string);
        request.reason = decision.reason.to_string();
        request.justification = held.reason.clone();
        request.replica = self.store.replica().map(str::to_string);
        let rule = decision.rule.as_deref().unwrap_or("no rule");
        let mut notice = format!(
            "waiting for approval: request {id} ({rule}: {}); approve it with `pg-proxy approvals approve {id}`",
            decision.reason
        );
        if let Some(url) = &self.settings.admin_url {
            notice.push_str(&format!(" or at {url}"));
        }
        if held.reason.is_none() {
            notice.push_str(&format!(
                "; no reason was given: `SET portcullis.reason = '...'` before the statement, or now \
                 `pg-proxy approvals justify {id} --reason '...'`"
            ));
        }
        let store = Arc::clone(&self.store);
        // Withdrawn when the session stops waiting first: the guard is made
        // now and moved into the future, so that dropping the future even
        // before it was first polled (a cancel that comes at once)
        // withdraws the request.
        let withdraw = Withdraw { store: Arc::clone(&store), id: Some(id.clone()) };
        let handler = self.clone();
        let outcome = async move {
            // Opened here: a shared store writes it to the database first.
            if let Err(e) = store.open(request, now).await {
                // Unavailable: it may have been written all the same (the
                // answer lost), so the guard withdraws it; refused: nothing
                // to withdraw.
                if !matches!(e, LedgerError::Unavailable(_)) {
                    withdraw.disarm();
                }
                tracing::warn!("opening an approval request: {e}");
                return HoldOutcome::Refuse { reason: format!("the approval request could not be opened: {e}") };
            }
            tracing::info!(request = %id, "statement held for approval");
            handler.plan(&id, &held);
            let state = store.decided(&id).await;
            withdraw.disarm();
            match state {
                State::Approved { .. } => HoldOutcome::Release,
                State::Denied { by, reason } => HoldOutcome::Refuse { reason: format!("denied by {by}: {reason}") },
                // The request expires with the session's hold: the session's
                // own timer ends it, naming the timeout.
                State::Expired => std::future::pending().await,
                State::Withdrawn { why } => HoldOutcome::Refuse { reason: format!("request {id} withdrawn: {why}") },
                State::Pending => HoldOutcome::Refuse { reason: format!("request {id} is still pending") },
            }
        };
        Holding { notice: Some(notice), outcome: Box::pin(outcome) }
    }
}

/// Withdraws a request when dropped still armed (the session stopped
/// waiting for it).
struct Withdraw {
    store: Arc<ApprovalStore>,
    id: Option<String>,
}

impl Withdraw {
    /// The request was decided: nothing to withdraw.
    fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (store, now) = (Arc::clone(&self.store), SystemTime::now());
        runtime.spawn(async move {
            store.withdraw(&id, "the session stopped waiting (timeout, cancel, or the client left)", now).await;
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]
    use super::*;
    use crate::session::hold::{HeldStatement, Reading};
    use policy_core::{Engine, Identity, Policy};

    /// A held agent's DELETE under the example policy.
    fn held() -> HoldRequest {
        let policy = Policy::from_toml_str(crate::demo::EXAMPLE_POLICY, "policy.toml").unwrap();
        let engine = Engine::new(policy, Default::default()).unwrap();
        let agent = Identity::new("alice").with_groups(["ai-agents"]).with_actor(policy_core::Actor::new("copilot-7"));
        let sql = "DELETE FROM orders WHERE id = 1";
        let decision = Arc::new(engine.decide(&agent, &engine.new_session(), sql));
        assert_eq!(decision.verdict, policy_core::Verdict::RequireApproval);
        HoldRequest {
            session: 1,
            statements: vec![HeldStatement::new(Arc::from(sql), Vec::new(), decision, Reading::Unsure)],
            reason: None,
            database: "app".into(),
        }
    }

    #[tokio::test]
    async fn a_hold_dropped_leaves_no_pending_request() {
        let store = Arc::new(ApprovalStore::new(Duration::from_secs(3600)));
        let settings = HandlerSettings { timeout: Duration::from_secs(60), admin_url: None };
        let handler = ApprovalHandler::new(Arc::clone(&store), settings);
        // Dropped before it was ever polled (a cancel that came first):
        // nothing was opened.
        drop(handler.hold(held()));
        assert!(store.requests(false, SystemTime::now()).is_empty());
        // Dropped while waiting: withdrawn.
        let mut holding = handler.hold(held());
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(holding.outcome.as_mut().poll(&mut cx).is_pending());
        let id = store.requests(true, SystemTime::now()).pop().expect("a request").id;
        drop(holding);
        for _ in 0..100 {
            if !store.request(&id, SystemTime::now()).unwrap().state.is_pending() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let state = store.request(&id, SystemTime::now()).unwrap().state;
        assert!(matches!(state, State::Withdrawn { .. }), "{state:?}");
    }
}
