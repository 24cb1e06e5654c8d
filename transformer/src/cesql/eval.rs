//! Evaluating a parsed expression against an event: the spec's implicit
//! casts, its operators and built-in functions, each total (an error comes
//! with the zero value of the type it was after), and the first error kind
//! met kept beside the value.
//!
//! Errors travel up as the spec's test kit has them: an operator or function
//! whose own cast or arithmetic fails goes on with the zero value of the type
//! it wanted (`NOT 10` is `true`, with a cast error), while one whose operand
//! failed (an error anywhere in it, an attribute the event does not have)
//! gives the zero value of its own result without doing its work (`missing /
//! 0` is 0 with no math error; `true AND (1 != 1 / 0)` is false).

use super::parser::{Node, Op};
use super::{ErrorKind, Outcome, Value};

/// Where an expression reads attributes from: a CloudEvent's context
/// attributes and extensions, by name.
pub trait Attributes {
    fn get(&self, name: &str) -> Option<Value>;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Type {
    Bool,
    Int,
    Str,
}

impl Type {
    fn of(v: &Value) -> Type {
        match v {
            Value::Bool(_) => Type::Bool,
            Value::Int(_) => Type::Int,
            Value::Str(_) => Type::Str,
        }
    }

    fn zero(self) -> Value {
        match self {
            Type::Bool => Value::Bool(false),
            Type::Int => Value::Int(0),
            Type::Str => Value::Str(String::new()),
        }
    }
}

struct Eval<'a> {
    event: &'a dyn Attributes,
    error: Option<ErrorKind>,
}

pub fn evaluate(root: &Node, event: &dyn Attributes) -> Outcome {
    let mut e = Eval { event, error: None };
    let value = e.node(root).0;
    Outcome {
        value,
        error: e.error,
    }
}

/// A node's value, and whether an error arose in it (its parent then gives
/// its own zero value).
type Evaluated = (Value, bool);

