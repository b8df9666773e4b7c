//! The gateway's answer cache: encoded answers, re-sent without building a `Message`.
//!
//! The resolver's cache holds records; turning them into an answer costs a parse of the
//! query, a copy of the records and an encode, several microseconds a query. This cache holds
//! the encoded answer of an allowed name as the long way last built it, with the offsets of
//! its TTLs. A hit copies it, writes the client's ID, flags and question (the client's case)
//! and counts the TTLs down. Filtering and grants are not skipped: each answer remembers, per
//! allowlist that asked, whether the name is allowed and which grants it yields (allowlists
//! are immutable and content-addressed, so that memo cannot go stale), and a hit answers at
//! once only if the pod's enforcer already holds those grants.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dnsfence_policy::allowlist::Allowlist;
use dnsfence_policy::ports::PortRange;

use crate::fifo::FifoMap;
use crate::wire::{self, PlainQuery};

const SHARDS: usize = 16;
/// Longest key: a 255-byte name, the type and the EDNS flag.
const MAX_KEY: usize = 258;

/// The question as the cache knows it, built on the stack: the name in lower-case wire form,
/// the type, and whether the client speaks EDNS (the answer then carries an OPT record).
/// Hashed once: the shard of either cache and the doorkeeper's slot come from `hash`.
#[derive(Debug)]
pub struct AnswerKey {
    bytes: [u8; MAX_KEY],
    len: usize,
    hash: u64,
}

/// The seed of [`AnswerKey::hash`], random per process.
static KEY_HASHER: std::sync::LazyLock<foldhash::fast::RandomState> =
    std::sync::LazyLock::new(foldhash::fast::RandomState::default);

impl AnswerKey {
    pub fn of(raw: &[u8], query: &PlainQuery) -> Option<AnswerKey> {
        let name = raw.get(12..query.question_end.checked_sub(4)?)?;
        let mut bytes = [0u8; MAX_KEY];
        let len = name.len() + 3;
        let out = bytes.get_mut(..len)?;
        for (o, b) in out.iter_mut().zip(name) {
            *o = b.to_ascii_lowercase();
        }
        out[name.len()..].copy_from_slice(&[
            (query.qtype >> 8) as u8,
            query.qtype as u8,
            u8::from(query.edns_payload.is_some()),
        ]);
        let hash = KEY_HASHER.hash_one(&out[..]);
        Some(AnswerKey { bytes, len, hash })
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What a resolved address gives a pod whose allowlist allows the name.
#[derive(Debug, Clone)]
pub struct GrantTemplate {
    pub ip: IpAddr,
    /// Shared by the addresses that get the name's ports (every one, without CIDR rules).
    pub ports: Arc<[PortRange]>,
    /// The address record's TTL when the answer was stored.
    pub ttl: u32,
}

/// One allowlist's view of a cached name.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub allowed: bool,
    pub grants: Arc<[GrantTemplate]>,
}

struct Memo {
    /// Held so the pointer stays unique while the memo lives; `None`: pods no policy selects.
    allowlist: Option<Arc<Allowlist>>,
    verdict: Verdict,
}

/// One encoded answer.
pub struct CachedAnswer {
    /// The answer with ID 0, TTLs as at `stored`.
    wire: Vec<u8>,
    ttl_offsets: Vec<usize>,
    stored: Instant,
    lifetime: Duration,
    /// The normalized name, for the allowlist and grants.
    pub name: String,
    /// The A/AAAA addresses with their TTLs at `stored`.
    pub addresses: Vec<(IpAddr, u32)>,
    memos: Mutex<Vec<Memo>>,
}

impl std::fmt::Debug for CachedAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedAnswer")
            .field("name", &self.name)
            .field("len", &self.wire.len())
            .finish_non_exhaustive()
    }
}

