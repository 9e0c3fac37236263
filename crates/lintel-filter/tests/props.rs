//! Property tests: the parser never panics and reports sane error positions on any
//! input (arbitrary unicode, and soups of the language's own tokens), and a generated
//! tree printed with `Display` parses back to an equal tree with spans that point at
//! the printed operands.

use lintel_filter::{CompareOp, Expr, Limits, Literal, Operand, ParseError, Span, parse_with};
use proptest::prelude::*;

const NO_SPAN: Span = Span { start: 0, end: 0 };

/// Large enough for anything generated here; only the parser's own logic is tested.
const ROOMY: Limits = Limits {
    max_len: usize::MAX,
    max_depth: usize::MAX,
    max_terms: usize::MAX,
};

/// Pieces of the language, valid and not, to build inputs that get past the lexer.
const TOKENS: &[&str] = &[
    "a",
    "geoDistance(",
    ",",
    "f()",
    "title",
    "meta.tags.0",
    "meta.",
    ".",
    "..",
    "x.01",
    "true",
    "false",
    "null",
    "true.x",
    "@now",
    "@request.auth.id",
    "@",
    "@1",
    "'x'",
    "\"y\"",
    "'",
    "\"",
    "\\",
    "\\'",
    "\\u",
    "\\ud83d",
    "\\ude00",
    "\\u00e9",
    "\\q",
    "1",
    "-",
    "-3",
    "1.5",
    "1.",
    "1e",
    "1e9",
    "9223372036854775808",
    "1e999",
    "=",
    "==",
    "!=",
    "!",
    ">",
    ">=",
    "<",
    "<=",
    "~",
    "!~",
    "&&",
    "||",
    "&",
    "|",
    "(",
    ")",
    "((",
    "))",
    " ",
    "\t",
    "\n",
    "é",
    "😀",
    "\u{0}",
    "#",
    ";",
    "--",
    "_",
    "0",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(TOKENS), any::<bool>()), 0..60).prop_map(|parts| {
        let mut out = String::new();
        for (token, space) in parts {
            out.push_str(token);
            if space {
                out.push(' ');
            }
        }
        out
    })
}

fn small_limits() -> impl Strategy<Value = Limits> {
    (0usize..200, 0usize..6, 0usize..8).prop_map(|(max_len, max_depth, max_terms)| Limits {
        max_len,
        max_depth,
        max_terms,
    })
}

/// Checks what every result must satisfy; on success, also that the printed form
/// reparses to the same tree.
fn check(input: &str, result: Result<Expr, ParseError>) -> Result<(), TestCaseError> {
    match result {
        Err(e) => {
            prop_assert!(e.position <= input.len(), "{e:?}");
            prop_assert!(input.is_char_boundary(e.position), "{e:?}");
            prop_assert!(e.message.chars().count() < 250, "{e:?}");
            prop_assert!(!e.message.is_empty());
        }
        Ok(expr) => {
            for operand in operands(&expr) {
                let span = operand.span();
                prop_assert!(span.start < span.end && span.end <= input.len());
                prop_assert!(input.get(span.start..span.end).is_some());
            }
            let printed = expr.to_string();
            let again = parse_with(&printed, ROOMY);
            prop_assert_eq!(again.map(|e| strip(&e)), Ok(strip(&expr)), "{}", printed);
        }
    }
    Ok(())
}

fn operands(expr: &Expr) -> Vec<&Operand> {
    match expr {
        Expr::And(l, r) | Expr::Or(l, r) => {
            let mut out = operands(l);
            out.extend(operands(r));
            out
        }
        Expr::Compare { left, right, .. } => vec![left, right],
    }
}

/// The tree with every span zeroed.
fn strip(expr: &Expr) -> Expr {
    fn operand(o: &Operand) -> Operand {
        match o {
            Operand::Field { path, .. } => Operand::Field {
                path: path.clone(),
                span: NO_SPAN,
            },
            Operand::Macro { path, .. } => Operand::Macro {
                path: path.clone(),
                span: NO_SPAN,
            },
            Operand::Literal { value, .. } => Operand::Literal {
                value: value.clone(),
                span: NO_SPAN,
            },
            Operand::Call { name, args, .. } => Operand::Call {
                name: name.clone(),
                args: args.iter().map(operand).collect(),
                span: NO_SPAN,
            },
        }
    }
    match expr {
        Expr::And(l, r) => Expr::And(Box::new(strip(l)), Box::new(strip(r))),
        Expr::Or(l, r) => Expr::Or(Box::new(strip(l)), Box::new(strip(r))),
        Expr::Compare {
            left, op, right, ..
        } => Expr::Compare {
            left: operand(left),
            op: *op,
            right: operand(right),
            span: NO_SPAN,
        },
    }
}

