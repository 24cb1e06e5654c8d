//! A full disk, a queue filled by one configuration, and settings that cannot work:
//! the transformer's data directory on a 1 MiB tmpfs (as root; skipped with a
//! message otherwise) must refuse with 503 what it cannot store, deliver all it
//! answered 200, free the space of delivered events and accept again, also after
//! a restart on the full disk; and a token that is not a header value stops either
//! process at start, naming the variable.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gateway_tests::*;

/// A tmpfs of `size` mounted on `dir` for as long as it lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when this process may not mount (not root, no tmpfs): the caller skips.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A 4 KB event numbered `seq`, posted straight to the transformer.
async fn post_numbered(g: &Gateway, seq: usize) -> Reply {
    use base64::Engine as _;
    let data = serde_json::json!({ "seq": seq, "pad": "x".repeat(4000) });
    let payload = base64::engine::general_purpose::STANDARD.encode(data.to_string());
    let body = serde_json::json!({ "src": "alpha", "payload": payload }).to_string();
    g.post(&g.tr_url("/"), "application/json", body).await
}

fn delivered(g: &Gateway) -> BTreeSet<usize> {
    g.sensor_events()
        .iter()
        .filter_map(|e| e["data"]["seq"].as_u64())
        .map(|n| n as usize)
        .collect()
}

/// Posts numbered events from `from` until the store refuses one, returning the
/// numbers answered 200 and 503; every 503 must say `store_unavailable`.
async fn fill(g: &Gateway, from: usize) -> (Vec<usize>, Vec<usize>) {
    let (mut taken, mut refused) = (Vec::new(), Vec::new());
    for seq in from..from + 3000 {
        let r = post_numbered(g, seq).await;
        match r.status {
            200 => taken.push(seq),
            503 => {
                assert_eq!(r.json["error"], "store_unavailable", "{r:?}");
                refused.push(seq);
                if refused.len() >= 20 {
                    break;
                }
            }
            other => panic!("event {seq}: unexpected {other}: {}", r.text),
        }
    }
    assert!(!refused.is_empty(), "a 1 MiB disk filled up");
    (taken, refused)
}

async fn wait_delivered(g: &Gateway, want: &[usize]) {
    wait_for("every event answered 200 at the sensor", || async {
        let got = delivered(g);
        want.iter().all(|s| got.contains(s)).then_some(())
    })
    .await;
}

fn assert_never_delivered(g: &Gateway, refused: &[usize]) {
    let got = delivered(g);
    for s in refused {
        assert!(!got.contains(s), "event {s} was answered 503 but delivered");
    }
}

#[tokio::test]
async fn a_full_disk_refuses_delivers_what_it_took_and_recovers_also_after_a_restart() {
    let mut g = Gateway::new(UserServerKind::Python);
    let data = g.dir.path().join("transformer-data");
    // A test that did not run must not pass: without root (no tmpfs to
    // fill), this fails, saying so; `--skip a_full_disk` leaves it out knowingly.
    let Some(_disk) = Tmpfs::mount(&data, "1m") else {
        panic!(
            "cannot mount a tmpfs at {} (needs root): the full-disk test cannot run here; \
             run the tests as root (as CI does), or leave this one out with --skip a_full_disk",
            data.display()
        );
    };
    g.transformer_env
        .push(("SHUTDOWN_TIMEOUT".into(), "2s".into()));
    g.start_sensor().await;
    std::fs::write(&g.fail_file, b"").expect("sensor down");
    g.start_transformer().await;

    // Filled with the sensor down: what is taken is delivered once it is back.
    let (taken, refused) = fill(&g, 0).await;
    assert!(taken.len() > 20, "some events fit: {}", taken.len());
    std::fs::remove_file(&g.fail_file).expect("sensor up");
    wait_delivered(&g, &taken).await;
    // The space of delivered events is freed: posts are taken again, no restart.
    let mut after = Vec::new();
    for seq in 10_000..10_100 {
        let r = wait_for("a post taken after the disk was freed", || async {
            let r = post_numbered(&g, seq).await;
            (r.status == 200).then_some(r)
        })
        .await;
        assert_eq!(r.status, 200);
        after.push(seq);
    }
    wait_delivered(&g, &after).await;

    // Full again, then a restart on the full disk: it comes up and delivers.
    std::fs::write(&g.fail_file, b"").expect("sensor down");
    let (taken2, refused2) = fill(&g, 20_000).await;
    let tr = g.transformer.as_mut().expect("transformer");
    tr.kill();
    g.start_transformer().await;
    std::fs::remove_file(&g.fail_file).expect("sensor up");
    wait_delivered(&g, &taken2).await;
    let mut after2 = Vec::new();
    for seq in 30_000..30_050 {
        wait_for("a post taken after the restart freed the disk", || async {
            (post_numbered(&g, seq).await.status == 200).then_some(())
        })
        .await;
        after2.push(seq);
    }
    wait_delivered(&g, &after2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_never_delivered(&g, &refused);
    assert_never_delivered(&g, &refused2);
}

#[tokio::test]
async fn one_configuration_may_fill_the_whole_queue_capacity() {
    let mut g = Gateway::new(UserServerKind::Python);
    g.start_sensor().await;
    std::fs::write(&g.fail_file, b"").expect("sensor down");
    g.start_transformer().await;
    // 1,500 events of 4 KB (6 MB) fit the documented defaults of 10,000 events and
    // 32 MiB per watcher; they were refused from the 626th when lanes split them.
    for seq in 0..1500 {
        let r = post_numbered(&g, seq).await;
        assert_eq!(r.status, 200, "event {seq}: {}", r.text);
    }
    std::fs::remove_file(&g.fail_file).expect("sensor up");
    let want: Vec<usize> = (0..1500).collect();
    wait_delivered(&g, &want).await;
}

/// Starts `cmd` and expects it to stop at once, non-zero, naming `var`;
/// returns what it printed.
async fn refuses_to_start(name: &str, cmd: Command, dir: &Path, var: &str) -> String {
    let mut p = Proc::spawn(name, cmd, dir);
    let status = p
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("{name} with a bad {var} kept running"));
    assert!(!status.success(), "{name} with a bad {var}: {status:?}");
    let out = p.output();
    assert!(out.contains(var), "{name} names {var}:\n{out}");
    out
}

