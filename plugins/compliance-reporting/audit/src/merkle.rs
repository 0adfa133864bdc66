//! The RFC 6962 (Certificate Transparency) Merkle tree over the audit trail's records, with
//! compact ranges, inclusion and consistency proofs.
//!
//! Hashing is exactly RFC 6962 §2.1 with SHA-256: a leaf is `SHA-256(0x00 || record)`, an
//! interior node `SHA-256(0x01 || left || right)`, the empty tree `SHA-256("")`. The tree of
//! `n` leaves splits at the largest power of two below `n`. Known-answer tests pin the roots and
//! proofs to the published Certificate Transparency vectors, so another implementation (an
//! auditor's, the API's) computes the same roots.
//!
//! Why hand-written: the audit trail needs three things together that no well-kept crate offers.
//! (1) A pruned prefix summarised by its compact range (the roots of the perfect subtrees that
//! make up `[0, p)`, at most 64 hashes): retention deletes old records, and the remaining trail
//! must still produce the roots, proofs and checkpoints of the whole log. (2) Incremental roots
//! across processes: every `km monitor` appends to the same tree and catches up on what the others
//! appended. (3) Proof verification with bounded work for a witness that holds only roots. The
//! `ct-merkle` crate (by its own README unaudited) keeps every leaf in memory and has no notion of a
//! pruned prefix; the RFC's algorithms are short, and the verifiers below follow RFC 9162
//! §2.1.3.2 and §2.1.4.2 step by step.
//!
//! Every node of a tree of size `n ≥ p` that lies inside a pruned prefix `[0, p)` is one of the
//! prefix's compact-range peaks (the recursion splits at the same power-of-two boundaries as the
//! binary decomposition of `p`), so roots, consistency proofs from any size `≥ p` and inclusion
//! proofs of leaves `≥ p` need nothing that was pruned. Asking for something older is a
//! [`Error::Pruned`], never a wrong answer.
//!
//! A [`Tree`] keeps, besides its leaves, the perfect subtrees of [`KEPT_LEVEL`] levels and up that
//! appending completed (the frontier computes them anyway when it merges its peaks), so that a
//! proof or an old root costs O(log n) node hashes instead of rehashing every leaf: the audit
//! trail proves consistency at every checkpoint, and rehashing a segment of 100 000 records
//! each time cost more than recording them. They take an eighth of the leaves' memory.

use ring::digest;

use crate::Error;

/// A SHA-256 value: a leaf, a node or a root.
pub type Hash = [u8; 32];

/// The longest proof a verifier accepts: a tree of 2^64 leaves needs at most 64 hashes (and a
/// consistency proof one more). Longer input is refused before any hashing.
pub const MAX_PROOF_LEN: usize = 65;

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The leaf hash of a record: `SHA-256(0x00 || bytes)`.
pub fn leaf_hash(bytes: &[u8]) -> Hash {
    sha256(&[&[0x00], bytes])
}

/// An interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// The largest power of two strictly below `n` (`n ≥ 2`): where RFC 6962 splits a tree.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The ranges `[start, end)` of the perfect subtrees that make up `[0, size)`, largest first.
fn peak_ranges(size: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut start = 0u64;
    (0..64u32).rev().filter_map(move |bit| {
        let width = 1u64 << bit;
        (size & width != 0).then(|| {
            let range = (start, start + width);
            start += width;
            range
        })
    })
}

/// The compact range of `[0, size)`: one root per perfect subtree of the binary decomposition of
/// `size`, largest (leftmost) first. Enough to append and to compute the root; what a segment
/// header keeps of everything before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// A frontier from its parts; refuses a number of peaks that does not fit `size`.
    pub fn from_peaks(size: u64, peaks: Vec<Hash>) -> Result<Self, Error> {
        if peaks.len() != size.count_ones() as usize {
            return Err(Error::BadFrontier {
                size,
                expected: size.count_ones() as usize,
                actual: peaks.len(),
            });
        }
        Ok(Frontier { size, peaks })
    }

    /// How many leaves it summarises.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Its peaks, largest first.
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_noting(leaf, |_, _| {});
    }

    /// Appends a leaf hash; `note(level, hash)` is told every perfect subtree the append
    /// completed (the one of 2^level leaves that ends with the new leaf), smallest first.
    fn push_noting(&mut self, leaf: Hash, mut note: impl FnMut(u32, &Hash)) {
        let mut hash = leaf;
        let mut size = self.size;
        let mut level = 0;
        note(level, &hash);
        // Each trailing one bit of the size is a peak of the same height to merge with.
        while size & 1 == 1 {
            let Some(left) = self.peaks.pop() else { break };
            hash = node_hash(&left, &hash);
            size >>= 1;
            level += 1;
            note(level, &hash);
        }
        self.peaks.push(hash);
        self.size += 1;
    }

    /// The root of the tree it summarises (the peaks folded from the right).
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(last) = peaks.next() else {
            return empty_root();
        };
        peaks.fold(*last, |acc, peak| node_hash(peak, &acc))
    }
}

