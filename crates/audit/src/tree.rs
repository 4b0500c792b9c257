//! An append-only Merkle tree hashed as in RFC 9162 (Certificate
//! Transparency 2.0), sections 2.1.1 to 2.1.4.
//!
//! * A leaf's hash is `SHA-256(0x00 ‖ data)` ([`leaf_hash`]) and an interior
//!   node's is `SHA-256(0x01 ‖ left ‖ right)` ([`node_hash`]); the distinct
//!   prefixes keep a leaf from ever passing for a node.
//! * The root of `n` leaves ([`root`]) splits them at `k`, the largest power
//!   of two below `n`, and hashes the two halves' roots together. The empty
//!   tree's root is the SHA-256 of the empty string ([`empty_root`]).
//! * [`Frontier`] is what a writer keeps instead of every leaf: the tree's
//!   size and the roots of the perfect subtrees along its right edge, which
//!   is enough to append a leaf and to compute the root.
//! * An inclusion proof ([`inclusion_proof`], [`verify_inclusion`]) shows that
//!   a leaf sits at an index of a tree with a given root; a consistency proof
//!   ([`consistency_proof`], [`verify_consistency`]) shows that a tree with
//!   one root is a prefix of a later tree with another.
//!
//! All functions here take leaves that are already hashed with
//! [`leaf_hash`].
//!
//! ```
//! use portcullis_audit::tree::{self, Frontier};
//!
//! let records = ["alpha", "bravo", "charlie", "delta", "echo"];
//! let leaves: Vec<tree::Hash> = records.iter().map(|r| tree::leaf_hash(r.as_bytes())).collect();
//!
//! // A writer keeps only the frontier.
//! let mut frontier = Frontier::new();
//! for leaf in &leaves {
//!     frontier.push(*leaf);
//! }
//! let root = frontier.root();
//! assert_eq!(root, tree::root(&leaves));
//!
//! // Anyone with the leaves can prove that "charlie" is record 2 ...
//! let proof = tree::inclusion_proof(&leaves, 2)?;
//! tree::verify_inclusion(&tree::leaf_hash(b"charlie"), 2, 5, &proof, &root)?;
//!
//! // ... and that the tree of the first 3 records is a prefix of this one.
//! let old_root = tree::root(&leaves[..3]);
//! let proof = tree::consistency_proof(&leaves, 3)?;
//! tree::verify_consistency(3, 5, &old_root, &root, &proof)?;
//! # Ok::<(), tree::TreeError>(())
//! ```

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Domain-separation prefix of a leaf hash (RFC 9162 §2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 9162 §2.1.1).
const NODE_PREFIX: u8 = 0x01;

/// Why a tree operation or a proof check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// A leaf index is not below the tree size.
    #[error("leaf index {index} is out of range for a tree of {size} leaves")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The size of the tree.
        size: u64,
    },
    /// A proof has more or fewer hashes than the sizes it is for require.
    #[error("proof has {actual} hashes, but these tree sizes need exactly {expected}")]
    WrongProofLength {
        /// How many hashes the proof must have.
        expected: usize,
        /// How many it has.
        actual: usize,
    },
    /// An inclusion proof leads to a root other than the one given.
    #[error("inclusion proof does not lead to the given root")]
    RootMismatch,
    /// A consistency proof does not reproduce the old tree's root.
    #[error("consistency proof does not reproduce the old root")]
    OldRootMismatch,
    /// A consistency proof does not reproduce the new tree's root.
    #[error("consistency proof does not reproduce the new root")]
    NewRootMismatch,
    /// A consistency proof's old size exceeds its new size.
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    OldSizeTooLarge {
        /// The size of the older tree.
        old_size: u64,
        /// The size of the newer tree.
        new_size: u64,
    },
    /// A frontier does not hold one hash per set bit of its size.
    #[error("a frontier of size {size} needs {expected} subtree hashes, but {actual} were given")]
    FrontierLength {
        /// The tree size.
        size: u64,
        /// How many hashes the size requires (its number of set bits).
        expected: u32,
        /// How many hashes were given.
        actual: usize,
    },
    /// The tree already holds `u64::MAX` leaves and cannot grow.
    #[error("the tree is full: it already holds {size} leaves")]
    TreeFull {
        /// The size of the full tree.
        size: u64,
    },
}

