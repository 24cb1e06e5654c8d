//! What a configuration has already reported, kept on disk so that a restart
//! of the server neither repeats nor skips a change: the objects it last saw
//! (key to ETag and size), written as a snapshot, and a journal of each
//! change appended (and synced) right after the gateway took its event. On
//! load the journal is replayed over the snapshot; after each poll round the
//! two are folded into a new snapshot. Replaying a change twice is harmless
//! (each sets an object's state), so a crash between the steps loses nothing.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub etag: String,
    pub size: u64,
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Change {
    Put { key: String, seen: Seen, seq: u64 },
    Del { key: String, seq: u64 },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    objects: BTreeMap<String, Seen>,
    /// The last sequence number given to an event.
    seq: u64,
}

/// A configuration's reported state and its files.
#[derive(Debug)]
pub struct State {
    pub objects: BTreeMap<String, Seen>,
    pub seq: u64,
    /// False until the first listing set a baseline.
    pub known: bool,
    snapshot: PathBuf,
    journal_path: PathBuf,
    journal: Option<File>,
    journal_lines: usize,
}

impl State {
    /// Loads the state stored under `dir` for the configuration `name` (a
    /// file-safe name), or an empty, unknown one.
    pub fn load(dir: &Path, name: &str) -> io::Result<State> {
        fs::create_dir_all(dir)?;
        let snapshot = dir.join(format!("{name}.snapshot.json"));
        let journal_path = dir.join(format!("{name}.journal.jsonl"));
        let (mut snap, known) = match fs::read(&snapshot) {
            Ok(bytes) => (
                serde_json::from_slice::<Snapshot>(&bytes).map_err(io::Error::other)?,
                true,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Snapshot::default(), false),
            Err(e) => return Err(e),
        };
        let mut lines = 0;
        if let Ok(file) = File::open(&journal_path) {
            for line in BufReader::new(file).lines() {
                // A torn last line (a crash mid-write) is a change never taken.
                let Ok(change) = serde_json::from_str::<Change>(&line?) else {
                    break;
                };
                lines += 1;
                match change {
                    Change::Put { key, seen, seq } => {
                        snap.objects.insert(key, seen);
                        snap.seq = snap.seq.max(seq);
                    }
                    Change::Del { key, seq } => {
                        snap.objects.remove(&key);
                        snap.seq = snap.seq.max(seq);
                    }
                }
            }
        }
        Ok(State {
            objects: snap.objects,
            seq: snap.seq,
            known,
            snapshot,
            journal_path,
            journal: None,
            journal_lines: lines,
        })
    }

    /// Records that `key` now is `seen` (`None`: removed), as event `seq`,
    /// durably, before the next change is forwarded.
    pub fn record(&mut self, key: &str, seen: Option<Seen>, seq: u64) -> io::Result<()> {
        let change = match &seen {
            Some(s) => Change::Put {
                key: key.to_owned(),
                seen: s.clone(),
                seq,
            },
            None => Change::Del {
                key: key.to_owned(),
                seq,
            },
        };
        let mut line = serde_json::to_vec(&change).map_err(io::Error::other)?;
        line.push(b'\n');
        if self.journal.is_none() {
            self.journal = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.journal_path)?,
            );
        }
        if let Some(journal) = self.journal.as_mut() {
            journal.write_all(&line)?;
            journal.sync_data()?;
        }
        self.journal_lines += 1;
        self.apply(key, seen);
        self.seq = self.seq.max(seq);
        Ok(())
    }

    /// Changes the state without a journal line: for changes nobody is told
    /// about (a baseline, an event kind not watched). Saved by [`State::save`].
    pub fn apply(&mut self, key: &str, seen: Option<Seen>) {
        match seen {
            Some(s) => {
                self.objects.insert(key.to_owned(), s);
            }
            None => {
                self.objects.remove(key);
            }
        }
    }

    /// Folds everything into a new snapshot and empties the journal.
    pub fn save(&mut self) -> io::Result<()> {
        let snap = Snapshot {
            objects: std::mem::take(&mut self.objects),
            seq: self.seq,
        };
        let written = write_atomically(&self.snapshot, &snap);
        self.objects = snap.objects;
        written?;
        self.known = true;
        self.journal = None;
        if self.journal_lines > 0 {
            fs::remove_file(&self.journal_path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })?;
            self.journal_lines = 0;
        }
        Ok(())
    }
}

/// Writes `value` to a temporary file, syncs it and renames it over `path`.
fn write_atomically(path: &Path, value: &Snapshot) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        serde_json::to_writer(&mut f, value).map_err(io::Error::other)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(etag: &str) -> Seen {
        Seen {
            etag: etag.to_owned(),
            size: 1,
        }
    }

    #[test]
    fn a_journal_without_a_save_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::load(dir.path(), "c").unwrap();
        assert!(!s.known);
        s.apply("old", Some(seen("0")));
        s.save().unwrap();
        s.record("a", Some(seen("1")), 1).unwrap();
        s.record("old", None, 2).unwrap();
        drop(s);
        // A torn line after the last full one is ignored.
        let journal = dir.path().join("c.journal.jsonl");
        let mut f = OpenOptions::new().append(true).open(&journal).unwrap();
        f.write_all(b"{\"op\":\"put\",\"ke").unwrap();
        let s = State::load(dir.path(), "c").unwrap();
        assert!(s.known);
        assert_eq!(s.seq, 2);
        assert_eq!(s.objects.keys().collect::<Vec<_>>(), vec!["a"]);
    }

    #[test]
    fn save_folds_the_journal_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::load(dir.path(), "c").unwrap();
        s.record("a", Some(seen("1")), 7).unwrap();
        s.save().unwrap();
        assert!(!dir.path().join("c.journal.jsonl").exists());
        let s = State::load(dir.path(), "c").unwrap();
        assert_eq!((s.seq, s.objects.len()), (7, 1));
    }
}
