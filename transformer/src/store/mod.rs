//! The transformer's durable queue. Every accepted event is written once, for
//! all its watchers, to an append-only log ([`log`]) before the producer is
//! answered 2xx; each watcher's acknowledgement is appended when it has the
//! event, and the event is moved to the dead letters when its retries are
//! exhausted. On start, what is still undelivered is delivered again, in order
//! and with the same CloudEvent id. Dead letters and watcher names, which are
//! few and long-lived, are kept in fjall (an embedded LSM store).
//!
//! Durability is the fsync policy's: writes always reach the operating system before
//! the 2xx, so they survive the transformer being killed (SIGKILL, OOM, panic);
//! surviving a power loss or kernel crash needs `TRANSFORMER_FSYNC=always` (or a
//! period), which costs an fsync per group write or per period.

mod cause;
mod codec;
mod dead;
pub mod log;
pub mod seen;
mod settle;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::cloudevent::CloudEvent;
use cause::{absolute, fjall_cause, io_cause};
pub use codec::{decode_event, encode_event};
pub use dead::DeadLetter;
use dead::{key, split_key};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory cannot hold the store: `cause` is the operating
    /// system's reason, read out of fjall's error (whose own text is its
    /// Debug form).
    #[error(
        "the event store cannot be opened in {path} (TRANSFORMER_DATA_DIR): {cause}; give \
         TRANSFORMER_DATA_DIR a directory this process can write (in a container, mount a \
         volume there), or set TRANSFORMER_DURABLE=false to keep queued events in memory only"
    )]
    Open { path: PathBuf, cause: String },
    /// The scratch directory of a store kept in memory cannot be made.
    #[error(
        "the transformer's scratch directory cannot be made in {dir} (TMPDIR): {cause}; set \
         TMPDIR to a writable directory, or use a durable queue (TRANSFORMER_DURABLE)"
    )]
    Scratch { dir: PathBuf, cause: std::io::Error },
    #[error(
        "event store at {path} is in use by another transformer process (TRANSFORMER_DATA_DIR \
         belongs to one process at a time): stop that one first, or give this one a directory \
         of its own"
    )]
    InUse { path: PathBuf },
    #[error("event store: {0}")]
    Io(#[from] fjall::Error),
    #[error("event log: {0}")]
    Log(#[from] std::io::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("the event store's writer has stopped")]
    WriterStopped,
}

/// The dead letters' memtable size unless `TRANSFORMER_STORE_MEMTABLE_BYTES`
/// says otherwise: dead letters are rare, and this is resident memory.
pub const DEFAULT_MEMTABLE_BYTES: u64 = 1024 * 1024;

/// Where the queue's log lives inside the data directory (fjall has the rest).
const LOG_DIR: &str = "queue-log";
/// Where the journal of remembered event names lives ([`seen`]).
const SEEN_DIR: &str = "dedup";

/// When the store forces its writes to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Writes reach the OS before the 2xx: safe against process death, not power loss.
    Never,
    /// An fsync before every 2xx: safe against power loss.
    Always,
    /// An fsync every period: a power loss loses at most one period.
    Every(Duration),
}

/// A watcher's stable key prefix: FNV-1a 64 of its name (its URL).
pub type WatcherId = u64;

pub fn watcher_id(name: &str) -> WatcherId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub struct Store {
    db: Database,
    dead: Keyspace,
    watchers: Keyspace,
    log: Mutex<log::Log>,
    fsync: Fsync,
    /// fjall was written to since the last sync.
    dead_changed: AtomicBool,
    /// The journal of remembered names, once [`Store::open_journal`] opened it.
    seen: OnceLock<Mutex<seen::Journal>>,
    _temporary: Option<tempfile::TempDir>,
}

impl Store {
    /// Opens (or creates) the store in `dir`. Fails if another process holds it.
    pub fn open(dir: &Path, fsync: Fsync) -> Result<Store, StoreError> {
        Self::open_tuned(dir, fsync, DEFAULT_MEMTABLE_BYTES)
    }

