//! How a result value is written, by PostgreSQL type and format, and how a
//! detector's replacement is spliced into it without breaking it.
//!
//! Detectors see a value as the client will (docs/policy.md §5); a replaced span
//! must leave the value decodable for its type:
//!
//! - text-like values (`text`, `varchar`, `char`, `name`, `unknown`, `xml`)
//!   take any replacement;
//! - JSON (`json`; `jsonb`, whose binary form is a version byte and the
//!   text): a replacement inside a JSON string is escaped, one outside a
//!   string (a bare number such as `{"card": 4111111111111111}`) becomes a
//!   JSON string;
//! - arrays, composites and types the engine does not know, in text format:
//!   a replacement that holds a character with meaning in their syntax
//!   (`{}(),"\` or white space) is written as [`REDACTED`];
//! - the same in binary format cannot be edited in place (lengths are
//!   encoded): a value holding a match becomes NULL;
//! - numbers, dates, times, UUIDs, network addresses, booleans and `bytea`
//!   hold no free text and are not scanned (mask such columns with a column
//!   mask).

use crate::detect::{DetectorMatch, Detectors};
use crate::mask::REDACTED;

/// PostgreSQL type OIDs the masking knows by name.
pub(crate) mod oid {
    pub(crate) const TEXT: u32 = 25;
    pub(crate) const VARCHAR: u32 = 1043;
    pub(crate) const BPCHAR: u32 = 1042;
    pub(crate) const NAME: u32 = 19;
    pub(crate) const UNKNOWN: u32 = 705;
    pub(crate) const XML: u32 = 142;
    pub(crate) const JSON: u32 = 114;
    pub(crate) const JSONB: u32 = 3802;
}

/// Whether masked text fits a column of this type as it is.
pub(crate) fn is_text_type(type_oid: u32) -> bool {
    matches!(type_oid, oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN)
}

/// Types whose values hold no free text: not scanned by detectors.
fn holds_no_text(type_oid: u32) -> bool {
    matches!(
        type_oid,
        16 // bool
        | 17 // bytea
        | 20 | 21 | 23 | 26 | 27 | 28 | 29 | 5069 // integers, oid, tid, xid, cid, xid8
        | 700 | 701 | 1700 | 790 // float4, float8, numeric, money
        | 1082 | 1083 | 1114 | 1184 | 1186 | 1266 // date and time types
        | 2950 // uuid
        | 650 | 869 | 829 | 774 // cidr, inet, macaddr, macaddr8
        | 3220 | 1560 | 1562 // pg_lsn, bit, varbit
        | 24 | 2202 | 2203 | 2204 | 2205 | 2206 | 3734 | 3769 | 4089 | 4096 // reg* types
        | 600 | 601 | 602 | 603 | 604 | 628 | 718 // geometric types
        // arrays of the above
        | 1000 | 1001 | 1005 | 1007 | 1016 | 1028 | 1021 | 1022 | 1231 | 791
        | 1182 | 1183 | 1115 | 1185 | 1187 | 1270 | 2951 | 651 | 1041 | 1040
    )
}

/// How detectors treat one column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// Not scanned.
    Skip,
    /// Text: any replacement fits.
    Plain,
    /// JSON text.
    Json,
    /// Binary `jsonb`: a version byte, then JSON text.
    JsonbBinary,
    /// Text form of an array, a composite or an unknown type.
    Structured,
    /// Binary form of an array, a composite or an unknown type: a value
    /// holding a match becomes NULL.
    OpaqueBinary,
}

impl Syntax {
    /// The syntax of values of `type_oid` in the given format.
    pub(crate) fn of(type_oid: u32, binary: bool) -> Syntax {
        match type_oid {
            t if holds_no_text(t) => Syntax::Skip,
            t if is_text_type(t) || t == oid::XML => Syntax::Plain,
            oid::JSON => Syntax::Json,
            oid::JSONB if binary => Syntax::JsonbBinary,
            oid::JSONB => Syntax::Json,
            _ if binary => Syntax::OpaqueBinary,
            _ => Syntax::Structured,
        }
    }
}

/// What scanning one value gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scanned {
    /// Nothing matched: the value stays as it is.
    Clean,
    /// The value with the matched spans replaced.
    Replaced(Vec<u8>),
    /// The value cannot be edited safely: it becomes NULL.
    Null,
}

