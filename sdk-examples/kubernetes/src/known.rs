//! What a configuration knows of the objects it watches: each object's last
//! state reported, by uid. The watcher says only "applied" or "deleted"; this
//! is what tells an add from an update (and gives the update its old body),
//! and, after a relist, which known objects are gone (their delete was missed
//! while the watch was down).
//!
//! With `RESOURCE_GATEWAY_STATE_DIR` set it is kept in a file per
//! configuration, rewritten whole (a new file renamed over the old) after
//! each batch the gateway took, so a restarted gateway reports what changed
//! while it was away as updates and deletes; without it a restart reports
//! every object it lists as added, and the gateway's memory of ids (uid and
//! resourceVersion) keeps the unchanged ones from reaching a sensor again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where the state files are kept, when they are.
pub const STATE_DIR_VAR: &str = "RESOURCE_GATEWAY_STATE_DIR";

pub struct Known {
    objects: HashMap<String, Value>,
    file: Option<PathBuf>,
    changed: bool,
}

/// An object's uid, empty when it has none.
pub fn uid(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or("")
}

/// An object's resourceVersion, empty when it has none.
pub fn version(obj: &Value) -> &str {
    obj["metadata"]["resourceVersion"].as_str().unwrap_or("")
}

impl Known {
    /// The state of configuration `src`: read from its file under `dir`
    /// when there is one (an unreadable file is logged and starts empty).
    pub fn load(dir: Option<&Path>, src: &str) -> Known {
        let file = dir.map(|d| d.join(format!("{}.json", file_name(src))));
        let objects = file
            .as_deref()
            .and_then(|f| match std::fs::read(f) {
                Ok(bytes) => serde_json::from_slice::<HashMap<String, Value>>(&bytes)
                    .map_err(|e| tracing::warn!(file = %f.display(), error = %e, "state file unreadable; starting without it"))
                    .ok(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "state file unreadable; starting without it");
                    None
                }
            })
            .unwrap_or_default();
        Known {
            objects,
            file,
            changed: false,
        }
    }

    pub fn get(&self, uid: &str) -> Option<&Value> {
        self.objects.get(uid)
    }

    pub fn uids(&self) -> impl Iterator<Item = &String> {
        self.objects.keys()
    }

    pub fn set(&mut self, obj: Value) {
        self.objects.insert(uid(&obj).to_owned(), obj);
        self.changed = true;
    }

    /// Forgets an object; what was known of it.
    pub fn remove(&mut self, uid: &str) -> Option<Value> {
        let old = self.objects.remove(uid);
        self.changed |= old.is_some();
        old
    }

    /// Writes the state file, when there is one and something changed.
    pub fn save(&mut self) -> std::io::Result<()> {
        let Some(file) = self.file.as_ref().filter(|_| self.changed) else {
            return Ok(());
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension("json.new");
        std::fs::write(&tmp, serde_json::to_vec(&self.objects)?)?;
        std::fs::rename(&tmp, file)?;
        self.changed = false;
        Ok(())
    }
}

/// A configuration key as a file name: its bytes in hex, so any key is safe.
fn file_name(src: &str) -> String {
    src.bytes().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_a_restart_in_its_file() {
        let dir = std::env::temp_dir().join(format!("known-{}", std::process::id()));
        let obj = serde_json::json!({"metadata": {"uid": "u1", "resourceVersion": "7"}});
        let mut k = Known::load(Some(&dir), "shop/pods");
        k.set(obj.clone());
        k.save().expect("saved");
        let again = Known::load(Some(&dir), "shop/pods");
        assert_eq!(again.get("u1"), Some(&obj));
        assert!(Known::load(Some(&dir), "other").get("u1").is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
