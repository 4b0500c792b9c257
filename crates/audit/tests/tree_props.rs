//! Property tests of the RFC 9162 Merkle tree: over random tree sizes,
//! every proof verifies, and no tampered proof does.

use portcullis_audit::tree::{
    consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency, verify_inclusion, Frontier, Hash, Rewind,
    TreeError,
};
use proptest::prelude::*;
use proptest::sample::Index;

/// `n` distinct leaf hashes, different for each seed.
fn leaves(seed: u64, n: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| {
            let mut data = seed.to_le_bytes().to_vec();
            data.extend_from_slice(&i.to_le_bytes());
            leaf_hash(&data)
        })
        .collect()
}

/// `hash` with one bit flipped.
fn flip(hash: &Hash, bit: Index) -> Hash {
    let bit = bit.index(256);
    let mut out = *hash;
    if let Some(byte) = out.get_mut(bit / 8) {
        *byte ^= 1 << (bit % 8);
    }
    out
}

/// Whether a check failed for the proof's length.
fn wrong_length(result: Result<(), TreeError>) -> bool {
    matches!(result, Err(TreeError::WrongProofLength { .. }))
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 128, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frontier_root_matches_root(seed in any::<u64>(), n in 0u64..2000) {
        let all = leaves(seed, n);
        let mut frontier = Frontier::new();
        all.iter().for_each(|l| frontier.push(*l));
        prop_assert_eq!(frontier.size(), n);
        prop_assert_eq!(frontier.nodes().len(), n.count_ones() as usize);
        prop_assert_eq!(frontier.root(), root(&all));
    }

    #[test]
    fn a_rewind_takes_the_frontier_back_after_any_pushes(
        seed in any::<u64>(),
        at in 0u64..1100,
        pushed in 0u64..1100,
        again in 0u64..40,
    ) {
        let all = leaves(seed, at + pushed);
        let (before, after) = all.split_at(at as usize);
        let mut frontier = Frontier::new();
        before.iter().for_each(|l| frontier.push(*l));
        let then = frontier.clone();
        // A rewind used before, for other pushes, is set afresh.
        let mut rewind = Rewind::default();
        frontier.set_rewind(&mut rewind);
        leaves(!seed, again).iter().for_each(|l| frontier.push_rewindable(*l, &mut rewind));
        frontier.rewind(&rewind);
        prop_assert_eq!(&frontier, &then);
        frontier.set_rewind(&mut rewind);
        after.iter().for_each(|l| frontier.push_rewindable(*l, &mut rewind));
        // The pushes themselves are those of `push`.
        prop_assert_eq!(frontier.root(), root(&all));
        prop_assert_eq!(frontier.as_at(&rewind), then.clone());
        frontier.rewind(&rewind);
        prop_assert_eq!(&frontier, &then);
        prop_assert_eq!(frontier.root(), root(before));
    }

    #[test]
    fn inclusion_proofs_verify_and_tampering_fails(
        seed in any::<u64>(),
        n in 1u64..2000,
        index in any::<Index>(),
        other in any::<Index>(),
        pick in any::<Index>(),
        bit in any::<Index>(),
    ) {
        let all = leaves(seed, n);
        let tree_root = root(&all);
        let i = index.index(n as usize);
        let leaf = all[i];
        let proof = inclusion_proof(&all, i as u64).unwrap();
        prop_assert!(proof.len() <= 64 - (n - 1).leading_zeros() as usize);
        prop_assert_eq!(verify_inclusion(&leaf, i as u64, n, &proof, &tree_root), Ok(()));

        // Another leaf, or a bit of this one changed.
        prop_assert!(verify_inclusion(&flip(&leaf, bit), i as u64, n, &proof, &tree_root).is_err());
        if n > 1 {
            let j = (i + 1 + other.index(n as usize - 1)) % n as usize;
            prop_assert_ne!(i, j);
            prop_assert!(verify_inclusion(&all[j], i as u64, n, &proof, &tree_root).is_err());
            // The right leaf at the wrong index.
            prop_assert!(verify_inclusion(&leaf, j as u64, n, &proof, &tree_root).is_err());
        }
        prop_assert_eq!(
            verify_inclusion(&leaf, n, n, &proof, &tree_root),
            Err(TreeError::IndexOutOfRange { index: n, size: n })
        );
        // The wrong root.
        prop_assert_eq!(
            verify_inclusion(&leaf, i as u64, n, &proof, &flip(&tree_root, bit)),
            Err(TreeError::RootMismatch)
        );
        // (No "wrong size" case: a size is only bound to a root by whoever
        // signs the pair, and against an unauthenticated root a proof for n
        // leaves can also pass as one for n + 1.)

        if !proof.is_empty() {
            // One proof hash changed.
            let mut bad = proof.clone();
            let k = pick.index(bad.len());
            bad[k] = flip(&bad[k], bit);
            prop_assert_eq!(verify_inclusion(&leaf, i as u64, n, &bad, &tree_root), Err(TreeError::RootMismatch));
            // The proof cut short, at either end.
            prop_assert!(wrong_length(
                verify_inclusion(&leaf, i as u64, n, &proof[..proof.len() - 1], &tree_root)
            ));
            prop_assert!(verify_inclusion(&leaf, i as u64, n, &proof[1..], &tree_root).is_err());
        }
        // The proof padded.
        let mut long = proof.clone();
        long.push(leaf);
        prop_assert!(wrong_length(
            verify_inclusion(&leaf, i as u64, n, &long, &tree_root)
        ));
    }

    #[test]
    fn consistency_proofs_verify_and_tampering_fails(
        seed in any::<u64>(),
        n in 1u64..2000,
        old in any::<Index>(),
        pick in any::<Index>(),
        bit in any::<Index>(),
    ) {
        let all = leaves(seed, n);
        let m = 1 + old.index(n as usize) as u64; // 1..=n
        let old_root = root(&all[..m as usize]);
        let new_root = root(&all);
        let proof = consistency_proof(&all, m).unwrap();
        if m == n {
            prop_assert!(proof.is_empty());
        }
        prop_assert_eq!(verify_consistency(m, n, &old_root, &new_root, &proof), Ok(()));

        // Either root changed.
        prop_assert!(verify_consistency(m, n, &flip(&old_root, bit), &new_root, &proof).is_err());
        prop_assert!(verify_consistency(m, n, &old_root, &flip(&new_root, bit), &proof).is_err());
        // The roots swapped.
        if m < n {
            prop_assert!(verify_consistency(m, n, &new_root, &old_root, &proof).is_err());
        }
        // The sizes the wrong way round.
        prop_assert_eq!(
            verify_consistency(n + 1, n, &old_root, &new_root, &proof),
            Err(TreeError::OldSizeTooLarge { old_size: n + 1, new_size: n })
        );

        if !proof.is_empty() {
            // One proof hash changed.
            let mut bad = proof.clone();
            let k = pick.index(bad.len());
            bad[k] = flip(&bad[k], bit);
            prop_assert!(verify_consistency(m, n, &old_root, &new_root, &bad).is_err());
            // The proof cut short.
            prop_assert!(wrong_length(
                verify_consistency(m, n, &old_root, &new_root, &proof[..proof.len() - 1])
            ));
        }
        // The proof padded.
        let mut long = proof.clone();
        long.push(old_root);
        prop_assert!(wrong_length(
            verify_consistency(m, n, &old_root, &new_root, &long)
        ));
    }

    #[test]
    fn a_rewritten_history_is_not_consistent(
        seed in any::<u64>(),
        n in 2u64..2000,
        old in any::<Index>(),
        changed in any::<Index>(),
    ) {
        // Change one of the first m leaves after the old root was published:
        // no proof from the new tree links the two roots.
        let mut all = leaves(seed, n);
        let m = 1 + old.index(n as usize - 1) as u64; // 1..n
        let old_root = root(&all[..m as usize]);
        let c = changed.index(m as usize);
        all[c] = leaf_hash(b"rewritten");
        let proof = consistency_proof(&all, m).unwrap();
        prop_assert!(verify_consistency(m, n, &old_root, &root(&all), &proof).is_err());
    }
}
