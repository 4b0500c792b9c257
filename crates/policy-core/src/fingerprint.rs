//! Statement fingerprints: a stable 64-bit hash of the normalised parse tree.
//!
//! The fingerprint hashes the tree PostgreSQL's grammar builds, not the text:
//! whitespace, comments and keyword case never reach the tree, constants are
//! hashed as a bare "constant" marker, `$n` parameters as a bare "parameter"
//! marker (their numbers are dropped), and a run of constants in one list
//! (`IN (1, 2, 3)`) hashes like a single one. Source locations are skipped.
//!
//! The hash is FNV-1a (64 bit), written out here so that its value depends on
//! nothing but this file and the grammar: it is stable across releases of the
//! engine within policy format v1.
//!
//! ```
//! use policy_core::{Engine, Identity, Policy, Session};
//! let engine = Engine::new(Policy::from_toml_str("version = 1", "inline.toml")?, Default::default())?;
//! let session = engine.new_session();
//! let a = engine.analyze(&session, "SELECT * FROM t WHERE id = 1");
//! let b = engine.analyze(&session, "select *\n  from t where id = 42 -- hi");
//! assert_eq!(a.statements[0].fingerprint, b.statements[0].fingerprint);
//! assert_eq!(a.statements[0].fingerprint.len(), 16);
//! # Ok::<(), policy_core::PolicyError>(())
//! ```

use pg_query::NodeRef;

use crate::analyze::walk;

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// An FNV-1a hasher fed with tagged fields, so that adjacent values can never
/// run into each other (`"ab","c"` and `"a","bc"` hash differently).
#[derive(Debug, Clone)]
pub(crate) struct Hasher {
    state: u64,
    /// When set, constants are hashed with their values (used to compare two
    /// expressions for equality, not for fingerprints).
    with_constants: bool,
}

impl Hasher {
    pub(crate) fn new() -> Self {
        Hasher { state: OFFSET, with_constants: false }
    }

    pub(crate) fn with_constants() -> Self {
        Hasher { state: OFFSET, with_constants: true }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.state ^= u64::from(*b);
            self.state = self.state.wrapping_mul(PRIME);
        }
    }

    fn tag(&mut self, tag: u16) {
        self.bytes(&tag.to_le_bytes());
    }

    pub(crate) fn int(&mut self, field: u16, v: i64) {
        self.tag(field);
        self.bytes(&v.to_le_bytes());
    }

    pub(crate) fn uint(&mut self, field: u16, v: u64) {
        self.tag(field);
        self.bytes(&v.to_le_bytes());
    }

    pub(crate) fn str(&mut self, field: u16, s: &str) {
        self.tag(field);
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s.as_bytes());
    }

    pub(crate) fn finish(&self) -> u64 {
        self.state
    }
}

/// Hashes one subtree into `h`: each node's name and scalar fields, then
/// each child's field index and subtree, in field order (pre-order).
///
/// Iterative, with the pending children on an explicit stack: a deep tree
/// costs heap, not thread stack (see `analyze::tree`).
pub(crate) fn hash_tree(root: NodeRef<'_>, h: &mut Hasher) {
    // Children still to hash, the next one on top, each with the field
    // index it is hashed under (none for the root).
    let mut pending: Vec<(Option<u16>, NodeRef<'_>)> = vec![(None, root)];
    let mut children: Vec<(Option<u16>, NodeRef<'_>)> = Vec::new();
    let with_constants = h.with_constants;
    while let Some((field, node)) = pending.pop() {
        if let Some(field) = field {
            h.tag(field);
        }
        match node {
            NodeRef::AConst(c) if with_constants => {
                h.str(0xffff, walk::node_name(node));
                h.str(0xfffe, &format!("{:?}", crate::analyze::literal::value(c)));
                h.int(0xfffd, i64::from(c.isnull));
                continue;
            }
            // A constant and a `$n` parameter are the same placeholder.
            NodeRef::AConst(_) | NodeRef::ParamRef(_) if !with_constants => {
                h.str(0xffff, "?");
                continue;
            }
            _ => h.str(0xffff, walk::node_name(node)),
        }
        walk::hash_scalars(node, h);
        let mut last: Option<(u16, bool)> = None;
        walk::for_each_child(node, &mut |field, child| {
            let is_const = matches!(child, NodeRef::AConst(_) | NodeRef::ParamRef(_)) && !with_constants;
            // A run of constants in one field hashes like one constant.
            if is_const && last == Some((field, true)) {
                return;
            }
            last = Some((field, is_const));
            children.push((Some(field), child));
        });
        pending.extend(children.drain(..).rev());
    }
}

/// The fingerprint of one statement's tree, as 16 lower-case hex digits.
pub(crate) fn fingerprint(node: NodeRef<'_>) -> String {
    let mut h = Hasher::new();
    hash_tree(node, &mut h);
    format!("{:016x}", h.finish())
}

/// The fingerprint of text the grammar rejected (whitespace runs folded).
pub(crate) fn fingerprint_text(text: &str) -> String {
    let mut h = Hasher::new();
    for word in text.split_whitespace() {
        h.str(1, word);
    }
    format!("{:016x}", h.finish())
}

/// Whether two expressions are the same tree (constants compared by value).
pub(crate) fn same_tree(a: NodeRef<'_>, b: NodeRef<'_>) -> bool {
    // Trees of different shapes differ whatever their constants hold: only
    // trees of one shape read their constants' values.
    let mut ha = Hasher::new();
    hash_tree(a, &mut ha);
    let mut hb = Hasher::new();
    hash_tree(b, &mut hb);
    if ha.finish() != hb.finish() {
        return false;
    }
    let mut ha = Hasher::with_constants();
    hash_tree(a, &mut ha);
    let mut hb = Hasher::with_constants();
    hash_tree(b, &mut hb);
    ha.finish() == hb.finish()
}
