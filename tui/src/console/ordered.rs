//! A sorted set that can start iterating at a position without walking
//! the entries before it, which `BTreeSet` cannot: the tasks view pages
//! through 100,000 tasks, and a page near the end must cost what the
//! first page does.
//!
//! Entries live in sorted blocks of at most `2 * BLOCK`. Finding a
//! position walks the block lengths (a few hundred for 100,000 entries);
//! an insert or removal moves at most one block's entries.

/// Half the largest block. Small enough that moving a block's entries on
/// insert stays cheap, large enough that the block list stays short.
const BLOCK: usize = 256;

#[derive(Clone, Debug)]
pub struct OrderedSet<T> {
    /// Each sorted, none empty, every entry of a block below every entry
    /// of the next.
    blocks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for OrderedSet<T> {
    fn default() -> Self {
        OrderedSet {
            blocks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Ord> OrderedSet<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block that holds `item`, or would: the first whose last entry
    /// is not below it, else the last block.
    fn block_for(&self, item: &T) -> usize {
        self.blocks
            .partition_point(|block| block.last().is_some_and(|last| last < item))
            .min(self.blocks.len().saturating_sub(1))
    }

    /// Adds `item`; an equal entry is replaced.
    pub fn insert(&mut self, item: T) {
        if self.blocks.is_empty() {
            self.blocks.push(vec![item]);
            self.len = 1;
            return;
        }
        let b = self.block_for(&item);
        let block = &mut self.blocks[b];
        match block.binary_search(&item) {
            Ok(at) => block[at] = item,
            Err(at) => {
                block.insert(at, item);
                self.len += 1;
                if block.len() > 2 * BLOCK {
                    let tail = block.split_off(BLOCK);
                    // The block doubled its capacity on the way here;
                    // halved, it would keep three quarters of it empty.
                    block.shrink_to_fit();
                    self.blocks.insert(b + 1, tail);
                }
            }
        }
    }

    /// Removes the entry equal to `item`; whether there was one.
    pub fn remove(&mut self, item: &T) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        let b = self.block_for(item);
        let block = &mut self.blocks[b];
        let Ok(at) = block.binary_search(item) else {
            return false;
        };
        block.remove(at);
        self.len -= 1;
        if block.is_empty() {
            self.blocks.remove(b);
        }
        true
    }

    /// Entries in order, starting at position `start`.
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> {
        let mut skip = start;
        let mut first = 0;
        while let Some(block) = self.blocks.get(first)
            && block.len() <= skip
        {
            skip -= block.len();
            first += 1;
        }
        self.blocks[first..].iter().flatten().skip(skip)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn it_agrees_with_a_btree_set_through_inserts_and_removals() {
        let mut ordered = OrderedSet::default();
        let mut reference = BTreeSet::new();
        // A fixed pseudo-random walk: enough entries to split blocks many
        // times, and removals to empty some.
        let mut x: u64 = 12345;
        for step in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let value = (x >> 33) % 5_000;
            if step % 3 == 2 {
                assert_eq!(ordered.remove(&value), reference.remove(&value));
            } else {
                ordered.insert(value);
                reference.insert(value);
            }
            assert_eq!(ordered.len(), reference.len());
        }
        let all: Vec<u64> = reference.iter().copied().collect();
        assert_eq!(ordered.iter_from(0).copied().collect::<Vec<_>>(), all);
        for start in [
            0,
            1,
            BLOCK - 1,
            BLOCK,
            2 * BLOCK + 7,
            all.len() - 1,
            all.len(),
        ] {
            assert_eq!(
                ordered.iter_from(start).copied().collect::<Vec<_>>(),
                all[start..],
                "from {start}"
            );
        }
        assert_eq!(ordered.iter_from(all.len() + 5).count(), 0);
    }

    #[test]
    fn removing_everything_leaves_it_empty() {
        let mut ordered = OrderedSet::default();
        for i in 0..1_000 {
            ordered.insert(i);
        }
        for i in (0..1_000).rev() {
            assert!(ordered.remove(&i));
        }
        assert!(ordered.is_empty());
        assert!(!ordered.remove(&3));
        assert_eq!(ordered.iter_from(0).count(), 0);
    }
}
