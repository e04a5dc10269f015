//! Rendezvous (highest random weight) hashing: which node a sandbox name belongs to.
//!
//! Every router computes the same answer from the same names and the same set of
//! healthy nodes, with no state shared between them; a node that leaves moves only the
//! names it held, and one that joins takes only the names it now wins.
//!
//! Invariant: the weight depends only on the two strings (FNV-1a, then a fixed
//! 64-bit finalizer), never on the process, the platform or the order of the nodes.

/// The node of `nodes` that `name` belongs to: the one of highest weight (ties, which
/// need equal node ids, go to the first). `None` when there is no node.
pub fn owner<'a>(name: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(u64, &str)> = None;
    for node in nodes {
        let weight = weight(name, node);
        if best.is_none_or(|(top, _)| weight > top) {
            best = Some((weight, node));
        }
    }
    best.map(|(_, node)| node)
}

/// The weight of `node` for `name`.
pub fn weight(name: &str, node: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    // The separator keeps ("ab", "c") and ("a", "bc") apart.
    for byte in name.bytes().chain([0]).chain(node.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV alone mixes its last bytes poorly: a finalizer (splitmix64's) spreads them.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_fixed_across_builds_and_platforms() {
        // Byte-exact: two routers of different releases must agree.
        assert_eq!(weight("box", "10.0.0.1:8080"), 0xfa59_ee02_5571_30b7);
        assert_eq!(weight("default/box", "agent-2:8080"), 0x8777_6d08_000f_0bd9);
        assert_ne!(weight("ab", "c"), weight("a", "bc"));
    }

    #[test]
    fn the_order_of_nodes_does_not_matter() {
        let nodes = ["a:1", "b:1", "c:1", "d:1"];
        for i in 0..200 {
            let name = format!("sandbox-{i}");
            let forward = owner(&name, nodes);
            let backward = owner(&name, nodes.iter().rev().copied());
            assert_eq!(forward, backward, "{name}");
        }
        assert_eq!(owner("x", []), None);
    }

    #[test]
    fn names_spread_and_a_leaving_node_moves_only_its_own() {
        let nodes = ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"];
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for i in 0..3000 {
            let name = format!("agent-{i}");
            let before = owner(&name, nodes).unwrap();
            counts[nodes.iter().position(|n| *n == before).unwrap()] += 1;
            let after = owner(&name, nodes[..2].iter().copied()).unwrap();
            if before != nodes[2] {
                assert_eq!(before, after, "{name} moved though its node stayed");
            } else {
                moved += 1;
            }
        }
        for count in counts {
            assert!((800..1200).contains(&count), "{counts:?}");
        }
        assert_eq!(moved, counts[2]);
    }
}
