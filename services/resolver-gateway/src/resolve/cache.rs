//! The shared answer cache: sharded maps of `Arc<Entry>`, bounded, oldest-first eviction.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState},
    sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::ResponseCode,
    rr::{Name, Record, RecordType},
};
use prometheus_client::metrics::gauge::Gauge;

use super::Resolved;
use crate::fifo::FifoMap;

/// Shards of the cache (fewer when `max_entries` is small).
const SHARDS: usize = 32;

/// The seed of every key hash (per process, random).
static KEY_HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// A cache key: the question (class IN). Names compare ASCII case-insensitively and are
/// always absolute. The hash is computed once, over the lowercased wire-format name, so maps
/// and shards never rehash the name.
#[derive(Debug, Clone)]
pub(super) struct Key {
    pub name: Name,
    pub qtype: RecordType,
    hash: u64,
}

impl Key {
    pub fn new(name: &Name, qtype: RecordType) -> Key {
        let mut name = name.clone();
        if !name.is_fqdn() {
            name.set_fqdn(true);
        }
        // Lowercased length-prefixed labels, then the type: one hasher call.
        let mut buf = [0u8; 260];
        let mut len = 0;
        for label in name.iter() {
            let end = len + 1 + label.len();
            if end + 2 > buf.len() {
                break;
            }
            buf[len] = u8::try_from(label.len()).unwrap_or(u8::MAX);
            for (dst, src) in buf[len + 1..end].iter_mut().zip(label) {
                *dst = src.to_ascii_lowercase();
            }
            len = end;
        }
        buf[len..len + 2].copy_from_slice(&u16::from(qtype).to_be_bytes());
        let hash = KEY_HASHER.hash_one(&buf[..len + 2]);
        Key { name, qtype, hash }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.hash == other.hash && self.qtype == other.qtype && self.name == other.name
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Hasher of maps keyed by [`Key`]: passes the precomputed hash through.
#[derive(Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Key`; a plain FNV-1a for completeness.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by [`Key`].
pub(super) type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// One answer, as resolved: the records with their TTLs at `stored`.
#[derive(Debug)]
pub(super) struct Entry {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub stored: Instant,
    /// How long it may be served from the cache; zero when it may not be cached.
    pub lifetime: Duration,
}

impl Entry {
    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored) < self.lifetime
    }

    /// The answer as seen at `now`: every TTL reduced by the whole seconds elapsed since it was
    /// stored. While the entry is fresh, every TTL stays at 1 or more.
    pub fn resolved(&self, now: Instant, from_cache: bool) -> Resolved {
        let age =
            u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX);
        let aged = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.saturating_sub(age);
                    r
                })
                .collect()
        };
        Resolved {
            rcode: self.rcode,
            answers: aged(&self.answers),
            authority: aged(&self.authority),
            from_cache,
        }
    }
}

type Shard = FifoMap<Key, Arc<Entry>, BuildHasherDefault<KeyHasher>>;

/// The cache. All methods take `&self`; a shard's lock is held only for a map operation.
pub(super) struct Cache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    entries: Gauge,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .field("entries", &self.entries.get())
            .finish()
    }
}

impl Cache {
    /// A cache of at most `max_entries` (rounded up to a multiple of the shard count); zero
    /// disables caching.
    pub fn new(max_entries: usize, entries: Gauge) -> Cache {
        let shards = SHARDS.min(max_entries).max(1);
        let per_shard = max_entries.div_ceil(shards);
        Cache {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard::new(per_shard)))
                .collect(),
            per_shard,
            entries,
        }
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        // Bits the shard's map uses neither for buckets (low) nor for tags (top 7).
        let index = usize::try_from((key.hash >> 32) & 0xff_ffff).unwrap_or(0) % self.shards.len();
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The fresh entry for `key`, if any; an expired one is dropped.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(key);
        let entry = shard.get(key)?;
        if entry.is_fresh(now) {
            return Some(entry.clone());
        }
        shard.remove(key);
        drop(shard);
        self.entries.dec();
        None
    }

    /// Stores `entry` under `key` (replacing any previous one) unless it is not cacheable.
    /// When the shard is full, its oldest entries go first.
    pub fn insert(&self, key: Key, entry: Arc<Entry>) {
        if self.per_shard == 0 || entry.lifetime.is_zero() {
            return;
        }
        let inserted = self.shard(&key).insert(key, entry);
        if !inserted.replaced {
            self.entries.inc();
        }
        self.entries
            .dec_by(i64::try_from(inserted.evicted).unwrap_or(i64::MAX));
    }

    /// Entries held (expired ones included until they are looked up or evicted).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::Ipv4Addr;

    use hickory_proto::rr::{RData, rdata::A};

    use super::*;

    fn entry(ttl: u32, stored: Instant) -> Arc<Entry> {
        Arc::new(Entry {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                Name::from_ascii("a.test.").unwrap(),
                ttl,
                RData::A(A(Ipv4Addr::LOCALHOST)),
            )],
            authority: Vec::new(),
            stored,
            lifetime: Duration::from_secs(u64::from(ttl)),
        })
    }

    fn key(i: usize) -> Key {
        Key::new(
            &Name::from_ascii(format!("n{i}.test")).unwrap(),
            RecordType::A,
        )
    }

    #[test]
    fn ttl_is_reduced_and_expired_entries_miss() {
        let cache = Cache::new(10, Gauge::default());
        let start = Instant::now();
        cache.insert(key(1), entry(5, start));
        let hit = cache
            .get(&key(1), start + Duration::from_millis(2500))
            .unwrap();
        let resolved = hit.resolved(start + Duration::from_millis(2500), true);
        assert_eq!(resolved.answers[0].ttl, 3);
        assert!(cache.get(&key(1), start + Duration::from_secs(5)).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn keys_ignore_case_and_the_trailing_dot() {
        let cache = Cache::new(10, Gauge::default());
        let now = Instant::now();
        cache.insert(key(1), entry(60, now));
        let upper = Key::new(&Name::from_ascii("N1.TEST").unwrap(), RecordType::A);
        assert!(cache.get(&upper, now).is_some());
        let aaaa = Key::new(&Name::from_ascii("n1.test.").unwrap(), RecordType::AAAA);
        assert!(cache.get(&aaaa, now).is_none());
    }

    #[test]
    fn bounded_with_oldest_first_eviction() {
        let gauge = Gauge::default();
        let cache = Cache::new(64, gauge.clone());
        let now = Instant::now();
        for i in 0..10_000 {
            cache.insert(key(i), entry(60, now));
            // Replacements must not leak order items or count twice.
            cache.insert(key(i), entry(60, now));
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        assert_eq!(usize::try_from(gauge.get()).unwrap(), cache.len());
        // The newest entry survives.
        assert!(cache.get(&key(9_999), now).is_some());
        for shard in cache.shards.iter() {
            assert!(shard.lock().unwrap().queued() <= 2 * cache.per_shard + 65);
        }
    }

    #[test]
    fn zero_ttl_and_zero_capacity_are_not_cached() {
        let cache = Cache::new(10, Gauge::default());
        let now = Instant::now();
        cache.insert(key(1), entry(0, now));
        assert!(cache.get(&key(1), now).is_none());
        let cache = Cache::new(0, Gauge::default());
        cache.insert(key(1), entry(60, now));
        assert!(cache.get(&key(1), now).is_none());
    }
}
