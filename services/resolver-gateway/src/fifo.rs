//! A bounded map that evicts its oldest insertions first: the storage of every cache of the
//! gateway (records, encoded answers, denials).
//!
//! Eviction must not scan: popping "any" entry of a `HashMap` with `iter().next()` walks the
//! empty buckets left by earlier removals from the front, which grows with every eviction
//! under a cache-busting load. So insertions are queued with a sequence number; evicting pops
//! the queue, skipping items whose key was since replaced or removed (stale), and the queue is
//! compacted when stale items pile up.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

struct Slot<V> {
    value: V,
    seq: u64,
}

pub struct FifoMap<K, V, S> {
    map: HashMap<K, Slot<V>, S>,
    order: VecDeque<(K, u64)>,
    next_seq: u64,
    capacity: usize,
}

impl<K, V, S> std::fmt::Debug for FifoMap<K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FifoMap")
            .field("len", &self.map.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// What an insertion did besides storing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The key was present: its value was replaced.
    pub replaced: bool,
    /// Entries evicted to make room.
    pub evicted: usize,
}

impl<K: Hash + Eq + Clone, V, S: BuildHasher + Default> FifoMap<K, V, S> {
    /// A map of at most `capacity` entries (0 stores nothing).
    pub fn new(capacity: usize) -> Self {
        FifoMap {
            map: HashMap::default(),
            order: VecDeque::new(),
            next_seq: 0,
            capacity,
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map(|s| &s.value)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get_mut(key).map(|s| &mut s.value)
    }

    /// Removes `key` now; its queue item turns stale.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(key).map(|s| s.value)
    }

    /// Stores `value` under `key` as the newest entry, evicting the oldest ones beyond the
    /// capacity.
    pub fn insert(&mut self, key: K, value: V) -> Inserted {
        let mut done = Inserted::default();
        if self.capacity == 0 {
            return done;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        done.replaced = self.map.insert(key.clone(), Slot { value, seq }).is_some();
        self.order.push_back((key, seq));
        while self.map.len() > self.capacity {
            let Some((old, old_seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|s| s.seq == old_seq) {
                self.map.remove(&old);
                done.evicted += 1;
            }
        }
        if self.order.len() > 2 * self.capacity + 64 {
            let map = &self.map;
            self.order
                .retain(|(k, seq)| map.get(k).is_some_and(|s| s.seq == *seq));
        }
        done
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Queue items, stale ones included (for tests of the bound).
    pub fn queued(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    type Map = FifoMap<u32, u32, std::hash::RandomState>;

    #[test]
    fn the_oldest_insertions_go_first_and_replacements_count_as_new() {
        let mut m = Map::new(3);
        for k in 0..3 {
            assert_eq!(m.insert(k, k), Inserted::default());
        }
        // replacing 0 makes it the newest
        assert!(m.insert(0, 10).replaced);
        assert_eq!(m.insert(3, 3).evicted, 1);
        assert_eq!(m.get(&1), None);
        assert_eq!(m.get(&0), Some(&10));
        m.remove(&2);
        assert_eq!(m.insert(4, 4).evicted, 0);
        assert_eq!(m.len(), 3);
        assert_eq!(m.insert(5, 5).evicted, 1);
        assert_eq!(m.get(&0), None, "0 was the oldest left");
    }

    #[test]
    fn the_queue_stays_bounded_under_replacements() {
        let mut m = Map::new(8);
        for i in 0..100_000 {
            m.insert(i % 4, i);
        }
        assert_eq!(m.len(), 4);
        assert!(m.queued() <= 2 * 8 + 65, "{}", m.queued());
        let mut zero = Map::new(0);
        zero.insert(1, 1);
        assert!(zero.is_empty());
    }
}
