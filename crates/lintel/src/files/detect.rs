//! What a file is, read from its first bytes (never from its name or the type the
//! client sends): the media type, the extension it is stored under, and whether a
//! browser could run it (HTML, SVG, XML, scripts, executables), which is then served
//! only as an attachment. Also the polyglot check: markup inside a file whose bytes
//! say it is something else.

/// The most of a file's start that detection reads.
pub const HEAD: usize = 8192;
/// How far into a binary file the polyglot check looks for markup.
pub const MARKUP_SCAN: u64 = 64 * 1024;

/// A detected type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub mime: &'static str,
    pub ext: &'static str,
    /// A browser might run it: never served inline.
    pub active: bool,
    /// Text (markup inside it is its own content, not a polyglot).
    pub text: bool,
}

const fn bin(mime: &'static str, ext: &'static str) -> Detected {
    Detected {
        mime,
        ext,
        active: false,
        text: false,
    }
}

const fn exe(mime: &'static str, ext: &'static str) -> Detected {
    Detected {
        mime,
        ext,
        active: true,
        text: false,
    }
}

const fn text(mime: &'static str, ext: &'static str, active: bool) -> Detected {
    Detected {
        mime,
        ext,
        active,
        text: true,
    }
}

/// Bytes that are no known type.
pub const OCTET_STREAM: Detected = bin("application/octet-stream", "bin");

/// The type of a file from its first bytes (up to [`HEAD`]).
pub fn detect(h: &[u8]) -> Detected {
    let at = |i: usize, sig: &[u8]| h.len() >= i + sig.len() && &h[i..i + sig.len()] == sig;
    if at(0, b"\x89PNG\r\n\x1a\n") {
        return bin("image/png", "png");
    }
    if at(0, b"\xff\xd8\xff") {
        return bin("image/jpeg", "jpg");
    }
    if at(0, b"GIF87a") || at(0, b"GIF89a") {
        return bin("image/gif", "gif");
    }
    if at(0, b"RIFF") && at(8, b"WEBP") {
        return bin("image/webp", "webp");
    }
    if at(0, b"RIFF") && at(8, b"WAVE") {
        return bin("audio/wav", "wav");
    }
    if at(0, b"RIFF") && at(8, b"AVI ") {
        return bin("video/x-msvideo", "avi");
    }
    if at(4, b"ftyp") {
        let brand = h.get(8..12).unwrap_or_default();
        return match brand {
            b"avif" | b"avis" => bin("image/avif", "avif"),
            b"heic" | b"heix" | b"mif1" | b"msf1" => bin("image/heic", "heic"),
            b"qt  " => bin("video/quicktime", "mov"),
            b"M4A " => bin("audio/mp4", "m4a"),
            _ => bin("video/mp4", "mp4"),
        };
    }
    if at(0, b"\x1a\x45\xdf\xa3") {
        let webm = h.windows(4).take(64).any(|w| w == b"webm");
        return if webm {
            bin("video/webm", "webm")
        } else {
            bin("video/x-matroska", "mkv")
        };
    }
    if at(0, b"II*\0") || at(0, b"MM\0*") {
        return bin("image/tiff", "tiff");
    }
    if at(0, b"BM") && h.len() >= 26 && at(6, b"\0\0\0\0") {
        return bin("image/bmp", "bmp");
    }
    if at(0, b"\0\0\x01\0") && h.len() >= 22 {
        return bin("image/x-icon", "ico");
    }
    if at(0, b"ID3") || at(0, b"\xff\xfb") || at(0, b"\xff\xf3") || at(0, b"\xff\xf2") {
        return bin("audio/mpeg", "mp3");
    }
    if at(0, b"OggS") {
        return bin("audio/ogg", "ogg");
    }
    if at(0, b"fLaC") {
        return bin("audio/flac", "flac");
    }
    if at(0, b"%PDF-") {
        return bin("application/pdf", "pdf");
    }
    if at(0, b"PK\x03\x04") || at(0, b"PK\x05\x06") {
        return bin("application/zip", "zip");
    }
    if at(0, b"\x1f\x8b") {
        return bin("application/gzip", "gz");
    }
    if at(0, b"7z\xbc\xaf\x27\x1c") {
        return bin("application/x-7z-compressed", "7z");
    }
    if at(0, b"Rar!\x1a\x07") {
        return bin("application/vnd.rar", "rar");
    }
    if at(257, b"ustar") {
        return bin("application/x-tar", "tar");
    }
    if at(0, b"\x7fELF") {
        return exe("application/x-executable", "elf");
    }
    if at(0, b"MZ") {
        return exe("application/vnd.microsoft.portable-executable", "exe");
    }
    if at(0, b"\xfe\xed\xfa\xce")
        || at(0, b"\xfe\xed\xfa\xcf")
        || at(0, b"\xce\xfa\xed\xfe")
        || at(0, b"\xcf\xfa\xed\xfe")
        || at(0, b"\xca\xfe\xba\xbe")
    {
        return exe("application/x-mach-binary", "bin");
    }
    if at(0, b"\0asm") {
        return exe("application/wasm", "wasm");
    }
    if at(0, b"#!") {
        return text("text/x-shellscript", "sh", true);
    }
    if !looks_like_text(h) {
        return OCTET_STREAM;
    }
    let lower: Vec<u8> = h
        .iter()
        .skip_while(|b| b.is_ascii_whitespace() || **b == 0xef || **b == 0xbb || **b == 0xbf)
        .take(1024)
        .map(u8::to_ascii_lowercase)
        .collect();
    if contains(&lower, b"<svg") {
        return text("image/svg+xml", "svg", true);
    }
    if has_markup(&lower) {
        return text("text/html", "html", true);
    }
    if lower.starts_with(b"<?xml") || lower.starts_with(b"<") {
        return text("application/xml", "xml", true);
    }
    if lower.starts_with(b"{") || lower.starts_with(b"[") {
        return text("application/json", "json", false);
    }
    text("text/plain", "txt", false)
}

