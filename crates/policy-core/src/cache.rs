//! The decision cache: a repeated statement is decided once.
//!
//! A decision depends on the SQL text, the caller (subject, groups, actor),
//! and the session (search_path and the value a reset returns to,
//! `standard_conforming_strings`, the database user, and the transaction
//! block with the paths its end returns to). The cache keys on all of them
//! and compares them in full on a hit (the 64-bit hash only picks the
//! bucket). Strings holding an
//! `EXECUTE` also depend on the session's prepared statements and are not
//! cached.
//!
//! A key is a text or a shape (the text with its constants replaced by
//! markers, [`crate::shape`]); the two never match each other. A decision
//! that never read a constant's value is cached under its shape, so
//! `... WHERE aid = 17` and `... WHERE aid = 42` share one entry; a text
//! seen twice whose shape took the scanner is also kept as itself, so that
//! it skips the scan. The scan itself is skipped for a text that differs
//! from a scanned one only in its integer constants: [`TemplateCache`]
//! keeps, by digit mask, what the scanner said
//! ([`crate::shape::Template`]), and such a text is not kept as itself
//! (deriving its shape again costs less than an entry per constant).
//!
//! A text is cached the second time it is decided (a per-shard set of the
//! key hashes seen once, emptied when it reaches [`SEEN_ONCE_LIMIT`]): the
//! statements that never repeat (a new literal in every one) cost no cache
//! entry, no sweep and no copy of their key.
//!
//! Keys are hashed with foldhash, seeded at random per cache: a fast
//! keyed hash rather than SipHash, because every statement's text is hashed
//! at least once. The hash only picks a bucket (a hit compares the whole
//! key), so a caller who learnt the seed and sent colliding texts would
//! lengthen one bucket's scan, bounded by the shard's byte budget; it could
//! never get another text's decision.
//!
//! Memory is bounded: 16 shards, each holding at most 1/16 of the byte
//! budget (8 MiB by default), counting the key's bytes and an estimate of
//! the decision's. Texts longer than 16 KiB are not cached. When a shard is
//! full, entries not hit since the last sweep are dropped (second chance);
//! if that frees too little, the shard is emptied.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::decision::Decision;
use crate::identity::Identity;
use crate::session::{Session, TransactionPaths};
use crate::shape::{DigitMask, Shape, Template};
use smallvec::SmallVec;

/// Default byte budget of the whole cache.
pub const DEFAULT_CACHE_BYTES: usize = 8 << 20;
/// Longest SQL text that is cached.
pub const MAX_CACHED_SQL: usize = 16 << 10;
const SHARDS: usize = 16;
/// Key hashes a shard remembers as seen once.
pub const SEEN_ONCE_LIMIT: usize = 4096;

/// What a decision depends on besides its text: the caller and the
/// session state the analysis reads. One value is made once per cache
/// ([`DecisionCache::intern`]) and shared by every key and every
/// [`crate::Context`] that holds it, so a hit for a caller that passes its
/// interned context compares two pointers instead of every field.
#[derive(Debug)]
pub(crate) struct ContextKey {
    /// The cache that made it ([`DecisionCache::id`]).
    cache: u64,
    /// Its hash under that cache's hasher.
    pub(crate) hash: u64,
    identity: Identity,
    search_path: Vec<String>,
    reset_search_path: Vec<String>,
    standard_conforming_strings: bool,
    user: Option<String>,
    transaction: Option<TransactionPaths>,
    /// [`crate::Definitions::id`] of the session's views.
    views: Option<u64>,
}

impl ContextKey {
    fn new(cache: u64, hash: u64, identity: &Identity, session: &Session) -> ContextKey {
        ContextKey {
            cache,
            hash,
            identity: identity.clone(),
            search_path: session.search_path.clone(),
            reset_search_path: session.reset_search_path.clone(),
            standard_conforming_strings: session.standard_conforming_strings,
            user: session.user.clone(),
            transaction: session.transaction.clone(),
            views: views_id(session),
        }
    }

    /// Whether this is `identity` in `session` (the fields that tell
    /// sessions apart most often are compared first).
    pub(crate) fn matches(&self, identity: &Identity, session: &Session) -> bool {
        self.transaction.is_some() == session.transaction.is_some()
            && self.search_path == session.search_path
            && self.transaction == session.transaction
            && self.standard_conforming_strings == session.standard_conforming_strings
            && self.reset_search_path == session.reset_search_path
            && self.user == session.user
            && self.views == views_id(session)
            && self.identity == *identity
    }

