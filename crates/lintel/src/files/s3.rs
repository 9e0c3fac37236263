//! Blobs in S3-compatible object storage (AWS S3, MinIO, Ceph, R2, moto...), through
//! the `object_store` crate (signing, multipart uploads, ranged reads), built with the
//! `s3` cargo feature. Objects live under `files.s3.prefix` + key; uploads are still
//! staged on the local disk first (checked while streaming) and kept by a multipart
//! upload, so a half-sent upload never becomes an object.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::S3Config;
use crate::files::blob::{Blobs, Reader};

/// Blobs in an S3 bucket.
pub struct S3 {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    tmp: PathBuf,
}

fn io(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
        }
        e => std::io::Error::other(e.to_string()),
    }
}

impl S3 {
    /// The bucket `cfg` names; staged uploads in `dir/tmp` (created when missing).
    /// Blocking: call at start-up.
    pub fn open(cfg: &S3Config, dir: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !cfg.bucket.is_empty(),
            "files.s3.bucket is required with files.backend = \"s3\""
        );
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(if cfg.region.is_empty() {
                "us-east-1"
            } else {
                &cfg.region
            })
            .with_allow_http(cfg.allow_http);
        if !cfg.endpoint.is_empty() {
            // S3-compatible servers are usually addressed by path, not by virtual host.
            b = b
                .with_endpoint(&cfg.endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if !cfg.access_key_id.is_empty() {
            b = b
                .with_access_key_id(&cfg.access_key_id)
                .with_secret_access_key(&cfg.secret_access_key.0);
        }
        let store = b.build()?;
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        Ok(Self {
            store: Arc::new(store),
            prefix: cfg.prefix.trim_matches('/').to_owned(),
            tmp,
        })
    }

    /// A blob's object: `<prefix>/<key>`; a thumbnail (`<key>-<size>`) sits in its
    /// blob's own folder, `<prefix>/<key>.t/<size>`, so a blob's thumbnails are listed
    /// and removed without listing the bucket.
    fn path(&self, key: &str) -> std::io::Result<ObjectPath> {
        if !crate::files::blob::valid_key(key) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a blob key",
            ));
        }
        let name = match key.split_once('-') {
            Some((base, size)) => format!("{base}.t/{size}"),
            None => key.to_owned(),
        };
        Ok(if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        })
    }
}

#[async_trait::async_trait]
impl Blobs for S3 {
    async fn keep(&self, staged: &Path, key: &str) -> std::io::Result<()> {
        let path = self.path(key)?;
        let upload = self.store.put_multipart(&path).await.map_err(io)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
        let mut f = tokio::fs::File::open(staged).await?;
        let mut buf = vec![0u8; 1024 * 1024];
        let sent: std::io::Result<()> = async {
            loop {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(4).await.map_err(io)?;
                w.write(&buf[..n]);
            }
            Ok(())
        }
        .await;
        match sent {
            Ok(()) => {
                w.finish().await.map_err(io)?;
            }
            Err(e) => {
                let _ = w.abort().await;
                return Err(e);
            }
        }
        tokio::fs::remove_file(staged).await
    }

    async fn take_back(&self, key: &str, to: &Path) -> std::io::Result<()> {
        let path = self.path(key)?;
        let got = self.store.get(&path).await.map_err(io)?;
        let mut stream = got.into_stream();
        let mut out = tokio::fs::File::create(to).await?;
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.map_err(io)?).await?;
        }
        out.flush().await?;
        out.sync_data().await?;
        self.store.delete(&path).await.map_err(io)
    }

    async fn read(&self, key: &str, offset: u64, len: u64) -> std::io::Result<Reader> {
        if len == 0 {
            return Ok(Box::pin(tokio::io::empty()));
        }
        let path = self.path(key)?;
        let got = self
            .store
            .get_opts(
                &path,
                GetOptions::new().with_range(Some(offset..offset + len)),
            )
            .await
            .map_err(io)?;
        let stream = got.into_stream().map_err(io);
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }

    async fn remove(&self, key: &str) -> std::io::Result<()> {
        let path = self.path(key)?;
        let thumbs = ObjectPath::from(format!("{path}.t"));
        let mut list = self.store.list(Some(&thumbs));
        while let Some(meta) = list.next().await {
            let meta = meta.map_err(io)?;
            let _ = self.store.delete(&meta.location).await;
        }
        match self.store.delete(&path).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            other => other.map_err(io),
        }
    }

    async fn size(&self, key: &str) -> std::io::Result<Option<u64>> {
        match self.store.head(&self.path(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn clean_staging(&self, before_ms: i64) -> std::io::Result<u64> {
        crate::files::blob::clean_folder(self.tmp.clone(), before_ms).await
    }

    fn staging(&self) -> &Path {
        &self.tmp
    }
}
