//! The engine: a compiled policy that decides statements.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use globset::{Glob, GlobSetBuilder};

use crate::analyze::literal;
use crate::analyze::StatementFacts;
use crate::analyze::{self, Analysis, AnalyzeOptions};
use crate::cache::{CacheStats, Caller, DecisionCache, TemplateCache, DEFAULT_CACHE_BYTES};
use crate::context::Context;
use crate::decision::Decision;
use crate::detect::Detectors;
use crate::identity::{Actor, Identity};
use crate::mask::{ColumnInfo, ColumnMask, MessageScrubber, RowMasker};
use crate::policy::{Policy, PolicyError, PolicyTest, Strategy};
use crate::rules;
use crate::session::Session;
use crate::shape::{self, DigitMask, Shape, Template};
use smallvec::SmallVec;

/// Key material the engine is built with (never read from the environment).
#[derive(Clone, Default)]
pub struct Keys {
    /// Key of the `hash` masking strategy (HMAC-SHA256).
    pub pseudonym_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("pseudonym_key", &self.pseudonym_key.as_ref().map(|_| "<redacted>")).finish()
    }
}

/// Engine tuning.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Byte budget of the decision cache; 0 turns it off.
    pub cache_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { cache_bytes: DEFAULT_CACHE_BYTES }
    }
}

struct Inner {
    policy: Policy,
    options: AnalyzeOptions,
    cache: DecisionCache,
    templates: TemplateCache,
    masks: Vec<ColumnMask>,
    detectors: Detectors,
}

/// A compiled policy. Cheap to clone, `Send + Sync`: build once, share
/// between connections.
///
/// ```
/// use policy_core::{Engine, Identity, Policy, Verdict};
/// let policy = Policy::from_toml_str(r#"
///     version = 1
///     [[rule]]
///     name = "agents-read"
///     effect = "allow"
///     groups = ["ai-agents"]
///     classes = ["read"]
///     tables = ["public.*", "!public.secrets"]
/// "#, "inline.toml")?;
/// let engine = Engine::new(policy, Default::default())?;
/// let agent = Identity::new("bot").with_groups(["ai-agents"]);
/// let session = engine.new_session();
/// assert_eq!(engine.decide(&agent, &session, "SELECT * FROM orders").verdict, Verdict::Allow);
/// assert_eq!(engine.decide(&agent, &session, "TABLE secrets").verdict, Verdict::Deny);
/// assert_eq!(engine.decide(&agent, &session, "SELECT * FROM orders UNION ALL TABLE secrets").verdict, Verdict::Deny);
/// # Ok::<(), policy_core::PolicyError>(())
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("policy", &self.inner.policy.source).finish_non_exhaustive()
    }
}

/// The outcome of one `[[test]]` of a policy.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    /// The test.
    pub test: PolicyTest,
    /// What the engine decided.
    pub decision: Decision,
    /// Whether the verdict (and the rule, when the test names one) matched.
    pub passed: bool,
}

impl Engine {
    /// Builds an engine with default options.
    pub fn new(policy: Policy, keys: Keys) -> Result<Engine, PolicyError> {
        Engine::with_options(policy, keys, EngineOptions::default())
    }