    /// Whether `self` and `other` hold the same caller and session.
    fn same(&self, other: &ContextKey) -> bool {
        std::ptr::eq(self, other)
            || (self.hash == other.hash
                && self.transaction == other.transaction
                && self.search_path == other.search_path
                && self.standard_conforming_strings == other.standard_conforming_strings
                && self.reset_search_path == other.reset_search_path
                && self.user == other.user
                && self.views == other.views
                && self.identity == other.identity)
    }

    /// Whether `cache` made it.
    pub(crate) fn of(&self, cache: &DecisionCache) -> bool {
        self.cache == cache.id
    }

    /// Roughly what it holds, counted in every entry that keys on it (an
    /// entry may be the last to hold it).
    fn bytes(&self) -> usize {
        let strings = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
        self.identity.subject.len()
            + strings(&self.identity.groups)
            + strings(&self.search_path)
            + strings(&self.reset_search_path)
            + self.transaction.as_ref().map_or(0, transaction_bytes)
    }
}

/// The caller and session of a look-up: the interned context a
/// [`crate::Context`] keeps, or the two borrowed for one decision.
#[derive(Clone, Copy)]
pub(crate) enum Caller<'a> {
    Interned(&'a Arc<ContextKey>),
    Borrowed { identity: &'a Identity, session: &'a Session },
}

#[derive(Debug)]
struct Key {
    /// The text, or its shape's key (see [`crate::shape`]).
    sql: Box<str>,
    shape: bool,
    context: Arc<ContextKey>,
}

impl Key {
    fn same(&self, sql: &str, shape: bool, caller: Caller<'_>) -> bool {
        *self.sql == *sql
            && self.shape == shape
            && match caller {
                Caller::Interned(context) => self.context.same(context),
                Caller::Borrowed { identity, session } => self.context.matches(identity, session),
            }
    }
}

#[derive(Debug)]
struct Entry {
    key: Key,
    decision: Arc<Decision>,
    bytes: usize,
    hit: bool,
    /// For a shape's entry, the decision as restored for the last texts
    /// whose spans differed (see [`DecisionCache::get_shape`]).
    restored: Vec<Arc<Decision>>,
}

/// Restored decisions a shape's entry keeps: texts of one shape mostly
/// come in a few lengths (a key of 5 or 6 digits, a delta of 4 or 5).
const RESTORED_PER_ENTRY: usize = 4;

/// What one restored decision adds to its entry's bytes, roughly (it
/// shares the statements' facts, rules and reasons with the entry's).
fn restored_bytes(d: &Decision) -> usize {
    160 + 64 * d.statements.len()
}

/// [`SHARDS`] empty shards.
fn new_shards<T: Default>() -> Vec<Mutex<T>> {
    (0..SHARDS).map(|_| Mutex::new(T::default())).collect()
}

/// The shard of a key's hash: by bits the shard's own table does not use
/// (it indexes by the low bits and tags by the top seven).
fn shard_of<T>(shards: &[Mutex<T>], hash: u64) -> Option<&Mutex<T>> {
    shards.get((hash >> 32) as usize % SHARDS)
}

/// Hashes a `u64` that is already a key's hash: as itself.
#[derive(Debug, Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed here; fold anything else in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByHash = BuildHasherDefault<PreHashed>;

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<u64, Vec<Entry>, ByHash>,
    bytes: usize,
    /// Key hashes decided once and not cached yet.
    seen_once: HashSet<u64, ByHash>,
    /// Answers given, by the text itself and by its shape (counted under
    /// the shard's lock, so no shared counter on the hot path).
    hits: u64,
    shape_hits: u64,
}

/// What the decision cache has done so far ([`crate::Engine::cache_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Decisions answered for the very same text. Those a connection's
    /// [`crate::Context`] answered from the texts it was answered for lately
    /// are counted in batches, as `shape_hits` are.
    pub hits: u64,
    /// Decisions answered for a text of the same shape (other constants).
    /// Those a connection's [`crate::Context`] answered from the shapes it
    /// was answered for lately are counted in batches of
    /// [`crate::Context`]'s own (up to 63 per connection may be missing).
    pub shape_hits: u64,
    /// Bytes held now.
    pub bytes: usize,
    /// Texts whose shape was found without PostgreSQL's scanner: they
    /// differed from a scanned text only in the values of integer
    /// constants (see [`crate::Engine::decide`]).
    pub scans_skipped: u64,
}

