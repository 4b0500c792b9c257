//! The connection state a decision depends on.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::definitions::Definitions;

/// A statement recorded by SQL-level `PREPARE`, kept per connection by the
/// caller so that a later `EXECUTE name` is judged by what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// The recorded text: the whole `PREPARE name AS ...` statement, or the
    /// bare statement.
    #[serde(with = "arc_str")]
    pub sql: Arc<str>,
    /// The `standard_conforming_strings` the text was written under.
    pub standard_conforming_strings: bool,
}

/// What a connection has that changes how SQL is read: its `search_path`
/// (and the value a reset returns to), its `standard_conforming_strings`,
/// its SQL-level prepared statements, its database user (for `$user` in
/// the search path) and the transaction block it is in (what a `COMMIT`,
/// `ROLLBACK` or `ROLLBACK TO SAVEPOINT` will set the path back to).
///
/// The caller (the gateway) keeps one per connection and applies the
/// [`SessionEffect`]s of every statement the server ran.
///
/// ```
/// use policy_core::{Engine, Policy, Session, SessionEffect};
/// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
/// // The client asked for `app` at login: the server starts there and
/// // resets to it.
/// let mut session = engine.new_session().with_startup_search_path(vec!["app".to_string()]);
/// let analysis = engine.analyze(&session, "SET search_path = public; RESET search_path");
/// for statement in &analysis.statements {
///     for effect in &statement.session_effects {
///         session.apply(effect);
///     }
/// }
/// assert_eq!(session.search_path, ["app"]);
/// # Ok::<(), policy_core::PolicyError>(())
/// ```
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Schemas searched for unqualified names, in order (`$user` allowed).
    /// Where the engine cannot tell which of two paths the server has (a
    /// change that may not have happened), the schemas of both: a name
    /// then counts as every candidate.
    pub search_path: Vec<String>,
    /// What `RESET search_path`, `SET search_path TO DEFAULT`, `RESET ALL`
    /// and `DISCARD ALL` return to: the connection's startup value (the
    /// `search_path` the client gave at login, else the policy's
    /// `settings.search_path`, which the gateway then sets), as PostgreSQL
    /// resets to the session's own start, not to the policy's. A `SET`
    /// does not change it. [`Session::with_startup_search_path`] sets it
    /// together with [`Session::search_path`].
    pub reset_search_path: Vec<String>,
    /// The server's `standard_conforming_strings` (on by default).
    pub standard_conforming_strings: bool,
    /// SQL-level prepared statements by name.
    pub prepared: BTreeMap<String, Prepared>,
    /// The database user the connection runs as, when known.
    pub user: Option<String>,
    /// The transaction block the connection is in, as the effects applied
    /// so far tell (`BEGIN` opens it, `COMMIT` and `ROLLBACK` close it);
    /// `None` outside one. It holds the paths a transaction's end returns
    /// to: see [`TransactionPaths`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<TransactionPaths>,
    /// The views of the connection's database, when the caller read them
    /// from its catalog: see [`Definitions`]. `None` judges views by name. Not
    /// serialised.
    #[serde(skip)]
    pub definitions: Option<Arc<Definitions>>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            search_path: vec!["public".to_string()],
            reset_search_path: vec!["public".to_string()],
            standard_conforming_strings: true,
            prepared: BTreeMap::new(),
            user: None,
            transaction: None,
            definitions: None,
        }
    }
}

