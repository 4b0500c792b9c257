//! The views and SQL functions of a database, as its catalog defines them:
//! what the engine needs to judge a statement by what the server really
//! reads.
//!
//! PostgreSQL's rewriter replaces a view by its query before planning, so
//! `SELECT * FROM public.v` reads whatever `v` reads; a call to a
//! `LANGUAGE sql` function runs the function's statements. A policy written
//! against tables must see that, or a view in an allowed schema launders a
//! forbidden table, and a view column renaming a masked one shows it
//! unmasked. The engine does no I/O: the caller (the gateway, with its
//! catalog connection) reads every view, materialized view and function
//! outside the system schemas once, gives them to the engine as
//! [`Definitions`], and puts them in each connection's
//! [`Session::definitions`](crate::Session::definitions).
//!
//! With the policy's `settings.views = "expand"` (the default), a statement
//! naming a view is judged with everything the view's definition reads,
//! recursively: its relations (a rule must allow them all), its functions
//! and its columns' lineage, so masks on the underlying columns cover every
//! view column derived from them. A call to a function the definitions
//! hold as SQL is judged with what its body does (its relations, its
//! class: a body that writes makes the call a write), and its result
//! derives from what the body reads; a call to a function in another
//! language, or to one the definitions do not hold, stays opaque. `views =
//! "name"` judges views and functions by name only, for policies that
//! name views on purpose.
//!
//! Definitions in `pg_catalog` and `information_schema` are the server's
//! own and are judged by name. When the caller could not read the catalog
//! it gives [`Definitions::unavailable`]: every other relation may then be
//! a view, and a statement naming one is opaque (not allowed). A
//! [`Session`](crate::Session) with no `Definitions` at all (an embedding
//! that has no catalog to give) judges views by name.
//!
//! ```
//! use std::sync::Arc;
//! use policy_core::{Definitions, Engine, Identity, Policy, Verdict, View, ViewKind};
//! let policy = Policy::from_toml_str(r#"
//!     version = 1
//!     [[rule]]
//!     name = "read-public"
//!     effect = "allow"
//!     classes = ["read"]
//!     tables = ["public.*"]
//! "#, "p.toml")?;
//! let engine = Engine::new(policy, Default::default())?;
//! let mut definitions = Definitions::new();
//! definitions.insert("public", "v", View::new(
//!     ViewKind::View,
//!     vec!["id".into(), "secret".into()],
//!     " SELECT secrets.id, secrets.secret FROM private.secrets;",
//! ));
//! let mut session = engine.new_session();
//! session.definitions = Some(Arc::new(definitions));
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

/// What a function's body is, as the engine can read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionBody {
    /// A `LANGUAGE sql` function's body text (`prosrc`): statements whose
    /// names the server resolves when the function runs, with the
    /// function's own `search_path` when it sets one, else the caller's.
    Sql(String),
    /// A SQL-standard body (`BEGIN ATOMIC ... END`, `RETURN ...`): the
    /// whole `CREATE FUNCTION` as `pg_get_functiondef(oid)` writes it on a
    /// connection whose `search_path` is empty (its names were resolved
    /// when it was created, and come qualified).
    Standard(String),
    /// Any other language (`plpgsql`, `c`, ...): the engine cannot see
    /// what it does.
    Other {
        /// The language's name.
        language: String,
    },
}

/// One function (one overload of its name), as its catalog entry gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Function {
    /// Its body.
    pub body: FunctionBody,
    /// The `search_path` its `SET search_path` clause gives it (from
    /// `proconfig`), if any.
    pub search_path: Option<Vec<String>>,
}

impl Function {
    /// A function from its catalog entry.
    pub fn new(body: FunctionBody, search_path: Option<Vec<String>>) -> Function {
        Function { body, search_path }
    }
}

/// A row-level security policy of a table (`pg_policy`), as the server
/// evaluates it on every statement that reads or writes the table while
/// row security is on: what its expressions read, the server reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RowPolicy {
    /// Its `USING` expression, as `pg_get_expr(polqual, polrelid)` writes
    /// it on a connection whose `search_path` is empty.
    pub using: Option<String>,
    /// Its `WITH CHECK` expression, written the same way.
    pub check: Option<String>,
}

impl RowPolicy {
    /// A policy from its catalog entry.
    pub fn new(using: Option<String>, check: Option<String>) -> RowPolicy {
        RowPolicy { using, check }
    }
}

/// What the caller knows about the definitions of the database a session
/// is in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "built once per catalog reading and shared behind an Arc")]
enum Known {
    /// Every view, function, rule and row policy outside the system
    /// schemas, by qualified name (a function's overloads together, a
    /// table's rules and policies together).
    Definitions {
        views: HashMap<String, View>,
        functions: HashMap<String, Vec<Function>>,
        rules: HashMap<String, Vec<String>>,
        policies: HashMap<String, Vec<RowPolicy>>,
        triggers: HashMap<String, Vec<String>>,
        catalog_relations: Vec<String>,
    },
    /// The catalog could not be read: why.
    Unavailable(String),
}

