//! The content keys one `apply` call has taken so far, for duplicates within a batch.
//!
//! Open addressing over one array of `(tag, entry)`: the home slot comes from the key's
//! low bits and the tag from the next 32, and a tag match is confirmed against the entry's
//! whole key, so two keys never merge. One probe touches one cache line, and the line of a
//! record ahead can be prefetched (a `HashMap` costs a control-byte miss and a bucket miss).

const EMPTY: u32 = u32::MAX;

#[derive(Debug, Clone, Default)]
pub struct BatchKeys {
    table: Vec<(u32, u32)>,
    len: usize,
    mask: usize,
}

fn split(key: &[u8; 16]) -> (usize, u32) {
    let mut low = [0u8; 8];
    low.copy_from_slice(&key[..8]);
    let bits = u64::from_le_bytes(low);
    (bits as usize, (bits >> 32) as u32)
}

impl BatchKeys {
    /// Empties the table, sized for `n` keys at most half full (a table more than four
    /// times that size is given back; more keys than `n` grow it).
    pub fn reset(&mut self, n: usize) {
        let want = n.max(8).saturating_mul(2).next_power_of_two();
        if self.table.len() < want || self.table.len() > want.saturating_mul(4) {
            self.table = vec![(0, EMPTY); want];
        } else {
            self.table.fill((0, EMPTY));
        }
        self.len = 0;
        self.mask = self.table.len() - 1;
    }

    /// Bytes held by the table.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.table.capacity() * std::mem::size_of::<(u32, u32)>()
    }

    /// Asks the CPU to load the line where a lookup of `key` starts.
    #[inline]
    pub fn prefetch(&self, key: &[u8; 16]) {
        if let Some(slot) = self.table.get(split(key).0 & self.mask) {
            crate::prefetch::read(slot);
        }
    }

    /// The entry that took `key`; `keys[j]` is entry `j`'s key.
    #[inline]
    #[must_use]
    pub fn get(&self, key: &[u8; 16], keys: &[[u8; 16]]) -> Option<u32> {
        self.find(key, keys).ok()
    }

    /// Records that `entry` took `key`, unless an earlier entry did.
    #[inline]
    pub fn insert(&mut self, key: &[u8; 16], entry: u32, keys: &[[u8; 16]]) {
        if let Err(mut free) = self.find(key, keys) {
            if (self.len + 1) * 2 > self.table.len() {
                self.grow(keys);
                free = self.find(key, keys).err().unwrap_or(free);
            }
            self.table[free] = (split(key).1, entry);
            self.len += 1;
        }
    }

    /// Doubles the table, placing every entry again by its key.
    fn grow(&mut self, keys: &[[u8; 16]]) {
        let old = std::mem::replace(&mut self.table, vec![(0, EMPTY); (self.mask + 1) * 2]);
        self.mask = self.table.len() - 1;
        for (tag, entry) in old {
            if let Some(key) = keys.get(entry as usize).filter(|_| entry != EMPTY) {
                if let Err(free) = self.find(key, keys) {
                    self.table[free] = (tag, entry);
                }
            }
        }
    }

    /// `Ok(entry)` holding `key`, or `Err(slot)`: the empty slot where it would go.
    fn find(&self, key: &[u8; 16], keys: &[[u8; 16]]) -> Result<u32, usize> {
        let (home, tag) = split(key);
        let mut i = home & self.mask;
        loop {
            let (t, entry) = self.table[i];
            if entry == EMPTY {
                return Err(i);
            }
            if t == tag && keys.get(entry as usize) == Some(key) {
                return Ok(entry);
            }
            i = (i + 1) & self.mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BatchKeys;
    use std::collections::HashMap;

    #[test]
    fn finds_each_key_its_first_entry_took_and_never_merges_two_keys() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Few distinct low words and tags, so keys share home slots and tags, and keys
        // equal in their first 8 bytes differ only after them.
        let pool: Vec<[u8; 16]> = (0..300)
            .map(|_| {
                let mut k = [0u8; 16];
                let low = (next() % 40) | (next() % 3) << 32;
                k[..8].copy_from_slice(&low.to_le_bytes());
                k[8..].copy_from_slice(&(next() % 5).to_le_bytes());
                k
            })
            .collect();
        // A table sized for all of them, and one that must grow.
        for size in [2_000, 10] {
            let mut table = BatchKeys::default();
            table.reset(size);
            let mut keys = Vec::new();
            let mut model: HashMap<[u8; 16], u32> = HashMap::new();
            for entry in 0..2_000u32 {
                let key = pool[(next() % 300) as usize];
                assert_eq!(table.get(&key, &keys), model.get(&key).copied());
                keys.push(key);
                model.entry(key).or_insert(entry);
                table.insert(&key, entry, &keys);
                assert_eq!(table.get(&key, &keys), model.get(&key).copied());
            }
            for key in &pool {
                assert_eq!(table.get(key, &keys), model.get(key).copied());
            }
            // Emptied for the next batch.
            table.reset(size);
            assert!(pool.iter().all(|k| table.get(k, &keys).is_none()));
        }
    }
}
