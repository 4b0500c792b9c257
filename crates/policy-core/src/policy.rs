//! The policy file: format, loading and validation (docs/policy.md §4, §5, §7).
//!
//! A policy is TOML. Loading checks everything that can be checked without
//! running a statement — unknown fields, unknown classes, globs and regexes
//! that do not compile, `on_parse_error = "allow"` — and every error names
//! the file, line and column.
//!
//! ```
//! use policy_core::Policy;
//! let err = Policy::from_toml_str("version = 1\n[[rule]]\nname = \"x\"\neffect = \"allow\"\nclasses = [\"reed\"]\n", "p.toml")
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("p.toml:5:"), "{err}");
//! ```
//!
//! Readings of the format beyond what `docs/policy.md` spells out:
//! - an empty list (`groups = []`) states no condition, like an omitted one;
//! - a pattern list holding only `!` exclusions covers everything else;
//! - `settings.trusted_functions` lists functions (globs on the name as
//!   written) whose bodies the policy author vouches for: calling them does
//!   not make a statement opaque;
//! - `settings.views` is `"expand"` (the default) or `"name"`: see
//!   [`crate::Definitions`].

use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::Regex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::analyze::{Class, Clause};
use crate::decision::{ApprovalTerms, SelfApproval, Verdict};

/// Where in a policy file something is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file name given to the loader.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A policy that cannot be used, and where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The text is not TOML, or not the shape of a policy (unknown field,
    /// unknown class or effect, wrong type).
    #[error("{location}: {message}")]
    Format {
        /// Where.
        location: Location,
        /// What, in the TOML parser's words.
        message: String,
    },
    /// A value that is well-formed but cannot be used.
    #[error("{location}: {message}")]
    Invalid {
        /// Where.
        location: Location,
        /// What.
        message: String,
    },
    /// The keys given to the engine do not fit the policy (a `hash` mask
    /// and no pseudonymisation key).
    #[error("{location}: {message}")]
    Keys {
        /// The policy entry that needs the key.
        location: Location,
        /// What.
        message: String,
    },
}

impl PolicyError {
    /// The location, when the error has one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            PolicyError::Format { location, .. }
            | PolicyError::Invalid { location, .. }
            | PolicyError::Keys { location, .. } => Some(location),
        }
    }
}

/// What a rule does when it matches, or what happens when none does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Let the statement run.
    Allow,
    /// Refuse it.
    Deny,
    /// Hold it for a person to approve.
    RequireApproval,
}

impl Effect {
    /// The verdict the effect gives.
    pub fn verdict(self) -> Verdict {
        match self {
            Effect::Allow => Verdict::Allow,
            Effect::Deny => Verdict::Deny,
            Effect::RequireApproval => Verdict::RequireApproval,
        }
    }
}

/// Column masking strategies (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Replace with a fixed redaction marker.
    Redact,
    /// Replace with NULL.
    Null,
    /// Keep the last `show_last` characters.
    Partial,
    /// Keyed deterministic pseudonym.
    Hash,
    /// Keep the e-mail domain.
    Email,
    /// Replace with `value`.
    Fixed,
}

/// Built-in PII detectors (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Payment card numbers (Luhn-checked).
    CreditCard,
    /// US social security numbers.
    UsSsn,
    /// E-mail addresses.
    Email,
    /// Phone numbers.
    Phone,
    /// IBANs (mod-97 checked).
    Iban,
    /// IPv4 addresses.
    Ipv4,
    /// AWS access key ids.
    AwsAccessKey,
    /// JSON Web Tokens.
    Jwt,
    /// PEM private keys.
    PrivateKey,
}

/// `[settings]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Verdict when no rule matches.
    pub default: Effect,
    /// Verdict for statements the grammar rejects (never allow).
    pub on_parse_error: Effect,
    /// The session's starting search_path.
    pub search_path: Vec<String>,
    /// Row cap per statement; 0 = none.
    pub max_rows: u64,
    /// Functions whose bodies the policy trusts (see module docs).
    pub trusted_functions: Vec<String>,
    /// How statements naming views are judged (`settings.views`).
    pub views: ViewReading,
}

