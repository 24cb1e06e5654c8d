//! The queue's storage: an append-only log in segment files, and the index of
//! what in it is still undelivered.
//!
//! Why not the LSM (fjall) that keeps the dead letters: a queued event lives for
//! milliseconds, and an LSM keeps in memory, flushes and compacts every event and
//! every tombstone long after both are gone. Measured on this project's
//! benchmark: each memtable rotation (every few seconds at a few thousand events
//! per second) froze the whole path for 50–70 ms, on ext4 and on tmpfs alike, and
//! the memtable was the store's largest share of resident memory. Here a write is
//! one `write(2)` at the end of a file; nothing is rewritten, and a segment file
//! is deleted once every event in it is delivered.
//!
//! Records are framed `[len u32][crc32 u32][body]`, little-endian. Bodies:
//! - append: `1, seq u64, n u16, watcher u64 × n, encoded event`
//! - ack:    `2, watcher u64, seq u64`
//!
//! Replaying the segments in order rebuilds the queue. An ack always follows its
//! append in the log (events are queued for delivery only once stored), so a
//! segment's acks refer to it or to older segments, and deleting segments from
//! the oldest end never revives a delivered event. A watcher that stays down
//! would keep old segments alive; once there are more than [`MAX_SEGMENTS`],
//! the oldest segment's undelivered events are copied to the newest and it goes.
//!
//! After a crash the last record may be torn: replay stops at the first record
//! that does not check out, and every start writes a fresh segment, so a torn
//! tail is never written after.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::WatcherId;

mod record;

pub use record::{encode_ack, encode_append, read_record_len};
use record::{read_record, Record};

/// A segment is sealed and a new one started at this size.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// More segments than this means an undelivered event is holding old ones:
/// the oldest is compacted away.
pub const MAX_SEGMENTS: usize = 4;

/// One change to the index, in the order its record was written.
pub enum Op {
    Append { seq: u64, watchers: Vec<WatcherId> },
    Ack(WatcherId, u64),
}

/// An undelivered event: the segment holding its latest record, and the
/// watchers that have not acknowledged it yet.
struct Entry {
    segment: u64,
    watchers: Vec<WatcherId>,
}

struct Segment {
    id: u64,
    /// Undelivered (watcher, event) pairs whose latest record is here.
    live: usize,
}

/// What a replay of the segments found.
pub struct Replayed {
    /// Undelivered events: seq → (segment, watchers, encoded event).
    pub events: HashMap<u64, (u64, Vec<WatcherId>, Vec<u8>)>,
    pub max_seq: u64,
    pub segments: Vec<u64>,
}

pub struct Log {
    dir: PathBuf,
    /// Oldest first; the last is the one written.
    segments: VecDeque<Segment>,
    active: Arc<File>,
    active_len: u64,
    index: HashMap<u64, Entry>,
    segment_bytes: u64,
    /// Sealed segments written to since the last sync.
    unsynced: Vec<Arc<File>>,
    /// A segment file was created since the last sync.
    dir_changed: bool,
    max_seq: u64,
    /// Ack records a failed write could not store, written with the next one.
    /// Their events are already forgotten in the index: a delivered event is
    /// delivered whatever the disk says.
    unwritten_acks: Vec<u8>,
    /// A failed write left a torn record at the end of the active segment that
    /// could not be cut off: the next write starts a new segment first, since
    /// replay stops at the torn record and would miss anything after it.
    torn: bool,
}

/// At most this many bytes of ack records wait for a write that succeeds;
/// past it the oldest are dropped (their events may be delivered again after a
/// restart, never lost).
const MAX_UNWRITTEN_ACKS: usize = 1024 * 1024;

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.log"))
}

fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name
            .strip_suffix(".log")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Replays every segment in `dir`, oldest first, without changing anything.
