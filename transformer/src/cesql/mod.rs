//! CESQL v1, the CloudEvents SQL expression language: the filter dialect
//! `cesql` of a Knative Trigger, and `transformer cesql EXPRESSION`, which
//! evaluates one against an event on stdin so an operator can try it before
//! deploying it.
//!
//! An expression is parsed once ([`Expression::parse`]: a parse error refuses
//! it) and evaluated for each event ([`Expression::evaluate`]). Evaluation is
//! total, as the language is: every operator and function returns a value of
//! its type, and what went wrong (a cast, a division by zero, a missing
//! attribute, an unknown function) is reported beside it, the first error
//! kind only, as the spec's `error` field of its test kit names them.

mod eval;
mod lexer;
mod parser;

use std::fmt;

pub use eval::Attributes;
use parser::Node;

/// A value of the language: its three types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Int(i32),
    Str(String),
}

impl Value {
    /// The value as JSON: a boolean, a number or a string.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Str(s) => serde_json::Value::String(s.clone()),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => f.write_str(s),
        }
    }
}

/// The kinds of error the spec names (a parse error refuses the expression;
/// the others come with a value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Parse,
    Math,
    Cast,
    MissingFunction,
    FunctionEvaluation,
    MissingAttribute,
    Generic,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Math => "math",
            ErrorKind::Cast => "cast",
            ErrorKind::MissingFunction => "missingFunction",
            ErrorKind::FunctionEvaluation => "functionEvaluation",
            ErrorKind::MissingAttribute => "missingAttribute",
            ErrorKind::Generic => "generic",
        }
    }
}

/// An expression that does not parse: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CESQL parse error at character {at}: {reason}")]
pub struct ParseError {
    /// Characters from the start of the expression.
    pub at: usize,
    pub reason: String,
}

/// What evaluating an expression gave: its value, and the first error met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub value: Value,
    pub error: Option<ErrorKind>,
}

impl Outcome {
    /// Whether a filter passes the event: a true boolean, with no error (the
    /// spec's rule for a filter predicate).
    pub fn passes(&self) -> bool {
        self.error.is_none() && self.value == Value::Bool(true)
    }
}

/// A parsed expression, ready to evaluate against any number of events.
#[derive(Debug, Clone)]
pub struct Expression {
    root: Node,
}

impl Expression {
    pub fn parse(text: &str) -> Result<Expression, ParseError> {
        let tokens = lexer::tokens(text)?;
        Ok(Expression {
            root: parser::parse(&tokens, text.chars().count())?,
        })
    }

    pub fn evaluate(&self, event: &dyn Attributes) -> Outcome {
        eval::evaluate(&self.root, event)
    }
}

/// A CloudEvent in the JSON format as attributes: every member but the data,
/// strings as strings, booleans and integers (within 32 bits) as themselves.
pub struct JsonEvent(pub serde_json::Map<String, serde_json::Value>);

impl Attributes for JsonEvent {
    fn get(&self, name: &str) -> Option<Value> {
        if name == "data" || name == "data_base64" {
            return None;
        }
        match self.0.get(name)? {
            serde_json::Value::String(s) => Some(Value::Str(s.clone())),
            serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
            serde_json::Value::Number(n) => {
                Some(match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                    Some(i) => Value::Int(i),
                    None => Value::Str(n.to_string()),
                })
            }
            serde_json::Value::Null => None,
            other => Some(Value::Str(other.to_string())),
        }
    }
}

/// The transformer's own CloudEvent as attributes (every one a string).
impl Attributes for crate::cloudevent::CloudEvent {
    fn get(&self, name: &str) -> Option<Value> {
        let text = match name {
            "specversion" => Some(crate::cloudevent::SPEC_VERSION),
            "id" => Some(self.id.as_str()),
            "source" => Some(self.source.as_str()),
            "type" => Some(self.ty.as_str()),
            "subject" => self.subject.as_deref(),
            "time" => self.time.as_deref(),
            "datacontenttype" => self.datacontenttype.as_deref(),
            "dataschema" => self.dataschema.as_deref(),
            _ => self
                .extensions
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
        };
        text.map(|t| Value::Str(t.to_owned()))
    }
}

/// `transformer cesql EXPRESSION` as a command: the expression from the
/// arguments, the event from stdin, the answer on stdout.
pub fn cli(args: &[String]) -> std::process::ExitCode {
    use std::io::Read as _;
    let [expression] = args else {
        println!(
            "{}",
            serde_json::json!({ "value": null, "error": "generic", "detail": "usage: transformer cesql 'EXPRESSION' < event.json" })
        );
        return std::process::ExitCode::from(1);
    };
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        println!(
            "{}",
            serde_json::json!({ "value": null, "error": "generic", "detail": format!("cannot read the event from stdin: {e}") })
        );
        return std::process::ExitCode::from(1);
    }
    let (line, status) = run_cli(expression, &input);
    println!("{line}");
    std::process::ExitCode::from(status)
}

/// `transformer cesql EXPRESSION`, with a CloudEvent in the JSON format on
/// `input` (empty: an event with no attributes). Returns the line to print
/// and the exit status: 0 with the value and the error kind (or null), 2
/// with `"error": "parse"` and a detail for an expression that does not
/// parse, 1 when the input is not a JSON object.
pub fn run_cli(expression: &str, input: &[u8]) -> (String, u8) {
    let line = |v: serde_json::Value| v.to_string();
    let expr = match Expression::parse(expression) {
        Ok(e) => e,
        Err(e) => {
            let out =
                serde_json::json!({ "value": null, "error": "parse", "detail": e.to_string() });
            return (line(out), 2);
        }
    };
    let event = if input.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<serde_json::Value>(input) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => {
                return (
                    line(
                        serde_json::json!({ "value": null, "error": "generic", "detail": "the event on stdin is not a JSON object (a CloudEvent in the JSON format)" }),
                    ),
                    1,
                )
            }
            Err(e) => {
                return (
                    line(
                        serde_json::json!({ "value": null, "error": "generic", "detail": format!("the event on stdin is not JSON: {e}") }),
                    ),
                    1,
                )
            }
        }
    };
    let outcome = expr.evaluate(&JsonEvent(event));
    let out = serde_json::json!({
        "value": outcome.value.to_json(),
        "error": outcome.error.map(ErrorKind::as_str),
    });
    (line(out), 0)
}