/// `settings.views`: how a statement naming a view is judged (see
/// [`crate::Definitions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewReading {
    /// By the view and everything its definition reads, recursively, with
    /// masks following view columns back to table columns (the default).
    #[default]
    Expand,
    /// By the view's name only, for policies that name views on purpose.
    Name,
}

/// `[identity]`: which token claims hold what.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Claim holding the subject.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claim holding the groups (dotted paths allowed).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim holding the acting agent.
    #[serde(default = "default_actor_claim")]
    pub actor_claim: String,
    /// Claims naming the OAuth client an agent uses (`azp`, `client_id`);
    /// a token carrying one has an actor even without `act`.
    #[serde(default)]
    pub client_id_claims: Vec<String>,
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one suffices).
    #[serde(default)]
    pub audience: Vec<String>,
    /// Clock skew tolerated, in seconds (at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
}

fn default_leeway() -> u64 {
    60
}

impl IdentityConfig {
    /// The rules [`verify_jwt`](crate::verify_jwt) applies.
    pub fn rules(&self) -> crate::IdentityRules {
        crate::IdentityRules {
            subject_claim: self.subject_claim.clone(),
            groups_claim: self.groups_claim.clone(),
            actor_claim: self.actor_claim.clone(),
            client_id_claims: self.client_id_claims.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway_seconds: self.leeway_seconds,
            ..crate::IdentityRules::default()
        }
    }
}

fn default_subject_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_actor_claim() -> String {
    "act".into()
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            subject_claim: default_subject_claim(),
            groups_claim: default_groups_claim(),
            actor_claim: default_actor_claim(),
            client_id_claims: Vec::new(),
            issuer: None,
            audience: Vec::new(),
            leeway_seconds: default_leeway(),
        }
    }
}

/// Globs with `!` exclusions: a name is covered when an inclusion matches
/// and no exclusion does.
#[derive(Debug, Clone)]
pub struct Patterns {
    /// The patterns as written.
    pub written: Vec<String>,
    include: GlobSet,
    exclude: GlobSet,
}

impl Patterns {
    /// Whether `name` is covered.
    pub fn covers(&self, name: &str) -> bool {
        self.include.is_match(name) && !self.exclude.is_match(name)
    }
}

/// One `[[rule]]`, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// What it does.
    pub effect: Effect,
    /// Any of these groups (`None` = everyone).
    pub groups: Option<Vec<String>>,
    /// Any of these subjects (`None` = everyone).
    pub subjects: Option<Vec<String>>,
    /// Globs on the acting agent (`None` = with or without one).
    pub actors: Option<Patterns>,
    /// Any of these classes.
    pub classes: Option<Vec<Class>>,
    /// Any of these command tags (upper case).
    pub commands: Option<Vec<String>>,
    /// Table patterns.
    pub tables: Option<Patterns>,
    /// Function patterns.
    pub functions: Option<Patterns>,
    /// Matches only UPDATE/DELETE without a bounding WHERE.
    pub where_missing: bool,
    /// Matches only reads without a LIMIT.
    pub limit_missing: bool,
    /// Regex on the statement text. A decision that tried it depends on
    /// the whole text, constants included, so it is cached for that exact
    /// text only (not by shape, see `Engine::decide`). The pattern is tried
    /// last, once the rule's other conditions match, so a rule narrowed by
    /// them leaves the other statements' decisions shareable.
    pub pattern: Option<Regex>,
    /// Row cap for what the rule allows.
    pub max_rows: Option<u64>,
    /// Groups that may approve.
    pub approvers: Vec<String>,
    /// What approving takes (`approvals`, `self_approval`,
    /// `justification`; require_approval rules).
    pub approval: ApprovalTerms,
    /// Shown to the client and recorded.
    pub reason: Option<String>,
    /// Where the rule is in the file.
    pub location: Location,
}

