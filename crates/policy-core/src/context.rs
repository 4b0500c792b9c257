//! A caller in a session, kept together for a connection that decides many
//! statements ([`Context`], [`crate::Engine::decide_in`]).

use std::ops::Range;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::cache::{ContextKey, DecisionCache};
use crate::decision::Decision;
use crate::engine::AnsweredShape;
use crate::identity::Identity;
use crate::session::{Session, SessionEffect, TransactionPaths};
use crate::shape::Template;

/// Shapes a context remembers ([`Context::recall`]).
const RECENT: usize = 16;
/// Decisions a remembered shape keeps restored for other spans.
const RESTORED: usize = 4;
/// Answers a context gives by itself before it counts them in the cache's
/// statistics.
const HITS_PER_COUNT: u32 = 64;
/// Texts without digits a context remembers ([`Context::recall_text`]),
/// and the longest it keeps.
const RECENT_TEXTS: usize = 8;
const MAX_RECENT_TEXT: usize = 512;

/// A text with no digit (`BEGIN`, `COMMIT`, a statement without constants)
/// the decision cache answered as itself for this connection's key.
#[derive(Debug, Clone)]
struct RecentText {
    text: Box<str>,
    /// The key it was answered for.
    key: Arc<ContextKey>,
    decision: Arc<Decision>,
}

/// A shape a template gave and the decision cache answered for this
/// connection's key.
#[derive(Debug, Clone)]
struct Recent {
    template: Arc<Template>,
    /// The key it was answered for.
    key: Arc<ContextKey>,
    /// The shape's decision, its spans in the shape's key.
    decision: Arc<Decision>,
    /// Those spans in the template's own text, which the template moves
    /// to any text it fits.
    spans: SmallVec<[Range<usize>; 4]>,
    /// The decision as the shared cache restored it for the last texts
    /// whose spans differed.
    restored: SmallVec<[Arc<Decision>; RESTORED]>,
}

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
/// A context also remembers the last shapes the cache answered it for
/// (up to 16, each with the template that gave it): a text that differs
/// from one of them only in integer constants, decided in the same state,
/// is answered without a look-up in the shared cache (see the crate docs,
/// "Resource usage").
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
#[derive(Debug)]
pub struct Context {
    identity: Identity,
    session: Session,
    /// The cache's key for `identity` in `session`, once a decision made it.
    key: Option<Arc<ContextKey>>,
    /// The keys it had before the last changes, the most recent first.
    earlier: [Option<Arc<ContextKey>>; 2],
    /// The shapes it was answered for lately, and where the next one goes.
    recent: Vec<Recent>,
    next: usize,
    /// The texts without digits it was answered for lately, and where the
    /// next one goes.
    texts: Vec<RecentText>,
    next_text: usize,
    /// Where the next look in `recent` starts: after the last hit.
    after_hit: usize,
    /// Answers from `recent` and from `texts` not counted in the cache's
    /// statistics yet.
    hits: u32,
    text_hits: u32,
    /// The paths of the last transaction that ended where it began, for
    /// the next one ([`Context::apply`]).
    spare: Option<TransactionPaths>,
}

/// A copy starts with none of the original's answers left to count (they
/// are counted once, by the original).
impl Clone for Context {
    fn clone(&self) -> Context {
        Context {
            identity: self.identity.clone(),
            session: self.session.clone(),
            key: self.key.clone(),
            earlier: self.earlier.clone(),
            recent: self.recent.clone(),
            next: self.next,
            texts: self.texts.clone(),
            next_text: self.next_text,
            after_hit: self.after_hit,
            hits: 0,
            text_hits: 0,
            spare: None,
        }
    }
}

impl Context {
    /// `identity` in `session`.
    pub fn new(identity: Identity, session: Session) -> Context {
        Context {
            identity,
            session,
            key: None,
            earlier: [None, None],
            recent: Vec::new(),
            next: 0,
            texts: Vec::new(),
            next_text: 0,
            after_hit: 0,
            hits: 0,
            text_hits: 0,
            spare: None,
        }
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
        self.forget_key();
        &mut self.session
    }

    /// Drops the key (kept among the earlier ones) as the session changes.
    fn forget_key(&mut self) {
        if let Some(key) = self.key.take() {
            let [first, second] = &mut self.earlier;
            *second = first.replace(key);
        }
    }