/// The lowest level of interior nodes a [`Tree`] keeps: subtrees of 2^4 = 16 leaves and up.
/// Anything smaller is hashed from the leaves when asked for (at most 15 node hashes).
pub const KEPT_LEVEL: u32 = 4;

/// The audit tree as one process holds it: the compact range of a pruned (or not yet read)
/// prefix, the leaf hashes after it, and the larger perfect subtrees completed since.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    base: Frontier,
    leaves: Vec<Hash>,
    /// `kept[j - KEPT_LEVEL]`: the perfect subtrees of 2^j leaves completed since the base, in
    /// order; the first is the one with index `base.size >> j` (it ends after the base).
    kept: Vec<Vec<Hash>>,
    frontier: Frontier,
}

impl Tree {
    /// The empty tree.
    pub fn new() -> Self {
        Tree::default()
    }

    /// A tree whose first `base.size()` leaves are known only by their compact range.
    pub fn from_base(base: Frontier) -> Self {
        Tree {
            frontier: base.clone(),
            base,
            leaves: Vec::new(),
            kept: Vec::new(),
        }
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size
    }

    /// The number of leaves known only by the base's compact range.
    pub fn base_size(&self) -> u64 {
        self.base.size
    }

    /// The compact range of the whole tree.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.leaves.push(leaf);
        let kept = &mut self.kept;
        self.frontier.push_noting(leaf, |level, hash| {
            if let Some(j) = level.checked_sub(KEPT_LEVEL) {
                let j = j as usize;
                if kept.len() <= j {
                    kept.resize_with(j + 1, Vec::new);
                }
                kept[j].push(*hash);
            }
        });
    }

    /// The kept hash of `[lo, hi)` if it is a perfect subtree of [`KEPT_LEVEL`] levels or more
    /// completed since the base.
    fn kept(&self, lo: u64, hi: u64) -> Option<Hash> {
        let width = hi - lo;
        if !width.is_power_of_two() || !lo.is_multiple_of(width) {
            return None;
        }
        let j = width.trailing_zeros();
        let level = self
            .kept
            .get(usize::try_from(j.checked_sub(KEPT_LEVEL)?).ok()?)?;
        let index = (lo >> j).checked_sub(self.base.size >> j)?;
        level.get(usize::try_from(index).ok()?).copied()
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The leaf hash at `index`, if it is held (not pruned, not beyond the end).
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let offset = index.checked_sub(self.base.size)?;
        self.leaves.get(usize::try_from(offset).ok()?).copied()
    }

    fn check_size(&self, size: u64) -> Result<(), Error> {
        if size > self.size() {
            return Err(Error::BeyondTree {
                requested: size,
                size: self.size(),
            });
        }
        if size < self.base.size {
            return Err(Error::Pruned {
                requested: size,
                base: self.base.size,
            });
        }
        Ok(())
    }

    /// The root of the tree of the first `size` leaves (`base ≤ size ≤ self.size()`).
    pub fn root_at(&self, size: u64) -> Result<Hash, Error> {
        self.check_size(size)?;
        if size == self.size() {
            return Ok(self.root());
        }
        Ok(self.frontier_at(size)?.root())
    }

    /// The compact range of the first `size` leaves.
    pub fn frontier_at(&self, size: u64) -> Result<Frontier, Error> {
        self.check_size(size)?;
        let peaks = peak_ranges(size)
            .map(|(lo, hi)| self.subtree(lo, hi))
            .collect::<Result<Vec<_>, _>>()?;
        Frontier::from_peaks(size, peaks)
    }

    /// The hash of the node covering `[lo, hi)`, a node of some RFC 6962 tree.
    fn subtree(&self, lo: u64, hi: u64) -> Result<Hash, Error> {
        let base = self.base.size;
        if hi <= base {
            // Inside the pruned prefix: only its peaks are known.
            return peak_ranges(base)
                .zip(&self.base.peaks)
                .find(|((start, end), _)| *start == lo && *end == hi)
                .map(|(_, hash)| *hash)
                .ok_or(Error::Pruned {
                    requested: lo,
                    base,
                });
        }
        if let Some(hash) = self.kept(lo, hi) {
            return Ok(hash);
        }
        if hi - lo == 1 {
            return self.leaf(lo).ok_or(Error::BeyondTree {
                requested: hi,
                size: self.size(),
            });
        }
        let k = split(hi - lo);
        let left = self.subtree(lo, lo + k)?;
        let right = self.subtree(lo + k, hi)?;
        Ok(node_hash(&left, &right))
    }

    /// The RFC 6962 consistency proof that the tree of `old` leaves is a prefix of the tree of
    /// `new` leaves (`base ≤ old ≤ new ≤ self.size()`); empty when `old` is 0 or equals `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, Error> {
        self.check_size(new)?;
        if old > new {
            return Err(Error::BeyondTree {
                requested: old,
                size: new,
            });
        }
        if old < self.base.size {
            return Err(Error::Pruned {
                requested: old,
                base: self.base.size,
            });
        }
        let mut proof = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut proof)?;
        }
        Ok(proof)
    }

    fn subproof(
        &self,
        m: u64,
        lo: u64,
        hi: u64,
        complete: bool,
        out: &mut Vec<Hash>,
    ) -> Result<(), Error> {
        let n = hi - lo;
        if m == n {
            if !complete {
                out.push(self.subtree(lo, hi)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, complete, out)?;
            out.push(self.subtree(lo + k, hi)?);
        } else {
            self.subproof(m - k, lo + k, hi, false, out)?;
            out.push(self.subtree(lo, lo + k)?);
        }
        Ok(())
    }

    /// The RFC 6962 audit path of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, Error> {
        self.check_size(size)?;
        if index >= size {
            return Err(Error::BeyondTree {
                requested: index + 1,
                size,
            });
        }
        if index < self.base.size {
            return Err(Error::Pruned {
                requested: index,
                base: self.base.size,
            });
        }
        let mut proof = Vec::new();
        let (mut lo, mut hi) = (0u64, size);
        let mut path = Vec::new();
        // Walk down to the leaf, remembering the sibling of each step; the proof lists them
        // from the leaf up.
        while hi - lo > 1 {
            let k = split(hi - lo);
            if index < lo + k {
                path.push((lo + k, hi));
                hi = lo + k;
            } else {
                path.push((lo, lo + k));
                lo += k;
            }
        }
        for (a, b) in path.into_iter().rev() {
            proof.push(self.subtree(a, b)?);
        }
        Ok(proof)
    }
}

