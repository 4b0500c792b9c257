//! Whole rows rendered as JSON, masked field by field.
//!
//! `to_json(t)`, `to_jsonb(t)` and `row_to_json(t)` write a row of `t` as
//! one JSON object whose keys are its column names; `json_agg(t)` and
//! `jsonb_agg(t)` write an array of such objects. When the engine knows
//! that a result column is such a value ([`WholeRow`]), only the members
//! a mask covers change: the value stays JSON of its type, and a table no
//! mask reaches comes back as the server wrote it.
//!
//! The rewriter reads the row level only (the object, or the objects of
//! the array); a member's value is skipped as a whole, whatever it nests.
//! A value that is not laid out as the engine expects (another top-level
//! type, a key it cannot place) is not edited: the caller masks it whole.

use super::strategy::Masking;
use crate::analyze::RowLayout;

/// What happens to one member of a row.
pub(crate) enum Field {
    /// The value passes as it is.
    Keep,
    /// The value is masked with this masking (a JSON `null` stays `null`).
    Mask(Masking),
}

/// Rewrites the row-level members of `text` (JSON laid out as `layout`)
/// that `field` masks. `Ok(None)`: nothing changed. `Err(())`: the value
/// is not laid out as expected, or `field` cannot place a key.
pub(crate) fn mask_json(
    text: &str,
    layout: RowLayout,
    field: &mut dyn FnMut(&str) -> Result<Field, ()>,
) -> Result<Option<String>, ()> {
    let bytes = text.as_bytes();
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut i = skip_ws(bytes, 0);
    match layout {
        RowLayout::JsonObject => i = object(text, i, field, &mut edits)?,
        RowLayout::JsonArray => {
            if bytes.get(i) != Some(&b'[') {
                return Err(());
            }
            i = skip_ws(bytes, i + 1);
            if bytes.get(i) == Some(&b']') {
                i += 1;
            } else {
                loop {
                    i = object(text, i, field, &mut edits)?;
                    i = skip_ws(bytes, i);
                    match bytes.get(i) {
                        Some(b',') => i = skip_ws(bytes, i + 1),
                        Some(b']') => {
                            i += 1;
                            break;
                        }
                        _ => return Err(()),
                    }
                }
            }
        }
    }
    if skip_ws(bytes, i) != bytes.len() {
        return Err(());
    }
    if edits.is_empty() {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, replacement) in edits {
        out.push_str(text.get(at..start).ok_or(())?);
        out.push_str(&replacement);
        at = end;
    }
    out.push_str(text.get(at..).ok_or(())?);
    Ok(Some(out))
}