/// The shard of `key` among `shards`: the high bits of its hash (the doorkeeper's slot takes
/// the low ones).
fn shard_index(key: &AnswerKey, shards: usize) -> usize {
    ((key.hash >> 48) as usize) % shards
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent; a panic elsewhere must not
    // stop the cache.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CachedAnswer {
    /// `None` if the answer holds nothing worth caching (no records, or a TTL of 0).
    pub fn new(
        wire: Vec<u8>,
        name: String,
        addresses: Vec<(IpAddr, u32)>,
        now: Instant,
    ) -> Option<CachedAnswer> {
        let ttl_offsets = wire::ttl_offsets(&wire)?;
        let shortest = ttl_offsets
            .iter()
            .map(|&o| wire::read_u32(&wire, o))
            .min()?;
        if shortest == 0 {
            return None;
        }
        Some(CachedAnswer {
            wire,
            ttl_offsets,
            stored: now,
            lifetime: Duration::from_secs(u64::from(shortest)),
            name,
            addresses,
            memos: Mutex::new(Vec::new()),
        })
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored) < self.lifetime
    }

    /// Seconds since it was stored.
    pub fn age(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX)
    }

    /// What `allowlist` (`None`: an unselected pod) says about this name, computed by `decide`
    /// the first time and remembered.
    pub fn verdict(
        &self,
        allowlist: Option<&Arc<Allowlist>>,
        decide: impl FnOnce() -> Verdict,
    ) -> Verdict {
        let same = |m: &Memo| same_allowlist(m.allowlist.as_ref(), allowlist);
        if let Some(m) = lock(&self.memos).iter().find(|m| same(m)) {
            return m.verdict.clone();
        }
        let verdict = decide();
        let mut memos = lock(&self.memos);
        // Pods of a few allowlists ask for any one name; more is a sign of churn.
        if memos.len() >= 16 {
            memos.remove(0);
        }
        memos.push(Memo {
            allowlist: allowlist.cloned(),
            verdict: verdict.clone(),
        });
        verdict
    }

    /// The answer for `query` (whose raw bytes are `raw`) at `now`, TTLs at most `ttl_cap`.
    pub fn answer(&self, raw: &[u8], query: &PlainQuery, now: Instant, ttl_cap: u32) -> Vec<u8> {
        let mut out = self.wire.clone();
        stamp(&mut out, raw, query);
        let age = self.age(now);
        for &offset in &self.ttl_offsets {
            let ttl = wire::read_u32(&self.wire, offset)
                .saturating_sub(age)
                .min(ttl_cap);
            wire::write_u32(&mut out, offset, ttl);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.wire.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wire.is_empty()
    }
}

/// Makes a stored answer the answer to `query`: its ID, its RD and CD flags (the others are
/// the stored answer's) and its question as the client wrote it (the case, for DNS 0x20).
fn stamp(out: &mut [u8], raw: &[u8], query: &PlainQuery) {
    if out.len() < 12 {
        return;
    }
    out[0..2].copy_from_slice(&query.id.to_be_bytes());
    out[2] = (out[2] & !0x01) | u8::from(query.recursion_desired);
    out[3] = (out[3] & !0x10) | if query.checking_disabled { 0x10 } else { 0 };
    let question = 12..query.question_end;
    if let (Some(dst), Some(src)) = (out.get_mut(question.clone()), raw.get(question)) {
        dst.copy_from_slice(src);
    }
}

type Shard = FifoMap<Arc<[u8]>, Arc<CachedAnswer>, foldhash::fast::RandomState>;

/// Sharded, bounded map of encoded answers; a full shard drops its oldest insertion.
#[derive(Debug)]
pub struct AnswerCache {
    shards: Vec<Mutex<Shard>>,
}

impl AnswerCache {
    pub fn new(max_entries: usize) -> AnswerCache {
        let per_shard = max_entries.div_ceil(SHARDS);
        AnswerCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(per_shard)))
                .collect(),
        }
    }

    fn shard(&self, key: &AnswerKey) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_index(key, self.shards.len())])
    }

    /// The fresh answer under `key`. An expired one stays until the FIFO order evicts it or a
    /// new answer replaces it: it tells [`AnswerCache::holds`] the question earned a place.
    pub fn get(&self, key: &AnswerKey, now: Instant) -> Option<Arc<CachedAnswer>> {
        let shard = self.shard(key);
        let entry = shard.get(key.as_slice())?;
        entry.is_fresh(now).then(|| Arc::clone(entry))
    }

    /// Whether an answer, fresh or expired, is stored under `key`.
    pub fn holds(&self, key: &AnswerKey) -> bool {
        self.shard(key).get(key.as_slice()).is_some()
    }

    pub fn insert(&self, key: &AnswerKey, answer: CachedAnswer) {
        self.shard(key)
            .insert(key.as_slice().into(), Arc::new(answer));
    }
}