/// A bounded, sharded map from (text, caller, session) to decisions.
#[derive(Debug)]
pub(crate) struct DecisionCache {
    /// Tells this cache's interned contexts from another's.
    id: u64,
    shards: Vec<Mutex<Shard>>,
    shard_budget: usize,
    hasher: foldhash::quality::RandomState,
    interned: Mutex<Interned>,
    /// Shape hits answered by connections themselves
    /// ([`DecisionCache::count_connection_hits`]).
    connection_hits: AtomicU64,
    /// Text hits answered by connections themselves.
    connection_text_hits: AtomicU64,
}

/// Caches made so far, for [`DecisionCache::id`].
static CACHES: AtomicU64 = AtomicU64::new(0);

/// The contexts interned by a cache, by hash: held weakly (the keys and the
/// [`crate::Context`]s that use one keep it alive); the dead are dropped
/// from a bucket when it is visited, and from the whole map when it has
/// grown to twice its size after the last such sweep.
#[derive(Debug, Default)]
struct Interned {
    map: HashMap<u64, SmallVec<[Weak<ContextKey>; 1]>, ByHash>,
    swept_len: usize,
}

/// One key, borrowed, with its hash computed once ([`DecisionCache::key`])
/// for the look-up and the insertion that may follow.
#[derive(Clone, Copy)]
pub(crate) struct Lookup<'a> {
    hash: u64,
    sql: &'a str,
    shape: bool,
    caller: Caller<'a>,
    /// The context's hash.
    context: u64,
}

/// The hash of what a key holds besides its text.
fn context_hash(state: &foldhash::quality::RandomState, identity: &Identity, session: &Session) -> u64 {
    let mut h = state.build_hasher();
    identity.hash(&mut h);
    session.search_path.hash(&mut h);
    session.reset_search_path.hash(&mut h);
    session.standard_conforming_strings.hash(&mut h);
    session.user.hash(&mut h);
    session.transaction.hash(&mut h);
    views_id(session).hash(&mut h);
    h.finish()
}

/// The identity of the session's views, which decisions depend on.
fn views_id(session: &Session) -> Option<u64> {
    session.definitions.as_ref().map(|v| v.id())
}

fn key_hash(state: &foldhash::quality::RandomState, sql: &str, shape: bool, context: u64) -> u64 {
    let mut h = state.build_hasher();
    sql.hash(&mut h);
    shape.hash(&mut h);
    context.hash(&mut h);
    h.finish()
}

fn transaction_bytes(t: &TransactionPaths) -> usize {
    let strings = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
    128 + strings(&t.start)
        + strings(&t.commit)
        + strings(&t.seen)
        + t.savepoints.iter().map(|s| 72 + s.name.len() + strings(&s.search_path) + strings(&s.commit)).sum::<usize>()
}

fn decision_bytes(d: &Decision) -> usize {
    let strings = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
    256 + d.reason.len()
        + d.statements
            .iter()
            .map(|s| {
                let f = &s.facts;
                320 + s.reason.len()
                    + strings(&f.tables)
                    + strings(&f.written_tables)
                    + strings(&f.columns)
                    + strings(&f.functions)
                    + strings(&f.notes)
                    + f.output_columns.iter().map(|c| 64 + c.name.len() + strings(&c.sources)).sum::<usize>()
            })
            .sum::<usize>()
}

impl DecisionCache {
    pub(crate) fn new(budget: usize) -> Self {
        DecisionCache {
            id: CACHES.fetch_add(1, Ordering::Relaxed),
            shards: new_shards(),
            shard_budget: budget / SHARDS,
            hasher: foldhash::quality::RandomState::default(),
            interned: Mutex::default(),
            connection_hits: AtomicU64::new(0),
            connection_text_hits: AtomicU64::new(0),
        }
    }

    /// The hash of what a key holds besides its text: the caller and the
    /// session.
    pub(crate) fn context_hash(&self, identity: &Identity, session: &Session) -> u64 {
        context_hash(&self.hasher, identity, session)
    }

    /// The context of `identity` in `session`, shared with every key and
    /// every caller that has the same: two equal contexts interned by one
    /// cache are one value while either is held.
    pub(crate) fn intern(&self, identity: &Identity, session: &Session) -> Arc<ContextKey> {
        let hash = self.context_hash(identity, session);
        self.intern_hashed(hash, identity, session)
    }

