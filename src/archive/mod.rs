//! The archive: recording segments (`recorder`), where their bytes live (`storage`), and upkeep
//! (start-up `repair`, S3 upload, retention, import of Go archives).

pub mod export;
pub mod import;
pub mod leases;
pub mod markers;
pub mod playback;
pub mod recorder;
pub mod repair;
pub mod retention;
pub mod storage;
pub mod uploader;

use std::sync::Arc;

use crate::config::Config;
use crate::db::segments::SegmentRow;
use crate::stream::StorageKind;
use storage::Storage;
use storage::s3::S3Storage;

/// Archive services shared by the request handlers and retention: the one place that says where a
/// segment row's bytes are.
pub struct Archive {
    /// The local filesystem (every segment starts there).
    fs: Arc<dyn Storage>,
    /// Cluster mode: the filesystem rows are read through this (the local file, else the
    /// recording node's: `storage::peer`).
    cluster_fs: Option<Arc<dyn Storage>>,
    /// The `[s3]` (or `minio_settings`) bucket, when configured. Other buckets (per-stream
    /// overrides) are handles sharing its client.
    s3: Option<Arc<S3Storage>>,
    /// Recent export plans (the `Range` requests of one download share one plan).
    pub export_plans: export::PlanCache,
    /// What retention has done since start (for status pages and metrics).
    pub retention: retention::RetentionStats,
    /// Read leases of this process's playback and export sessions.
    pub leases: Arc<leases::Leases>,
    /// What archive playback sessions read (memory per session is bounded by fragments).
    pub playback: playback::PlaybackStats,
}

impl Archive {
    pub fn new(config: &Config) -> Archive {
        let s3 = config.effective_s3().and_then(|cfg| {
            match S3Storage::new(&cfg, &storage::s3::S3Timeouts::default()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "S3 settings are invalid: S3 archive disabled");
                    None
                }
            }
        });
        Archive::with_storages(Arc::new(storage::fs::FsStorage), s3)
    }

    /// An archive over the given storages (tests replace the filesystem or point S3 elsewhere).
    pub fn with_storages(fs: Arc<dyn Storage>, s3: Option<S3Storage>) -> Archive {
        Archive {
            fs,
            cluster_fs: None,
            s3: s3.map(Arc::new),
            export_plans: export::PlanCache::default(),
            retention: Default::default(),
            leases: Default::default(),
            playback: Default::default(),
        }
    }

    /// Cluster mode: reads of filesystem rows fall back to the node that recorded them when the
    /// file is not on this node (`storage::peer`).
    pub fn with_peer_reads(mut self, peers: storage::peer::PeerReads) -> Archive {
        self.cluster_fs = Some(Arc::new(storage::peer::ClusterFs::new(
            self.fs.clone(),
            Arc::new(peers),
        )));
        self
    }

    /// Whether an object store is configured (without one, `s3` rows cannot be reached).
    pub fn has_s3(&self) -> bool {
        self.s3.is_some()
    }

    /// The `[s3]` bucket, which holds `s3` rows whose `bucket` is NULL.
    pub fn default_bucket(&self) -> Option<&str> {
        self.s3.as_deref().map(S3Storage::bucket)
    }

    /// The storage to read a segment row's bytes from (playback, export). In cluster mode a
    /// filesystem row may be another node's file: read through that node.
    pub fn storage_for_row(&self, row: &SegmentRow) -> Option<Arc<dyn Storage>> {
        match (StorageKind::parse(&row.storage)?, &self.cluster_fs) {
            (StorageKind::Filesystem, Some(cluster)) => Some(cluster.clone()),
            _ => self.storage_for(&row.storage, row.bucket.as_deref()),
        }
    }

    /// The storage for a row's `storage` and `bucket` columns: `None` for an unknown kind, or an
    /// `s3` row when no object store is configured. Filesystem rows: this node's disk only (what
    /// retention deletes from).
    ///
    /// A bucket other than `[s3]`'s gets a new handle each time rather than a cached one: it only
    /// clones the shared client (an `Arc`), negligible next to the request it serves.
    pub fn storage_for(&self, kind: &str, bucket: Option<&str>) -> Option<Arc<dyn Storage>> {
        match StorageKind::parse(kind)? {
            StorageKind::Filesystem => Some(self.fs.clone()),
            StorageKind::S3 => {
                let s3 = self.s3.as_ref()?;
                match bucket {
                    Some(b) if b != s3.bucket() => Some(Arc::new(s3.for_bucket(b))),
                    _ => Some(s3.clone()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S3Config;

    fn archive(s3: bool) -> Archive {
        let cfg = S3Config {
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
            access_key: "a".into(),
            secret_key: "s".into(),
            bucket: "archive".into(),
            prefix: String::new(),
            path_style: Some(true),
            buckets: Vec::new(),
        };
        let s3 = s3.then(|| S3Storage::new(&cfg, &Default::default()).expect("valid settings"));
        Archive::with_storages(Arc::new(storage::fs::FsStorage), s3)
    }

    fn same(a: &Arc<dyn Storage>, b: *const ()) -> bool {
        Arc::as_ptr(a) as *const () == b
    }

    #[test]
    fn rows_resolve_to_their_storage_and_bucket() {
        let a = archive(true);
        let fs = Arc::as_ptr(&a.fs) as *const ();
        let default =
            a.s3.as_ref()
                .map(|s| Arc::as_ptr(s) as *const ())
                .expect("s3");
        let pick = |kind, bucket| a.storage_for(kind, bucket).expect("storage");
        assert!(same(&pick("filesystem", None), fs));
        assert!(same(&pick("s3", None), default), "NULL bucket: [s3]");
        assert!(
            same(&pick("s3", Some("archive")), default),
            "[s3] bucket by name"
        );
        let other = pick("s3", Some("cams-a"));
        assert!(!same(&other, default) && !same(&other, fs), "own handle");
        assert!(a.storage_for("tape", None).is_none());
        assert_eq!(a.default_bucket(), Some("archive"));

        let local = archive(false);
        assert!(local.storage_for("s3", Some("cams-a")).is_none());
        assert!(local.storage_for("filesystem", None).is_some());
        assert!(!local.has_s3() && local.default_bucket().is_none());
    }
}
