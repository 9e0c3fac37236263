//! The parser: checks the [`Limits`], then builds the [`Expr`] tree from the lexer's
//! tokens. Grammar (`&&` binds tighter than `||`, both left-associative):
//!
//! ```text
//! filter     := or
//! or         := and ( "||" and )*
//! and        := term ( "&&" term )*
//! term       := "(" or ")" | comparison
//! comparison := operand op operand
//! ```
//!
//! Although written as a grammar, the parser does not recurse: chains are folded in a
//! loop and each open parenthesis pushes a frame on an explicit stack, so neither a
//! 10,000-term chain nor deep nesting can exhaust the call stack.

use crate::ast::{Expr, Operand, Span};
use crate::error::{ParseError, ParseErrorCode, snippet};
use crate::lexer::{Lexer, Token, TokenKind, is_space};

/// Bounds on what a filter may be. The parser rejects inputs over them with a
/// [`ParseErrorCode::TooLong`], [`ParseErrorCode::TooDeep`] or
/// [`ParseErrorCode::TooManyTerms`] error.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Maximum input length in bytes (default 4096).
    pub max_len: usize,
    /// Maximum nesting of parentheses (default 32). `&&`/`||` chains are built
    /// iteratively and add no nesting; their length is bounded by `max_terms`.
    pub max_depth: usize,
    /// Maximum number of comparisons (default 200).
    pub max_terms: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_len: 4096,
            max_depth: 32,
            max_terms: 200,
        }
    }
}

/// One parenthesised group being read (the whole filter is the outermost one).
struct Group {
    /// The `||` alternatives completed so far.
    or: Option<Expr>,
    /// The `&&` chain of the current alternative, without its last term.
    and: Option<Expr>,
    /// Where the `(` is; `None` for the whole filter.
    open: Option<usize>,
}

impl Group {
    fn new(open: Option<usize>) -> Self {
        Self {
            or: None,
            and: None,
            open,
        }
    }

    /// Appends `term` to the current `&&` chain and returns the chain.
    fn and_chain(&mut self, term: Expr) -> Expr {
        match self.and.take() {
            None => term,
            Some(left) => Expr::And(Box::new(left), Box::new(term)),
        }
    }

    /// Ends the current alternative (an `||` or the end of the group follows) and
    /// returns all alternatives so far.
    fn or_chain(&mut self, term: Expr) -> Expr {
        let alternative = self.and_chain(term);
        match self.or.take() {
            None => alternative,
            Some(left) => Expr::Or(Box::new(left), Box::new(alternative)),
        }
    }
}

struct Parser<'a> {
    src: &'a str,
    lexer: Lexer<'a>,
    /// The next token, not yet consumed.
    tok: Token,
    limits: Limits,
    terms: usize,
}

pub(crate) fn parse_with(input: &str, limits: Limits) -> Result<Expr, ParseError> {
    if input.len() > limits.max_len {
        let mut at = limits.max_len;
        while !input.is_char_boundary(at) {
            at -= 1;
        }
        return Err(ParseError::new(
            ParseErrorCode::TooLong,
            at,
            format!(
                "filter is {} bytes long; the limit is {} bytes",
                input.len(),
                limits.max_len
            ),
        ));
    }
    if input.bytes().all(is_space) {
        return Err(ParseError::new(
            ParseErrorCode::Empty,
            0,
            "filter is empty; expected a comparison such as title = 'x'",
        ));
    }
    let mut lexer = Lexer::new(input);
    let tok = lexer.next_token()?;
    let mut parser = Parser {
        src: input,
        lexer,
        tok,
        limits,
        terms: 0,
    };
    parser.filter()
}

