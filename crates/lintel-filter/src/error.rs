//! Parse errors: a stable machine code, a human message and the byte offset of the
//! problem in the input. Also the helpers that quote input safely in messages
//! (never more than [`SNIPPET_CHARS`] characters of it).

use std::fmt;

/// How many characters of the input a message may quote.
pub(crate) const SNIPPET_CHARS: usize = 40;

/// Why a filter was rejected; [`ParseErrorCode::as_str`] gives a stable snake_case code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseErrorCode {
    /// The input is longer than [`crate::Limits::max_len`] bytes.
    TooLong,
    /// Parentheses are nested deeper than [`crate::Limits::max_depth`].
    TooDeep,
    /// More than [`crate::Limits::max_terms`] comparisons.
    TooManyTerms,
    /// The input is empty or only whitespace.
    Empty,
    /// A token or character that does not fit where it was found.
    UnexpectedToken,
    /// The input ended where more was expected.
    UnexpectedEnd,
    /// A string literal without its closing quote.
    UnterminatedString,
    /// An unknown escape, a malformed `\uXXXX` or a lone surrogate in a string.
    BadEscape,
    /// A malformed or out-of-range number literal.
    BadNumber,
    /// A malformed field or macro path (`a.`, `a..b`, `@`, `a.01`, `true.x`).
    BadPath,
}

impl ParseErrorCode {
    /// The stable snake_case code, e.g. `"too_deep"`, used in API error bodies.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::TooDeep => "too_deep",
            Self::TooManyTerms => "too_many_terms",
            Self::Empty => "empty",
            Self::UnexpectedToken => "unexpected_token",
            Self::UnexpectedEnd => "unexpected_end",
            Self::UnterminatedString => "unterminated_string",
            Self::BadEscape => "bad_escape",
            Self::BadNumber => "bad_number",
            Self::BadPath => "bad_path",
        }
    }
}

impl fmt::Display for ParseErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected filter: what went wrong, for machines (`code`) and humans (`message`),
/// and where (`position`, a byte offset into the input that is always `<=` its length
/// and on a character boundary).
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    /// The kind of problem.
    pub code: ParseErrorCode,
    /// A human explanation naming what was expected and what was found. It quotes at
    /// most about 40 characters of the input.
    pub message: String,
    /// Byte offset of the problem in the input.
    pub position: usize,
}

impl ParseError {
    pub(crate) fn new(code: ParseErrorCode, position: usize, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            position,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at position {}", self.message, self.position)
    }
}

impl std::error::Error for ParseError {}

/// A piece of input fit for a message: at most [`SNIPPET_CHARS`] characters (with `…`
/// when cut) and control characters escaped.
pub(crate) fn snippet(text: &str) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == SNIPPET_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_cuts_and_escapes() {
        assert_eq!(snippet("abc"), "abc");
        assert_eq!(snippet("a\nb"), "a\\nb");
        let long = "é".repeat(100);
        let cut = snippet(&long);
        assert_eq!(cut.chars().count(), SNIPPET_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn display_has_position() {
        let e = ParseError::new(ParseErrorCode::Empty, 3, "filter is empty");
        assert_eq!(e.to_string(), "filter is empty at position 3");
        assert_eq!(e.code.to_string(), "empty");
    }
}
