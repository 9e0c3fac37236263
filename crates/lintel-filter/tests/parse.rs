//! Example-based tests of the public API: every operator, operand and literal form,
//! precedence and grouping, each error code with its exact position, injection-looking
//! inputs, and the limits.

use lintel_filter::{
    CompareOp, Expr, Limits, Literal, Operand, ParseError, ParseErrorCode, Span, parse, parse_with,
};

fn ok(src: &str) -> Expr {
    match parse(src) {
        Ok(expr) => expr,
        Err(err) => panic!("{src:?} should parse, got {err}"),
    }
}

fn err(src: &str) -> ParseError {
    match parse(src) {
        Ok(expr) => panic!("{src:?} should fail, got {expr:?}"),
        Err(err) => err,
    }
}

fn assert_err(src: &str, code: ParseErrorCode, position: usize) {
    let e = err(src);
    assert_eq!((e.code, e.position), (code, position), "{src:?}: {e}");
    assert!(e.position <= src.len() && src.is_char_boundary(e.position));
}

fn span(start: usize, end: usize) -> Span {
    Span { start, end }
}

fn field(path: &[&str], start: usize, end: usize) -> Operand {
    Operand::Field {
        path: path.iter().map(|s| (*s).to_owned()).collect(),
        span: span(start, end),
    }
}

fn lit(value: Literal, start: usize, end: usize) -> Operand {
    Operand::Literal {
        value,
        span: span(start, end),
    }
}

/// The single comparison a filter must be.
fn compare(src: &str) -> (Operand, CompareOp, Operand, Span) {
    match ok(src) {
        Expr::Compare {
            left,
            op,
            right,
            span,
        } => (left, op, right, span),
        other => panic!("{src:?} is not one comparison: {other:?}"),
    }
}

/// The literal on the right of `x = <literal>`.
fn value(literal: &str) -> Literal {
    match compare(&format!("x = {literal}")).2 {
        Operand::Literal { value, .. } => value,
        other => panic!("{literal:?} is not a literal: {other:?}"),
    }
}

fn string_value(literal: &str) -> String {
    match value(literal) {
        Literal::String(s) => s,
        other => panic!("{literal:?} is not a string: {other:?}"),
    }
}

// ---------------------------------------------------------------- comparisons

#[test]
fn every_operator() {
    let cases = [
        ("=", CompareOp::Eq),
        ("!=", CompareOp::Ne),
        (">", CompareOp::Gt),
        (">=", CompareOp::Ge),
        ("<", CompareOp::Lt),
        ("<=", CompareOp::Le),
        ("~", CompareOp::Like),
        ("!~", CompareOp::NotLike),
    ];
    for (token, want) in cases {
        assert_eq!(want.as_str(), token);
        for src in [format!("a {token} 1"), format!("a{token}1")] {
            let (left, op, right, _) = compare(&src);
            assert_eq!(op, want, "{src}");
            assert!(matches!(left, Operand::Field { .. }));
            assert!(matches!(
                right,
                Operand::Literal {
                    value: Literal::Integer(1),
                    ..
                }
            ));
        }
    }
}

#[test]
fn comparison_spans() {
    let src = "  title  =  'abc'  ";
    let (left, op, right, whole) = compare(src);
    assert_eq!(left, field(&["title"], 2, 7));
    assert_eq!(op, CompareOp::Eq);
    assert_eq!(right, lit(Literal::String("abc".into()), 12, 17));
    assert_eq!(whole, span(2, 17));
}

#[test]
fn literal_on_the_left_and_macros() {
    let (left, _, right, _) = compare("'x' != @request.auth.id");
    assert!(matches!(left, Operand::Literal { .. }));
    assert_eq!(
        right,
        Operand::Macro {
            path: vec!["request".into(), "auth".into(), "id".into()],
            span: span(7, 23),
        }
    );
    let (_, op, right, _) = compare("created<=@now");
    assert_eq!(op, CompareOp::Le);
    assert_eq!(
        right,
        Operand::Macro {
            path: vec!["now".into()],
            span: span(9, 13),
        }
    );
}

