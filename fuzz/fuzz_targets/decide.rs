//! Fuzz target `decide`: arbitrary SQL judged against a small generated
//! policy, for a generated caller in a generated session.
//!
//! The policy is built from a grammar (effects, groups, classes, commands,
//! table and function globs from short fixed lists), rendered to TOML and
//! loaded with `Policy::from_toml_str`, so the loader is on the path too. The
//! SQL text is the rest of the input (`arbitrary_take_rest`): a seed file
//! holding SQL ends up, after a few bytes of structure, as the statement.
//!
//! Invariants checked on every input (a violation panics, which libFuzzer
//! reports as a crash):
//!
//! 1. `Decision::to_json()` is a JSON object with a `"verdict"` key naming
//!    the verdict, and reads back as the same `Decision` (spans aside: they
//!    are not serialised);
//! 2. the decision's verdict is the strictest of its statements' verdicts
//!    (deny > require_approval > allow), allow when there is no statement;
//! 3. a statement of class `unknown` is never allowed;
//! 4. an opaque statement is never allowed by a rule with a `tables` (or
//!    `functions`) condition; a statement's named rule exists and has the
//!    effect of the statement's verdict;
//! 5. deciding the same thing twice (the second time from the cache) gives
//!    an equal decision; `Engine::analyze` gives the facts `decide` used;
//! 6. the cache is invisible: an engine with the cache turned off decides
//!    the same, also for a second session that differs only in its
//!    prepared statements, asked after the first one filled the cache, and
//!    for texts that differ from it only in their digits (whose shape the
//!    cache may find without the scanner, from a template).
//!
//! A panic inside policy-core, which `Engine::decide` would catch and turn
//! into an "internal error" deny, is reported too: libfuzzer-sys's panic
//! hook aborts on every panic, caught or not, with its message and stack.
//!
//! `PORTCULLIS_FUZZ_DEBUG=1 fuzz/target/*/release/decide FILE` prints what an
//! input decodes to (policy text, caller, session, SQL, decision).

#![no_main]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use policy_core::{
    Actor, Class, Decision, Engine, EngineOptions, Identity, Keys, Policy, Prepared, Session, SessionEffect, Verdict,
};

const MAX_RULES: usize = 6;
const MAX_LIST: usize = 4;

// ------------------------------------------------------------------ grammar

#[derive(Debug, Clone, Copy, Arbitrary)]
enum EffectSpec {
    Allow,
    Deny,
    RequireApproval,
}

impl EffectSpec {
    fn toml(self) -> &'static str {
        match self {
            EffectSpec::Allow => "allow",
            EffectSpec::Deny => "deny",
            EffectSpec::RequireApproval => "require_approval",
        }
    }
}

/// Groups, used both by rules and by callers so that they meet.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum GroupSpec {
    AiAgents,
    Developers,
    Dba,
    PiiReaders,
}