/// One `[[mask]]`.
#[derive(Debug, Clone)]
pub struct Mask {
    /// Name.
    pub name: String,
    /// `schema.table.column` patterns.
    pub columns: Patterns,
    /// How values are masked.
    pub strategy: Strategy,
    /// `partial`: characters kept at the end.
    pub show_last: usize,
    /// `fixed`: the replacement.
    pub value: Option<String>,
    /// Groups that see the real value.
    pub exempt_groups: Vec<String>,
    /// What else the caller may not do with a covered column
    /// (`inference`): the clauses a statement may not read it in.
    pub inference: Vec<Clause>,
    /// Where the mask is in the file.
    pub location: Location,
}

/// One `[[detector]]`.
#[derive(Debug, Clone)]
pub struct Detector {
    /// Name.
    pub name: String,
    /// Built-in kinds.
    pub kinds: Vec<DetectorKind>,
    /// A custom regex.
    pub pattern: Option<Regex>,
    /// How matches are masked.
    pub strategy: Strategy,
    /// `partial`: characters kept.
    pub show_last: usize,
    /// `fixed`: the replacement.
    pub value: Option<String>,
    /// Groups not scanned.
    pub exempt_groups: Vec<String>,
    /// Where the detector is in the file.
    pub location: Location,
}

/// One `[[test]]`.
#[derive(Debug, Clone)]
pub struct PolicyTest {
    /// Optional label.
    pub name: Option<String>,
    /// The SQL string.
    pub sql: String,
    /// The caller's subject.
    pub subject: String,
    /// The caller's groups.
    pub groups: Vec<String>,
    /// The acting agent.
    pub actor: Option<String>,
    /// The session's search_path at its start, which a reset returns to
    /// (default: settings).
    pub search_path: Option<Vec<String>>,
    /// Expected verdict.
    pub expect: Verdict,
    /// Expected deciding rule (`""` = none matched).
    pub rule: Option<String>,
    /// Where the test is in the file.
    pub location: Location,
}

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The name the policy was loaded under (for messages).
    pub source: String,
    /// `sha256:` and the hex SHA-256 of the policy's text: what an audit
    /// record names as the policy it was decided under.
    pub digest: String,
    /// `[settings]`.
    pub settings: Settings,
    /// `[identity]`.
    pub identity: IdentityConfig,
    /// The rules, in file order (order never changes a verdict).
    pub rules: Vec<Rule>,
    /// Column masks.
    pub masks: Vec<Mask>,
    /// PII detectors.
    pub detectors: Vec<Detector>,
    /// Embedded tests.
    pub tests: Vec<PolicyTest>,
}