#[test]
fn field_paths() {
    assert_eq!(compare("meta.tags ~ 'x'").0, field(&["meta", "tags"], 0, 9));
    assert_eq!(
        compare("meta.tags.0 = 'x'").0,
        field(&["meta", "tags", "0"], 0, 11)
    );
    assert_eq!(
        compare("items.12.sku_2 = 'x'").0,
        field(&["items", "12", "sku_2"], 0, 14)
    );
    assert_eq!(compare("_a.B9 = 1").0, field(&["_a", "B9"], 0, 5));
    // Non-first segments may be keywords; only a whole-path keyword is a literal.
    assert_eq!(compare("a.null = 1").0, field(&["a", "null"], 0, 6));
    assert_eq!(compare("TRUE = 1").0, field(&["TRUE"], 0, 4));
}

#[test]
fn fields_helper_lists_fields_in_order() {
    let expr = ok("a = b || (@now > c.d && 'x' ~ e.0)");
    let names: Vec<String> = expr.fields().iter().map(|f| f.to_string()).collect();
    assert_eq!(names, ["a", "b", "c.d", "e.0"]);
}

// ---------------------------------------------------------------- literals

#[test]
fn keyword_literals() {
    assert_eq!(value("true"), Literal::Bool(true));
    assert_eq!(value("false"), Literal::Bool(false));
    assert_eq!(value("null"), Literal::Null);
}

#[test]
fn both_quote_kinds() {
    assert_eq!(string_value("'it\"s'"), "it\"s");
    assert_eq!(string_value("\"it's\""), "it's");
    assert_eq!(string_value("''"), "");
    assert_eq!(string_value("\"\""), "");
    assert_eq!(string_value("'héllo 😀 && || ( )'"), "héllo 😀 && || ( )");
    assert_eq!(string_value("'two\nlines'"), "two\nlines");
}

