//! The filter tree produced by the parser ([`Expr`], [`Operand`], [`Literal`],
//! [`CompareOp`], [`Span`]) and its canonical printed form (`Display`), which parses
//! back to an equal tree (spans aside).

use std::fmt;

/// A byte range `start..end` of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
}

/// A parsed filter.
///
/// `&&` binds tighter than `||`; both are left-associative, so `a=1 && b=2 && c=3` is
/// `And(And(a, b), c)`. Parentheses leave no node of their own.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Both sides hold.
    And(Box<Expr>, Box<Expr>),
    /// Either side holds.
    Or(Box<Expr>, Box<Expr>),
    /// `left op right`; `span` covers both operands.
    Compare {
        /// The left operand.
        left: Operand,
        /// The operator.
        op: CompareOp,
        /// The right operand.
        right: Operand,
        /// From the start of `left` to the end of `right`.
        span: Span,
    },
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `~`: contains, case-insensitive.
    Like,
    /// `!~`: does not contain, case-insensitive.
    NotLike,
}

impl CompareOp {
    /// The operator as written in a filter, e.g. `"!~"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Like => "~",
            Self::NotLike => "!~",
        }
    }
}

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A field path: `title`, `meta.tags`, `meta.tags.0`. The first segment is an
    /// identifier; later ones are identifiers or decimal array indexes.
    Field {
        /// The segments, e.g. `["meta", "tags", "0"]`.
        path: Vec<String>,
        /// Where the path is in the input.
        span: Span,
    },
    /// A literal value.
    Literal {
        /// The value.
        value: Literal,
        /// Where the literal is in the input (quotes included).
        span: Span,
    },
    /// A macro: `@now` has path `["now"]`, `@request.auth.id` has
    /// `["request", "auth", "id"]`. The parser accepts any identifier path; the
    /// consumer decides which macros exist.
    Macro {
        /// The segments after `@`.
        path: Vec<String>,
        /// Where the macro is in the input (`@` included).
        span: Span,
    },
    /// A function call: `geoDistance(place, 52.5, 13.4)`. Arguments are fields,
    /// literals or macros (calls do not nest). The parser accepts any name; the
    /// consumer decides which functions exist.
    Call {
        /// The function's name.
        name: String,
        /// The arguments, at least one, at most [`MAX_ARGS`].
        args: Vec<Operand>,
        /// From the name to the closing parenthesis.
        span: Span,
    },
}

/// The most arguments a function call takes.
pub const MAX_ARGS: usize = 8;

impl Operand {
    /// Where this operand is in the input.
    pub fn span(&self) -> Span {
        match self {
            Self::Field { span, .. }
            | Self::Literal { span, .. }
            | Self::Macro { span, .. }
            | Self::Call { span, .. } => *span,
        }
    }
}

/// A literal value.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// A quoted string, escapes resolved.
    String(String),
    /// A number without fraction or exponent that fits in an `i64`.
    Integer(i64),
    /// Any other number; always finite.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
}

impl Expr {
    /// Every [`Operand::Field`] in the tree, left to right.
    pub fn fields(&self) -> Vec<&Operand> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(expr) = stack.pop() {
            match expr {
                Self::And(left, right) | Self::Or(left, right) => {
                    stack.push(right);
                    stack.push(left);
                }
                Self::Compare { left, right, .. } => {
                    for operand in [left, right] {
                        match operand {
                            Operand::Field { .. } => out.push(operand),
                            Operand::Call { args, .. } => out
                                .extend(args.iter().filter(|a| matches!(a, Operand::Field { .. }))),
                            Operand::Literal { .. } | Operand::Macro { .. } => {}
                        }
                    }
                }
            }
        }
        out
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The canonical form: one space around each operator, every `&&`/`||` group in
/// parentheses except the whole filter and the left side of a chain of the same
/// operator (`a = 1 && b = 2 && c = 3`, which is left-associative), strings in double
/// quotes. A tree from [`crate::parse`] prints to a filter that parses back to the
/// same tree, spans aside. The printed form may add parentheses (around `&&` inside
/// `||`), so it can nest one level deeper per such group than the original input.
/// Hand-built trees print the same way but need valid paths and finite floats to
/// parse back.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Compare {
                left, op, right, ..
            } => write!(f, "{left} {op} {right}"),
            Self::And(left, right) => write_binary(f, true, left, right),
            Self::Or(left, right) => write_binary(f, false, left, right),
        }
    }
}

