//! Recognising an event taken before: the transformer's memory of the events
//! that carry a name of their own (a user server's `id`, or a relayed
//! CloudEvent's `source` and `id`), so that a repeat (a user server retrying
//! after a lost answer, a Kafka consumer reading again after a crash) is
//! answered as taken and delivered to no watcher a second time.
//!
//! Each event is remembered by a 96-bit hash of its CloudEvent `source` and
//! `id` ([`Key`]) with the second it was taken, for `TRANSFORMER_DEDUP_WINDOW`;
//! at most `TRANSFORMER_DEDUP_MAX_IDS` at once. An entry is 16 bytes in a
//! hash table of twice as many buckets at most, so a million ids take about
//! 36 MiB (measured in the tests below). A full memory never forgets early: a new id is refused
//! (503, try again when the oldest expires) rather than risk a silent duplicate.
//!
//! This is memory only; the store keeps a journal of what it remembers, written
//! with the events themselves, and gives it back at start.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An event's name as remembered: 96 bits of a hash of its `source` and `id`
/// (two of a million ids collide with odds of about 2^-57). The hash is this
/// module's own (FNV-1a, twice, from two offsets), so that the journal's keys
/// mean the same to the next version of the binary; it is on the per-event
/// path, where a cryptographic digest showed in the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u32; 3]);

impl Key {
    pub fn of(source: &str, id: &str) -> Key {
        let fnv = |offset: u64| {
            let mut h = offset;
            framed(&[source, id], |bytes| {
                for b in bytes {
                    h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
                }
            });
            h
        };
        let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142));
        Key([a as u32, (a >> 32) as u32, (b ^ (b >> 32)) as u32])
    }

    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.0) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(b: [u8; 12]) -> Key {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Key([word(0), word(4), word(8)])
    }
}

/// The key is a hash already: its first 64 bits are the table's hash.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.0[0]) | (u64::from(self.0[1]) << 32));
    }
}

#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The namespace of every name-based UUID this gateway makes (RFC 9562 v5).
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6a0e_5d1c_3b7f_4f6e_9d2a_51c8_e0b4_7a13);

/// Names joined so that no two different lists give the same bytes: each
/// preceded by its length. Fed to `take` piece by piece (no buffer per event).
fn framed(parts: &[&str], mut take: impl FnMut(&[u8])) {
    for p in parts {
        take(&(p.len() as u32).to_be_bytes());
        take(p.as_bytes());
    }
}

/// The CloudEvent id of a user server's event named `id` in configuration
/// `src` of gateway `source`: the same three always give the same UUID, and
/// any other three another. A name-based UUID (RFC 9562 v5: SHA-1 of the
/// namespace and the framed names), as `uuid::Uuid::new_v5` makes it, with
/// the digest fed the names directly.
pub fn cloudevent_id(source: &str, src: &str, id: &str) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(NAMESPACE.as_bytes());
    framed(&[source, src, id], |bytes| sha1.update(bytes));
    let digest = sha1.digest().bytes();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    let uuid = uuid::Builder::from_sha1_bytes(first).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut text).to_owned()
}

/// What [`Dedup::check`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Not taken within the window: it is held for this event until
    /// [`Dedup::taken`] or [`Dedup::release`].
    New,
    /// Taken within the window: answer as taken, deliver nowhere.
    Duplicate,
    /// Another request with this name is being taken right now.
    InFlight,
    /// The memory is full of ids still within the window: refuse for now.
    Full { retry_after_secs: u64 },
}

/// Marks an entry held by a request not yet answered.
const PENDING: u32 = u32::MAX;

pub struct Dedup {
    window_secs: u32,
    limit: usize,
    memory: Mutex<Memory>,
}

struct Memory {
    taken: HashMap<Key, u32, BuildHasherDefault<PassThrough>>,
    /// When expired entries were last swept out.
    swept_at: u32,
    /// While full: the second at which the oldest entry expires.
    full_until: Option<u32>,
}

/// Seconds since the Unix epoch, as remembered.
pub fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(u64::from(PENDING - 1)) as u32)
}

impl Dedup {
    /// A memory of `window` (at least a second) and at most `limit` ids.
    pub fn new(window: Duration, limit: usize) -> Dedup {
        Dedup {
            window_secs: window.as_secs().clamp(1, u64::from(u32::MAX / 2)) as u32,
            limit: limit.max(1),
            memory: Mutex::new(Memory {
                taken: HashMap::default(),
                swept_at: 0,
                full_until: None,
            }),
        }
    }

