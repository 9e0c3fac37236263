//! Where file bytes live, behind one trait: [`LocalDisk`] keeps them under
//! `<data_dir>/files`, in folders sharded by the first characters of their key, and
//! stages uploads in `<data_dir>/files/tmp` on the same disk, so that keeping an upload
//! is a rename. A file's metadata row is written before its blob is kept, and its blob
//! removed before its row: a crash leaves at worst a row naming no blob, which no
//! record names either and the housekeeping sweep removes.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

/// A readable part of a blob.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// A blob store.
#[async_trait::async_trait]
pub trait Blobs: Send + Sync {
    /// Keeps a staged file (a path under [`Blobs::staging`]) under `key`.
    async fn keep(&self, staged: &Path, key: &str) -> std::io::Result<()>;
    /// Moves a kept blob back to a path it was kept from (a write that kept it failed
    /// and its bytes belong to a resumable upload again).
    async fn take_back(&self, key: &str, to: &Path) -> std::io::Result<()>;
    /// Reads `len` bytes from `offset`.
    async fn read(&self, key: &str, offset: u64, len: u64) -> std::io::Result<Reader>;
    /// Removes a blob and the thumbnails kept beside it (`<key>-...`); a missing one is
    /// no error.
    async fn remove(&self, key: &str) -> std::io::Result<()>;
    /// A blob's size, or `None` when there is none under `key`.
    async fn size(&self, key: &str) -> std::io::Result<Option<u64>>;
    /// Keeps `bytes` under `key` (through the staging folder: readers never see half).
    async fn put(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        let staged = self.staging().join(format!(
            "{}{}",
            crate::ids::record_id(),
            crate::ids::record_id()
        ));
        let mut f = tokio::fs::File::create(&staged).await?;
        tokio::io::AsyncWriteExt::write_all(&mut f, bytes).await?;
        f.sync_data().await?;
        drop(f);
        match self.keep(&staged, key).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = tokio::fs::remove_file(&staged).await;
                Err(e)
            }
        }
    }
    /// Removes staged files last written before `before_ms` (uploads a crash or a
    /// dropped request left behind); returns how many.
    async fn clean_staging(&self, before_ms: i64) -> std::io::Result<u64>;
    /// The folder uploads are staged in.
    fn staging(&self) -> &Path;
}

/// Blobs on the local disk.
pub struct LocalDisk {
    root: PathBuf,
    tmp: PathBuf,
}

/// Whether `key` is a key this module makes (no separators, no dots).
pub fn valid_key(key: &str) -> bool {
    key.len() >= 4
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl LocalDisk {
    /// Blobs under `dir` (created when missing). Blocking: call at start-up.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let root = dir.join("blobs");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&tmp)?;
        Ok(Self { root, tmp })
    }

    fn path(&self, key: &str) -> std::io::Result<PathBuf> {
        if !valid_key(key) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a blob key",
            ));
        }
        Ok(self.root.join(&key[..2]).join(&key[2..4]).join(key))
    }
}

#[async_trait::async_trait]
impl Blobs for LocalDisk {
    async fn keep(&self, staged: &Path, key: &str) -> std::io::Result<()> {
        let path = self.path(key)?;
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other("a blob path has no folder"))?
            .to_owned();
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::rename(staged, &path).await?;
        // The rename (and a new shard folder) must outlast a power cut that the
        // record's commit outlasts.
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&dir)?.sync_all()?;
            match dir.parent() {
                Some(up) => std::fs::File::open(up)?.sync_all(),
                None => Ok(()),
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn take_back(&self, key: &str, to: &Path) -> std::io::Result<()> {
        tokio::fs::rename(self.path(key)?, to).await
    }

    async fn read(&self, key: &str, offset: u64, len: u64) -> std::io::Result<Reader> {
        let mut f = tokio::fs::File::open(self.path(key)?).await?;
        if offset > 0 {
            f.seek(SeekFrom::Start(offset)).await?;
        }
        Ok(Box::pin(f.take(len)))
    }

    async fn remove(&self, key: &str) -> std::io::Result<()> {
        let path = self.path(key)?;
        // Thumbnails share the shard folder and the key as a prefix.
        if let Some(dir) = path.parent()
            && let Ok(mut entries) = tokio::fs::read_dir(dir).await
        {
            let prefix = format!("{key}-");
            while let Ok(Some(e)) = entries.next_entry().await {
                if e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix))
                {
                    let _ = tokio::fs::remove_file(e.path()).await;
                }
            }
        }
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn size(&self, key: &str) -> std::io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn clean_staging(&self, before_ms: i64) -> std::io::Result<u64> {
        clean_folder(self.tmp.clone(), before_ms).await
    }

    fn staging(&self) -> &Path {
        &self.tmp
    }
}

/// Removes the files of a flat folder last written before `before_ms` (wall clock).
pub async fn clean_folder(dir: PathBuf, before_ms: i64) -> std::io::Result<u64> {
    tokio::task::spawn_blocking(move || {
        let cutoff = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(before_ms).unwrap_or(0));
        let mut n = 0;
        for f in std::fs::read_dir(&dir)?.flatten() {
            let old = f
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old && std::fs::remove_file(f.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    })
    .await
    .map_err(std::io::Error::other)?
}
