//! The tree against the published Certificate Transparency vectors, then against itself: every
//! proof of every size verifies, every altered proof fails, and a pruned tree answers exactly
//! like the full one for everything it still holds.

use super::*;

/// The RFC 6962 test leaves (certificate-transparency's `testonly` data).
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// The roots of the trees of 1..=8 of those leaves.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn h(text: &str) -> Hash {
    let bytes = hex::decode(text).expect("hex");
    bytes.try_into().expect("32 bytes")
}

fn reference_tree() -> Tree {
    let mut tree = Tree::new();
    for leaf in LEAVES {
        tree.push(leaf_hash(&hex::decode(leaf).expect("hex")));
    }
    tree
}

fn tree_of(n: u64) -> Tree {
    let mut tree = Tree::new();
    for i in 0..n {
        tree.push(leaf_hash(&i.to_be_bytes()));
    }
    tree
}

#[test]
fn roots_match_rfc_6962() {
    assert_eq!(
        hex::encode(empty_root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(Tree::new().root(), empty_root());
    let tree = reference_tree();
    for (n, root) in ROOTS.iter().enumerate() {
        let size = n as u64 + 1;
        assert_eq!(
            hex::encode(tree.root_at(size).expect("held")),
            *root,
            "size {size}"
        );
        let mut frontier = Frontier::new();
        for leaf in &LEAVES[..=n] {
            frontier.push(leaf_hash(&hex::decode(leaf).expect("hex")));
        }
        assert_eq!(hex::encode(frontier.root()), *root, "frontier of {size}");
    }
}

#[test]
fn proofs_match_rfc_6962() {
    let tree = reference_tree();
    let inclusion = [
        (
            0u64,
            8u64,
            vec![
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            vec![
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            vec!["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            vec![
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (index, size, expected) in inclusion {
        let proof = tree.inclusion_proof(index, size).expect("held");
        let expected: Vec<Hash> = expected.into_iter().map(h).collect();
        assert_eq!(proof, expected, "inclusion of {index} in {size}");
        let leaf = tree.leaf(index).expect("held");
        verify_inclusion(index, size, &leaf, &proof, &h(ROOTS[size as usize - 1]))
            .expect("the reference proof verifies");
    }
    let consistency = [
        (1u64, 1u64, vec![]),
        (
            1,
            8,
            vec![
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            vec![
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            vec![
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (old, new, expected) in consistency {
        let proof = tree.consistency_proof(old, new).expect("held");
        let expected: Vec<Hash> = expected.into_iter().map(h).collect();
        assert_eq!(proof, expected, "consistency {old} -> {new}");
        verify_consistency(
            old,
            new,
            &h(ROOTS[old as usize - 1]),
            &h(ROOTS[new as usize - 1]),
            &proof,
        )
        .expect("the reference proof verifies");
    }
}

#[test]
fn every_proof_of_every_size_verifies_and_every_altered_one_fails() {
    let tree = tree_of(40);
    for new in 1..=40u64 {
        let new_root = tree.root_at(new).expect("held");
        for old in 0..=new {
            let old_root = tree.root_at(old).expect("held");
            let proof = tree.consistency_proof(old, new).expect("held");
            verify_consistency(old, new, &old_root, &new_root, &proof)
                .unwrap_or_else(|e| panic!("{old} -> {new}: {e}"));
            if old > 0 && old < new {
                // Each hash of the proof matters, and so do the sizes and the roots.
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][0] ^= 1;
                    assert!(verify_consistency(old, new, &old_root, &new_root, &bad).is_err());
                }
                let mut short = proof.clone();
                short.pop();
                assert!(verify_consistency(old, new, &old_root, &new_root, &short).is_err());
                let mut long = proof.clone();
                long.push([7; 32]);
                assert!(verify_consistency(old, new, &old_root, &new_root, &long).is_err());
                assert!(verify_consistency(old, new, &new_root, &old_root, &proof).is_err());
                let other = tree.root_at(old - 1).expect("held");
                assert!(verify_consistency(old, new, &other, &new_root, &proof).is_err());
            }
        }
        for index in 0..new {
            let leaf = tree.leaf(index).expect("held");
            let proof = tree.inclusion_proof(index, new).expect("held");
            verify_inclusion(index, new, &leaf, &proof, &new_root)
                .unwrap_or_else(|e| panic!("{index} in {new}: {e}"));
            let other = leaf_hash(b"not a record of the trail");
            assert!(verify_inclusion(index, new, &other, &proof, &new_root).is_err());
            if new > 1 {
                let wrong = (index + 1) % new;
                assert!(
                    verify_inclusion(wrong, new, &leaf, &proof, &new_root).is_err()
                        || tree.leaf(wrong) == Some(leaf)
                );
            }
        }
    }
    // A proof of a tree from a different history does not verify against this one.
    let mut other = tree_of(10);
    other.push(leaf_hash(b"forged"));
    let proof = other.consistency_proof(10, 11).expect("held");
    assert!(verify_consistency(
        10,
        11,
        &tree.root_at(10).expect("held"),
        &tree.root_at(11).expect("held"),
        &proof
    )
    .is_err());
    assert!(verify_consistency(1, 2, &[0; 32], &[0; 32], &[[0; 32]; 70]).is_err());
}

/// RFC 6962 §2.1's MTH, straight from the definition.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// RFC 6962 §2.1.2's SUBPROOF, straight from the definition.
fn reference_subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if complete {
            Vec::new()
        } else {
            vec![mth(leaves)]
        };
    }
    let k = split(n as u64) as usize;
    if m <= k {
        let mut proof = reference_subproof(m, &leaves[..k], complete);
        proof.push(mth(&leaves[k..]));
        proof
    } else {
        let mut proof = reference_subproof(m - k, &leaves[k..], false);
        proof.push(mth(&leaves[..k]));
        proof
    }
}

#[test]
fn the_kept_subtrees_give_exactly_the_rfc_s_roots_and_proofs() {
    let n = 300u64;
    let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    let full = tree_of(n);
    // Bases that cut kept subtrees, fall on their edges, or hold most of the tree.
    for base in [0u64, 13, 16, 17, 64, 100, 255, 256, 290] {
        let mut tree = Tree::from_base(full.frontier_at(base).expect("held"));
        for leaf in &leaves[base as usize..] {
            tree.push(*leaf);
        }
        for size in (base.max(1)..=n).step_by(7).chain([n]) {
            let s = size as usize;
            assert_eq!(
                tree.root_at(size).expect("held"),
                mth(&leaves[..s]),
                "{base}: {size}"
            );
            for old in (base.max(1)..size).step_by(5) {
                assert_eq!(
                    tree.consistency_proof(old, size).expect("held"),
                    reference_subproof(old as usize, &leaves[..s], true),
                    "base {base}: {old} -> {size}"
                );
            }
        }
    }
    // What is kept is about an eighth of the leaves.
    let kept: usize = full.kept.iter().map(Vec::len).sum();
    assert!(kept * 7 <= leaves.len(), "{kept} kept for {n} leaves");
}

#[test]
fn a_pruned_tree_answers_like_the_full_one() {
    let full = tree_of(70);
    for base in [0u64, 1, 5, 8, 13, 32, 33, 63, 64, 69, 70] {
        let mut pruned = Tree::from_base(full.frontier_at(base).expect("held"));
        for i in base..70 {
            pruned.push(full.leaf(i).expect("held"));
        }
        assert_eq!(pruned.root(), full.root(), "base {base}");
        assert_eq!(pruned.base_size(), base);
        for size in base..=70 {
            assert_eq!(
                pruned.root_at(size).expect("held"),
                full.root_at(size).expect("held")
            );
            assert_eq!(
                pruned.frontier_at(size).expect("held"),
                full.frontier_at(size).expect("held")
            );
            for old in base..=size {
                assert_eq!(
                    pruned.consistency_proof(old, size).expect("held"),
                    full.consistency_proof(old, size).expect("held"),
                    "base {base}: {old} -> {size}"
                );
            }
            for index in base..size {
                assert_eq!(
                    pruned.inclusion_proof(index, size).expect("held"),
                    full.inclusion_proof(index, size).expect("held")
                );
            }
        }
        if base > 0 {
            assert!(matches!(
                pruned.root_at(base - 1),
                Err(Error::Pruned { .. })
            ));
            assert!(matches!(
                pruned.inclusion_proof(base - 1, 70),
                Err(Error::Pruned { .. })
            ));
            assert!(matches!(
                pruned.consistency_proof(base - 1, 70),
                Err(Error::Pruned { .. })
            ));
        }
        assert!(matches!(pruned.root_at(71), Err(Error::BeyondTree { .. })));
    }
    assert!(Frontier::from_peaks(5, vec![[0; 32]]).is_err());
    assert!(Frontier::from_peaks(5, vec![[0; 32]; 2]).is_ok());
}