// ------------------------------------------------------------------ raw form

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<i64>,
    #[serde(default)]
    settings: Option<Spanned<RawSettings>>,
    #[serde(default)]
    identity: Option<Spanned<IdentityConfig>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    mask: Vec<Spanned<RawMask>>,
    #[serde(default)]
    detector: Vec<Spanned<RawDetector>>,
    #[serde(default)]
    test: Vec<Spanned<RawTest>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    default: Option<Effect>,
    on_parse_error: Option<Spanned<Effect>>,
    search_path: Option<Vec<String>>,
    max_rows: Option<u64>,
    trusted_functions: Option<Vec<Spanned<String>>>,
    views: Option<ViewReading>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    effect: Effect,
    groups: Option<Vec<String>>,
    subjects: Option<Vec<String>>,
    actors: Option<Vec<Spanned<String>>>,
    classes: Option<Vec<Class>>,
    commands: Option<Vec<String>>,
    tables: Option<Vec<Spanned<String>>>,
    functions: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    where_missing: bool,
    #[serde(default)]
    limit_missing: bool,
    pattern: Option<Spanned<String>>,
    max_rows: Option<Spanned<u64>>,
    approvers: Option<Spanned<Vec<String>>>,
    approvals: Option<Spanned<u32>>,
    self_approval: Option<Spanned<SelfApproval>>,
    justification: Option<Spanned<bool>>,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMask {
    name: String,
    columns: Vec<Spanned<String>>,
    strategy: Strategy,
    show_last: Option<Spanned<usize>>,
    value: Option<Spanned<String>>,
    #[serde(default)]
    exempt_groups: Vec<String>,
    #[serde(default)]
    inference: Vec<Clause>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetector {
    name: String,
    #[serde(default)]
    kinds: Vec<DetectorKind>,
    pattern: Option<Spanned<String>>,
    strategy: Strategy,
    show_last: Option<Spanned<usize>>,
    value: Option<Spanned<String>>,
    #[serde(default)]
    exempt_groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: Option<String>,
    sql: String,
    subject: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    actor: Option<String>,
    search_path: Option<Vec<String>>,
    expect: Verdict,
    rule: Option<String>,
}

/// Largest compiled size of one `pattern` regex.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

struct Loader<'a> {
    file: &'a str,
    text: &'a str,
}

impl Loader<'_> {
    fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text.get(line_start..offset).map_or(1, |s| s.chars().count() + 1);
        Location { file: self.file.to_string(), line, column }
    }

    fn invalid(&self, offset: usize, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid { location: self.location(offset), message: message.into() }
    }

    fn patterns(&self, list: &[Spanned<String>], what: &str) -> Result<Patterns, PolicyError> {
        let mut include = GlobSetBuilder::new();
        let mut exclude = GlobSetBuilder::new();
        let mut any_include = false;
        let mut written = Vec::with_capacity(list.len());
        for p in list {
            let text = p.get_ref();
            written.push(text.clone());
            let (negated, glob) = match text.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, text.as_str()),
            };
            if glob.is_empty() {
                return Err(self.invalid(p.span().start, format!("empty {what} pattern")));
            }
            let compiled = Glob::new(glob).map_err(|e| {
                self.invalid(p.span().start, format!("{what} pattern `{text}` does not compile: {}", e.kind()))
            })?;
            if negated {
                exclude.add(compiled);
            } else {
                any_include = true;
                include.add(compiled);
            }
        }
        if !any_include {
            // Only exclusions: everything else is covered.
            if let Ok(all) = Glob::new("*") {
                include.add(all);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| self.invalid(list.first().map_or(0, |p| p.span().start), format!("{what} patterns: {e}")))
        };
        Ok(Patterns { written, include: build(include)?, exclude: build(exclude)? })
    }

    fn regex(&self, p: &Spanned<String>, what: &str) -> Result<Regex, PolicyError> {
        regex::RegexBuilder::new(p.get_ref())
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| self.invalid(p.span().start, format!("{what} `{}` does not compile: {e}", p.get_ref())))
    }
}

fn non_empty<T>(v: Option<Vec<T>>) -> Option<Vec<T>> {
    v.filter(|v| !v.is_empty())
}