    /// [`Store::open`] with the dead letters' memtable size
    /// (`TRANSFORMER_STORE_MEMTABLE_BYTES`).
    pub fn open_tuned(dir: &Path, fsync: Fsync, memtable_bytes: u64) -> Result<Store, StoreError> {
        let opened = std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open {
                path: absolute(dir),
                cause: io_cause(&e),
            })
            .and_then(|()| Self::open_db(dir, fsync, memtable_bytes, log::SEGMENT_BYTES, None));
        // The log's own files are part of opening too: name the directory.
        opened.map_err(|e| match e {
            StoreError::Log(e) => StoreError::Open {
                path: absolute(dir),
                cause: io_cause(&e),
            },
            other => other,
        })
    }

    /// A store in a fresh temporary directory, removed when dropped: dead letters
    /// and bookkeeping work as usual, but nothing survives the process.
    pub fn temporary() -> Result<Store, StoreError> {
        let dir = tempfile::tempdir().map_err(|cause| StoreError::Scratch {
            dir: std::env::temp_dir(),
            cause,
        })?;
        let path = dir.path().to_owned();
        Self::open_db(
            &path,
            Fsync::Never,
            DEFAULT_MEMTABLE_BYTES,
            log::SEGMENT_BYTES,
            Some(dir),
        )
    }

    fn open_db(
        dir: &Path,
        fsync: Fsync,
        memtable_bytes: u64,
        segment_bytes: u64,
        temporary: Option<tempfile::TempDir>,
    ) -> Result<Store, StoreError> {
        let open = |source| match source {
            fjall::Error::Locked => StoreError::InUse {
                path: dir.to_owned(),
            },
            source => StoreError::Open {
                path: absolute(dir),
                cause: fjall_cause(&source),
            },
        };
        // Taken first: fjall's lock file is what keeps a second process out,
        // and it must be held before the log is touched.
        let db = Database::builder(dir)
            .cache_size(1024 * 1024)
            .open()
            .map_err(open)?;
        let options =
            || KeyspaceCreateOptions::default().max_memtable_size(memtable_bytes.max(64 << 10));
        let dead = db.keyspace("dead", options).map_err(open)?;
        let watchers = db.keyspace("watchers", options).map_err(open)?;
        let log_dir = dir.join(LOG_DIR);
        std::fs::create_dir_all(&log_dir)?;
        let replayed = log::replay(&log_dir)?;
        let store = Store {
            log: Mutex::new(log::Log::open(&log_dir, &replayed, segment_bytes)?),
            db,
            dead,
            watchers,
            fsync,
            dead_changed: AtomicBool::new(false),
            seen: OnceLock::new(),
            _temporary: temporary,
        };
        store.settle(&replayed)?;
        Ok(store)
    }

    fn log(&self) -> std::sync::MutexGuard<'_, log::Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    /// Opens the journal of remembered event names (deduplication over a
    /// window of `window` seconds) and returns what it holds within the
    /// window at `now`. From then on every batch writes its names there.
    pub fn open_journal(&self, window: u32, now: u32) -> Result<Vec<seen::Remembered>, StoreError> {
        let dir = self.log().dir().with_file_name(SEEN_DIR);
        let (journal, remembered) =
            seen::Journal::open(&dir, window, now).map_err(|e| StoreError::Open {
                path: absolute(&dir),
                cause: io_cause(&e),
            })?;
        let _ = self.seen.set(Mutex::new(journal));
        Ok(remembered)
    }

    fn journal(&self) -> Option<std::sync::MutexGuard<'_, seen::Journal>> {
        self.seen
            .get()
            .map(|j| j.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records the name behind a watcher id, so stored events can be named later.
    pub fn register_watcher(&self, identity: &str, name: &str) -> Result<WatcherId, StoreError> {
        let id = watcher_id(identity);
        self.watchers.insert(id.to_be_bytes(), name.as_bytes())?;
        self.dead_changed.store(true, Ordering::Relaxed);
        Ok(id)
    }

    /// The name registered for a watcher id, or the id in hex if none was.
    pub fn watcher_name(&self, id: WatcherId) -> String {
        match self.watchers.get(id.to_be_bytes()) {
            Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
            _ => format!("{id:016x}"),
        }
    }

    /// A write of many changes at once: one journal write and one commit for all
    /// of them (group commit). Nothing is written until [`Batch::commit`].
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            records: Vec::new(),
            ops: Vec::new(),
            resurrected: Vec::new(),
            remembered: Vec::new(),
        }
    }

    /// Every queued event, in acceptance order per watcher, for redelivery on
    /// start: read back from the log's files.
    pub fn queued(&self) -> Result<Vec<(WatcherId, u64, CloudEvent)>, StoreError> {
        let dir = self.log().dir().to_owned();
        let replayed = log::replay(&dir)?;
        let mut out = Vec::new();
        for (seq, (_, watchers, event)) in replayed.events {
            let event = decode_event(&event)?;
            for w in watchers {
                if !self.dead.contains_key(key(w, seq))? {
                    out.push((w, seq, event.clone()));
                }
            }
        }
        out.sort_by_key(|(w, seq, _)| (*w, *seq));
        Ok(out)
    }

    /// The highest sequence number stored anywhere, so new ones sort after it.
    pub fn max_seq(&self) -> Result<u64, StoreError> {
        let mut max = self.log().max_seq();
        for item in self.dead.iter() {
            max = max.max(split_key(&item.key()?)?.1);
        }
        Ok(max)
    }

    /// Forces everything written so far to stable storage. The log's files
    /// are synced outside its lock, so writing goes on meanwhile.
    pub fn sync(&self) -> Result<(), StoreError> {
        let (files, dir_changed, dir) = {
            let mut log = self.log();
            let (files, changed) = log.to_sync();
            (files, changed, log.dir().to_owned())
        };
        for file in files {
            file.sync_data()?;
        }
        if dir_changed {
            std::fs::File::open(&dir)?.sync_all()?;
        }
        if let Some((files, dir_changed, dir)) = self.journal().map(|mut j| j.to_sync()) {
            for file in files {
                file.sync_data()?;
            }
            if dir_changed {
                std::fs::File::open(&dir)?.sync_all()?;
            }
        }
        if self.dead_changed.swap(false, Ordering::Relaxed) {
            self.db.persist(PersistMode::SyncData)?;
        }
        Ok(())
    }
}

