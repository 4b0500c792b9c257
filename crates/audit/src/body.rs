//! Record bodies written field by field: JSON objects on one line,
//! starting with their `"type"`, as [`Writer::append`] takes them.
//!
//! The gateway writes a body for every statement and every result, so
//! this is a plain writer into a byte buffer: strings are escaped as RFC
//! 8259 requires, numbers are written as decimal digits, and nothing
//! allocates but the buffer. What it writes is one line of UTF-8 JSON by
//! construction, which is why a log writer may take it without checking
//! it again ([`Writer::append_unchecked`]).
//!
//! ```
//! use portcullis_audit::body::Body;
//! let mut out = Vec::new();
//! let mut body = Body::begin(&mut out, "result");
//! body.str("session", "a\"b");
//! body.u64("rows", 3);
//! body.bool("ran", true);
//! body.millis("ms", 1_500);
//! body.end();
//! assert_eq!(out, br#"{"type":"result","session":"a\"b","rows":3,"ran":true,"ms":1.500}"#);
//! ```
//!
//! [`Writer::append`]: crate::writer::Writer::append
//! [`Writer::append_unchecked`]: crate::writer::Writer::append_unchecked

/// A JSON object being written into a buffer; [`Body::end`] closes it.
/// Field names are written as given: they must need no escaping (the
/// writer's callers name fields with constants). The field methods are
/// always inlined, so that a constant name is written by a few stores
/// rather than a call to copy it.
#[derive(Debug)]
pub struct Body<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Body<'a> {
    /// Begins a record body of type `kind` at the end of `out`. Like a
    /// field name, `kind` must need no escaping.
    pub fn begin(out: &'a mut Vec<u8>, kind: &str) -> Body<'a> {
        out.extend_from_slice(b"{\"type\":");
        push_word(out, kind);
        Body { out }
    }

    /// Continues a record whose `"type":` key is written already (by
    /// [`Writer::append_with`](crate::writer::Writer::append_with)):
    /// writes `kind` as its value (which must need no escaping).
    pub fn after_type(out: &'a mut Vec<u8>, kind: &str) -> Body<'a> {
        push_word(out, kind);
        Body { out }
    }

    #[inline(always)]
    fn key(&mut self, key: &str) {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "field name {key:?}");
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A string field.
    #[inline(always)]
    pub fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        push_string(self.out, value);
    }

    /// A string field whose value needs no escaping, as a field name: a
    /// word the program chose (a verdict, an event), not text it was
    /// given. Written without looking at it (checked in debug builds).
    ///
    /// ```
    /// use portcullis_audit::body::Body;
    /// let mut out = Vec::new();
    /// let mut body = Body::begin(&mut out, "statement");
    /// body.word("verdict", "allow");
    /// body.end();
    /// assert_eq!(out, br#"{"type":"statement","verdict":"allow"}"#);
    /// ```
    #[inline(always)]
    pub fn word(&mut self, key: &str, value: &str) {
        self.key(key);
        push_word(self.out, value);
    }

    /// A string field, or `null`.
    #[inline(always)]
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    /// A string field made of pieces, each escaped, joined by `separator`
    /// (which must need no escaping).
    #[inline(always)]
    pub fn joined<'s>(&mut self, key: &str, pieces: impl IntoIterator<Item = &'s str>, separator: &str) {
        self.key(key);
        self.out.push(b'"');
        for (i, piece) in pieces.into_iter().enumerate() {
            if i > 0 {
                self.out.extend_from_slice(separator.as_bytes());
            }
            push_escaped(self.out, piece);
        }
        self.out.push(b'"');
    }

    /// A string field whose value is a prefix and a number joined by `-`
    /// (a session id): the prefix must need no escaping.
    #[inline(always)]
    pub fn id(&mut self, key: &str, prefix: &str, number: u64) {
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(prefix.as_bytes());
        self.out.push(b'-');
        push_decimal(self.out, number);
        self.out.push(b'"');
    }

    /// A number field.
    #[inline(always)]
    pub fn u64(&mut self, key: &str, value: u64) {
        self.key(key);
        push_decimal(self.out, value);
    }

    /// A boolean field.
    #[inline(always)]
    pub fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// A `null` field.
    #[inline(always)]
    pub fn null(&mut self, key: &str) {
        self.key(key);
        self.out.extend_from_slice(b"null");
    }

    /// A duration in milliseconds, given in microseconds: written with
    /// three decimals (`1.500` for 1500 µs), exactly.
    #[inline(always)]
    pub fn millis(&mut self, key: &str, micros: u64) {
        self.key(key);
        push_decimal(self.out, micros / 1000);
        let fraction = micros % 1000;
        self.out.extend_from_slice(&[
            b'.',
            b'0' + (fraction / 100) as u8,
            b'0' + (fraction / 10 % 10) as u8,
            b'0' + (fraction % 10) as u8,
        ]);
    }

    /// An array of strings.
    #[inline(always)]
    pub fn strs<'s>(&mut self, key: &str, values: impl IntoIterator<Item = &'s str>) {
        self.key(key);
        self.out.push(b'[');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            push_string(self.out, v);
        }
        self.out.push(b']');
    }

    /// An array of objects (not records: no `"type"`): `write` is given
    /// an [`Item`] for each, writes its fields and ends it.
    ///
    /// ```
    /// use portcullis_audit::body::Body;
    /// let mut out = Vec::new();
    /// let mut body = Body::begin(&mut out, "statement");
    /// body.objects("results", [(1, 3), (2, 0)], |item, (n, rows)| {
    ///     let mut result = item.u64("n", n);
    ///     result.u64("rows", rows);
    ///     result.end();
    /// });
    /// body.end();
    /// assert_eq!(out, br#"{"type":"statement","results":[{"n":1,"rows":3},{"n":2,"rows":0}]}"#);
    /// ```
    pub fn objects<T>(&mut self, key: &str, items: impl IntoIterator<Item = T>, mut write: impl FnMut(Item<'_>, T)) {
        self.key(key);
        self.out.push(b'[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write(Item { out: &mut *self.out }, item);
        }
        self.out.push(b']');
    }

    /// A field whose value `serde_json` writes (compact: one line, valid
    /// UTF-8). Should the value fail to serialise, the field is `null`
    /// and the error is returned.
    pub fn serde<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), serde_json::Error> {
        self.key(key);
        let start = self.out.len();
        let written = serde_json::to_writer(&mut *self.out, value);
        if written.is_err() {
            self.out.truncate(start);
            self.out.extend_from_slice(b"null");
        }
        written
    }

    /// Closes the object.
    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// An object of an array field ([`Body::objects`]) before its first