pub fn replay(dir: &Path) -> io::Result<Replayed> {
    let mut events: HashMap<u64, (u64, Vec<WatcherId>, Vec<u8>)> = HashMap::new();
    let mut max_seq = 0;
    let segments = segment_ids(dir)?;
    for &id in &segments {
        let data = match fs::read(segment_path(dir, id)) {
            Ok(d) => d,
            // Deleted by a running writer between the listing and here.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut at = 0;
        while let Some((record, len)) = read_record(&data[at..]) {
            at += len;
            match record {
                Record::Append {
                    seq,
                    watchers,
                    event,
                } => {
                    max_seq = max_seq.max(seq);
                    // A second record for a seq is a compaction's copy: only
                    // watchers both name are still waiting.
                    let watchers = match events.remove(&seq) {
                        Some((_, before, _)) => watchers
                            .into_iter()
                            .filter(|w| before.contains(w))
                            .collect(),
                        None => watchers,
                    };
                    if !watchers.is_empty() {
                        events.insert(seq, (id, watchers, event.to_vec()));
                    }
                }
                Record::Ack { watcher, seq } => {
                    max_seq = max_seq.max(seq);
                    if let Some((_, watchers, _)) = events.get_mut(&seq) {
                        watchers.retain(|w| *w != watcher);
                        if watchers.is_empty() {
                            events.remove(&seq);
                        }
                    }
                }
            }
        }
        if at < data.len() {
            tracing::warn!(
                segment = id,
                dropped_bytes = data.len() - at,
                "the event log ends in a torn or corrupt record (a crash while writing); replay stops there"
            );
        }
    }
    Ok(Replayed {
        events,
        max_seq,
        segments,
    })
}

impl Log {
    /// Opens the log in `dir` after a replay of it, and starts a new segment.
    pub fn open(dir: &Path, replayed: &Replayed, segment_bytes: u64) -> io::Result<Log> {
        let mut index = HashMap::with_capacity(replayed.events.len());
        let mut live: HashMap<u64, usize> = HashMap::new();
        for (seq, (segment, watchers, _)) in &replayed.events {
            *live.entry(*segment).or_default() += watchers.len();
            index.insert(
                *seq,
                Entry {
                    segment: *segment,
                    watchers: watchers.clone(),
                },
            );
        }
        let mut segments: VecDeque<Segment> = replayed
            .segments
            .iter()
            .map(|&id| Segment {
                id,
                live: live.get(&id).copied().unwrap_or(0),
            })
            .collect();
        let next = segments.back().map_or(1, |s| s.id + 1);
        let active = create_segment(dir, next)?;
        segments.push_back(Segment { id: next, live: 0 });
        let mut log = Log {
            dir: dir.to_owned(),
            segments,
            active,
            active_len: 0,
            index,
            segment_bytes: segment_bytes.max(1),
            unsynced: Vec::new(),
            dir_changed: true,
            max_seq: replayed.max_seq,
            unwritten_acks: Vec::new(),
            torn: false,
        };
        log.reclaim();
        Ok(log)
    }

    pub fn max_seq(&self) -> u64 {
        self.max_seq
    }

    /// Undelivered (watcher, seq) pairs.
    pub fn pending(&self) -> Vec<(WatcherId, u64)> {
        self.index
            .iter()
            .flat_map(|(seq, e)| e.watchers.iter().map(move |w| (*w, *seq)))
            .collect()
    }

    /// Writes framed records (one `write(2)`) and applies their `ops` to the
    /// index. The bytes reach the operating system before this returns.
    ///
    /// When the write fails (a full disk, most often), the acknowledgements
    /// among `ops` still apply: the index forgets those events, and their
    /// records wait for the next write. Then whatever no undelivered event
    /// needs any more is deleted, and if that freed space the write is tried
    /// once more. So a disk filled by a queue whose watcher was down empties
    /// as the watcher catches up, and intake resumes without a restart.
    pub fn commit(&mut self, records: &[u8], ops: Vec<Op>) -> io::Result<()> {
        if records.is_empty() && self.unwritten_acks.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write(records) {
            for op in &ops {
                if let Op::Ack(watcher, seq) = op {
                    self.forget(*watcher, *seq);
                    self.keep_unwritten_ack(*watcher, *seq);
                }
            }
            if !self.free_space() {
                return Err(e);
            }
            if let Err(e) = self.write(records) {
                for op in &ops {
                    if let Op::Ack(watcher, seq) = op {
                        self.keep_unwritten_ack(*watcher, *seq);
                    }
                }
                return Err(e);
            }
        }
        let active = self.active_id();
        for op in ops {
            match op {
                Op::Append { seq, watchers } => {
                    self.max_seq = self.max_seq.max(seq);
                    if let Some(s) = self.segments.back_mut() {
                        s.live += watchers.len();
                    }
                    self.index.insert(
                        seq,
                        Entry {
                            segment: active,
                            watchers,
                        },
                    );
                }
                Op::Ack(watcher, seq) => self.forget(watcher, seq),
            }
        }
        if self.active_len >= self.segment_bytes {
            self.rotate()?;
        }
        self.reclaim();
        if self.segments.len() > MAX_SEGMENTS {
            self.compact_oldest()?;
        }
        Ok(())
    }

    fn keep_unwritten_ack(&mut self, watcher: WatcherId, seq: u64) {
        if self.unwritten_acks.len() < MAX_UNWRITTEN_ACKS {
            encode_ack(&mut self.unwritten_acks, watcher, seq);
        }
    }

    /// After a failed write: deletes the segments no undelivered event needs,
    /// and when nothing at all is undelivered, empties the log down to an
    /// empty active segment (truncated in place: creating a file can itself
    /// need the space that is missing). Whether anything was freed.
    fn free_space(&mut self) -> bool {
        let before = self.segments.len();
        self.reclaim();
        let mut freed = self.segments.len() < before;
        if self.index.is_empty() && (self.active_len > 0 || self.segments.len() > 1) {
            while self.segments.len() > 1 {
                if let Some(s) = self.segments.pop_front() {
                    let _ = fs::remove_file(segment_path(&self.dir, s.id));
                }
            }
            if self.active.set_len(0).is_ok() {
                self.active_len = 0;
                self.torn = false;
            }
            if let Some(s) = self.segments.back_mut() {
                s.live = 0;
            }
            self.unwritten_acks.clear();
            self.unsynced.clear();
            self.dir_changed = true;
            freed = true;
            tracing::warn!("the event log could not be written and held only delivered events: emptied it to make room");
        }
        freed
    }

    /// Appends framed records (after any ack records still unwritten) to the
    /// newest segment, all or none of them.
    fn write(&mut self, records: &[u8]) -> io::Result<()> {
        if self.torn {
            self.rotate()?;
            self.torn = false;
        }
        let joined;
        let bytes = if self.unwritten_acks.is_empty() {
            records
        } else {
            joined = [self.unwritten_acks.as_slice(), records].concat();
            &joined
        };
        if let Err(e) = (&*self.active).write_all(bytes) {
            // Part of the records may be written: cut them off (the file is
            // in append mode, so the next write lands right after), or if even
            // that fails, leave this segment behind: replay stops at the torn
            // record and goes on with the next segment.
            if self.active.set_len(self.active_len).is_err() && self.rotate().is_err() {
                self.torn = true;
            }
            return Err(e);
        }
        self.active_len += bytes.len() as u64;
        self.unwritten_acks.clear();
        Ok(())
    }

    fn active_id(&self) -> u64 {
        self.segments.back().map_or(0, |s| s.id)
    }

    fn forget(&mut self, watcher: WatcherId, seq: u64) {
        let Some(entry) = self.index.get_mut(&seq) else {
            return;
        };
        let before = entry.watchers.len();
        entry.watchers.retain(|w| *w != watcher);
        if entry.watchers.len() == before {
            return;
        }
        let segment = entry.segment;
        if entry.watchers.is_empty() {
            self.index.remove(&seq);
        }
        if let Some(s) = self.segments.iter_mut().find(|s| s.id == segment) {
            s.live = s.live.saturating_sub(1);
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.active_id() + 1;
        let file = create_segment(&self.dir, next)?;
        let sealed = std::mem::replace(&mut self.active, file);
        self.unsynced.push(sealed);
        self.active_len = 0;
        self.segments.push_back(Segment { id: next, live: 0 });
        self.dir_changed = true;
        Ok(())
    }

    /// Deletes the oldest segments while everything in them is delivered.
    fn reclaim(&mut self) {
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.live == 0) {
            let Some(s) = self.segments.pop_front() else {
                break;
            };
            if let Err(e) = fs::remove_file(segment_path(&self.dir, s.id)) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(segment = s.id, error = %e, "cannot delete a delivered segment of the event log");
                }
            }
        }
    }

    /// Copies the oldest segment's undelivered events to the newest segment,
    /// made durable, and deletes the oldest.
    fn compact_oldest(&mut self) -> io::Result<()> {
        let Some(oldest) = self.segments.front().map(|s| s.id) else {
            return Ok(());
        };
        let data = fs::read(segment_path(&self.dir, oldest))?;
        let mut records = Vec::new();
        let mut moved = Vec::new();
        let mut at = 0;
        while let Some((record, len)) = read_record(&data[at..]) {
            at += len;
            if let Record::Append { seq, event, .. } = record {
                if let Some(e) = self.index.get(&seq).filter(|e| e.segment == oldest) {
                    encode_append(&mut records, seq, &e.watchers, event);
                    moved.push(seq);
                }
            }
        }
        self.write(&records)?;
        self.active.sync_data()?;
        let active = self.active_id();
        let mut pairs = 0;
        for seq in &moved {
            if let Some(e) = self.index.get_mut(seq) {
                e.segment = active;
                pairs += e.watchers.len();
            }
        }
        if let Some(s) = self.segments.back_mut() {
            s.live += pairs;
        }
        if let Some(s) = self.segments.front_mut() {
            s.live = 0;
        }
        tracing::info!(
            segment = oldest,
            events = moved.len(),
            "compacted the event log: undelivered events moved out of its oldest segment"
        );
        self.reclaim();
        Ok(())
    }

    /// The files to sync for everything written so far, and whether the
    /// directory changed (a new segment) since the last sync.
    pub fn to_sync(&mut self) -> (Vec<Arc<File>>, bool) {
        let mut files = std::mem::take(&mut self.unsynced);
        files.push(self.active.clone());
        (files, std::mem::take(&mut self.dir_changed))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn create_segment(dir: &Path, id: u64) -> io::Result<Arc<File>> {
    // A new id is past every segment on disk, so the file is new; append mode
    // keeps each write at the end even after a failed write was cut off.
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, id))?;
    Ok(Arc::new(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(log: &mut Log, seq: u64, watchers: &[WatcherId], event: &[u8]) {
        let mut buf = Vec::new();
        encode_append(&mut buf, seq, watchers, event);
        log.commit(
            &buf,
            vec![Op::Append {
                seq,
                watchers: watchers.to_vec(),
            }],
        )
        .unwrap();
    }

    fn ack(log: &mut Log, watcher: WatcherId, seq: u64) {
        let mut buf = Vec::new();
        encode_ack(&mut buf, watcher, seq);
        log.commit(&buf, vec![Op::Ack(watcher, seq)]).unwrap();
    }

    fn open(dir: &Path, segment_bytes: u64) -> (Log, Replayed) {
        let replayed = replay(dir).unwrap();
        let log = Log::open(dir, &replayed, segment_bytes).unwrap();
        (log, replayed)
    }

    fn files(dir: &Path) -> usize {
        segment_ids(dir).unwrap().len()
    }

    #[test]
    fn replay_keeps_what_is_undelivered_per_watcher() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = open(dir.path(), SEGMENT_BYTES);
            append(&mut log, 1, &[7, 8], b"one");
            append(&mut log, 2, &[7, 8], b"two");
            ack(&mut log, 7, 1);
            ack(&mut log, 8, 1);
            ack(&mut log, 7, 2);
        }
        let (log, replayed) = open(dir.path(), SEGMENT_BYTES);
        assert_eq!(replayed.events.len(), 1);
        let (_, watchers, event) = &replayed.events[&2];
        assert_eq!(
            (watchers.as_slice(), event.as_slice()),
            (&[8][..], &b"two"[..])
        );
        assert_eq!(replayed.max_seq, 2);
        assert_eq!(log.pending(), vec![(8, 2)]);
    }

    #[test]
    fn delivered_segments_are_deleted_and_a_stuck_event_is_compacted_forward() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), 64);
        // Watcher 2 never acknowledges seq 1; everything else is delivered.
        append(&mut log, 1, &[1, 2], b"stuck");
        ack(&mut log, 1, 1);
        for seq in 2..200 {
            append(&mut log, seq, &[1, 2], &[0u8; 40]);
            ack(&mut log, 1, seq);
            ack(&mut log, 2, seq);
            assert!(files(dir.path()) <= MAX_SEGMENTS + 1, "seq {seq}");
        }
        assert_eq!(log.pending(), vec![(2, 1)]);
        drop(log);
        let (_, replayed) = open(dir.path(), 64);
        assert_eq!(replayed.events.len(), 1);
        let (_, watchers, event) = &replayed.events[&1];
        assert_eq!(
            (watchers.as_slice(), event.as_slice()),
            (&[2][..], &b"stuck"[..])
        );
    }

    #[test]
    fn a_torn_tail_ends_replay_and_later_segments_still_count() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = open(dir.path(), SEGMENT_BYTES);
            append(&mut log, 1, &[1], b"kept");
            append(&mut log, 2, &[1], b"torn");
        }
        let id = segment_ids(dir.path()).unwrap()[0];
        let path = segment_path(dir.path(), id);
        let len = fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 2).unwrap();
        {
            let (mut log, replayed) = open(dir.path(), SEGMENT_BYTES);
            assert_eq!(replayed.events.keys().copied().collect::<Vec<_>>(), vec![1]);
            append(&mut log, 3, &[1], b"after");
        }
        let (_, replayed) = open(dir.path(), SEGMENT_BYTES);
        let mut seqs: Vec<u64> = replayed.events.keys().copied().collect();
        seqs.sort_unstable();
        assert_eq!(seqs, vec![1, 3]);
    }
}
