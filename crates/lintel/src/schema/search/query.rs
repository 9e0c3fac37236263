//! The search query language: words (all must match), `"exact phrase"`, `prefix*`,
//! `-excluded`, `a OR b`. A query is parsed once ([`parse`]), analyzed for the
//! languages of a collection ([`Parsed::analyze`]), then written as an FTS5 `MATCH`
//! expression or a `tsquery`; the analyzed terms also drive highlighting.

use std::collections::BTreeSet;

use super::analyze::{Language, lowercase, words};

pub const MAX_QUERY_CHARS: usize = 512;
pub const MAX_TERMS: usize = 32;

/// Why a query does not parse; `position` counts characters from 0.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchError {
    pub message: String,
    pub position: usize,
}

fn err(position: usize, message: impl Into<String>) -> SearchError {
    SearchError {
        message: message.into(),
        position,
    }
}

/// Consecutive words; with `prefix`, the last one is a prefix.
#[derive(Debug, Clone, PartialEq)]
struct Atom {
    words: Vec<String>,
    prefix: bool,
}

/// Alternatives joined by `OR` (one for a plain term); `negated` excludes them.
#[derive(Debug, Clone, PartialEq)]
struct Clause {
    negated: bool,
    alts: Vec<Atom>,
}

/// A parsed query, not yet analyzed.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    clauses: Vec<Clause>,
}

enum Token {
    Or,
    Atom { negated: bool, atom: Option<Atom> },
}

