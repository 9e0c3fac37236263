//! Full-text search's pure part: which fields of a collection are searchable and how
//! (weight A–D, language), the text each store indexes for a record (FTS5 columns on
//! SQLite, a `tsvector` on PostgreSQL), the query language ([`query`]) and the
//! highlighted snippets. The stores and the records capability build on this.

pub mod analyze;
pub mod query;

pub use analyze::Language;
pub use query::{Analyzed, Parsed, SearchError, parse};

use crate::schema::{CollectionSpec, FieldSpec, FieldType};

use analyze::{MAX_WORD_CHARS, lowercase, words};

/// The language of searchable fields that name none, in a collection that names none.
pub const DEFAULT_LANGUAGE: Language = Language::English;
/// Relative weights of the classes A, B, C and D (PostgreSQL's `ts_rank` defaults; the
/// same for FTS5's `bm25`).
pub const WEIGHTS: [f64; 4] = [1.0, 0.4, 0.2, 0.1];
/// The words of a record that are indexed, at most (PostgreSQL's position limit).
pub const MAX_POSITIONS: usize = 16_383;
/// The member of a found record that holds its relevance.
pub const SCORE: &str = "_score";
/// Words of a snippet in `_highlight`.
pub const SNIPPET_WORDS: usize = 30;

/// A searchable field: its name, weight class (0 = A ... 3 = D) and language.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchField {
    pub name: String,
    pub class: usize,
    pub language: Language,
}

/// The searchable fields of a collection, in field order.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    pub fields: Vec<SearchField>,
}

/// `A`..`D` to 0..3.
pub fn weight_class(w: &str) -> Option<usize> {
    ["A", "B", "C", "D"].iter().position(|x| *x == w)
}

/// The FTS5 table of a collection on SQLite (its triggers share the prefix). The
/// suffix keeps it apart from FTS5's own tables of another collection
/// (`<name>_data`, `<name>_idx`...).
pub fn fts_table(collection: &str) -> String {
    format!("_lintel_{collection}__fts")
}

/// Between the fields of one FTS5 column: a token no query can hold (a private-use
/// character), so a phrase never spans two fields.
pub const FIELD_BREAK: &str = "\u{E000}";

/// The `tsvector` column of a searchable collection on PostgreSQL.
pub const TSVECTOR_COLUMN: &str = "_search";

impl SearchConfig {
    /// The search settings of a spec that passed validation; `None` when no field is
    /// searchable.
    pub fn of(spec: &CollectionSpec) -> Option<Self> {
        let default = spec
            .search_language
            .as_deref()
            .and_then(Language::parse)
            .unwrap_or(DEFAULT_LANGUAGE);
        let fields: Vec<SearchField> = spec
            .fields
            .iter()
            .filter(|f| f.searchable)
            .map(|f| SearchField {
                name: f.name.clone(),
                class: f.weight.as_deref().and_then(weight_class).unwrap_or(3),
                language: f
                    .language
                    .as_deref()
                    .and_then(Language::parse)
                    .unwrap_or(default),
            })
            .collect();
        (!fields.is_empty()).then_some(Self { fields })
    }

    /// What the index of a record depends on: each searchable field's name, weight
    /// and language (`title:A:english,body:D:english`).
    pub fn signature(&self) -> String {
        self.fields
            .iter()
            .map(|f| {
                format!(
                    "{}:{}:{}",
                    f.name,
                    ["A", "B", "C", "D"][f.class],
                    f.language.as_str()
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The distinct languages of the searchable fields.
    pub fn languages(&self) -> Vec<Language> {
        let mut l: Vec<Language> = self.fields.iter().map(|f| f.language).collect();
        l.sort();
        l.dedup();
        l
    }

    /// The `tsvector` literal of a record (`value` gives a field's text), with each
    /// field's weight; fields are a position apart so a phrase never spans two.
    pub fn tsvector<'a>(&self, value: impl Fn(&str) -> Option<&'a str>) -> String {
        use std::collections::BTreeMap;
        let mut lexemes: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        let mut pos = 0usize;
        'fields: for f in &self.fields {
            let Some(text) = value(&f.name) else { continue };
            pos += 1;
            for (_, w) in words(text) {
                if pos >= MAX_POSITIONS {
                    break 'fields;
                }
                if let Some(t) = f.language.term(w) {
                    pos += 1;
                    let at = lexemes.entry(t).or_default();
                    // PostgreSQL keeps 256 positions a lexeme.
                    if at.len() < 255 {
                        at.push((pos, f.class));
                    }
                }
            }
        }
        let mut out = String::new();
        for (lexeme, at) in lexemes {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push('\'');
            out.push_str(&lexeme.replace('\\', "\\\\").replace('\'', "''"));
            out.push_str("':");
            for (i, (p, class)) in at.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&p.to_string());
                out.push(['A', 'B', 'C', 'D'][*class]);
            }
        }
        out
    }
}