/// The `search_path` values a transaction block's end can return to, as
/// PostgreSQL keeps them (guc.c): a `ROLLBACK` undoes every change made in
/// the transaction; a `COMMIT` keeps the last `SET` (or `RESET`) and drops
/// what `SET LOCAL` did after it; a `ROLLBACK TO SAVEPOINT` undoes the
/// changes made since the savepoint, `SET` and `SET LOCAL` alike, and a
/// `RELEASE` keeps them.
///
/// Every path here may be the union of several (see
/// [`Session::search_path`]) where the engine cannot tell which one the
/// server has.
///
/// ```
/// use policy_core::{Engine, Policy, Session};
/// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
/// let mut session = engine.new_session().with_startup_search_path(vec!["private".to_string()]);
/// let sql = "BEGIN; SET search_path = app; SAVEPOINT s; SET LOCAL search_path = public";
/// for statement in engine.analyze(&session, sql).statements {
///     for effect in &statement.session_effects {
///         session.apply(effect);
///     }
/// }
/// assert_eq!(session.search_path, ["public"]);
/// let transaction = session.transaction.as_ref().unwrap();
/// assert_eq!(transaction.start, ["private"]); // what ROLLBACK returns to
/// assert_eq!(transaction.commit, ["app"]); // what COMMIT leaves
/// assert_eq!(transaction.savepoints[0].search_path, ["app"]); // ROLLBACK TO s
/// # Ok::<(), policy_core::PolicyError>(())
/// ```
#[derive(Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TransactionPaths {
    /// The path when the transaction began: what `ROLLBACK` returns to.
    /// For a `BEGIN` inside a multi-statement string, the path at the
    /// start of the string's implicit block, which the `BEGIN` turns into
    /// a regular one (the statements before it belong to the transaction).
    pub start: Vec<String>,
    /// The path a `COMMIT` leaves: moved by `SET` and `RESET`, not by `SET
    /// LOCAL`.
    pub commit: Vec<String>,
    /// The savepoints, oldest first (a name may appear several times: the
    /// most recent one counts).
    pub savepoints: Vec<SavepointPaths>,
    /// Whether this is the implicit transaction block of a multi-statement
    /// string (see [`SessionEffect::Begin`]) rather than one `BEGIN`
    /// opened: it ends with the string.
    pub implicit: bool,
    /// Every schema any path of the transaction has named: what a
    /// `ROLLBACK TO` a savepoint the engine does not know may return to.
    pub seen: Vec<String>,
}

/// A savepoint's view of the path ([`TransactionPaths::savepoints`]).
#[derive(Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SavepointPaths {
    /// The savepoint's name, as the parser folded it.
    pub name: String,
    /// The path when the savepoint was set: what `ROLLBACK TO` returns to.
    pub search_path: Vec<String>,
    /// What a `COMMIT` would have left at that moment, which `ROLLBACK TO`
    /// also restores.
    pub commit: Vec<String>,
}

// `clone_from` reuses the target's buffers: a caller that keeps a copy
// of a session to restore (a gateway taking one before each statement
// that changes it) copies into the same memory every time.
impl Clone for Session {
    fn clone(&self) -> Session {
        let Session {
            search_path,
            reset_search_path,
            standard_conforming_strings,
            prepared,
            user,
            transaction,
            definitions,
        } = self;
        Session {
            search_path: search_path.clone(),
            reset_search_path: reset_search_path.clone(),
            standard_conforming_strings: *standard_conforming_strings,
            prepared: prepared.clone(),
            user: user.clone(),
            transaction: transaction.clone(),
            definitions: definitions.clone(),
        }
    }

    fn clone_from(&mut self, source: &Session) {
        // Destructured, so that a field added later is copied too.
        let Session {
            search_path,
            reset_search_path,
            standard_conforming_strings,
            prepared,
            user,
            transaction,
            definitions,
        } = self;
        search_path.clone_from(&source.search_path);
        reset_search_path.clone_from(&source.reset_search_path);
        *standard_conforming_strings = source.standard_conforming_strings;
        if *prepared != source.prepared {
            prepared.clone_from(&source.prepared);
        }
        user.clone_from(&source.user);
        transaction.clone_from(&source.transaction);
        definitions.clone_from(&source.definitions);
    }
}

impl Clone for TransactionPaths {
    fn clone(&self) -> TransactionPaths {
        let TransactionPaths { start, commit, savepoints, implicit, seen } = self;
        TransactionPaths {
            start: start.clone(),
            commit: commit.clone(),
            savepoints: savepoints.clone(),
            implicit: *implicit,
            seen: seen.clone(),
        }
    }

    fn clone_from(&mut self, source: &TransactionPaths) {
        let TransactionPaths { start, commit, savepoints, implicit, seen } = self;
        start.clone_from(&source.start);
        commit.clone_from(&source.commit);
        savepoints.clone_from(&source.savepoints);
        *implicit = source.implicit;
        seen.clone_from(&source.seen);
    }
}

