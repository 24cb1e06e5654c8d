//! Recognising events that come back around a loop of gateways.
//!
//! A CloudEvent passes through a gateway unchanged (same `source`, same `id`),
//! so `GATEWAY_WATCHERS` that form a loop (a gateway watching itself, or A
//! watching B watching A) would send every event round and round for ever:
//! measured before this module, one event became 2,667 deliveries in 3 s,
//! each one written to both durable queues.
//!
//! Every delivery of a transformer carries `Via: 1.1 NAME (event-gateway)`
//! (the header HTTP intermediaries add, among other things, to find loops).
//! The transformer remembers the `source` and `id` of the last [`REMEMBERED`]
//! events it took; a CloudEvent that another gateway delivers and that was
//! taken here before has already been delivered from here, so it is answered
//! 2xx and not queued again. Each gateway on a loop thus delivers each event
//! once (two gateways may watch each other on purpose), and a repeat that an
//! upstream gateway sends after losing an answer is not delivered twice: the
//! CloudEvents spec lets a consumer take the same `source` and `id` for the
//! same event.
//!
//! Only deliveries from a gateway are checked here, for as long as the ring
//! remembers them. Every CloudEvent posted (a gateway's delivery or a
//! producer's) is also remembered by [`crate::dedup`] for
//! `TRANSFORMER_DEDUP_WINDOW`, which answers a repeat as a duplicate first;
//! this ring still recognises the events built here that come back, which
//! have no name of their own to be remembered by there.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hasher};
use std::sync::Mutex;

use axum::http::{header, HeaderMap, HeaderValue};

/// How many ids are remembered: a loop is recognised when its event comes
/// back before this many newer events were taken. With the default
/// `TRANSFORMER_QUEUE_CAPACITY` (10,000 per watcher) a lap can hold at most a
/// few queues' worth; 64 Ki ids are about 3 MiB.
pub const REMEMBERED: usize = 65_536;

/// The comment in the `Via` header that marks a delivery from a transformer.
const MARK: &str = "(event-gateway)";

/// The `Via` header a transformer named `gateway` sends with its deliveries.
pub fn via(gateway: &str) -> HeaderValue {
    HeaderValue::try_from(format!("1.1 {gateway} {MARK}"))
        .unwrap_or_else(|_| HeaderValue::from_static("1.1 transformer (event-gateway)"))
}

/// Whether a request was a transformer's delivery (any of its `Via` entries
/// is one: proxies between may add their own).
pub fn from_a_gateway(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains(MARK)))
}

/// The `source` and `id` of the events taken last, oldest first.
pub struct Seen {
    ids: Mutex<Ring>,
}

struct Ring {
    set: HashSet<u128>,
    order: VecDeque<u128>,
    capacity: usize,
}

impl Default for Seen {
    fn default() -> Self {
        Seen::with_capacity(REMEMBERED)
    }
}

impl Seen {
    pub fn with_capacity(capacity: usize) -> Self {
        Seen {
            ids: Mutex::new(Ring {
                set: HashSet::with_capacity(capacity.min(REMEMBERED)),
                order: VecDeque::with_capacity(capacity.min(REMEMBERED)),
                capacity: capacity.max(1),
            }),
        }
    }

    /// Remembers an event; false when it was remembered already (it came back).
    pub fn take(&self, source: &str, id: &str) -> bool {
        self.lock().insert(key(source, id))
    }

    /// Remembers events under one lock (ones just made here: fresh ids).
    pub fn remember<'a>(&self, events: impl IntoIterator<Item = (&'a str, &'a str)>) {
        // Hashed before the lock is taken: it is held for the inserts alone.
        let keys: Vec<u128> = events.into_iter().map(|(s, id)| key(s, id)).collect();
        let mut ring = self.lock();
        for k in keys {
            ring.insert(k);
        }
    }

    /// Forgets an event again: it was not taken after all (the queue was
    /// full), and the sender's retry of it is not a repeat. (Its place in the
    /// order stays until it is pushed out; only the key is gone.)
    pub fn forget(&self, source: &str, id: &str) {
        self.lock().set.remove(&key(source, id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ring {
    fn insert(&mut self, k: u128) -> bool {
        if !self.set.insert(k) {
            return false;
        }
        self.order.push_back(k);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// A 128-bit hash of `source` and `id`, so every event costs the same 16
/// bytes whatever its names (two events collide with odds of about 2^-128).
fn key(source: &str, id: &str) -> u128 {
    let half = |salt: u64| {
        let mut h = BuildHasherDefault::<DefaultHasher>::default().build_hasher();
        h.write_u64(salt);
        h.write(source.as_bytes());
        h.write_u8(0xff);
        h.write(id.as_bytes());
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_taken_again_is_a_repeat_until_it_is_pushed_out() {
        let seen = Seen::with_capacity(3);
        let first = uuid::Uuid::now_v7().to_string();
        assert!(seen.take("a", &first));
        assert!(!seen.take("a", &first));
        assert!(
            seen.take("b", &first),
            "another source's id is another event"
        );
        assert!(seen.take("a", "not-a-uuid"));
        assert!(!seen.take("a", &first), "still among the last three");
        assert!(seen.take("a", "c"));
        assert!(seen.take("a", &first), "pushed out by three newer events");
    }

    #[test]
    fn a_forgotten_event_is_new_again() {
        let seen = Seen::default();
        seen.remember([("g", "x"), ("g", "y")]);
        assert!(!seen.take("g", "x"));
        seen.forget("g", "x");
        assert!(seen.take("g", "x"));
        assert!(!seen.take("g", "y"));
    }

    #[test]
    fn a_delivery_is_recognised_by_its_via_among_others() {
        let mut headers = HeaderMap::new();
        assert!(!from_a_gateway(&headers));
        headers.append(header::VIA, HeaderValue::from_static("1.1 nginx"));
        assert!(!from_a_gateway(&headers));
        headers.append(header::VIA, via("upstream"));
        assert!(from_a_gateway(&headers));
        assert_eq!(via("a\nb"), "1.1 transformer (event-gateway)");
        assert_eq!(via("up"), "1.1 up (event-gateway)");
    }
}
