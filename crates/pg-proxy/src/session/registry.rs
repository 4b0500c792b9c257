//! The registry of live sessions: who they are, what they are doing, and a
//! control channel to each.
//!
//! Every session registers when its login succeeds and is gone from the
//! registry when it ends ([`Registration`] deregisters on drop). A client's
//! `CancelRequest` reaches its session through [`Registry::cancel`] (so a
//! held statement can be cancelled, not only a running one); the admin API
//! lists sessions with [`Registry::list`] and ends them with
//! [`Registry::terminate`].
//!
//! ```
//! use pg_proxy::session::registry::{Activity, Control, Registry, SessionInfo};
//! let registry = std::sync::Arc::new(Registry::default());
//! let info = SessionInfo::new("alice@example.com", vec!["ai-agents".into()], None, "127.0.0.1:5000".parse().unwrap(), "psql");
//! let mut session = registry.register(info);
//! assert_eq!(registry.list()[0].activity, Activity::Idle);
//! assert!(registry.cancel(session.id()));
//! assert_eq!(session.try_control(), Some(Control::Cancel));
//! drop(session);
//! assert!(registry.list().is_empty());
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::SystemTime;

use futures_util::task::AtomicWaker;

/// What a session is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Waiting for the client.
    Idle,
    /// A statement is on its way or running.
    Running,
    /// A statement is held for approval.
    Held,
}

impl Activity {
    fn from_u8(v: u8) -> Activity {
        match v {
            1 => Activity::Running,
            2 => Activity::Held,
            _ => Activity::Idle,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Activity::Idle => 0,
            Activity::Running => 1,
            Activity::Held => 2,
        }
    }
}

/// An order to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Cancel what it is running or holding (the client's `CancelRequest`).
    Cancel,
    /// End the session.
    Terminate,
}

/// Who a session is, fixed at login.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The token's subject.
    pub subject: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// The agent acting for the subject, if any.
    pub actor: Option<String>,
    /// The client's address.
    pub client: SocketAddr,
    /// The client's `application_name`.
    pub application_name: String,
    /// When the session started (RFC 3339, UTC, in JSON).
    #[serde(serialize_with = "utc")]
    pub started: SystemTime,
}

fn utc<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&portcullis_audit::time::format_utc(*t))
}

impl SessionInfo {
    /// A session's identity and client, started now.
    pub fn new(
        subject: &str,
        groups: Vec<String>,
        actor: Option<String>,
        client: SocketAddr,
        application_name: &str,
    ) -> SessionInfo {
        SessionInfo {
            subject: subject.to_string(),
            groups,
            actor,
            client,
            application_name: application_name.to_string(),
            started: SystemTime::now(),
        }
    }
}

/// A live session as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionSnapshot {
    /// The session id (as in the logs).
    pub id: u64,
    /// Who and from where.
    #[serde(flatten)]
    pub info: SessionInfo,
    /// What it is doing now.
    pub activity: Activity,
    /// The fingerprint of the statement it runs or holds (16 hex digits),
    /// when it is not idle.
    pub fingerprint: Option<String>,
}

#[derive(Debug)]
struct Entry {
    info: SessionInfo,
    now: Arc<Now>,
    orders: Arc<Orders>,
}

/// What a session publishes about itself: its activity, and its
/// statement's fingerprint (0: none).
#[derive(Debug, Default)]
struct Now {
    activity: AtomicU8,
    fingerprint: AtomicU64,
}

/// Orders sent to one session and not yet taken: a bit per kind, and the
/// session's waker. Polling it when nothing was sent is one atomic load
/// and a waker registration (the session polls it at every wake-up).
#[derive(Debug, Default)]
struct Orders {
    bits: AtomicU8,
    waker: AtomicWaker,
}

const CANCEL: u8 = 1;
const TERMINATE: u8 = 2;

impl Orders {
    fn send(&self, control: Control) {
        let bit = match control {
            Control::Cancel => CANCEL,
            Control::Terminate => TERMINATE,
        };
        self.bits.fetch_or(bit, Ordering::AcqRel);
        self.waker.wake();
    }

    /// The order sent since the last one taken: a terminate wins over a
    /// cancel (the session ends either way), and cancels sent before the
    /// session looked count once.
    fn take(&self) -> Option<Control> {
        if self.bits.load(Ordering::Acquire) == 0 {
            return None;
        }
        let bits = self.bits.swap(0, Ordering::AcqRel);
        if bits & TERMINATE != 0 {
            Some(Control::Terminate)
        } else if bits & CANCEL != 0 {
            Some(Control::Cancel)
        } else {
            None
        }
    }
}

/// The live sessions of a gateway.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    sessions: Mutex<HashMap<u64, Entry>>,
}

