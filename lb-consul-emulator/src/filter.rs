//! A subset of go-bexpr, the `?filter=` language (Consul docs:
//! `api-docs/features/filtering`; grammar: `hashicorp/go-bexpr` `grammar/grammar.peg`).
//!
//! Supported: `==`, `!=`, `in`, `not in`, `contains`, `not contains`,
//! `is empty`, `is not empty`, `and`, `or`, `not`, parentheses; values as
//! double-quoted or backtick strings, numbers, or bare words; selectors with
//! `.field` and `["key"]` parts. Selectors are checked against the endpoint's
//! schema when the filter is created, as Consul's typed filters do, so an
//! unknown selector (or `matches`, which is not implemented) fails before any
//! data is read, with the `Failed to create boolean expression evaluator: `
//! prefix Consul puts on every such error.
//!
//! A selector that walks through a list of structs (`Checks.Status`) applies
//! the comparison to each element and matches when any element does, negated
//! operators included (`Checks.Status != "passing"` = some check is not
//! passing), like bexpr's implied "any".

use std::collections::BTreeMap;

/// The prefix of every filter creation error, as Consul's `bexpr.CreateFilter` words it.
pub(crate) const ERR_PREFIX: &str = "Failed to create boolean expression evaluator: ";

/// The type of a selectable field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    /// A map (string keys); `in` tests the keys.
    Map,
    /// A list of structs, only `is empty` / `is not empty` apply.
    Structs,
}

/// A value read from a record for one selector.
#[derive(Clone, Debug)]
pub(crate) enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    StrList(&'a [String]),
    /// The keys of a map.
    Keys(Vec<&'a str>),
    /// The length of a list of structs.
    Len(usize),
}

/// What an endpoint can be filtered on.
pub(crate) trait Schema {
    /// The kind of the field a selector names, and whether it fans out over a
    /// list of structs; `None` if the selector is not valid.
    fn kind(path: &[String]) -> Option<(Kind, bool)>;
}

/// One item being filtered.
pub(crate) trait Record {
    /// The value(s) at a selector already validated by the schema: one value,
    /// or one per element for fanned-out selectors.
    fn get(&self, path: &[String]) -> Vec<Val<'_>>;
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    None,
    Str(String),
    Int(i64),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    In,
    Empty,
}

#[derive(Debug, Clone)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Match {
        path: Vec<String>,
        op: Op,
        negate: bool,
        value: Lit,
    },
}

/// A compiled filter expression.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    expr: Expr,
}

impl Filter {
    /// Parses and type-checks `src` against schema `S`. The error text is the
    /// whole body Consul would answer with (status 500).
    pub(crate) fn new<S: Schema>(src: &str) -> Result<Filter, String> {
        let tokens = lex(src).map_err(|e| format!("{ERR_PREFIX}{e}"))?;
        let mut p = Parser { src, tokens, pos: 0 };
        let raw = p.parse_input().map_err(|e| format!("{ERR_PREFIX}{e}"))?;
        let expr = check::<S>(raw).map_err(|e| format!("{ERR_PREFIX}{e}"))?;
        Ok(Filter { expr })
    }

    /// Whether the record matches.
    pub(crate) fn matches<R: Record>(&self, record: &R) -> bool {
        eval(&self.expr, record)
    }
}

fn eval<R: Record>(expr: &Expr, r: &R) -> bool {
    match expr {
        Expr::Or(a, b) => eval(a, r) || eval(b, r),
        Expr::And(a, b) => eval(a, r) && eval(b, r),
        Expr::Not(a) => !eval(a, r),
        Expr::Match {
            path,
            op,
            negate,
            value,
        } => r.get(path).iter().any(|v| match_one(v, *op, value) != *negate),
    }
}

