//! The lexer: turns filter text into tokens, one at a time on demand, so the first
//! problem in reading order is the one reported. It owns the token-level syntax:
//! operators, field and macro paths, keywords, string escapes and number formats.

use crate::ast::{CompareOp, Span};
use crate::error::{ParseError, ParseErrorCode, snippet};

/// What a token is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum TokenKind {
    /// A field path such as `meta.tags.0`.
    Path(Vec<String>),
    /// A macro such as `@request.auth.id` (segments after the `@`).
    Macro(Vec<String>),
    /// A string literal, escapes resolved.
    Str(String),
    /// An integer literal that fits in an `i64`.
    Integer(i64),
    /// Any other (finite) number literal.
    Float(f64),
    /// `true`
    True,
    /// `false`
    False,
    /// `null`
    Null,
    /// A comparison operator.
    Op(CompareOp),
    /// `&&`
    AndAnd,
    /// `||`
    OrOr,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,` (between a function's arguments)
    Comma,
    /// The end of the input.
    End,
}

/// A token and where it is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    pub(crate) span: Span,
}

/// Reads tokens from the input, left to right.
pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

/// The whitespace allowed between tokens.
pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_continue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

const ESCAPES: &str = "\\\\, \\', \\\", \\n, \\t, \\r, \\uXXXX";

impl<'a> Lexer<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Self { src, pos: 0 }
    }

    fn byte(&self, at: usize) -> Option<u8> {
        self.src.as_bytes().get(at).copied()
    }

    fn peek(&self) -> Option<u8> {
        self.byte(self.pos)
    }

    /// A description of what is at `at` for messages: a quoted snippet of the next
    /// few characters (up to whitespace), or "end of input".
    fn found_at(&self, at: usize) -> String {
        let rest = self.src.get(at..).unwrap_or("");
        let word: &str = match rest.find(|c: char| c.is_ascii() && is_space(c as u8)) {
            Some(end) => rest.get(..end).unwrap_or(rest),
            None => rest,
        };
        if word.is_empty() {
            "end of input".to_owned()
        } else {
            format!("'{}'", snippet(word))
        }
    }

    fn char_at(&self, at: usize) -> Option<char> {
        self.src.get(at..).and_then(|rest| rest.chars().next())
    }

    /// Reads the next token, skipping whitespace. At the end it returns
    /// [`TokenKind::End`] (again and again).
    pub(crate) fn next_token(&mut self) -> Result<Token, ParseError> {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(b) = self.peek() else {
            return Ok(Token {
                kind: TokenKind::End,
                span: Span { start, end: start },
            });
        };
        let next = self.byte(start + 1);
        let (kind, len) = match b {
            b'(' => (TokenKind::LParen, 1),
            b')' => (TokenKind::RParen, 1),
            b',' => (TokenKind::Comma, 1),
            b'=' => (TokenKind::Op(CompareOp::Eq), 1),
            b'~' => (TokenKind::Op(CompareOp::Like), 1),
            b'!' => match next {
                Some(b'=') => (TokenKind::Op(CompareOp::Ne), 2),
                Some(b'~') => (TokenKind::Op(CompareOp::NotLike), 2),
                _ => {
                    return Err(ParseError::new(
                        ParseErrorCode::UnexpectedToken,
                        start,
                        format!("expected '!=' or '!~', found {}", self.found_at(start)),
                    ));
                }
            },
            b'>' if next == Some(b'=') => (TokenKind::Op(CompareOp::Ge), 2),
            b'>' => (TokenKind::Op(CompareOp::Gt), 1),
            b'<' if next == Some(b'=') => (TokenKind::Op(CompareOp::Le), 2),
            b'<' => (TokenKind::Op(CompareOp::Lt), 1),
            b'&' | b'|' => {
                if next == Some(b) {
                    let kind = if b == b'&' {
                        TokenKind::AndAnd
                    } else {
                        TokenKind::OrOr
                    };
                    (kind, 2)
                } else {
                    let want = if b == b'&' { "&&" } else { "||" };
                    return Err(ParseError::new(
                        ParseErrorCode::UnexpectedToken,
                        start,
                        format!("expected '{want}', found {}", self.found_at(start)),
                    ));
                }
            }
            b'\'' | b'"' => {
                let kind = self.string(b)?;
                (kind, 0)
            }
            b'-' | b'0'..=b'9' => {
                let kind = self.number()?;
                (kind, 0)
            }
            b'@' => {
                self.pos += 1;
                let path = self.path(false)?;
                (TokenKind::Macro(path), 0)
            }
            b if is_ident_start(b) => {
                let kind = self.field_or_keyword()?;
                (kind, 0)
            }
            _ => {
                let shown = match self.char_at(start) {
                    Some(c) if c.is_control() || c.is_whitespace() => {
                        c.escape_unicode().to_string()
                    }
                    Some(c) => c.to_string(),
                    None => String::new(),
                };
                return Err(ParseError::new(
                    ParseErrorCode::UnexpectedToken,
                    start,
                    format!("unexpected character '{shown}'"),
                ));
            }
        };
        self.pos += len;
        Ok(Token {
            kind,
            span: Span {
                start,
                end: self.pos,
            },
        })
    }

    /// Reads a path at `self.pos`: an identifier, then `.segment`s. Index segments
    /// (decimal integers without leading zeros) are allowed only for fields.
    fn path(&mut self, allow_index: bool) -> Result<Vec<String>, ParseError> {
        let what = if allow_index { "field" } else { "macro" };
        let mut segments = Vec::new();
        loop {
            let seg_start = self.pos;
            match self.peek() {
                Some(b) if is_ident_start(b) => {
                    while self.peek().is_some_and(is_ident_continue) {
                        self.pos += 1;
                    }
                }
                Some(b'0'..=b'9') if allow_index && !segments.is_empty() => {
                    while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                        self.pos += 1;
                    }
                    let bad_tail = self.peek().is_some_and(is_ident_continue);
                    let leading_zero =
                        self.pos - seg_start > 1 && self.byte(seg_start) == Some(b'0');
                    if bad_tail || leading_zero {
                        while self.peek().is_some_and(is_ident_continue) {
                            self.pos += 1;
                        }
                        let seg = self.src.get(seg_start..self.pos).unwrap_or("");
                        return Err(ParseError::new(
                            ParseErrorCode::BadPath,
                            seg_start,
                            format!(
                                "bad {what} path segment '{}': a segment is a name or an array index without leading zeros",
                                snippet(seg)
                            ),
                        ));
                    }
                }
                _ => {
                    let after = if segments.is_empty() { "'@'" } else { "'.'" };
                    let expected = if allow_index {
                        "a name or an array index"
                    } else {
                        "a name"
                    };
                    return Err(ParseError::new(
                        ParseErrorCode::BadPath,
                        seg_start,
                        format!(
                            "expected {expected} after {after} in {what} path, found {}",
                            self.found_at(seg_start)
                        ),
                    ));
                }
            }
            segments.push(self.src.get(seg_start..self.pos).unwrap_or("").to_owned());
            if self.peek() == Some(b'.') {
                self.pos += 1;
            } else {
                return Ok(segments);
            }
        }
    }

    fn field_or_keyword(&mut self) -> Result<TokenKind, ParseError> {
        let start = self.pos;
        let path = self.path(true)?;
        let keyword = match path.first().map(String::as_str) {
            Some("true") => Some(TokenKind::True),
            Some("false") => Some(TokenKind::False),
            Some("null") => Some(TokenKind::Null),
            _ => None,
        };
        match keyword {
            None => Ok(TokenKind::Path(path)),
            Some(kind) if path.len() == 1 => Ok(kind),
            Some(_) => Err(ParseError::new(
                ParseErrorCode::BadPath,
                start,
                format!(
                    "'{}' is a keyword and cannot start a field path",
                    path.first().map(String::as_str).unwrap_or("")
                ),
            )),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Reads `-? digits (. digits)? ([eE] [+-]? digits)?`.
    fn number(&mut self) -> Result<TokenKind, ParseError> {
        let start = self.pos;
        let bad = |lexer: &Self, why: &str| {
            let end = lexer.pos.max(start + 1).min(lexer.src.len());
            let text = lexer.src.get(start..end).unwrap_or("");
            ParseError::new(
                ParseErrorCode::BadNumber,
                start,
                format!("bad number '{}': {why}", snippet(text)),
            )
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        if self.digits() == 0 {
            return Err(bad(self, "expected a digit after '-'"));
        }
        let mut is_float = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(bad(self, "expected a digit after the decimal point"));
            }
            is_float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(bad(self, "expected a digit in the exponent"));
            }
            is_float = true;
        }
        if self
            .peek()
            .is_some_and(|b| is_ident_continue(b) || b == b'.')
        {
            while self
                .peek()
                .is_some_and(|b| is_ident_continue(b) || b == b'.')
            {
                self.pos += 1;
            }
            return Err(bad(self, "unexpected characters after the number"));
        }
        let text = self.src.get(start..self.pos).unwrap_or("");
        if !is_float && let Ok(n) = text.parse::<i64>() {
            return Ok(TokenKind::Integer(n));
        }
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(TokenKind::Float(x)),
            _ => Err(bad(self, "out of range")),
        }
    }

    /// Reads 4 hex digits at `self.pos`. `Ok(None)` means the input ended first.
    fn hex4(&mut self) -> Result<Option<u32>, ()> {
        let Some(digits) = self.src.as_bytes().get(self.pos..self.pos + 4) else {
            return Ok(None);
        };
        let mut value = 0u32;
        for &d in digits {
            let v = char::from(d).to_digit(16).ok_or(())?;
            value = value * 16 + v;
        }
        self.pos += 4;
        Ok(Some(value))
    }

    /// Reads a string literal opened by `quote` at `self.pos`.
    fn string(&mut self, quote: u8) -> Result<TokenKind, ParseError> {
        let open = self.pos;
        let q = char::from(quote);
        let unterminated = || {
            ParseError::new(
                ParseErrorCode::UnterminatedString,
                open,
                format!("unterminated string: no closing {q} for the quote opened here"),
            )
        };
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.char_at(self.pos) else {
                return Err(unterminated());
            };
            self.pos += c.len_utf8();
            if c == q {
                return Ok(TokenKind::Str(out));
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let esc = self.pos - 1;
            let bad_escape = |lexer: &Self, why: String| {
                let text = lexer.src.get(esc..lexer.pos).unwrap_or("\\");
                ParseError::new(
                    ParseErrorCode::BadEscape,
                    esc,
                    format!("bad escape '{}' in string: {why}", snippet(text)),
                )
            };
            let Some(e) = self.char_at(self.pos) else {
                return Err(unterminated());
            };
            self.pos += e.len_utf8();
            let resolved = match e {
                '\\' => '\\',
                '\'' => '\'',
                '"' => '"',
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                'u' => match self.unicode_escape() {
                    Ok(Some(c)) => c,
                    Ok(None) => return Err(unterminated()),
                    Err(why) => return Err(bad_escape(self, why.to_owned())),
                },
                _ => {
                    return Err(bad_escape(self, format!("the escapes are {ESCAPES}")));
                }
            };
            out.push(resolved);
        }
    }

    /// After `\u`: 4 hex digits, or a surrogate pair `\uD8xx\uDCxx`.
    /// `Ok(None)` means the input ended inside the escape.
    fn unicode_escape(&mut self) -> Result<Option<char>, &'static str> {
        const NEED_HEX: &str = "expected 4 hex digits after \\u";
        let Some(high) = self.hex4().map_err(|()| NEED_HEX)? else {
            return Ok(None);
        };
        let code = match high {
            0xD800..=0xDBFF => {
                let lone = "lone surrogate; write the character itself or a surrogate pair";
                if self.byte(self.pos) != Some(b'\\') || self.byte(self.pos + 1) != Some(b'u') {
                    return Err(lone);
                }
                self.pos += 2;
                match self.hex4() {
                    Ok(Some(low @ 0xDC00..=0xDFFF)) => {
                        0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                    }
                    Ok(None) => return Ok(None),
                    _ => return Err(lone),
                }
            }
            0xDC00..=0xDFFF => {
                return Err("lone surrogate; write the character itself or a surrogate pair");
            }
            code => code,
        };
        char::from_u32(code).map(Some).ok_or(NEED_HEX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Result<Vec<TokenKind>, ParseError> {
        let mut lexer = Lexer::new(src);
        let mut out = Vec::new();
        loop {
            let token = lexer.next_token()?;
            if token.kind == TokenKind::End {
                return Ok(out);
            }
            out.push(token.kind);
        }
    }

    #[test]
    fn operators_and_punctuation() {
        let got = kinds("= != > >= < <= ~ !~ && || ( )");
        let ops = [
            CompareOp::Eq,
            CompareOp::Ne,
            CompareOp::Gt,
            CompareOp::Ge,
            CompareOp::Lt,
            CompareOp::Le,
            CompareOp::Like,
            CompareOp::NotLike,
        ];
        let mut want: Vec<TokenKind> = ops.into_iter().map(TokenKind::Op).collect();
        want.extend([
            TokenKind::AndAnd,
            TokenKind::OrOr,
            TokenKind::LParen,
            TokenKind::RParen,
        ]);
        assert_eq!(got, Ok(want));
    }

    #[test]
    fn end_repeats() {
        let mut lexer = Lexer::new("  ");
        for _ in 0..3 {
            assert_eq!(
                lexer.next_token().map(|t| t.kind),
                Ok(TokenKind::End),
                "end of input is sticky"
            );
        }
    }

    #[test]
    fn surrogate_pair_escape() {
        assert_eq!(
            kinds(r"'\ud83d\ude00'"),
            Ok(vec![TokenKind::Str("😀".into())])
        );
    }

    #[test]
    fn lone_surrogates_rejected() {
        for src in [r"'\ud83d'", r"'\ude00'", r"'\ud83dx'", r"'\ud83d\u0041'"] {
            let err = kinds(src).err().map(|e| (e.code, e.position));
            assert_eq!(err, Some((ParseErrorCode::BadEscape, 1)), "{src}");
        }
    }

    #[test]
    fn escape_cut_by_end_is_unterminated() {
        for src in [r"'\u12", r"'\", r"'\ud83d\u"] {
            let err = kinds(src).err().map(|e| (e.code, e.position));
            assert_eq!(err, Some((ParseErrorCode::UnterminatedString, 0)), "{src}");
        }
    }
}