    pub fn window_secs(&self) -> u32 {
        self.window_secs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key` was taken within the window; a new one is held (pending)
    /// for the caller, who must say [`Dedup::taken`] or [`Dedup::release`].
    pub fn check(&self, key: Key, now: u32) -> Check {
        self.check_in(&mut self.lock(), key, now)
    }

    /// [`Dedup::check`] of each key given (in order), under one lock: a
    /// batch's events cost one lock, not one each.
    pub fn check_many(&self, keys: &[Option<Key>], now: u32) -> Vec<Option<Check>> {
        if keys.iter().all(Option::is_none) {
            return keys.iter().map(|_| None).collect();
        }
        let mut m = self.lock();
        keys.iter()
            .map(|k| k.map(|k| self.check_in(&mut m, k, now)))
            .collect()
    }

    /// Settles held keys, each taken (true) or not, under one lock.
    pub fn settle_many(&self, keys: impl IntoIterator<Item = (Key, bool)>, now: u32) {
        let mut m = self.lock();
        for (key, taken) in keys {
            if taken {
                m.taken.insert(key, now);
            } else if let Entry::Occupied(e) = m.taken.entry(key) {
                if *e.get() == PENDING {
                    e.remove();
                }
            }
        }
    }

    fn check_in(&self, m: &mut Memory, key: Key, now: u32) -> Check {
        let window = self.window_secs;
        if now.saturating_sub(m.swept_at) >= self.sweep_every() {
            m.sweep(now, window);
        }
        // One probe of the table for the usual answers: it is large (a
        // million entries), so each probe is a miss in the caches.
        let full = m.taken.len() >= self.limit;
        match m.taken.entry(key) {
            Entry::Occupied(mut e) => match *e.get() {
                PENDING => Check::InFlight,
                at if now.saturating_sub(at) < window => Check::Duplicate,
                _ => {
                    e.insert(PENDING);
                    Check::New
                }
            },
            Entry::Vacant(e) if !full => {
                e.insert(PENDING);
                Check::New
            }
            Entry::Vacant(_) => self.check_full(m, key, now),
        }
    }

    /// A name not remembered while the memory is full: taken only when a
    /// sweep makes room.
    fn check_full(&self, m: &mut Memory, key: Key, now: u32) -> Check {
        if m.full_until.is_none_or(|until| now >= until) {
            m.sweep(now, self.window_secs);
        }
        if m.taken.len() >= self.limit {
            let until = m.full_until.unwrap_or(now + 1);
            return Check::Full {
                retry_after_secs: u64::from(until.saturating_sub(now).max(1)),
            };
        }
        m.taken.insert(key, PENDING);
        Check::New
    }

    /// The held `key` was taken at `now`.
    pub fn taken(&self, key: Key, now: u32) {
        self.lock().taken.insert(key, now);
    }

    /// The held `key` was not taken after all: a retry is new.
    pub fn release(&self, key: Key) {
        let mut m = self.lock();
        if m.taken.get(&key) == Some(&PENDING) {
            m.taken.remove(&key);
        }
    }

    /// Ids remembered from an earlier run (the store's journal, and the
    /// events still queued), each with the second it was taken.
    pub fn restore(&self, remembered: impl IntoIterator<Item = (Key, u32)>, now: u32) {
        let mut m = self.lock();
        for (key, at) in remembered {
            if now.saturating_sub(at) < self.window_secs {
                let slot = m.taken.entry(key).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
    }

    /// Ids remembered now, pending ones included.
    pub fn remembered(&self) -> usize {
        self.lock().taken.len()
    }

    /// Expired entries are swept out this often (and when the memory is full).
    fn sweep_every(&self) -> u32 {
        (self.window_secs / 8).clamp(1, 60)
    }
}

impl Memory {
    /// Forgets expired ids; when still full, notes when the oldest expires.
    fn sweep(&mut self, now: u32, window: u32) {
        let mut oldest = u32::MAX;
        self.taken.retain(|_, at| {
            let keep = *at == PENDING || now.saturating_sub(*at) < window;
            if keep && *at != PENDING {
                oldest = oldest.min(*at);
            }
            keep
        });
        self.swept_at = now;
        self.full_until = (oldest != u32::MAX).then(|| oldest.saturating_add(window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_taken_once_within_the_window_and_again_after_it() {
        let d = Dedup::new(Duration::from_secs(10), 100);
        let k = Key::of("gw", "a");
        assert_eq!(d.check(k, 1000), Check::New);
        assert_eq!(d.check(k, 1000), Check::InFlight, "held while being taken");
        d.taken(k, 1000);
        assert_eq!(d.check(k, 1009), Check::Duplicate);
        assert_eq!(d.check(k, 1010), Check::New, "the window has passed");
        d.release(k);
        assert_eq!(d.check(k, 1010), Check::New, "released: a retry is new");
    }

    #[test]
    fn a_full_memory_refuses_new_names_until_the_oldest_expires() {
        let d = Dedup::new(Duration::from_secs(10), 2);
        for (i, at) in [(0, 100), (1, 104)] {
            let k = Key::of("gw", &i.to_string());
            assert_eq!(d.check(k, at), Check::New);
            d.taken(k, at);
        }
        let new = Key::of("gw", "2");
        assert_eq!(
            d.check(new, 105),
            Check::Full {
                retry_after_secs: 5
            }
        );
        assert_eq!(d.check(Key::of("gw", "0"), 105), Check::Duplicate);
        assert_eq!(d.check(new, 110), Check::New, "the oldest expired");
    }

    #[test]
    fn restored_names_are_duplicates_within_their_window() {
        let d = Dedup::new(Duration::from_secs(60), 10);
        let (old, recent) = (Key::of("gw", "old"), Key::of("gw", "recent"));
        d.restore([(old, 1000), (recent, 1050)], 1070);
        assert_eq!(d.check(recent, 1070), Check::Duplicate);
        assert_eq!(d.check(old, 1070), Check::New);
    }

    #[test]
    fn ids_are_the_name_based_uuids_of_the_framed_names() {
        // What the ids were before the digest was fed piece by piece: the
        // same (configuration, id) keeps its CloudEvent id across versions.
        let mut joined = Vec::new();
        framed(&["gw", "orders", "0/42"], |b| joined.extend_from_slice(b));
        assert_eq!(
            cloudevent_id("gw", "orders", "0/42"),
            uuid::Uuid::new_v5(&NAMESPACE, &joined).to_string()
        );
        // And the journal's keys: FNV-1a of the framed names from two offsets.
        let mut joined = Vec::new();
        framed(&["gw", "x"], |b| joined.extend_from_slice(b));
        let fnv = |offset: u64| {
            joined.iter().fold(offset, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        };
        let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142));
        assert_eq!(
            Key::of("gw", "x"),
            Key([a as u32, (a >> 32) as u32, (b ^ (b >> 32)) as u32])
        );
    }

    #[test]
    fn ids_are_stable_and_apart() {
        let a = cloudevent_id("gw", "orders", "0/42");
        assert_eq!(a, cloudevent_id("gw", "orders", "0/42"));
        assert_ne!(a, cloudevent_id("gw", "orders2", "0/42"));
        // Framed: moving a character between the names is another event.
        assert_ne!(
            cloudevent_id("gw", "ab", "c"),
            cloudevent_id("gw", "a", "bc")
        );
        assert!(uuid::Uuid::parse_str(&a).is_ok());
        let k = Key::of("gw", &a);
        assert_eq!(Key::from_bytes(k.to_bytes()), k);
        assert_ne!(k, Key::of("gw2", &a));
    }

    #[test]
    fn a_million_ids_take_under_64_mib() {
        // What the table allocates: its buckets (entry and control byte each)
        // at the capacity a million inserts grow it to.
        let d = Dedup::new(Duration::from_secs(600), 1_000_000);
        for i in 0..1_000_000u32 {
            let k = Key([i, i.wrapping_mul(2_654_435_761), !i]);
            d.lock().taken.insert(k, 1);
        }
        let m = d.lock();
        let buckets = (m.taken.capacity() * 8 / 7).next_power_of_two();
        let bytes = buckets * (std::mem::size_of::<(Key, u32)>() + 1);
        assert_eq!(std::mem::size_of::<(Key, u32)>(), 16);
        assert!(bytes < 64 << 20, "{bytes} bytes");
        eprintln!("a million ids: {} MiB", bytes >> 20);
    }
}