fn match_one(v: &Val<'_>, op: Op, lit: &Lit) -> bool {
    match (op, v, lit) {
        (Op::Eq, Val::Str(s), Lit::Str(l)) => s == l,
        (Op::Eq, Val::Int(i), Lit::Int(l)) => i == l,
        (Op::Eq, Val::Bool(b), Lit::Bool(l)) => b == l,
        (Op::In, Val::Str(s), Lit::Str(l)) => s.contains(l.as_str()),
        (Op::In, Val::StrList(list), Lit::Str(l)) => list.iter().any(|x| x == l),
        (Op::In, Val::Keys(keys), Lit::Str(l)) => keys.iter().any(|k| k == l),
        (Op::Empty, Val::Str(s), _) => s.is_empty(),
        (Op::Empty, Val::StrList(list), _) => list.is_empty(),
        (Op::Empty, Val::Keys(keys), _) => keys.is_empty(),
        (Op::Empty, Val::Len(n), _) => *n == 0,
        _ => false,
    }
}

// ---------------------------------------------------------------- type check

fn check<S: Schema>(raw: RawExpr) -> Result<Expr, String> {
    Ok(match raw {
        RawExpr::Or(a, b) => Expr::Or(Box::new(check::<S>(*a)?), Box::new(check::<S>(*b)?)),
        RawExpr::And(a, b) => Expr::And(Box::new(check::<S>(*a)?), Box::new(check::<S>(*b)?)),
        RawExpr::Not(a) => Expr::Not(Box::new(check::<S>(*a)?)),
        RawExpr::Match {
            selector,
            op,
            negate,
            value,
        } => {
            let shown = selector.join(".");
            if op == RawOp::Matches {
                return Err(format!(
                    "Invalid match operator \"Matches\" for selector \"{shown}\" (not supported by the emulator)"
                ));
            }
            let Some((kind, _)) = S::kind(&selector) else {
                return Err(format!("Selector \"{shown}\" is not valid"));
            };
            let (op, op_name) = match op {
                RawOp::Eq => (Op::Eq, if negate { "Not Equal" } else { "Equal" }),
                RawOp::In => (Op::In, if negate { "Not In" } else { "In" }),
                RawOp::Empty => (Op::Empty, if negate { "Is Not Empty" } else { "Is Empty" }),
                RawOp::Matches => unreachable!("rejected above"),
            };
            let supported = match kind {
                Kind::Str => true,
                Kind::Int | Kind::Bool => op == Op::Eq,
                Kind::StrList | Kind::Map => op != Op::Eq,
                Kind::Structs => op == Op::Empty,
            };
            if !supported {
                return Err(format!("Invalid match operator \"{op_name}\" for selector \"{shown}\""));
            }
            let value = match (op, kind, value) {
                (Op::Empty, _, _) => Lit::None,
                (_, Kind::Int, Some(raw)) => Lit::Int(
                    raw.parse()
                        .map_err(|_| format!("Failed to coerce value {raw:?} for selector \"{shown}\""))?,
                ),
                (_, Kind::Bool, Some(raw)) => Lit::Bool(
                    crate::goparse::parse_go_bool(&raw)
                        .ok_or_else(|| format!("Failed to coerce value {raw:?} for selector \"{shown}\""))?,
                ),
                (_, _, Some(raw)) => Lit::Str(raw),
                (_, _, None) => return Err(format!("Missing value for selector \"{shown}\"")),
            };
            Expr::Match {
                path: selector,
                op,
                negate,
                value,
            }
        }
    })
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word: identifier characters (`[a-zA-Z][a-zA-Z0-9_/]*`).
    Word(String),
    /// A quoted string, already unquoted.
    Str(String),
    Num(String),
    Dot,
    LBracket,
    RBracket,
    LParen,
    RParen,
    EqEq,
    NotEq,
    Comma,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    at: usize,
    /// Whitespace precedes this token.
    space_before: bool,
}

