//! Segment files on the local filesystem. Keys are file paths as stored in `segments.storage_key`.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Opened, Storage, StorageError};

/// The local filesystem.
#[derive(Debug, Default, Clone)]
pub struct FsStorage;

fn io(key: &str, source: std::io::Error) -> StorageError {
    if source.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound {
            key: key.to_owned(),
        }
    } else {
        StorageError::Io {
            key: key.to_owned(),
            source,
        }
    }
}

#[async_trait::async_trait]
impl Storage for FsStorage {
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, StorageError> {
        match range {
            None => tokio::fs::read(key)
                .await
                .map(Bytes::from)
                .map_err(|e| io(key, e)),
            Some(r) => {
                let mut f = tokio::fs::File::open(key).await.map_err(|e| io(key, e))?;
                f.seek(std::io::SeekFrom::Start(r.start))
                    .await
                    .map_err(|e| io(key, e))?;
                let len = usize::try_from(r.end.saturating_sub(r.start)).unwrap_or(0);
                let mut buf = vec![0; len];
                f.read_exact(&mut buf).await.map_err(|e| io(key, e))?;
                Ok(Bytes::from(buf))
            }
        }
    }

    async fn size(&self, key: &str) -> Result<u64, StorageError> {
        tokio::fs::metadata(key)
            .await
            .map(|m| m.len())
            .map_err(|e| io(key, e))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(key, e)),
        }
    }

    async fn open_handle(&self, key: &str) -> Result<Option<Arc<dyn Opened>>, StorageError> {
        let file = tokio::fs::File::open(key)
            .await
            .map_err(|e| io(key, e))?
            .into_std()
            .await;
        Ok(Some(Arc::new(OpenFile {
            file: Arc::new(file),
            key: key.to_owned(),
        })))
    }
}

/// A segment file held open: positioned reads (`pread`) on one descriptor, so readers never
/// reopen the path (which retention or the uploader may have removed meanwhile).
struct OpenFile {
    file: Arc<std::fs::File>,
    key: String,
}

#[async_trait::async_trait]
impl Opened for OpenFile {
    async fn read_at(&self, range: Range<u64>) -> Result<Bytes, StorageError> {
        let len = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(0);
        let file = self.file.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, range.start).map(|()| buf)
        })
        .await
        .map_err(|e| io(&self.key, std::io::Error::other(e)))?;
        read.map(Bytes::from).map_err(|e| io(&self.key, e))
    }
}
