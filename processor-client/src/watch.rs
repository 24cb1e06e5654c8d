//! The configuration source: a directory laid out like a mounted Kubernetes ConfigMap
//! (one file per key, `..data` symlink swaps included) or one YAML/JSON file mapping
//! key to value. The watcher publishes a whole snapshot on every change; the
//! supervisor diffs snapshots, so a missed or doubled file event can do no harm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Key → value, as the user server will receive them in `src` and `config`.
pub type Snapshot = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("GATEWAY_PROCESSOR_CONFIG_MAP {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("GATEWAY_PROCESSOR_CONFIG_MAP {path} is not a YAML or JSON mapping of key to value: {reason}")]
    Parse { path: PathBuf, reason: String },
}

/// Reads the configurations as they are now.
pub fn load(path: &Path) -> Result<Snapshot, WatchError> {
    let io = |source| WatchError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        load_dir(path)
    } else {
        let text = std::fs::read_to_string(path).map_err(io)?;
        parse_file(&text).map_err(|reason| WatchError::Parse {
            path: path.to_owned(),
            reason,
        })
    }
}

/// A ConfigMap volume: every regular file (symlinks followed) whose name does not
/// start with `.` is a key. `..data`, `..2026_…` and editors' dot-files are skipped.
fn load_dir(dir: &Path) -> Result<Snapshot, WatchError> {
    let io = |source| WatchError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Snapshot::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(file = ?entry.path(), "skipping configuration file whose name is not UTF-8");
            continue;
        };
        // A ConfigMap's own entries (`..data`, `..2026_…`) and hidden files;
        // and what editors leave beside the file they edit (`alpha~`, Emacs's
        // `#alpha#`; Vim's `.alpha.swp` is hidden): no ConfigMap key has a
        // `~` or a `#`, and each would run as a configuration of its own.
        if name.starts_with('.') || name.ends_with('~') || name.starts_with('#') {
            continue;
        }
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(WatchError::Io { path, source }),
        }
        match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    out.insert(name.to_owned(), text);
                }
                Err(_) => {
                    tracing::warn!(file = %path.display(), "skipping configuration that is not UTF-8 text")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(WatchError::Io { path, source }),
        }
    }
    Ok(out)
}

/// One YAML or JSON document mapping key to value. String values are passed as they
/// are; any other value (a nested mapping, a list, a number) is passed as JSON text,
/// which every YAML parser also reads. A Kubernetes ConfigMap manifest is accepted
/// too: its `data` is the mapping, and each `binaryData` value that decodes to
/// UTF-8 text is a configuration as well (as the same key mounted as a file is);
/// one that does not is skipped with a warning, as such a file is.
pub fn parse_file(text: &str) -> Result<Snapshot, String> {
    let doc: serde_norway::Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    let mapping = match doc {
        serde_norway::Value::Null => return Ok(Snapshot::new()),
        serde_norway::Value::Mapping(m) => m,
        other => return Err(format!("the document is a {}, not a mapping", kind(&other))),
    };
    let is_manifest = mapping.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap");
    let (mapping, binary) = if is_manifest {
        let data = match mapping.get("data") {
            Some(serde_norway::Value::Mapping(m)) => m.clone(),
            None | Some(serde_norway::Value::Null) => serde_norway::Mapping::new(),
            Some(other) => {
                return Err(format!(
                    "ConfigMap data is a {}, not a mapping",
                    kind(other)
                ))
            }
        };
        (data, binary_data(mapping.get("binaryData"))?)
    } else {
        (mapping, Vec::new())
    };
    let mut out = Snapshot::new();
    for (k, v) in mapping {
        let key = scalar_text(&k).ok_or_else(|| format!("key {k:?} is not a string"))?;
        if key.is_empty() {
            return Err("a key is empty".into());
        }
        let value = match v {
            serde_norway::Value::String(s) => s,
            serde_norway::Value::Null => String::new(),
            other => match scalar_text(&other) {
                Some(s) => s,
                None => {
                    serde_json::to_string(&other).map_err(|e| format!("value of {key}: {e}"))?
                }
            },
        };
        out.insert(key, value);
    }
    for (key, value) in binary {
        if out.contains_key(&key) {
            return Err(format!("key {key} is in both data and binaryData"));
        }
        out.insert(key, value);
    }
    Ok(out)
}

