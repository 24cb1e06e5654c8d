//! The scripts the repo carries besides its Rust (the tests' Python and Node
//! servers and clients, the SDK examples) are checked before they run: a
//! mistake in one shows in a test only when that line runs, and may hide there.
//! The test sensor's hold loop failed on every call for weeks (a later local
//! named `time` shadowed the module), and the test using it passed by a race.
//! Python goes through pyflakes, JavaScript through `node --check`.

use std::path::{Path, PathBuf};
use std::process::Command;

use gateway_tests::{root, run_ok};

/// Generator output, kept byte for byte as the generator writes it (the
/// generated example's test compares them); not ours to lint.
const GENERATED: [&str; 2] = [
    "python-generated/app/main.py",
    "python-generated/app/models.py",
];

/// Directories that hold other people's code or build output: installed
/// packages, a virtualenv a user made beside an example, caches.
fn foreign(name: &str) -> bool {
    name.starts_with('.') || ["node_modules", "venv", "__pycache__", "target"].contains(&name)
}

/// Files under `dir` ending in one of `exts`, outside [`foreign`] directories.
fn scripts(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if !path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(foreign)
            {
                scripts(&path, exts, out);
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e))
            && !GENERATED.iter().any(|g| path.ends_with(g))
        {
            out.push(path);
        }
    }
}

fn all(exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["tests/support", "sdk-examples"] {
        scripts(&root().join(dir), exts, &mut out);
    }
    out.sort();
    out
}

#[test]
fn python_scripts_pass_pyflakes() {
    let files = all(&["py"]);
    assert!(files.len() >= 10, "found only {files:?}");
    run_ok(
        Command::new("python3")
            .args(["-m", "pyflakes"])
            .args(&files),
        "pyflakes (tests/setup.sh installs it)",
    );
}

#[test]
fn javascript_files_parse() {
    let files = all(&["js", "mjs"]);
    assert!(!files.is_empty());
    for file in files {
        run_ok(
            Command::new("node").arg("--check").arg(&file),
            &format!("node --check {}", file.display()),
        );
    }
}