impl Clone for SavepointPaths {
    fn clone(&self) -> SavepointPaths {
        let SavepointPaths { name, search_path, commit } = self;
        SavepointPaths { name: name.clone(), search_path: search_path.clone(), commit: commit.clone() }
    }

    fn clone_from(&mut self, source: &SavepointPaths) {
        let SavepointPaths { name, search_path, commit } = self;
        name.clone_from(&source.name);
        search_path.clone_from(&source.search_path);
        commit.clone_from(&source.commit);
    }
}

impl TransactionPaths {
    fn new(path: &[String], implicit: bool) -> TransactionPaths {
        TransactionPaths {
            start: path.to_vec(),
            commit: path.to_vec(),
            savepoints: Vec::new(),
            implicit,
            seen: path.to_vec(),
        }
    }

    fn saw(&mut self, path: &[String]) {
        self.seen = either_path(&self.seen, path);
    }
}

/// A change a statement makes to the session state the engine reads.
///
/// The analysis of a string applies them as it goes, and the caller
/// applies them to its [`Session`] with [`Session::apply`]. In a
/// decision's JSON, `session_effects` lists the changes to the path and to
/// prepared statements; the transaction control effects ([`Begin`],
/// [`Commit`], [`Rollback`], [`Savepoint`], [`Release`], [`RollbackTo`],
/// [`EndImplicitTransaction`]) and [`SetSearchPath::uncertain`] are
/// applied but not listed.
///
/// [`Begin`]: SessionEffect::Begin
/// [`Commit`]: SessionEffect::Commit
/// [`Rollback`]: SessionEffect::Rollback
/// [`Savepoint`]: SessionEffect::Savepoint
/// [`Release`]: SessionEffect::Release
/// [`RollbackTo`]: SessionEffect::RollbackTo
/// [`EndImplicitTransaction`]: SessionEffect::EndImplicitTransaction
/// [`SetSearchPath::uncertain`]: SessionEffect::SetSearchPath::uncertain
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionEffect {
    /// `SET [LOCAL] search_path`, `set_config('search_path', ...)`.
    SetSearchPath {
        /// The new path.
        path: Vec<String>,
        /// Whether it lasts only until the end of the transaction.
        local: bool,
        /// The change may not happen (or may happen later, or more than
        /// once): a `set_config` anywhere but as a plain `SELECT`'s own
        /// target. The path is then the union of the old and the new one.
        /// Not serialised.
        #[serde(skip)]
        uncertain: bool,
    },
    /// `RESET search_path`, `SET search_path TO DEFAULT`, `RESET ALL`,
    /// `DISCARD ALL`: back to the session's start value,
    /// [`Session::reset_search_path`].
    ResetSearchPath,
    /// `SET LOCAL search_path TO DEFAULT`: back to
    /// [`Session::reset_search_path`] until the transaction ends. Listed
    /// as `reset_search_path` in a decision's JSON.
    #[serde(rename(serialize = "reset_search_path"))]
    ResetSearchPathLocal,
    /// `PREPARE name AS ...`.
    Prepare {
        /// The statement name.
        name: String,
        /// The recorded statement.
        prepared: Prepared,
    },
    /// `DEALLOCATE name`, or `DEALLOCATE ALL` / `DISCARD ALL` when `None`.
    Deallocate {
        /// The statement name, or all of them.
        name: Option<String>,
    },
    /// `BEGIN`, `START TRANSACTION`: a transaction block begins (nothing
    /// happens in one already open; one that is `implicit` becomes a
    /// regular one, keeping its start).
    ///
    /// With `implicit`, the start of the implicit transaction block in
    /// which PostgreSQL runs the statements of a multi-statement string
    /// (until a `COMMIT` or `ROLLBACK` in the string, or its end: see
    /// [`SessionEffect::EndImplicitTransaction`]). It comes first among
    /// the effects of the block's first statement, and only when the block
    /// changes the path: a `SET LOCAL` then holds for the rest of the
    /// block, and a `ROLLBACK` undoes a `SET`.
    Begin {
        /// The start of a string's implicit block, not a `BEGIN`.
        implicit: bool,
    },
    /// `COMMIT`, `END`, `COMMIT AND CHAIN`, and `PREPARE TRANSACTION`
    /// (which ends the session's transaction as a commit does): the path
    /// becomes [`TransactionPaths::commit`]. With `chain`, a new
    /// transaction block begins at once.
    Commit {
        /// `AND CHAIN`.
        chain: bool,
        /// Nothing before it in the string ran in the transaction, which
        /// may have failed in an earlier one: PostgreSQL then rolls back
        /// instead. The path is then the union of
        /// [`TransactionPaths::commit`] and [`TransactionPaths::start`].
        may_have_failed: bool,
    },
    /// `ROLLBACK`, `ABORT`, `ROLLBACK AND CHAIN`: the path returns to
    /// [`TransactionPaths::start`]. With `chain`, a new transaction block
    /// begins at once.
    Rollback {
        /// `AND CHAIN`.
        chain: bool,
    },
    /// `SAVEPOINT name`.
    Savepoint {
        /// The savepoint's name.
        name: String,
    },
    /// `RELEASE [SAVEPOINT] name`: the most recent savepoint of that name
    /// and every later one are gone; what was done since stays.
    Release {
        /// The savepoint's name.
        name: String,
    },
    /// `ROLLBACK TO [SAVEPOINT] name`: back to the path (and to what a
    /// `COMMIT` would leave) when the most recent savepoint of that name
    /// was set; later savepoints are gone, that one stays.
    RollbackTo {
        /// The savepoint's name.
        name: String,
    },
    /// The end of a multi-statement string whose implicit transaction block
    /// ([`SessionEffect::Begin`] with `implicit`) is still open: the block
    /// commits. The last effect of the string's last statement.
    EndImplicitTransaction,
}