/// The hash of a leaf holding `data`: `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(data);
    hasher.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: the SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n`, for `n >= 2`; 0 otherwise.
fn split_point(n: u64) -> u64 {
    match n.checked_sub(1).and_then(u64::checked_ilog2) {
        Some(log) => 1 << log,
        None => 0,
    }
}

/// `split_point` for slice lengths.
fn split_len(n: usize) -> usize {
    match n.checked_sub(1).and_then(usize::checked_ilog2) {
        Some(log) => 1 << log,
        None => 0,
    }
}

/// A slice length as a tree size (lossless: `usize` is at most 64 bits).
fn size_of(leaves: &[Hash]) -> u64 {
    leaves.len() as u64
}

/// The Merkle Tree Hash (MTH) of already-hashed `leaves` (RFC 9162 §2.1.1).
///
/// The empty list's root is [`empty_root`], one leaf's is the leaf hash
/// itself, and `n > 1` leaves are split at the largest power of two `k < n`:
/// `node_hash(root(leaves[..k]), root(leaves[k..]))`. The recursion is
/// `log2(n)` deep.
///
/// ```
/// use portcullis_audit::tree::{empty_root, leaf_hash, node_hash, root};
///
/// let (a, b, c) = (leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c"));
/// assert_eq!(root(&[]), empty_root());
/// assert_eq!(root(&[a]), a);
/// assert_eq!(root(&[a, b, c]), node_hash(&node_hash(&a, &b), &c));
/// ```
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [leaf] => *leaf,
        _ => match leaves.split_at_checked(split_len(leaves.len())) {
            Some((left, right)) => node_hash(&root(left), &root(right)),
            // Unreachable: the split point of two or more leaves is inside.
            None => empty_root(),
        },
    }
}