/// One row object starting at `i`; returns the index after it.
fn object(
    text: &str,
    mut i: usize,
    field: &mut dyn FnMut(&str) -> Result<Field, ()>,
    edits: &mut Vec<(usize, usize, String)>,
) -> Result<usize, ()> {
    let bytes = text.as_bytes();
    if bytes.get(i) != Some(&b'{') {
        return Err(());
    }
    i = skip_ws(bytes, i + 1);
    if bytes.get(i) == Some(&b'}') {
        return Ok(i + 1);
    }
    loop {
        let key_end = string_end(bytes, i)?;
        let key: String = serde_json::from_str(text.get(i..key_end).ok_or(())?).map_err(|_| ())?;
        i = skip_ws(bytes, key_end);
        if bytes.get(i) != Some(&b':') {
            return Err(());
        }
        let start = skip_ws(bytes, i + 1);
        let end = value_end(bytes, start)?;
        if let Field::Mask(masking) = field(&key)? {
            let raw = text.get(start..end).ok_or(())?;
            if raw != "null" {
                // A string member is masked on its text, anything else on
                // the JSON that writes it.
                let plain = if raw.starts_with('"') {
                    serde_json::from_str::<String>(raw).map_err(|_| ())?
                } else {
                    raw.to_string()
                };
                let masked = match masking.apply(&plain) {
                    Some(m) => serde_json::to_string(&m).map_err(|_| ())?,
                    None => "null".to_string(),
                };
                edits.push((start, end, masked));
            }
        }
        i = skip_ws(bytes, end);
        match bytes.get(i) {
            Some(b',') => i = skip_ws(bytes, i + 1),
            Some(b'}') => return Ok(i + 1),
            _ => return Err(()),
        }
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index after the JSON string starting at `i`.
fn string_end(bytes: &[u8], i: usize) -> Result<usize, ()> {
    if bytes.get(i) != Some(&b'"') {
        return Err(());
    }
    let mut j = i + 1;
    loop {
        match bytes.get(j) {
            Some(b'"') => return Ok(j + 1),
            Some(b'\\') => j += 2,
            Some(_) => j += 1,
            None => return Err(()),
        }
    }
}

/// The index after the JSON value starting at `i`: a string, an object or
/// an array (skipped by counting brackets outside strings, so nesting
/// costs no stack), or a scalar.
fn value_end(bytes: &[u8], i: usize) -> Result<usize, ()> {
    match bytes.get(i) {
        Some(b'"') => string_end(bytes, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match bytes.get(j) {
                    Some(b'"') => {
                        j = string_end(bytes, j)?;
                        continue;
                    }
                    Some(b'{' | b'[') => depth += 1,
                    Some(b'}' | b']') => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    Some(_) => {}
                    None => return Err(()),
                }
                j += 1;
            }
        }
        Some(_) => {
            let mut j = i;
            while let Some(&b) = bytes.get(j) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' | b'{' | b'[' | b'"' | b':') {
                    break;
                }
                j += 1;
            }
            if j == i {
                Err(())
            } else {
                Ok(j)
            }
        }
        None => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Strategy;

    fn redact_ssn(text: &str, layout: RowLayout) -> Result<Option<String>, ()> {
        let masking = Masking::new(Strategy::Redact);
        mask_json(text, layout, &mut |k| Ok(if k == "ssn" { Field::Mask(masking.clone()) } else { Field::Keep }))
    }

    #[test]
    fn only_masked_members_change() {
        let row = r#"{"id": 1, "ssn": "123-45-6789", "doc": {"ssn": "x", "a": [1, "]"]}}"#;
        assert_eq!(
            redact_ssn(row, RowLayout::JsonObject),
            Ok(Some(r#"{"id": 1, "ssn": "[redacted]", "doc": {"ssn": "x", "a": [1, "]"]}}"#.to_string()))
        );
        assert_eq!(redact_ssn(r#"{"id":1,"name":"a"}"#, RowLayout::JsonObject), Ok(None));
        assert_eq!(redact_ssn(r#"{"ssn":null}"#, RowLayout::JsonObject), Ok(None));
        assert_eq!(
            redact_ssn(r#"{"ssn":123456789}"#, RowLayout::JsonObject),
            Ok(Some(r#"{"ssn":"[redacted]"}"#.into()))
        );
    }

    #[test]
    fn arrays_of_rows() {
        let rows = "[{\"ssn\":\"1\"}, \n {\"ssn\":\"\\u0032\",\"id\":2}]";
        assert_eq!(
            redact_ssn(rows, RowLayout::JsonArray),
            Ok(Some("[{\"ssn\":\"[redacted]\"}, \n {\"ssn\":\"[redacted]\",\"id\":2}]".to_string()))
        );
        assert_eq!(redact_ssn("[]", RowLayout::JsonArray), Ok(None));
    }

    #[test]
    fn escaped_keys_are_read_as_json_writes_them() {
        assert_eq!(
            redact_ssn(r#"{"\u0073sn":"1"}"#, RowLayout::JsonObject),
            Ok(Some(r#"{"\u0073sn":"[redacted]"}"#.to_string()))
        );
    }

    #[test]
    fn values_not_laid_out_as_rows_are_refused() {
        for text in
            ["[1]", "\"ssn\"", "{\"ssn\" 1}", "{\"ssn\":\"1\"", "{\"ssn\":\"1\"} x", "{\"ssn\":}", "[{\"a\":1},]"]
        {
            assert_eq!(redact_ssn(text, RowLayout::JsonObject), Err(()), "{text}");
        }
        assert_eq!(redact_ssn("{}", RowLayout::JsonArray), Err(()));
        assert_eq!(mask_json(r#"{"a":1}"#, RowLayout::JsonObject, &mut |_| Err(())), Err(()));
    }
}
