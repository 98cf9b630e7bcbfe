//! Where segment bytes live. Segments are always written to the local filesystem first; a stream
//! whose archive storage is S3 has them uploaded afterwards (the outbox in `segments.upload_state`).
//! Readers (playback, export, retention) go through [`Storage`] whatever the backend.

pub mod fs;
pub mod peer;
pub mod s3;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

/// Errors from a storage backend. Keys are named, credentials never.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{key}: not found")]
    NotFound { key: String },
    #[error("{key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: object store error: {message}")]
    Remote { key: String, message: String },
}

/// A place segment bytes can be read from and deleted from.
#[async_trait::async_trait]
pub trait Storage: Send + Sync {
    /// Reads `range` of the object (or all of it with `None`).
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, StorageError>;
    /// Size of the object in bytes.
    async fn size(&self, key: &str) -> Result<u64, StorageError>;
    /// Deletes the object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Opens the object for reads that all go to the same bytes however long the handle is held
    /// (a file stays readable after it is unlinked). `None`: the backend has no such handle;
    /// [`open`] then reads by key.
    async fn open_handle(&self, _key: &str) -> Result<Option<Arc<dyn Opened>>, StorageError> {
        Ok(None)
    }
}

/// An object opened for reading ([`open`]).
#[async_trait::async_trait]
pub trait Opened: Send + Sync {
    /// Bytes `range` of the object; a range past its end is an error, not a short read.
    async fn read_at(&self, range: Range<u64>) -> Result<Bytes, StorageError>;
}

/// Reads by key (backends without handles: S3, where a read lease keeps the object).
struct ByKey {
    storage: Arc<dyn Storage>,
    key: String,
}

#[async_trait::async_trait]
impl Opened for ByKey {
    async fn read_at(&self, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.storage.read(&self.key, Some(range)).await
    }
}

/// Opens `key` of `storage`: a file handle on the filesystem, reads by key elsewhere.
pub async fn open(storage: &Arc<dyn Storage>, key: &str) -> Result<Arc<dyn Opened>, StorageError> {
    match storage.open_handle(key).await? {
        Some(h) => Ok(h),
        None => Ok(Arc::new(ByKey {
            storage: storage.clone(),
            key: key.to_owned(),
        })),
    }
}