/// The compact state of an append-only Merkle tree: its size and the roots
/// of the perfect subtrees along its right edge.
///
/// A tree of `size` leaves decomposes into one perfect subtree per set bit
/// of `size`, largest (leftmost) first; the frontier holds their roots, so
/// `nodes().len() == size.count_ones()`. Appending a leaf merges equal-sized
/// subtrees like a binary counter carries, in amortised constant time, and
/// the root is the frontier folded from right to left.
///
/// ```
/// use portcullis_audit::tree::{leaf_hash, root, Frontier};
///
/// let leaves: Vec<_> = (0u32..6).map(|i| leaf_hash(&i.to_be_bytes())).collect();
/// let mut frontier = Frontier::new();
/// for leaf in &leaves {
///     frontier.push(*leaf);
/// }
/// // 6 = 0b110: a subtree of 4 leaves, then one of 2.
/// assert_eq!(frontier.size(), 6);
/// assert_eq!(frontier.nodes(), &[root(&leaves[..4]), root(&leaves[4..])]);
/// assert_eq!(frontier.root(), root(&leaves));
///
/// // The state can be saved and restored.
/// let restored = Frontier::from_parts(frontier.size(), frontier.nodes().to_vec())?;
/// assert_eq!(restored, frontier);
/// # Ok::<(), portcullis_audit::tree::TreeError>(())
/// ```
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Clone for Frontier {
    fn clone(&self) -> Self {
        Frontier { size: self.size, nodes: self.nodes.clone() }
    }

    /// Reuses `self`'s memory (a writer saves its frontier before every
    /// batch).
    fn clone_from(&mut self, source: &Self) {
        self.size = source.size;
        self.nodes.clone_from(&source.nodes);
    }
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a frontier from a size and its subtree roots, largest first,
    /// as returned by [`Frontier::size`] and [`Frontier::nodes`].
    ///
    /// Fails with [`TreeError::FrontierLength`] unless there is exactly one
    /// hash per set bit of `size`. The hashes themselves cannot be checked
    /// without the leaves.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, TreeError> {
        let expected = size.count_ones();
        if usize::try_from(expected).ok() != Some(nodes.len()) {
            return Err(TreeError::FrontierLength { size, expected, actual: nodes.len() });
        }
        Ok(Self { size, nodes })
    }

    /// Appends a leaf hash, failing with [`TreeError::TreeFull`] (and
    /// leaving the frontier unchanged) if the tree already holds `u64::MAX`
    /// leaves.
    pub fn try_push(&mut self, leaf: Hash) -> Result<(), TreeError> {
        self.push_keeping(leaf, None)
    }

    /// Appends a leaf hash as [`Frontier::try_push`] does, keeping in
    /// `rewind` the nodes the push merges away that were there when
    /// `rewind` was set ([`Frontier::set_rewind`]).
    fn push_keeping(&mut self, leaf: Hash, mut rewind: Option<&mut Rewind>) -> Result<(), TreeError> {
        let Some(new_size) = self.size.checked_add(1) else {
            return Err(TreeError::TreeFull { size: self.size });
        };
        // Each trailing one bit of the old size is a subtree as large as the
        // one being carried up: merge it in, as a binary increment carries.
        let mut carried = leaf;
        let mut merges = self.size.trailing_ones();
        while merges > 0 {
            match self.nodes.pop() {
                Some(left) => {
                    if let Some(r) = rewind.as_deref_mut().filter(|r| self.nodes.len() < r.kept) {
                        r.merged.push(left);
                        r.kept = self.nodes.len();
                    }
                    carried = node_hash(&left, &carried);
                }
                // Unreachable: `from_parts` keeps one node per set bit.
                None => break,
            }
            merges -= 1;
        }
        self.nodes.push(carried);
        self.size = new_size;
        Ok(())
    }

    /// Sets `rewind` to this frontier as it is now, for
    /// [`Frontier::rewind`] to take it back there after pushes made with
    /// [`Frontier::push_rewindable`]. Copies no node.
    pub fn set_rewind(&self, rewind: &mut Rewind) {
        rewind.size = self.size;
        rewind.kept = self.nodes.len();
        rewind.merged.clear();
    }

    /// Appends a leaf hash (as [`Frontier::push`] does) so that `rewind`
    /// can still take the frontier back to where it was set: the nodes
    /// the push merges away are kept in it (one per push, on average).
    pub fn push_rewindable(&mut self, leaf: Hash, rewind: &mut Rewind) {
        // Ignoring the error is the documented behaviour of a full tree.
        let _ = self.push_keeping(leaf, Some(rewind));
    }

    /// Takes the frontier back to where `rewind` was set, undoing the
    /// pushes made since with [`Frontier::push_rewindable`].
    pub fn rewind(&mut self, rewind: &Rewind) {
        self.nodes.truncate(rewind.kept);
        self.nodes.extend(rewind.merged.iter().rev());
        self.size = rewind.size;
    }

    /// The frontier as it was where `rewind` was set, this one left as it
    /// is.
    pub fn as_at(&self, rewind: &Rewind) -> Frontier {
        let mut nodes = Vec::with_capacity(rewind.kept + rewind.merged.len());
        nodes.extend(self.nodes.iter().take(rewind.kept));
        nodes.extend(rewind.merged.iter().rev());
        Frontier { size: rewind.size, nodes }
    }

    /// Appends a leaf hash in amortised constant time.
    ///
    /// A tree of `u64::MAX` leaves cannot grow: `push` then leaves it
    /// unchanged. Use [`Frontier::try_push`] to be told, e.g. when the
    /// frontier was restored from untrusted input.
    pub fn push(&mut self, leaf: Hash) {
        // Ignoring the error is the documented behaviour of a full tree.
        let _ = self.try_push(leaf);
    }

    /// The number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The roots of the perfect subtrees along the tree's right edge, largest
    /// (leftmost) first: one per set bit of [`Frontier::size`].
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// The tree's root, equal to [`root`] of the same leaves:
    /// `node_hash(n0, node_hash(n1, … node_hash(n[k-2], n[k-1])))`, or
    /// [`empty_root`] for the empty tree.
    pub fn root(&self) -> Hash {
        let mut rest = self.nodes.iter().rev();
        match rest.next() {
            None => empty_root(),
            Some(last) => rest.fold(*last, |acc, node| node_hash(node, &acc)),
        }
    }
}

/// A point a [`Frontier`] can be taken back to, kept as cheaply as the
/// pushes since allow: the size then, and the nodes those pushes merged
/// away (about one per push), not a copy of the frontier. A writer sets
/// one before each batch, and takes the tree back to it when the batch
/// cannot be written.
///
/// ```
/// use portcullis_audit::tree::{leaf_hash, Frontier, Rewind};
///
/// let mut frontier = Frontier::new();
/// for i in 0u32..5 {
///     frontier.push(leaf_hash(&i.to_be_bytes()));
/// }
/// let before = frontier.clone();
/// let mut rewind = Rewind::default();
/// frontier.set_rewind(&mut rewind);
/// for i in 5u32..12 {
///     frontier.push_rewindable(leaf_hash(&i.to_be_bytes()), &mut rewind);
/// }
/// assert_eq!(frontier.as_at(&rewind), before);
/// frontier.rewind(&rewind);
/// assert_eq!(frontier, before);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Rewind {
    /// The frontier's size when this was set.
    size: u64,
    /// How many of the frontier's first nodes are still those it had then.
    kept: usize,
    /// The nodes it had then after those, last first.
    merged: Vec<Hash>,
}