    /// Builds an engine.
    pub fn with_options(policy: Policy, keys: Keys, options: EngineOptions) -> Result<Engine, PolicyError> {
        if keys.pseudonym_key.is_none() {
            if let Some(m) = policy.masks.iter().find(|m| m.strategy == Strategy::Hash) {
                return Err(PolicyError::Keys {
                    location: m.location.clone(),
                    message: format!("mask `{}` uses strategy \"hash\", which needs a pseudonymisation key", m.name),
                });
            }
        }
        let trusted_functions = if policy.settings.trusted_functions.is_empty() {
            None
        } else {
            let mut b = GlobSetBuilder::new();
            for t in &policy.settings.trusted_functions {
                if let Ok(g) = Glob::new(t) {
                    b.add(g);
                }
            }
            b.build().ok()
        };
        let analyze_options = AnalyzeOptions {
            trusted_functions,
            expand_views: policy.settings.views == crate::policy::ViewReading::Expand,
            inner: false,
            inference: policy.masks.iter().any(|m| !m.inference.is_empty()),
        };
        let key: Option<Arc<[u8]>> = keys.pseudonym_key.as_deref().map(Arc::from);
        let masks = policy.masks.iter().map(|m| ColumnMask::compile(m, key.clone())).collect();
        let detectors = Detectors::new(&policy.detectors, key);
        Ok(Engine {
            inner: Arc::new(Inner {
                policy,
                options: analyze_options,
                cache: DecisionCache::new(options.cache_bytes),
                templates: TemplateCache::new(options.cache_bytes / 8),
                masks,
                detectors,
            }),
        })
    }

    /// The policy the engine was built from.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// A session at the policy's starting state: `settings.search_path` is
    /// both its `search_path` and what a reset returns to. A connection
    /// that starts elsewhere (the client gave a `search_path` at login)
    /// takes [`Session::with_startup_search_path`].
    pub fn new_session(&self) -> Session {
        Session::default().with_startup_search_path(self.inner.policy.settings.search_path.clone())
    }

    /// The facts of every statement in `sql`, without judging them.
    pub fn analyze(&self, session: &Session, sql: &str) -> Analysis {
        match catch_unwind(AssertUnwindSafe(|| analyze::analyze(sql, session, &self.inner.options))) {
            Ok(a) => a,
            Err(_) => Analysis {
                statements: vec![analyze::unknown(
                    sql,
                    "internal error in the analysis (this is a bug, please report it)",
                )],
                spans: std::iter::once(0..sql.len()).collect(),
                reads_prepared: false,
                only_dml: false,
            },
        }
    }