impl GroupSpec {
    fn name(self) -> &'static str {
        match self {
            GroupSpec::AiAgents => "ai-agents",
            GroupSpec::Developers => "developers",
            GroupSpec::Dba => "dba",
            GroupSpec::PiiReaders => "pii-readers",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum SubjectSpec {
    Alice,
    Bob,
    BuildBot,
    Empty,
}

impl SubjectSpec {
    fn name(self) -> &'static str {
        match self {
            SubjectSpec::Alice => "alice@example.com",
            SubjectSpec::Bob => "bob",
            SubjectSpec::BuildBot => "build-bot",
            SubjectSpec::Empty => "",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum ActorName {
    Copilot7,
    Etl,
    Other,
}

impl ActorName {
    fn name(self) -> &'static str {
        match self {
            ActorName::Copilot7 => "copilot-7",
            ActorName::Etl => "etl-agent",
            ActorName::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum ActorPattern {
    Any,
    Copilot,
    NotEtl,
    Exact,
}

impl ActorPattern {
    fn glob(self) -> &'static str {
        match self {
            ActorPattern::Any => "*",
            ActorPattern::Copilot => "copilot-*",
            ActorPattern::NotEtl => "!etl-*",
            ActorPattern::Exact => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum ClassSpec {
    Read,
    Write,
    Ddl,
    Dcl,
    Admin,
    Procedural,
    Transaction,
    Session,
    Unknown,
}

impl ClassSpec {
    fn toml(self) -> &'static str {
        match self {
            ClassSpec::Read => "read",
            ClassSpec::Write => "write",
            ClassSpec::Ddl => "ddl",
            ClassSpec::Dcl => "dcl",
            ClassSpec::Admin => "admin",
            ClassSpec::Procedural => "procedural",
            ClassSpec::Transaction => "transaction",
            ClassSpec::Session => "session",
            ClassSpec::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum CommandSpec {
    Select,
    Insert,
    Update,
    Delete,
    DropTable,
    Execute,
    Explain,
    Copy,
    LowerSelect,
    CreateTable,
}

impl CommandSpec {
    fn toml(self) -> &'static str {
        match self {
            CommandSpec::Select => "SELECT",
            CommandSpec::Insert => "INSERT",
            CommandSpec::Update => "UPDATE",
            CommandSpec::Delete => "DELETE",
            CommandSpec::DropTable => "DROP TABLE",
            CommandSpec::Execute => "EXECUTE",
            CommandSpec::Explain => "EXPLAIN",
            CommandSpec::Copy => "COPY",
            CommandSpec::LowerSelect => " select ",
            CommandSpec::CreateTable => "CREATE TABLE",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum TablePattern {
    PublicAll,
    NotSecrets,
    CatalogAll,
    All,
    Orders,
    NotAuthid,
    InformationSchema,
    AppAll,
    AnySecrets,
    NotAll,
}

impl TablePattern {
    fn glob(self) -> &'static str {
        match self {
            TablePattern::PublicAll => "public.*",
            TablePattern::NotSecrets => "!public.secrets",
            TablePattern::CatalogAll => "pg_catalog.*",
            TablePattern::All => "*",
            TablePattern::Orders => "public.orders",
            TablePattern::NotAuthid => "!pg_catalog.pg_authid",
            TablePattern::InformationSchema => "information_schema.*",
            TablePattern::AppAll => "app.*",
            TablePattern::AnySecrets => "*.secrets",
            TablePattern::NotAll => "!*",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum FunctionPattern {
    All,
    CatalogAll,
    Sleep,
    NotReadFile,
    Lower,
    PublicAll,
    NotDblink,
}

impl FunctionPattern {
    fn glob(self) -> &'static str {
        match self {
            FunctionPattern::All => "*",
            FunctionPattern::CatalogAll => "pg_catalog.*",
            FunctionPattern::Sleep => "pg_sleep",
            FunctionPattern::NotReadFile => "!pg_read_file",
            FunctionPattern::Lower => "lower",
            FunctionPattern::PublicAll => "public.*",
            FunctionPattern::NotDblink => "!*dblink*",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum RegexSpec {
    Secret,
    StartsSelect,
    Sleep,
    Semicolon,
}

impl RegexSpec {
    fn toml(self) -> &'static str {
        match self {
            RegexSpec::Secret => "(?i)secret",
            RegexSpec::StartsSelect => "^\\s*(?i:select)",
            RegexSpec::Sleep => "pg_sleep",
            RegexSpec::Semicolon => ";",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum SearchPathSpec {
    Public,
    AppPublic,
    UserPublic,
    Catalog,
    Empty,
    PublicTemp,
    Secrets,
}

impl SearchPathSpec {
    fn schemas(self) -> &'static [&'static str] {
        match self {
            SearchPathSpec::Public => &["public"],
            SearchPathSpec::AppPublic => &["app", "public"],
            SearchPathSpec::UserPublic => &["$user", "public"],
            SearchPathSpec::Catalog => &["pg_catalog"],
            SearchPathSpec::Empty => &[],
            SearchPathSpec::PublicTemp => &["public", "pg_temp"],
            SearchPathSpec::Secrets => &["secrets", "public"],
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum UserSpec {
    App,
    Postgres,
    Secrets,
}

impl UserSpec {
    fn name(self) -> &'static str {
        match self {
            UserSpec::App => "app",
            UserSpec::Postgres => "postgres",
            UserSpec::Secrets => "secrets",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum PreparedName {
    Q1,
    P,
    Upper,
}

impl PreparedName {
    fn name(self) -> &'static str {
        match self {
            PreparedName::Q1 => "q1",
            PreparedName::P => "p",
            // What the parser makes of an unquoted `EXECUTE Q` is `q`; a
            // session could still hold a name with capitals.
            PreparedName::Upper => "Q",
        }
    }
}

#[derive(Debug, Arbitrary)]
struct SettingsSpec {
    default: Option<EffectSpec>,
    /// `Allow` makes the loader refuse the policy (fine: nothing to check).
    on_parse_error: Option<EffectSpec>,
    search_path: Option<SearchPathSpec>,
    max_rows: Option<u16>,
    trusted_functions: Vec<FunctionPattern>,
}

#[derive(Debug, Arbitrary)]
struct RuleSpec {
    effect: EffectSpec,
    groups: Vec<GroupSpec>,
    subjects: Vec<SubjectSpec>,
    actors: Vec<ActorPattern>,
    classes: Vec<ClassSpec>,
    commands: Vec<CommandSpec>,
    tables: Vec<TablePattern>,
    functions: Vec<FunctionPattern>,
    where_missing: bool,
    limit_missing: bool,
    pattern: Option<RegexSpec>,
    /// Written for allow rules only (the loader refuses it elsewhere).
    max_rows: Option<u16>,
    /// Written for require_approval rules only.
    approvers: Vec<GroupSpec>,
    reason: bool,
}

#[derive(Debug, Arbitrary)]
struct ActorSpec {
    subject: Option<ActorName>,
    client_id: Option<ActorName>,
}

#[derive(Debug, Arbitrary)]
struct PreparedSpec {
    name: PreparedName,
    /// Wrap the text as `PREPARE name AS <text>` (what a gateway records).
    as_prepare_statement: bool,
    standard_conforming_strings: bool,
    text: String,
}

#[derive(Debug, Arbitrary)]
struct Input {
    settings: SettingsSpec,
    rules: Vec<RuleSpec>,
    subject: SubjectSpec,
    groups: Vec<GroupSpec>,
    actor: Option<ActorSpec>,
    search_path: Option<SearchPathSpec>,
    standard_conforming_strings_off: bool,
    user: Option<UserSpec>,
    prepared: Option<PreparedSpec>,
    /// The statement text: whatever is left of the input.
    sql: String,
}

// ------------------------------------------------------------------ rendering

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = items.into_iter().take(MAX_LIST).map(quote).collect();
    format!("[{}]", quoted.join(", "))
}

fn render(input: &Input) -> String {
    let mut t = String::from("version = 1\n\n[settings]\n");
    let s = &input.settings;
    if let Some(d) = s.default {
        let _ = writeln!(t, "default = {}", quote(d.toml()));
    }
    if let Some(e) = s.on_parse_error {
        let _ = writeln!(t, "on_parse_error = {}", quote(e.toml()));
    }
    if let Some(p) = s.search_path {
        let _ = writeln!(t, "search_path = {}", list(p.schemas().iter().copied()));
    }
    if let Some(m) = s.max_rows {
        let _ = writeln!(t, "max_rows = {m}");
    }
    if !s.trusted_functions.is_empty() {
        let _ = writeln!(t, "trusted_functions = {}", list(s.trusted_functions.iter().map(|f| f.glob())));
    }
    for (i, r) in input.rules.iter().take(MAX_RULES).enumerate() {
        let _ = writeln!(t, "\n[[rule]]\nname = \"r{i}\"\neffect = {}", quote(r.effect.toml()));
        let mut field = |key: &str, values: Vec<&str>| {
            if !values.is_empty() {
                let _ = writeln!(t, "{key} = {}", list(values));
            }
        };
        field("groups", r.groups.iter().map(|g| g.name()).collect());
        field("subjects", r.subjects.iter().map(|g| g.name()).collect());
        field("actors", r.actors.iter().map(|a| a.glob()).collect());
        field("classes", r.classes.iter().map(|c| c.toml()).collect());
        field("commands", r.commands.iter().map(|c| c.toml()).collect());
        field("tables", r.tables.iter().map(|p| p.glob()).collect());
        field("functions", r.functions.iter().map(|p| p.glob()).collect());
        if matches!(r.effect, EffectSpec::RequireApproval) {
            field("approvers", r.approvers.iter().map(|g| g.name()).collect());
        }
        if r.where_missing {
            t.push_str("where_missing = true\n");
        }
        if r.limit_missing {
            t.push_str("limit_missing = true\n");
        }
        if let Some(p) = r.pattern {
            let _ = writeln!(t, "pattern = {}", quote(p.toml()));
        }
        if let (EffectSpec::Allow, Some(m)) = (r.effect, r.max_rows) {
            let _ = writeln!(t, "max_rows = {m}");
        }
        if r.reason {
            let _ = writeln!(t, "reason = \"because rule r{i} says so\"");
        }
    }
    t
}

fn identity(input: &Input) -> Identity {
    let mut id = Identity::new(input.subject.name()).with_groups(input.groups.iter().take(MAX_LIST).map(|g| g.name()));
    if let Some(a) = &input.actor {
        id = id.with_actor(Actor {
            subject: a.subject.map(|n| n.name().to_string()),
            client_id: a.client_id.map(|n| n.name().to_string()),
            chain: Vec::new(),
        });
    }
    id
}

fn session(engine: &Engine, input: &Input) -> Session {
    let mut s = engine.new_session();
    if let Some(p) = input.search_path {
        s.search_path = p.schemas().iter().map(|s| s.to_string()).collect();
    }
    s.standard_conforming_strings = !input.standard_conforming_strings_off;
    s.user = input.user.map(|u| u.name().to_string());
    if let Some(p) = &input.prepared {
        let name = p.name.name();
        let sql = if p.as_prepare_statement { format!("PREPARE {name} AS {}", p.text) } else { p.text.clone() };
        s.prepared.insert(
            name.to_string(),
            Prepared { sql: Arc::from(sql.as_str()), standard_conforming_strings: p.standard_conforming_strings },
        );
    }
    s
}

// ------------------------------------------------------------------ invariants

fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Allow => 0,
        Verdict::RequireApproval => 1,
        Verdict::Deny => 2,
    }
}

/// The decision with what JSON does not carry (statement spans, the
/// flags derived for the caller, the transaction-control effects and the
/// uncertainty of a path change) cleared, and a local reset written as a
/// reset, as the JSON writes it.
fn without_spans(d: &Decision) -> Decision {
    let mut d = d.clone();
    let statements: Vec<_> = d
        .statements
        .iter()
        .cloned()
        .map(|mut s| {
            s.span = 0..0;
            let facts = std::sync::Arc::make_mut(&mut s.facts);
            facts.changes_settings = false;
            facts.ends_transaction = false;
            facts.begins_transaction = false;
            facts.reverts_settings = false;
            facts.changes_definitions = false;
            facts.session_effects = facts
                .session_effects
                .iter()
                .filter_map(|e| match e {
                    SessionEffect::SetSearchPath { path, local, .. } => {
                        Some(SessionEffect::SetSearchPath { path: path.clone(), local: *local, uncertain: false })
                    }
                    SessionEffect::ResetSearchPath | SessionEffect::ResetSearchPathLocal => {
                        Some(SessionEffect::ResetSearchPath)
                    }
                    SessionEffect::Prepare { .. } | SessionEffect::Deallocate { .. } => Some(e.clone()),
                    _ => None,
                })
                .collect();
            s
        })
        .collect();
    // `.into()`: whatever collection `Decision::statements` is.
    d.statements = statements.into();
    d
}

fn check_decision(engine: &Engine, d: &Decision, ctx: &dyn Fn() -> String) {
    // 1. JSON.
    let json = d.to_json();
    let value: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("to_json() is not JSON ({e}): {json}\n{}", ctx()));
    let Some(obj) = value.as_object() else { panic!("to_json() is not an object: {json}\n{}", ctx()) };
    match obj.get("verdict").and_then(|v| v.as_str()) {
        Some(v) if v == d.verdict.as_str() => {}
        other => panic!("to_json() verdict {other:?} != {}: {json}\n{}", d.verdict, ctx()),
    }
    let back: Decision = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("to_json() does not read back as a Decision ({e}): {json}\n{}", ctx()));
    if back != without_spans(d) {
        panic!("to_json() does not round-trip:\n  before: {:?}\n  after:  {back:?}\n{}", without_spans(d), ctx());
    }

    // 2. The strictest statement.
    let strictest = d.statements.iter().map(|s| s.verdict).max_by_key(|v| rank(*v)).unwrap_or(Verdict::Allow);
    if d.verdict != strictest {
        panic!(
            "decision verdict {} but strictest statement verdict {strictest} ({:?})\n{}",
            d.verdict,
            d.statements.iter().map(|s| s.verdict).collect::<Vec<_>>(),
            ctx()
        );
    }

    let rules = &engine.policy().rules;
    for (i, s) in d.statements.iter().enumerate() {
        // 3. unknown is never allowed.
        if s.facts.class == Class::Unknown && s.verdict == Verdict::Allow {
            panic!("statement {i} of class unknown is allowed: {s:?}\n{}", ctx());
        }
        // 4. The named rule exists and gave this verdict.
        let rule = s.rule.as_ref().map(|name| {
            rules
                .iter()
                .find(|r| *r.name == **name)
                .unwrap_or_else(|| panic!("statement {i} names rule `{name}`, which the policy lacks\n{}", ctx()))
        });
        if let Some(r) = rule {
            if r.effect.verdict() != s.verdict {
                panic!(
                    "statement {i}: verdict {} from rule `{}` whose effect is {:?}\n{}",
                    s.verdict,
                    r.name,
                    r.effect,
                    ctx()
                );
            }
        }
        // 4. Opaque statements are not allowed through table/function conditions.
        if s.facts.opaque && s.verdict == Verdict::Allow {
            if let Some(r) = rule {
                if r.tables.is_some() {
                    panic!(
                        "opaque statement {i} allowed by rule `{}`, which has a tables condition: {s:?}\n{}",
                        r.name,
                        ctx()
                    );
                }
                if r.functions.is_some() {
                    panic!(
                        "opaque statement {i} allowed by rule `{}`, which has a functions condition: {s:?}\n{}",
                        r.name,
                        ctx()
                    );
                }
            }
        }
    }
    if let Some(name) = &d.rule {
        if !rules.iter().any(|r| *r.name == **name) {
            panic!("decision names rule `{name}`, which the policy lacks\n{}", ctx());
        }
    }
}

/// `sql` with every run of ASCII digits replaced by `digits`.
fn with_digits(sql: &str, digits: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_run = false;
    for c in sql.chars() {
        if c.is_ascii_digit() {
            if !in_run {
                out.push_str(digits);
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out
}

fn check_equal(what: &str, a: &Decision, b: &Decision, ctx: &dyn Fn() -> String) {
    if a != b {
        panic!("{what}:\n  first:  {a:?}\n  second: {b:?}\n{}", ctx());
    }
}

/// `PORTCULLIS_FUZZ_DEBUG=1`: print each input's policy and decision (to
/// look at what a crashing or seed input means).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("PORTCULLIS_FUZZ_DEBUG").is_some())
}

fuzz_target!(|input: Input| {
    let toml = render(&input);
    let loaded = Policy::from_toml_str(&toml, "fuzz-policy.toml");
    if debug() {
        eprintln!("--- policy\n{toml}--- loaded: {}", loaded.as_ref().map_or_else(|e| e.to_string(), |_| "ok".into()));
    }
    let Ok(policy) = loaded else { return };
    let Ok(engine) = Engine::new(policy.clone(), Keys::default()) else { return };
    let Ok(uncached) = Engine::with_options(policy, Keys::default(), EngineOptions { cache_bytes: 0 }) else {
        return;
    };
    let id = identity(&input);
    let session = session(&engine, &input);
    let sql = input.sql.as_str();
    let ctx = || format!("policy:\n{toml}\nidentity: {id:?}\nsession: {session:?}\nsql: {sql:?}");

    let first = engine.decide(&id, &session, sql);
    if debug() {
        eprintln!(
            "--- identity: {id:?}\n--- session: {session:?}\n--- sql: {sql:?}\n--- decision: {}",
            first.to_json()
        );
    }
    check_decision(&engine, &first, &ctx);

    // 5. Again (from the cache, when the string is cacheable).
    let second = engine.decide(&id, &session, sql);
    check_equal("the same call twice gives different decisions", &first, &second, &ctx);

    let analysis = engine.analyze(&session, sql);
    let decided: Vec<_> = first.statements.iter().map(|s| &*s.facts).collect();
    let analysed: Vec<_> = analysis.statements.iter().collect();
    if decided != analysed {
        panic!(
            "analyze() and decide() see different facts:\n  decide:  {decided:?}\n  analyze: {analysed:?}\n{}",
            ctx()
        );
    }

    // 6. The cache changes nothing.
    let fresh = uncached.decide(&id, &session, sql);
    check_equal("the cached engine and an uncached one disagree", &first, &fresh, &ctx);
    // Texts with other digits: the second and third meet a template
    // learnt from the first two (a mask is kept from its second text).
    for digits in ["7", "2147483648", "00042", "1"] {
        let variant = with_digits(sql, digits);
        if variant == sql {
            break;
        }
        let cached = engine.decide(&id, &session, &variant);
        let fresh = uncached.decide(&id, &session, &variant);
        let ctx3 = || format!("{}
variant: {variant:?}", ctx());
        check_equal("a text with other digits is decided differently through the cache", &fresh, &cached, &ctx3);
    }
    if !session.prepared.is_empty() {
        let mut other = session.clone();
        other.prepared = BTreeMap::new();
        let cached = engine.decide(&id, &other, sql);
        let fresh = uncached.decide(&id, &other, sql);
        let ctx2 = || format!("{}\nsecond session (no prepared statements): {other:?}", ctx());
        check_decision(&engine, &cached, &ctx2);
        check_equal(
            "a session without the prepared statement gets another session's cached decision",
            &fresh,
            &cached,
            &ctx2,
        );
    }
});