/// Scans `value` (in the column's format) with the active detectors and
/// replaces what they find. Allocates only when something matched.
pub(crate) fn scan(detectors: &Detectors, active: &[bool], syntax: Syntax, value: &[u8]) -> Scanned {
    let (prefix, body) = match syntax {
        Syntax::Skip => return Scanned::Clean,
        Syntax::JsonbBinary => match value.split_first() {
            Some((&version, rest)) => (Some(version), rest),
            None => return Scanned::Clean,
        },
        _ => (None, value),
    };
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(_) if syntax == Syntax::OpaqueBinary => {
            // Binary encodings mix length words with text: scan what is
            // text, and drop the value on any match.
            let lossy = String::from_utf8_lossy(body);
            let mut found = Vec::new();
            detectors.find(&lossy, active, &mut found);
            return if found.is_empty() { Scanned::Clean } else { Scanned::Null };
        }
        // Not UTF-8 in a text position: the server only sends valid text
        // in a UTF-8 session; anything else is not ours to forward.
        Err(_) => return Scanned::Null,
    };
    let mut found = Vec::new();
    detectors.find(text, active, &mut found);
    if found.is_empty() {
        return Scanned::Clean;
    }
    if syntax == Syntax::OpaqueBinary {
        return Scanned::Null;
    }
    let spliced = match syntax {
        Syntax::Json => splice_json(detectors, text, &found),
        Syntax::JsonbBinary => splice_json(detectors, text, &found),
        Syntax::Structured => splice(detectors, text, &found, structured_safe),
        _ => splice(detectors, text, &found, |r| r),
    };
    match spliced {
        Some(s) => {
            let mut out = Vec::with_capacity(s.len() + 1);
            out.extend(prefix);
            out.extend_from_slice(s.as_bytes());
            Scanned::Replaced(out)
        }
        None => Scanned::Null,
    }
}

/// The replacement of one match (a span cannot be NULL: `null` writes
/// [`REDACTED`]).
fn replacement(detectors: &Detectors, text: &str, m: &DetectorMatch) -> String {
    let span = text.get(m.start..m.end).unwrap_or_default();
    detectors.masking(m.detector).and_then(|masking| masking.apply(span)).unwrap_or_else(|| REDACTED.to_string())
}

fn splice(
    detectors: &Detectors,
    text: &str,
    found: &[DetectorMatch],
    fit: impl Fn(String) -> String,
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for m in found {
        out.push_str(text.get(last..m.start)?);
        out.push_str(&fit(replacement(detectors, text, m)));
        last = m.end;
    }
    out.push_str(text.get(last..)?);
    Some(out)
}

/// A replacement safe inside array or composite text.
fn structured_safe(r: String) -> String {
    let special = |c: char| matches!(c, '{' | '}' | '(' | ')' | ',' | '"' | '\\') || c.is_whitespace();
    if r.is_empty() || r.contains(special) {
        REDACTED.to_string()
    } else {
        r
    }
}

/// Splices replacements into JSON text: escaped inside strings, quoted
/// outside them. A match that crosses a string boundary (only a custom
/// pattern can) makes the whole value the JSON string `"[redacted]"`.
fn splice_json(detectors: &Detectors, text: &str, found: &[DetectorMatch]) -> Option<String> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 2);
    let mut in_string = false;
    let mut escaped = false;
    let mut pos = 0;
    let mut last = 0;
    for (k, m) in found.iter().enumerate() {
        // Advance the string state to the match's start.
        while pos < m.start {
            step(b.get(pos).copied().unwrap_or(0), &mut in_string, &mut escaped);
            pos += 1;
        }
        let inside = in_string;
        // The span must not open or close a string.
        let mut state = (in_string, escaped);
        while pos < m.end {
            step(b.get(pos).copied().unwrap_or(0), &mut state.0, &mut state.1);
            pos += 1;
        }
        if state.0 != inside || (inside && escaped) {
            return Some(format!("\"{REDACTED}\""));
        }
        (in_string, escaped) = state;
        let r = replacement(detectors, text, m);
        if inside {
            out.push_str(text.get(last..m.start)?);
            json_escape_into(&r, &mut out);
            last = m.end;
        } else {
            // Outside a string the match is part of a number: the whole
            // number becomes one string (a sign or digits left beside a
            // quoted replacement would not be JSON).
            let number = |c: &u8| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E');
            let mut start = m.start;
            while start > last && b.get(start - 1).is_some_and(number) {
                start -= 1;
            }
            let mut end = m.end;
            while b.get(end).is_some_and(number) {
                end += 1;
            }
            if found.get(k + 1).is_some_and(|next| next.start < end) {
                return Some(format!("\"{REDACTED}\""));
            }
            out.push_str(text.get(last..start)?);
            out.push('"');
            json_escape_into(text.get(start..m.start)?, &mut out);
            json_escape_into(&r, &mut out);
            json_escape_into(text.get(m.end..end)?, &mut out);
            out.push('"');
            // Digits and signs hold no quote: the string state is as it was.
            pos = end;
            last = end;
        }
    }
    out.push_str(text.get(last..)?);
    Some(out)
}

