//! # policy-core: the Portcullis decision engine
//!
//! Portcullis stands between database clients (people, and AI agents acting
//! for people) and PostgreSQL. This crate is its judgement, with no I/O of
//! its own: no sockets, files, clock or environment. The gateway owns the
//! connections and hands the engine text; the engine hands back answers.
//!
//! ```text
//!   client ──SQL──▶ pg-proxy ──(identity, session, sql)──▶ Engine::decide ──▶ Decision
//!                      │                                                      allow / deny /
//!                      │◀─────────────────────────────────────────────────── require_approval
//!                      └──SQL (if allowed)──▶ PostgreSQL
//! ```
//!
//! * [`Policy::from_toml_str`] loads and validates a policy (errors carry
//!   file, line and column);
//! * [`Engine::new`] compiles it once; the engine is `Send + Sync` and cheap
//!   to clone;
//! * [`Engine::decide`] parses a SQL string with PostgreSQL's own grammar
//!   (libpg_query), reduces each statement to [`StatementFacts`] and matches
//!   them against the rules. It returns a [`Decision`], never an error:
//!   whatever the engine cannot read is not allowed.
//!
//! ```
//! use policy_core::{Engine, Identity, Policy, Verdict};
//! let policy = Policy::from_toml_str(r#"
//!     version = 1
//!     [[rule]]
//!     name = "agents-read"
//!     effect = "allow"
//!     groups = ["ai-agents"]
//!     classes = ["read"]
//!     tables = ["public.*", "!public.secrets"]
//!     max_rows = 1000
//! "#, "policy.toml")?;
//! let engine = Engine::new(policy, Default::default())?;
//! let agent = Identity::new("build-bot").with_groups(["ai-agents"]);
//! let session = engine.new_session();
//!
//! let d = engine.decide(&agent, &session, "SELECT id, total FROM orders WHERE id = 7");
//! assert_eq!(d.verdict, Verdict::Allow);
//! assert_eq!(d.max_rows, 1000);
//!
//! // A CTE named like an allowed table does not hide the real one.
//! let d = engine.decide(&agent, &session, "WITH orders AS (SELECT * FROM secrets) SELECT * FROM orders");
//! assert_eq!(d.verdict, Verdict::Deny);
//!
//! // Text the grammar rejects is never allowed.
//! let d = engine.decide(&agent, &session, "SELEC * FROM orders");
//! assert_eq!(d.verdict, Verdict::Deny);
//! # Ok::<(), policy_core::PolicyError>(())
//! ```
//!
//! ## Resource usage
//!
//! Deciding costs one parse by libpg_query plus one walk of the tree; see
//! `benches/README.md` for measured ratios. Repeated statements are served
//! from a bounded decision cache (8 MiB by default, [`EngineOptions`]),
//! keyed on every input the decision reads.

mod analyze;
mod cache;
mod decision;
mod engine;
mod fingerprint;
mod identity;
mod policy;
mod rules;
mod session;

pub use analyze::{Analysis, Class, OutputColumn, StatementFacts};
pub use cache::{DEFAULT_CACHE_BYTES, MAX_CACHED_SQL};
pub use decision::{Decision, StatementDecision, Verdict};
pub use engine::{Engine, EngineOptions, Keys, TestOutcome};
pub use identity::{Actor, Identity};
pub use policy::{
    Detector, DetectorKind, Effect, IdentityConfig, Location, Mask, Patterns, Policy, PolicyError, PolicyTest, Rule,
    Settings, Strategy,
};
pub use session::{Prepared, Session, SessionEffect};
