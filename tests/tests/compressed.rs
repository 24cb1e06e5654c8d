//! Compressed request bodies, posted by Python's standard library as a producer
//! that gzips what it sends would: `gzip` and `deflate` are decoded on both
//! event endpoints, a body that decodes past the limit is 413, a coding not
//! taken is 415 and a body that is not its coding is 400, each with a JSON error.

use std::process::Command;

use gateway_tests::*;

/// Posts `{"src": "alpha", "payload": base64(DATA)}` to each URL in the coding
/// given, and prints one line per URL: the status and the body of the answer.
const CLIENT: &str = r#"
import base64, gzip, json, sys, urllib.error, urllib.request, zlib
coding, data = sys.argv[1], sys.argv[2].encode()
body = json.dumps({"src": "alpha", "payload": base64.b64encode(data).decode()}).encode()
if coding == "gzip": body = gzip.compress(body)
elif coding == "deflate": body = zlib.compress(body)
elif coding == "bomb": coding, body = "gzip", gzip.compress(b" " * (8 << 20))
elif coding == "liar": coding = "gzip"
for url in sys.argv[3:]:
    req = urllib.request.Request(url, data=body, method="POST",
        headers={"Content-Type": "application/json", "Content-Encoding": coding})
    try:
        with urllib.request.urlopen(req, timeout=30) as r: print(r.status, r.read().decode())
    except urllib.error.HTTPError as e: print(e.code, e.read().decode())
"#;

/// Runs the client; the answers, one `(status, JSON)` per URL.
fn post(coding: &str, data: &str, urls: &[String]) -> Vec<(u16, serde_json::Value)> {
    let out = run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(CLIENT)
            .arg(coding)
            .arg(data)
            .args(urls),
        "python client",
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (status, body) = line.split_once(' ').expect("status and body");
            let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            (status.parse().expect("status"), json)
        })
        .collect()
}

#[tokio::test]
async fn gzip_and_deflate_bodies_are_decoded_and_bounded() {
    let g = Gateway::up(UserServerKind::Python, &[("alpha", r#"{"count": 0}"#)]).await;
    g.wait_phase("alpha", "Running").await;
    let urls = [g.pc_url("/event"), g.tr_url("/")];

    for (coding, data) in [("gzip", r#"{"n": 1}"#), ("deflate", r#"{"n": 2}"#)] {
        for (status, json) in post(coding, data, &urls) {
            assert_eq!(status, 200, "{coding}: {json}");
            assert!(json["id"].is_string(), "{json}");
        }
    }
    let events = g.wait_sensor(4).await;
    let mut seen: Vec<i64> = events
        .iter()
        .filter(|e| e["subject"] == "alpha")
        .filter_map(|e| e["data"]["n"].as_i64())
        .collect();
    seen.sort();
    assert_eq!(seen, [1, 1, 2, 2], "{events:#?}");

    for (coding, status, error, detail) in [
        ("bomb", 413, "too_large", "decoded from gzip"),
        ("br", 415, "unsupported_media_type", "gzip, deflate"),
        ("liar", 400, "bad_request", "does not decode as gzip"),
    ] {
        for (got, json) in post(coding, "{}", &urls) {
            assert_eq!(got, status, "{coding}: {json}");
            assert_eq!(json["error"], error, "{coding}: {json}");
            let said = json["detail"].as_str().unwrap_or("");
            assert!(said.contains(detail), "{coding}: {said}");
        }
    }
}
