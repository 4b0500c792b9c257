//! The views of a database, as its catalog defines them: what the engine
//! needs to judge a statement by the relations the server really reads.
//!
//! PostgreSQL's rewriter replaces a view by its query before planning, so
//! `SELECT * FROM public.v` reads whatever `v` reads. A policy written
//! against tables must see that, or a view in an allowed schema launders a
//! forbidden table, and a view column renaming a masked one shows it
//! unmasked. The engine does no I/O: the caller (the gateway, with its
//! catalog connection) reads every view and materialized view of the
//! database once, gives them to the engine as a [`Views`], and puts it in
//! each connection's [`Session::views`](crate::Session::views).
//!
//! With the policy's `settings.views = "expand"` (the default), a statement
//! naming a view is judged with everything the view's definition reads,
//! recursively: its relations (a rule must allow them all), its functions
//! (a function the engine cannot see into makes the statement opaque), and
//! its columns' lineage, so masks on the underlying columns cover every
//! view column derived from them. `views = "name"` judges views by name
//! only, for policies that name views on purpose.
//!
//! Views of `pg_catalog` and `information_schema` are the server's own and
//! are judged by name. When the caller could not read the catalog it gives
//! [`Views::unavailable`]: every other relation may then be a view, and a
//! statement naming one is opaque (not allowed). A [`Session`] with no
//! `Views` at all (an embedding that has no catalog to give) judges views
//! by name.
//!
//! ```
//! use std::sync::Arc;
//! use policy_core::{Engine, Identity, Policy, Verdict, View, ViewKind, Views};
//! let policy = Policy::from_toml_str(r#"
//!     version = 1
//!     [[rule]]
//!     name = "read-public"
//!     effect = "allow"
//!     classes = ["read"]
//!     tables = ["public.*"]
//! "#, "p.toml")?;
//! let engine = Engine::new(policy, Default::default())?;
//! let mut views = Views::new();
//! views.insert("public", "v", View::new(
//!     ViewKind::View,
//!     vec!["id".into(), "secret".into()],
//!     " SELECT secrets.id, secrets.secret FROM private.secrets;",
//! ));
//! let mut session = engine.new_session();
//! session.views = Some(Arc::new(views));
//! let d = engine.decide(&Identity::new("agent"), &session, "SELECT * FROM v");
//! assert_eq!(d.verdict, Verdict::Deny);
//! assert!(d.statements[0].facts.tables.contains(&"private.secrets".to_string()));
//! # Ok::<(), policy_core::PolicyError>(())
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// What kind of relation a [`View`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewKind {
    /// A view (`relkind = 'v'`): the server runs its query on every read.
    View,
    /// A materialized view (`relkind = 'm'`): it holds what its query read
    /// when it was last refreshed, which is the same data.
    Materialized,
}

/// One view, as its catalog entry gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct View {
    /// Whether it is a view or a materialized view.
    pub kind: ViewKind,
    /// Its columns' names, in order (`pg_attribute`, `attnum > 0`).
    pub columns: Vec<String>,
    /// Its query, as `pg_get_viewdef(oid)` writes it on a connection whose
    /// `search_path` is empty: every relation and function outside
    /// `pg_catalog` is schema-qualified.
    pub definition: String,
}

impl View {
    /// A view from its catalog entry.
    pub fn new(kind: ViewKind, columns: Vec<String>, definition: impl Into<String>) -> View {
        View { kind, columns, definition: definition.into() }
    }
}

/// What the caller knows about the views of the database a session is in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    /// Every view outside the system schemas, by qualified name.
    Views(HashMap<String, View>),
    /// The catalog could not be read: why.
    Unavailable(String),
}

/// The views of one database at one moment (see the module docs).
///
/// Each `Views` has an identity of its own ([`Views::id`]): decisions are
/// cached per identity, so a caller that reads the catalog again builds a
/// new `Views` and decisions made with the old one are not reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Views {
    id: u64,
    known: Known,
}

/// Identities of `Views`, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The schemas whose views are the server's own, judged by name.
pub(crate) const SYSTEM_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

impl Default for Views {
    fn default() -> Self {
        Views::new()
    }
}

impl Views {
    /// No views yet; add them with [`Views::insert`].
    pub fn new() -> Views {
        Views { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), known: Known::Views(HashMap::new()) }
    }

    /// The catalog could not be read (`reason` says why, for the notes of
    /// the statements it leaves opaque).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use policy_core::{Engine, Policy, Views};
    /// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
    /// let mut session = engine.new_session();
    /// session.views = Some(Arc::new(Views::unavailable("connection refused")));
    /// assert!(engine.analyze(&session, "SELECT * FROM orders").statements[0].opaque);
    /// assert!(!engine.analyze(&session, "SELECT * FROM pg_catalog.pg_class").statements[0].opaque);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn unavailable(reason: impl Into<String>) -> Views {
        Views { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), known: Known::Unavailable(reason.into()) }
    }

    /// Adds the view `schema.name`. Views of the system schemas are
    /// ignored (they are judged by name).
    pub fn insert(&mut self, schema: &str, name: &str, view: View) {
        if SYSTEM_SCHEMAS.contains(&schema) {
            return;
        }
        if let Known::Views(map) = &mut self.known {
            map.insert(crate::analyze::qualified(schema, name), view);
        }
    }

    /// The view a qualified name (as facts write it: `schema.name`) is, if
    /// it is one.
    pub fn get(&self, qualified: &str) -> Option<&View> {
        match &self.known {
            Known::Views(map) => map.get(qualified),
            Known::Unavailable(_) => None,
        }
    }

    /// How many views it holds.
    pub fn len(&self) -> usize {
        match &self.known {
            Known::Views(map) => map.len(),
            Known::Unavailable(_) => 0,
        }
    }

    /// Whether it holds no view.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why the catalog could not be read, when it could not.
    pub fn unavailable_reason(&self) -> Option<&str> {
        match &self.known {
            Known::Views(_) => None,
            Known::Unavailable(reason) => Some(reason),
        }
    }

    /// This set's identity, unique in the process.
    pub fn id(&self) -> u64 {
        self.id
    }
}