    fn intern_hashed(&self, hash: u64, identity: &Identity, session: &Session) -> Arc<ContextKey> {
        let new = || Arc::new(ContextKey::new(self.id, hash, identity, session));
        // A poisoned lock costs the sharing, not the answer.
        let Ok(mut interned) = self.interned.lock() else { return new() };
        let interned = &mut *interned;
        let bucket = interned.map.entry(hash).or_default();
        bucket.retain(|w| w.strong_count() > 0);
        if let Some(found) = bucket.iter().filter_map(Weak::upgrade).find(|c| c.matches(identity, session)) {
            return found;
        }
        let context = new();
        bucket.push(Arc::downgrade(&context));
        if interned.map.len() > 2 * interned.swept_len + 64 {
            interned.map.retain(|_, bucket| {
                bucket.retain(|w| w.strong_count() > 0);
                !bucket.is_empty()
            });
            interned.swept_len = interned.map.len();
        }
        context
    }

    /// Contexts interned and still held, for tests.
    #[cfg(test)]
    fn interned_len(&self) -> usize {
        self.interned.lock().map_or(0, |i| i.map.values().flatten().filter(|w| w.strong_count() > 0).count())
    }

    /// The key of `sql` (a shape's key when `shape`) for `caller`, whose
    /// context hashes to `context`.
    pub(crate) fn key<'a>(&self, sql: &'a str, shape: bool, caller: Caller<'a>, context: u64) -> Lookup<'a> {
        Lookup { hash: key_hash(&self.hasher, sql, shape, context), sql, shape, caller, context }
    }

    fn shard(&self, hash: u64) -> Option<&Mutex<Shard>> {
        shard_of(&self.shards, hash)
    }

    /// Whether texts of `len` bytes are cached at all.
    pub(crate) fn takes(&self, len: usize) -> bool {
        self.shard_budget > 0 && len <= MAX_CACHED_SQL
    }

    /// Finds the entry of `key`, counts the hit and hands the entry (and
    /// its shard's byte count) to `f`.
    fn hit<R>(&self, key: Lookup<'_>, f: impl FnOnce(&mut Entry, &mut usize) -> R) -> Option<R> {
        let Lookup { hash, sql, shape, caller, .. } = key;
        if !self.takes(sql.len()) {
            return None;
        }
        let mut guard = self.shard(hash)?.lock().ok()?;
        let shard = &mut *guard;
        let entry = shard.map.get_mut(&hash)?.iter_mut().find(|e| e.key.same(sql, shape, caller))?;
        entry.hit = true;
        if shape {
            shard.shape_hits += 1;
        } else {
            shard.hits += 1;
        }
        Some(f(entry, &mut shard.bytes))
    }

    /// The decision cached under `key`, as it is.
    pub(crate) fn get(&self, key: Lookup<'_>) -> Option<Arc<Decision>> {
        self.hit(key, |entry, _| Arc::clone(&entry.decision))
    }

    /// The decision cached under the shape `key`, with its statements'
    /// spans moved from the key to the text by `to_text`. The entry keeps
    /// what it restored for the last texts (up to [`RESTORED_PER_ENTRY`]):
    /// a text whose spans are those of one of them gets that one again
    /// instead of a new copy (texts of one shape differ in their spans only
    /// by the lengths of their constants).
    ///
    /// Also hands out the entry's own decision (spans in the key), for a
    /// connection's [`crate::Context`] to restore on its own.
    pub(crate) fn get_shape(
        &self,
        key: Lookup<'_>,
        to_text: impl Fn(&Range<usize>) -> Range<usize>,
    ) -> Option<(Arc<Decision>, Arc<Decision>)> {
        self.hit(key, |entry, shard_bytes| {
            let spans: SmallVec<[Range<usize>; 4]> =
                entry.decision.statements.iter().map(|s| to_text(&s.span)).collect();
            let base = Arc::clone(&entry.decision);
            if let Some(d) = entry.restored.iter().find(|d| d.has_spans(&spans)) {
                return (Arc::clone(d), base);
            }
            let restored = Arc::new(entry.decision.with_spans(&spans));
            if entry.restored.len() >= RESTORED_PER_ENTRY {
                entry.restored.remove(0);
            } else {
                // Kept only within the shard's budget (a hit does not sweep).
                let bytes = restored_bytes(&restored);
                if *shard_bytes + bytes > self.shard_budget {
                    return (restored, base);
                }
                entry.bytes += bytes;
                *shard_bytes += bytes;
            }
            entry.restored.push(Arc::clone(&restored));
            (restored, base)
        })
    }