/// How long a remembered denial is re-sent before the long way decides again (the verdict
/// cannot change under the same allowlist; this only bounds memory held by rare names).
const DENIAL_LIFETIME: Duration = Duration::from_secs(60);

/// A denied name's encoded answer (REFUSED or NXDOMAIN with its extended error) for the pods
/// of one allowlist.
#[derive(Debug)]
pub struct Denial {
    wire: Vec<u8>,
    stored: Instant,
    pub verdict: crate::metrics::QueryVerdict,
    pub name: String,
    pub reason: String,
}

impl Denial {
    pub fn new(
        wire: &[u8],
        verdict: crate::metrics::QueryVerdict,
        name: String,
        reason: String,
    ) -> Denial {
        let mut wire = wire.to_vec();
        if let Some(id) = wire.get_mut(0..2) {
            id.fill(0);
        }
        Denial {
            wire,
            stored: Instant::now(),
            verdict,
            name,
            reason,
        }
    }

    /// The denial for `query`: its ID, RD and CD, and its question (the client's case).
    pub fn answer(&self, raw: &[u8], query: &PlainQuery) -> Vec<u8> {
        let mut out = self.wire.clone();
        stamp(&mut out, raw, query);
        out
    }
}

type DenialShard =
    FifoMap<Arc<[u8]>, Vec<(Option<Arc<Allowlist>>, Arc<Denial>)>, foldhash::fast::RandomState>;

/// Denials by question and allowlist (`None`: pods no policy selects), bounded like
/// [`AnswerCache`].
#[derive(Debug)]
pub struct DenialCache {
    shards: Vec<Mutex<DenialShard>>,
}

impl DenialCache {
    pub fn new(max_entries: usize) -> DenialCache {
        let per_shard = max_entries.div_ceil(SHARDS);
        DenialCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(DenialShard::new(per_shard)))
                .collect(),
        }
    }

    fn shard(&self, key: &AnswerKey) -> MutexGuard<'_, DenialShard> {
        lock(&self.shards[shard_index(key, self.shards.len())])
    }

    pub fn get(
        &self,
        key: &AnswerKey,
        allowlist: Option<&Arc<Allowlist>>,
        now: Instant,
    ) -> Option<Arc<Denial>> {
        let shard = self.shard(key);
        shard
            .get(key.as_slice())?
            .iter()
            .find(|(a, d)| {
                same_allowlist(a.as_ref(), allowlist)
                    && now.saturating_duration_since(d.stored) < DENIAL_LIFETIME
            })
            .map(|(_, d)| Arc::clone(d))
    }

    /// Whether a denial of any age, for any allowlist, is stored under `key`.
    pub fn holds(&self, key: &AnswerKey) -> bool {
        self.shard(key).get(key.as_slice()).is_some()
    }

    pub fn insert(&self, key: &AnswerKey, allowlist: Option<Arc<Allowlist>>, denial: Denial) {
        let now = Instant::now();
        let mut shard = self.shard(key);
        let key = key.as_slice();
        let Some(entries) = shard.get_mut(key) else {
            shard.insert(key.into(), vec![(allowlist, Arc::new(denial))]);
            return;
        };
        entries.retain(|(a, d)| {
            !same_allowlist(a.as_ref(), allowlist.as_ref())
                && now.saturating_duration_since(d.stored) < DENIAL_LIFETIME
        });
        if entries.len() >= 16 {
            entries.remove(0);
        }
        entries.push((allowlist, Arc::new(denial)));
    }
}

