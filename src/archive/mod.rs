//! The archive: recording segments (`recorder`), where their bytes live (`storage`), and upkeep
//! (repair on start, S3 upload, retention, import of Go archives).

pub mod storage;
pub mod uploader;
