//! A caller in a session, kept together for a connection that decides many
//! statements ([`Context`], [`crate::Engine::decide_in`]).

use std::sync::Arc;

use crate::cache::{ContextKey, DecisionCache};
use crate::identity::Identity;
use crate::session::Session;

/// A caller and the session it runs in, as a connection keeps them: what
/// [`crate::Engine::decide_in`] decides for.
///
/// The decision cache keys every text with the caller and the session
/// state. A `Context` lets the engine make that part of the key once and
/// share it (with every other connection in the same state), instead of
/// hashing and comparing the caller and the session at every statement:
/// a cache hit then compares a pointer. The session is changed through
/// [`Context::session_mut`], which drops the key; the next decision makes
/// it again, or takes back one of the last two it had (a connection going
/// in and out of transaction blocks moves between two states).
///
/// ```
/// use policy_core::{Context, Engine, Identity, Policy, SessionEffect, Verdict};
///
/// let policy = Policy::from_toml_str(r#"
///     version = 1
///     [[rule]]
///     name = "read-public"
///     effect = "allow"
///     classes = ["read"]
///     tables = ["public.*"]
/// "#, "inline.toml")?;
/// let engine = Engine::new(policy, Default::default())?;
/// let mut context = Context::new(Identity::new("ann"), engine.new_session());
/// assert_eq!(engine.decide_in(&mut context, "SELECT * FROM orders").verdict, Verdict::Allow);
/// context.session_mut().apply(&SessionEffect::SetSearchPath {
///     path: vec!["private".to_string()],
///     local: false,
///     uncertain: false,
/// });
/// assert_eq!(engine.decide_in(&mut context, "SELECT * FROM orders").verdict, Verdict::Deny);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Context {
    identity: Identity,
    session: Session,
    /// The cache's key for `identity` in `session`, once a decision made it.
    key: Option<Arc<ContextKey>>,
    /// The keys it had before the last changes, the most recent first.
    earlier: [Option<Arc<ContextKey>>; 2],
}

impl Context {
    /// `identity` in `session`.
    pub fn new(identity: Identity, session: Session) -> Context {
        Context { identity, session, key: None, earlier: [None, None] }
    }

    /// The caller.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session, to change (its cache key is made again at the next
    /// decision).
    pub fn session_mut(&mut self) -> &mut Session {
        if let Some(key) = self.key.take() {
            let [first, second] = &mut self.earlier;
            *second = first.replace(key);
        }
        &mut self.session
    }

    /// The caller and the session.
    pub fn into_parts(self) -> (Identity, Session) {
        (self.identity, self.session)
    }

    /// The caller, the session and their key in `cache`: the one kept, one
    /// of the two before it when the session went back to that state, or
    /// a new one.
    pub(crate) fn parts(&mut self, cache: &DecisionCache) -> (&Identity, &Session, &Arc<ContextKey>) {
        let key = match self.key.take() {
            Some(key) if key.of(cache) => key,
            _ => {
                let (identity, session) = (&self.identity, &self.session);
                let again = self
                    .earlier
                    .iter_mut()
                    .find(|k| k.as_ref().is_some_and(|k| k.of(cache) && k.matches(identity, session)))
                    .and_then(Option::take);
                again.unwrap_or_else(|| cache.intern(identity, session))
            }
        };
        let key = self.key.insert(key);
        (&self.identity, &self.session, key)
    }
}
