//! Result masking (POLICY.md §5): which result columns are masked, and how.
//!
//! The gateway describes the result's columns ([`ColumnInfo`]: the source
//! column the server reports for plain references, resolved through the
//! catalog, and whether the type is text) and asks the engine for a
//! [`RowMasker`] once per statement; it then calls
//! [`RowMasker::mask_row`] on every row. A statement with no masked column
//! gets a masker for which [`RowMasker::is_noop`] holds, and rows pass
//! untouched.
//!
//! A column is masked when one of its sources is covered by a mask the
//! caller is not exempt from:
//!
//! - a column the server reports as a plain reference has that source, and
//!   keeps the mask's strategy;
//! - a computed column takes the lineage of the statement's analysis
//!   ([`OutputColumn`](crate::OutputColumn)): a plain reference, alias or
//!   cast to text keeps the strategy, anything else derived from a masked
//!   column is masked whole ([`Masking::whole`]);
//! - a column whose lineage cannot be proven (a function in FROM, a star
//!   over a subquery, a whole-row value) is masked whole as soon as any mask
//!   applies to the caller.
//!
//! Masked values other than NULL are text: a masked column whose type is not
//! text is listed in [`RowMasker::retyped_columns`], and the gateway
//! describes it to the client as `text`.
//!
//! ```
//! use std::borrow::Cow;
//! use policy_core::{ColumnInfo, Engine, Identity, Policy};
//! let policy = Policy::from_toml_str(r#"
//!     version = 1
//!     [[mask]]
//!     name = "ssn"
//!     columns = ["*.*.ssn"]
//!     strategy = "partial"
//!     show_last = 4
//! "#, "p.toml")?;
//! let engine = Engine::new(policy, Default::default())?;
//! let session = engine.new_session();
//! let analysis = engine.analyze(&session, "SELECT name, ssn FROM users");
//! let columns = [
//!     ColumnInfo::text("name", Some("public.users.name")),
//!     ColumnInfo::text("ssn", Some("public.users.ssn")),
//! ];
//! let masker = engine.masker(&Identity::new("bob"), &analysis.statements[0], &columns);
//! let mut row = vec![Some(Cow::Borrowed(&b"Bob"[..])), Some(Cow::Borrowed(&b"123-45-6789"[..]))];
//! masker.mask_row(&mut row);
//! assert_eq!(row[0].as_deref(), Some(&b"Bob"[..]));
//! assert_eq!(row[1].as_deref(), Some(&b"****6789"[..]));
//! # Ok::<(), policy_core::PolicyError>(())
//! ```

mod strategy;

use std::borrow::Cow;
use std::sync::Arc;

pub use strategy::{Masking, REDACTED};

use crate::analyze::StatementFacts;
use crate::identity::Identity;
use crate::policy::{Mask, Patterns, Strategy};

/// One result column, as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// The column's name in the result.
    pub name: String,
    /// `schema.table.column` when the server reports the column as a plain
    /// reference to a table column (RowDescription's table OID and
    /// attribute number, resolved through the catalog).
    pub source: Option<String>,
    /// Whether the column's type is text-like (`text`, `varchar`,
    /// `bpchar`, `name`, `unknown`): masked values fit it as they are.
    pub text_type: bool,
    /// Whether values arrive in binary format.
    pub binary: bool,
}

impl ColumnInfo {
    /// A text-format, text-typed column.
    pub fn text(name: &str, source: Option<&str>) -> Self {
        ColumnInfo { name: name.to_string(), source: source.map(str::to_string), text_type: true, binary: false }
    }
}

/// A mask rule, compiled.
#[derive(Debug, Clone)]
pub(crate) struct ColumnMask {
    pub(crate) name: String,
    pub(crate) columns: Patterns,
    pub(crate) masking: Masking,
    pub(crate) exempt_groups: Vec<String>,
}

impl ColumnMask {
    pub(crate) fn compile(mask: &Mask, key: Option<Arc<[u8]>>) -> Self {
        ColumnMask {
            name: mask.name.clone(),
            columns: mask.columns.clone(),
            masking: Masking {
                strategy: mask.strategy,
                show_last: mask.show_last,
                value: mask.value.clone().unwrap_or_else(|| REDACTED.to_string()),
                key,
            },
            exempt_groups: mask.exempt_groups.clone(),
        }
    }

    fn applies_to(&self, identity: &Identity) -> bool {
        !self.exempt_groups.iter().any(|g| identity.groups.contains(g))
    }
}

