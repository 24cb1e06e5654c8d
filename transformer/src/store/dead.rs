//! Dead letters: events a watcher will not get by retrying, kept in fjall (an
//! embedded LSM store) under (watcher, seq) until an operator replays or
//! deletes them. Few and long-lived, unlike the queue, which is a log.

use std::sync::atomic::Ordering;

use super::codec::{decode_dead, encode_dead};
use super::{Batch, CloudEvent, Store, StoreError, WatcherId};

/// The fjall key of a dead letter: watcher then seq, big-endian, so a
/// watcher's letters sort together in the order they were accepted.
pub(super) fn key(watcher: WatcherId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&watcher.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn split_key(k: &[u8]) -> Result<(WatcherId, u64), StoreError> {
    let k: [u8; 16] = k
        .try_into()
        .map_err(|_| StoreError::Corrupt("key length"))?;
    let mut w = [0u8; 8];
    let mut s = [0u8; 8];
    w.copy_from_slice(&k[..8]);
    s.copy_from_slice(&k[8..]);
    Ok((u64::from_be_bytes(w), u64::from_be_bytes(s)))
}

/// An event given up for one watcher, with why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub watcher: WatcherId,
    pub seq: u64,
    pub watcher_name: String,
    pub error: String,
    pub attempts: u32,
    pub dead_at_ms: u64,
    pub event: CloudEvent,
    /// The last answer's status (0: none, the destination could not be
    /// reached) and the start of its body.
    pub code: u16,
    pub data: Vec<u8>,
}

impl DeadLetter {
    /// The operator-facing id: watcher and sequence, 32 hex digits.
    pub fn id(&self) -> String {
        format!("{:016x}{:016x}", self.watcher, self.seq)
    }

    pub fn parse_id(id: &str) -> Option<(WatcherId, u64)> {
        if id.len() != 32 {
            return None;
        }
        let w = u64::from_str_radix(id.get(..16)?, 16).ok()?;
        let s = u64::from_str_radix(id.get(16..)?, 16).ok()?;
        Some((w, s))
    }
}

impl Store {
    /// Moves an event from the queue to the dead letters: stored as a dead
    /// letter first, then acknowledged in the log (a crash between the two is
    /// settled on the next start).
    pub fn bury(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let mut batch = self.batch();
        batch.bury(letter)?;
        batch.commit()
    }

    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.dead_letters_page(limit, None).map(|(page, _)| page)
    }

    /// One read of the dead letters (one snapshot of the store): the first
    /// `limit` of those of `watcher` (all with `None`), and how many there are
    /// in all. Only the letters kept stay in memory, so a page costs `limit`
    /// letters however many there are (a sensor down for a day with a few
    /// retries makes millions).
    pub fn dead_letters_page(
        &self,
        limit: usize,
        watcher: Option<&str>,
    ) -> Result<(Vec<DeadLetter>, usize), StoreError> {
        let mut page = Vec::new();
        let mut total = 0usize;
        for item in self.dead.iter() {
            let (k, v) = item.into_inner()?;
            if watcher.is_none() && page.len() >= limit {
                total += 1;
                continue;
            }
            let (w, seq) = split_key(&k)?;
            let letter = decode_dead(w, seq, &v)?;
            if watcher.is_some_and(|name| name != letter.watcher_name) {
                continue;
            }
            total += 1;
            if page.len() < limit {
                page.push(letter);
            }
        }
        Ok((page, total))
    }

    /// The oldest `limit` dead letters of one watcher, read by key prefix
    /// (however many others there are).
    pub fn dead_letters_of(
        &self,
        watcher: WatcherId,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for item in self.dead.prefix(watcher.to_be_bytes()).take(limit) {
            let (k, v) = item.into_inner()?;
            let (w, seq) = split_key(&k)?;
            out.push(decode_dead(w, seq, &v)?);
        }
        Ok(out)
    }

    pub fn dead_count(&self) -> Result<usize, StoreError> {
        Ok(self.dead.len()?)
    }

    pub fn dead_letter(
        &self,
        watcher: WatcherId,
        seq: u64,
    ) -> Result<Option<DeadLetter>, StoreError> {
        match self.dead.get(key(watcher, seq))? {
            Some(v) => Ok(Some(decode_dead(watcher, seq, &v)?)),
            None => Ok(None),
        }
    }

    pub fn delete_dead(&self, watcher: WatcherId, seq: u64) -> Result<bool, StoreError> {
        let existed = self.dead.contains_key(key(watcher, seq))?;
        self.dead.remove(key(watcher, seq))?;
        self.dead_changed.store(true, Ordering::Relaxed);
        Ok(existed)
    }
}

impl Batch<'_> {
    /// Moves an event to the dead letters: stored as a dead letter now, and
    /// acknowledged in the log with this batch's write (a crash between the
    /// two is settled on the next start).
    pub fn bury(&mut self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.store
            .dead
            .insert(key(letter.watcher, letter.seq), encode_dead(letter))?;
        self.store.dead_changed.store(true, Ordering::Relaxed);
        self.ack(letter.watcher, letter.seq);
        Ok(())
    }
}