fn same_allowlist(a: Option<&Arc<Allowlist>>, b: Option<&Arc<Allowlist>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Cache admission: an answer is stored on the second query for its question seen within a
/// while, not the first. Under a cache-busting load (every name asked once) storing costs a
/// copy, an insertion and an eviction per query for entries nobody reads; names asked again
/// (the ones a cache is for) get in on their second miss, and a question whose stored answer
/// expired gets back in on its next one (see [`AnswerCache::holds`]). One fingerprint per
/// slot, no locks: a collision only admits a name one query early or late.
#[derive(Debug)]
pub struct Doorkeeper {
    slots: Box<[std::sync::atomic::AtomicU32]>,
}

impl Doorkeeper {
    /// About `remembered` questions (rounded up to a power of two, at least 65,536).
    pub fn new(remembered: usize) -> Doorkeeper {
        let n = remembered.max(1 << 16).next_power_of_two();
        Doorkeeper {
            slots: (0..n)
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
        }
    }

    /// True if `key` was seen since its slot was last taken by another question; marks it
    /// seen either way.
    pub fn asked_before(&self, key: &AnswerKey) -> bool {
        use std::sync::atomic::Ordering;
        let hash = key.hash;
        let slot = &self.slots[(hash as usize) & (self.slots.len() - 1)];
        let fingerprint = ((hash >> 32) as u32) | 1;
        if slot.load(Ordering::Relaxed) == fingerprint {
            return true;
        }
        slot.store(fingerprint, Ordering::Relaxed);
        false
    }
}

#[cfg(test)]
mod doorkeeper_tests {
    use super::*;
    use crate::wire::parse_plain_query;

    fn key(name: &str) -> AnswerKey {
        let mut raw = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            raw.push(label.len() as u8);
            raw.extend_from_slice(label.as_bytes());
        }
        raw.extend_from_slice(&[0, 0, 1, 0, 1]);
        let q = parse_plain_query(&raw).unwrap_or_else(|| panic!("query for {name}"));
        AnswerKey::of(&raw, &q).unwrap_or_else(|| panic!("key for {name}"))
    }

    #[test]
    fn a_question_is_admitted_on_its_second_ask() {
        let d = Doorkeeper::new(0);
        assert!(!d.asked_before(&key("a.test")));
        assert!(d.asked_before(&key("A.Test")), "case-insensitive");
        assert!(!d.asked_before(&key("b.test")));
        let admitted = (0..1000)
            .filter(|i| d.asked_before(&key(&format!("n{i}.test"))))
            .count();
        assert!(admitted < 5, "first asks are not admitted ({admitted})");
    }

    /// An answer to `name A` with one record of `ttl` seconds.
    fn answer(name: &str, ttl: u32) -> Vec<u8> {
        let mut wire = vec![0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        for label in name.split('.') {
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
        }
        wire.extend_from_slice(&[0, 0, 1, 0, 1, 0xc0, 0x0c, 0, 1, 0, 1]);
        wire.extend_from_slice(&ttl.to_be_bytes());
        wire.extend_from_slice(&[0, 4, 192, 0, 2, 1]);
        wire
    }

    #[test]
    fn an_expired_answer_is_not_served_but_still_held() {
        let cache = AnswerCache::new(16);
        let now = Instant::now();
        let stored = |at| {
            CachedAnswer::new(answer("a.test", 5), "a.test".into(), Vec::new(), at)
                .unwrap_or_else(|| panic!("cacheable"))
        };
        cache.insert(&key("a.test"), stored(now));
        assert!(cache.get(&key("a.test"), now).is_some());
        assert!(cache.holds(&key("a.test")));
        let later = now + Duration::from_secs(6);
        assert!(cache.get(&key("a.test"), later).is_none(), "expired");
        assert!(cache.holds(&key("a.test")), "kept as a sign it was asked");
        assert!(!cache.holds(&key("b.test")));
        // a new answer replaces the expired one
        cache.insert(&key("a.test"), stored(later));
        assert!(cache.get(&key("a.test"), later).is_some());
    }
}