#[tokio::test]
async fn a_data_directory_the_transformer_cannot_use_stops_it_saying_why_once() {
    let g = Gateway::new(UserServerKind::Python);
    let file = g.dir.path().join("not-a-directory");
    std::fs::write(&file, "x").expect("file");
    let mut cmd = g.transformer_command();
    // A backtrace of the start-up code is no help to an operator.
    cmd.env("TRANSFORMER_DATA_DIR", file.join("queue"))
        .env("RUST_BACKTRACE", "1");
    let out = refuses_to_start("transformer", cmd, g.dir.path(), "TRANSFORMER_DATA_DIR").await;
    assert!(out.contains("a file is in the way"), "{out}");
    assert!(out.contains(&file.display().to_string()), "{out}");
    assert_eq!(out.matches("os error").count(), 1, "the cause once:\n{out}");
    assert!(!out.contains("FjallError"), "{out}");
    assert!(!out.contains("backtrace"), "{out}");
}

#[tokio::test]
async fn tokens_that_are_not_header_values_stop_either_process_naming_the_variable() {
    let g = Gateway::new(UserServerKind::Python);
    let bad = "line\nbreak";
    for var in ["TRANSFORMER_TOKEN", "WATCHER_TOKEN"] {
        let mut cmd = g.transformer_command();
        cmd.env(var, bad);
        refuses_to_start("transformer", cmd, g.dir.path(), var).await;
    }
    for var in ["GATEWAY_PROCESSOR_CLIENT_TOKEN", "TRANSFORMER_TOKEN"] {
        let mut cmd = g.processor_command();
        cmd.env(var, bad);
        refuses_to_start("processor-client", cmd, g.dir.path(), var).await;
    }
    for (var, value) in [
        ("TRANSFORMER_MAX_CONNECTIONS", "0"),
        ("TRANSFORMER_HEADER_TIMEOUT", "soon"),
    ] {
        let mut cmd = g.transformer_command();
        cmd.env(var, value);
        refuses_to_start("transformer", cmd, g.dir.path(), var).await;
    }
    // A zero ping interval would make the NATS client's timer panic.
    let mut cmd = g.transformer_command();
    cmd.env("EVENT_PROTOCOL", "NATS")
        .env("NATS_PING_INTERVAL", "0s");
    refuses_to_start("transformer", cmd, g.dir.path(), "NATS_PING_INTERVAL").await;
    let mut cmd = g.processor_command();
    cmd.env("GATEWAY_PROCESSOR_CLIENT_IDLE_TIMEOUT", "0s");
    refuses_to_start(
        "processor-client",
        cmd,
        g.dir.path(),
        "GATEWAY_PROCESSOR_CLIENT_IDLE_TIMEOUT",
    )
    .await;
}