impl SessionEffect {
    /// Whether a decision's JSON lists the effect (see [`SessionEffect`]).
    pub(crate) fn is_listed(&self) -> bool {
        matches!(
            self,
            SessionEffect::SetSearchPath { .. }
                | SessionEffect::ResetSearchPath
                | SessionEffect::ResetSearchPathLocal
                | SessionEffect::Prepare { .. }
                | SessionEffect::Deallocate { .. }
        )
    }

    /// Whether the effect changes the path now.
    pub(crate) fn moves_path(&self) -> bool {
        matches!(
            self,
            SessionEffect::SetSearchPath { .. } | SessionEffect::ResetSearchPath | SessionEffect::ResetSearchPathLocal
        )
    }
}

/// `StatementFacts::session_effects` in JSON: the listed effects only.
pub(crate) mod listed {
    use serde::ser::{SerializeSeq, Serializer};

    use super::SessionEffect;

    pub(crate) fn none(effects: &[SessionEffect]) -> bool {
        !effects.iter().any(SessionEffect::is_listed)
    }

    pub(crate) fn serialize<S: Serializer>(effects: &[SessionEffect], ser: S) -> Result<S::Ok, S::Error> {
        let listed = effects.iter().filter(|e| e.is_listed());
        let mut seq = ser.serialize_seq(Some(listed.clone().count()))?;
        for effect in listed {
            seq.serialize_element(effect)?;
        }
        seq.end()
    }
}

impl Session {
    /// Reads a `search_path` setting as the server shows it
    /// (`current_setting('search_path')`, `SHOW search_path`) into the
    /// schema list the engine uses, with PostgreSQL's rules: quoted
    /// elements keep their case, others are folded to lower case.
    ///
    /// ```
    /// use policy_core::Session;
    /// assert_eq!(
    ///     Session::search_path_from_setting(r#""$user", public, "App""#),
    ///     Some(vec!["$user".to_string(), "public".to_string(), "App".to_string()]),
    /// );
    /// assert_eq!(Session::search_path_from_setting(""), Some(vec![]));
    /// ```
    pub fn search_path_from_setting(value: &str) -> Option<Vec<String>> {
        if value.trim().is_empty() {
            return Some(Vec::new());
        }
        crate::analyze::split_identifiers(value, ',')
    }

    /// The session as a connection starts with `path` as its `search_path`
    /// (a startup parameter, or what the server reports at login): both the
    /// current path and the one a reset returns to.
    ///
    /// ```
    /// use policy_core::Session;
    /// let session = Session::default().with_startup_search_path(vec!["private".to_string()]);
    /// assert_eq!(session.search_path, ["private"]);
    /// assert_eq!(session.reset_search_path, ["private"]);
    /// ```
    #[must_use]
    pub fn with_startup_search_path(mut self, path: Vec<String>) -> Session {
        self.reset_search_path.clone_from(&path);
        self.search_path = path;
        self
    }