/// The inclusion proof of leaf `index` in the tree of all `leaves`: the
/// audit path PATH(index, D\[n\]) of RFC 9162 §2.1.3.1, deepest sibling
/// first.
///
/// Fails with [`TreeError::IndexOutOfRange`] if `index >= leaves.len()`.
/// Computing it hashes every leaf once.
///
/// ```
/// use portcullis_audit::tree::{inclusion_proof, leaf_hash, root, verify_inclusion};
///
/// let leaves: Vec<_> = (0u32..7).map(|i| leaf_hash(&i.to_be_bytes())).collect();
/// let tree_root = root(&leaves);
/// let proof = inclusion_proof(&leaves, 4)?;
/// verify_inclusion(&leaves[4], 4, 7, &proof, &tree_root)?;
/// assert!(verify_inclusion(&leaves[3], 4, 7, &proof, &tree_root).is_err());
/// # Ok::<(), portcullis_audit::tree::TreeError>(())
/// ```
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, TreeError> {
    let out_of_range = || TreeError::IndexOutOfRange { index, size: size_of(leaves) };
    let mut m = usize::try_from(index).map_err(|_| out_of_range())?;
    if m >= leaves.len() {
        return Err(out_of_range());
    }
    // Walk from the root down to the leaf. At each level PATH(m, D[n]) is the
    // path within the half holding m, followed by the other half's root, so
    // the siblings are met in reverse order of the proof.
    let mut subtree = leaves;
    let mut siblings = Vec::new();
    while subtree.len() > 1 {
        let k = split_len(subtree.len());
        let Some((left, right)) = subtree.split_at_checked(k) else { break };
        if m < k {
            siblings.push(root(right));
            subtree = left;
        } else {
            siblings.push(root(left));
            subtree = right;
            m -= k;
        }
    }
    siblings.reverse();
    Ok(siblings)
}

/// How many hashes an inclusion proof of `index` in a tree of `size` has;
/// `index < size`. This is the hash-free shadow of `verify_inclusion`'s walk.
fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let (mut fn_, mut sn) = (index, size.saturating_sub(1));
    let mut len = 0;
    while sn > 0 {
        if fn_ == sn {
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        }
        fn_ >>= 1;
        sn >>= 1;
        len += 1;
    }
    len
}