/// A ConfigMap's `binaryData`: each key and its base64 value decoded, where
/// that is UTF-8 text (the contract's values are strings).
fn binary_data(v: Option<&serde_norway::Value>) -> Result<Vec<(String, String)>, String> {
    let map = match v {
        None | Some(serde_norway::Value::Null) => return Ok(Vec::new()),
        Some(serde_norway::Value::Mapping(m)) => m,
        Some(other) => {
            return Err(format!(
                "ConfigMap binaryData is a {}, not a mapping",
                kind(other)
            ))
        }
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let key = scalar_text(k).ok_or_else(|| format!("binaryData key {k:?} is not a string"))?;
        let Some(encoded) = v.as_str() else {
            return Err(format!("binaryData value of {key} is not a base64 string"));
        };
        let bytes = gateway_common::wire::decode_payload(encoded)
            .map_err(|e| format!("binaryData value of {key} is not base64: {e}"))?;
        match String::from_utf8(bytes) {
            Ok(text) => out.push((key, text)),
            Err(_) => tracing::warn!(
                %key,
                "skipping binaryData configuration that is not UTF-8 text"
            ),
        }
    }
    Ok(out)
}

fn scalar_text(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(v: &serde_norway::Value) -> &'static str {
    match v {
        serde_norway::Value::Sequence(_) => "list",
        serde_norway::Value::String(_) => "string",
        serde_norway::Value::Number(_) => "number",
        serde_norway::Value::Bool(_) => "boolean",
        _ => "non-mapping value",
    }
}

/// Watches `path` until cancelled, publishing each snapshot that differs from the
/// last. File events trigger a reload after a short settle; a slow poll catches
/// anything the platform's notifications miss (network filesystems, a replaced
/// directory). A load that fails keeps the last good snapshot.
pub async fn run(
    path: PathBuf,
    poll: Duration,
    tx: watch::Sender<Arc<Snapshot>>,
    loads: prometheus_client::metrics::counter::Counter,
    cancel: CancellationToken,
) {
    let (kick_tx, mut kick_rx) = mpsc::channel::<()>(1);
    let _watcher = start_notify(&path, kick_tx);
    let settle = Duration::from_millis(50);
    // A source that stays unreadable is said once, not at every poll.
    let mut failing: Option<String> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = kick_rx.recv() => {
                tokio::time::sleep(settle).await;
                while kick_rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(poll) => {}
        }
        loads.inc();
        let loaded = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || load(&p)).await
        };
        match loaded {
            Ok(Ok(snapshot)) => {
                if failing.take().is_some() {
                    tracing::info!("configurations readable again");
                }
                tx.send_if_modified(|current| {
                    if **current == snapshot {
                        false
                    } else {
                        tracing::info!(configurations = snapshot.len(), "configurations changed");
                        *current = Arc::new(snapshot);
                        true
                    }
                });
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                if failing.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "cannot read configurations; keeping the last ones");
                    failing = Some(e);
                } else {
                    tracing::debug!(error = %e, "configurations still unreadable");
                }
            }
            Err(e) => tracing::warn!(error = %e, "configuration reload task failed"),
        }
    }
}

/// Watches the directory itself, or a file's parent directory (editors and
/// `kubectl cp` replace files by rename, which a watch on the file would lose).
fn start_notify(path: &Path, kick: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let (target, only) = if path.is_dir() {
        (path.to_owned(), None)
    } else {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        (dir, path.file_name().map(|n| n.to_owned()))
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|event| {
            changes_files(&event.kind) && concerns(&event.paths, only.as_deref())
        }) {
            let _ = kick.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "file notifications unavailable; polling only"))
    .ok()?;
    match watcher.watch(&target, RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::warn!(error = %e, dir = %target.display(), "cannot watch configurations; polling only");
            None
        }
    }
}

