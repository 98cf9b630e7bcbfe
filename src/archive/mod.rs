//! The archive: recording segments (`recorder`), where their bytes live (`storage`), and upkeep
//! (start-up `repair`, S3 upload, retention, import of Go archives).

pub mod export;
pub mod import;
pub mod playback;
pub mod recorder;
pub mod repair;
pub mod retention;
pub mod storage;
pub mod uploader;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Config;
use storage::Storage;

/// Archive services shared by the request handlers.
pub struct Archive {
    /// The local filesystem (every segment starts there).
    pub fs: Arc<dyn Storage>,
    /// The object store, when `[s3]` (or `minio_settings`) is configured.
    pub s3: Option<Arc<dyn Storage>>,
    /// Limits concurrent archive playback sessions (each holds a file or object open).
    pub playback_slots: Arc<Semaphore>,
    /// Recent export plans (the `Range` requests of one download share one plan).
    pub export_plans: export::PlanCache,
}

impl Archive {
    pub fn new(config: &Config) -> Archive {
        let s3 = config.effective_s3().and_then(|cfg| {
            match storage::s3::S3Storage::new(&cfg, &storage::s3::S3Timeouts::default()) {
                Ok(s) => Some(Arc::new(s) as Arc<dyn Storage>),
                Err(e) => {
                    tracing::error!(error = %e, "S3 settings are invalid: S3 archive disabled");
                    None
                }
            }
        });
        Archive {
            fs: Arc::new(storage::fs::FsStorage),
            s3,
            playback_slots: Arc::new(Semaphore::new(config.archive.max_playback_sessions())),
            export_plans: export::PlanCache::default(),
        }
    }

    /// The storage a segment row lives in (`storage` column).
    pub fn storage_for(&self, kind: &str) -> Option<Arc<dyn Storage>> {
        match kind {
            "filesystem" => Some(self.fs.clone()),
            "s3" => self.s3.clone(),
            _ => None,
        }
    }
}
