//! File names: the original a client sends, cleaned (never refused) for
//! `Content-Disposition`, and the name a file is stored and addressed under,
//! `{base}_{random}.{ext}`, whose extension is the detected type's.

use unicode_normalization::UnicodeNormalization;

/// The longest original name kept, in bytes.
const MAX_ORIGINAL: usize = 200;
/// The longest base of a stored name, in characters.
const MAX_BASE: usize = 40;

/// The original name, cleaned: the last path segment only (either separator), Unicode
/// NFC, no control or bidirectional-override characters, no leading dots or spaces,
/// at most 200 bytes (cut on a character boundary, keeping the extension). Never
/// empty: "file" stands in for a name with nothing left.
pub fn clean_original(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let nfc: String = last
        .nfc()
        .filter(|c| {
            !c.is_control()
                && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{feff}')
        })
        .collect();
    let trimmed = nfc
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    let mut name = trimmed.to_owned();
    if name.len() > MAX_ORIGINAL {
        let (stem, ext) = match name.rfind('.') {
            Some(i) if name.len() - i <= 16 => (name[..i].to_owned(), name[i..].to_owned()),
            _ => (name.clone(), String::new()),
        };
        let mut cut = MAX_ORIGINAL - ext.len();
        while !stem.is_char_boundary(cut) {
            cut -= 1;
        }
        name = format!("{}{ext}", &stem[..cut]);
    }
    if name.is_empty() { "file".into() } else { name }
}

/// The stored name of a file: the original's stem reduced to ASCII letters, digits,
/// `-` and `_` (others become `_`), at most 40 characters, then `_`, a random part and
/// the detected extension.
pub fn stored_name(original: &str, random: &str, ext: &str) -> String {
    let stem = match original.rfind('.') {
        Some(i) if i > 0 => &original[..i],
        _ => original,
    };
    let mut base = String::with_capacity(MAX_BASE);
    for c in stem.chars() {
        if base.len() >= MAX_BASE {
            break;
        }
        let c = if c.is_ascii_alphanumeric() || c == '-' {
            c
        } else {
            '_'
        };
        if c == '_' && base.ends_with('_') {
            continue;
        }
        base.push(c);
    }
    let base = base.trim_matches('_');
    let base = if base.is_empty() { "file" } else { base };
    format!("{base}_{random}.{ext}")
}

/// Whether `s` has the shape of a stored name (what a download path may name).
pub fn is_stored_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `Content-Disposition` for a file (RFC 6266): an ASCII fallback in `filename` and
/// the original in `filename*` (RFC 8187, UTF-8, percent-encoded).
pub fn content_disposition(inline: bool, original: &str) -> String {
    let fallback: String = original
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in original.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!(
        "{}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}",
        if inline { "inline" } else { "attachment" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn originals_are_cleaned_not_refused() {
        assert_eq!(clean_original("../../etc/passwd"), "passwd");
        assert_eq!(clean_original("C:\\Users\\x\\report.pdf"), "report.pdf");
        assert_eq!(clean_original("..hidden"), "hidden");
        assert_eq!(clean_original("a\u{0}b\nc\u{202e}gpj.exe"), "abcgpj.exe");
        assert_eq!(clean_original("/"), "file");
        // NFC: "e" + combining acute becomes one character.
        assert_eq!(clean_original("cafe\u{301}.txt"), "caf\u{e9}.txt");
        let long = format!("{}.png", "é".repeat(300));
        let c = clean_original(&long);
        assert!(c.len() <= 200 && c.ends_with(".png"), "{c}");
    }

    #[test]
    fn stored_names_are_plain_ascii_with_the_detected_extension() {
        assert_eq!(
            stored_name("My Photo (1).PNG", "abc", "png"),
            "My_Photo_1_abc.png"
        );
        assert_eq!(stored_name("évasion.exe", "r", "png"), "vasion_r.png");
        assert_eq!(stored_name("....", "r", "txt"), "file_r.txt");
        assert!(is_stored_name(&stored_name("x y", "r2", "jpg")));
        assert!(!is_stored_name("../x"));
        assert!(!is_stored_name(".x"));
    }

    #[test]
    fn dispositions_keep_the_original_in_filename_star() {
        let d = content_disposition(false, "résumé \"v2\".pdf");
        assert!(
            d.starts_with("attachment; filename=\"r_sum_ _v2_.pdf\""),
            "{d}"
        );
        assert!(
            d.contains("filename*=UTF-8''r%C3%A9sum%C3%A9%20%22v2%22.pdf"),
            "{d}"
        );
    }
}
