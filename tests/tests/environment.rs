//! docs/environment.md against the code: each of its tables is exactly what the
//! binaries declare (name, default, meaning), so the reference a user reads
//! cannot drift from what the processes do. `UPDATE_DOCS=1` rewrites the tables
//! from the code instead of failing. The list of names the binaries check
//! near misses against is checked here too.

use gateway_common::env::{markdown_table, Var, SHARED};
use gateway_tests::root;

/// The sections of docs/environment.md and the variables each lists.
fn sections() -> [(&'static str, Vec<Var>); 5] {
    [
        ("## Both", SHARED.to_vec()),
        (
            "## processor-client",
            processor_client::config::VARS.to_vec(),
        ),
        ("## transformer", transformer::config::VARS.to_vec()),
        ("## ingress", ingress::config::VARS.to_vec()),
        ("## NATS connection", gateway_common::nats::VARS.to_vec()),
    ]
}

/// `text` with the table under `heading` replaced by `table`.
fn with_table(text: &str, heading: &str, table: &str) -> String {
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("docs/environment.md has no {heading:?} section"));
    let table_start = start
        + text[start..]
            .find("\n|")
            .unwrap_or_else(|| panic!("{heading}: no table"))
        + 1;
    let mut table_end = table_start;
    for line in text[table_start..].split_inclusive('\n') {
        if !line.starts_with('|') {
            break;
        }
        table_end += line.len();
    }
    format!("{}{table}{}", &text[..table_start], &text[table_end..])
}

#[test]
fn the_tables_of_docs_environment_are_what_the_code_declares() {
    let path = root().join("docs/environment.md");
    let text = std::fs::read_to_string(&path).expect("docs/environment.md");
    let mut expected = text.clone();
    for (heading, vars) in sections() {
        expected = with_table(&expected, heading, &markdown_table(&vars));
    }
    if text != expected && std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &expected).expect("write docs/environment.md");
        return;
    }
    assert!(
        text == expected,
        "docs/environment.md differs from the variables the code declares; \
         run `UPDATE_DOCS=1 cargo test -p gateway-tests --test environment` and commit.\n\
         Expected:\n{expected}"
    );
}

/// The list the binaries check near misses against is every variable they
/// declare, no more (besides what user servers read), no less.
#[test]
fn the_spelling_list_is_every_declared_variable() {
    let mut declared: Vec<&str> = sections()
        .iter()
        .flat_map(|(_, vars)| vars.iter().map(|v| v.name))
        .collect();
    declared.sort_unstable();
    declared.dedup();
    let mut known = gateway_common::spelling::KNOWN.to_vec();
    known.sort_unstable();
    assert_eq!(
        known, declared,
        "gateway_common::spelling::KNOWN differs from the declared variables"
    );
}
