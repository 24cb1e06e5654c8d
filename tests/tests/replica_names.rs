//! Replicas' names. The default is the host name, so several processor-clients
//! on one host would all go by one name; each takes one of its own instead,
//! and a name set on purpose waits for its live namesake to go.

use std::collections::BTreeSet;
use std::time::Duration;

use gateway_tests::replicas::*;
use gateway_tests::*;
use serde_json::Value;

/// This host's name as a replica's default name (a host name has letters,
/// digits, `-` and `.`; the `.` becomes `_`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .replace('.', "_")
}

/// Waits until the user servers of `live` run `n` configurations between
/// them, none twice, and none more than one more than another.
async fn spread_evenly(live: &[&Gateway], n: usize) {
    wait_for(&format!("{n} configurations spread evenly"), || async {
        let sets: Vec<BTreeSet<String>> = live.iter().map(|g| open_calls(g)).collect();
        let all: BTreeSet<&String> = sets.iter().flatten().collect();
        let sizes: Vec<usize> = sets.iter().map(BTreeSet::len).collect();
        let spread = sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0);
        (all.len() == n && sizes.iter().sum::<usize>() == n && spread <= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn replicas_on_one_host_without_names_each_take_one_of_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(dir.path()).await;
    let list = configs(12);
    // No GATEWAY_PROCESSOR_REPLICA_ID: each would go by this host's name, and
    // the processor-clients start together.
    let mut pods: Vec<Gateway> = (0..3)
        .map(|_| {
            let mut g = sharing("", &nats, &list);
            g.processor_env
                .retain(|(k, _)| k != "GATEWAY_PROCESSOR_REPLICA_ID");
            g
        })
        .collect();
    for g in &mut pods {
        g.start_sensor().await;
        g.start_transformer().await;
        g.start_user_server().await;
    }
    for g in &mut pods {
        g.start_processor().await;
    }
    spread_evenly(&pods.iter().collect::<Vec<_>>(), 12).await;
    let host = host_name();
    // Owners as of the replica's last round: soon the same.
    let owners = wait_for("three owners listed", || async {
        let owners: BTreeSet<String> = pods[0]
            .configs()
            .await
            .iter()
            .filter_map(|c| c["owner"].as_str().map(str::to_owned))
            .collect();
        (owners.len() == 3).then_some(owners)
    })
    .await;
    assert_eq!(owners.len(), 3, "three names: {owners:?}");
    assert!(owners.contains(&host), "{owners:?}");
    assert!(
        owners
            .iter()
            .all(|o| o == &host || o.starts_with(&format!("{host}-"))),
        "the others the host name and their process ids: {owners:?}"
    );
    // A name set on purpose is not changed: a fourth replica told to go by
    // the host name runs nothing while the replica of that name lives...
    let mut fourth = sharing(&host, &nats, &list);
    fourth.start_all().await;
    wait_for("the fourth replica to say why it runs nothing", || async {
        let log = fourth
            .processor
            .as_ref()
            .map(Proc::output)
            .unwrap_or_default();
        log.contains("another live processor-client of this gateway goes by this name")
            .then_some(())
    })
    .await;
    tokio::time::sleep(LEASE * 2).await;
    assert!(open_calls(&fourth).is_empty(), "{:?}", fourth.journal());
    // ...and takes the name over, and a share, once that one has gone.
    let mut named = Vec::new();
    for g in &pods {
        let listed = g.configs().await;
        let mine = open_calls(g);
        if listed
            .iter()
            .any(|c| c["owner"] == host.as_str() && mine.contains(c["src"].as_str().unwrap_or("")))
        {
            named.push(g.pc_port);
        }
    }
    assert_eq!(named.len(), 1, "one pod goes by the host name");
    let gone = pods
        .iter_mut()
        .find(|g| g.pc_port == named[0])
        .expect("that pod");
    let pc = gone.processor.as_mut().expect("processor");
    pc.signal(libc::SIGTERM);
    pc.exits_cleanly(Duration::from_secs(10)).await;
    let live: Vec<&Gateway> = pods
        .iter()
        .filter(|g| g.pc_port != named[0])
        .chain([&fourth])
        .collect();
    spread_evenly(&live, 12).await;
    let mut journals: Vec<(&str, Vec<Value>, Option<f64>)> =
        pods.iter().map(|g| ("pod", g.journal(), None)).collect();
    journals.push(("fourth", fourth.journal(), None));
    for (i, j) in journals.iter_mut().enumerate() {
        j.0 = ["pod-0", "pod-1", "pod-2", "fourth"][i];
    }
    assert_never_twice(&journals);
}
