//! Text analysis: the words of a text, their stop words and their Snowball stems, per
//! language. Both stores index what this produces (FTS5 on SQLite, `tsvector` on
//! PostgreSQL), and queries and highlights go through the same steps, so the two
//! stores match the same records.
//!
//! The stop-word lists are PostgreSQL's (from Snowball), in `stopwords/`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::OnceLock;

use rust_stemmers::{Algorithm, Stemmer};

/// Longer words are not indexed (and never match).
pub const MAX_WORD_CHARS: usize = 64;

/// A language for stemming and stop words; `simple` does neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    Simple,
    Danish,
    Dutch,
    English,
    Finnish,
    French,
    German,
    Hungarian,
    Italian,
    Norwegian,
    Portuguese,
    Russian,
    Spanish,
    Swedish,
    Turkish,
}

const ALL: [Language; 15] = [
    Language::Simple,
    Language::Danish,
    Language::Dutch,
    Language::English,
    Language::Finnish,
    Language::French,
    Language::German,
    Language::Hungarian,
    Language::Italian,
    Language::Norwegian,
    Language::Portuguese,
    Language::Russian,
    Language::Spanish,
    Language::Swedish,
    Language::Turkish,
];

impl Language {
    pub fn parse(s: &str) -> Option<Self> {
        ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// The names accepted, for error messages and docs.
    pub fn names() -> String {
        ALL.map(|l| l.as_str()).join(", ")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Simple => "simple",
            Language::Danish => "danish",
            Language::Dutch => "dutch",
            Language::English => "english",
            Language::Finnish => "finnish",
            Language::French => "french",
            Language::German => "german",
            Language::Hungarian => "hungarian",
            Language::Italian => "italian",
            Language::Norwegian => "norwegian",
            Language::Portuguese => "portuguese",
            Language::Russian => "russian",
            Language::Spanish => "spanish",
            Language::Swedish => "swedish",
            Language::Turkish => "turkish",
        }
    }

    fn algorithm(self) -> Option<Algorithm> {
        Some(match self {
            Language::Simple => return None,
            Language::Danish => Algorithm::Danish,
            Language::Dutch => Algorithm::Dutch,
            Language::English => Algorithm::English,
            Language::Finnish => Algorithm::Finnish,
            Language::French => Algorithm::French,
            Language::German => Algorithm::German,
            Language::Hungarian => Algorithm::Hungarian,
            Language::Italian => Algorithm::Italian,
            Language::Norwegian => Algorithm::Norwegian,
            Language::Portuguese => Algorithm::Portuguese,
            Language::Russian => Algorithm::Russian,
            Language::Spanish => Algorithm::Spanish,
            Language::Swedish => Algorithm::Swedish,
            Language::Turkish => Algorithm::Turkish,
        })
    }

    fn stop_list(self) -> &'static str {
        match self {
            Language::Simple => "",
            Language::Danish => include_str!("stopwords/danish.txt"),
            Language::Dutch => include_str!("stopwords/dutch.txt"),
            Language::English => include_str!("stopwords/english.txt"),
            Language::Finnish => include_str!("stopwords/finnish.txt"),
            Language::French => include_str!("stopwords/french.txt"),
            Language::German => include_str!("stopwords/german.txt"),
            Language::Hungarian => include_str!("stopwords/hungarian.txt"),
            Language::Italian => include_str!("stopwords/italian.txt"),
            Language::Norwegian => include_str!("stopwords/norwegian.txt"),
            Language::Portuguese => include_str!("stopwords/portuguese.txt"),
            Language::Russian => include_str!("stopwords/russian.txt"),
            Language::Spanish => include_str!("stopwords/spanish.txt"),
            Language::Swedish => include_str!("stopwords/swedish.txt"),
            Language::Turkish => include_str!("stopwords/turkish.txt"),
        }
    }

    /// Whether a lowercased word is one of the language's stop words.
    pub fn is_stop(self, lower: &str) -> bool {
        static SETS: OnceLock<Vec<HashSet<&'static str>>> = OnceLock::new();
        let sets = SETS.get_or_init(|| {
            ALL.iter()
                .map(|l| {
                    l.stop_list()
                        .lines()
                        .map(str::trim)
                        .filter(|w| !w.is_empty())
                        .collect()
                })
                .collect()
        });
        sets.get(self as usize).is_some_and(|s| s.contains(lower))
    }

    /// The stem of a lowercased word.
    pub fn stem(self, lower: &str) -> String {
        static STEMMERS: OnceLock<Vec<Option<Stemmer>>> = OnceLock::new();
        let all = STEMMERS.get_or_init(|| {
            ALL.iter()
                .map(|l| l.algorithm().map(Stemmer::create))
                .collect()
        });
        match all.get(self as usize).and_then(Option::as_ref) {
            None => lower.to_owned(),
            Some(s) => s.stem(lower).into_owned(),
        }
    }

    /// The index term of a word: lowercased and stemmed, or `None` for a stop word or
    /// a word too long to index.
    pub fn term(self, word: &str) -> Option<String> {
        if word.chars().count() > MAX_WORD_CHARS {
            return None;
        }
        let lower = lowercase(word);
        if self.is_stop(&lower) {
            return None;
        }
        Some(self.stem(&lower))
    }
}

pub fn lowercase(word: &str) -> Cow<'_, str> {
    if word.chars().any(char::is_uppercase) {
        Cow::Owned(word.to_lowercase())
    } else {
        Cow::Borrowed(word)
    }
}

/// The words of a text (runs of letters and digits) with their byte offsets.
pub fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text.char_indices().peekable();
    std::iter::from_fn(move || {
        let start = loop {
            let (i, c) = rest.next()?;
            if c.is_alphanumeric() {
                break i;
            }
        };
        let mut end = text.len();
        while let Some(&(i, c)) = rest.peek() {
            if !c.is_alphanumeric() {
                end = i;
                break;
            }
            rest.next();
        }
        text.get(start..end).map(|w| (start, w))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_on_anything_but_letters_and_digits() {
        let w: Vec<&str> = words("Hello, wörld! e-mail 3.14 日本語")
            .map(|(_, w)| w)
            .collect();
        assert_eq!(w, ["Hello", "wörld", "e", "mail", "3", "14", "日本語"]);
        let offsets: Vec<usize> = words("  ab cd").map(|(i, _)| i).collect();
        assert_eq!(offsets, [2, 5]);
        assert_eq!(words("").count(), 0);
        assert_eq!(words("!!!").count(), 0);
    }

    #[test]
    fn terms_are_stems_without_stop_words() {
        let en = Language::English;
        assert_eq!(en.term("Running").as_deref(), Some("run"));
        assert_eq!(en.term("runs").as_deref(), Some("run"));
        assert_eq!(en.term("the"), None);
        assert_eq!(Language::Simple.term("the").as_deref(), Some("the"));
        assert_eq!(Language::Simple.term("Running").as_deref(), Some("running"));
        assert_eq!(Language::French.term("le"), None);
        assert_eq!(Language::French.term("chevaux").as_deref(), Some("cheval"));
        assert_eq!(en.term(&"x".repeat(65)), None);
        assert!(Language::parse("english").is_some());
        assert!(Language::parse("klingon").is_none());
        for l in ALL {
            assert_eq!(Language::parse(l.as_str()), Some(l));
            if l != Language::Simple {
                assert!(!l.stop_list().is_empty(), "{l:?} has stop words");
            }
        }
    }
}