impl Registry {
    /// Registers a session; it stays listed until the [`Registration`] is
    /// dropped.
    pub fn register(self: &Arc<Self>, info: SessionInfo) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.register_as(id, info)
    }

    /// Registers a session under an id the caller chose (unique among live
    /// sessions: the gateway's session counter).
    pub fn register_as(self: &Arc<Self>, id: u64, info: SessionInfo) -> Registration {
        let orders = Arc::new(Orders::default());
        let now = Arc::new(Now::default());
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(id, Entry { info, now: Arc::clone(&now), orders: Arc::clone(&orders) });
        }
        Registration { id, registry: Arc::clone(self), orders, now }
    }

    /// The live sessions, by id.
    pub fn list(&self) -> Vec<SessionSnapshot> {
        let Ok(s) = self.sessions.lock() else { return Vec::new() };
        let mut out: Vec<SessionSnapshot> = s
            .iter()
            .map(|(id, e)| {
                let activity = Activity::from_u8(e.now.activity.load(Ordering::Acquire));
                let fingerprint = match e.now.fingerprint.load(Ordering::Acquire) {
                    0 => None,
                    _ if activity == Activity::Idle => None,
                    f => Some(format!("{f:016x}")),
                };
                SessionSnapshot { id: *id, info: e.info.clone(), activity, fingerprint }
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks session `id` to cancel what it runs or holds; false when there
    /// is no such session.
    pub fn cancel(&self, id: u64) -> bool {
        self.send(id, Control::Cancel)
    }

    /// Asks session `id` to end; false when there is no such session.
    pub fn terminate(&self, id: u64) -> bool {
        self.send(id, Control::Terminate)
    }

    fn send(&self, id: u64, control: Control) -> bool {
        let Ok(s) = self.sessions.lock() else { return false };
        let Some(entry) = s.get(&id) else { return false };
        entry.orders.send(control);
        true
    }
}

/// A session's place in the registry: its id, its control channel and its
/// activity, which the session updates. Dropping it deregisters.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    registry: Arc<Registry>,
    orders: Arc<Orders>,
    now: Arc<Now>,
}

impl Registration {
    /// The session id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Publishes what the session is doing.
    pub fn set_activity(&self, activity: Activity) {
        self.now.activity.store(activity.as_u8(), Ordering::Relaxed);
    }

    /// Publishes what the session is doing and, when it is not idle, the
    /// fingerprint of its statement (asked of `fingerprint` only then).
    pub fn publish(&self, activity: Activity, fingerprint: impl FnOnce() -> Option<u64>) {
        let shown = if activity == Activity::Idle { 0 } else { fingerprint().unwrap_or(0) };
        // The fingerprint first: a reader that sees the activity sees the
        // statement that goes with it (or a later one).
        self.now.fingerprint.store(shown, Ordering::Release);
        self.now.activity.store(activity.as_u8(), Ordering::Release);
    }

    /// The next order, when one comes (see [`Registry::cancel`] and
    /// [`Registry::terminate`]: a terminate wins over a cancel not yet
    /// taken, and cancels not yet taken count once).
    pub async fn control(&mut self) -> Control {
        std::future::poll_fn(|cx| {
            if let Some(control) = self.orders.take() {
                return Poll::Ready(control);
            }
            self.orders.waker.register(cx.waker());
            // Sent between the first look and the registration.
            match self.orders.take() {
                Some(control) => Poll::Ready(control),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The next order already sent, if any.
    pub fn try_control(&mut self) -> Option<Control> {
        self.orders.take()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut s) = self.registry.sessions.lock() {
            s.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (Arc<Registry>, Registration) {
        let registry = Arc::new(Registry::default());
        let info = SessionInfo::new("alice", Vec::new(), None, "127.0.0.1:5432".parse().unwrap(), "psql");
        let registration = registry.register(info);
        (registry, registration)
    }

    #[test]
    fn orders_not_yet_taken_collapse_and_terminate_wins() {
        let (registry, mut me) = session();
        assert_eq!(me.try_control(), None);
        assert!(registry.cancel(me.id()) && registry.cancel(me.id()));
        assert_eq!(me.try_control(), Some(Control::Cancel));
        assert_eq!(me.try_control(), None);
        assert!(registry.cancel(me.id()) && registry.terminate(me.id()));
        assert_eq!(me.try_control(), Some(Control::Terminate));
        assert!(!registry.cancel(me.id() + 1));
        drop(me);
        assert!(registry.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_session_is_woken_by_an_order() {
        let (registry, mut me) = session();
        let id = me.id();
        let waiting = tokio::spawn(async move { me.control().await });
        tokio::task::yield_now().await;
        assert!(registry.terminate(id));
        let woken = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        assert_eq!(woken.expect("the session was not woken").unwrap(), Control::Terminate);
    }
}
