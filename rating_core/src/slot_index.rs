//! Open-addressing map from a 32-bit identity tag to a session slot.
//!
//! One array of `(tag, slot)` with linear probing: a lookup touches one cache line
//! (hashbrown's split control bytes and buckets cost two misses at a million sessions),
//! and an entry is 8 bytes. Tags are hash bits, so two identities may share one: the
//! engine chains instances behind the slot and compares the identity itself.

const EMPTY: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct SlotIndex {
    table: Vec<(u32, u32)>,
    len: usize,
    mask: usize,
}

impl Default for SlotIndex {
    fn default() -> Self {
        Self {
            table: vec![(0, EMPTY); 16],
            len: 0,
            mask: 15,
        }
    }
}

impl SlotIndex {
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn home(&self, h: u32) -> usize {
        // Tags are uniformly mixed hash bits already.
        (h as usize) & self.mask
    }

    /// Bytes held by the table.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.table.capacity() * std::mem::size_of::<(u32, u32)>()
    }

    /// Asks the CPU to load the table line where a lookup of `h` starts, without waiting.
    #[inline]
    pub fn prefetch(&self, h: u32) {
        if let Some(entry) = self.table.get(self.home(h)) {
            crate::prefetch::read(entry);
        }
    }

    /// The slot stored for `h`.
    #[inline]
    #[must_use]
    pub fn get(&self, h: u32) -> Option<u32> {
        let mut i = self.home(h);
        loop {
            let (k, v) = self.table[i];
            if v == EMPTY {
                return None;
            }
            if k == h {
                return Some(v);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Sets the slot for `h` (replacing any).
    pub fn insert(&mut self, h: u32, slot: u32) {
        if (self.len + 1) * 4 > self.table.len() * 3 {
            self.grow();
        }
        let mut i = self.home(h);
        loop {
            let (k, v) = self.table[i];
            if v == EMPTY {
                self.table[i] = (h, slot);
                self.len += 1;
                return;
            }
            if k == h {
                self.table[i].1 = slot;
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Removes `h` (backward-shift deletion keeps probe chains intact).
    pub fn remove(&mut self, h: u32) {
        let mut i = self.home(h);
        loop {
            let (k, v) = self.table[i];
            if v == EMPTY {
                return;
            }
            if k == h {
                break;
            }
            i = (i + 1) & self.mask;
        }
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let (k, v) = self.table[j];
            if v == EMPTY {
                break;
            }
            let home = self.home(k);
            // Move entry j back to the hole at i unless its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.table[i] = self.table[j];
                i = j;
            }
        }
        self.table[i] = (0, EMPTY);
        self.len -= 1;
    }

    fn grow(&mut self) {
        let bigger = vec![(0, EMPTY); self.table.len() * 2];
        let old = std::mem::replace(&mut self.table, bigger);
        self.mask = self.table.len() - 1;
        self.len = 0;
        for (k, v) in old {
            if v != EMPTY {
                self.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SlotIndex;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_hash_map_under_inserts_and_removes() {
        let mut idx = SlotIndex::default();
        let mut model = HashMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct keys, with colliding low bits, so chains and removals interact.
            let key = ((x % 512) << 20 | (x % 7)) as u32;
            if x % 3 == 0 {
                idx.remove(key);
                model.remove(&key);
            } else {
                idx.insert(key, step);
                model.insert(key, step);
            }
            assert_eq!(idx.len(), model.len());
        }
        for (k, v) in &model {
            assert_eq!(idx.get(*k), Some(*v));
        }
        assert_eq!(idx.get(12345), model.get(&12345).copied());
    }
}