/// Checks an RFC 6962 inclusion proof (RFC 9162 §2.1.3.2): `leaf` is leaf `index` of the tree
/// of `size` leaves whose root is `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), Error> {
    if index >= size {
        return Err(Error::BadProof("the leaf index is beyond the tree"));
    }
    if proof.len() > MAX_PROOF_LEN {
        return Err(Error::BadProof("the proof is too long"));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(Error::BadProof("the proof is too long for the tree"));
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(Error::BadProof("the proof is too short for the tree"));
    }
    if r != *root {
        return Err(Error::BadProof("the proof does not lead to the root"));
    }
    Ok(())
}

/// Checks an RFC 6962 consistency proof (RFC 9162 §2.1.4.2): the tree of `old` leaves with root
/// `old_root` is a prefix of the tree of `new` leaves with root `new_root`. The cases the RFC
/// leaves out are defined the obvious way: the empty tree is a prefix of every tree (empty
/// proof), and a tree is consistent with itself (empty proof, equal roots).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), Error> {
    if old > new {
        return Err(Error::BadProof("the old tree is larger than the new one"));
    }
    if proof.len() > MAX_PROOF_LEN {
        return Err(Error::BadProof("the proof is too long"));
    }
    if old == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(Error::BadProof("a proof from the empty tree must be empty"))
        };
    }
    if old == new {
        return if !proof.is_empty() {
            Err(Error::BadProof("a proof between equal sizes must be empty"))
        } else if old_root != new_root {
            Err(Error::BadProof(
                "two trees of the same size have different roots",
            ))
        } else {
            Ok(())
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(Error::BadProof("the proof is empty"));
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(Error::BadProof("the proof is too long for the trees"));
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(Error::BadProof("the proof is too short for the trees"));
    }
    if fr != *old_root {
        return Err(Error::BadProof("the proof does not lead to the old root"));
    }
    if sr != *new_root {
        return Err(Error::BadProof("the proof does not lead to the new root"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