impl Policy {
    /// Loads a policy from TOML text; `file` names it in error messages.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Policy, PolicyError> {
        let loader = Loader { file, text };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Format {
            location: loader.location(e.span().map_or(0, |s| s.start)),
            message: e.message().trim().to_string(),
        })?;
        if *raw.version.get_ref() != 1 {
            return Err(loader.invalid(
                raw.version.span().start,
                format!("unsupported policy version {}: this engine reads version 1", raw.version.get_ref()),
            ));
        }

        let identity = match raw.identity {
            Some(spanned) => {
                let at = spanned.span().start;
                let identity = spanned.into_inner();
                if identity.leeway_seconds > crate::MAX_LEEWAY_SECONDS {
                    return Err(loader.invalid(
                        at,
                        format!(
                            "identity.leeway_seconds is {}; at most {} is accepted",
                            identity.leeway_seconds,
                            crate::MAX_LEEWAY_SECONDS
                        ),
                    ));
                }
                for (what, value) in
                    [("subject_claim", &identity.subject_claim), ("groups_claim", &identity.groups_claim)]
                {
                    if value.is_empty() || value.split('.').any(str::is_empty) {
                        return Err(loader.invalid(at, format!("identity.{what} `{value}` is not a claim path")));
                    }
                }
                identity
            }
            None => IdentityConfig::default(),
        };
        let (settings_span, raw_settings) = match raw.settings {
            Some(s) => (s.span().start, s.into_inner()),
            None => (0, RawSettings::default()),
        };
        let on_parse_error = match raw_settings.on_parse_error {
            Some(e) if *e.get_ref() == Effect::Allow => {
                return Err(loader.invalid(
                    e.span().start,
                    "on_parse_error = \"allow\" would run statements the engine cannot read; use \"deny\" or \"require_approval\"",
                ));
            }
            Some(e) => e.into_inner(),
            None => Effect::Deny,
        };
        let trusted = raw_settings.trusted_functions.unwrap_or_default();
        for t in &trusted {
            Glob::new(t.get_ref()).map_err(|e| {
                loader.invalid(
                    t.span().start,
                    format!("trusted function pattern `{}` does not compile: {}", t.get_ref(), e.kind()),
                )
            })?;
        }
        let search_path = raw_settings.search_path.unwrap_or_else(|| vec!["public".to_string()]);
        if search_path.iter().any(String::is_empty) {
            return Err(loader.invalid(settings_span, "search_path holds an empty schema name"));
        }
        let settings = Settings {
            default: raw_settings.default.unwrap_or(Effect::Deny),
            on_parse_error,
            search_path,
            max_rows: raw_settings.max_rows.unwrap_or(0),
            trusted_functions: trusted.into_iter().map(Spanned::into_inner).collect(),
            views: raw_settings.views.unwrap_or_default(),
        };

        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
        for spanned in raw.rule {
            let at = spanned.span().start;
            let r = spanned.into_inner();
            let name_at = r.name.span().start;
            let name = r.name.into_inner();
            if name.trim().is_empty() {
                return Err(loader.invalid(name_at, "a rule needs a name"));
            }
            if let Some(other) = rules.iter().find(|o| o.name == name) {
                return Err(loader
                    .invalid(name_at, format!("rule name `{name}` is already used at line {}", other.location.line)));
            }
            if let Some(m) = &r.max_rows {
                if r.effect != Effect::Allow {
                    return Err(
                        loader.invalid(m.span().start, format!("rule `{name}`: max_rows applies to allow rules only"))
                    );
                }
            }
            if let Some(a) = &r.approvers {
                if r.effect != Effect::RequireApproval && !a.get_ref().is_empty() {
                    return Err(loader.invalid(
                        a.span().start,
                        format!("rule `{name}`: approvers apply to require_approval rules only"),
                    ));
                }
            }
            let approval_only = |at: usize, field: &str| {
                loader.invalid(at, format!("rule `{name}`: {field} applies to require_approval rules only"))
            };
            let mut approval = ApprovalTerms::DEFAULT;
            if let Some(n) = &r.approvals {
                if r.effect != Effect::RequireApproval {
                    return Err(approval_only(n.span().start, "approvals"));
                }
                if *n.get_ref() == 0 {
                    return Err(loader.invalid(
                        n.span().start,
                        format!("rule `{name}`: approvals is how many people must approve: at least 1"),
                    ));
                }
                approval.approvals = *n.get_ref();
            }
            if let Some(s) = &r.self_approval {
                if r.effect != Effect::RequireApproval {
                    return Err(approval_only(s.span().start, "self_approval"));
                }
                approval.self_approval = *s.get_ref();
            }
            if let Some(j) = &r.justification {
                if r.effect != Effect::RequireApproval {
                    return Err(approval_only(j.span().start, "justification"));
                }
                approval.justification = *j.get_ref();
            }
            let actors = match non_empty(r.actors) {
                Some(list) => Some(loader.patterns(&list, "actor")?),
                None => None,
            };
            let tables = match non_empty(r.tables) {
                Some(list) => Some(loader.patterns(&list, "table")?),
                None => None,
            };
            let functions = match non_empty(r.functions) {
                Some(list) => Some(loader.patterns(&list, "function")?),
                None => None,
            };
            let pattern = match r.pattern.filter(|p| !p.get_ref().is_empty()) {
                Some(p) => Some(loader.regex(&p, "pattern")?),
                None => None,
            };
            rules.push(Rule {
                name,
                effect: r.effect,
                groups: non_empty(r.groups),
                subjects: non_empty(r.subjects),
                actors,
                classes: non_empty(r.classes),
                commands: non_empty(r.commands).map(|c| c.iter().map(|c| c.trim().to_ascii_uppercase()).collect()),
                tables,
                functions,
                where_missing: r.where_missing,
                limit_missing: r.limit_missing,
                pattern,
                max_rows: r.max_rows.map(Spanned::into_inner).filter(|m| *m > 0),
                approvers: r.approvers.map(Spanned::into_inner).unwrap_or_default(),
                approval,
                reason: r.reason.filter(|r| !r.is_empty()),
                location: loader.location(at),
            });
        }

        let mut masks = Vec::with_capacity(raw.mask.len());
        for spanned in raw.mask {
            let at = spanned.span().start;
            let m = spanned.into_inner();
            check_strategy_options(&loader, &m.name, m.strategy, m.show_last.as_ref(), m.value.as_ref())?;
            if m.columns.is_empty() {
                return Err(loader.invalid(at, format!("mask `{}` names no columns", m.name)));
            }
            masks.push(Mask {
                columns: loader.patterns(&m.columns, "column")?,
                name: m.name,
                strategy: m.strategy,
                show_last: m.show_last.map_or(4, Spanned::into_inner),
                value: m.value.map(Spanned::into_inner),
                exempt_groups: m.exempt_groups,
                inference: {
                    let mut clauses = m.inference;
                    clauses.sort();
                    clauses.dedup();
                    clauses
                },
                location: loader.location(at),
            });
        }

        let mut detectors = Vec::with_capacity(raw.detector.len());
        for spanned in raw.detector {
            let at = spanned.span().start;
            let d = spanned.into_inner();
            check_strategy_options(&loader, &d.name, d.strategy, d.show_last.as_ref(), d.value.as_ref())?;
            let pattern = match d.pattern.filter(|p| !p.get_ref().is_empty()) {
                Some(p) => Some(loader.regex(&p, "detector pattern")?),
                None => None,
            };
            if d.kinds.is_empty() && pattern.is_none() {
                return Err(loader.invalid(at, format!("detector `{}` has neither kinds nor a pattern", d.name)));
            }
            detectors.push(Detector {
                name: d.name,
                kinds: d.kinds,
                pattern,
                strategy: d.strategy,
                show_last: d.show_last.map_or(4, Spanned::into_inner),
                value: d.value.map(Spanned::into_inner),
                exempt_groups: d.exempt_groups,
                location: loader.location(at),
            });
        }

        let tests = raw
            .test
            .into_iter()
            .map(|spanned| {
                let at = spanned.span().start;
                let t = spanned.into_inner();
                PolicyTest {
                    name: t.name,
                    sql: t.sql,
                    subject: t.subject.unwrap_or_else(|| "policy-test".to_string()),
                    groups: t.groups,
                    actor: t.actor,
                    search_path: t.search_path,
                    expect: t.expect,
                    rule: t.rule,
                    location: loader.location(at),
                }
            })
            .collect();

        let digest = format!("sha256:{:x}", Sha256::digest(text.as_bytes()));
        Ok(Policy { source: file.to_string(), digest, settings, identity, rules, masks, detectors, tests })
    }
}

