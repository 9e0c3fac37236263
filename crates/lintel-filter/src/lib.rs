//! The Lintel filter language: a lexer and a parser that turn a
//! filter string such as `views > 500 && (title ~ "rust" || meta.tags.0 = 'news')`
//! into a typed tree ([`Expr`]).
//!
//! This crate owns only the syntax. It knows nothing about collections, schemas or
//! SQL: the server compiles the tree, checking every field against the collection's
//! schema and binding every literal as a parameter. The language is documented for
//! users in `docs/filters.md`.
//!
//! The parser never panics, never recurses on the shape of the input (parenthesised
//! groups and `&&`/`||` chains are handled with an explicit stack), and enforces
//! [`Limits`] on length, nesting depth and number of comparisons.
//!
//! ```
//! use lintel_filter::{parse, CompareOp, Expr};
//!
//! let expr = parse("a = 1 || b = 2 && c = 3")?;
//! assert!(matches!(expr, Expr::Or(_, _)));
//! assert_eq!(expr.to_string(), "a = 1 || (b = 2 && c = 3)");
//! assert_eq!(CompareOp::Like.as_str(), "~");
//!
//! let err = parse("title = ").unwrap_err();
//! assert_eq!(err.code.as_str(), "unexpected_end");
//! assert_eq!(err.position, 8);
//! # Ok::<(), lintel_filter::ParseError>(())
//! ```

#![forbid(unsafe_code)]

mod ast;
mod error;
mod lexer;
mod parser;

pub use ast::{CompareOp, Expr, Literal, MAX_ARGS, Operand, Span};
pub use error::{ParseError, ParseErrorCode};
pub use parser::Limits;

/// Parses a filter with [`Limits::default()`].
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    parse_with(input, Limits::default())
}

/// Parses a filter with the given limits.
///
/// An empty or whitespace-only input is an error ([`ParseErrorCode::Empty`]): a
/// caller without a filter should not call the parser.
pub fn parse_with(input: &str, limits: Limits) -> Result<Expr, ParseError> {
    parser::parse_with(input, limits)
}