/// What happens to one column.
#[derive(Debug, Clone)]
struct ColumnPlan {
    masking: Masking,
    /// The mask that decided it (for diagnostics).
    mask: String,
}

/// Masks the rows of one statement's result. Built by
/// [`Engine::masker`](crate::Engine::masker).
#[derive(Debug, Clone, Default)]
pub struct RowMasker {
    plan: Vec<Option<ColumnPlan>>,
    binary: Vec<bool>,
    retyped: Vec<usize>,
    masked: usize,
}

impl RowMasker {
    pub(crate) fn new(
        masks: &[ColumnMask],
        identity: &Identity,
        facts: &StatementFacts,
        columns: &[ColumnInfo],
    ) -> Self {
        let active: Vec<&ColumnMask> = masks.iter().filter(|m| m.applies_to(identity)).collect();
        if active.is_empty() || columns.is_empty() {
            return RowMasker::default();
        }
        // Lineage lines up with the result only when no star was expanded.
        let lineage = (facts.output_columns.len() == columns.len()
            && facts.output_columns.iter().all(|c| c.name != "*"))
        .then_some(&facts.output_columns);
        let mut plan = Vec::with_capacity(columns.len());
        let mut retyped = Vec::new();
        for (i, column) in columns.iter().enumerate() {
            let decided = match (&column.source, lineage.and_then(|l| l.get(i))) {
                (Some(source), _) => active
                    .iter()
                    .find(|m| m.columns.covers(source))
                    .map(|m| ColumnPlan { masking: m.masking.clone(), mask: m.name.clone() }),
                (None, Some(out)) if !out.unknown => {
                    let whole_row = out.sources.iter().any(|s| s.ends_with(".*"));
                    match active.iter().find(|m| out.sources.iter().any(|s| m.columns.covers(s))) {
                        Some(m) if out.direct && !whole_row => {
                            Some(ColumnPlan { masking: m.masking.clone(), mask: m.name.clone() })
                        }
                        Some(m) => Some(ColumnPlan { masking: m.masking.whole(), mask: m.name.clone() }),
                        // A whole row carries every column of its table.
                        None if whole_row => {
                            active.first().map(|m| ColumnPlan { masking: m.masking.whole(), mask: m.name.clone() })
                        }
                        None => None,
                    }
                }
                // Lineage not proven: masked whole.
                _ => active.first().map(|m| ColumnPlan {
                    masking: Masking { strategy: Strategy::Redact, ..m.masking.clone() },
                    mask: m.name.clone(),
                }),
            };
            if let Some(p) = &decided {
                if p.masking.strategy != Strategy::Null && !column.text_type {
                    retyped.push(i);
                }
            }
            plan.push(decided);
        }
        let masked = plan.iter().filter(|p| p.is_some()).count();
        RowMasker { plan, binary: columns.iter().map(|c| c.binary).collect(), retyped, masked }
    }

    /// Whether rows pass untouched.
    pub fn is_noop(&self) -> bool {
        self.masked == 0
    }

    /// Columns to describe to the client as `text` (masked values are text).
    pub fn retyped_columns(&self) -> &[usize] {
        &self.retyped
    }

    /// The mask deciding column `i`, if any.
    pub fn mask_of(&self, i: usize) -> Option<&str> {
        self.plan.get(i).and_then(|p| p.as_ref()).map(|p| p.mask.as_str())
    }

    /// Masks one row in place; untouched values stay borrowed. Values are
    /// in the format [`ColumnInfo::binary`] said; masked ones come back as
    /// UTF-8 text (or NULL).
    pub fn mask_row(&self, row: &mut [Option<Cow<'_, [u8]>>]) {
        if self.is_noop() {
            return;
        }
        for (i, (value, plan)) in row.iter_mut().zip(&self.plan).enumerate() {
            let (Some(plan), Some(bytes)) = (plan, value.as_ref()) else { continue };
            let binary = self.binary.get(i).copied().unwrap_or(false);
            let masked = match std::str::from_utf8(bytes) {
                // Binary values of non-text types have no text to show a
                // part of: hashed on their bytes, otherwise masked whole.
                Ok(text) if !binary || self.retyped.binary_search(&i).is_err() => plan.masking.apply(text),
                _ => match plan.masking.strategy {
                    Strategy::Hash => plan.masking.key.as_ref().map(|k| strategy::pseudonym(k, bytes)),
                    Strategy::Null => None,
                    _ => plan.masking.whole().apply(""),
                },
            };
            *value = masked.map(|m| Cow::Owned(m.into_bytes()));
        }
    }
}