impl Eval<'_> {
    fn fail(&mut self, kind: ErrorKind) {
        self.error.get_or_insert(kind);
    }

    /// Runs `f`, telling whether it raised an error of its own.
    fn own<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> (T, bool) {
        let before = self.error.take();
        let out = f(self);
        let raised = self.error.is_some();
        if before.is_some() {
            self.error = before;
        }
        (out, raised)
    }

    fn node(&mut self, node: &Node) -> Evaluated {
        match node {
            Node::Lit(v) => (v.clone(), false),
            Node::Attr(name) => match self.event.get(name) {
                Some(v) => (v, false),
                None => {
                    self.fail(ErrorKind::MissingAttribute);
                    (Value::Bool(false), true)
                }
            },
            Node::Exists(name) => (Value::Bool(self.event.get(name).is_some()), false),
            Node::Not(x) => match self.node(x) {
                (_, true) => (Value::Bool(false), true),
                (v, false) => {
                    let (b, raised) = self.own(|e| e.bool(v));
                    (Value::Bool(!b), raised)
                }
            },
            Node::Neg(x) => match self.node(x) {
                (_, true) => (Value::Int(0), true),
                (v, false) => self.own(|e| {
                    let i = e.int(v);
                    Value::Int(i.checked_neg().unwrap_or_else(|| {
                        e.fail(ErrorKind::Math);
                        i.wrapping_neg()
                    }))
                }),
            },
            Node::Bin(op, l, r) => self.binary(*op, l, r),
            Node::Like {
                value,
                pattern,
                negated,
            } => match self.node(value) {
                (_, true) => (Value::Bool(false), true),
                (v, false) => (
                    Value::Bool(like(&v.to_string(), pattern) != *negated),
                    false,
                ),
            },
            Node::In {
                value,
                set,
                negated,
            } => self.in_set(value, set, *negated),
            Node::Call(name, args) => self.call(name, args),
        }
    }

    fn in_set(&mut self, value: &Node, set: &[Node], negated: bool) -> Evaluated {
        let (v, failed) = self.node(value);
        if failed {
            return (Value::Bool(false), true);
        }
        let target = Type::of(&v);
        let mut found = false;
        let mut raised = false;
        for item in set {
            let (item, failed) = self.node(item);
            if failed {
                return (Value::Bool(false), true);
            }
            let (item, cast_failed) = self.own(|e| e.cast(item, target));
            raised |= cast_failed;
            found |= item == v;
        }
        (Value::Bool(found != negated), raised)
    }

    fn binary(&mut self, op: Op, l: &Node, r: &Node) -> Evaluated {
        let result = match op {
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod => Type::Int,
            _ => Type::Bool,
        };
        let (left, failed) = self.node(l);
        if failed {
            return (result.zero(), true);
        }
        if let Op::And | Op::Or | Op::Xor = op {
            let (a, raised_a) = self.own(|e| e.bool(left));
            if (op == Op::And && !a) || (op == Op::Or && a) {
                return (Value::Bool(a), raised_a);
            }
            let (right, failed) = self.node(r);
            if failed {
                return (Value::Bool(false), true);
            }
            let (b, raised_b) = self.own(|e| e.bool(right));
            let v = match op {
                Op::And => a && b,
                Op::Or => a || b,
                _ => a != b,
            };
            return (Value::Bool(v), raised_a || raised_b);
        }
        let (right, failed) = self.node(r);
        if failed {
            return (result.zero(), true);
        }
        self.own(|e| match op {
            Op::Eq | Op::NotEq => {
                // `=` is defined for each type: the right operand's decides.
                let left = e.cast(left, Type::of(&right));
                Value::Bool((left == right) == (op == Op::Eq))
            }
            Op::Less | Op::LessEq | Op::Greater | Op::GreaterEq => {
                let (a, b) = (e.int(left), e.int(right));
                Value::Bool(match op {
                    Op::Less => a < b,
                    Op::LessEq => a <= b,
                    Op::Greater => a > b,
                    _ => a >= b,
                })
            }
            _ => {
                let (a, b) = (e.int(left), e.int(right));
                Value::Int(e.arithmetic(op, a, b))
            }
        })
    }

    fn arithmetic(&mut self, op: Op, a: i32, b: i32) -> i32 {
        if matches!(op, Op::Div | Op::Mod) && b == 0 {
            self.fail(ErrorKind::Math);
            return 0;
        }
        let (checked, wrapped) = match op {
            Op::Add => (a.checked_add(b), a.wrapping_add(b)),
            Op::Sub => (a.checked_sub(b), a.wrapping_sub(b)),
            Op::Mul => (a.checked_mul(b), a.wrapping_mul(b)),
            Op::Div => (a.checked_div(b), a.wrapping_div(b)),
            _ => (a.checked_rem(b), a.wrapping_rem(b)),
        };
        checked.unwrap_or_else(|| {
            self.fail(ErrorKind::Math);
            wrapped
        })
    }

    /// The implicit cast to `target`; a failure gives that type's zero value.
    fn cast(&mut self, v: Value, target: Type) -> Value {
        match (v, target) {
            (v, t) if Type::of(&v) == t => v,
            (Value::Bool(b), Type::Int) => Value::Int(i32::from(b)),
            (Value::Str(s), Type::Int) => match parse_int(&s) {
                Some(i) => Value::Int(i),
                None => self.cast_failed(Type::Int),
            },
            (Value::Str(s), Type::Bool) => match parse_bool(&s) {
                Some(b) => Value::Bool(b),
                None => self.cast_failed(Type::Bool),
            },
            (Value::Int(_), Type::Bool) => self.cast_failed(Type::Bool),
            (v, _) => Value::Str(v.to_string()),
        }
    }

    fn cast_failed(&mut self, t: Type) -> Value {
        self.fail(ErrorKind::Cast);
        t.zero()
    }

    fn bool(&mut self, v: Value) -> bool {
        self.cast(v, Type::Bool) == Value::Bool(true)
    }

    fn int(&mut self, v: Value) -> i32 {
        match self.cast(v, Type::Int) {
            Value::Int(i) => i,
            _ => 0,
        }
    }

    fn call(&mut self, name: &str, args: &[Node]) -> Evaluated {
        let Some(result) = signature(name, args.len()) else {
            self.fail(ErrorKind::MissingFunction);
            return (Value::Bool(false), true);
        };
        let mut values = Vec::with_capacity(args.len());
        for a in args {
            match self.node(a) {
                (v, false) => values.push(v),
                (_, true) => return (result.zero(), true),
            }
        }
        self.own(|e| e.builtin(name, values))
    }

    fn builtin(&mut self, name: &str, mut v: Vec<Value>) -> Value {
        let mut arg = |i: usize| std::mem::replace(&mut v[i], Value::Bool(false));
        match name {
            "INT" => {
                let x = arg(0);
                self.cast(x, Type::Int)
            }
            "BOOL" => match arg(0) {
                Value::Int(i) => Value::Bool(i != 0),
                x => self.cast(x, Type::Bool),
            },
            "STRING" => Value::Str(arg(0).to_string()),
            "IS_BOOL" => Value::Bool(match arg(0) {
                Value::Bool(_) => true,
                Value::Str(s) => parse_bool(&s).is_some(),
                Value::Int(_) => false,
            }),
            "IS_INT" => Value::Bool(match arg(0) {
                Value::Int(_) => true,
                Value::Str(s) => parse_int(&s).is_some(),
                Value::Bool(_) => false,
            }),
            "ABS" => {
                let x = arg(0);
                let i = self.int(x);
                Value::Int(i.checked_abs().unwrap_or_else(|| {
                    self.fail(ErrorKind::Math);
                    i32::MAX
                }))
            }
            "LENGTH" => Value::Int(arg(0).to_string().chars().count() as i32),
            "LOWER" => Value::Str(arg(0).to_string().to_lowercase()),
            "UPPER" => Value::Str(arg(0).to_string().to_uppercase()),
            "TRIM" => Value::Str(arg(0).to_string().trim().to_owned()),
            "CONCAT" => Value::Str(v.iter().map(Value::to_string).collect()),
            "CONCAT_WS" => {
                let sep = v[0].to_string();
                let parts: Vec<String> = v[1..].iter().map(Value::to_string).collect();
                Value::Str(parts.join(&sep))
            }
            "LEFT" | "RIGHT" => {
                let (x, n) = (arg(0).to_string(), arg(1));
                let n = self.int(n);
                self.left_right(name == "LEFT", x, n)
            }
            _ => {
                let (x, pos) = (arg(0).to_string(), arg(1));
                let pos = self.int(pos);
                let len = v.get(2).cloned().map(|l| self.int(l));
                self.substring(&x, pos, len)
            }
        }
    }

    fn left_right(&mut self, left: bool, x: String, n: i32) -> Value {
        if n < 0 {
            self.fail(ErrorKind::FunctionEvaluation);
            return Value::Str(x);
        }
        let chars: Vec<char> = x.chars().collect();
        let n = (n as usize).min(chars.len());
        Value::Str(if left {
            chars[..n].iter().collect()
        } else {
            chars[chars.len() - n..].iter().collect()
        })
    }

    /// SUBSTRING: 1-based `pos` from the start, or from the end when
    /// negative; 0 is the empty string; `len` at most what is left.
    fn substring(&mut self, x: &str, pos: i32, len: Option<i32>) -> Value {
        let chars: Vec<char> = x.chars().collect();
        let n = chars.len() as i64;
        let p = i64::from(pos);
        if p > n || p < -n || len.is_some_and(|l| l < 0) {
            self.fail(ErrorKind::FunctionEvaluation);
            return Value::Str(String::new());
        }
        if p == 0 {
            return Value::Str(String::new());
        }
        let start = if p > 0 { p - 1 } else { n + p } as usize;
        let end = match len {
            Some(l) => (start + l as usize).min(chars.len()),
            None => chars.len(),
        };
        Value::Str(chars[start..end].iter().collect())
    }
}