// ---------------------------------------------------------------- tree generator

fn ident() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,6}"
}

fn field_path() -> impl Strategy<Value = Vec<String>> {
    let first = ident().prop_filter("keywords are literals", |s| {
        !matches!(s.as_str(), "true" | "false" | "null")
    });
    let rest = prop::collection::vec(prop_oneof![ident(), "0|[1-9][0-9]{0,3}"], 0..3);
    (first, rest).prop_map(|(first, rest)| {
        let mut path = vec![first];
        path.extend(rest);
        path
    })
}

fn macro_path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(ident(), 1..4)
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        any::<String>().prop_map(Literal::String),
        "[ -~]{0,12}".prop_map(Literal::String),
        any::<i64>().prop_map(Literal::Integer),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Literal::Float),
        (-1000i32..1000).prop_map(|n| Literal::Float(f64::from(n) / 8.0)),
        any::<bool>().prop_map(Literal::Bool),
        Just(Literal::Null),
    ]
}

fn operand() -> impl Strategy<Value = Operand> {
    let name = ident().prop_filter("keywords are literals", |s| {
        !matches!(s.as_str(), "true" | "false" | "null")
    });
    let call = (name, prop::collection::vec(simple_operand(), 1..4)).prop_map(|(name, args)| {
        Operand::Call {
            name,
            args,
            span: NO_SPAN,
        }
    });
    prop_oneof![4 => simple_operand(), 1 => call]
}

fn simple_operand() -> impl Strategy<Value = Operand> {
    prop_oneof![
        field_path().prop_map(|path| Operand::Field {
            path,
            span: NO_SPAN
        }),
        literal().prop_map(|value| Operand::Literal {
            value,
            span: NO_SPAN
        }),
        macro_path().prop_map(|path| Operand::Macro {
            path,
            span: NO_SPAN
        }),
    ]
}

fn compare_op() -> impl Strategy<Value = CompareOp> {
    prop::sample::select(vec![
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Gt,
        CompareOp::Ge,
        CompareOp::Lt,
        CompareOp::Le,
        CompareOp::Like,
        CompareOp::NotLike,
    ])
}

fn expr_tree() -> impl Strategy<Value = Expr> {
    let leaf = (operand(), compare_op(), operand()).prop_map(|(left, op, right)| Expr::Compare {
        left,
        op,
        right,
        span: NO_SPAN,
    });
    leaf.prop_recursive(6, 48, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(l, r)| Expr::And(Box::new(l), Box::new(r))),
            (inner.clone(), inner).prop_map(|(l, r)| Expr::Or(Box::new(l), Box::new(r))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_unicode_never_panics(input in any::<String>()) {
        check(&input, parse_with(&input, Limits::default()))?;
    }

    #[test]
    fn printable_ascii_never_panics(input in "[ -~]{0,80}") {
        check(&input, parse_with(&input, Limits::default()))?;
    }

    #[test]
    fn token_soup_never_panics(input in token_soup()) {
        check(&input, parse_with(&input, Limits::default()))?;
    }

    #[test]
    fn token_soup_under_small_limits(input in token_soup(), limits in small_limits()) {
        check(&input, parse_with(&input, limits))?;
    }

    #[test]
    fn printed_tree_parses_back(tree in expr_tree()) {
        let printed = tree.to_string();
        let parsed = parse_with(&printed, ROOMY);
        prop_assert_eq!(parsed.as_ref().map(strip), Ok(strip(&tree)), "{}", printed);
        // Spans point at the operands as printed.
        if let Ok(parsed) = parsed {
            for operand in operands(&parsed) {
                let span = operand.span();
                let text = operand.to_string();
                prop_assert_eq!(printed.get(span.start..span.end), Some(text.as_str()));
            }
            prop_assert_eq!(parsed.to_string(), printed);
        }
    }

    #[test]
    fn printed_tree_respects_default_limits(tree in expr_tree()) {
        // Generated trees have at most 6 levels and 64 comparisons, well within the
        // defaults, so only the length limit can reject the printed form.
        let printed = tree.to_string();
        match parse_with(&printed, Limits { max_len: usize::MAX, ..Limits::default() }) {
            Ok(parsed) => prop_assert_eq!(strip(&parsed), strip(&tree)),
            Err(e) => prop_assert!(false, "{} for {}", e, printed),
        }
    }
}
