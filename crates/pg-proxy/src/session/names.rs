//! The session's prepared statements and portals, by the names the client
//! gives them.
//!
//! Most clients run everything through the unnamed portal, and libpq's
//! `PQexecParams` and pgjdbc's first executions through the unnamed
//! statement, so the unnamed entry has a slot of its own: a `Bind`,
//! `Describe` or `Execute` of it hashes nothing. Named entries are in a map
//! hashed with foldhash, seeded per map: the map is the session's own, so
//! colliding names would slow only the session that chose them.

use std::collections::HashMap;

/// Entries by client-given name; the empty name is the unnamed one.
///
/// ```
/// use pg_proxy::session::names::NameMap;
/// let mut portals = NameMap::default();
/// portals.insert("", 1);
/// portals.insert("p1", 2);
/// assert_eq!((portals.get(""), portals.get("p1"), portals.get("p2")), (Some(&1), Some(&2), None));
/// assert_eq!(portals.remove(""), Some(1));
/// portals.clear();
/// assert!(portals.get("p1").is_none());
/// ```
#[derive(Debug)]
pub struct NameMap<T> {
    unnamed: Option<T>,
    named: HashMap<String, T, foldhash::quality::RandomState>,
}

impl<T> Default for NameMap<T> {
    fn default() -> Self {
        NameMap { unnamed: None, named: HashMap::default() }
    }
}

impl<T> NameMap<T> {
    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&T> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    /// The entry named `name`, to change.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        if name.is_empty() {
            self.unnamed.as_mut()
        } else {
            self.named.get_mut(name)
        }
    }

    /// Whether there is an entry named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets the entry named `name` (the name is copied only when it is
    /// new).
    pub fn insert(&mut self, name: &str, value: T) {
        match self.get_mut(name) {
            Some(slot) => *slot = value,
            None if name.is_empty() => self.unnamed = Some(value),
            None => {
                self.named.insert(name.to_string(), value);
            }
        }
    }

    /// Takes the entry named `name` out.
    pub fn remove(&mut self, name: &str) -> Option<T> {
        if name.is_empty() {
            self.unnamed.take()
        } else {
            self.named.remove(name)
        }
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.unnamed = None;
        if !self.named.is_empty() {
            self.named.clear();
        }
    }
}
