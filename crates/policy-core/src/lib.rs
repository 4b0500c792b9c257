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
//! ## Identity: people and the agents acting for them
//!
//! [`verify_jwt`] checks an OIDC token against a [`Jwks`] (keys parsed once;
//! unusable ones skipped with a diagnostic) and maps its claims with the
//! policy's `[identity]` section ([`IdentityConfig::rules`]). The algorithm
//! comes from the key the `kid` selects, never from the header alone; time
//! is an argument. An [`Identity`] names the subject and, when the token
//! carries an RFC 8693 `act` claim (or a configured client id claim such as
//! `azp`), the [`Actor`]. Rules say who they apply to with `groups`,
//! `subjects` and `actors`: `actors = ["copilot-*"]` matches an agent by
//! its subject or client id, `actors = ["*"]` any agent acting for the
//! subject, and no `actors` condition anyone, with or without an agent. So
//! one policy can let Alice delete with a WHERE while an agent acting for
//! Alice needs approval. Decisions name both.
//!
//! ## Masking
//!
//! [`Engine::masker`] plans the masking of one statement's result from the
//! columns the server describes and the statement's lineage
//! ([`OutputColumn`]); [`RowMasker::mask_row`] applies it to each row, and
//! leaves rows with no masked column untouched. See the `mask` strategies on
//! [`Masking`]. For the data of a `COPY ... TO STDOUT`,
//! [`Engine::copy_out_plan`] names the columns, builds the masker and says
//! whether the layout can be masked at all ([`CopyOutPlan`]).
//!
//! ## Finer readings (beyond `docs/policy.md`)
//!
//! - **Names.** Unqualified relations resolve through the session's
//!   `search_path`; a name starting with `pg_` is also a `pg_catalog`
//!   candidate (every system relation's name starts so). A name that could
//!   be in several schemas counts as all of them. `$user` stands for
//!   [`Session::user`] (kept literally when unknown). `pg_temp` is never a
//!   candidate for unqualified names: it holds only the session's own
//!   temporary tables, and creating one is `ddl`. An empty search path makes
//!   unqualified names opaque. Within one string, a `SET search_path`
//!   applies to the statements after it; a `set_config('search_path', ...)`
//!   does when it is a plain `SELECT`'s own target (it runs exactly once),
//!   and anywhere else (a `CASE` branch, a `WHERE`, a plain `EXPLAIN`, a
//!   `PREPARE` body: it may run never, later or many times) the later
//!   statements are read with the schemas of both paths. A `SET` inside
//!   `ALTER ROLE/DATABASE/SYSTEM` or a function's `SET` clause does not
//!   change this session's path.
//! - **Transactions and the path.** The path follows PostgreSQL's rules for
//!   settings in transactions: `ROLLBACK` (`ABORT`, `AND CHAIN`) returns to
//!   the path the transaction began with; `COMMIT` (`END`, `AND CHAIN`,
//!   `PREPARE TRANSACTION`) keeps the last `SET` or `RESET` and drops what
//!   `SET LOCAL` did; `ROLLBACK TO SAVEPOINT` returns to the path (and to
//!   what a `COMMIT` would keep) when the most recent savepoint of that
//!   name was set; `RELEASE` keeps what was done. The statements of a
//!   multi-statement string outside a transaction block run in one
//!   implicit block, as the server runs them: a `SET LOCAL` holds until
//!   the string's end or a `COMMIT` in it, a `ROLLBACK` in it undoes a
//!   `SET` made earlier in the string, and a `BEGIN` in it turns the block
//!   into a regular one that began with the string. A transaction the
//!   string did not begin may have failed in an earlier string (the server
//!   then turns `COMMIT` into `ROLLBACK`): a `COMMIT` that is the string's
//!   first statement leaves the schemas of both paths. The session carries
//!   the transaction between strings ([`Session::transaction`], moved by
//!   [`Session::apply`]), so a `COMMIT` in a later string returns to the
//!   right path; a `ROLLBACK TO` a savepoint the engine does not know of
//!   leaves every schema the transaction's paths named.
//! - **Functions.** Built-in functions and operators are known by name (the
//!   list comes from PostgreSQL's bootstrap catalog). Calling anything else,
//!   or a built-in name qualified with another schema, or an unqualified
//!   name when the search path puts a schema before `pg_catalog`, makes the
//!   statement opaque: its body runs SQL the engine cannot see. Policies can
//!   vouch for functions with `settings.trusted_functions`.
//! - **Commands.** `command` is PostgreSQL's tag (an `EXECUTE` reports the
//!   tag of what it runs, as the server does). Rules with `commands` match on
//!   [`StatementFacts::commands`], every command a statement runs or
//!   prepares, with the same asymmetry as tables: `WITH d AS (DELETE ...)
//!   SELECT` runs `DELETE` too, and `EXPLAIN ANALYZE DELETE` is a `DELETE`.
//! - **Classes** where §3 leaves room: `SELECT ... FOR UPDATE` and `NOTIFY`
//!   are `write`; `SHOW` is `read`; `RESET ALL` is `dcl` (it resets the
//!   role); changing `client_encoding` is `admin` like
//!   `standard_conforming_strings` (both change how later bytes are read);
//!   `PREPARE TRANSACTION`/`COMMIT PREPARED` are `admin`; `LOCK` is `admin`.
//! - **Statements with no tables** satisfy an allow rule's `tables`
//!   condition (every one of none is covered): `SELECT 1` is a read any read
//!   rule allows.
//! - **Several allow rules** matching one statement: the tightest `max_rows`
//!   of all of them applies; the first in file order is named.
//! - **The gateway's duty.** The engine assumes the server's `search_path`
//!   starts at [`Session::search_path`] and resets (`RESET`, `SET ... TO
//!   DEFAULT`, `RESET ALL`, `DISCARD ALL`) to [`Session::reset_search_path`]:
//!   the client's startup value, or `settings.search_path` when it gave none
//!   (the gateway sets it as a startup parameter, so the server's reset
//!   value is the same; [`Session::with_startup_search_path`] sets both).
//!   It also assumes the gateway applies every [`SessionEffect`] of the
//!   statements the server ran, in order (the transaction control effects
//!   too: they keep [`Session::transaction`]), and reads the settings back
//!   after a statement that
//!   [`changes_settings`](StatementFacts::changes_settings) (or that
//!   [`reverts_settings`](StatementFacts::reverts_settings) in a
//!   transaction where one did): those flags come from the parse tree, so
//!   the gateway need not read command tags. Within a string the analysis
//!   needs no read-back. The effects to apply are those of the statements
//!   the server ran: after an error it skips the rest of the string, and
//!   applying the effects of skipped statements leaves the session in a
//!   transaction the server is not in (or out of one it is in), whose end
//!   a later string would then be judged by. A caller that applies a
//!   string's effects before it runs corrects that when a statement fails:
//!   it goes back to the session from before the string and applies the
//!   effects of the statements that completed, or at least sets
//!   [`Session::transaction`] to `None` when the server reports itself
//!   idle (`ReadyForQuery` status `I`).
//!
//! ## Known limits
//!
//! - Outside a transaction block it knows of, [`Session::apply`] cannot see
//!   where the server's transaction ends (the end of a single-statement
//!   string, the next `Sync` of the extended protocol): a `SET LOCAL` there
//!   leaves the schemas of both paths, and a `ROLLBACK` there (of `SET`s
//!   made since the last `Sync`) is not followed. Within one
//!   multi-statement string the analysis follows both exactly; between
//!   strings the gateway's read-back gives the server's path.
//! - Views and SQL functions are judged by what they read only when the
//!   caller gives the session the database's [`Definitions`] (the gateway
//!   does): without them a view in an allowed schema that selects from a
//!   forbidden table is judged by its name, and a call to a function
//!   outside `pg_catalog` is opaque unless `settings.trusted_functions`
//!   vouches for it. Functions in other languages are opaque either way.
//! - PostgreSQL's functional notation (`t.f` meaning `f(t)` when `t` has no
//!   column `f`) is taken as a whole-row read when `f` is a built-in that
//!   takes a row, and as opaque when the [`Definitions`] hold a function
//!   `f`; without them, a function of the database in that position is not
//!   seen, and neither are overloads of built-in names created in other
//!   schemas (with them, an unqualified built-in name that a function of a
//!   schema on the path also has is followed into that function, or opaque
//!   when it is not SQL); both require an earlier `CREATE FUNCTION`, which a
//!   policy should keep from agents.
//! - A statement nesting deeper than about 50 levels of expressions or
//!   subqueries exceeds the protobuf decoder's recursion limit; it is
//!   `unknown`, so `on_parse_error` applies.
//!
//! ## Resource usage
//!
//! Deciding costs one parse by libpg_query plus one walk of the tree; see
//! `benches/README.md` for measured ratios. Repeated statements are served
//! from a bounded decision cache (8 MiB by default, [`EngineOptions`]),
//! keyed on every input the decision reads. A SELECT, INSERT, UPDATE or
//! DELETE whose decision read no constant's value is cached by its shape
//! (the text with each constant replaced by its kind, found by PostgreSQL's
//! own scanner), so `... WHERE aid = 17` and `... WHERE aid = 42` share one
//! decision for the cost of a scan instead of a parse. A text that differs
//! from one already scanned only in the values of integer constants (the
//! next `aid`) does not need the scan either: its shape comes from what the
//! scanner said about the first (a template of its digit runs, each a whole
//! 32-bit integer constant free to change or bytes that must be the same).
//! Decisions that read a constant (tautology folding, `set_config`,
//! `nextval('seq')`, a rule's `pattern`) are cached for their exact text
//! only. A caller that decides many statements for one connection (a
//! gateway) keeps its caller and session in a [`Context`] and calls
//! [`Engine::decide_in`]: the cache's key for the two is made once per
//! change of the session and shared by every connection in the same state
//! (a hit compares a pointer), and a cached decision is not copied. The
//! context also remembers the last 16 shapes the cache answered it for,
//! with their templates: the next text of one of them, in the same session
//! state, is answered by the context alone (the same template, the same
//! decision; no hashing, no lock), which costs each connection about a
//! kilobyte once it has run that many shapes. It keeps the last 8 texts
//! without digits the cache answered as themselves (`BEGIN`, `COMMIT`,
//! statements without constants; up to 512 bytes each) the same way.
//!
//! The analysis's stack use is bounded by the depth of the tree, and the
//! depth is bounded: pg_query's decoder refuses trees more than 100
//! protobuf messages deep, and the engine refuses statements more than 100
//! nodes deep itself before any recursive walk (both are denies). Every
//! statement is decided within a 2 MiB thread stack, tokio's default for
//! its workers: at most about 200 KiB in a release build, 1.8 MiB in a
//! debug one, most of which is pg_query decoding the deepest trees
//! (`tests/deep_statements.rs` measures it). A stack overflow would abort
//! the whole process, not one statement; give an embedding's threads room.
//!
//! `pg_query` notes: `scan_tokens` builds a slice from a null pointer when
//! a text has no token, so blank texts are never scanned; `float(p)` picks
//! a type from a constant and `U&` names depend on their `UESCAPE`
//! constant, so texts holding either are cached for their exact text only.