    /// Applies one effect of a statement the server ran, in the order the
    /// statements ran. A reset returns to [`Session::reset_search_path`];
    /// the end of a transaction block returns to what
    /// [`Session::transaction`] kept (see [`TransactionPaths`]).
    ///
    /// Outside a transaction block it knows of, the session cannot see
    /// where the transaction a statement runs in ends (the end of a simple
    /// query's string, the next `Sync` of the extended protocol): a `SET
    /// LOCAL` there leaves the union of the old and the new path, until
    /// the caller reads the path back from the server.
    ///
    /// ```
    /// use policy_core::{Session, SessionEffect};
    /// let mut session = Session::default().with_startup_search_path(vec!["private".to_string()]);
    /// session.apply(&SessionEffect::Begin { implicit: false });
    /// session.apply(&SessionEffect::SetSearchPath { path: vec!["public".to_string()], local: false, uncertain: false });
    /// assert_eq!(session.search_path, ["public"]);
    /// session.apply(&SessionEffect::Rollback { chain: false });
    /// assert_eq!(session.search_path, ["private"]);
    /// assert!(session.transaction.is_none());
    /// ```
    pub fn apply(&mut self, effect: &SessionEffect) {
        match effect {
            SessionEffect::Prepare { name, prepared } => {
                self.prepared.insert(name.clone(), prepared.clone());
            }
            SessionEffect::Deallocate { name: Some(name) } => {
                self.prepared.remove(name);
            }
            SessionEffect::Deallocate { name: None } => self.prepared.clear(),
            _ => apply_to_path(&mut self.search_path, &mut self.transaction, &self.reset_search_path, effect),
        }
    }
}

impl Session {
    /// [`Session::apply`], with `spare` for the paths of a transaction
    /// that ends where it began (no change to the path, no savepoint):
    /// they are kept there at its end, and the next `BEGIN` at that same
    /// path takes them back instead of building them again. What the
    /// session becomes is what `apply` makes of it.
    pub(crate) fn apply_keeping(&mut self, effect: &SessionEffect, spare: &mut Option<TransactionPaths>) {
        let plain = |t: &TransactionPaths, path: &[String]| {
            t.savepoints.is_empty() && t.start == path && t.commit == path && t.seen == path
        };
        match effect {
            SessionEffect::Begin { implicit } if self.transaction.is_none() => {
                if let Some(mut t) = spare.take().filter(|t| plain(t, &self.search_path)) {
                    t.implicit = *implicit;
                    self.transaction = Some(t);
                    return;
                }
            }
            // Each of these returns to the one path such a transaction
            // has (a COMMIT that may have rolled back as well).
            SessionEffect::Commit { chain: false, .. } | SessionEffect::Rollback { chain: false }
                if self.transaction.as_ref().is_some_and(|t| plain(t, &self.search_path)) =>
            {
                *spare = self.transaction.take();
                return;
            }
            SessionEffect::EndImplicitTransaction
                if self.transaction.as_ref().is_some_and(|t| t.implicit && plain(t, &self.search_path)) =>
            {
                *spare = self.transaction.take();
                return;
            }
            _ => {}
        }
        self.apply(effect);
    }
}