/// Whether a notification can mean a configuration changed. Opening, reading
/// and closing a file unchanged are not: the reload itself reads every file,
/// and taking those for changes made the processor-client read its whole
/// directory again every 50 ms for as long as it ran.
fn changes_files(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Whether a notification is about the configurations. In a directory of
/// configurations (`file` is None) every file is; beside one configuration
/// file, only that file and the `..data` swap of a mounted ConfigMap are: the
/// rest of that directory (the processor-client's own log, say, when its
/// output goes to a file there) changing is no reason to read it again. An
/// event naming no path (the kernel's queue overflowed) may be anything.
fn concerns(paths: &[PathBuf], file: Option<&std::ffi::OsStr>) -> bool {
    let Some(file) = file else { return true };
    paths.is_empty()
        || paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n == file || n.as_encoded_bytes().starts_with(b".."))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beside_one_file_only_that_file_and_configmap_swaps_count() {
        let f = Some(std::ffi::OsStr::new("gateway.yaml"));
        let p = |s: &str| vec![PathBuf::from(s)];
        assert!(concerns(&p("/etc/gw/gateway.yaml"), f));
        assert!(concerns(&p("/etc/gw/..data"), f));
        assert!(concerns(&p("/etc/gw/..2026_11_30_23_00_00.1"), f));
        assert!(concerns(&[], f));
        assert!(!concerns(&p("/etc/gw/processor-client.log"), f));
        assert!(!concerns(&p("/etc/gw/.gateway.yaml.swp"), f));
        assert!(concerns(
            &[
                PathBuf::from("/etc/gw/tmp123"),
                PathBuf::from("/etc/gw/gateway.yaml")
            ],
            f
        ));
        assert!(concerns(&p("/etc/gw/anything"), None));
    }

    #[test]
    fn reading_a_file_is_not_a_change() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind};
        assert!(!changes_files(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!changes_files(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!changes_files(&EventKind::Access(AccessKind::Read)));
        assert!(changes_files(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes_files(&EventKind::Create(CreateKind::File)));
        assert!(changes_files(&EventKind::Modify(ModifyKind::Any)));
        assert!(changes_files(&EventKind::Remove(RemoveKind::File)));
        assert!(changes_files(&EventKind::Any));
    }

    #[test]
    fn yaml_and_json_files_map_keys_to_text() {
        let s = parse_file("a: |\n  x: 1\nb: 2\nc:\n  nested: true\n").unwrap();
        assert_eq!(s["a"], "x: 1\n");
        assert_eq!(s["b"], "2");
        assert_eq!(s["c"], r#"{"nested":true}"#);
        let j = parse_file(r#"{"k": "v", "n": {"a": [1]}}"#).unwrap();
        assert_eq!(j["k"], "v");
        assert_eq!(j["n"], r#"{"a":[1]}"#);
        assert!(parse_file("").unwrap().is_empty());
    }

    #[test]
    fn configmap_manifest_uses_its_data() {
        let s = parse_file(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  one: hello\n",
        )
        .unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s["one"], "hello");
        // binaryData: text is a configuration (as its mounted file is), other
        // bytes are skipped; binaryData alone is enough.
        let s = parse_file(
            "kind: ConfigMap\ndata:\n  one: hello\nbinaryData:\n  two: aGk=\n  three: AP8=\n",
        )
        .unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s["two"], "hi");
        let s = parse_file("kind: ConfigMap\nbinaryData:\n  two: aGk=\n").unwrap();
        assert_eq!(s["two"], "hi");
        let e = parse_file("kind: ConfigMap\ndata: {a: x}\nbinaryData: {a: aGk=}\n").unwrap_err();
        assert!(e.contains("both"), "{e}");
        let e = parse_file("kind: ConfigMap\nbinaryData: {a: '***'}\n").unwrap_err();
        assert!(e.contains("not base64"), "{e}");
    }

    #[test]
    fn non_mappings_are_refused_with_a_reason() {
        assert!(parse_file("- a\n- b\n").unwrap_err().contains("list"));
        assert!(parse_file("{unclosed").is_err());
        assert!(parse_file("[1]: x").unwrap_err().contains("not a string"));
    }

    #[test]
    fn configmap_directory_with_data_symlink() {
        let dir = std::env::temp_dir().join(format!("pc-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ts = dir.join("..2026_01_01");
        std::fs::create_dir_all(&ts).unwrap();
        std::fs::write(ts.join("alpha"), "A").unwrap();
        std::os::unix::fs::symlink("..2026_01_01", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/alpha", dir.join("alpha")).unwrap();
        std::fs::write(dir.join(".swp"), "ignored").unwrap();
        std::fs::write(dir.join("alpha~"), "an editor's backup").unwrap();
        std::fs::write(dir.join("#alpha#"), "an editor's autosave").unwrap();
        let s = load(&dir).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s["alpha"], "A");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_path_names_the_variable() {
        let e = load(Path::new("/definitely/not/here"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("GATEWAY_PROCESSOR_CONFIG_MAP"), "{e}");
    }
}

#[cfg(test)]
mod fuzz {
    //! Configuration files are outside input: any text parses or errs, never panics.
    //! Long run: `PROPTEST_CASES=1000000 cargo test -p processor-client fuzz`.
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fuzz_configuration_file(text in "(?s).{0,200}") {
            let _ = super::parse_file(&text);
        }

        #[test]
        fn fuzz_yaml_shaped_configuration(
            lines in prop::collection::vec(("[a-z.:{}\\[\\]-]{0,8}", "[ -~]{0,16}", 0usize..4), 0..12),
        ) {
            let text: String = lines
                .iter()
                .map(|(k, v, indent)| format!("{}{k}: {v}\n", "  ".repeat(*indent)))
                .collect();
            if let Ok(snapshot) = super::parse_file(&text) {
                prop_assert!(snapshot.keys().all(|k| !k.is_empty()));
            }
        }
    }
}