/// Changes collected for one write; see [`Store::batch`].
pub struct Batch<'a> {
    store: &'a Store,
    records: Vec<u8>,
    ops: Vec<log::Op>,
    /// Dead letters to remove once their replay is in the log.
    resurrected: Vec<(WatcherId, u64)>,
    /// Event names for the journal, written after the events.
    remembered: Vec<seen::Remembered>,
}

impl Batch<'_> {
    /// Queues each encoded event for every listed watcher.
    pub fn append(&mut self, watchers: &[WatcherId], events: &[(u64, Vec<u8>)]) {
        for (seq, event) in events {
            self.append_one(watchers, *seq, event);
        }
    }

    /// Queues one encoded event for the listed watchers.
    pub fn append_one(&mut self, watchers: &[WatcherId], seq: u64, event: &[u8]) {
        log::encode_append(&mut self.records, seq, watchers, event);
        self.ops.push(log::Op::Append {
            seq,
            watchers: watchers.to_vec(),
        });
    }

    /// Forgets a delivered event.
    pub fn ack(&mut self, watcher: WatcherId, seq: u64) {
        log::encode_ack(&mut self.records, watcher, seq);
        self.ops.push(log::Op::Ack(watcher, seq));
    }

    /// Moves a dead letter back into its watcher's queue as `new_seq`: queued
    /// first, then removed from the dead letters, so a crash between the two
    /// never loses it (the next start removes the letter left behind).
    pub fn resurrect(&mut self, letter: &DeadLetter, new_seq: u64) {
        let event = encode_event(&letter.event);
        log::encode_append(&mut self.records, new_seq, &[letter.watcher], &event);
        self.ops.push(log::Op::Append {
            seq: new_seq,
            watchers: vec![letter.watcher],
        });
        self.resurrected.push((letter.watcher, letter.seq));
    }

    /// Remembers event names (of events appended in this batch) in the
    /// journal, when it is open.
    pub fn remember(&mut self, names: &[seen::Remembered]) {
        self.remembered.extend_from_slice(names);
    }

    /// Writes everything with one `write(2)` (and the names with one more,
    /// after it); it reaches the operating system before this returns.
    pub fn commit(self) -> Result<(), StoreError> {
        self.store.log().commit(&self.records, self.ops)?;
        if let (Some(mut journal), Some(&(_, now))) = (self.store.journal(), self.remembered.last())
        {
            journal.append(&self.remembered, now)?;
        }
        for (w, seq) in self.resurrected {
            self.store.dead.remove(key(w, seq))?;
            self.store.dead_changed.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Milliseconds since the epoch, for dead-letter timestamps.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(s: &Store, watchers: &[WatcherId], events: &[(u64, Vec<u8>)]) {
        let mut batch = s.batch();
        batch.append(watchers, events);
        batch.commit().unwrap();
    }

    fn ack(s: &Store, watcher: WatcherId, seq: u64) {
        let mut batch = s.batch();
        batch.ack(watcher, seq);
        batch.commit().unwrap();
    }

    fn resurrect(s: &Store, letter: &DeadLetter, new_seq: u64) {
        let mut batch = s.batch();
        batch.resurrect(letter, new_seq);
        batch.commit().unwrap();
    }

    /// (watcher, seq) of every queued event, in order.
    fn queued_keys(s: &Store) -> Vec<(u64, u64)> {
        s.queued()
            .unwrap()
            .into_iter()
            .map(|(w, seq, _)| (w, seq))
            .collect()
    }

    fn event(i: u8) -> CloudEvent {
        let mut e =
            CloudEvent::from_gateway_event("gw", "t", "cfg", bytes::Bytes::from(vec![i; 10]));
        e.extensions
            .push(("traceparent".into(), "00-1-2-01".into()));
        e
    }

    #[test]
    fn queue_survives_reopen_and_dead_letters_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), Fsync::Never).unwrap();
            let a = s.register_watcher("http://a/", "http://a/").unwrap();
            let b = s.register_watcher("http://b/", "http://b/").unwrap();
            for seq in 1..=3 {
                append(&s, &[a, b], &[(seq, encode_event(&event(seq as u8)))]);
            }
            ack(&s, a, 1);
            let letter = DeadLetter {
                watcher: b,
                seq: 2,
                watcher_name: "http://b/".into(),
                error: "400".into(),
                attempts: 1,
                dead_at_ms: now_ms(),
                event: event(2),
                code: 0,
                data: Vec::new(),
            };
            s.bury(&letter).unwrap();
        }
        let s = Store::open(dir.path(), Fsync::Always).unwrap();
        let queued = queued_keys(&s);
        let (a, b) = (watcher_id("http://a/"), watcher_id("http://b/"));
        let mut expected = vec![(a, 2), (a, 3), (b, 1), (b, 3)];
        expected.sort();
        assert_eq!(queued, expected);
        assert_eq!(s.max_seq().unwrap(), 3);
        let dead = s.dead_letters(10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].event.data, event(2).data);
        assert_eq!(DeadLetter::parse_id(&dead[0].id()), Some((b, 2)));
        assert_eq!(s.watcher_name(b), "http://b/");
        resurrect(&s, &dead[0], 9);
        assert_eq!(s.dead_count().unwrap(), 0);
        assert_eq!(s.queued().unwrap().len(), 5);
    }

    #[test]
    fn a_dead_letter_buried_but_not_acknowledged_is_settled_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let a = watcher_id("http://a/");
        {
            let s = Store::open(dir.path(), Fsync::Never).unwrap();
            append(&s, &[a], &[(1, encode_event(&event(1)))]);
            // A crash between the two halves of `bury`: stored as dead, not acked.
            s.dead
                .insert(
                    key(a, 1),
                    codec::encode_dead(&DeadLetter {
                        watcher: a,
                        seq: 1,
                        watcher_name: "http://a/".into(),
                        error: "gave up".into(),
                        attempts: 3,
                        dead_at_ms: now_ms(),
                        event: event(1),
                        code: 0,
                        data: Vec::new(),
                    }),
                )
                .unwrap();
        }
        let s = Store::open(dir.path(), Fsync::Always).unwrap();
        assert!(
            s.log().pending().is_empty(),
            "acknowledged in the log on open"
        );
        assert!(s.queued().unwrap().is_empty());
        assert_eq!(s.dead_count().unwrap(), 1);
    }

    #[test]
    fn a_dead_letter_replayed_but_not_removed_is_settled_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (watcher_id("http://a/"), watcher_id("http://b/"));
        // Each call makes a new id: one event per seq, kept.
        let events = [event(0), event(1), event(2)];
        let letter = |w, seq: u64| DeadLetter {
            watcher: w,
            seq,
            watcher_name: "w".into(),
            error: "gave up".into(),
            attempts: 3,
            dead_at_ms: now_ms(),
            event: events[seq as usize].clone(),
            code: 0,
            data: Vec::new(),
        };
        {
            let s = Store::open(dir.path(), Fsync::Never).unwrap();
            append(&s, &[a, b], &[(1, encode_event(&events[1]))]);
            append(&s, &[a], &[(2, encode_event(&events[2]))]);
            s.bury(&letter(a, 1)).unwrap();
            s.bury(&letter(b, 1)).unwrap();
            s.bury(&letter(a, 2)).unwrap();
            // A crash inside the replay of (a, 1): appended as seq 7, the
            // letter not yet removed.
            let mut batch = s.batch();
            batch.append(&[a], &[(7, encode_event(&events[1]))]);
            batch.commit().unwrap();
        }
        let s = Store::open(dir.path(), Fsync::Always).unwrap();
        let queued = queued_keys(&s);
        assert_eq!(queued, [(a, 7)], "the replayed copy stays queued");
        let mut dead: Vec<(u64, u64)> = s
            .dead_letters(10)
            .unwrap()
            .into_iter()
            .map(|d| (d.watcher, d.seq))
            .collect();
        dead.sort();
        let mut expected = vec![(a, 2), (b, 1)];
        expected.sort();
        assert_eq!(
            dead, expected,
            "only the replayed letter is gone, not b's copy"
        );
    }

    #[test]
    fn a_page_of_dead_letters_keeps_its_limit_and_counts_them_all() {
        let s = Store::temporary().unwrap();
        for seq in 0..5u64 {
            let name = if seq % 2 == 0 {
                "http://a/"
            } else {
                "http://b/"
            };
            s.bury(&DeadLetter {
                watcher: watcher_id(name),
                seq,
                watcher_name: name.into(),
                error: "gave up".into(),
                attempts: 3,
                dead_at_ms: now_ms(),
                event: event(seq as u8),
                code: 0,
                data: Vec::new(),
            })
            .unwrap();
        }
        let (page, total) = s.dead_letters_page(2, None).unwrap();
        assert_eq!((page.len(), total), (2, 5));
        let (page, total) = s.dead_letters_page(1, Some("http://b/")).unwrap();
        assert_eq!((page.len(), total), (1, 2));
        assert_eq!(page[0].watcher_name, "http://b/");
        let (page, total) = s.dead_letters_page(10, Some("http://c/")).unwrap();
        assert_eq!((page.len(), total), (0, 0));
    }

    #[test]
    fn a_second_process_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), Fsync::Never).unwrap();
        let Err(e) = Store::open(dir.path(), Fsync::Never) else {
            panic!("a second store opened on the same directory");
        };
        assert!(matches!(e, StoreError::InUse { .. }), "{e:?}");
        let message = e.to_string();
        assert!(
            message.contains("in use by another transformer process")
                && message.contains("TRANSFORMER_DATA_DIR"),
            "{message}"
        );
    }
}
