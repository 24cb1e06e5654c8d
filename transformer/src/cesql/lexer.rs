//! CESQL's tokens: keywords (any case), identifiers, literals and operators,
//! each with the character it starts at, for parse errors that say where.

use super::ParseError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// A lower-case name of letters and digits: an attribute (or, before
    /// `(`, a function).
    Ident(String),
    /// A name with upper-case letters or `_`: only a function's.
    Name(String),
    /// Digits; the range is checked by the parser (a minus may precede).
    Int(u64),
    Str(String),
    True,
    False,
    And,
    Or,
    Xor,
    Not,
    Like,
    In,
    Exists,
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    NotEq,
    Less,
    LessEq,
    Greater,
    GreaterEq,
}

/// The tokens of `text`, each with its position in characters.
pub fn tokens(text: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at: usize, reason: String| ParseError { at, reason };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let (tok, end) = if let Some((tok, len)) = symbol(&chars, i) {
            (tok, i + len)
        } else if c == '\'' || c == '"' {
            let (s, end) = string(&chars, i)
                .ok_or_else(|| err(start, "a string literal is not closed".into()))?;
            (Tok::Str(s), end)
        } else if c.is_ascii_digit() {
            let (n, end) = number(&chars, i);
            if chars
                .get(end)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_')
            {
                return Err(err(start, "a number runs into a name".into()));
            }
            (Tok::Int(n), end)
        } else if c.is_ascii_alphabetic() {
            let end = word_end(&chars, i);
            (word_token(chars[start..end].iter().collect()), end)
        } else {
            return Err(err(start, format!("unexpected character {c:?}")));
        };
        out.push((tok, start));
        i = end;
    }
    Ok(out)
}

/// The operator or punctuation at `i`, and how many characters it takes.
fn symbol(chars: &[char], i: usize) -> Option<(Tok, usize)> {
    let next = chars.get(i + 1);
    Some(match chars[i] {
        '(' => (Tok::LParen, 1),
        ')' => (Tok::RParen, 1),
        ',' => (Tok::Comma, 1),
        '+' => (Tok::Plus, 1),
        '-' => (Tok::Minus, 1),
        '*' => (Tok::Star, 1),
        '/' => (Tok::Slash, 1),
        '%' => (Tok::Percent, 1),
        '=' => (Tok::Eq, 1),
        '!' if next == Some(&'=') => (Tok::NotEq, 2),
        '<' if next == Some(&'=') => (Tok::LessEq, 2),
        '<' if next == Some(&'>') => (Tok::NotEq, 2),
        '<' => (Tok::Less, 1),
        '>' if next == Some(&'=') => (Tok::GreaterEq, 2),
        '>' => (Tok::Greater, 1),
        _ => return None,
    })
}

/// The decimal number at `i` (saturating), and where it ends.
fn number(chars: &[char], mut i: usize) -> (u64, usize) {
    let mut n: u64 = 0;
    while let Some(d) = chars.get(i).and_then(|c| c.to_digit(10)) {
        n = n.saturating_mul(10).saturating_add(u64::from(d));
        i += 1;
    }
    (n, i)
}

/// Where the name (letters, digits, `_`) at `i` ends.
fn word_end(chars: &[char], mut i: usize) -> usize {
    while chars
        .get(i)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
    {
        i += 1;
    }
    i
}

fn word_token(word: String) -> Tok {
    match word.to_ascii_uppercase().as_str() {
        "TRUE" => Tok::True,
        "FALSE" => Tok::False,
        "AND" => Tok::And,
        "OR" => Tok::Or,
        "XOR" => Tok::Xor,
        "NOT" => Tok::Not,
        "LIKE" => Tok::Like,
        "IN" => Tok::In,
        "EXISTS" => Tok::Exists,
        _ if word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) =>
        {
            Tok::Ident(word)
        }
        _ => Tok::Name(word),
    }
}

/// A string literal opening at `at`: its text (`\'` in a single-quoted one
/// and `\"` in a double-quoted one stand for the quote; any other backslash
/// is itself) and the position after its closing quote.
fn string(chars: &[char], at: usize) -> Option<(String, usize)> {
    let quote = chars[at];
    let mut s = String::new();
    let mut i = at + 1;
    loop {
        match *chars.get(i)? {
            '\\' if chars.get(i + 1) == Some(&quote) => {
                s.push(quote);
                i += 2;
            }
            c if c == quote => return Some((s, i + 1)),
            c => {
                s.push(c);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokens(s).unwrap().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn keywords_in_any_case_names_and_operators() {
        assert_eq!(
            toks("a AnD b or NOT c <> 'x' != <= >="),
            vec![
                Tok::Ident("a".into()),
                Tok::And,
                Tok::Ident("b".into()),
                Tok::Or,
                Tok::Not,
                Tok::Ident("c".into()),
                Tok::NotEq,
                Tok::Str("x".into()),
                Tok::NotEq,
                Tok::LessEq,
                Tok::GreaterEq,
            ]
        );
        assert_eq!(toks("CONCAT_WS"), vec![Tok::Name("CONCAT_WS".into())]);
        assert_eq!(toks("int"), vec![Tok::Ident("int".into())]);
    }

    #[test]
    fn string_escapes_are_the_quote_only() {
        assert_eq!(toks(r#"'a"b\'c'"#), vec![Tok::Str("a\"b'c".into())]);
        assert_eq!(toks(r#""a'b\"c""#), vec![Tok::Str("a'b\"c".into())]);
        assert_eq!(toks(r"'ab\c'"), vec![Tok::Str(r"ab\c".into())]);
        assert!(tokens("'open").is_err());
        assert!(tokens("a # b").is_err());
    }
}