#[test]
fn every_escape() {
    assert_eq!(string_value(r"'a\\b'"), "a\\b");
    assert_eq!(string_value(r"'a\'b'"), "a'b");
    assert_eq!(string_value(r#"'a\"b'"#), "a\"b");
    assert_eq!(string_value(r#""a\'b\"c""#), "a'b\"c");
    assert_eq!(string_value(r"'a\nb'"), "a\nb");
    assert_eq!(string_value(r"'a\tb'"), "a\tb");
    assert_eq!(string_value(r"'a\rb'"), "a\rb");
    assert_eq!(string_value(r"'\u0041\u00e9\u20AC'"), "Aé€");
    assert_eq!(string_value(r"'\ud83d\ude00'"), "😀");
}

#[test]
fn numbers() {
    assert_eq!(value("0"), Literal::Integer(0));
    assert_eq!(value("42"), Literal::Integer(42));
    assert_eq!(value("-42"), Literal::Integer(-42));
    assert_eq!(value("-0"), Literal::Integer(0));
    assert_eq!(value("1.5"), Literal::Float(1.5));
    assert_eq!(value("-0.25"), Literal::Float(-0.25));
    assert_eq!(value("1.0"), Literal::Float(1.0));
    assert_eq!(value("1e3"), Literal::Float(1000.0));
    assert_eq!(value("2E+2"), Literal::Float(200.0));
    assert_eq!(value("-1.5e-3"), Literal::Float(-0.0015));
    assert_eq!(value("9223372036854775807"), Literal::Integer(i64::MAX));
    assert_eq!(value("-9223372036854775808"), Literal::Integer(i64::MIN));
    assert_eq!(
        value("9223372036854775808"),
        Literal::Float(9_223_372_036_854_775_808.0)
    );
    assert_eq!(
        value("-9223372036854775809"),
        Literal::Float(-9_223_372_036_854_775_809.0)
    );
    assert_eq!(value("1e308"), Literal::Float(1e308));
}

#[test]
fn negative_number_after_operator_without_spaces() {
    let (_, op, right, _) = compare("a<-1");
    assert_eq!(op, CompareOp::Lt);
    assert_eq!(right, lit(Literal::Integer(-1), 2, 4));
}

// ---------------------------------------------------------------- booleans

#[test]
fn and_binds_tighter_than_or() {
    let expr = ok("a=1 || b=2 && c=3");
    let Expr::Or(left, right) = &expr else {
        panic!("{expr:?}");
    };
    assert!(matches!(**left, Expr::Compare { .. }));
    assert!(matches!(**right, Expr::And(..)));
    assert_eq!(expr.to_string(), "a = 1 || (b = 2 && c = 3)");

    let expr = ok("a=1 && b=2 || c=3");
    assert!(matches!(&expr, Expr::Or(l, _) if matches!(**l, Expr::And(..))));
    assert_eq!(expr.to_string(), "(a = 1 && b = 2) || c = 3");
}

#[test]
fn chains_are_left_associative() {
    let expr = ok("a=1 && b=2 && c=3");
    assert!(matches!(&expr, Expr::And(l, r)
        if matches!(**l, Expr::And(..)) && matches!(**r, Expr::Compare { .. })));
    assert_eq!(expr.to_string(), "a = 1 && b = 2 && c = 3");
    let expr = ok("a=1 || b=2 || c=3");
    assert!(matches!(&expr, Expr::Or(l, _) if matches!(**l, Expr::Or(..))));
}

#[test]
fn parentheses_group() {
    let expr = ok("(a=1 || b=2) && c=3");
    assert!(matches!(&expr, Expr::And(l, _) if matches!(**l, Expr::Or(..))));
    assert_eq!(expr.to_string(), "(a = 1 || b = 2) && c = 3");

    let expr = ok("a=1 && (b=2 && c=3)");
    assert!(matches!(&expr, Expr::And(_, r) if matches!(**r, Expr::And(..))));
    assert_eq!(expr.to_string(), "a = 1 && (b = 2 && c = 3)");

    // Redundant parentheses leave no trace.
    assert!(
        matches!(ok("((a = 1))"), Expr::Compare { span, .. } if span == Span { start: 2, end: 7 })
    );
    assert_eq!(
        ok("((a=1)||(b=2))&&((c=3))").to_string(),
        "(a = 1 || b = 2) && c = 3"
    );
    assert_eq!(
        ok("(\n\ta = 1\r\n)").to_string(),
        "a = 1",
        "all whitespace kinds"
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn error_codes_are_stable_strings() {
    let codes = [
        (ParseErrorCode::TooLong, "too_long"),
        (ParseErrorCode::TooDeep, "too_deep"),
        (ParseErrorCode::TooManyTerms, "too_many_terms"),
        (ParseErrorCode::Empty, "empty"),
        (ParseErrorCode::UnexpectedToken, "unexpected_token"),
        (ParseErrorCode::UnexpectedEnd, "unexpected_end"),
        (ParseErrorCode::UnterminatedString, "unterminated_string"),
        (ParseErrorCode::BadEscape, "bad_escape"),
        (ParseErrorCode::BadNumber, "bad_number"),
        (ParseErrorCode::BadPath, "bad_path"),
    ];
    for (code, text) in codes {
        assert_eq!(code.as_str(), text);
    }
}

#[test]
fn empty() {
    assert_err("", ParseErrorCode::Empty, 0);
    assert_err(" \t\r\n ", ParseErrorCode::Empty, 0);
}

#[test]
fn too_long() {
    let src = format!("a = '{}'", "x".repeat(5000));
    assert_err(&src, ParseErrorCode::TooLong, 4096);
    let limits = Limits {
        max_len: 5,
        ..Limits::default()
    };
    // 'é' spans bytes 4..6: the position backs off to a char boundary.
    let e = parse_with("a = é", limits).err();
    assert_eq!(
        e.map(|e| (e.code, e.position)),
        Some((ParseErrorCode::TooLong, 4))
    );
    assert!(
        parse_with("a = 1", limits).is_ok(),
        "exactly max_len is fine"
    );
}

#[test]
fn unexpected_end() {
    assert_err("title = ", ParseErrorCode::UnexpectedEnd, 8);
    assert_err("title", ParseErrorCode::UnexpectedEnd, 5);
    assert_err("a = 1 &&", ParseErrorCode::UnexpectedEnd, 8);
    assert_err("a = 1 || ", ParseErrorCode::UnexpectedEnd, 9);
    assert_err("(a = 1", ParseErrorCode::UnexpectedEnd, 6);
    assert_err("(", ParseErrorCode::UnexpectedEnd, 1);
    let e = err("title = ");
    assert_eq!(
        e.to_string(),
        "expected a field, value or macro after '=', found end of input at position 8"
    );
    assert!(err("((a = 1)").message.contains("'(' at position 0"));
}

#[test]
fn unexpected_token() {
    assert_err("title abc", ParseErrorCode::UnexpectedToken, 6);
    assert_eq!(
        err("title abc").message,
        "expected a comparison operator (=, !=, >, >=, <, <=, ~, !~) after field 'title', found 'abc'"
    );
    assert_err("a = 1 b = 2", ParseErrorCode::UnexpectedToken, 6);
    assert_err("a = 1)", ParseErrorCode::UnexpectedToken, 5);
    assert_err("()", ParseErrorCode::UnexpectedToken, 1);
    assert_err("&& a = 1", ParseErrorCode::UnexpectedToken, 0);
    assert_err("a = = 1", ParseErrorCode::UnexpectedToken, 4);
    assert!(err("a == 1").message.contains("single '='"));
    assert_err("a = 1 & b = 2", ParseErrorCode::UnexpectedToken, 6);
    assert_err("a = 1 | b = 2", ParseErrorCode::UnexpectedToken, 6);
    assert_err("a ! 1", ParseErrorCode::UnexpectedToken, 2);
    assert_err("a = 1 # x", ParseErrorCode::UnexpectedToken, 6);
    assert_err("a = 1 AND b = 2", ParseErrorCode::UnexpectedToken, 6);
    assert_err("é = 1", ParseErrorCode::UnexpectedToken, 0);
    assert_err("a\u{a0}= 1", ParseErrorCode::UnexpectedToken, 1);
    assert_err("a = .5", ParseErrorCode::UnexpectedToken, 4);
    assert_err("a = 1 = 2", ParseErrorCode::UnexpectedToken, 6);
    assert_err("a = 1 (b = 2)", ParseErrorCode::UnexpectedToken, 6);
}

#[test]
fn unterminated_string_reports_the_opening_quote() {
    assert_err("title = 'abc", ParseErrorCode::UnterminatedString, 8);
    assert_err("title = \"abc'", ParseErrorCode::UnterminatedString, 8);
    assert_err("t = 'abc\\'", ParseErrorCode::UnterminatedString, 4);
    assert_err("'", ParseErrorCode::UnterminatedString, 0);
}

#[test]
fn bad_escape_reports_the_backslash() {
    assert_err(r"t = 'ab\q'", ParseErrorCode::BadEscape, 7);
    assert_err(r"t = '\x41'", ParseErrorCode::BadEscape, 5);
    assert_err(r"t = '\u12g4'", ParseErrorCode::BadEscape, 5);
    assert_err(r"t = '\U0041'", ParseErrorCode::BadEscape, 5);
    assert_err(r"t = 'a\ud800'", ParseErrorCode::BadEscape, 6);
    assert_err(r"t = '\udfff'", ParseErrorCode::BadEscape, 5);
    assert_err("t = '\\é'", ParseErrorCode::BadEscape, 5);
    assert!(err(r"t = '\q'").message.contains("\\uXXXX"));
}

#[test]
fn bad_number_reports_its_start() {
    assert_err("a = -", ParseErrorCode::BadNumber, 4);
    assert_err("a = -x", ParseErrorCode::BadNumber, 4);
    assert_err("a = 1.", ParseErrorCode::BadNumber, 4);
    assert_err("a = 1.e5", ParseErrorCode::BadNumber, 4);
    assert_err("a = 1e", ParseErrorCode::BadNumber, 4);
    assert_err("a = 1e+", ParseErrorCode::BadNumber, 4);
    assert_err("a = 12abc", ParseErrorCode::BadNumber, 4);
    assert_err("a = 1.2.3", ParseErrorCode::BadNumber, 4);
    assert_err("a = 1e999", ParseErrorCode::BadNumber, 4);
    assert_err("a = -1e400", ParseErrorCode::BadNumber, 4);
    assert_err("0.5x = 1", ParseErrorCode::BadNumber, 0);
}

#[test]
fn bad_path() {
    assert_err("meta. = 1", ParseErrorCode::BadPath, 5);
    assert_err("meta = 1 && a. b = 1", ParseErrorCode::BadPath, 14);
    assert_err("meta..tags = 1", ParseErrorCode::BadPath, 5);
    assert_err("meta.tags.01 = 1", ParseErrorCode::BadPath, 10);
    assert_err("meta.1x = 1", ParseErrorCode::BadPath, 5);
    assert_err("meta.é = 1", ParseErrorCode::BadPath, 5);
    assert_err("true.x = 1", ParseErrorCode::BadPath, 0);
    assert_err("a = @", ParseErrorCode::BadPath, 5);
    assert_err("a = @ now", ParseErrorCode::BadPath, 5);
    assert_err("a = @1", ParseErrorCode::BadPath, 5);
    assert_err("a = @request.0", ParseErrorCode::BadPath, 13);
    assert_err("a = @now.", ParseErrorCode::BadPath, 9);
}

#[test]
fn messages_quote_little_of_the_input() {
    let long = "x".repeat(1000);
    for src in [
        format!("{long} {long}"),
        format!("a = 1 '{long}'"),
        format!("a = 1{long}"),
        format!("a.{long}x.01{long} = 1"),
        format!("{long} = 1 &&"),
        format!("a = '\\{long}'"),
    ] {
        let e = err(&src);
        assert!(
            e.message.chars().count() < 200,
            "{} chars: {}",
            e.message.len(),
            e.message
        );
    }
}

// ---------------------------------------------------------------- injection

#[test]
fn injection_looking_inputs_are_data_or_errors() {
    // The quote closes the string; the rest is a stray string token.
    assert_err(
        "title = 'x''; DROP TABLE posts;--'",
        ParseErrorCode::UnexpectedToken,
        11,
    );
    // The quote opens a string that never closes.
    assert_err(
        "title'; DROP TABLE posts;--",
        ParseErrorCode::UnterminatedString,
        5,
    );
    // Escaped, it is plain data.
    assert_eq!(
        string_value(r"'x\'; DROP TABLE posts;--'"),
        "x'; DROP TABLE posts;--"
    );
    assert_eq!(string_value("\"1' OR '1'='1\""), "1' OR '1'='1");
    assert_err(
        "title = 1; DROP TABLE posts",
        ParseErrorCode::UnexpectedToken,
        9,
    );
    assert_err("title = 1 -- comment", ParseErrorCode::BadNumber, 10);
    assert_err("title = 1 /* c */", ParseErrorCode::UnexpectedToken, 10);
    assert_err("ti`tle` = 1", ParseErrorCode::UnexpectedToken, 2);
    assert_err("a = 1 OR 1=1", ParseErrorCode::UnexpectedToken, 6);
}

// ---------------------------------------------------------------- limits

#[test]
fn depth_limit() {
    let nested = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
    assert!(parse(&nested(32)).is_ok());
    assert_err(&nested(33), ParseErrorCode::TooDeep, 32);
    // Far deeper than any call stack would survive, with the limits lifted.
    let huge = Limits {
        max_len: usize::MAX,
        max_depth: usize::MAX,
        max_terms: usize::MAX,
    };
    assert!(parse_with(&nested(100_000), huge).is_ok());
    let tight = Limits {
        max_depth: 0,
        ..Limits::default()
    };
    let e = parse_with("(a = 1)", tight).err();
    assert_eq!(
        e.map(|e| (e.code, e.position)),
        Some((ParseErrorCode::TooDeep, 0))
    );
}

#[test]
fn terms_limit() {
    let chain = |n: usize| vec!["a=1"; n].join("&&");
    assert!(parse(&chain(200)).is_ok());
    // 201 terms: the 201st starts at byte 200 * 5.
    assert_err(&chain(201), ParseErrorCode::TooManyTerms, 1000);
    let long = Limits {
        max_len: usize::MAX,
        ..Limits::default()
    };
    let e = parse_with(&chain(10_000), long).err();
    assert_eq!(
        e.map(|e| (e.code, e.position)),
        Some((ParseErrorCode::TooManyTerms, 1000))
    );
    // With the default length limit, the same chain is simply too long.
    assert_err(&chain(10_000), ParseErrorCode::TooLong, 4096);
    // The chain is built without recursion even when allowed.
    let unlimited = Limits {
        max_len: usize::MAX,
        max_depth: 32,
        max_terms: usize::MAX,
    };
    let mixed = vec!["a=1"; 10_000].join("||");
    for src in [chain(10_000), mixed] {
        match parse_with(&src, unlimited) {
            Ok(expr) => drop_iteratively(expr),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Drops a left-deep chain without recursing 10,000 deep in `drop`.
fn drop_iteratively(mut expr: Expr) {
    let mut count = 1;
    while let Expr::And(left, right) | Expr::Or(left, right) = expr {
        drop(right);
        expr = *left;
        count += 1;
    }
    assert_eq!(count, 10_000);
}

#[test]
fn terms_count_across_groups() {
    let limits = Limits {
        max_terms: 2,
        ..Limits::default()
    };
    assert!(parse_with("(a=1) || (b=2)", limits).is_ok());
    let e = parse_with("(a=1) || (b=2 && c=3)", limits).err();
    assert_eq!(
        e.map(|e| (e.code, e.position)),
        Some((ParseErrorCode::TooManyTerms, 17))
    );
}

#[test]
fn function_calls_parse_with_their_arguments_and_print_back() {
    let expr = lintel_filter::parse("geoDistance(place, 52.5, @request.body.lon) < 10").unwrap();
    let lintel_filter::Expr::Compare { left, .. } = &expr else {
        panic!("a comparison: {expr:?}")
    };
    let lintel_filter::Operand::Call { name, args, span } = left else {
        panic!("a call: {left:?}")
    };
    assert_eq!(name, "geoDistance");
    assert_eq!(args.len(), 3);
    assert_eq!((span.start, span.end), (0, 43));
    assert_eq!(
        expr.to_string(),
        "geoDistance(place, 52.5, @request.body.lon) < 10"
    );
    // Calls only take plain operands, and a dotted name is a field, not a function.
    for (bad, position) in [
        ("f(g(a)) = 1", 3),
        ("f() = 1", 2),
        ("f(a b) = 1", 4),
        ("f(a, ) = 1", 5),
        ("a.b(c) = 1", 3),
        ("f(a,b,c,d,e,f,g,h,i) = 1", 18),
    ] {
        let err = lintel_filter::parse(bad).unwrap_err();
        assert_eq!(err.position, position, "{bad}: {err:?}");
    }
}