    /// Decides `sql` for `identity` in `session`. Never fails: anything that
    /// stops a safe answer is a deny that says why.
    ///
    /// Decisions are cached. A statement whose decision never looked at a
    /// constant's value (`SELECT abalance FROM accounts WHERE aid = 17`)
    /// shares its cache entry with every text of the same shape (`... aid =
    /// 42`; see the crate docs, "Resource usage"). Statements whose decision read a
    /// constant (`WHERE 1 = 1`, `set_config('search_path', ...)`, a rule's
    /// `pattern`) are cached for their exact text only.
    ///
    /// ```
    /// use policy_core::{Engine, Identity, Policy, Verdict};
    ///
    /// let policy = Policy::from_toml_str(r#"
    ///     version = 1
    ///     [[rule]]
    ///     name = "read"
    ///     effect = "allow"
    ///     classes = ["read"]
    /// "#, "inline.toml")?;
    /// let engine = Engine::new(policy, Default::default())?;
    /// let (me, session) = (Identity::new("ann"), engine.new_session());
    /// for aid in 1..4 {
    ///     let d = engine.decide(&me, &session, &format!("SELECT * FROM accounts WHERE aid = {aid}"));
    ///     assert_eq!(d.verdict, Verdict::Allow);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decide(&self, identity: &Identity, session: &Session, sql: &str) -> Decision {
        let context = self.inner.cache.context_hash(identity, session);
        let caller = Caller::Borrowed { identity, session };
        let (decision, _) = self.decide_for(identity, session, caller, context, sql, self.digit_mask(session, sql));
        Arc::unwrap_or_clone(decision)
    }

    /// Whether `sql` may be decided by its shape: the scanner behind
    /// shapes lexes with standard_conforming_strings on, and long texts
    /// are not cached.
    fn shapes(&self, session: &Session, sql: &str) -> bool {
        session.standard_conforming_strings && self.inner.cache.takes(sql.len())
    }

    /// The digit mask of `sql`, when texts like it may take their shape
    /// from a template.
    fn digit_mask<'a>(&self, session: &Session, sql: &'a str) -> Option<DigitMask<'a>> {
        self.shapes(session, sql).then(|| DigitMask::of(sql)).flatten()
    }

    /// [`Engine::decide`] for a connection that decides many statements:
    /// the caller and the session come in a [`Context`], which keeps the
    /// decision cache's key for them (made again only after the session
    /// changes), and the decision comes shared (a cached one is not
    /// copied).
    ///
    /// ```
    /// use policy_core::{Context, Engine, Identity, Policy, Verdict};
    ///
    /// let policy = Policy::from_toml_str(r#"
    ///     version = 1
    ///     [[rule]]
    ///     name = "read"
    ///     effect = "allow"
    ///     classes = ["read"]
    /// "#, "inline.toml")?;
    /// let engine = Engine::new(policy, Default::default())?;
    /// let mut context = Context::new(Identity::new("ann"), engine.new_session());
    /// for aid in 1..4 {
    ///     let sql = format!("SELECT * FROM accounts WHERE aid = {aid}");
    ///     assert_eq!(engine.decide_in(&mut context, &sql).verdict, Verdict::Allow);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decide_in(&self, context: &mut Context, sql: &str) -> Arc<Decision> {
        let cache = &self.inner.cache;
        // What this connection was answered for lately first (a text
        // without digits as itself, others by their shape): no digit mask,
        // no hashing, no lock.
        let digits = shape::has_digit(sql);
        if !digits {
            if let Some(hit) = context.recall_text(cache, sql) {
                return hit;
            }
        } else if self.shapes(context.session(), sql) {
            if let Some(hit) = context.recall(cache, sql) {
                return hit;
            }
        }
        let mask = self.digit_mask(context.session(), sql);
        let (identity, session, key) = context.parts(cache);
        let (decision, answered) = self.decide_for(identity, session, Caller::Interned(key), key.hash, sql, mask);
        match answered {
            Answered::Shape(shape) => context.remember(shape, &decision),
            // Texts with digits are many (a new constant each time): only
            // those without are kept as themselves.
            Answered::Text if !digits => context.remember_text(sql, &decision),
            Answered::Text | Answered::Nothing => {}
        }
        decision
    }

    /// The decision, and what a [`Context`] keeps of it when a template gave
    /// its shape and the cache answered for that shape.
    fn decide_for(
        &self,
        identity: &Identity,
        session: &Session,
        caller: Caller<'_>,
        context: u64,
        sql: &str,
        mask: Option<DigitMask<'_>>,
    ) -> (Arc<Decision>, Answered) {
        let inner = &self.inner;
        let shapes = self.shapes(session, sql);
        let templates = &inner.templates;
        let mask = mask.map(|m| (templates.hash(&m), m));
        // A text that differs from one scanned before only in integer
        // constants takes its shape from that text's template, and is
        // looked up by shape first: such texts are not kept as themselves
        // (deriving the shape again is cheaper than keeping every new
        // constant).
        let derived =
            mask.as_ref().and_then(|(hash, _)| templates.derive(*hash, sql)).filter(|(shape, _)| shape.has_constants());
        let derived = match derived {
            Some((shape, template)) => {
                let shape_key = inner.cache.key(&shape.key, true, caller, context);
                if let Some((hit, decision)) = inner.cache.get_shape(shape_key, |r| shape.span_to_text(r)) {
                    return (hit, Answered::Shape(AnsweredShape { template, decision }));
                }
                Some(shape)
            }
            None => None,
        };
        // The text's own key is hashed only now: a text answered by its
        // shape above never needed it.
        let text_key = inner.cache.key(sql, false, caller, context);
        if let Some(hit) = inner.cache.get(text_key) {
            return (hit, Answered::Text);
        }
        let shape = match derived {
            // Its shape was looked up above.
            Some(shape) => Some(shape),
            None => {
                let shape = if shapes { self.scanned_shape(sql, mask.as_ref()) } else { None };
                let shape = shape.filter(Shape::has_constants);
                if let Some(shape) = &shape {
                    let shape_key = inner.cache.key(&shape.key, true, caller, context);
                    if let Some((hit, _)) = inner.cache.get_shape(shape_key, |r| shape.span_to_text(r)) {
                        // A text whose shape took the scanner is kept as
                        // itself too: its next sighting needs no scan.
                        inner.cache.insert(text_key, &hit, Decision::clone);
                        return (hit, Answered::Nothing);
                    }
                }
                shape
            }
        };
        let decided = catch_unwind(AssertUnwindSafe(|| {
            literal::start();
            let analysis = analyze::analyze(sql, session, &inner.options);
            // An EXECUTE's decision depends on the session's prepared
            // statements, which the cache key does not hold.
            let cacheable = !analysis.reads_prepared;
            let only_dml = analysis.only_dml;
            let active = crate::mask::active_masks(&inner.masks, identity);
            let guard = |facts: &StatementFacts| {
                crate::mask::masked_write(&active, facts)
                    .or_else(|| crate::mask::masked_statistics(&active, facts))
                    .or_else(|| crate::mask::inference(&active, facts))
            };
            let decision = rules::decide(&inner.policy, identity, analysis, sql, guard);
            (decision, cacheable, only_dml && !literal::was_read())
        }));
        let (decision, cacheable, literal_free) = match decided {
            Ok(d) => d,
            Err(_) => return (Arc::new(internal_error(identity)), Answered::Nothing),
        };
        if !cacheable {
            return (Arc::new(decision), Answered::Nothing);
        }
        match shape {
            Some(shape) if literal_free => {
                let shape_key = inner.cache.key(&shape.key, true, caller, context);
                inner.cache.insert(shape_key, &decision, |d| store_spans(d, &shape));
            }
            _ => inner.cache.insert(text_key, &decision, Decision::clone),
        }
        (Arc::new(decision), Answered::Nothing)
    }

    /// The shape of `sql` from PostgreSQL's scanner; what it says is kept
    /// as the template of `sql`'s digit mask (with its hash), when it has
    /// one (see [`crate::shape::Template`]).
    fn scanned_shape(&self, sql: &str, mask: Option<&(u64, DigitMask<'_>)>) -> Option<Shape> {
        let shape = Shape::of(sql)?;
        if let Some((hash, mask)) = mask {
            self.inner.templates.learn(*hash, sql, mask, &shape);
        }
        Some(shape)
    }

    /// Runs the policy's own `[[test]]` entries.
    pub fn run_tests(&self) -> Vec<TestOutcome> {
        self.inner
            .policy
            .tests
            .iter()
            .map(|t| {
                let mut identity = Identity::new(t.subject.clone()).with_groups(t.groups.iter().cloned());
                if let Some(a) = &t.actor {
                    identity = identity.with_actor(Actor::new(a.clone()));
                }
                let mut session = self.new_session();
                if let Some(p) = &t.search_path {
                    session = session.with_startup_search_path(p.clone());
                }
                let decision = self.decide(&identity, &session, &t.sql);
                let rule_ok = match &t.rule {
                    None => true,
                    Some(r) if r.is_empty() => decision.rule.is_none(),
                    Some(r) => decision.rule.as_deref() == Some(r.as_str()),
                };
                let passed = decision.verdict == t.expect && rule_ok;
                TestOutcome { test: t.clone(), decision, passed }
            })
            .collect()
    }

    /// Prepares the masking of one statement's result rows for `identity`:
    /// `facts` is the statement's analysis (its output-column lineage),
    /// `columns` what the server said about the result's columns.
    pub fn masker(&self, identity: &Identity, facts: &StatementFacts, columns: &[ColumnInfo]) -> RowMasker {
        RowMasker::new(&self.inner.masks, &self.inner.detectors, identity, facts, columns)
    }

    /// Prepares the scrubbing of the server's error and notice texts for
    /// `identity` while `statements` run (see [`MessageScrubber`]). With
    /// no statements (a message the caller cannot tie to one), messages
    /// are withheld from a caller a column mask applies to.
    pub fn scrubber<'a>(
        &self,
        identity: &Identity,
        statements: impl IntoIterator<Item = &'a StatementFacts>,
    ) -> MessageScrubber {
        MessageScrubber::new(&self.inner.masks, &self.inner.detectors, identity, statements)
    }

    /// Prepares the scrubbing of texts that answer no statement of
    /// `identity`'s — a notification's payload, the answer to a `Parse`,
    /// `Bind`, `Describe` or `Close`, which read no data —: the detectors
    /// alone.
    ///
    /// ```
    /// use policy_core::{Engine, Identity, Policy, Scrubbed};
    /// let policy = Policy::from_toml_str(r#"
    ///     version = 1
    ///     [[detector]]
    ///     name = "mail"
    ///     kinds = ["email"]
    ///     strategy = "redact"
    /// "#, "p.toml")?;
    /// let engine = Engine::new(policy, Default::default())?;
    /// let s = engine.text_scrubber(&Identity::new("bob"));
    /// assert_eq!(s.scrub("00000", b'M', "ship to bob@example.com"), Scrubbed::Replace("ship to [redacted]".into()));
    /// assert_eq!(s.scrub("42703", b'M', r#"column "sn" does not exist"#), Scrubbed::Keep);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn text_scrubber(&self, identity: &Identity) -> MessageScrubber {
        MessageScrubber::text(&self.inner.detectors, identity)
    }

    /// The policy's detectors, compiled.
    pub fn detectors(&self) -> &Detectors {
        &self.inner.detectors
    }

    /// Bytes the decision cache holds now.
    pub fn cache_bytes(&self) -> usize {
        self.inner.cache.bytes()
    }

    /// What the decision cache has answered so far, and its size.
    ///
    /// ```
    /// use policy_core::{Engine, Identity, Policy};
    ///
    /// let policy = Policy::from_toml_str("version = 1\n[settings]\ndefault = \"allow\"\n", "inline.toml")?;
    /// let engine = Engine::new(policy, Default::default())?;
    /// let (me, session) = (Identity::new("ann"), engine.new_session());
    /// for aid in 1..=3 {
    ///     engine.decide(&me, &session, &format!("SELECT * FROM accounts WHERE aid = {aid}"));
    /// }
    /// // The second text was the shape's second sighting (it is cached
    /// // then); the third was answered by the shape.
    /// assert_eq!(engine.cache_stats().shape_hits, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats { scans_skipped: self.inner.templates.derived(), ..self.inner.cache.stats() }
    }
}