/// Whether `h` reads as UTF-8 text without control characters (a character cut at
/// the end of the sample is fine).
fn looks_like_text(h: &[u8]) -> bool {
    let s = match std::str::from_utf8(h) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&h[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return false,
    };
    !h.is_empty()
        && !s
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c'))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Markup a browser would render or run, in lower-cased bytes.
pub fn has_markup(lower: &[u8]) -> bool {
    const MARKERS: [&[u8]; 9] = [
        b"<!doctype html",
        b"<html",
        b"<script",
        b"<body",
        b"<head",
        b"<iframe",
        b"<svg",
        b"<?php",
        b"<object",
    ];
    MARKERS.iter().any(|m| contains(lower, m))
}

/// Looks for markup in the first [`MARKUP_SCAN`] bytes of a binary file, across the
/// chunks it arrives in.
#[derive(Default)]
pub struct MarkupScan {
    seen: u64,
    tail: Vec<u8>,
    pub found: bool,
}

impl MarkupScan {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.found || self.seen >= MARKUP_SCAN {
            return;
        }
        let room = usize::try_from(MARKUP_SCAN - self.seen).unwrap_or(usize::MAX);
        let part = &chunk[..chunk.len().min(room)];
        self.seen += part.len() as u64;
        let mut window = std::mem::take(&mut self.tail);
        window.extend(part.iter().map(u8::to_ascii_lowercase));
        self.found = has_markup(&window);
        let keep = window.len().min(16);
        self.tail = window[window.len() - keep..].to_vec();
    }
}

/// Whether a detected type is allowed by a field's `mimeTypes`: exact types, or a
/// family (`image/*`) that covers the family's inert types only (SVG must be listed
/// by name). No list allows every type.
pub fn allowed(list: Option<&[String]>, d: &Detected) -> bool {
    let Some(list) = list else {
        return true;
    };
    list.iter().any(|m| {
        m == d.mime
            || (!d.active
                && m.strip_suffix("/*")
                    .is_some_and(|family| d.mime.split('/').next() == Some(family)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(detect(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").mime, "image/png");
        assert_eq!(detect(b"\xff\xd8\xff\xe0\0\x10JFIF").ext, "jpg");
        assert_eq!(detect(b"GIF89a\x01\0").mime, "image/gif");
        assert_eq!(detect(b"%PDF-1.7\n").mime, "application/pdf");
        assert!(detect(b"\x7fELF\x02\x01\x01").active);
        assert!(detect(b"MZ\x90\0\x03").active);
        assert_eq!(detect(b"hello, world\n").mime, "text/plain");
        assert_eq!(detect(b"{\"a\": 1}").mime, "application/json");
        let html = detect(b"<!DOCTYPE html><html><body>x</body></html>");
        assert_eq!((html.mime, html.active), ("text/html", true));
        let svg = detect(b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>");
        assert_eq!((svg.mime, svg.active), ("image/svg+xml", true));
        assert_eq!(
            detect(b"\0\x01\x02\x03\xff").mime,
            "application/octet-stream"
        );
        assert_eq!(detect(b"").mime, "application/octet-stream");
    }

    #[test]
    fn markup_is_found_across_chunks_and_only_near_the_start() {
        let mut s = MarkupScan::default();
        s.feed(b"\x89PNG....<scr");
        assert!(!s.found);
        s.feed(b"IPT>alert(1)");
        assert!(s.found);
        let mut late = MarkupScan::default();
        late.feed(&vec![0u8; MARKUP_SCAN as usize]);
        late.feed(b"<script>");
        assert!(!late.found);
    }

    #[test]
    fn allow_lists_take_exact_types_and_families() {
        let list = vec!["image/*".to_owned(), "application/pdf".to_owned()];
        let png = detect(b"\x89PNG\r\n\x1a\n");
        let svg = detect(b"<svg xmlns='http://www.w3.org/2000/svg'/>");
        assert!(allowed(Some(&list), &png));
        assert!(allowed(Some(&list), &detect(b"%PDF-1.4")));
        assert!(!allowed(Some(&list), &detect(b"<html><body>")));
        assert!(!allowed(Some(&list), &svg), "SVG is named, not implied");
        assert!(allowed(Some(&["image/svg+xml".to_owned()]), &svg));
        assert!(allowed(None, &svg));
    }
}
