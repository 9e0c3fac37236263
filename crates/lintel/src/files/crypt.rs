//! Encryption at rest: with `files.encryption_keys` set, every file kept from then on
//! is encrypted with its own random key (AES-256-GCM), and that key is stored in the
//! file's metadata row wrapped by the current master key (the first of the list).
//! Bytes are sealed in 64 KiB chunks, each with its own tag, so a range is served by
//! opening only the chunks it touches; the chunk's index and whether it is the last
//! are authenticated, so chunks cannot be reordered, dropped or cut off. Thumbnails
//! are sealed with a key derived from their file's key and their size. Rotating the
//! master key means putting the new one first: the older ones still open what they
//! wrapped, and [`rewrap`] re-wraps every file key with the new one without touching
//! a file's bytes.

use std::io::{Read, Write};
use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// Plain bytes per sealed chunk.
pub const CHUNK: u64 = 64 * 1024;
/// The tag each chunk carries.
pub const TAG: u64 = 16;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A file's own key.
#[derive(Clone)]
pub struct FileKey([u8; 32]);

impl FileKey {
    /// A fresh random key.
    pub fn random() -> Result<Self, ring::error::Unspecified> {
        let mut k = [0u8; 32];
        SystemRandom::new().fill(&mut k)?;
        Ok(Self(k))
    }

    /// The key a thumbnail of this file is sealed with (one per size, so no nonce is
    /// ever used twice under one key).
    pub fn for_thumb(&self, w: u32, h: u32) -> Self {
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0),
            format!("lintel thumb {w}x{h}").as_bytes(),
        );
        let mut k = [0u8; 32];
        k.copy_from_slice(&tag.as_ref()[..32]);
        Self(k)
    }

    fn aead(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, &self.0)
            .ok()
            .map(LessSafeKey::new)
    }
}

/// The master keys from configuration: the first wraps new file keys; all of them
/// unwrap.
pub struct MasterKeys {
    keys: Vec<(String, LessSafeKey)>,
}

impl MasterKeys {
    /// `None` when no key is configured. Each key is 32 bytes in base64.
    pub fn from_config(list: &[Secret]) -> anyhow::Result<Option<Self>> {
        let mut keys = Vec::new();
        for (i, k) in list.iter().enumerate() {
            let raw = b64()
                .decode(k.0.trim())
                .map_err(|_| anyhow::anyhow!("files.encryption_keys[{i}] is not base64"))?;
            anyhow::ensure!(
                raw.len() == 32,
                "files.encryption_keys[{i}] must be 32 bytes (base64 of 32 random bytes: openssl rand -base64 32)"
            );
            let id = crate::files::upload::hex(&Sha256::digest(&raw)[..8]);
            let key = UnboundKey::new(&AES_256_GCM, &raw)
                .map_err(|_| anyhow::anyhow!("files.encryption_keys[{i}] is not a key"))?;
            keys.push((id, LessSafeKey::new(key)));
        }
        Ok((!keys.is_empty()).then_some(Self { keys }))
    }

    /// The id of the key that wraps new file keys.
    pub fn current(&self) -> &str {
        self.keys.first().map_or("", |k| k.0.as_str())
    }

    /// `<master key id>:<base64 of nonce, sealed key and tag>`.
    pub fn wrap(&self, fk: &FileKey) -> Result<String, ring::error::Unspecified> {
        let (id, key) = self.keys.first().ok_or(ring::error::Unspecified)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce)?;
        let mut buf = fk.0.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id.as_bytes()),
            &mut buf,
        )?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{id}:{}", b64().encode(out)))
    }

    /// The file key a wrapped key holds, if one of the master keys wrapped it.
    pub fn unwrap(&self, wrapped: &str) -> Option<FileKey> {
        let (id, body) = wrapped.split_once(':')?;
        let (_, key) = self.keys.iter().find(|(k, _)| k == id)?;
        let raw = b64().decode(body).ok()?;
        if raw.len() != NONCE_LEN + 32 + TAG as usize {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let mut buf = sealed.to_vec();
        let plain = key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(id.as_bytes()),
                &mut buf,
            )
            .ok()?;
        let mut k = [0u8; 32];
        k.copy_from_slice(plain);
        Some(FileKey(k))
    }

    /// Whether a wrapped key was wrapped by an older master key.
    pub fn is_stale(&self, wrapped: &str) -> bool {
        wrapped
            .split_once(':')
            .is_some_and(|(id, _)| id != self.current())
    }
}