mod analyze;
mod cache;
mod context;
mod copy;
mod decision;
mod definitions;
mod detect;
mod engine;
mod fingerprint;
mod identity;
mod mask;
mod policy;
mod rules;
mod session;
mod shape;

pub use analyze::{
    Analysis, Class, Clause, ClauseColumn, GatewayCommand, OutputColumn, RowLayout, StatementFacts, WholeRow,
    MAX_REASON_BYTES,
};
pub use cache::{CacheStats, DEFAULT_CACHE_BYTES, MAX_CACHED_SQL, SEEN_ONCE_LIMIT};
pub use context::Context;
pub use copy::{CopyLayout, CopyOutAction, CopyOutPlan, CsvLayout};
pub use decision::{ApprovalTerms, Decision, SelfApproval, StatementDecision, Verdict};
pub use definitions::{Definitions, Function, FunctionBody, RowPolicy, View, ViewKind};
pub use detect::{DetectorMatch, Detectors};
pub use engine::{Engine, EngineOptions, Keys, TestOutcome};
pub use identity::{verify_jwt, Actor, Identity, IdentityError, IdentityRules, Jwks, MAX_LEEWAY_SECONDS};
pub use mask::{carries_no_values, ColumnInfo, Masking, MessageScrubber, RowMasker, Scrubbed, REDACTED};
pub use policy::{
    Detector, DetectorKind, Effect, IdentityConfig, Location, Mask, Patterns, Policy, PolicyError, PolicyTest, Rule,
    Settings, Strategy, ViewReading,
};
pub use session::{Prepared, SavepointPaths, Session, SessionEffect, TransactionPaths};
