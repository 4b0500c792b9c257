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
//!
//! A whole row as a composite (`SELECT u FROM users u`, `u::text`) is
//! rewritten field by field too, by position, in PostgreSQL's text record
//! format (`(1,"a b",)`: fields quoted when they need it, an empty field
//! for NULL) and binary record format (a field count, then each field's
//! type OID, length and bytes).

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
        RowLayout::Composite => return Err(()),
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

/// Rewrites the fields of a record in PostgreSQL's text format that
/// `field` (by position) masks. `Ok(None)`: nothing changed. `Err(())`:
/// not a record as `record_out` writes one, or `field` cannot place a
/// position (a field count the row does not have).
pub(crate) fn mask_record_text(
    text: &str,
    fields: usize,
    field: &mut dyn FnMut(usize) -> Result<Field, ()>,
) -> Result<Option<String>, ()> {
    let body = text.strip_prefix('(').and_then(|t| t.strip_suffix(')')).ok_or(())?;
    let mut values = record_fields(body)?;
    if values.len() != fields {
        return Err(());
    }
    let mut changed = false;
    for (i, value) in values.iter_mut().enumerate() {
        if let Field::Mask(masking) = field(i)? {
            if let Some(v) = value.as_ref() {
                *value = masking.apply(v);
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('(');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let Some(v) = value else { continue };
        let needs_quotes =
            v.is_empty() || v.chars().any(|c| matches!(c, '"' | '\\' | '(' | ')' | ',') || c.is_ascii_whitespace());
        if !needs_quotes {
            out.push_str(v);
            continue;
        }
        out.push('"');
        for c in v.chars() {
            if c == '"' || c == '\\' {
                out.push(c);
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push(')');
    Ok(Some(out))
}

/// The fields of a record's text between its parentheses, as `record_in`
/// reads them: separated by unquoted commas, an empty field is NULL, `""`
/// inside quotes is a quote and a backslash takes the next character as
/// it is.
fn record_fields(body: &str) -> Result<Vec<Option<String>>, ()> {
    let mut fields = Vec::new();
    let mut value = String::new();
    let (mut present, mut quoted) = (false, false);
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                value.push('"');
            }
            '"' => {
                quoted = !quoted;
                present = true;
            }
            '\\' => {
                value.push(chars.next().ok_or(())?);
                present = true;
            }
            ',' if !quoted => {
                fields.push(present.then(|| std::mem::take(&mut value)));
                present = false;
            }
            c => {
                value.push(c);
                present = true;
            }
        }
    }
    if quoted {
        return Err(());
    }
    fields.push(present.then_some(value));
    Ok(fields)
}

/// Rewrites the fields of a record in PostgreSQL's binary format that
/// `field` (by position) masks: a masked field of a text-like type holds
/// the masked text, one of any other type becomes NULL (its binary form
/// cannot hold text). `Ok(None)`: nothing changed.
pub(crate) fn mask_record_binary(
    value: &[u8],
    fields: usize,
    field: &mut dyn FnMut(usize) -> Result<Field, ()>,
) -> Result<Option<Vec<u8>>, ()> {
    let word = |at: usize| -> Result<[u8; 4], ()> {
        match value.get(at..at + 4) {
            Some(&[a, b, c, d]) => Ok([a, b, c, d]),
            _ => Err(()),
        }
    };
    let count = i32::from_be_bytes(word(0)?);
    if usize::try_from(count).ok() != Some(fields) {
        return Err(());
    }
    let mut out = value.get(..4).ok_or(())?.to_vec();
    let mut at = 4;
    let mut changed = false;
    for i in 0..fields {
        let type_oid = u32::from_be_bytes(word(at)?);
        let len = i32::from_be_bytes(word(at + 4)?);
        out.extend_from_slice(value.get(at..at + 4).ok_or(())?);
        at += 8;
        let bytes = match len {
            -1 => None,
            n => {
                let n = usize::try_from(n).map_err(|_| ())?;
                let bytes = value.get(at..at + n).ok_or(())?;
                at += n;
                Some(bytes)
            }
        };
        let masked = match (field(i)?, bytes) {
            (Field::Mask(masking), Some(bytes)) => {
                changed = true;
                if super::values::is_text_type(type_oid) {
                    masking.apply(&String::from_utf8_lossy(bytes)).map(String::into_bytes)
                } else {
                    None
                }
            }
            (_, bytes) => bytes.map(<[u8]>::to_vec),
        };
        match masked {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&i32::try_from(v.len()).map_err(|_| ())?.to_be_bytes());
                out.extend_from_slice(&v);
            }
        }
    }
    if at != value.len() {
        return Err(());
    }
    Ok(changed.then_some(out))
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

    fn redact_second(text: &str, fields: usize) -> Result<Option<String>, ()> {
        let masking = Masking::new(Strategy::Redact);
        mask_record_text(text, fields, &mut |i| Ok(if i == 1 { Field::Mask(masking.clone()) } else { Field::Keep }))
    }

    #[test]
    fn records_are_masked_field_by_field_and_written_as_record_out_writes_them() {
        assert_eq!(redact_second("(1,123-45-6789,x)", 3), Ok(Some("(1,[redacted],x)".to_string())));
        assert_eq!(
            redact_second(r#"("a ""b"" \\ c","1,2",)"#, 3),
            Ok(Some(r#"("a ""b"" \\ c",[redacted],)"#.to_string())),
            "the other fields are written back as they were read"
        );
        assert_eq!(redact_second("(1,,x)", 3), Ok(None), "NULL stays NULL");
        assert_eq!(redact_second("(1,\"\",x)", 3), Ok(Some("(1,[redacted],x)".to_string())));
        let masking = Masking { value: "a,b".into(), ..Masking::new(Strategy::Fixed) };
        let quoted =
            mask_record_text("(1,x)", 2, &mut |i| Ok(if i == 1 { Field::Mask(masking.clone()) } else { Field::Keep }));
        assert_eq!(quoted, Ok(Some("(1,\"a,b\")".to_string())));
        for bad in ["1,2", "(1,2", "(1,\"2)", "(1,2,3)", "(1)"] {
            assert_eq!(redact_second(bad, 2), Err(()), "{bad}");
        }
    }

    #[test]
    fn binary_records_keep_text_fields_as_text_and_null_the_others() {
        let record = |fields: &[(u32, Option<&[u8]>)]| {
            let mut out = (fields.len() as i32).to_be_bytes().to_vec();
            for (oid, v) in fields {
                out.extend_from_slice(&oid.to_be_bytes());
                match v {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        out.extend_from_slice(v);
                    }
                }
            }
            out
        };
        let masking = Masking::new(Strategy::Redact);
        let mut mask_all = |i: usize| Ok(if i > 0 { Field::Mask(masking.clone()) } else { Field::Keep });
        let value = record(&[(23, Some(&[0, 0, 0, 1])), (25, Some(b"123-45-6789")), (23, Some(&[0, 0, 0, 7]))]);
        let want = record(&[(23, Some(&[0, 0, 0, 1])), (25, Some(b"[redacted]")), (23, None)]);
        assert_eq!(mask_record_binary(&value, 3, &mut mask_all), Ok(Some(want)));
        assert_eq!(mask_record_binary(&value, 2, &mut mask_all), Err(()), "a field count the row does not have");
        assert_eq!(mask_record_binary(&value[..value.len() - 1], 3, &mut mask_all), Err(()));
        let clean = record(&[(23, Some(&[0, 0, 0, 1])), (25, None)]);
        assert_eq!(mask_record_binary(&clean, 2, &mut mask_all), Ok(None));
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