/// Checks that `leaf` (a [`leaf_hash`]) is leaf number `index` of the tree of
/// `size` leaves whose root is `root`, given its inclusion `proof`, with the
/// algorithm of RFC 9162 §2.1.3.2.
///
/// Fails with [`TreeError::IndexOutOfRange`] if `index >= size`,
/// [`TreeError::WrongProofLength`] if the proof has more or fewer hashes than
/// that position needs, and [`TreeError::RootMismatch`] if the proof leads
/// elsewhere.
///
/// ```
/// use portcullis_audit::tree::{leaf_hash, Frontier, inclusion_proof, verify_inclusion, TreeError};
///
/// let leaves: Vec<_> = ["a", "b", "c"].iter().map(|d| leaf_hash(d.as_bytes())).collect();
/// let mut frontier = Frontier::new();
/// leaves.iter().for_each(|l| frontier.push(*l));
/// let proof = inclusion_proof(&leaves, 2)?;
/// verify_inclusion(&leaf_hash(b"c"), 2, 3, &proof, &frontier.root())?;
/// assert_eq!(
///     verify_inclusion(&leaf_hash(b"x"), 2, 3, &proof, &frontier.root()),
///     Err(TreeError::RootMismatch)
/// );
/// # Ok::<(), TreeError>(())
/// ```
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> Result<(), TreeError> {
    if index >= size {
        return Err(TreeError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_proof_len(index, size);
    if proof.len() != expected {
        return Err(TreeError::WrongProofLength { expected, actual: proof.len() });
    }
    // fn_ is the index of the node being climbed from, sn the index of the
    // last node at the same level; both shift right one level per step.
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            // Unreachable after the length check; kept from the RFC.
            return Err(TreeError::WrongProofLength { expected, actual: proof.len() });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            // r is a right child, or the last node of its level.
            r = node_hash(p, &r);
            // A last node that is a left child has no sibling at its level:
            // climb until it is a right child (or the root).
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn == 0 && r == *root {
        Ok(())
    } else {
        Err(TreeError::RootMismatch)
    }
}

/// How many hashes PROOF(old_size, D\[new_size\]) has, for
/// `0 < old_size <= new_size`: the hash-free shadow of `consistency_proof`.
fn consistency_proof_len(old_size: u64, new_size: u64) -> usize {
    let (mut m, mut n, mut whole) = (old_size, new_size, true);
    let mut len = 0;
    while m < n {
        let k = split_point(n);
        if m <= k {
            n = k;
        } else {
            m -= k;
            n -= k;
            whole = false;
        }
        len += 1;
    }
    len + usize::from(!whole)
}

/// The consistency proof between the tree of the first `old_size` leaves and
/// the tree of all `leaves`: PROOF(m, D\[n\]) of RFC 9162 §2.1.4.1, built
/// with SUBPROOF and its `b` flag.
///
/// If `old_size == leaves.len()` the proof is empty. If `old_size == 0` the
/// proof is empty too: the empty tree is a prefix of every tree, and
/// [`verify_consistency`] accepts it when the old root is [`empty_root`].
/// Fails with [`TreeError::OldSizeTooLarge`] if `old_size > leaves.len()`.
/// Computing it hashes every leaf once.
///
/// ```
/// use portcullis_audit::tree::{consistency_proof, leaf_hash, root, verify_consistency};
///
/// let leaves: Vec<_> = (0u32..10).map(|i| leaf_hash(&i.to_be_bytes())).collect();
/// let (old_root, new_root) = (root(&leaves[..6]), root(&leaves));
/// let proof = consistency_proof(&leaves, 6)?;
/// verify_consistency(6, 10, &old_root, &new_root, &proof)?;
/// assert!(verify_consistency(6, 10, &root(&leaves[..5]), &new_root, &proof).is_err());
/// # Ok::<(), portcullis_audit::tree::TreeError>(())
/// ```
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Result<Vec<Hash>, TreeError> {
    let new_size = size_of(leaves);
    if old_size > new_size {
        return Err(TreeError::OldSizeTooLarge { old_size, new_size });
    }
    if old_size == 0 {
        return Ok(Vec::new());
    }
    let mut m = usize::try_from(old_size).map_err(|_| TreeError::OldSizeTooLarge { old_size, new_size })?;
    // Walk from the root down. Each level of SUBPROOF appends one subtree
    // root after the deeper part of the proof, so the hashes are met in
    // reverse order. `whole` is the RFC's b flag: it stays set while the old
    // tree is the left part of every subtree walked, in which case the
    // verifier already has the old tree's root and it is not sent.
    let mut subtree = leaves;
    let mut whole = true;
    let mut reversed = Vec::new();
    while m < subtree.len() {
        let k = split_len(subtree.len());
        let Some((left, right)) = subtree.split_at_checked(k) else { break };
        if m <= k {
            reversed.push(root(right));
            subtree = left;
        } else {
            reversed.push(root(left));
            subtree = right;
            m -= k;
            whole = false;
        }
    }
    // SUBPROOF(m, D[m], false) = {MTH(D[m])}; with b set it is empty.
    if !whole {
        reversed.push(root(subtree));
    }
    reversed.reverse();
    Ok(reversed)
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix
/// of the tree of `new_size` leaves with root `new_root`, given a consistency
/// `proof`, with the algorithm of RFC 9162 §2.1.4.2.
///
/// When `old_size == new_size` the proof must be empty and the roots equal;
/// when `old_size == 0` the proof must be empty and `old_root` must be
/// [`empty_root`]. Fails with [`TreeError::OldSizeTooLarge`] if
/// `old_size > new_size`, [`TreeError::WrongProofLength`] if the proof has
/// more or fewer hashes than the sizes need, and
/// [`TreeError::OldRootMismatch`] or [`TreeError::NewRootMismatch`] if it
/// does not reproduce the roots.
///
/// ```
/// use portcullis_audit::tree::{consistency_proof, leaf_hash, verify_consistency, Frontier};
///
/// let leaves: Vec<_> = (0u32..7).map(|i| leaf_hash(&i.to_be_bytes())).collect();
/// let mut frontier = Frontier::new();
/// let mut old = Frontier::new();
/// for (i, leaf) in leaves.iter().enumerate() {
///     frontier.push(*leaf);
///     if i < 3 {
///         old.push(*leaf);
///     }
/// }
/// let proof = consistency_proof(&leaves, 3)?;
/// verify_consistency(3, 7, &old.root(), &frontier.root(), &proof)?;
/// # Ok::<(), portcullis_audit::tree::TreeError>(())
/// ```
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), TreeError> {
    if old_size > new_size {
        return Err(TreeError::OldSizeTooLarge { old_size, new_size });
    }
    let expected = if old_size == 0 { 0 } else { consistency_proof_len(old_size, new_size) };
    if proof.len() != expected {
        return Err(TreeError::WrongProofLength { expected, actual: proof.len() });
    }
    if old_size == 0 {
        return if *old_root == empty_root() { Ok(()) } else { Err(TreeError::OldRootMismatch) };
    }
    if old_size == new_size {
        return if old_root == new_root { Ok(()) } else { Err(TreeError::NewRootMismatch) };
    }
    // If the old tree is a perfect subtree its root starts the path (the
    // RFC's "prepend first_hash"), without copying the proof.
    let prefix = old_size.is_power_of_two().then_some(old_root);
    let mut path = prefix.into_iter().chain(proof);
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    // Skip the levels where the old tree's last node is a right child: they
    // lie inside the subtree whose root starts the path.
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let Some(first) = path.next() else {
        return Err(TreeError::WrongProofLength { expected, actual: proof.len() });
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in path {
        if sn == 0 {
            // Unreachable after the length check; kept from the RFC.
            return Err(TreeError::WrongProofLength { expected, actual: proof.len() });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            // c is a left sibling shared by both trees.
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            // c is a right sibling only the new tree has.
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if fr != *old_root {
        Err(TreeError::OldRootMismatch)
    } else if sn != 0 || sr != *new_root {
        Err(TreeError::NewRootMismatch)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(hash: &Hash) -> String {
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Hash {
        let bytes: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
        bytes.try_into().unwrap()
    }

    /// Distinct leaves for tests.
    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    /// The RFC 6962 / RFC 9162 reference inputs (the Certificate Transparency
    /// test data) and the roots of their prefixes of size 0..=8.
    const CT_DATA: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn ct_leaves() -> Vec<Hash> {
        CT_DATA.iter().map(|d| leaf_hash(d)).collect()
    }

    /// MTH written straight from the definition, allocating freely.
    fn naive_mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&naive_mth(&leaves[..k]), &naive_mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn empty_tree_root_is_sha256_of_nothing() {
        assert_eq!(hex(&empty_root()), CT_ROOTS[0]);
        assert_eq!(root(&[]), empty_root());
        assert_eq!(Frontier::new().root(), empty_root());
    }

    #[test]
    fn one_leaf_tree_root_is_the_leaf_hash() {
        assert_eq!(hex(&leaf_hash(b"")), CT_ROOTS[1]);
        let leaf = leaf_hash(b"hello");
        assert_eq!(root(&[leaf]), leaf);
        let mut frontier = Frontier::new();
        frontier.push(leaf);
        assert_eq!(frontier.root(), leaf);
    }

    #[test]
    fn hashes_use_the_domain_prefixes() {
        assert_eq!(leaf_hash(b"abc"), <[u8; 32]>::from(Sha256::digest(b"\x00abc")));
        let (l, r) = (leaf_hash(b"l"), leaf_hash(b"r"));
        let mut joined = vec![0x01];
        joined.extend_from_slice(&l);
        joined.extend_from_slice(&r);
        assert_eq!(node_hash(&l, &r), <[u8; 32]>::from(Sha256::digest(&joined)));
        assert_ne!(node_hash(&l, &r), node_hash(&r, &l));
    }

    #[test]
    fn roots_match_the_ct_reference_vectors() {
        let leaves = ct_leaves();
        for (size, want) in CT_ROOTS.iter().enumerate() {
            assert_eq!(hex(&root(&leaves[..size])), *want, "size {size}");
            let mut frontier = Frontier::new();
            leaves[..size].iter().for_each(|l| frontier.push(*l));
            assert_eq!(hex(&frontier.root()), *want, "frontier size {size}");
        }
    }

    #[test]
    fn inclusion_proofs_match_the_ct_reference_vectors() {
        let leaves = ct_leaves();
        let root8 = unhex(CT_ROOTS[8]);
        let cases: [(u64, [&str; 3]); 2] = [
            (
                0,
                [
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                [
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (index, want) in cases {
            let want: Vec<Hash> = want.iter().map(|h| unhex(h)).collect();
            assert_eq!(inclusion_proof(&leaves, index).unwrap(), want, "index {index}");
            verify_inclusion(&leaves[index as usize], index, 8, &want, &root8).unwrap();
        }
    }

    #[test]
    fn consistency_proofs_match_the_ct_reference_vectors() {
        let leaves = ct_leaves();
        let cases: [(u64, &[&str]); 2] = [
            (
                2,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old_size, want) in cases {
            let want: Vec<Hash> = want.iter().map(|h| unhex(h)).collect();
            assert_eq!(consistency_proof(&leaves, old_size).unwrap(), want, "old size {old_size}");
            let old_root = unhex(CT_ROOTS[old_size as usize]);
            verify_consistency(old_size, 8, &old_root, &unhex(CT_ROOTS[8]), &want).unwrap();
        }
    }

    #[test]
    fn root_agrees_with_naive_mth() {
        let all = leaves(130);
        for n in 0..=all.len() {
            assert_eq!(root(&all[..n]), naive_mth(&all[..n]), "size {n}");
        }
    }

    #[test]
    fn frontier_root_equals_root_for_sizes_0_to_300() {
        let all = leaves(300);
        let mut frontier = Frontier::new();
        for n in 0..=all.len() {
            assert_eq!(frontier.size(), n as u64);
            assert_eq!(frontier.nodes().len(), frontier.size().count_ones() as usize);
            assert_eq!(frontier.root(), root(&all[..n]), "size {n}");
            let restored = Frontier::from_parts(frontier.size(), frontier.nodes().to_vec()).unwrap();
            assert_eq!(restored, frontier);
            if let Some(leaf) = all.get(n) {
                frontier.push(*leaf);
            }
        }
    }

    #[test]
    fn frontier_nodes_are_the_right_edge_subtree_roots() {
        let all = leaves(13);
        let mut frontier = Frontier::new();
        all.iter().for_each(|l| frontier.push(*l));
        // 13 = 8 + 4 + 1
        assert_eq!(frontier.nodes(), &[root(&all[..8]), root(&all[8..12]), all[12]]);
    }

    #[test]
    fn frontier_from_parts_checks_the_length() {
        assert_eq!(Frontier::from_parts(0, vec![]).unwrap(), Frontier::new());
        let err = Frontier::from_parts(6, vec![[0; 32]]).unwrap_err();
        assert_eq!(err, TreeError::FrontierLength { size: 6, expected: 2, actual: 1 });
        assert!(err.to_string().contains("needs 2 subtree hashes"));
        assert!(Frontier::from_parts(0, vec![[0; 32]]).is_err());
        assert!(Frontier::from_parts(7, vec![[0; 32]; 3]).is_ok());
    }

    #[test]
    fn a_full_frontier_refuses_to_grow() {
        let mut full = Frontier::from_parts(u64::MAX, vec![[7; 32]; 64]).unwrap();
        let before = full.clone();
        assert_eq!(full.try_push([1; 32]), Err(TreeError::TreeFull { size: u64::MAX }));
        full.push([1; 32]);
        assert_eq!(full, before);

        let mut almost = Frontier::from_parts(u64::MAX - 1, vec![[7; 32]; 63]).unwrap();
        almost.try_push([1; 32]).unwrap();
        assert_eq!(almost.size(), u64::MAX);
        assert_eq!(almost.nodes().len(), 64);
    }

    #[test]
    fn every_inclusion_proof_of_small_trees_verifies() {
        let all = leaves(70);
        for n in 1..=all.len() {
            let tree = &all[..n];
            let tree_root = root(tree);
            for i in 0..n as u64 {
                let proof = inclusion_proof(tree, i).unwrap();
                assert_eq!(proof.len(), inclusion_proof_len(i, n as u64));
                verify_inclusion(&tree[i as usize], i, n as u64, &proof, &tree_root).unwrap();
                if let Some(other) = tree.get(i as usize + 1) {
                    assert_eq!(verify_inclusion(other, i, n as u64, &proof, &tree_root), Err(TreeError::RootMismatch));
                }
            }
        }
    }

    #[test]
    fn inclusion_rejects_bad_indices_and_lengths() {
        let all = leaves(5);
        let tree_root = root(&all);
        assert_eq!(inclusion_proof(&all, 5), Err(TreeError::IndexOutOfRange { index: 5, size: 5 }));
        assert_eq!(inclusion_proof(&[], 0), Err(TreeError::IndexOutOfRange { index: 0, size: 0 }));
        assert_eq!(inclusion_proof(&all, u64::MAX), Err(TreeError::IndexOutOfRange { index: u64::MAX, size: 5 }));
        let proof = inclusion_proof(&all, 4).unwrap();
        assert_eq!(proof.len(), 1);
        assert_eq!(
            verify_inclusion(&all[4], 5, 5, &proof, &tree_root),
            Err(TreeError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            verify_inclusion(&all[4], 0, 0, &[], &empty_root()),
            Err(TreeError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            verify_inclusion(&all[4], 4, 5, &[], &tree_root),
            Err(TreeError::WrongProofLength { expected: 1, actual: 0 })
        );
        let long = [proof[0], proof[0]];
        assert_eq!(
            verify_inclusion(&all[4], 4, 5, &long, &tree_root),
            Err(TreeError::WrongProofLength { expected: 1, actual: 2 })
        );
        // A one-leaf tree: the leaf is the root and the proof is empty.
        assert_eq!(inclusion_proof(&all[..1], 0).unwrap(), Vec::<Hash>::new());
        verify_inclusion(&all[0], 0, 1, &[], &all[0]).unwrap();
        assert_eq!(verify_inclusion(&all[1], 0, 1, &[], &all[0]), Err(TreeError::RootMismatch));
    }

    #[test]
    fn every_consistency_proof_of_small_trees_verifies() {
        let all = leaves(70);
        let roots: Vec<Hash> = (0..=all.len()).map(|n| root(&all[..n])).collect();
        for n in 0..=all.len() {
            for m in 0..=n {
                let proof = consistency_proof(&all[..n], m as u64).unwrap();
                let expected = if m == 0 { 0 } else { consistency_proof_len(m as u64, n as u64) };
                assert_eq!(proof.len(), expected, "{m} -> {n}");
                verify_consistency(m as u64, n as u64, &roots[m], &roots[n], &proof)
                    .unwrap_or_else(|e| panic!("{m} -> {n}: {e}"));
                if m > 0 && m < n {
                    assert!(verify_consistency(m as u64, n as u64, &roots[m - 1], &roots[n], &proof).is_err());
                    assert!(verify_consistency(m as u64, n as u64, &roots[m], &roots[n - 1], &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn consistency_edge_cases() {
        let all = leaves(8);
        let (r4, r5, r8) = (root(&all[..4]), root(&all[..5]), root(&all));
        assert_eq!(consistency_proof(&all, 9), Err(TreeError::OldSizeTooLarge { old_size: 9, new_size: 8 }));
        assert_eq!(
            verify_consistency(5, 4, &r5, &r4, &[]),
            Err(TreeError::OldSizeTooLarge { old_size: 5, new_size: 4 })
        );
        // Equal sizes: an empty proof, and the roots must match.
        assert_eq!(consistency_proof(&all, 8).unwrap(), Vec::<Hash>::new());
        verify_consistency(8, 8, &r8, &r8, &[]).unwrap();
        assert_eq!(verify_consistency(8, 8, &r8, &r4, &[]), Err(TreeError::NewRootMismatch));
        assert_eq!(
            verify_consistency(8, 8, &r8, &r8, &[r4]),
            Err(TreeError::WrongProofLength { expected: 0, actual: 1 })
        );
        // From the empty tree: an empty proof, and the old root must be empty.
        assert_eq!(consistency_proof(&all, 0).unwrap(), Vec::<Hash>::new());
        verify_consistency(0, 8, &empty_root(), &r8, &[]).unwrap();
        verify_consistency(0, 0, &empty_root(), &empty_root(), &[]).unwrap();
        assert_eq!(verify_consistency(0, 8, &r4, &r8, &[]), Err(TreeError::OldRootMismatch));
        assert_eq!(
            verify_consistency(0, 8, &empty_root(), &r8, &[r4]),
            Err(TreeError::WrongProofLength { expected: 0, actual: 1 })
        );
        // A power-of-two old tree: its root is implied, not sent.
        let proof = consistency_proof(&all, 4).unwrap();
        assert_eq!(proof, vec![root(&all[4..])]);
        verify_consistency(4, 8, &r4, &r8, &proof).unwrap();
        assert_eq!(verify_consistency(4, 8, &r5, &r8, &proof), Err(TreeError::NewRootMismatch));
        assert_eq!(
            verify_consistency(4, 8, &r4, &r8, &[]),
            Err(TreeError::WrongProofLength { expected: 1, actual: 0 })
        );
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let msg = |e: TreeError| e.to_string();
        assert_eq!(
            msg(TreeError::IndexOutOfRange { index: 9, size: 3 }),
            "leaf index 9 is out of range for a tree of 3 leaves"
        );
        assert!(msg(TreeError::WrongProofLength { expected: 2, actual: 3 }).contains("3 hashes"));
        assert!(msg(TreeError::RootMismatch).contains("root"));
        assert!(msg(TreeError::OldRootMismatch).contains("old root"));
        assert!(msg(TreeError::NewRootMismatch).contains("new root"));
        assert!(msg(TreeError::OldSizeTooLarge { old_size: 5, new_size: 4 }).contains("larger"));
        assert!(msg(TreeError::TreeFull { size: u64::MAX }).contains("full"));
    }
}