/// The result type of built-in `name` called with `arity` arguments, or
/// `None` when there is no such function (of that arity).
fn signature(name: &str, arity: usize) -> Option<Type> {
    Some(match (name, arity) {
        ("INT" | "ABS" | "LENGTH", 1) => Type::Int,
        ("BOOL" | "IS_BOOL" | "IS_INT", 1) => Type::Bool,
        ("STRING" | "LOWER" | "UPPER" | "TRIM", 1) => Type::Str,
        ("LEFT" | "RIGHT", 2) | ("SUBSTRING", 2 | 3) => Type::Str,
        ("CONCAT", _) => Type::Str,
        ("CONCAT_WS", n) if n >= 1 => Type::Str,
        _ => return None,
    })
}

fn parse_int(s: &str) -> Option<i32> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    if digits.is_empty() || digits.starts_with('+') {
        return None;
    }
    digits.parse().ok()
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// SQL's LIKE: `%` any run of characters, `_` one character, `\%` and `\_`
/// those characters themselves (any other backslash is itself).
fn like(text: &str, pattern: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum P {
        Any,
        One,
        Char(char),
    }
    let mut parts = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        parts.push(match c {
            '\\' => match chars.peek() {
                Some(&e @ ('%' | '_')) => {
                    chars.next();
                    P::Char(e)
                }
                _ => P::Char('\\'),
            },
            '%' => P::Any,
            '_' => P::One,
            c => P::Char(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // Greedy matching with one point to return to after the last `%`.
    let (mut t, mut p) = (0, 0);
    let mut back: Option<(usize, usize)> = None;
    while t < text.len() {
        match parts.get(p) {
            Some(P::Any) => {
                back = Some((p, t));
                p += 1;
            }
            Some(P::One) => {
                t += 1;
                p += 1;
            }
            Some(P::Char(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            _ => match back {
                Some((bp, bt)) => {
                    p = bp + 1;
                    t = bt + 1;
                    back = Some((bp, bt + 1));
                }
                None => return false,
            },
        }
    }
    parts[p..].iter().all(|x| *x == P::Any)
}

#[cfg(test)]
mod tests {
    use super::super::{ErrorKind as E, Expression, JsonEvent, Value as V};

    fn event() -> JsonEvent {
        let e = serde_json::json!({
            "specversion": "1.0", "id": "myId", "source": "http://localhost/source",
            "type": "com.example.order", "subject": "cfg07", "hop": "5", "ttl": "10",
            "mybool": true, "myint": 10, "myext": "abc123123%456_dzf"
        });
        JsonEvent(e.as_object().cloned().unwrap_or_default())
    }

    fn eval(expr: &str) -> (V, Option<E>) {
        let o = Expression::parse(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .evaluate(&event());
        (o.value, o.error)
    }

    fn ok(expr: &str, v: V) {
        assert_eq!(eval(expr), (v, None), "{expr}");
    }

    fn err(expr: &str, v: V, kind: E) {
        assert_eq!(eval(expr), (v, Some(kind)), "{expr}");
    }

    #[test]
    fn literals_and_attributes() {
        ok("TRUE", V::Bool(true));
        ok("false", V::Bool(false));
        ok("0", V::Int(0));
        ok("-2147483648", V::Int(i32::MIN));
        ok(r#"'a"b\'c'"#, V::Str("a\"b'c".into()));
        ok("id", V::Str("myId".into()));
        ok("source", V::Str("http://localhost/source".into()));
    }

    #[test]
    fn operators_follow_the_spec_precedence_and_casts() {
        ok("4 * 2 + 4 / 2", V::Int(10));
        ok("4 * (2 + 4) / 2", V::Int(12));
        ok("7 / -2", V::Int(-3));
        ok("-7 % 2", V::Int(-1));
        ok("'5' + 3", V::Int(8));
        ok("5 + TRUE", V::Int(6));
        ok("--'10'", V::Int(10));
        ok("-TRUE", V::Int(-1));
        ok("'TRUE' = true", V::Bool(true));
        ok("true = 'TRUE'", V::Bool(false));
        ok("hop < ttl", V::Bool(true));
        ok("int(hop) < INT(ttl) and int(hop) < 1000", V::Bool(true));
        ok("myint = '10'", V::Bool(true));
        ok("mybool", V::Bool(true));
        ok("NOT 'FALSE'", V::Bool(true));
        ok("1 <> 2", V::Bool(true));
        ok("FALSE AND TRUE OR TRUE", V::Bool(false));
        ok("TRUE XOR TRUE", V::Bool(false));
        ok("false and (1 != 1 / 0)", V::Bool(false));
        ok("true or (1 != 1 / 0)", V::Bool(true));
        err("true and (1 != 1 / 0)", V::Bool(false), E::Math);
        err("5 % 0", V::Int(0), E::Math);
        err("2147483647 + 1", V::Int(i32::MIN), E::Math);
        err("NOT 10", V::Bool(true), E::Cast);
        err("'abc' + 1", V::Int(1), E::Cast);
    }

    #[test]
    fn missing_attributes_give_the_zero_value() {
        err("missing", V::Bool(false), E::MissingAttribute);
        err("missing = 2", V::Bool(false), E::MissingAttribute);
        err("missing / 0", V::Int(0), E::MissingAttribute);
        err("-missing", V::Int(0), E::MissingAttribute);
        err("NOT missing", V::Bool(false), E::MissingAttribute);
        err("missing LIKE 'a%'", V::Bool(false), E::MissingAttribute);
        err("LENGTH(missing)", V::Int(0), E::MissingAttribute);
        err(
            "id LIKE 'x%' OR missing LIKE '%'",
            V::Bool(false),
            E::MissingAttribute,
        );
        ok("EXISTS subject", V::Bool(true));
        ok("EXISTS missing", V::Bool(false));
        ok("EXISTS id", V::Bool(true));
    }

    #[test]
    fn like_in_and_their_negations() {
        ok("'abc' LIKE 'a%b%c'", V::Bool(true));
        ok("'azzzbzzzc' LIKE 'a%b%c'", V::Bool(true));
        ok("'ab.cde' LIKE '.%.%.'", V::Bool(false));
        ok("'azbzc' LIKE 'a_b_c'", V::Bool(true));
        ok("'abc' LIKE 'a_b_c'", V::Bool(false));
        ok(r"'a_b_c' LIKE 'a\_b\_c'", V::Bool(true));
        ok(r"'azbzc' LIKE 'a\_b\_c'", V::Bool(false));
        ok(r"'ab\c' LIKE 'ab\c'", V::Bool(true));
        ok(r"myext LIKE 'abc%123\%456\_d_f'", V::Bool(true));
        ok("'abc' NOT LIKE 'abc'", V::Bool(false));
        ok("234 LIKE '23_'", V::Bool(true));
        ok("TRUE LIKE 'tr%'", V::Bool(true));
        ok("'' LIKE '%'", V::Bool(true));
        ok("subject IN ('cfg01', 'cfg07')", V::Bool(true));
        ok("subject NOT IN ('cfg01', 'cfg07')", V::Bool(false));
        ok("myint IN ('10', '11')", V::Bool(true));
        err("myint IN ('x', 10)", V::Bool(true), E::Cast);
        ok("'10' IN (10, 11)", V::Bool(true));
    }

    #[test]
    fn functions() {
        ok("LENGTH(TRUE)", V::Int(4));
        ok("CONCAT()", V::Str(String::new()));
        ok("CONCAT('a', 1, TRUE)", V::Str("a1true".into()));
        ok("CONCAT_WS(',', 'a', 'b')", V::Str("a,b".into()));
        ok("CONCAT_WS(',')", V::Str(String::new()));
        err("CONCAT_WS()", V::Bool(false), E::MissingFunction);
        err("NOPE(1)", V::Bool(false), E::MissingFunction);
        err("ABS(1, 2)", V::Bool(false), E::MissingFunction);
        ok("lower('AbC')", V::Str("abc".into()));
        ok("UPPER('abc')", V::Str("ABC".into()));
        ok("TRIM('  a b  ')", V::Str("a b".into()));
        ok("LEFT('abc', 2)", V::Str("ab".into()));
        ok("RIGHT('abc', 10)", V::Str("abc".into()));
        err(
            "LEFT('abc', -2)",
            V::Str("abc".into()),
            E::FunctionEvaluation,
        );
        ok("SUBSTRING('Sakila', -3)", V::Str("ila".into()));
        ok("SUBSTRING('Sakila', -5, 3)", V::Str("aki".into()));
        ok("SUBSTRING('abcdef', 2, 4)", V::Str("bcde".into()));
        ok("SUBSTRING('abc', 0, 1)", V::Str(String::new()));
        err(
            "SUBSTRING('abcdef', 10)",
            V::Str(String::new()),
            E::FunctionEvaluation,
        );
        err(
            "SUBSTRING('abcdef', 1, -1)",
            V::Str(String::new()),
            E::FunctionEvaluation,
        );
        ok("ABS(-10)", V::Int(10));
        err("ABS(-2147483648)", V::Int(i32::MAX), E::Math);
        ok("INT(TRUE)", V::Int(1));
        err("INT('ABC')", V::Int(0), E::Cast);
        ok("BOOL(-50)", V::Bool(true));
        ok("BOOL('false')", V::Bool(false));
        err("BOOL('ABC')", V::Bool(false), E::Cast);
        ok("STRING(-1)", V::Str("-1".into()));
        ok("IS_INT('12')", V::Bool(true));
        ok("IS_BOOL('x')", V::Bool(false));
    }

    #[test]
    fn what_does_not_parse_says_where() {
        for bad in [
            "",
            "1 +",
            "(1",
            "1 IN ()",
            "a LIKE b",
            "EXISTS 1",
            "2147483648",
            "'open",
            "1 2",
            "AND",
        ] {
            assert!(Expression::parse(bad).is_err(), "{bad:?} parsed");
        }
        let e = Expression::parse("1 + )").unwrap_err();
        assert_eq!(e.at, 4, "{e}");
    }
}
