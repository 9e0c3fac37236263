//! Thumbnails of image files: `WxH` crops to exactly that size, `Wx0` and `0xH` fit
//! one side and keep the ratio; never larger than the original. Made once, on first
//! request, and kept beside the original (`<key>-t<W>x<H>`). The declared dimensions
//! are read before anything is decoded, and images over [`MAX_PIXELS`] or
//! [`MAX_SIDE`] are never decoded (decompression bombs); fields with `thumbs` refuse
//! such uploads outright.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// The most pixels an image may declare to be decoded (50 megapixels).
pub const MAX_PIXELS: u64 = 50_000_000;
/// The longest side an image may declare to be decoded.
pub const MAX_SIDE: u32 = 16_384;
/// The largest original a thumbnail is made from.
pub const MAX_SOURCE_BYTES: u64 = 64 * 1024 * 1024;

/// Whether thumbnails are made of this type.
pub fn supported(mime: &str) -> bool {
    matches!(
        mime,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    )
}

/// The key a thumbnail of `blob` is kept under (blob keys have no `-`: the blob store
/// tells thumbnails by it).
pub fn key(blob: &str, w: u32, h: u32) -> String {
    format!("{blob}-t{w}x{h}")
}

/// Why no thumbnail.
#[derive(Debug)]
pub enum ThumbError {
    /// Declared dimensions over the limits (or unreadable): not decoded.
    Bomb { width: u32, height: u32 },
    /// The bytes do not decode.
    Broken(String),
}

/// The declared dimensions of an image, read from its header only (PNG and GIF from
/// their fixed fields, so that a file cut after its header still tells).
pub fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let be = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let le16 = |i: usize| {
        bytes
            .get(i..i + 2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
    };
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.get(12..16) == Some(b"IHDR") {
        return Some((be(16)?, be(20)?));
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return Some((le16(6)?, le16(8)?));
    }
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// Whether declared dimensions are within what is ever decoded.
pub fn decodable(width: u32, height: u32) -> bool {
    width <= MAX_SIDE && height <= MAX_SIDE && u64::from(width) * u64::from(height) <= MAX_PIXELS
}

/// Makes a thumbnail: its bytes and media type (JPEG stays JPEG; the rest become PNG).
/// CPU-bound: run it off the async workers.
pub fn make(
    bytes: &[u8],
    mime: &str,
    w: u32,
    h: u32,
) -> Result<(Vec<u8>, &'static str), ThumbError> {
    let (width, height) =
        dimensions(bytes).ok_or_else(|| ThumbError::Broken("no image header".into()))?;
    if !decodable(width, height) {
        return Err(ThumbError::Bomb { width, height });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ThumbError::Broken(e.to_string()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_PIXELS * 4 + 64 * 1024 * 1024);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| ThumbError::Broken(e.to_string()))?;
    let out = resize(&img, w, h);
    let (format, media) = if mime == "image/jpeg" {
        (ImageFormat::Jpeg, "image/jpeg")
    } else {
        (ImageFormat::Png, "image/png")
    };
    let out = if format == ImageFormat::Jpeg {
        DynamicImage::ImageRgb8(out.to_rgb8())
    } else {
        out
    };
    let mut buf = Vec::new();
    out.write_to(&mut Cursor::new(&mut buf), format)
        .map_err(|e| ThumbError::Broken(e.to_string()))?;
    Ok((buf, media))
}

/// `WxH` crops to fill; `Wx0` / `0xH` fit; nothing is enlarged.
fn resize(img: &DynamicImage, w: u32, h: u32) -> DynamicImage {
    let (iw, ih) = (img.width(), img.height());
    match (w, h) {
        (0, h) => img.thumbnail(u32::MAX, h.min(ih)),
        (w, 0) => img.thumbnail(w.min(iw), u32::MAX),
        (w, h) if w >= iw && h >= ih => img.clone(),
        (w, h) => img.resize_to_fill(w.min(iw), h.min(ih), image::imageops::FilterType::Triangle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::new_rgb8(w, h);
        let mut buf = Vec::new();
        img.write_to(&mut Cursor::new(&mut buf), ImageFormat::Png)
            .unwrap();
        buf
    }

    #[test]
    fn sizes_crop_fit_and_never_enlarge() {
        let src = png(400, 200);
        let dims = |b: &[u8]| dimensions(b).unwrap();
        assert_eq!(
            dims(&make(&src, "image/png", 100, 100).unwrap().0),
            (100, 100)
        );
        assert_eq!(dims(&make(&src, "image/png", 100, 0).unwrap().0), (100, 50));
        assert_eq!(
            dims(&make(&src, "image/png", 0, 100).unwrap().0),
            (200, 100)
        );
        assert_eq!(
            dims(&make(&src, "image/png", 1000, 1000).unwrap().0),
            (400, 200)
        );
    }

    /// A PNG signature and IHDR chunk (with its CRC) declaring `w` x `h`, no pixels.
    pub fn png_header(w: u32, h: u32) -> Vec<u8> {
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&w.to_be_bytes());
        chunk.extend_from_slice(&h.to_be_bytes());
        chunk.extend_from_slice(b"\x08\x02\0\0\0");
        let mut crc = 0xffff_ffffu32;
        for b in &chunk {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        let mut out = b"\x89PNG\r\n\x1a\n\0\0\0\r".to_vec();
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&(!crc).to_be_bytes());
        out
    }

    #[test]
    fn bombs_are_not_decoded() {
        // A PNG header declaring 100000 x 100000 pixels, and nothing else.
        let bomb = png_header(100_000, 100_000);
        assert!(matches!(
            make(&bomb, "image/png", 100, 100),
            Err(ThumbError::Bomb { width: 100_000, .. })
        ));
    }
}
