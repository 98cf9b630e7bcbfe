//! Where segment bytes live. Segments are always written to the local filesystem first; a stream
//! whose archive storage is S3 has them uploaded afterwards (the outbox in `segments.upload_state`).
//! Readers (playback, export, retention) go through [`Storage`] whatever the backend.

pub mod fs;
pub mod s3;

use std::ops::Range;

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
}