fn lex(src: &str) -> Result<Vec<Token>, String> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut space = false;
    while i < bytes.len() {
        let c = bytes[i];
        let at = i;
        let tok = match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                space = true;
                continue;
            }
            b'.' => {
                i += 1;
                Tok::Dot
            }
            b'[' => {
                i += 1;
                Tok::LBracket
            }
            b']' => {
                i += 1;
                Tok::RBracket
            }
            b'(' => {
                i += 1;
                Tok::LParen
            }
            b')' => {
                i += 1;
                Tok::RParen
            }
            b',' => {
                i += 1;
                Tok::Comma
            }
            b'=' if bytes.get(i + 1) == Some(&b'=') => {
                i += 2;
                Tok::EqEq
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                i += 2;
                Tok::NotEq
            }
            b'`' => {
                let end = src[i + 1..]
                    .find('`')
                    .ok_or_else(|| position(src, at, "Unterminated string literal"))?;
                let s = src[i + 1..i + 1 + end].to_owned();
                i += end + 2;
                Tok::Str(s)
            }
            b'"' => {
                let (s, len) = unquote(&src[i..]).ok_or_else(|| position(src, at, "Unterminated string literal"))?;
                i += len;
                Tok::Str(s)
            }
            b'-' | b'0'..=b'9' => {
                let mut j = i + 1;
                while j < bytes.len() && (bytes[j].is_ascii_digit() || bytes[j] == b'.') {
                    j += 1;
                }
                let text = &src[i..j];
                let valid = text != "-"
                    && text.trim_start_matches('-').split('.').count() <= 2
                    && !text.ends_with('.')
                    && !text.trim_start_matches('-').starts_with('.');
                if !valid {
                    return Err(position(src, at, "Invalid number literal"));
                }
                i = j;
                Tok::Num(text.to_owned())
            }
            c if c.is_ascii_alphabetic() => {
                let mut j = i + 1;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'/') {
                    j += 1;
                }
                let w = src[i..j].to_owned();
                i = j;
                Tok::Word(w)
            }
            _ => return Err(no_match(src, at)),
        };
        out.push(Token {
            tok,
            at,
            space_before: space,
        });
        space = false;
    }
    Ok(out)
}

/// A Go-style double-quoted string at the start of `s`: returns the value and
/// the number of bytes consumed (quotes included).
fn unquote(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => {
                let (_, e) = chars.next()?;
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '\\' => '\\',
                    '"' => '"',
                    '\'' => '\'',
                    _ => return None,
                });
            }
            c => out.push(c),
        }
    }
    None
}

/// Pigeon's position prefix: `line:col (offset): message`.
fn position(src: &str, at: usize, msg: &str) -> String {
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{col} ({at}): {msg}")
}

fn no_match(src: &str, at: usize) -> String {
    position(
        src,
        at,
        "no match found, expected: \"(\", \"not\", a selector or a value",
    )
}

// ---------------------------------------------------------------- parser

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawOp {
    Eq,
    In,
    Empty,
    Matches,
}

#[derive(Debug)]
enum RawExpr {
    Or(Box<RawExpr>, Box<RawExpr>),
    And(Box<RawExpr>, Box<RawExpr>),
    Not(Box<RawExpr>),
    Match {
        selector: Vec<String>,
        op: RawOp,
        negate: bool,
        value: Option<String>,
    },
}

struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.tok)
    }

    fn peek_word(&self, offset: usize) -> Option<&str> {
        match self.tokens.get(self.pos + offset).map(|t| &t.tok) {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.src.len(), |t| t.at)
    }

    fn err(&self) -> String {
        no_match(self.src, self.at())
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if self.peek_word(0) == Some(w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn parse_input(&mut self) -> Result<RawExpr, String> {
        if self.tokens.is_empty() {
            return Err(self.err());
        }
        let e = self.parse_or()?;
        if self.pos != self.tokens.len() {
            return Err(self.err());
        }
        Ok(e)
    }

    fn parse_or(&mut self) -> Result<RawExpr, String> {
        let left = self.parse_and()?;
        if self.keyword("or") {
            let right = self.parse_or()?;
            return Ok(RawExpr::Or(Box::new(left), Box::new(right)));
        }
        Ok(left)
    }

    fn parse_and(&mut self) -> Result<RawExpr, String> {
        let left = self.parse_not()?;
        if self.keyword("and") {
            let right = self.parse_and()?;
            return Ok(RawExpr::And(Box::new(left), Box::new(right)));
        }
        Ok(left)
    }

    /// A keyword that must be separated by whitespace from what precedes it
    /// and what follows it (the grammar writes `_ "and" _`).
    fn keyword(&mut self, w: &str) -> bool {
        let Some(t) = self.tokens.get(self.pos) else {
            return false;
        };
        if t.tok != Tok::Word(w.to_owned()) || !t.space_before {
            return false;
        }
        if !self.tokens.get(self.pos + 1).is_some_and(|n| n.space_before) {
            return false;
        }
        self.pos += 1;
        true
    }

    fn parse_not(&mut self) -> Result<RawExpr, String> {
        // `not` followed by whitespace starts a negation unless it is used as a
        // bare-word value (`not in ...` never starts an expression).
        if self.peek_word(0) == Some("not") && self.tokens.get(self.pos + 1).is_some_and(|n| n.space_before) {
            self.pos += 1;
            let inner = self.parse_not()?;
            return Ok(match inner {
                RawExpr::Not(e) => *e,
                e => RawExpr::Not(Box::new(e)),
            });
        }
        self.parse_primary()
    }

    fn parse_primary(&mut self) -> Result<RawExpr, String> {
        if self.peek() == Some(&Tok::LParen) {
            let open = self.at();
            self.pos += 1;
            let e = self.parse_or()?;
            if self.peek() != Some(&Tok::RParen) {
                return Err(position(self.src, open, "Unmatched parentheses"));
            }
            self.pos += 1;
            return Ok(e);
        }
        self.parse_match()
    }

    fn parse_selector(&mut self) -> Result<Vec<String>, String> {
        let mut path = match self.peek() {
            Some(Tok::Word(w)) => vec![w.clone()],
            _ => return Err(self.err()),
        };
        self.pos += 1;
        loop {
            match self.peek() {
                Some(Tok::Dot) if !self.tokens[self.pos].space_before => {
                    self.pos += 1;
                    match self.peek() {
                        Some(Tok::Word(w)) if !self.tokens[self.pos].space_before => {
                            path.push(w.clone());
                            self.pos += 1;
                        }
                        Some(Tok::Num(n)) if n.bytes().all(|b| b.is_ascii_digit()) => {
                            path.push(n.clone());
                            self.pos += 1;
                        }
                        _ => return Err(self.err()),
                    }
                }
                Some(Tok::LBracket) if !self.tokens[self.pos].space_before => {
                    let open = self.at();
                    self.pos += 1;
                    match self.peek() {
                        Some(Tok::Str(s)) => {
                            path.push(s.clone());
                            self.pos += 1;
                        }
                        _ => return Err(position(self.src, open, "Invalid index")),
                    }
                    if self.peek() != Some(&Tok::RBracket) {
                        return Err(position(self.src, open, "Unclosed index expression"));
                    }
                    self.pos += 1;
                }
                _ => return Ok(path),
            }
        }
    }

    /// A value: a string, a number, or a selector-shaped bare word taken as text.
    fn parse_value(&mut self) -> Result<String, String> {
        match self.peek().cloned() {
            Some(Tok::Str(s)) | Some(Tok::Num(s)) => {
                self.pos += 1;
                Ok(s)
            }
            Some(Tok::Word(_)) => Ok(self.parse_selector()?.join(".")),
            _ => Err(self.err()),
        }
    }

    fn parse_match(&mut self) -> Result<RawExpr, String> {
        // `value in selector` / `value not in selector`
        let starts_with_literal = matches!(self.peek(), Some(Tok::Str(_)) | Some(Tok::Num(_)));
        let save = self.pos;
        if !starts_with_literal {
            let selector = self.parse_selector()?;
            if let Some(op) = self.parse_selector_op()? {
                let (op, negate, needs_value) = op;
                let value = if needs_value { Some(self.parse_value()?) } else { None };
                return Ok(RawExpr::Match {
                    selector,
                    op,
                    negate,
                    value,
                });
            }
            // Not followed by a selector operator: the word was a value.
            self.pos = save;
        }
        let value = self.parse_value()?;
        let negate = if self.keyword_pair("not", "in") {
            true
        } else if self.keyword("in") {
            false
        } else {
            return Err(self.err());
        };
        let selector = self
            .parse_selector()
            .map_err(|_| position(self.src, self.at(), "Invalid selector"))?;
        Ok(RawExpr::Match {
            selector,
            op: RawOp::In,
            negate,
            value: Some(value),
        })
    }

    fn keyword_pair(&mut self, a: &str, b: &str) -> bool {
        let save = self.pos;
        if self.keyword_no_trailing_check(a) && self.keyword(b) {
            return true;
        }
        self.pos = save;
        false
    }

    fn keyword_no_trailing_check(&mut self, w: &str) -> bool {
        let Some(t) = self.tokens.get(self.pos) else {
            return false;
        };
        if t.tok == Tok::Word(w.to_owned()) && t.space_before {
            self.pos += 1;
            return true;
        }
        false
    }

    /// After a selector: `==`, `!=`, `contains`, `not contains`, `matches`,
    /// `not matches`, `is empty`, `is not empty`. Returns (op, negated, takes a value).
    fn parse_selector_op(&mut self) -> Result<Option<(RawOp, bool, bool)>, String> {
        match self.peek() {
            Some(Tok::EqEq) => {
                self.pos += 1;
                return Ok(Some((RawOp::Eq, false, true)));
            }
            Some(Tok::NotEq) => {
                self.pos += 1;
                return Ok(Some((RawOp::Eq, true, true)));
            }
            _ => {}
        }
        let save = self.pos;
        if self.keyword("contains") {
            return Ok(Some((RawOp::In, false, true)));
        }
        if self.keyword("matches") {
            return Ok(Some((RawOp::Matches, false, true)));
        }
        if self.keyword_pair("not", "contains") {
            return Ok(Some((RawOp::In, true, true)));
        }
        if self.keyword_pair("not", "matches") {
            return Ok(Some((RawOp::Matches, true, true)));
        }
        if self.keyword_no_trailing_check("is") {
            let negate = self.eat_word("not");
            if self.eat_word("empty") {
                return Ok(Some((RawOp::Empty, negate, false)));
            }
            return Err(self.err());
        }
        self.pos = save;
        Ok(None)
    }
}

// ---------------------------------------------------------------- helpers for records

/// The keys of a map as a [`Val`].
pub(crate) fn keys<V>(m: &BTreeMap<String, V>) -> Val<'_> {
    Val::Keys(m.keys().map(String::as_str).collect())
}