/// What `effect` does to the path and the transaction block: the one
/// reading of [`SessionEffect`]s, for [`Session::apply`] and for the
/// analysis of a string. Effects on prepared statements are not its.
pub(crate) fn apply_to_path(
    path: &mut Vec<String>,
    transaction: &mut Option<TransactionPaths>,
    reset: &[String],
    effect: &SessionEffect,
) {
    match effect {
        SessionEffect::SetSearchPath { path: new, local, uncertain } => set(path, transaction, new, *local, *uncertain),
        SessionEffect::ResetSearchPath => set(path, transaction, reset, false, false),
        SessionEffect::ResetSearchPathLocal => set(path, transaction, reset, true, false),
        SessionEffect::Begin { implicit } => match transaction {
            None => *transaction = Some(TransactionPaths::new(path, *implicit)),
            // BEGIN turns the implicit block into a regular one; in a
            // regular one it does nothing (PostgreSQL warns).
            Some(t) => t.implicit &= *implicit,
        },
        SessionEffect::Commit { chain, may_have_failed } => {
            let Some(t) = transaction.take() else { return };
            // A COMMIT that may have rolled back leaves either path; when
            // the transaction did not move it, that is the one path.
            *path = if *may_have_failed && t.commit != t.start { either_path(&t.commit, &t.start) } else { t.commit };
            if *chain {
                *transaction = Some(TransactionPaths::new(path, false));
            }
        }
        SessionEffect::Rollback { chain } => {
            let Some(t) = transaction.take() else { return };
            *path = t.start;
            if *chain {
                *transaction = Some(TransactionPaths::new(path, false));
            }
        }
        SessionEffect::Savepoint { name } => {
            // PostgreSQL refuses savepoints outside a regular block.
            if let Some(t) = transaction.as_mut().filter(|t| !t.implicit) {
                let savepoint =
                    SavepointPaths { name: name.clone(), search_path: path.clone(), commit: t.commit.clone() };
                t.savepoints.push(savepoint);
            }
        }
        SessionEffect::Release { name } => {
            if let Some(t) = transaction.as_mut() {
                if let Some(i) = t.savepoints.iter().rposition(|s| s.name == *name) {
                    t.savepoints.truncate(i);
                }
            }
        }
        SessionEffect::RollbackTo { name } => {
            let Some(t) = transaction.as_mut() else { return };
            match t.savepoints.iter().rposition(|s| s.name == *name) {
                Some(i) => {
                    t.savepoints.truncate(i + 1);
                    if let Some(s) = t.savepoints.last() {
                        path.clone_from(&s.search_path);
                        t.commit.clone_from(&s.commit);
                    }
                }
                // A savepoint the engine does not know of (the server
                // refuses it, unless the engine missed one): any path the
                // transaction had.
                None => {
                    path.clone_from(&t.seen);
                    t.commit.clone_from(&t.seen);
                }
            }
        }
        SessionEffect::EndImplicitTransaction => {
            if transaction.as_ref().is_some_and(|t| t.implicit) {
                if let Some(t) = transaction.take() {
                    *path = t.commit;
                }
            }
        }
        SessionEffect::Prepare { .. } | SessionEffect::Deallocate { .. } => {}
    }
}

/// A `SET` of the path to `new` (`local`: `SET LOCAL`; `uncertain`: it may
/// not happen).
fn set(
    path: &mut Vec<String>,
    transaction: &mut Option<TransactionPaths>,
    new: &[String],
    local: bool,
    uncertain: bool,
) {
    match transaction {
        Some(t) => {
            if !local {
                t.commit = if uncertain { either_path(new, &t.commit) } else { new.to_vec() };
            }
            t.saw(new);
        }
        // Outside a block the session knows of, a SET LOCAL lasts until
        // an end of transaction it cannot see: both paths stay possible.
        None if local => {
            *path = either_path(new, path);
            return;
        }
        None => {}
    }
    *path = if uncertain { either_path(new, path) } else { new.to_vec() };
}

/// Whether unqualified function and operator names reach `pg_catalog`
/// before any other schema of `path`.
pub(crate) fn catalog_first(path: &[String]) -> bool {
    path.iter()
        .filter(|s| *s != "pg_temp" && !s.starts_with("pg_temp_"))
        .position(|s| s == "pg_catalog")
        .is_none_or(|i| i == 0)
}

/// The search path after a change to `new` that may or may not have
/// happened: every schema of both (an unqualified name counts as every
/// candidate, as for any name the engine cannot place), with `pg_catalog`
/// first only if it comes first in both.
pub(crate) fn either_path(new: &[String], old: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(new.len() + old.len());
    for schema in new.iter().chain(old) {
        if !out.contains(schema) {
            out.push(schema.clone());
        }
    }
    if catalog_first(&out) && !(catalog_first(new) && catalog_first(old)) {
        out.retain(|s| s != "pg_catalog");
        out.push("pg_catalog".to_string());
    }
    out
}

mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(de).map(Arc::from)
    }
}
