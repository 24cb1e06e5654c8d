//! Configurations end to end: a ConfigMap-style directory, a plain directory
//! and one YAML file, changed while the gateway runs, with the contract's
//! stops and starts; configurations the user server refuses; and settings
//! that stop a process at start, naming the variable.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_tests::*;
use serde_json::Value;

#[tokio::test]
async fn configuration_changes_give_the_contract_stops_and_starts() {
    let idle = r#"{"count": 0}"#;
    let g = Gateway::up(UserServerKind::Python, &[("alpha", idle)]).await;
    let first = g.wait_journal("start", "alpha", 1).await[0].clone();
    let expected_id = first["id"].as_str().expect("id").to_owned();
    assert!(
        expected_id.parse::<u32>().is_ok(),
        "id is FNV-32a in decimal"
    );
    g.wait_phase("alpha", "Running").await;

    g.set_config("beta", idle);
    g.wait_journal("start", "beta", 1).await;

    let changed = r#"{"count": 0, "v": 2}"#;
    g.set_config("alpha", changed);
    let starts = g.wait_journal("start", "alpha", 2).await;
    let stops = g.journal_of("stop", "alpha");
    assert_eq!(stops.len(), 1, "the old value is stopped once");
    assert_eq!(
        stops[0]["id"], first["id"],
        "the stop names the old configuration"
    );
    assert_eq!(stops[0]["timeID"], first["timeID"]);
    assert_ne!(starts[1]["id"], first["id"], "a new value is a new id");
    assert_ne!(
        starts[1]["timeID"], first["timeID"],
        "each start has a fresh timeID"
    );
    assert_eq!(starts[1]["config"], changed);
    let order: Vec<String> = g
        .journal()
        .iter()
        .filter(|e| e["src"] == "alpha" && e["op"] != "acked")
        .map(|e| e["op"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        order,
        ["start", "stop", "start"],
        "a change is a stop, then a start"
    );

    g.remove_config("beta");
    let stop = g.wait_journal("stop", "beta", 1).await;
    assert_eq!(stop[0]["src"], "beta");
    g.wait_phase("beta", "Stopped").await;
    g.wait_phase("alpha", "Running").await;
    let listed = g.configs().await;
    let alpha = listed
        .iter()
        .find(|c| c["src"] == "alpha")
        .expect("alpha listed");
    assert_eq!(alpha["id"], starts[1]["id"]);
    assert!(alpha["since"].is_string() && alpha["message"].is_string());
}

#[tokio::test]
async fn rejected_configuration_is_in_error_until_its_value_changes() {
    let g = Gateway::up(UserServerKind::Python, &[("bad", r#"{"reject": true}"#)]).await;
    let entry = g.wait_phase("bad", "Error").await;
    assert_eq!(entry["message"], "invalid configuration: reject requested");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        g.journal_of("start", "bad").len(),
        1,
        "a 4xx is not retried"
    );
    g.set_config("bad", r#"{"count": 1}"#);
    g.wait_phase("bad", "Running").await;
    g.wait_sensor(1).await;
}

#[tokio::test]
async fn configurations_from_one_yaml_file() {
    let mut g = Gateway::new(UserServerKind::Node);
    let file = g.dir.path().join("gateway.yaml");
    std::fs::write(&file, "one: '{\"count\": 1}'\ntwo:\n  count: 1\n").expect("yaml");
    g.processor_env.push((
        "GATEWAY_PROCESSOR_CONFIG_MAP".into(),
        file.display().to_string(),
    ));
    g.start_all().await;
    let two = g.wait_journal("start", "two", 1).await;
    assert_eq!(
        two[0]["config"], r#"{"count":1}"#,
        "non-string values are passed as JSON"
    );
    g.wait_sensor(2).await;
    let tmp = g.dir.path().join("gateway.yaml.tmp");
    std::fs::write(&tmp, "{\"one\": \"{\\\"count\\\": 1}\"}").expect("json");
    std::fs::rename(&tmp, &file).expect("atomic replace");
    g.wait_journal("stop", "two", 1).await;
    g.wait_phase("two", "Stopped").await;
    assert_eq!(
        g.journal_of("start", "one").len(),
        1,
        "an unchanged key is left alone"
    );

    // A file beside it that changes all the time (the processor-client's own
    // log, when its output goes there) is no reason to read the
    // configurations again. It was: with the file broken, every read logged
    // a warning into that log, which made the next read, 20 a second.
    let metrics = g.pc_url("/metrics");
    let loads = || g.metric(&metrics, "processor_config_loads_total");
    let before = loads().await;
    std::fs::write(&file, "one: [unclosed\n").expect("broken");
    wait_for("the broken file to be read", || async {
        (loads().await > before).then_some(())
    })
    .await;
    let before = loads().await;
    let log = g.dir.path().join("processor-client.log");
    for i in 0..40 {
        std::fs::write(&log, format!("line {i}\n")).expect("log");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = loads().await;
    assert!(
        after - before <= 1.0,
        "{before} -> {after} reads while only a file beside the configurations changed"
    );
    std::fs::write(&file, "one: '{\"count\": 2}'\n").expect("mended");
    g.wait_journal("start", "one", 2).await;
}

#[tokio::test]
async fn plain_directory_of_files_is_watched_too() {
    let mut g = Gateway::new(UserServerKind::Python);
    let plain = g.dir.path().join("plain");
    std::fs::create_dir(&plain).expect("dir");
    std::fs::write(plain.join("first"), r#"{"count": 1}"#).expect("write");
    g.processor_env.push((
        "GATEWAY_PROCESSOR_CONFIG_MAP".into(),
        plain.display().to_string(),
    ));
    g.start_all().await;
    g.wait_journal("start", "first", 1).await;
    std::fs::write(plain.join("second"), r#"{"count": 1}"#).expect("write");
    g.wait_journal("start", "second", 1).await;
    std::fs::remove_file(plain.join("first")).expect("remove");
    g.wait_journal("stop", "first", 1).await;
    let mut phases = BTreeMap::new();
    for c in g.configs().await {
        phases.insert(
            c["src"].as_str().unwrap_or("").to_owned(),
            c["phase"].clone(),
        );
    }
    assert_eq!(phases["first"], "Stopped");
    let _: &Value = &phases["second"];

    // Nothing changes now, so the directory is not read again but by the
    // slow poll (5 s). Reading a file raises notifications of its own (open,
    // close); taken for changes, they made the processor-client read its
    // whole directory every 50 ms for as long as it ran.
    let metrics = g.pc_url("/metrics");
    let before = g.metric(&metrics, "processor_config_loads_total").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = g.metric(&metrics, "processor_config_loads_total").await;
    assert!(
        after - before <= 1.0,
        "{before} -> {after} reads in 2 s of nothing changing"
    );
}

#[tokio::test]
async fn missing_or_malformed_environment_exits_naming_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |bin_name: &str, env: &[(&str, &str)]| {
        let out = std::process::Command::new(bin(bin_name))
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .expect("run");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cfg = dir.path().display().to_string();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let not_pem = not_pem.display().to_string();
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "processor-client",
            vec![
                ("GATEWAY_NAME", "g"),
                ("GATEWAY_PROCESSOR_CONFIG_MAP", &cfg),
            ],
            "GATEWAY_PROCESSOR_SERVER_HTTP_PORT",
        ),
        (
            "processor-client",
            vec![
                ("GATEWAY_NAME", "g"),
                ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "1"),
            ],
            "GATEWAY_PROCESSOR_CONFIG_MAP",
        ),
        (
            "processor-client",
            vec![
                ("GATEWAY_PROCESSOR_CONFIG_MAP", &cfg),
                ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "1"),
            ],
            "GATEWAY_NAME",
        ),
        (
            "processor-client",
            vec![
                ("GATEWAY_NAME", "g"),
                ("GATEWAY_PROCESSOR_CONFIG_MAP", &cfg),
                ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "http"),
            ],
            "GATEWAY_PROCESSOR_SERVER_HTTP_PORT",
        ),
        (
            "processor-client",
            vec![
                ("GATEWAY_NAME", "g"),
                ("GATEWAY_PROCESSOR_CONFIG_MAP", "/no/such/dir"),
                ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "1"),
            ],
            "GATEWAY_PROCESSOR_CONFIG_MAP",
        ),
        ("transformer", vec![], "GATEWAY_NAME"),
        (
            "transformer",
            vec![("GATEWAY_NAME", "g"), ("TRANSFORMER_PORT", "nine")],
            "TRANSFORMER_PORT",
        ),
        (
            "transformer",
            vec![("GATEWAY_NAME", "g"), ("SENSOR_WATCHERS", "not a url")],
            "SENSOR_WATCHERS",
        ),
        (
            "transformer",
            vec![("GATEWAY_NAME", "g"), ("EVENT_PROTOCOL", "SMTP")],
            "EVENT_PROTOCOL",
        ),
        // Files for NATS are read at start: a wrong path used to show only
        // as connection attempts failing for ever with "IO error".
        (
            "transformer",
            vec![
                ("GATEWAY_NAME", "g"),
                ("EVENT_PROTOCOL", "NATS"),
                ("NATS_TLS_CA", "/no/such/ca.pem"),
            ],
            "NATS_TLS_CA",
        ),
        ("ingress", vec![("NATS_TLS_CA", &not_pem)], "NATS_TLS_CA"),
        (
            "ingress",
            vec![("NATS_CREDS", "/no/such/user.creds")],
            "NATS_CREDS",
        ),
        (
            "processor-client",
            vec![
                ("GATEWAY_NAME", "g"),
                ("GATEWAY_PROCESSOR_CONFIG_MAP", &cfg),
                ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "1"),
                ("GATEWAY_PROCESSOR_SHARING", "nats"),
                ("GATEWAY_PROCESSOR_LEASE", "10ms"),
            ],
            "GATEWAY_PROCESSOR_LEASE",
        ),
        // A URL where a host belongs, the commonest slip.
        (
            "processor-client",
            vec![
                ("GATEWAY_NAME", "g"),
                ("GATEWAY_PROCESSOR_CONFIG_MAP", &cfg),
                ("GATEWAY_PROCESSOR_SERVER_HTTP_PORT", "1"),
                ("GATEWAY_PROCESSOR_SERVER_HOST", "http://user-server"),
            ],
            "GATEWAY_PROCESSOR_SERVER_HOST: \"http://user-server\" does not make a URL",
        ),
    ];
    for (name, env, var) in cases {
        let (status, stderr) = run(name, &env);
        assert!(!status.success(), "{name} with {env:?} should fail");
        assert!(stderr.contains(var), "{name}: {stderr:?} should name {var}");
    }
}
