//! CESQL's grammar, with the precedence of the spec's own grammar (highest
//! first): a function call, `NOT` and unary `-`; `LIKE` and `IN` (and their
//! `NOT`), and `EXISTS`; `*`, `/`, `%`; `+`, `-`; the comparisons; and
//! `AND`, `OR`, `XOR` together, grouping to the right.

use super::lexer::Tok;
use super::{ParseError, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    And,
    Or,
    Xor,
    Eq,
    NotEq,
    Less,
    LessEq,
    Greater,
    GreaterEq,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone)]
pub enum Node {
    Lit(Value),
    Attr(String),
    Exists(String),
    Not(Box<Node>),
    Neg(Box<Node>),
    Bin(Op, Box<Node>, Box<Node>),
    Like {
        value: Box<Node>,
        pattern: String,
        negated: bool,
    },
    In {
        value: Box<Node>,
        set: Vec<Node>,
        negated: bool,
    },
    /// A function call; the name upper-cased.
    Call(String, Vec<Node>),
}

struct Parser<'a> {
    toks: &'a [(Tok, usize)],
    at: usize,
    /// Characters in the expression, where an error at the end points.
    end: usize,
}

/// The expression `toks` make, all of them.
pub fn parse(toks: &[(Tok, usize)], end: usize) -> Result<Node, ParseError> {
    let mut p = Parser { toks, at: 0, end };
    if toks.is_empty() {
        return Err(p.error("the expression is empty"));
    }
    let node = p.logic()?;
    if p.at < toks.len() {
        return Err(p.error("unexpected token after the expression"));
    }
    Ok(node)
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(t, _)| t)
    }

    fn next(&mut self) -> Option<&Tok> {
        let t = self.toks.get(self.at).map(|(t, _)| t);
        self.at += 1;
        t
    }

    fn error(&self, reason: &str) -> ParseError {
        let at = self.toks.get(self.at).map_or(self.end, |(_, at)| *at);
        let found = match self.toks.get(self.at) {
            Some((t, _)) => format!(" (found {t:?})"),
            None => " (found the end)".into(),
        };
        ParseError {
            at,
            reason: format!("{reason}{found}"),
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ParseError> {
        if self.peek() == Some(&tok) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    /// `AND`, `OR`, `XOR`: one level, grouping to the right.
    fn logic(&mut self) -> Result<Node, ParseError> {
        let left = self.comparison()?;
        let op = match self.peek() {
            Some(Tok::And) => Op::And,
            Some(Tok::Or) => Op::Or,
            Some(Tok::Xor) => Op::Xor,
            _ => return Ok(left),
        };
        self.at += 1;
        let right = self.logic()?;
        Ok(Node::Bin(op, Box::new(left), Box::new(right)))
    }

    fn comparison(&mut self) -> Result<Node, ParseError> {
        let mut left = self.additive()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Eq) => Op::Eq,
                Some(Tok::NotEq) => Op::NotEq,
                Some(Tok::Less) => Op::Less,
                Some(Tok::LessEq) => Op::LessEq,
                Some(Tok::Greater) => Op::Greater,
                Some(Tok::GreaterEq) => Op::GreaterEq,
                _ => return Ok(left),
            };
            self.at += 1;
            let right = self.additive()?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn additive(&mut self) -> Result<Node, ParseError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Plus) => Op::Add,
                Some(Tok::Minus) => Op::Sub,
                _ => return Ok(left),
            };
            self.at += 1;
            let right = self.multiplicative()?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> Result<Node, ParseError> {
        let mut left = self.postfix()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Star) => Op::Mul,
                Some(Tok::Slash) => Op::Div,
                Some(Tok::Percent) => Op::Mod,
                _ => return Ok(left),
            };
            self.at += 1;
            let right = self.postfix()?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
    }

    /// `x [NOT] LIKE 'pattern'` and `x [NOT] IN (a, b, ...)`.
    fn postfix(&mut self) -> Result<Node, ParseError> {
        let mut value = self.unary()?;
        loop {
            let negated = self.peek() == Some(&Tok::Not)
                && matches!(
                    self.toks.get(self.at + 1).map(|(t, _)| t),
                    Some(Tok::Like | Tok::In)
                );
            if negated {
                self.at += 1;
            }
            match self.peek() {
                Some(Tok::Like) => {
                    self.at += 1;
                    let pattern = match self.next() {
                        Some(Tok::Str(s)) => s.clone(),
                        _ => {
                            self.at -= 1;
                            return Err(self.error("LIKE takes a string literal pattern"));
                        }
                    };
                    value = Node::Like {
                        value: Box::new(value),
                        pattern,
                        negated,
                    };
                }
                Some(Tok::In) => {
                    self.at += 1;
                    self.expect(Tok::LParen, "IN takes a set: (a, b, ...)")?;
                    let mut set = vec![self.logic()?];
                    while self.peek() == Some(&Tok::Comma) {
                        self.at += 1;
                        set.push(self.logic()?);
                    }
                    self.expect(Tok::RParen, "a set ends with )")?;
                    value = Node::In {
                        value: Box::new(value),
                        set,
                        negated,
                    };
                }
                _ => return Ok(value),
            }
        }
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        match self.peek() {
            Some(Tok::Not) => {
                self.at += 1;
                Ok(Node::Not(Box::new(self.unary()?)))
            }
            Some(Tok::Minus) => {
                self.at += 1;
                if let Some(Tok::Int(n)) = self.peek() {
                    let n = *n;
                    if n <= 1 << 31 {
                        self.at += 1;
                        return Ok(Node::Lit(Value::Int((-(n as i64)) as i32)));
                    }
                }
                Ok(Node::Neg(Box::new(self.unary()?)))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let Some(tok) = self.peek().cloned() else {
            return Err(self.error("an expression is missing"));
        };
        let called = self.toks.get(self.at + 1).map(|(t, _)| t) == Some(&Tok::LParen);
        match tok {
            Tok::True => self.lit(Value::Bool(true)),
            Tok::False => self.lit(Value::Bool(false)),
            Tok::Str(s) => self.lit(Value::Str(s)),
            Tok::Int(n) => match i32::try_from(n) {
                Ok(i) => self.lit(Value::Int(i)),
                Err(_) => Err(self.error("an integer literal is outside 32 bits")),
            },
            Tok::Ident(name) | Tok::Name(name) if called => {
                self.at += 2;
                let mut args = Vec::new();
                if self.peek() != Some(&Tok::RParen) {
                    args.push(self.logic()?);
                    while self.peek() == Some(&Tok::Comma) {
                        self.at += 1;
                        args.push(self.logic()?);
                    }
                }
                self.expect(Tok::RParen, "a function's arguments end with )")?;
                Ok(Node::Call(name.to_ascii_uppercase(), args))
            }
            Tok::Ident(name) => {
                self.at += 1;
                Ok(Node::Attr(name))
            }
            Tok::Exists => {
                self.at += 1;
                match self.next().cloned() {
                    Some(Tok::Ident(name)) => Ok(Node::Exists(name)),
                    _ => {
                        self.at -= 1;
                        Err(self.error("EXISTS takes an attribute name"))
                    }
                }
            }
            Tok::LParen => {
                self.at += 1;
                let inner = self.logic()?;
                self.expect(Tok::RParen, "a parenthesis is not closed")?;
                Ok(inner)
            }
            _ => Err(self.error("an expression is missing")),
        }
    }

    fn lit(&mut self, v: Value) -> Result<Node, ParseError> {
        self.at += 1;
        Ok(Node::Lit(v))
    }
}