/// Parses a query. Terms that hold no word (punctuation only) are ignored.
pub fn parse(q: &str) -> Result<Parsed, SearchError> {
    let chars: Vec<char> = q.chars().collect();
    if chars.len() > MAX_QUERY_CHARS {
        return Err(err(
            MAX_QUERY_CHARS,
            format!("a query has at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let mut tokens: Vec<(usize, Token)> = Vec::new();
    let mut i = 0;
    let mut terms = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let mut negated = false;
        if chars[i] == '-' {
            if chars.get(i + 1).is_none_or(|c| c.is_whitespace()) {
                return Err(err(i, "a '-' must be followed by the term it excludes"));
            }
            negated = true;
            i += 1;
        }
        let atom = if chars[i] == '"' {
            let Some(len) = chars[i + 1..].iter().position(|c| *c == '"') else {
                return Err(err(i, "this quote is never closed"));
            };
            let text: String = chars[i + 1..i + 1 + len].iter().collect();
            i += len + 2;
            let w: Vec<String> = words(&text).map(|(_, w)| w.to_owned()).collect();
            (!w.is_empty()).then_some(Atom {
                words: w,
                prefix: false,
            })
        } else {
            let end = chars[i..]
                .iter()
                .position(|c| c.is_whitespace() || *c == '"')
                .map_or(chars.len(), |n| i + n);
            let text: String = chars[i..end].iter().collect();
            i = end;
            if text == "OR" && !negated {
                tokens.push((start, Token::Or));
                continue;
            }
            let prefix = text.ends_with('*');
            let w: Vec<String> = words(&text).map(|(_, w)| w.to_owned()).collect();
            if prefix && w.is_empty() {
                return Err(err(start, "a '*' must follow the start of a word"));
            }
            (!w.is_empty()).then_some(Atom { words: w, prefix })
        };
        if atom.is_some() {
            terms += 1;
            if terms > MAX_TERMS {
                return Err(err(start, format!("a query has at most {MAX_TERMS} terms")));
            }
        }
        tokens.push((start, Token::Atom { negated, atom }));
    }

    let mut clauses: Vec<Clause> = Vec::new();
    // Whether the last token was a term that an OR may join (not negated).
    let mut joinable = false;
    let mut k = 0;
    while k < tokens.len() {
        match &tokens[k] {
            (pos, Token::Or) => {
                let next_ok = matches!(
                    tokens.get(k + 1),
                    Some((_, Token::Atom { negated: false, .. }))
                );
                if !joinable || !next_ok {
                    return Err(err(
                        *pos,
                        "OR needs a term on each side (and an excluded term cannot be one)",
                    ));
                }
                let Some((_, Token::Atom { atom, .. })) = tokens.get(k + 1) else {
                    return Err(err(*pos, "OR needs a term on each side"));
                };
                if let (Some(a), Some(last)) = (atom, clauses.last_mut()) {
                    last.alts.push(a.clone());
                }
                k += 2;
            }
            (_, Token::Atom { negated, atom }) => {
                // A term without words still takes its place, so `!!! OR b` is `b`.
                clauses.push(Clause {
                    negated: *negated,
                    alts: atom.iter().cloned().collect(),
                });
                joinable = !*negated;
                k += 1;
            }
        }
    }
    clauses.retain(|c| !c.alts.is_empty());
    if !clauses.is_empty() && clauses.iter().all(|c| c.negated) {
        return Err(err(
            0,
            "a query needs at least one term that is not excluded",
        ));
    }
    Ok(Parsed { clauses })
}

/// One way a term can match: index terms in a row, the last one a prefix or not.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Variant {
    terms: Vec<String>,
    prefix: bool,
}

/// A query analyzed for a collection's languages: every clause is the set of variants
/// any of which matches.
#[derive(Debug, Clone, PartialEq)]
pub struct Analyzed {
    must: Vec<BTreeSet<Variant>>,
    not: Vec<BTreeSet<Variant>>,
    /// For highlighting: the terms looked for, and the prefixes.
    exact: BTreeSet<String>,
    prefixes: Vec<String>,
}

impl Parsed {
    /// Analyzes each term in each language (a term matches in any of them). Stop words
    /// drop out; a clause made only of stop words is left out of the query.
    pub fn analyze(&self, languages: &[Language]) -> Analyzed {
        let mut must = Vec::new();
        let mut not = Vec::new();
        for clause in &self.clauses {
            let mut set = BTreeSet::new();
            for atom in &clause.alts {
                for lang in languages {
                    set.extend(variants(atom, *lang));
                }
            }
            if set.is_empty() {
                continue;
            }
            if clause.negated {
                not.push(set);
            } else {
                must.push(set);
            }
        }
        let mut exact = BTreeSet::new();
        let mut prefixes = Vec::new();
        for v in must.iter().flatten() {
            for (i, t) in v.terms.iter().enumerate() {
                if v.prefix && i + 1 == v.terms.len() {
                    prefixes.push(t.clone());
                } else {
                    exact.insert(t.clone());
                }
            }
        }
        prefixes.sort();
        prefixes.dedup();
        Analyzed {
            must,
            not,
            exact,
            prefixes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }
}

/// The variants of one term in one language: its analyzed words; for a prefix, both
/// the stemmed and the plain lowercased start (`runn*` should find "running").
fn variants(atom: &Atom, lang: Language) -> Vec<Variant> {
    let (last, body) = match atom.words.split_last() {
        Some((l, b)) if atom.prefix => (Some(l), b),
        _ => (None, atom.words.as_slice()),
    };
    let terms: Vec<String> = body.iter().filter_map(|w| lang.term(w)).collect();
    match last {
        None if terms.is_empty() => Vec::new(),
        None => vec![Variant {
            terms,
            prefix: false,
        }],
        Some(last) => {
            let lower = lowercase(last).into_owned();
            let stem = lang.stem(&lower);
            let mut out = Vec::new();
            for p in [lower, stem] {
                let mut t = terms.clone();
                t.push(p);
                out.push(Variant {
                    terms: t,
                    prefix: true,
                });
            }
            out.dedup();
            out
        }
    }
}

impl Analyzed {
    /// No clause can match: the query held only stop words.
    pub fn matches_nothing(&self) -> bool {
        self.must.is_empty()
    }

    /// The FTS5 `MATCH` expression. Terms are quoted strings of letters and digits.
    pub fn fts5(&self) -> String {
        let group = |set: &BTreeSet<Variant>| {
            let alts: Vec<String> = set
                .iter()
                .map(|v| {
                    format!(
                        "\"{}\"{}",
                        v.terms.join(" ").replace('"', "\"\""),
                        if v.prefix { " *" } else { "" }
                    )
                })
                .collect();
            format!("({})", alts.join(" OR "))
        };
        let mut out = self
            .must
            .iter()
            .map(group)
            .collect::<Vec<_>>()
            .join(" AND ");
        if !self.not.is_empty() {
            let nots: Vec<String> = self.not.iter().map(group).collect();
            out = format!("({out}) NOT ({})", nots.join(" OR "));
        }
        out
    }

    /// The `tsquery` text (lexemes already analyzed: cast it, never `to_tsquery` it).
    pub fn tsquery(&self) -> String {
        let group = |set: &BTreeSet<Variant>| {
            let alts: Vec<String> = set
                .iter()
                .map(|v| {
                    let n = v.terms.len();
                    let parts: Vec<String> = v
                        .terms
                        .iter()
                        .enumerate()
                        .map(|(i, t)| {
                            format!(
                                "'{}'{}",
                                t.replace('\\', "\\\\").replace('\'', "''"),
                                if v.prefix && i + 1 == n { ":*" } else { "" }
                            )
                        })
                        .collect();
                    format!("({})", parts.join(" <-> "))
                })
                .collect();
            format!("({})", alts.join(" | "))
        };
        let mut parts: Vec<String> = self.must.iter().map(group).collect();
        for n in &self.not {
            parts.push(format!("!{}", group(n)));
        }
        parts.join(" & ")
    }

    /// Whether an index term (and the plain lowercased word it came from) is one the
    /// query looks for, for highlighting.
    pub fn marks(&self, term: &str, lower: &str) -> bool {
        self.exact.contains(term)
            || self
                .prefixes
                .iter()
                .any(|p| term.starts_with(p.as_str()) || lower.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EN: &[Language] = &[Language::English];

    fn fts(q: &str) -> String {
        parse(q)
            .map(|p| p.analyze(EN).fts5())
            .unwrap_or_else(|e| format!("error {e:?}"))
    }

    #[test]
    fn the_query_language_in_fts5_and_tsquery() {
        assert_eq!(fts("Running dogs"), "(\"run\") AND (\"dog\")");
        assert_eq!(fts("\"quick fox\""), "(\"quick fox\")");
        assert_eq!(fts("prog*"), "(\"prog\" *)");
        assert_eq!(fts("running*"), "(\"run\" * OR \"running\" *)");
        assert_eq!(fts("cat -dog"), "((\"cat\")) NOT ((\"dog\"))");
        assert_eq!(fts("cat OR dog"), "(\"cat\" OR \"dog\")");
        assert_eq!(
            fts("dog OR cat OR bird mouse"),
            "(\"bird\" OR \"cat\" OR \"dog\") AND (\"mous\")"
        );
        assert_eq!(
            fts("the OR cat"),
            "(\"cat\")",
            "a stop word drops out of OR"
        );
        assert_eq!(fts("e-mail"), "(\"e mail\")");
        let p = parse("\"the end\" cat -dog*").map(|p| p.analyze(EN).tsquery());
        assert_eq!(
            p.as_deref().unwrap_or(""),
            "(('end')) & (('cat')) & !(('dog':*))"
        );
        let p = parse("\"big cats\"").map(|p| p.analyze(EN).tsquery());
        assert_eq!(p.as_deref().unwrap_or(""), "(('big' <-> 'cat'))");
    }

    #[test]
    fn stop_words_only_match_nothing() {
        let a = parse("the and of").map(|p| p.analyze(EN));
        assert!(a.is_ok_and(|a| a.matches_nothing()));
        let a = parse("the cat").map(|p| p.analyze(EN));
        assert!(a.is_ok_and(|a| !a.matches_nothing()));
        let simple = parse("the").map(|p| p.analyze(&[Language::Simple]));
        assert!(simple.is_ok_and(|a| !a.matches_nothing()));
    }

    #[test]
    fn malformed_queries_say_where() {
        let pos = |q: &str| parse(q).err().map(|e| e.position);
        assert_eq!(pos("cat \"dog"), Some(4));
        assert_eq!(pos("cat - dog"), Some(4));
        assert_eq!(pos("cat -"), Some(4));
        assert_eq!(pos("OR cat"), Some(0));
        assert_eq!(pos("cat OR"), Some(4));
        assert_eq!(pos("cat OR OR dog"), Some(4));
        assert_eq!(pos("cat OR -dog"), Some(4));
        assert_eq!(pos("-cat"), Some(0));
        assert_eq!(pos("cat *"), Some(4));
        assert_eq!(pos(&"a".repeat(513)), Some(512));
        assert!(parse(&"a".repeat(512)).is_ok());
        let many: Vec<String> = (0..33).map(|i| format!("w{i}")).collect();
        assert_eq!(pos(&many.join(" ")), Some(many[..32].join(" ").len() + 1));
        assert!(parse(&many[..32].join(" ")).is_ok());
        assert_eq!(
            pos("cat or dog"),
            None,
            "only upper-case OR is the operator"
        );
    }

    #[test]
    fn highlight_marks_follow_the_analysis() {
        let Ok(a) = parse("running \"quick fox\" prog*").map(|p| p.analyze(EN)) else {
            panic!("parses");
        };
        assert!(a.marks("run", "runs"));
        assert!(a.marks("quick", "quick"));
        assert!(a.marks("program", "programming"));
        assert!(!a.marks("cat", "cat"));
    }
}
