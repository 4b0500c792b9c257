//! The connection state a decision depends on.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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
/// its SQL-level prepared statements and its database user (for `$user` in
/// the search path).
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Schemas searched for unqualified names, in order (`$user` allowed).
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
}

impl Default for Session {
    fn default() -> Self {
        Session {
            search_path: vec!["public".to_string()],
            reset_search_path: vec!["public".to_string()],
            standard_conforming_strings: true,
            prepared: BTreeMap::new(),
            user: None,
        }
    }
}

/// A change a statement makes to the session state the engine reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum SessionEffect {
    /// `SET [LOCAL] search_path`, `set_config('search_path', ...)`.
    SetSearchPath {
        /// The new path.
        path: Vec<String>,
        /// Whether it lasts only until the end of the transaction.
        local: bool,
    },
    /// `RESET search_path`, `SET search_path TO DEFAULT`, `RESET ALL`,
    /// `DISCARD ALL`: back to the session's start value,
    /// [`Session::reset_search_path`].
    ResetSearchPath,
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

    /// Applies one effect of a statement the server ran. A reset returns
    /// to [`Session::reset_search_path`].
    pub fn apply(&mut self, effect: &SessionEffect) {
        match effect {
            SessionEffect::SetSearchPath { path, .. } => self.search_path.clone_from(path),
            SessionEffect::ResetSearchPath => self.search_path.clone_from(&self.reset_search_path),
            SessionEffect::Prepare { name, prepared } => {
                self.prepared.insert(name.clone(), prepared.clone());
            }
            SessionEffect::Deallocate { name: Some(name) } => {
                self.prepared.remove(name);
            }
            SessionEffect::Deallocate { name: None } => self.prepared.clear(),
        }
    }
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
