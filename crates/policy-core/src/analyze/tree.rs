//! The depth of a statement's tree, and children collected before a
//! recursive walk descends into them.
//!
//! A stack overflow aborts the whole process, so the analysis keeps its
//! stack bounded on a gateway worker's thread (2 MiB, tokio's default):
//!
//! * pg_query decodes the tree with prost, which refuses trees more than
//!   100 protobuf messages deep (`Error::Decode`, a deny); each node is at
//!   least one message, so no tree that reaches the engine is more than
//!   100 nodes deep. The engine checks its own bound, [`MAX_DEPTH`], with
//!   an iterative pass before any recursive walk, so that it does not rest
//!   on the decoder's.
//! * The generated [`walk::for_each_child`] is one match over every node
//!   type, with a stack frame of tens of KiB in a debug build; a recursive
//!   walk that descended from inside its callback kept one such frame per
//!   level (a debug build overflowed 2 MiB well within the decoder's
//!   bound). Recursive walks take the children with [`children`] and
//!   descend after it returned; the fingerprint's walk is iterative.

use pg_query::NodeRef;

use super::walk;

/// The deepest tree the engine analyses, in nodes from the statement down.
///
/// The decoder refuses deeper trees already (see the module docs); the
/// recursive walks are measured to stay within a 2 MiB stack at this depth
/// in a debug build (`tests/deep_statements.rs`).
pub(crate) const MAX_DEPTH: usize = 100;

/// Why a statement deeper than [`MAX_DEPTH`] is refused.
pub(crate) const TOO_DEEP: &str = "the statement nests deeper than the engine reads (more than 100 levels)";

/// The nodes directly below `node`, in field order.
pub(crate) fn children(node: NodeRef<'_>) -> Vec<NodeRef<'_>> {
    let mut out = Vec::new();
    walk::for_each_child(node, &mut |_, child| out.push(child));
    out
}

/// Whether the tree under `root` is more than [`MAX_DEPTH`] nodes deep
/// (`root` alone is one). Iterative: its stack use does not grow with the
/// tree.
pub(crate) fn too_deep(root: NodeRef<'_>) -> bool {
    let mut pending = vec![(root, 1usize)];
    while let Some((node, depth)) = pending.pop() {
        if depth > MAX_DEPTH {
            return true;
        }
        walk::for_each_child(node, &mut |_, child| pending.push((child, depth + 1)));
    }
    false
}

#[cfg(test)]
mod tests {
    use pg_query::protobuf as pb;
    use pg_query::NodeEnum;

    use super::*;
    use crate::fingerprint::{hash_tree, Hasher};

    /// `NOT NOT ... $1`, built by hand: `depth` nodes deep, deeper than the
    /// decoder lets through.
    fn nots(depth: usize) -> pb::Node {
        let mut n = pb::Node { node: Some(NodeEnum::ParamRef(pb::ParamRef { number: 1, location: 0 })) };
        for _ in 1..depth {
            let not = pb::BoolExpr { boolop: pb::BoolExprType::NotExpr as i32, args: vec![n], ..Default::default() };
            n = pb::Node { node: Some(NodeEnum::BoolExpr(Box::new(not))) };
        }
        n
    }

    /// Drops `n` one level at a time (its own drop would recurse).
    fn dismantle(mut n: pb::Node) {
        while let Some(NodeEnum::BoolExpr(mut b)) = n.node.take() {
            match b.args.pop() {
                Some(next) => n = next,
                None => break,
            }
        }
    }

    #[test]
    fn the_depth_bound_counts_nodes() {
        for (depth, deeper) in [(1, false), (MAX_DEPTH, false), (MAX_DEPTH + 1, true), (100_000, true)] {
            let n = nots(depth);
            assert_eq!(too_deep(n.node.as_ref().unwrap().to_ref()), deeper, "{depth}");
            dismantle(n);
        }
    }

    #[test]
    fn the_fingerprint_walk_is_iterative() {
        // A small stack, a tree far deeper than it would hold recursively.
        let run = || {
            let (shallow, deep) = (nots(3), nots(100_000));
            let mut h = Hasher::new();
            hash_tree(deep.node.as_ref().unwrap().to_ref(), &mut h);
            let mut other = Hasher::new();
            hash_tree(shallow.node.as_ref().unwrap().to_ref(), &mut other);
            assert_ne!(h.finish(), other.finish());
            dismantle(deep);
        };
        std::thread::Builder::new().stack_size(512 << 10).spawn(run).unwrap().join().unwrap();
    }
}
