//! The archive: recording segments (`recorder`), where their bytes live (`storage`), and upkeep
//! (start-up `repair`, S3 upload, retention, import of Go archives).

pub mod export;
pub mod recorder;
pub mod repair;
pub mod storage;