fn nonce(index: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(index: u64, last: bool) -> [u8; 9] {
    let mut a = [0u8; 9];
    a[..8].copy_from_slice(&index.to_be_bytes());
    a[8] = u8::from(last);
    a
}

/// How many chunks a file of `size` plain bytes is sealed in (an empty file: one).
pub fn chunks(size: u64) -> u64 {
    size.div_ceil(CHUNK).max(1)
}

/// The sealed size of `size` plain bytes.
pub fn sealed_size(size: u64) -> u64 {
    size + chunks(size) * TAG
}

/// The plain size of a sealed blob of `sealed` bytes.
pub fn plain_size(sealed: u64) -> u64 {
    let n = sealed.div_ceil(CHUNK + TAG).max(1);
    sealed.saturating_sub(n * TAG)
}

/// Seals the file at `src` into `dst`. Blocking: run it off the async workers.
pub fn seal_file(fk: &FileKey, src: &Path, dst: &Path) -> std::io::Result<()> {
    let key = fk
        .aead()
        .ok_or_else(|| std::io::Error::other("bad file key"))?;
    let size = std::fs::metadata(src)?.len();
    let n = chunks(size);
    let mut input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(src)?);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dst)?);
    let mut buf = vec![0u8; CHUNK as usize];
    for i in 0..n {
        let want = (size - i * CHUNK).min(CHUNK) as usize;
        input.read_exact(&mut buf[..want])?;
        let tag = key
            .seal_in_place_separate_tag(nonce(i), Aad::from(aad(i, i + 1 == n)), &mut buf[..want])
            .map_err(|_| std::io::Error::other("sealing failed"))?;
        out.write_all(&buf[..want])?;
        out.write_all(tag.as_ref())?;
    }
    out.flush()?;
    out.get_ref().sync_data()
}

/// Seals bytes in memory (thumbnails).
pub fn seal(fk: &FileKey, plain: &[u8]) -> Option<Vec<u8>> {
    let key = fk.aead()?;
    let size = plain.len() as u64;
    let n = chunks(size);
    let mut out = Vec::with_capacity(sealed_size(size) as usize);
    for i in 0..n {
        let from = (i * CHUNK) as usize;
        let to = ((i + 1) * CHUNK).min(size) as usize;
        let mut part = plain[from..to].to_vec();
        let tag = key
            .seal_in_place_separate_tag(nonce(i), Aad::from(aad(i, i + 1 == n)), &mut part)
            .ok()?;
        out.extend_from_slice(&part);
        out.extend_from_slice(tag.as_ref());
    }
    Some(out)
}

/// Opens chunk `i` of a file of `size` plain bytes, given its sealed bytes.
pub fn open_chunk(fk: &FileKey, size: u64, i: u64, sealed: &mut [u8]) -> Option<Bytes> {
    let key = fk.aead()?;
    let plain = key
        .open_in_place(nonce(i), Aad::from(aad(i, i + 1 == chunks(size))), sealed)
        .ok()?;
    Some(Bytes::copy_from_slice(plain))
}

/// Where chunk `i` sits in the sealed blob, and how long it is there.
pub fn chunk_span(size: u64, i: u64) -> (u64, u64) {
    let plain = (size.saturating_sub(i * CHUNK)).min(CHUNK);
    (i * (CHUNK + TAG), plain + TAG)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> MasterKeys {
        let secrets: Vec<Secret> = list.iter().map(|s| Secret((*s).to_owned())).collect();
        MasterKeys::from_config(&secrets).unwrap().unwrap()
    }

    #[test]
    fn chunks_open_alone_and_only_in_place() {
        let fk = FileKey::random().unwrap();
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sealed = seal(&fk, &plain).unwrap();
        assert_eq!(sealed.len() as u64, sealed_size(plain.len() as u64));
        assert_eq!(plain_size(sealed.len() as u64), plain.len() as u64);
        let size = plain.len() as u64;
        for i in 0..chunks(size) {
            let (at, len) = chunk_span(size, i);
            let mut part = sealed[at as usize..(at + len) as usize].to_vec();
            let got = open_chunk(&fk, size, i, &mut part).unwrap();
            let from = (i * CHUNK) as usize;
            assert_eq!(&got[..], &plain[from..from + got.len()]);
        }
        // Another chunk's bytes, or the last chunk claimed not to be last, do not open.
        let (at, len) = chunk_span(size, 1);
        let mut moved = sealed[at as usize..(at + len) as usize].to_vec();
        assert!(open_chunk(&fk, size, 0, &mut moved).is_none());
        let (at, len) = chunk_span(size, 3);
        let mut last = sealed[at as usize..(at + len) as usize].to_vec();
        assert!(
            open_chunk(&fk, size + CHUNK, 3, &mut last).is_none(),
            "a cut-off file is caught"
        );
        let other = FileKey::random().unwrap();
        let (at, len) = chunk_span(size, 0);
        let mut first = sealed[at as usize..(at + len) as usize].to_vec();
        assert!(open_chunk(&other, size, 0, &mut first).is_none());
    }

    #[test]
    fn rotation_rewraps_without_losing_keys() {
        let old = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let new = "Hx4dHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";
        let fk = FileKey::random().unwrap();
        let wrapped = keys(&[old]).wrap(&fk).unwrap();
        let rotated = keys(&[new, old]);
        assert!(rotated.is_stale(&wrapped));
        let again = rotated.wrap(&rotated.unwrap(&wrapped).unwrap()).unwrap();
        assert!(!rotated.is_stale(&again));
        assert_eq!(rotated.unwrap(&again).unwrap().0, fk.0);
        assert!(
            keys(&[new]).unwrap(&wrapped).is_none(),
            "a dropped key opens nothing"
        );
        assert!(MasterKeys::from_config(&[Secret("c2hvcnQ=".into())]).is_err());
    }
}