fn write_binary(
    f: &mut fmt::Formatter<'_>,
    is_and: bool,
    left: &Expr,
    right: &Expr,
) -> fmt::Result {
    write_child(f, is_and, left, true)?;
    f.write_str(if is_and { " && " } else { " || " })?;
    write_child(f, is_and, right, false)
}

fn write_child(
    f: &mut fmt::Formatter<'_>,
    parent_is_and: bool,
    child: &Expr,
    is_left: bool,
) -> fmt::Result {
    let bare = match child {
        Expr::Compare { .. } => true,
        Expr::And(..) => parent_is_and && is_left,
        Expr::Or(..) => !parent_is_and && is_left,
    };
    if bare {
        write!(f, "{child}")
    } else {
        write!(f, "({child})")
    }
}

/// Prints the operand as it would be written in a filter.
impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field { path, .. } => f.write_str(&path.join(".")),
            Self::Macro { path, .. } => write!(f, "@{}", path.join(".")),
            Self::Literal { value, .. } => write!(f, "{value}"),
            Self::Call { name, args, .. } => {
                write!(f, "{name}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Prints the literal as it would be written in a filter: strings double-quoted with
/// `\\`, `\"`, `\n`, `\t`, `\r` and `\uXXXX` (other control characters) escapes;
/// floats always with a `.` or an exponent so they read back as floats.
impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    match c {
                        '\\' => f.write_str("\\\\")?,
                        '"' => f.write_str("\\\"")?,
                        '\n' => f.write_str("\\n")?,
                        '\t' => f.write_str("\\t")?,
                        '\r' => f.write_str("\\r")?,
                        c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("\"")
            }
            Self::Integer(n) => write!(f, "{n}"),
            Self::Float(x) => {
                let text = format!("{x:?}");
                f.write_str(&text)?;
                if text.bytes().all(|b| b == b'-' || b.is_ascii_digit()) {
                    f.write_str(".0")?;
                }
                Ok(())
            }
            Self::Bool(b) => write!(f, "{b}"),
            Self::Null => f.write_str("null"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(value: Literal) -> Operand {
        Operand::Literal {
            value,
            span: Span { start: 0, end: 0 },
        }
    }

    #[test]
    fn literals_print_canonically() {
        assert_eq!(lit(Literal::Float(1.0)).to_string(), "1.0");
        assert_eq!(lit(Literal::Float(-0.0)).to_string(), "-0.0");
        assert_eq!(lit(Literal::Float(1e300)).to_string(), "1e300");
        assert_eq!(lit(Literal::Integer(-7)).to_string(), "-7");
        assert_eq!(
            lit(Literal::String("a\"b\\c\n\u{1}é".into())).to_string(),
            "\"a\\\"b\\\\c\\n\\u0001é\""
        );
        assert_eq!(lit(Literal::Null).to_string(), "null");
        assert_eq!(lit(Literal::Bool(false)).to_string(), "false");
    }

    #[test]
    fn operand_span_of_each_kind() {
        let span = Span { start: 2, end: 5 };
        let field = Operand::Field {
            path: vec!["a".into()],
            span,
        };
        let mac = Operand::Macro {
            path: vec!["now".into()],
            span,
        };
        assert_eq!(field.span(), span);
        assert_eq!(mac.span(), span);
        assert_eq!(mac.to_string(), "@now");
    }
}
