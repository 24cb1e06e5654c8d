//! The journal of the event names the transformer remembers for
//! deduplication (`TRANSFORMER_DEDUP_WINDOW`): one fixed-size record per
//! named event, appended by the store's writer in the same pass as the event
//! itself, so that what a producer was answered 2xx for is recognised after a
//! crash too.
//!
//! Records are `[key 12 bytes][second u32][crc32 u32]`, little-endian, in
//! files named for the second their first record was written. A new file is
//! started every eighth of the window, and a file is deleted once all it
//! holds is older than the window: the journal holds about one window and
//! an eighth of records (a million ids are 20 MB).
//!
//! The event is written to the log before its record is written here, so a
//! crash between the two leaves an event stored but not journalled; it is
//! still queued when the store opens again, and the transformer remembers
//! every queued event's name at start, which closes that gap.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A remembered name (a 96-bit hash) and the second it was taken.
pub type Remembered = ([u8; 12], u32);

const RECORD: usize = 20;

pub struct Journal {
    dir: PathBuf,
    /// Seconds a file covers before the next is started.
    span: u32,
    window: u32,
    /// The first second of each file, oldest first.
    files: Vec<u32>,
    /// The file this process appends to, and its first second. Files found
    /// at start are only read (one may end in a torn record).
    current: Option<(u32, Arc<File>)>,
    /// Files written to since the last sync.
    unsynced: Vec<Arc<File>>,
    dir_changed: bool,
}

fn file_path(dir: &Path, first: u32) -> PathBuf {
    dir.join(format!("{first:010}.seen"))
}

fn file_seconds(dir: &Path) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seen"))
            .and_then(|n| n.parse().ok())
        {
            out.push(first);
        }
    }
    out.sort_unstable();
    Ok(out)
}

impl Journal {
    /// Opens the journal in `dir` for a window of `window` seconds, and
    /// returns with it every record still within the window at `now`.
    pub fn open(dir: &Path, window: u32, now: u32) -> io::Result<(Journal, Vec<Remembered>)> {
        fs::create_dir_all(dir)?;
        let mut remembered = Vec::new();
        let mut files = Vec::new();
        for first in file_seconds(dir)? {
            let path = file_path(dir, first);
            let data = fs::read(&path)?;
            let mut newest = first;
            for chunk in data.chunks_exact(RECORD) {
                let Some((key, at)) = decode(chunk) else {
                    // A torn record (a crash mid-write): what follows is not
                    // trusted; the file is not written again.
                    break;
                };
                newest = newest.max(at);
                if now.saturating_sub(at) < window {
                    remembered.push((key, at));
                }
            }
            if now.saturating_sub(newest) >= window {
                fs::remove_file(&path)?;
            } else {
                files.push(first);
            }
        }
        let journal = Journal {
            dir: dir.to_owned(),
            span: (window / 8).max(1),
            window,
            files,
            current: None,
            unsynced: Vec::new(),
            dir_changed: false,
        };
        Ok((journal, remembered))
    }

    /// Appends `records` with one write, to a new file when the current one
    /// has covered its span (and a crash left none open for writing).
    pub fn append(&mut self, records: &[Remembered], now: u32) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(records.len() * RECORD);
        for (key, at) in records {
            buf.extend_from_slice(key);
            buf.extend_from_slice(&at.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&buf[buf.len() - 16..]).to_le_bytes());
        }
        let file = self.writable(now)?;
        (&*file).write_all(&buf)?;
        if !self.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
            self.unsynced.push(file);
        }
        self.expire(now)
    }

    /// The file to append to now: a new one once the current has covered
    /// its span.
    fn writable(&mut self, now: u32) -> io::Result<Arc<File>> {
        if let Some((first, file)) = &self.current {
            if now.saturating_sub(*first) < self.span {
                return Ok(file.clone());
            }
        }
        let first = self.files.last().map_or(now, |last| now.max(last + 1));
        let file = Arc::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(file_path(&self.dir, first))?,
        );
        self.files.push(first);
        self.current = Some((first, file.clone()));
        self.dir_changed = true;
        Ok(file)
    }

    /// Deletes the files whose records are all older than the window: every
    /// file but the last is older than its successor's first second.
    fn expire(&mut self, now: u32) -> io::Result<()> {
        while self.files.len() > 1 && now.saturating_sub(self.files[1]) >= self.window {
            let first = self.files.remove(0);
            fs::remove_file(file_path(&self.dir, first))?;
            self.dir_changed = true;
        }
        Ok(())
    }

    /// What a sync must force to disk: the files written since the last one,
    /// and whether the directory changed.
    pub fn to_sync(&mut self) -> (Vec<Arc<File>>, bool, PathBuf) {
        (
            std::mem::take(&mut self.unsynced),
            std::mem::take(&mut self.dir_changed),
            self.dir.clone(),
        )
    }
}

fn decode(chunk: &[u8]) -> Option<Remembered> {
    let crc = u32::from_le_bytes(chunk[16..20].try_into().ok()?);
    if crc32fast::hash(&chunk[..16]) != crc {
        return None;
    }
    let key: [u8; 12] = chunk[..12].try_into().ok()?;
    let at = u32::from_le_bytes(chunk[12..16].try_into().ok()?);
    Some((key, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_within_the_window_come_back_and_old_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, found) = Journal::open(dir.path(), 80, 1000).unwrap();
        assert!(found.is_empty());
        j.append(&[([1; 12], 1000), ([2; 12], 1000)], 1000).unwrap();
        j.append(&[([3; 12], 1011)], 1011).unwrap();
        assert_eq!(file_seconds(dir.path()).unwrap(), [1000, 1011]);
        drop(j);
        let (mut j, mut found) = Journal::open(dir.path(), 80, 1085).unwrap();
        found.sort();
        assert_eq!(
            found,
            [([3; 12], 1011)],
            "1000's records are past the window"
        );
        assert_eq!(file_seconds(dir.path()).unwrap(), [1011], "its file went");
        // A file found at start is not written again: a new one starts.
        j.append(&[([4; 12], 1086)], 1086).unwrap();
        assert_eq!(file_seconds(dir.path()).unwrap(), [1011, 1086]);
        j.append(&[([5; 12], 1092)], 1092).unwrap();
        assert_eq!(file_seconds(dir.path()).unwrap(), [1011, 1086]);
        // A file goes once its successor's first second is past the window
        // (all it holds is older than that).
        j.append(&[([6; 12], 1200)], 1200).unwrap();
        assert_eq!(file_seconds(dir.path()).unwrap(), [1086, 1200]);
        j.append(&[([7; 12], 1290)], 1290).unwrap();
        assert_eq!(file_seconds(dir.path()).unwrap(), [1200, 1290]);
    }

    #[test]
    fn a_torn_record_ends_what_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 600, 1000).unwrap();
        j.append(&[([1; 12], 1000), ([2; 12], 1000)], 1000).unwrap();
        drop(j);
        let path = file_path(dir.path(), 1000);
        let mut data = fs::read(&path).unwrap();
        data[RECORD + 3] ^= 0xff;
        data.extend_from_slice(&[7; 9]);
        fs::write(&path, data).unwrap();
        let (_, found) = Journal::open(dir.path(), 600, 1001).unwrap();
        assert_eq!(found, [([1; 12], 1000)]);
    }
}