/// The index terms of a text, space-separated (the text of one FTS5 column).
pub fn index_text(lang: Language, text: &str, out: &mut String, budget: &mut usize) {
    for (_, w) in words(text) {
        if *budget == 0 {
            return;
        }
        if let Some(t) = lang.term(w) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&t);
            *budget -= 1;
        }
    }
}

/// Whether a field kind can be searchable.
pub fn can_search(f: &FieldSpec) -> bool {
    f.field_type == FieldType::Text
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// A snippet of `text` around the first word the query matched, up to
/// [`SNIPPET_WORDS`] words, with matched words in `<mark>…</mark>` and everything else
/// HTML-escaped; `None` when no word matched.
pub fn highlight(text: &str, lang: Language, q: &Analyzed) -> Option<String> {
    // Words are analyzed up to the first match and a snippet's length past it (plus
    // one, to know whether the text goes on).
    let mut toks: Vec<(usize, &str, bool)> = Vec::new();
    let mut first = None;
    for (i, w) in words(text).take(MAX_POSITIONS) {
        if first.is_some_and(|f| toks.len() > f + SNIPPET_WORDS) {
            break;
        }
        let lower = lowercase(w);
        let marked = w.chars().count() <= MAX_WORD_CHARS
            && !lang.is_stop(&lower)
            && q.marks(&lang.stem(&lower), &lower);
        if marked && first.is_none() {
            first = Some(toks.len());
        }
        toks.push((i, w, marked));
    }
    let first = first?;
    let start = first
        .saturating_sub(5)
        .min(toks.len().saturating_sub(SNIPPET_WORDS));
    let end = (start + SNIPPET_WORDS).min(toks.len());
    let mut out = String::new();
    let mut at = if start == 0 {
        0
    } else {
        out.push('…');
        toks[start].0
    };
    for (i, w, marked) in &toks[start..end] {
        escape_into(&mut out, text.get(at..*i).unwrap_or_default());
        if *marked {
            out.push_str("<mark>");
            escape_into(&mut out, w);
            out.push_str("</mark>");
        } else {
            escape_into(&mut out, w);
        }
        at = i + w.len();
    }
    if end == toks.len() {
        escape_into(&mut out, text.get(at..).unwrap_or_default());
    } else {
        out.push('…');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyzed(q: &str) -> Analyzed {
        match parse(q) {
            Ok(p) => p.analyze(&[Language::English]),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn highlights_escape_everything_but_the_marks() {
        let q = analyzed("script running");
        let h = highlight(
            "<b>Run</b> the <script>alert('x')</script> & go",
            Language::English,
            &q,
        );
        assert_eq!(
            h.as_deref(),
            Some(
                "&lt;b&gt;<mark>Run</mark>&lt;/b&gt; the &lt;<mark>script</mark>&gt;alert(&#39;x&#39;)&lt;/<mark>script</mark>&gt; &amp; go"
            )
        );
        assert_eq!(highlight("nothing here", Language::English, &q), None);
    }

    #[test]
    fn long_texts_give_a_window_around_the_first_match() {
        let text: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
        let mut text = text.join(" ");
        text.push_str(" needle tail");
        let h = highlight(&text, Language::English, &analyzed("needle")).unwrap_or_default();
        assert!(h.starts_with('…'), "{h}");
        assert!(h.contains("<mark>needle</mark> tail"), "{h}");
        assert_eq!(h.split_whitespace().count(), SNIPPET_WORDS, "{h}");
        let early = format!("needle {text}");
        let h = highlight(&early, Language::English, &analyzed("needle")).unwrap_or_default();
        assert!(
            h.starts_with("<mark>needle</mark> w0") && h.ends_with('…'),
            "{h}"
        );
    }

    #[test]
    fn tsvectors_carry_weights_and_positions() {
        let spec: CollectionSpec = match serde_json::from_value(serde_json::json!({
            "name": "posts",
            "fields": [
                {"name": "title", "type": "text", "searchable": true, "weight": "A"},
                {"name": "body", "type": "text", "searchable": true},
                {"name": "note", "type": "text"}
            ]
        })) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let Some(cfg) = SearchConfig::of(&spec) else {
            panic!("searchable")
        };
        let v = cfg.tsvector(|f| match f {
            "title" => Some("Cats' running"),
            "body" => Some("The cat runs"),
            _ => Some("never"),
        });
        assert_eq!(v, "'cat':2A,5D 'run':3A,6D");
        assert_eq!(cfg.languages(), vec![Language::English]);
        let mut text = String::new();
        let mut budget = 2;
        index_text(
            Language::English,
            "the cats are running fast",
            &mut text,
            &mut budget,
        );
        assert_eq!(text, "cat run");
    }
}