/// field: writing that field begins it.
#[derive(Debug)]
pub struct Item<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Item<'a> {
    /// Begins the object with a number field; the [`Body`] returned takes
    /// the other fields, and [`Body::end`] closes it.
    #[inline(always)]
    pub fn u64(self, key: &str, value: u64) -> Body<'a> {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "field name {key:?}");
        self.out.extend_from_slice(b"{\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        push_decimal(self.out, value);
        Body { out: self.out }
    }
}

/// How a byte is written inside a JSON string: `None` as itself,
/// otherwise the character after the backslash (`u` for `\u00XX`).
fn escape(b: u8) -> Option<u8> {
    match b {
        b'"' => Some(b'"'),
        b'\\' => Some(b'\\'),
        0x08 => Some(b'b'),
        0x09 => Some(b't'),
        0x0a => Some(b'n'),
        0x0c => Some(b'f'),
        0x0d => Some(b'r'),
        0..=0x1f => Some(b'u'),
        _ => None,
    }
}

/// Appends `word`, which needs no escaping, as a JSON string.
#[inline(always)]
fn push_word(out: &mut Vec<u8>, word: &str) {
    debug_assert!(word.bytes().all(|b| escape(b).is_none()), "{word:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(word.as_bytes());
    out.push(b'"');
}

/// Appends `value` as a JSON string, quotes included.
pub fn push_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    push_escaped(out, value);
    out.push(b'"');
}

