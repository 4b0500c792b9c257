//! Statements addressed to the gateway: settings named `portcullis.*`.
//!
//! A client talks to the gateway in SQL it already knows how to send: a
//! `SET` of a setting under the `portcullis.` prefix. The engine recognises
//! them in the parse tree (PostgreSQL's grammar, like every other
//! statement), so the gateway needs no reader of its own; the gateway keeps
//! what they say and never sends them to the server.

use pg_query::protobuf::{self as pb, a_const::Val};
use pg_query::NodeRef;
use serde::{Deserialize, Serialize};

use super::{literal, node, nodes};

/// The prefix of the settings the gateway keeps.
pub const PREFIX: &str = "portcullis.";

/// The longest reason kept, in bytes: a sentence or a ticket, not a file.
pub const MAX_REASON_BYTES: usize = 2000;

/// What a statement asks of the gateway ([`crate::StatementFacts::gateway`]).
///
/// ```
/// use policy_core::{Engine, GatewayCommand, Policy, Verdict};
/// let engine = Engine::new(Policy::from_toml_str("version = 1", "p.toml")?, Default::default())?;
/// let session = engine.new_session();
/// let facts = |sql| engine.analyze(&session, sql).statements.remove(0).gateway;
/// assert_eq!(facts("SET portcullis.reason = 'INC-42: purge the test rows'"),
///     Some(GatewayCommand::SetReason("INC-42: purge the test rows".to_string())));
/// assert_eq!(facts("RESET portcullis.reason"), Some(GatewayCommand::ResetReason));
/// assert!(matches!(facts("SET portcullis.nonsense = 1"), Some(GatewayCommand::Invalid { .. })));
/// assert_eq!(facts("SET work_mem = '1MB'"), None);
/// // The gateway keeps them whatever the policy says: they never reach the server.
/// let identity = policy_core::Identity::new("alice");
/// assert_eq!(engine.decide(&identity, &session, "SET portcullis.reason = 'why'").verdict, Verdict::Allow);
/// # Ok::<(), policy_core::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GatewayCommand {
    /// `SET [SESSION | LOCAL] portcullis.reason = '...'`: why the client
    /// runs what it runs next, shown to the approvers of its next held
    /// statement. Empty (a `SET` to an empty string, or `TO DEFAULT`):
    /// no reason.
    SetReason(String),
    /// `RESET portcullis.reason`: no reason.
    ResetReason,
    /// A setting under `portcullis.` the gateway does not know, or a value
    /// it cannot take: refused, with why.
    Invalid {
        /// Why, as told to the client.
        why: String,
    },
}

impl GatewayCommand {
    /// What the server is sent in its place: a statement with the same
    /// answer (the command tag `SET` or `RESET`) that carries nothing of
    /// the value. On the server it sets the placeholder setting to its
    /// default (empty), as a session that never set it would read.
    ///
    /// ```
    /// use policy_core::GatewayCommand;
    /// assert_eq!(GatewayCommand::SetReason("why".into()).substitute(), "SET portcullis.reason TO DEFAULT");
    /// assert_eq!(GatewayCommand::ResetReason.substitute(), "RESET portcullis.reason");
    /// ```
    pub fn substitute(&self) -> &'static str {
        match self {
            GatewayCommand::SetReason(_) => "SET portcullis.reason TO DEFAULT",
            GatewayCommand::ResetReason | GatewayCommand::Invalid { .. } => "RESET portcullis.reason",
        }
    }
}

/// The command `stmt` gives the gateway, when it is a statement of the
/// gateway's (only a top-level `SET` or `RESET` can be).
pub(super) fn command(stmt: NodeRef<'_>) -> Option<GatewayCommand> {
    let NodeRef::VariableSetStmt(v) = stmt else { return None };
    let name = v.name.to_ascii_lowercase();
    let setting = name.strip_prefix(PREFIX)?;
    let invalid = |why: String| Some(GatewayCommand::Invalid { why });
    if setting != "reason" {
        return invalid(format!("`{name}` is not a setting of the gateway's (it knows portcullis.reason)"));
    }
    use pb::VariableSetKind as K;
    match K::try_from(v.kind).unwrap_or(K::Undefined) {
        // Each answered as the client spelled it: `RESET` or `SET`.
        K::VarReset => Some(GatewayCommand::ResetReason),
        K::VarSetDefault => Some(GatewayCommand::SetReason(String::new())),
        K::VarSetValue => {
            let mut args = nodes(&v.args);
            let (Some(arg), None) = (args.next(), args.next()) else {
                return invalid("SET portcullis.reason takes one value: the reason, quoted".to_string());
            };
            let text = match arg {
                NodeRef::AConst(c) => match literal::value(c) {
                    Some(Val::Sval(s)) => Some(s.sval.as_str()),
                    _ => None,
                },
                NodeRef::TypeCast(tc) => match node(&tc.arg) {
                    Some(NodeRef::AConst(c)) => match literal::value(c) {
                        Some(Val::Sval(s)) => Some(s.sval.as_str()),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            };
            let Some(text) = text else {
                return invalid("SET portcullis.reason takes the reason as a quoted string".to_string());
            };
            let text = text.trim();
            if text.is_empty() {
                Some(GatewayCommand::SetReason(String::new()))
            } else if text.len() > MAX_REASON_BYTES {
                invalid(format!("a reason is at most {MAX_REASON_BYTES} bytes (this one has {})", text.len()))
            } else {
                Some(GatewayCommand::SetReason(text.to_string()))
            }
        }
        // RESET ALL has no name; SET ... FROM CURRENT and the rest read
        // the server's value, which the gateway never sent.
        _ => invalid(format!("`{name}` can only be set to a quoted string or reset")),
    }
}

/// Whether a text the grammar rejected names a `portcullis.*` setting
/// (a misspelt `SET portcullis.reason`): PostgreSQL's own scanner finds an
/// identifier `portcullis` (any case, quoted or not) or a quoted
/// `portcullis.`name in it. Such a text is the gateway's to refuse, never
/// the server's to read, whatever the policy does with unparsable text:
/// its reason would reach the server.
pub(super) fn named_in_unparsed(sql: &str) -> bool {
    if sql.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)) {
        return false;
    }
    let Ok(tokens) = pg_query::scan_tokens(sql) else { return false };
    tokens.iter().any(|t| {
        let ident = matches!(pb::Token::try_from(t.token), Ok(pb::Token::Ident | pb::Token::Uident));
        let text = usize::try_from(t.start)
            .ok()
            .zip(usize::try_from(t.end).ok())
            .and_then(|(start, end)| sql.get(start..end))
            .unwrap_or_default();
        let name = text.trim_matches('"').to_ascii_lowercase();
        ident && (name == "portcullis" || name.starts_with(PREFIX) || text.to_ascii_lowercase().starts_with("u&"))
    })
}