/// How the cache answered a text: what a [`Context`] may keep to answer
/// the next such texts by itself.
pub(crate) enum Answered {
    /// By a shape a template gave.
    Shape(AnsweredShape),
    /// By the text itself.
    Text,
    /// Not from the cache (decided, or a decision the cache does not keep).
    Nothing,
}

/// A shape a template gave and the cache answered for: what a [`Context`]
/// keeps to answer the next texts of that shape by itself.
pub(crate) struct AnsweredShape {
    /// The template that gave the shape.
    pub template: Arc<Template>,
    /// The shape's decision, its spans in the shape's key.
    pub decision: Arc<Decision>,
}

fn internal_error(identity: &Identity) -> Decision {
    let mut d =
        Decision::refusal_for(identity, "internal error in the decision engine (this is a bug, please report it)");
    d.diagnostics.push("the analysis panicked; the statement is denied".to_string());
    d
}

/// `decision` with its statements' spans moved from `shape`'s text to its key.
fn store_spans(decision: &Decision, shape: &Shape) -> Decision {
    map_spans(decision, |r| shape.key_offset(r.start)..shape.key_offset(r.end))
}

fn map_spans(decision: &Decision, map: impl Fn(&Range<usize>) -> Range<usize>) -> Decision {
    let spans: SmallVec<[Range<usize>; 4]> = decision.statements.iter().map(|s| map(&s.span)).collect();
    decision.with_spans(&spans)
}