    /// Counts `n` answers a connection's [`crate::Context`] gave from the
    /// shapes it was answered for lately (they reach the statistics in
    /// batches).
    pub(crate) fn count_connection_hits(&self, n: u64) {
        self.connection_hits.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` answers a connection's [`crate::Context`] gave from the
    /// texts it was answered for lately.
    pub(crate) fn count_connection_text_hits(&self, n: u64) {
        self.connection_text_hits.fetch_add(n, Ordering::Relaxed);
    }

    /// Caches `stored(decision)` under `key`, from the second time it is
    /// offered; `stored` runs only then.
    pub(crate) fn insert(&self, key: Lookup<'_>, decision: &Decision, stored: impl FnOnce(&Decision) -> Decision) {
        let Lookup { hash, sql, shape, caller, context } = key;
        if !self.takes(sql.len()) {
            return;
        }
        let context = match caller {
            Caller::Interned(c) if c.of(self) => Arc::clone(c),
            // Not expected (a `Context` interns again for another
            // engine): not cached.
            Caller::Interned(_) => return,
            Caller::Borrowed { identity, session } => self.intern_hashed(context, identity, session),
        };
        let bytes = 128 + sql.len() + context.bytes() + decision_bytes(decision);
        if bytes > self.shard_budget {
            return;
        }
        let Some(Ok(mut shard)) = self.shard(hash).map(Mutex::lock) else { return };
        if !shard.seen_once.remove(&hash) {
            if shard.seen_once.len() >= SEEN_ONCE_LIMIT {
                shard.seen_once.clear();
            }
            shard.seen_once.insert(hash);
            return;
        }
        if shard.bytes + bytes > self.shard_budget {
            shard.sweep(self.shard_budget.saturating_sub(bytes));
        }
        let bucket = shard.map.entry(hash).or_default();
        if bucket.iter().any(|e| e.key.same(sql, shape, Caller::Interned(&context))) {
            return;
        }
        let key = Key { sql: sql.into(), shape, context };
        bucket.push(Entry { key, decision: Arc::new(stored(decision)), bytes, hit: false, restored: Vec::new() });
        shard.bytes += bytes;
    }

    /// Bytes held, for tests and diagnostics.
    pub(crate) fn bytes(&self) -> usize {
        self.stats().bytes
    }

    /// Hits and bytes, summed over the shards.
    pub(crate) fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            hits: self.connection_text_hits.load(Ordering::Relaxed),
            shape_hits: self.connection_hits.load(Ordering::Relaxed),
            ..CacheStats::default()
        };
        for shard in self.shards.iter().filter_map(|s| s.lock().ok()) {
            stats.hits += shard.hits;
            stats.shape_hits += shard.shape_hits;
            stats.bytes += shard.bytes;
        }
        stats
    }
}

impl Shard {
    /// Second chance: drop entries not hit since the last sweep, clear the
    /// marks of the others; empty the shard if that is not enough.
    fn sweep(&mut self, target: usize) {
        let mut freed = 0;
        for bucket in self.map.values_mut() {
            bucket.retain_mut(|e| {
                if e.hit {
                    e.hit = false;
                    true
                } else {
                    freed += e.bytes;
                    false
                }
            });
        }
        self.map.retain(|_, b| !b.is_empty());
        self.bytes -= freed.min(self.bytes);
        if self.bytes > target {
            self.map.clear();
            self.bytes = 0;
        }
    }
}

/// Templates a digit mask keeps: texts of one mask that differ in other
/// digits than integer constants (`t1` and `t2`) each get one.
const TEMPLATES_PER_MASK: usize = 4;

/// Scanned texts as [`Template`]s, by [`DigitMask`]: the shape of a text
/// that differs from one of them only in its integer constants is found
/// without running the scanner. Bounded like the decision cache (16
/// shards, a byte budget each, a shard emptied when full); a template is
/// kept from the second text of its mask on.
#[derive(Debug)]
pub(crate) struct TemplateCache {
    shards: Vec<Mutex<TemplateShard>>,
    shard_budget: usize,
    hasher: foldhash::quality::RandomState,
}

#[derive(Debug, Default)]
struct TemplateShard {
    map: HashMap<u64, Vec<Arc<Template>>, ByHash>,
    bytes: usize,
    seen_once: HashSet<u64, ByHash>,
    derived: u64,
}

impl TemplateCache {
    pub(crate) fn new(budget: usize) -> Self {
        TemplateCache {
            shards: new_shards(),
            shard_budget: budget / SHARDS,
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    fn shard(&self, hash: u64) -> Option<&Mutex<TemplateShard>> {
        shard_of(&self.shards, hash)
    }

    /// The hash of a mask's key.
    pub(crate) fn hash(&self, mask: &DigitMask<'_>) -> u64 {
        mask.hash(&self.hasher)
    }

    /// The shape of `sql` (whose mask is hashed `hash`) from a template,
    /// when one fits, and the template.
    pub(crate) fn derive(&self, hash: u64, sql: &str) -> Option<(Shape, Arc<Template>)> {
        if self.shard_budget == 0 {
            return None;
        }
        let mut shard = self.shard(hash)?.lock().ok()?;
        let found = shard.map.get(&hash)?.iter().find_map(|t| Some((t.derive(sql)?, Arc::clone(t))))?;
        shard.derived += 1;
        Some(found)
    }

    /// Keeps what the scanner said about `sql` (its `shape`) for the texts
    /// of its mask, from the second text of that mask on.
    pub(crate) fn learn(&self, hash: u64, sql: &str, mask: &DigitMask<'_>, shape: &Shape) {
        if self.shard_budget == 0 {
            return;
        }
        let Some(Ok(mut shard)) = self.shard(hash).map(Mutex::lock) else { return };
        if !shard.seen_once.remove(&hash) && !shard.map.contains_key(&hash) {
            if shard.seen_once.len() >= SEEN_ONCE_LIMIT {
                shard.seen_once.clear();
            }
            shard.seen_once.insert(hash);
            return;
        }
        let Some(template) = Template::new(sql, mask, shape) else { return };
        let bytes = template.bytes();
        if bytes > self.shard_budget {
            return;
        }
        if shard.bytes + bytes > self.shard_budget {
            shard.map.clear();
            shard.bytes = 0;
        }
        let list = shard.map.entry(hash).or_default();
        if list.iter().any(|t| **t == template) {
            return;
        }
        let mut freed = 0;
        if list.len() >= TEMPLATES_PER_MASK {
            freed = list.remove(0).bytes();
        }
        list.push(Arc::new(template));
        shard.bytes = shard.bytes + bytes - freed.min(shard.bytes + bytes);
    }

    /// Shapes derived so far.
    pub(crate) fn derived(&self) -> u64 {
        self.shards.iter().filter_map(|s| s.lock().ok()).map(|s| s.derived).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionEffect;

    #[test]
    fn equal_contexts_are_interned_as_one_and_colliding_ones_stay_apart() {
        let cache = DecisionCache::new(DEFAULT_CACHE_BYTES);
        let ann = Identity::new("ann");
        let public = Session::default();
        let private = Session { search_path: vec!["private".into()], ..Session::default() };
        let mut in_block = Session::default();
        in_block.apply(&SessionEffect::Begin { implicit: false });
        let a = cache.intern(&ann, &public);
        assert!(Arc::ptr_eq(&a, &cache.intern(&ann, &public)));
        // Other contexts forced under the same hash (a collision): each
        // its own, and told apart by what they hold.
        let others = [(Identity::new("bob"), &public), (ann.clone(), &private), (ann.clone(), &in_block)];
        let mut kept = vec![Arc::clone(&a)];
        for (identity, session) in &others {
            let c = cache.intern_hashed(a.hash, identity, session);
            assert!(c.matches(identity, session) && !a.matches(identity, session), "{identity:?} {session:?}");
            assert!(kept.iter().all(|k| !k.same(&c) && !c.same(k)), "{identity:?} {session:?}");
            assert!(Arc::ptr_eq(&c, &cache.intern_hashed(a.hash, identity, session)));
            kept.push(c);
        }
        assert_eq!(cache.interned_len(), 4);
        drop((a, kept));
        assert_eq!(cache.interned_len(), 0, "held weakly");
        // Short-lived contexts do not pile up: the map is swept as it grows.
        for i in 0..2_000 {
            cache.intern(&ann, &Session { search_path: vec![format!("s{i}")], ..Session::default() });
        }
        let len = cache.interned.lock().map(|i| i.map.len()).unwrap_or(usize::MAX);
        assert!(len <= 2 * 64 + 64, "{len} buckets");
    }
}