/// The views and functions of one database at one moment (see the module
/// docs).
///
/// Each `Views` has an identity of its own ([`Definitions::id`]): decisions are
/// cached per identity, so a caller that reads the catalog again builds a
/// new `Views` and decisions made with the old one are not reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definitions {
    id: u64,
    known: Known,
}

/// Identities of `Views`, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The schemas whose views are the server's own, judged by name.
pub(crate) const SYSTEM_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

impl Default for Definitions {
    fn default() -> Self {
        Definitions::new()
    }
}

impl Definitions {
    /// No views yet; add them with [`Definitions::insert`].
    pub fn new() -> Definitions {
        Definitions {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            known: Known::Definitions {
                views: HashMap::new(),
                functions: HashMap::new(),
                rules: HashMap::new(),
                policies: HashMap::new(),
                triggers: HashMap::new(),
                catalog_relations: Vec::new(),
            },
        }
    }

    /// The catalog could not be read (`reason` says why, for the notes of
    /// the statements it leaves opaque).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use policy_core::{Engine, Policy, Definitions};
    /// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
    /// let mut session = engine.new_session();
    /// session.definitions = Some(Arc::new(Definitions::unavailable("connection refused")));
    /// assert!(engine.analyze(&session, "SELECT * FROM orders").statements[0].opaque);
    /// assert!(!engine.analyze(&session, "SELECT * FROM pg_catalog.pg_class").statements[0].opaque);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn unavailable(reason: impl Into<String>) -> Definitions {
        Definitions { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), known: Known::Unavailable(reason.into()) }
    }

    /// Adds the view `schema.name`. Views of the system schemas are
    /// ignored (they are judged by name).
    pub fn insert(&mut self, schema: &str, name: &str, view: View) {
        if SYSTEM_SCHEMAS.contains(&schema) {
            return;
        }
        if let Known::Definitions { views, .. } = &mut self.known {
            views.insert(crate::analyze::qualified(schema, name), view);
        }
    }

    /// Adds an overload of the function `schema.name`. Functions of the
    /// system schemas are ignored (the engine knows the built-in ones).
    pub fn insert_function(&mut self, schema: &str, name: &str, function: Function) {
        if SYSTEM_SCHEMAS.contains(&schema) {
            return;
        }
        if let Known::Definitions { functions, .. } = &mut self.known {
            functions.entry(crate::analyze::qualified(schema, name)).or_default().push(function);
        }
    }

    /// Adds a rewrite rule of the table or view `schema.name` (other than a
    /// view's own `_RETURN` rule): the whole `CREATE RULE`, as
    /// `pg_get_ruledef(oid)` writes it on a connection whose `search_path`
    /// is empty. A statement that writes the relation is judged with what
    /// the rule's actions read and write (the server runs them with it).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use policy_core::{Definitions, Engine, Policy};
    /// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
    /// let mut definitions = Definitions::new();
    /// definitions.insert_rule(
    ///     "public",
    ///     "orders",
    ///     "CREATE RULE log AS ON INSERT TO public.orders DO ALSO INSERT INTO audit.log VALUES (new.id);",
    /// );
    /// let mut session = engine.new_session();
    /// session.definitions = Some(Arc::new(definitions));
    /// let facts = &engine.analyze(&session, "INSERT INTO orders VALUES (1)").statements[0];
    /// assert!(facts.written_tables.contains(&"audit.log".to_string()));
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn insert_rule(&mut self, schema: &str, name: &str, definition: impl Into<String>) {
        if SYSTEM_SCHEMAS.contains(&schema) {
            return;
        }
        if let Known::Definitions { rules, .. } = &mut self.known {
            rules.entry(crate::analyze::qualified(schema, name)).or_default().push(definition.into());
        }
    }

    /// The rules of a relation (`schema.name`); empty when it has none.
    pub fn rules(&self, qualified: &str) -> &[String] {
        match &self.known {
            Known::Definitions { rules, .. } => rules.get(qualified).map_or(&[], Vec::as_slice),
            Known::Unavailable(_) => &[],
        }
    }

    /// Adds a row-level security policy of the table `schema.name` (give
    /// the policies of tables whose row security is on). A statement that
    /// names the table is judged with what the policy's expressions read.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use policy_core::{Definitions, Engine, Policy, RowPolicy};
    /// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
    /// let mut definitions = Definitions::new();
    /// let using = "(owner IN ( SELECT members.name FROM private.members))";
    /// definitions.insert_row_policy("public", "docs", RowPolicy::new(Some(using.into()), None));
    /// let mut session = engine.new_session();
    /// session.definitions = Some(Arc::new(definitions));
    /// let facts = &engine.analyze(&session, "SELECT * FROM docs").statements[0];
    /// assert!(facts.tables.contains(&"private.members".to_string()));
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn insert_row_policy(&mut self, schema: &str, name: &str, policy: RowPolicy) {
        if SYSTEM_SCHEMAS.contains(&schema) {
            return;
        }
        if let Known::Definitions { policies, .. } = &mut self.known {
            policies.entry(crate::analyze::qualified(schema, name)).or_default().push(policy);
        }
    }

    /// The row-level security policies of a table (`schema.name`).
    pub fn row_policies(&self, qualified: &str) -> &[RowPolicy] {
        match &self.known {
            Known::Definitions { policies, .. } => policies.get(qualified).map_or(&[], Vec::as_slice),
            Known::Unavailable(_) => &[],
        }
    }

    /// Adds a trigger of the table `schema.name` (one the server fires, not
    /// its own internal ones): the function it runs,
    /// `function_schema.function`. A statement that writes the table runs
    /// it: a trigger function is never SQL (the server does not allow
    /// it), so the statement is opaque unless the function is built in or
    /// the policy's `settings.trusted_functions` names it.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use policy_core::{Definitions, Engine, Policy};
    /// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
    /// let mut definitions = Definitions::new();
    /// definitions.insert_trigger("public", "orders", "audit", "log_change");
    /// let mut session = engine.new_session();
    /// session.definitions = Some(Arc::new(definitions));
    /// assert!(engine.analyze(&session, "UPDATE orders SET total = 0 WHERE id = 1").statements[0].opaque);
    /// assert!(!engine.analyze(&session, "SELECT * FROM orders").statements[0].opaque);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn insert_trigger(&mut self, schema: &str, name: &str, function_schema: &str, function: &str) {
        if SYSTEM_SCHEMAS.contains(&schema) {
            return;
        }
        if let Known::Definitions { triggers, .. } = &mut self.known {
            let function = crate::analyze::qualified(function_schema, function);
            let list = triggers.entry(crate::analyze::qualified(schema, name)).or_default();
            if !list.contains(&function) {
                list.push(function);
            }
        }
    }

    /// The functions the triggers of a table (`schema.name`) run.
    pub fn triggers(&self, qualified: &str) -> &[String] {
        match &self.known {
            Known::Definitions { triggers, .. } => triggers.get(qualified).map_or(&[], Vec::as_slice),
            Known::Unavailable(_) => &[],
        }
    }

    /// Adds a relation that is in `pg_catalog` but is not the server's own
    /// (a superuser created it elsewhere and moved it there: its OID is
    /// 16384 or more). The engine takes `pg_catalog`, which the server
    /// searches first, as holding only names beginning with `pg_`; a
    /// statement naming a relation of the same name elsewhere is opaque,
    /// since the server may read this one instead.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use policy_core::{Definitions, Engine, Policy};
    /// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
    /// let mut definitions = Definitions::new();
    /// definitions.insert_catalog_relation("orders");
    /// let mut session = engine.new_session();
    /// session.definitions = Some(Arc::new(definitions));
    /// assert!(engine.analyze(&session, "SELECT * FROM orders").statements[0].opaque);
    /// # Ok::<(), policy_core::PolicyError>(())
    /// ```
    pub fn insert_catalog_relation(&mut self, name: &str) {
        if let Known::Definitions { catalog_relations, .. } = &mut self.known {
            catalog_relations.push(crate::analyze::qualified("x", name).split_off(2));
        }
    }

    /// Whether `qualified` (as facts write it) names a relation outside
    /// `pg_catalog` whose name a relation in `pg_catalog` that is not the
    /// server's own also has.
    pub(crate) fn shadowed_by_catalog(&self, qualified: &str) -> bool {
        match &self.known {
            Known::Definitions { catalog_relations, .. } => catalog_relations.iter().any(|name| {
                qualified
                    .strip_suffix(name.as_str())
                    .is_some_and(|schema| schema.ends_with('.') && schema != "pg_catalog.")
            }),
            Known::Unavailable(_) => false,
        }
    }

    /// Every overload of the function a qualified name (`schema.name`)
    /// names; empty when there is none.
    pub fn functions(&self, qualified: &str) -> &[Function] {
        match &self.known {
            Known::Definitions { functions, .. } => functions.get(qualified).map_or(&[], Vec::as_slice),
            Known::Unavailable(_) => &[],
        }
    }

    /// The view a qualified name (as facts write it: `schema.name`) is, if
    /// it is one.
    pub fn get(&self, qualified: &str) -> Option<&View> {
        match &self.known {
            Known::Definitions { views, .. } => views.get(qualified),
            Known::Unavailable(_) => None,
        }
    }

    /// How many views it holds (functions aside).
    pub fn len(&self) -> usize {
        match &self.known {
            Known::Definitions { views, .. } => views.len(),
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
            Known::Definitions { .. } => None,
            Known::Unavailable(reason) => Some(reason),
        }
    }

    /// This set's identity, unique in the process.
    pub fn id(&self) -> u64 {
        self.id
    }
}