fn check_strategy_options(
    loader: &Loader<'_>,
    name: &str,
    strategy: Strategy,
    show_last: Option<&Spanned<usize>>,
    value: Option<&Spanned<String>>,
) -> Result<(), PolicyError> {
    if let Some(s) = show_last {
        if strategy != Strategy::Partial {
            return Err(
                loader.invalid(s.span().start, format!("`{name}`: show_last applies to strategy \"partial\" only"))
            );
        }
    }
    if let Some(v) = value {
        if strategy != Strategy::Fixed {
            return Err(loader.invalid(v.span().start, format!("`{name}`: value applies to strategy \"fixed\" only")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> PolicyError {
        match Policy::from_toml_str(text, "p.toml") {
            Ok(_) => panic!("loaded: {text}"),
            Err(e) => e,
        }
    }

    fn at(e: &PolicyError) -> (usize, usize) {
        let l = e.location().unwrap_or_else(|| panic!("no location: {e}"));
        (l.line, l.column)
    }

    #[test]
    fn bad_toml_names_line_and_column() {
        let e = err("version = 1\n[settings\n");
        assert!(matches!(e, PolicyError::Format { .. }), "{e}");
        assert_eq!(at(&e).0, 2, "{e}");
        assert!(e.to_string().starts_with("p.toml:2:"), "{e}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let e = err("version = 1\n\n[[rule]]\nname = \"a\"\neffect = \"allow\"\ntabels = [\"x\"]\n");
        assert_eq!(at(&e).0, 6, "{e}");
        assert!(e.to_string().contains("tabels"), "{e}");
    }

    #[test]
    fn unknown_class_is_refused() {
        let e = err("version = 1\n[[rule]]\nname = \"a\"\neffect = \"allow\"\nclasses = [\"read\", \"reed\"]\n");
        assert_eq!(at(&e).0, 5, "{e}");
        assert!(e.to_string().contains("reed"), "{e}");
    }

    #[test]
    fn unknown_effect_is_refused() {
        let e = err("version = 1\n[[rule]]\nname = \"a\"\neffect = \"permit\"\n");
        assert_eq!(at(&e).0, 4, "{e}");
    }

    #[test]
    fn glob_that_cannot_compile_is_refused() {
        let e = err("version = 1\n[[rule]]\nname = \"a\"\neffect = \"deny\"\ntables = [\"public.*\", \"public.[x\"]\n");
        assert!(matches!(e, PolicyError::Invalid { .. }), "{e}");
        assert_eq!(at(&e), (5, 23), "{e}");
        assert!(e.to_string().contains("public.[x"), "{e}");
    }

    #[test]
    fn on_parse_error_allow_is_refused() {
        let e = err("version = 1\n[settings]\non_parse_error = \"allow\"\n");
        assert_eq!(at(&e), (3, 18), "{e}");
        assert!(e.to_string().contains("on_parse_error"), "{e}");
    }

    #[test]
    fn regex_that_cannot_compile_is_refused() {
        let e = err("version = 1\n[[rule]]\nname = \"a\"\neffect = \"deny\"\npattern = \"(unclosed\"\n");
        assert_eq!(at(&e).0, 5, "{e}");
    }

    #[test]
    fn version_is_checked() {
        let e = err("version = 2\n");
        assert_eq!(at(&e), (1, 11), "{e}");
        let e = err("[settings]\n");
        assert!(e.to_string().contains("version"), "{e}");
    }

    #[test]
    fn duplicate_rule_names_are_refused() {
        let e =
            err("version = 1\n[[rule]]\nname = \"a\"\neffect = \"deny\"\n[[rule]]\nname = \"a\"\neffect = \"allow\"\n");
        assert_eq!(at(&e).0, 6, "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn misplaced_options_are_refused() {
        let e = err("version = 1\n[[rule]]\nname = \"a\"\neffect = \"deny\"\nmax_rows = 5\n");
        assert!(e.to_string().contains("max_rows"), "{e}");
        let e =
            err("version = 1\n[[mask]]\nname = \"m\"\ncolumns = [\"*.*.x\"]\nstrategy = \"redact\"\nshow_last = 2\n");
        assert!(e.to_string().contains("show_last"), "{e}");
        let e = err("version = 1\n[[detector]]\nname = \"d\"\nstrategy = \"redact\"\n");
        assert!(e.to_string().contains("neither"), "{e}");
        let e = err("version = 1\n[[detector]]\nname = \"d\"\nkinds = [\"social_security\"]\nstrategy = \"redact\"\n");
        assert_eq!(at(&e).0, 4, "{e}");
    }

    #[test]
    fn approval_terms_are_read_and_checked() {
        let rule = |extra: &str| format!("version = 1\n[[rule]]\nname = \"a\"\neffect = \"require_approval\"\n{extra}");
        let p = Policy::from_toml_str(&rule(""), "p.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.rules.first().map(|r| r.approval), Some(ApprovalTerms::DEFAULT));
        let text = rule("approvals = 3\nself_approval = \"delegator\"\njustification = true\n");
        let p = Policy::from_toml_str(&text, "p.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.rules.first().map(|r| r.approval),
            Some(ApprovalTerms { approvals: 3, self_approval: SelfApproval::Delegator, justification: true })
        );
        let e = err(&rule("approvals = 0\n"));
        assert_eq!(at(&e), (5, 13), "{e}");
        assert!(e.to_string().contains("at least 1"), "{e}");
        let e = err(&rule("self_approval = \"always\"\n"));
        assert_eq!(at(&e).0, 5, "{e}");
        for field in ["approvals = 2", "self_approval = \"never\"", "justification = true"] {
            let e = err(&format!("version = 1\n[[rule]]\nname = \"a\"\neffect = \"deny\"\n{field}\n"));
            assert_eq!(at(&e), (5, 1 + field.find('=').unwrap_or(0) + 2), "{e}");
            assert!(e.to_string().contains("require_approval rules only"), "{e}");
        }
    }

    #[test]
    fn exclusion_only_patterns_cover_the_rest() {
        let p = Policy::from_toml_str(
            "version = 1\n[[rule]]\nname = \"a\"\neffect = \"deny\"\ntables = [\"!public.orders\"]\n",
            "p.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let t = p.rules[0].tables.as_ref().unwrap_or_else(|| panic!("no tables"));
        assert!(t.covers("public.secrets"));
        assert!(!t.covers("public.orders"));
    }

    #[test]
    fn identity_section_is_checked() {
        let e = err("version = 1\n[identity]\nleeway_seconds = 3600\n");
        assert!(e.to_string().contains("leeway_seconds"), "{e}");
        let e = err("version = 1\n[identity]\ngroups_claim = \"realm_access..roles\"\n");
        assert!(e.to_string().contains("groups_claim"), "{e}");
        let p = Policy::from_toml_str(
            "version = 1\n[identity]\nissuer = \"https://idp\"\naudience = [\"pc\"]\nclient_id_claims = [\"azp\"]\n",
            "p.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let rules = p.identity.rules();
        assert_eq!(rules.issuer.as_deref(), Some("https://idp"));
        assert_eq!(rules.audience, ["pc"]);
        assert_eq!(rules.client_id_claims, ["azp"]);
        assert_eq!(rules.leeway_seconds, 60);
    }

    #[test]
    fn example_policy_loads() {
        let text = include_str!("../../../examples/policy.toml");
        let p = Policy::from_toml_str(text, "examples/policy.toml").unwrap_or_else(|e| panic!("{e}"));
        assert!(p.rules.len() >= 8);
        assert!(!p.tests.is_empty());
    }
}