impl Parser<'_> {
    /// Consumes the current token, reading the next one, and returns the consumed one.
    fn bump(&mut self) -> Result<Token, ParseError> {
        let next = self.lexer.next_token()?;
        Ok(std::mem::replace(&mut self.tok, next))
    }

    fn text(&self, span: Span) -> &str {
        self.src.get(span.start..span.end).unwrap_or("")
    }

    /// The current token for messages: `'abc'`, `string 'x'`, or `end of input`.
    fn found(&self) -> String {
        let text = snippet(self.text(self.tok.span));
        match self.tok.kind {
            TokenKind::End => "end of input".to_owned(),
            TokenKind::Str(_) => format!("string {text}"),
            _ => format!("'{text}'"),
        }
    }

    /// An error about the current token: `UnexpectedEnd` at the end of the input,
    /// `UnexpectedToken` otherwise.
    fn unexpected(&self, expected: &str) -> ParseError {
        let code = if self.tok.kind == TokenKind::End {
            ParseErrorCode::UnexpectedEnd
        } else {
            ParseErrorCode::UnexpectedToken
        };
        ParseError::new(
            code,
            self.tok.span.start,
            format!("expected {expected}, found {}", self.found()),
        )
    }

    fn filter(&mut self) -> Result<Expr, ParseError> {
        let mut outer: Vec<Group> = Vec::new();
        let mut group = Group::new(None);
        loop {
            // A term starts here: a "(" or a comparison.
            if self.tok.kind == TokenKind::LParen {
                if outer.len() >= self.limits.max_depth {
                    return Err(ParseError::new(
                        ParseErrorCode::TooDeep,
                        self.tok.span.start,
                        format!(
                            "parentheses are nested more than {} deep",
                            self.limits.max_depth
                        ),
                    ));
                }
                let open = self.bump()?.span.start;
                outer.push(std::mem::replace(&mut group, Group::new(Some(open))));
                continue;
            }
            let mut term = self.comparison()?;
            // After a term: "&&", "||", ")" or the end, possibly closing several groups.
            loop {
                match self.tok.kind {
                    TokenKind::AndAnd => {
                        group.and = Some(group.and_chain(term));
                        self.bump()?;
                        break;
                    }
                    TokenKind::OrOr => {
                        group.or = Some(group.or_chain(term));
                        self.bump()?;
                        break;
                    }
                    TokenKind::RParen => {
                        let Some(parent) = outer.pop() else {
                            return Err(ParseError::new(
                                ParseErrorCode::UnexpectedToken,
                                self.tok.span.start,
                                "unmatched ')': no '(' is open here",
                            ));
                        };
                        self.bump()?;
                        term = std::mem::replace(&mut group, parent).or_chain(term);
                    }
                    TokenKind::End => {
                        if let Some(open) = group.open {
                            return Err(ParseError::new(
                                ParseErrorCode::UnexpectedEnd,
                                self.tok.span.start,
                                format!(
                                    "expected ')' to close the '(' at position {open}, found end of input"
                                ),
                            ));
                        }
                        return Ok(group.or_chain(term));
                    }
                    _ => {
                        let expected = if group.open.is_some() {
                            "'&&', '||' or ')' after a comparison"
                        } else {
                            "'&&', '||' or the end of the filter after a comparison"
                        };
                        return Err(self.unexpected(expected));
                    }
                }
            }
        }
    }

    fn comparison(&mut self) -> Result<Expr, ParseError> {
        self.terms += 1;
        if self.terms > self.limits.max_terms {
            return Err(ParseError::new(
                ParseErrorCode::TooManyTerms,
                self.tok.span.start,
                format!("filter has more than {} comparisons", self.limits.max_terms),
            ));
        }
        let Some(left) = self.operand()? else {
            return Err(self.unexpected("a comparison (a field, value or macro) or '('"));
        };
        let TokenKind::Op(op) = self.tok.kind else {
            let what = match &left {
                Operand::Field { .. } => "field",
                Operand::Macro { .. } => "macro",
                Operand::Literal { .. } => "value",
                Operand::Call { .. } => "function call",
            };
            let shown = snippet(self.text(left.span()));
            return Err(self.unexpected(&format!(
                "a comparison operator (=, !=, >, >=, <, <=, ~, !~) after {what} '{shown}'"
            )));
        };
        self.bump()?;
        let Some(right) = self.operand()? else {
            let mut err =
                self.unexpected(&format!("a field, value or macro after '{}'", op.as_str()));
            if self.tok.kind == TokenKind::Op(crate::CompareOp::Eq) {
                err.message.push_str(" (equality is a single '=')");
            }
            return Err(err);
        };
        let span = Span {
            start: left.span().start,
            end: right.span().end,
        };
        Ok(Expr::Compare {
            left,
            op,
            right,
            span,
        })
    }

    /// Consumes an operand if the current token is one: a field, literal or macro, or
    /// a function call (a one-segment name followed by `(`).
    fn operand(&mut self) -> Result<Option<Operand>, ParseError> {
        let Some(first) = self.simple_operand()? else {
            return Ok(None);
        };
        let Operand::Field { path, span } = &first else {
            return Ok(Some(first));
        };
        if self.tok.kind != TokenKind::LParen || path.len() != 1 {
            return Ok(Some(first));
        }
        let (name, start) = (path[0].clone(), span.start);
        self.bump()?;
        let mut args = Vec::new();
        loop {
            let Some(arg) = self.simple_operand()? else {
                return Err(self.unexpected(&format!(
                    "an argument of {name}() (a field, value or macro)"
                )));
            };
            if args.len() == crate::ast::MAX_ARGS {
                return Err(ParseError::new(
                    ParseErrorCode::UnexpectedToken,
                    arg.span().start,
                    format!("{name}() takes at most {} arguments", crate::ast::MAX_ARGS),
                ));
            }
            args.push(arg);
            match self.tok.kind {
                TokenKind::Comma => {
                    self.bump()?;
                }
                TokenKind::RParen => {
                    let end = self.tok.span.end;
                    self.bump()?;
                    return Ok(Some(Operand::Call {
                        name,
                        args,
                        span: Span { start, end },
                    }));
                }
                _ => return Err(self.unexpected(&format!("',' or ')' in {name}(...)"))),
            }
        }
    }

    /// Consumes a field, literal or macro if the current token is one.
    fn simple_operand(&mut self) -> Result<Option<Operand>, ParseError> {
        use crate::ast::Literal;
        let is_operand = matches!(
            self.tok.kind,
            TokenKind::Path(_)
                | TokenKind::Macro(_)
                | TokenKind::Str(_)
                | TokenKind::Integer(_)
                | TokenKind::Float(_)
                | TokenKind::True
                | TokenKind::False
                | TokenKind::Null
        );
        if !is_operand {
            return Ok(None);
        }
        let Token { kind, span } = self.bump()?;
        let operand = match kind {
            TokenKind::Path(path) => Operand::Field { path, span },
            TokenKind::Macro(path) => Operand::Macro { path, span },
            other => {
                let value = match other {
                    TokenKind::Str(s) => Literal::String(s),
                    TokenKind::Integer(n) => Literal::Integer(n),
                    TokenKind::Float(x) => Literal::Float(x),
                    TokenKind::True => Literal::Bool(true),
                    TokenKind::False => Literal::Bool(false),
                    _ => Literal::Null,
                };
                Operand::Literal { value, span }
            }
        };
        Ok(Some(operand))
    }
}
