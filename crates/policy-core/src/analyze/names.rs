//! Names as PostgreSQL resolves them: rendering, search paths and the
//! identifier lists inside setting values and `regclass` strings.

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
pub(crate) const MAX_IDENTIFIER_BYTES: usize = 63;

/// Renders one name part the way facts show it: bare when it is a plain
/// name, double-quoted (with `"` doubled) when it holds a `.` or a `"`, so
/// that `"a.b".c` and `a."b.c"` can never be confused with `a.b.c`.
pub(crate) fn part(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains(['.', '"']) || name.is_empty() {
        std::borrow::Cow::Owned(format!("\"{}\"", name.replace('"', "\"\"")))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// `schema.name`, each part rendered with [`part`].
pub(crate) fn qualified(schema: &str, name: &str) -> String {
    let mut out = String::with_capacity(schema.len() + name.len() + 1);
    push_part(&mut out, schema);
    out.push('.');
    push_part(&mut out, name);
    out
}

/// `prefix.name`, where `prefix` is already rendered.
pub(crate) fn dotted(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + name.len() + 1);
    out.push_str(prefix);
    out.push('.');
    push_part(&mut out, name);
    out
}

fn push_part(out: &mut String, name: &str) {
    match part(name) {
        std::borrow::Cow::Borrowed(s) => out.push_str(s),
        std::borrow::Cow::Owned(s) => out.push_str(&s),
    }
}

/// Truncates an identifier to 63 bytes on a character boundary, as the
/// server does for identifiers it reads from strings.
pub(crate) fn truncate_identifier(s: &str) -> &str {
    if s.len() <= MAX_IDENTIFIER_BYTES {
        return s;
    }
    let mut end = MAX_IDENTIFIER_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or(s)
}

/// Splits a list of identifiers the way PostgreSQL's `SplitIdentifierString`
/// does for `search_path` values: `separator`-separated, double-quoted
/// elements keep their case (`""` is a quote), unquoted ones are trimmed and
/// folded to lower case, every element truncated to 63 bytes.
///
/// Returns `None` when the server would reject the text (unterminated
/// quote, empty element, stray characters).
pub(crate) fn split_identifiers(text: &str, separator: char) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            // An empty string is an empty list; a trailing separator is not.
            return if out.is_empty() { Some(out) } else { None };
        }
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return None,
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    Some('"') => break,
                    Some(c) => name.push(c),
                }
            }
            if name.is_empty() {
                return None;
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == separator || c.is_ascii_whitespace() {
                    break;
                }
                if c == '"' {
                    return None;
                }
                name.push(c);
                chars.next();
            }
            if name.is_empty() {
                return None;
            }
            name = name.to_ascii_lowercase();
        }
        out.push(truncate_identifier(&name).to_string());
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some(c) if c == separator => {}
            Some(_) => return None,
        }
    }
}

/// Where an unqualified relation name can live, in the order PostgreSQL
/// searches. `pg_temp` is left out: a session's temporary tables are its own
/// data (creating one is `ddl`, which the policy judges).
pub(crate) fn relation_candidates(search_path: &[String], user: Option<&str>, name: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(search_path.len() + 1);
    let explicit_catalog = search_path.iter().any(|s| s == "pg_catalog");
    // pg_catalog is searched first unless the path names it; every system
    // relation's name begins with `pg_`.
    let catalog_candidate = name.starts_with("pg_");
    if catalog_candidate && !explicit_catalog {
        out.push(qualified("pg_catalog", name));
    }
    for schema in search_path {
        let schema = match schema.as_str() {
            "$user" => user.unwrap_or("$user"),
            s if s == "pg_temp" || s.starts_with("pg_temp_") => continue,
            "pg_catalog" if !catalog_candidate => continue,
            s => s,
        };
        let q = qualified(schema, name);
        if !out.contains(&q) {
            out.push(q);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_server() {
        assert_eq!(split_identifiers("a, B ,\"C d\"", ','), Some(vec!["a".into(), "b".into(), "C d".into()]));
        assert_eq!(split_identifiers("\"a\"\"b\"", ','), Some(vec!["a\"b".into()]));
        assert_eq!(split_identifiers("", ','), Some(vec![]));
        assert_eq!(split_identifiers("a,", ','), None);
        assert_eq!(split_identifiers("\"a", ','), None);
        assert_eq!(split_identifiers("public.secrets", '.'), Some(vec!["public".into(), "secrets".into()]));
        let long = "x".repeat(70);
        assert_eq!(split_identifiers(&long, ',').map(|v| v[0].len()), Some(63));
    }

    #[test]
    fn renders_ambiguous_names_quoted() {
        assert_eq!(qualified("public", "a.b"), "public.\"a.b\"");
        assert_eq!(qualified("public", "Secrets"), "public.Secrets");
        assert_eq!(qualified("x\"y", "t"), "\"x\"\"y\".t");
    }

    #[test]
    fn candidates_follow_the_path() {
        let path = vec!["$user".to_string(), "public".to_string()];
        assert_eq!(relation_candidates(&path, Some("app"), "orders"), vec!["app.orders", "public.orders"]);
        assert_eq!(
            relation_candidates(&path, None, "pg_authid"),
            vec!["pg_catalog.pg_authid", "$user.pg_authid", "public.pg_authid"]
        );
        let explicit = vec!["public".to_string(), "pg_catalog".to_string()];
        assert_eq!(relation_candidates(&explicit, None, "pg_class"), vec!["public.pg_class", "pg_catalog.pg_class"]);
        assert!(relation_candidates(&[], None, "orders").is_empty());
    }
}