fn step(byte: u8, in_string: &mut bool, escaped: &mut bool) {
    if *escaped {
        *escaped = false;
    } else if *in_string && byte == b'\\' {
        *escaped = true;
    } else if byte == b'"' {
        *in_string = !*in_string;
    }
}

fn json_escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn detectors() -> Detectors {
        let p = Policy::from_toml_str(
            r#"
            version = 1
            [[detector]]
            name = "cards"
            kinds = ["credit_card"]
            strategy = "partial"
            show_last = 4
            [[detector]]
            name = "mail"
            kinds = ["email"]
            strategy = "fixed"
            value = "a \"b\" {c}"
            "#,
            "p.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Detectors::new(&p.detectors, None)
    }

    fn text(s: Scanned) -> String {
        match s {
            Scanned::Replaced(v) => String::from_utf8(v).unwrap_or_default(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn json_numbers_become_strings_and_strings_stay_valid() {
        let d = detectors();
        let v = br#"{"card": 4111111111111111, "note": "mail bob@example.com"}"#;
        let out = text(scan(&d, &[], Syntax::Json, v));
        assert_eq!(out, r#"{"card": "****1111", "note": "mail a \"b\" {c}"}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
        assert_eq!(scan(&d, &[], Syntax::Json, br#"{"a": 1}"#), Scanned::Clean);
    }

    #[test]
    fn a_number_a_match_is_part_of_becomes_one_string() {
        let d = detectors();
        // The sign and the digits beside the match stay inside the string.
        for (v, want) in
            [(&b"-4111111111111111"[..], r#""-****1111""#), (b"[1, -4111111111111111]", r#"[1, "-****1111"]"#)]
        {
            let out = text(scan(&d, &[], Syntax::Json, v));
            assert_eq!(out, want);
            assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{out}");
        }
    }

    #[test]
    fn jsonb_binary_keeps_its_version_byte() {
        let d = detectors();
        let out = scan(&d, &[], Syntax::JsonbBinary, b"\x01[4111111111111111]");
        assert_eq!(out, Scanned::Replaced(b"\x01[\"****1111\"]".to_vec()));
    }

    #[test]
    fn structured_text_never_gets_syntax_characters() {
        let d = detectors();
        let out = text(scan(&d, &[], Syntax::Structured, b"{4111111111111111,bob@example.com}"));
        assert_eq!(out, "{****1111,[redacted]}");
    }

    #[test]
    fn opaque_binary_values_with_a_match_become_null() {
        let d = detectors();
        let mut array = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 25, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 16];
        array.extend_from_slice(b"4111111111111111");
        assert_eq!(scan(&d, &[], Syntax::OpaqueBinary, &array), Scanned::Null);
        assert_eq!(scan(&d, &[], Syntax::OpaqueBinary, &[0, 0, 0, 1, 0xff]), Scanned::Clean);
    }

    #[test]
    fn types_without_text_are_not_scanned() {
        assert_eq!(Syntax::of(20, false), Syntax::Skip);
        assert_eq!(Syntax::of(1700, true), Syntax::Skip);
        assert_eq!(Syntax::of(25, true), Syntax::Plain);
        assert_eq!(Syntax::of(3802, true), Syntax::JsonbBinary);
        assert_eq!(Syntax::of(1009, false), Syntax::Structured);
        assert_eq!(Syntax::of(1009, true), Syntax::OpaqueBinary);
        assert_eq!(Syntax::of(16_500, false), Syntax::Structured);
        let d = detectors();
        assert_eq!(scan(&d, &[], Syntax::Skip, b"4111111111111111"), Scanned::Clean);
    }
}