/// Appends `value`'s characters as they stand inside a JSON string: runs
/// that need no escaping are copied whole.
fn push_escaped(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = value.as_bytes();
    // Most values need no escaping: one pass with no early exit (which
    // the compiler turns into vector code), then one copy.
    if !bytes.iter().fold(false, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\')) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let Some(escape) = escape(b) else { continue };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        start = i + 1;
        if escape == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'),
                HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0'),
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
}

/// Appends `n` in decimal digits.
pub(crate) fn push_decimal(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;
    use proptest::prelude::*;

    fn parse(out: &[u8]) -> serde_json::Value {
        assert!(!out.contains(&b'\n'), "one line");
        serde_json::from_slice(out).unwrap()
    }

    proptest! {
        #[test]
        fn strings_read_back_as_written(s in any::<String>(), t in "[\\x00-\\x1f\"\\\\a\u{7f}\u{e9}\u{1F600}]{0,12}") {
            let mut out = Vec::new();
            let mut body = Body::begin(&mut out, "t");
            body.str("s", &s);
            body.str("t", &t);
            body.joined("j", [s.as_str(), t.as_str()], "+");
            body.strs("a", [t.as_str(), s.as_str()]);
            body.end();
            let v = parse(&out);
            prop_assert_eq!(v["s"].as_str().unwrap(), s.as_str());
            prop_assert_eq!(v["t"].as_str().unwrap(), t.as_str());
            prop_assert_eq!(v["j"].as_str().unwrap(), format!("{s}+{t}"));
            prop_assert_eq!(v["a"][0].as_str().unwrap(), t.as_str());
            prop_assert_eq!(v["a"][1].as_str().unwrap(), s.as_str());
        }

        #[test]
        fn numbers_read_back_as_written(n in any::<u64>(), micros in any::<u64>()) {
            let mut out = Vec::new();
            let mut body = Body::begin(&mut out, "t");
            body.u64("n", n);
            body.millis("ms", micros);
            body.id("id", "0a1b2c3d", n);
            body.end();
            let v = parse(&out);
            prop_assert_eq!(v["n"].as_u64().unwrap(), n);
            prop_assert_eq!(v["id"].as_str().unwrap(), format!("0a1b2c3d-{n}"));
            // Exact as text; as a float, within the float's precision.
            let text = std::str::from_utf8(&out).unwrap();
            let ms = format!("\"ms\":{}.{:03}", micros / 1000, micros % 1000);
            prop_assert!(text.contains(&ms));
        }
    }

    #[test]
    fn every_kind_of_field_is_json() {
        let mut out = Vec::new();
        let mut body = Body::begin(&mut out, "statement");
        body.opt_str("rule", None);
        body.opt_str("rule2", Some("r"));
        body.null("nothing");
        body.bool("no", false);
        body.serde("decision", &serde_json::json!({"verdict": "allow", "line\n": [1, 2]})).unwrap();
        body.end();
        let v = parse(&out);
        assert_eq!(
            v,
            serde_json::json!({"type": "statement", "rule": null, "rule2": "r", "nothing": null, "no": false,
                "decision": {"verdict": "allow", "line\n": [1, 2]}})
        );
        assert!(out.starts_with(b"{\"type\":\"statement\","));
    }

    #[test]
    fn control_characters_are_escaped_as_json_wants() {
        let mut out = Vec::new();
        push_string(&mut out, "a\u{0}\u{1f}\t\n\r\u{8}\u{c}\"\\\u{7f}é");
        assert_eq!(out, b"\"a\\u0000\\u001f\\t\\n\\r\\b\\f\\\"\\\\\x7f\xc3\xa9\"");
    }
}
