//! `transformer cesql EXPRESSION < event.json`, the binary as an operator runs
//! it: one JSON line with the value and the error kind, exit 0; a parse error
//! exit 2 with a detail; an event that is not JSON exit 1.

use std::io::Write as _;
use std::process::{Command, Stdio};

use gateway_tests::bin;
use serde_json::{json, Value};

fn cesql(expression: &str, event: &str) -> (Value, i32) {
    let mut child = Command::new(bin("transformer"))
        .args(["cesql", expression])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the transformer");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(event.as_bytes())
        .expect("write the event");
    let out = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stdout);
    let line: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{expression}: not one JSON line ({e}): {text}"));
    (line, out.status.code().unwrap_or(-1))
}

const EVENT: &str = r#"{"specversion": "1.0", "id": "e1", "source": "gw", "type": "order",
  "subject": "cfg07", "sequence": "5", "mybool": true, "myint": 10, "data": {"x": 1}}"#;

#[test]
fn expressions_answer_their_value_and_error_kind() {
    for (expression, value, error) in [
        ("subject = 'cfg07'", json!(true), Value::Null),
        ("sequence = 5", json!(true), Value::Null),
        ("myint * 2", json!(20), Value::Null),
        ("mybool AND EXISTS subject", json!(true), Value::Null),
        (
            "CONCAT(type, '-', subject)",
            json!("order-cfg07"),
            Value::Null,
        ),
        ("EXISTS data", json!(false), Value::Null),
        ("5 / 0", json!(0), json!("math")),
        ("INT('x')", json!(0), json!("cast")),
        ("missing = 1", json!(false), json!("missingAttribute")),
        ("NOPE()", json!(false), json!("missingFunction")),
        ("LEFT('abc', -1)", json!("abc"), json!("functionEvaluation")),
    ] {
        let (line, status) = cesql(expression, EVENT);
        assert_eq!(status, 0, "{expression}: {line}");
        assert_eq!(line["value"], value, "{expression}: {line}");
        assert_eq!(line["error"], error, "{expression}: {line}");
    }
}

#[test]
fn a_parse_error_exits_2_and_a_bad_event_1() {
    let (line, status) = cesql("subject = ", EVENT);
    assert_eq!(status, 2, "{line}");
    assert_eq!(line["error"], "parse");
    assert_eq!(line["value"], Value::Null);
    assert!(
        line["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{line}"
    );
    let (line, status) = cesql("TRUE", "not json");
    assert_eq!(status, 1, "{line}");
    // No event at all: expressions of literals still evaluate.
    let (line, status) = cesql("1 + 1", "");
    assert_eq!((status, line["value"].clone()), (0, json!(2)), "{line}");
}