    /// Applies one effect of a statement the server ran to the session, as
    /// [`Session::apply`] does; cheaper for a connection that runs many
    /// short transactions, whose `BEGIN` takes back what the last one's
    /// end kept instead of copying the path again.
    ///
    /// ```
    /// use policy_core::{Context, Engine, Identity, Policy, SessionEffect};
    ///
    /// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
    /// let mut context = Context::new(Identity::new("ann"), engine.new_session());
    /// context.apply(&SessionEffect::Begin { implicit: false });
    /// assert!(context.session().transaction.is_some());
    /// context.apply(&SessionEffect::Commit { chain: false, may_have_failed: false });
    /// assert!(context.session().transaction.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply(&mut self, effect: &SessionEffect) {
        self.forget_key();
        self.session.apply_keeping(effect, &mut self.spare);
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
            other => {
                // Another engine's key (a policy reload): what was kept
                // for that engine goes.
                if other.as_ref().or(self.earlier[0].as_ref()).is_some_and(|k| !k.of(cache)) {
                    self.earlier = [None, None];
                    self.recent.clear();
                    self.texts.clear();
                    self.after_hit = 0;
                }
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

    /// The decision for `sql` from a shape
    /// this context was answered for in its present state: the shape
    /// comes from the same template as the shared cache's would (a pure
    /// function of the template and the text), and the decision is the one
    /// the cache gave for that shape and this very key.
    pub(crate) fn recall(&mut self, cache: &DecisionCache, sql: &str) -> Option<Arc<Decision>> {
        if self.recent.is_empty() {
            return None;
        }
        // Compared by address: no reference taken (the count is shared
        // with every connection in the same state).
        let (_, _, key) = self.parts(cache);
        let key = Arc::as_ptr(key);
        // From the one after the last hit: a connection that runs the same
        // statements in turn finds the next one there.
        let len = self.recent.len();
        let start = self.after_hit.min(len);
        let (index, recent, spans) = (0..len).map(|n| (start + n) % len).find_map(|i| {
            let r = self.recent.get(i)?;
            if !std::ptr::eq(Arc::as_ptr(&r.key), key) || !r.template.may_fit(sql) {
                return None;
            }
            Some((i, r, r.template.spans_of(sql, &r.spans)?))
        })?;
        self.after_hit = index + 1;
        // Spans not seen lately: the shared cache restores the decision (or
        // has it already), and the context keeps that one, not a copy.
        let decision = Arc::clone(recent.restored.iter().find(|d| d.has_spans(&spans))?);
        self.hits += 1;
        if self.hits >= HITS_PER_COUNT {
            cache.count_connection_hits(u64::from(self.hits));
            self.hits = 0;
        }
        Some(decision)
    }

    /// The decision for `sql`, a text with no digit, when the cache
    /// answered this very text for this context's present key lately: the
    /// cache's answer for a text and a key does not change while the
    /// engine is the same.
    pub(crate) fn recall_text(&mut self, cache: &DecisionCache, sql: &str) -> Option<Arc<Decision>> {
        if self.texts.is_empty() {
            return None;
        }
        let (_, _, key) = self.parts(cache);
        let key = Arc::as_ptr(key);
        let known = self.texts.iter().find(|t| std::ptr::eq(Arc::as_ptr(&t.key), key) && *t.text == *sql)?;
        let decision = Arc::clone(&known.decision);
        self.text_hits += 1;
        if self.text_hits >= HITS_PER_COUNT {
            cache.count_connection_text_hits(u64::from(self.text_hits));
            self.text_hits = 0;
        }
        Some(decision)
    }

    /// Remembers `sql`, a text with no digit the cache answered as itself
    /// (with `decision`) for this context's present key.
    pub(crate) fn remember_text(&mut self, sql: &str, decision: &Arc<Decision>) {
        let Some(key) = &self.key else { return };
        if sql.len() > MAX_RECENT_TEXT {
            return;
        }
        let text = RecentText { text: sql.into(), key: Arc::clone(key), decision: Arc::clone(decision) };
        if self.texts.len() < RECENT_TEXTS {
            self.texts.push(text);
        } else if let Some(slot) = self.texts.get_mut(self.next_text % RECENT_TEXTS) {
            *slot = text;
        }
        self.next_text = self.next_text.wrapping_add(1);
    }

    /// Remembers a shape the cache answered for this context's present
    /// key, with `restored`, the decision it gave for the text at hand.
    pub(crate) fn remember(&mut self, answered: AnsweredShape, restored: &Arc<Decision>) {
        let Some(key) = &self.key else { return };
        let known = self.recent.iter_mut().find(|r| {
            Arc::ptr_eq(&r.template, &answered.template)
                && Arc::ptr_eq(&r.key, key)
                && Arc::ptr_eq(&r.decision, &answered.decision)
        });
        if let Some(recent) = known {
            if recent.restored.len() >= RESTORED {
                recent.restored.remove(0);
            }
            recent.restored.push(Arc::clone(restored));
            return;
        }
        let spans = answered.decision.statements.iter().map(|s| answered.template.own_span(&s.span)).collect();
        let recent = Recent {
            template: answered.template,
            key: Arc::clone(key),
            spans,
            decision: answered.decision,
            restored: std::iter::once(Arc::clone(restored)).collect(),
        };
        if self.recent.len() < RECENT {
            self.recent.push(recent);
        } else if let Some(slot) = self.recent.get_mut(self.next % RECENT) {
            *slot = recent;
        }
        self.next = self.next.wrapping_add(1);
    }
}