/// A map entry as a string value; a missing key reads as `""`.
pub(crate) fn entry<'a>(m: &'a BTreeMap<String, String>, k: &str) -> Val<'a> {
    Val::Str(m.get(k).map_or("", String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item {
        name: String,
        port: i64,
        tags: Vec<String>,
        meta: BTreeMap<String, String>,
        statuses: Vec<String>,
    }

    struct S;
    impl Schema for S {
        fn kind(path: &[String]) -> Option<(Kind, bool)> {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            match p.as_slice() {
                ["Name"] => Some((Kind::Str, false)),
                ["Port"] => Some((Kind::Int, false)),
                ["Tags"] => Some((Kind::StrList, false)),
                ["Meta"] => Some((Kind::Map, false)),
                ["Meta", _] => Some((Kind::Str, false)),
                ["Checks"] => Some((Kind::Structs, false)),
                ["Checks", "Status"] => Some((Kind::Str, true)),
                _ => None,
            }
        }
    }

    impl Record for Item {
        fn get(&self, path: &[String]) -> Vec<Val<'_>> {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            match p.as_slice() {
                ["Name"] => vec![Val::Str(&self.name)],
                ["Port"] => vec![Val::Int(self.port)],
                ["Tags"] => vec![Val::StrList(&self.tags)],
                ["Meta"] => vec![keys(&self.meta)],
                ["Meta", k] => vec![entry(&self.meta, k)],
                ["Checks"] => vec![Val::Len(self.statuses.len())],
                ["Checks", "Status"] => self.statuses.iter().map(|s| Val::Str(s)).collect(),
                _ => vec![],
            }
        }
    }

    fn item() -> Item {
        Item {
            name: "api".into(),
            port: 8080,
            tags: vec!["lb".into(), "v2".into()],
            meta: [
                ("env".to_owned(), "prod".to_owned()),
                ("odd-key".to_owned(), "x".to_owned()),
            ]
            .into(),
            statuses: vec!["passing".into(), "warning".into()],
        }
    }

    fn eval(src: &str) -> bool {
        Filter::new::<S>(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .matches(&item())
    }

    #[test]
    fn operators() {
        assert!(eval(r#"Name == "api""#));
        assert!(eval(r#"Name != "web""#));
        assert!(eval("Name == api"));
        assert!(eval("Port == 8080"));
        assert!(eval(r#"Port == "8080""#));
        assert!(eval(r#""lb" in Tags"#));
        assert!(eval(r#""LB" not in Tags"#));
        assert!(eval(r#"Tags contains "v2""#));
        assert!(eval(r#"Tags not contains "v3""#));
        assert!(eval(r#""ap" in Name"#));
        assert!(eval(r#""env" in Meta"#));
        assert!(eval(r#"Meta.env == "prod""#));
        assert!(eval(r#"Meta["odd-key"] == `x`"#));
        assert!(eval(r#"Meta.missing == """#));
        assert!(eval("Tags is not empty"));
        assert!(eval("Meta.missing is empty"));
        assert!(eval("Checks is not empty"));
        assert!(eval(r#"Checks.Status == "warning""#));
        assert!(eval(r#"Checks.Status != "passing""#));
        assert!(!eval(r#"Checks.Status == "critical""#));
    }

    #[test]
    fn boolean_structure() {
        assert!(eval(r#""lb" in Tags and Meta.env == "prod""#));
        assert!(!eval(r#""lb" in Tags and Meta.env == "dev""#));
        assert!(eval(r#"Meta.env == "dev" or Name == "api""#));
        assert!(eval(r#"not Meta.env == "dev""#));
        assert!(eval(r#"not (Meta.env == "dev" or Name == "web")"#));
        assert!(eval(r#"(Name == "api") and (Port == 8080 or Port == 1)"#));
        assert!(eval(r#"not not Name == "api""#));
    }

    #[test]
    fn errors_have_consul_prefix() {
        for bad in [
            "",
            "Name ==",
            r#"Name = "x""#,
            r#"Nope == "x""#,
            r#"(Name == "x""#,
            r#"Name == "x" and"#,
            r#"Name matches "a.*""#,
            r#"Port == "abc""#,
            r#"Port contains "1""#,
            r#"Tags == "lb""#,
            r#"Name == "unterminated"#,
            r#""lb" in"#,
        ] {
            let err = Filter::new::<S>(bad).expect_err(bad);
            assert!(err.starts_with(ERR_PREFIX), "{bad}: {err}");
        }
        let err = Filter::new::<S>(r#"Nope == "x""#).unwrap_err();
        assert!(err.ends_with(r#"Selector "Nope" is not valid"#), "{err}");
    }
}
