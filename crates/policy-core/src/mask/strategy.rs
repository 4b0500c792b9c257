//! What a masked value becomes (docs/policy.md §5).
//!
//! Every strategy hides the original length unless it says otherwise:
//! `partial` shows the last `show_last` characters after a fixed-width run,
//! `email` keeps the domain after a fixed-width run, `hash` is a keyed
//! pseudonym of fixed width, `redact` and `fixed` are constants.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::policy::Strategy;

/// What `redact` writes.
pub const REDACTED: &str = "[redacted]";
/// The fixed-width run that stands for hidden characters.
pub const RUN: &str = "****";
/// Hex digits kept of a `hash` pseudonym (64 bits).
pub const HASH_HEX_DIGITS: usize = 16;

/// One masking action, ready to apply.
#[derive(Clone)]
pub struct Masking {
    /// The strategy.
    pub strategy: Strategy,
    /// `partial`: characters kept at the end.
    pub show_last: usize,
    /// `fixed`: the replacement.
    pub value: String,
    /// `hash`: the HMAC key (the engine's pseudonym key).
    pub(crate) key: Option<std::sync::Arc<[u8]>>,
}

impl std::fmt::Debug for Masking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masking")
            .field("strategy", &self.strategy)
            .field("show_last", &self.show_last)
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

impl Masking {
    /// A masking with no key (`hash` then falls back to `redact`).
    pub fn new(strategy: Strategy) -> Self {
        Masking { strategy, show_last: 4, value: REDACTED.to_string(), key: None }
    }

    /// The masking a value derived from a masked column gets: only plain
    /// references keep `partial`/`email` (pieces of a value would rebuild
    /// it) and `hash`, so anything else is masked whole, keeping `null`
    /// and `fixed`. A derived value is not hashed: with one key for all,
    /// the pseudonym of `substr(ssn, 1, 1)` would equal that of the
    /// caller's guess `'1'` derived from the same column (`CASE WHEN false
    /// THEN ssn ELSE '1' END`), an oracle for every piece of the value.
    ///
    /// ```
    /// use policy_core::{Masking, Strategy};
    /// assert_eq!(Masking::new(Strategy::Hash).whole().strategy, Strategy::Redact);
    /// assert_eq!(Masking::new(Strategy::Null).whole().strategy, Strategy::Null);
    /// ```
    pub fn whole(&self) -> Masking {
        match self.strategy {
            Strategy::Null | Strategy::Fixed | Strategy::Redact => self.clone(),
            Strategy::Partial | Strategy::Email | Strategy::Hash => {
                Masking { strategy: Strategy::Redact, ..self.clone() }
            }
        }
    }

    /// Masks `value`; `None` means SQL NULL.
    ///
    /// ```
    /// use policy_core::{Masking, Strategy};
    /// let mut m = Masking::new(Strategy::Partial);
    /// m.show_last = 4;
    /// assert_eq!(m.apply("123-45-6789").as_deref(), Some("****6789"));
    /// assert_eq!(m.apply("12").as_deref(), Some("****"));
    /// assert_eq!(Masking::new(Strategy::Email).apply("alice@example.com").as_deref(), Some("****@example.com"));
    /// assert_eq!(Masking::new(Strategy::Null).apply("x"), None);
    /// ```
    pub fn apply(&self, value: &str) -> Option<String> {
        match self.strategy {
            Strategy::Null => None,
            Strategy::Redact => Some(REDACTED.to_string()),
            Strategy::Fixed => Some(self.value.clone()),
            Strategy::Partial => {
                // Never show a value whole, nor most of a short one: the
                // tail shows only when more of the value is hidden than shown.
                let k = self.show_last;
                let hidden = |t: &str| value.get(..value.len() - t.len()).unwrap_or_default().chars().nth(k).is_some();
                let tail = last_chars(value, k).filter(|t| hidden(t));
                let mut out = String::with_capacity(RUN.len() + tail.map_or(0, str::len));
                out.push_str(RUN);
                out.push_str(tail.unwrap_or_default());
                Some(out)
            }
            Strategy::Email => match value.rsplit_once('@') {
                Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Some(format!("{RUN}@{domain}")),
                _ => Some(REDACTED.to_string()),
            },
            Strategy::Hash => Some(match &self.key {
                Some(key) => pseudonym(key, value.as_bytes()),
                None => REDACTED.to_string(),
            }),
        }
    }
}

/// The last `n` characters of `value`, when it has that many.
fn last_chars(value: &str, n: usize) -> Option<&str> {
    let start = value.char_indices().rev().nth(n.checked_sub(1)?)?.0;
    value.get(start..)
}

/// HMAC-SHA256 of `value` under `key`, as 16 lower-case hex digits.
pub(crate) fn pseudonym(key: &[u8], value: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return REDACTED.to_string() };
    mac.update(value);
    let digest = mac.finalize().into_bytes();
    digest.iter().take(HASH_HEX_DIGITS / 2).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(strategy: Strategy) -> Masking {
        Masking { key: Some(std::sync::Arc::from(&b"k"[..])), ..Masking::new(strategy) }
    }

    #[test]
    fn partial_hides_length() {
        let m = Masking { show_last: 4, ..Masking::new(Strategy::Partial) };
        assert_eq!(m.apply("4111111111111111").as_deref(), Some("****1111"));
        assert_eq!(m.apply("411111111111").as_deref(), Some("****1111"));
        assert_eq!(m.apply("1234567").as_deref(), Some("****"));
        assert_eq!(m.apply("12345678").as_deref(), Some("****"));
        assert_eq!(m.apply("123456789").as_deref(), Some("****6789"));
        assert_eq!(
            Masking { show_last: 0, ..Masking::new(Strategy::Partial) }.apply("123456789").as_deref(),
            Some("****")
        );
        assert_eq!(m.apply("").as_deref(), Some("****"));
        assert_eq!(m.apply("ééééééééé").as_deref(), Some("****éééé"));
    }

    #[test]
    fn hash_is_a_keyed_pseudonym() {
        let m = keyed(Strategy::Hash);
        let a = m.apply("alice").unwrap_or_default();
        assert_eq!(a.len(), HASH_HEX_DIGITS);
        assert_eq!(Some(a.clone()), m.apply("alice"));
        assert_ne!(Some(a.clone()), m.apply("bob"));
        let other = Masking { key: Some(std::sync::Arc::from(&b"other"[..])), ..Masking::new(Strategy::Hash) };
        assert_ne!(Some(a), other.apply("alice"));
        assert_eq!(Masking::new(Strategy::Hash).apply("alice").as_deref(), Some(REDACTED));
    }

    #[test]
    fn whole_masks_drop_partial_views() {
        assert_eq!(Masking::new(Strategy::Partial).whole().strategy, Strategy::Redact);
        assert_eq!(Masking::new(Strategy::Email).whole().strategy, Strategy::Redact);
        assert_eq!(keyed(Strategy::Hash).whole().strategy, Strategy::Redact);
        assert_eq!(Masking::new(Strategy::Null).whole().strategy, Strategy::Null);
        assert_eq!(Masking::new(Strategy::Email).apply("no-at-sign").as_deref(), Some(REDACTED));
    }
}
