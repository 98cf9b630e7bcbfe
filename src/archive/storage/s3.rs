//! Segment objects in an S3-compatible object store (MinIO, AWS S3, s3s-fs, ...), through
//! `aws-sdk-s3`.
//!
//! Keys are object keys inside one bucket; an [`S3Storage`] is bound to a bucket, and
//! [`S3Storage::for_bucket`] gives a handle on another bucket sharing the same client (streams may
//! override the `[s3]` bucket). Object keys follow [`object_key`]: `<prefix>/<stream-uuid>/<file>`.
//!
//! Unlike the Go original this never installs lifecycle rules on a bucket (the original silently
//! expired every object after two days): what is kept and for how long is retention's business.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
};
use bytes::Bytes;
use uuid::Uuid;

use super::{Storage, StorageError};
use crate::config::S3Config;

/// Files larger than this are uploaded in parts, so one failed request costs a part, not the whole
/// segment, and no single request runs for minutes. Segments are usually minutes long (at most an
/// hour, `config::MAX_MS_PER_FILE`), i.e. tens of MB to a few GB.
pub const MULTIPART_THRESHOLD_BYTES: u64 = 16 * 1024 * 1024;

/// Part size of multipart uploads. S3 requires at least 5 MiB for every part but the last, and at
/// most 10 000 parts: 8 MiB parts allow objects up to ~78 GiB.
pub const PART_SIZE_BYTES: u64 = 8 * 1024 * 1024;

/// Region used when `[s3] region` is empty (MinIO's default too).
pub const DEFAULT_REGION: &str = "us-east-1";

/// Content type of uploaded segments: they are MP4 files, so a presigned URL plays in a browser.
const CONTENT_TYPE: &str = "video/mp4";

/// Timeouts and retries of every S3 call. A dead or silent endpoint must fail a call in bounded
/// time: the uploader then backs off, playback reports an error, nothing hangs.
#[derive(Debug, Clone)]
pub struct S3Timeouts {
    /// TCP (and TLS) connection set-up.
    pub connect: Duration,
    /// Longest wait for bytes from the server on an open connection.
    pub read: Duration,
    /// Whole call, retries included. One call moves at most [`MULTIPART_THRESHOLD_BYTES`], so this
    /// bounds the slowest link we tolerate (16 MiB in 120 s is about 1.1 Mbit/s).
    pub operation: Duration,
    /// Attempts per call (1 = no SDK retry). The uploader retries on its own with backoff, so a
    /// small number keeps failures quick.
    pub max_attempts: u32,
}

impl Default for S3Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(30),
            operation: Duration::from_secs(120),
            max_attempts: 2,
        }
    }
}

/// Settings that cannot give a working client. Never contains a credential.
#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    #[error("[s3] endpoint '{0}' must start with http:// or https://")]
    Endpoint(String),
    #[error(
        "[s3] access_key / secret_key are missing (and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are unset)"
    )]
    Credentials,
    #[error("[s3] bucket is empty")]
    Bucket,
    #[error("'{0}' is not a valid S3 bucket name (3-63 characters: a-z, 0-9, '-', '.')")]
    BucketName(String),
}

/// One object found by [`S3Storage::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size_bytes: u64,
}

/// A bucket of an S3-compatible store. Cheap to clone (the client is shared).
#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    /// Region, for the location constraint when creating buckets outside `us-east-1`.
    region: String,
}

impl std::fmt::Debug for S3Storage {
    // The client's config holds the credentials: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The object key of a segment file: `<prefix>/<stream-uuid>/<file name>`.
///
/// Slashes around the prefix are dropped, so the Go `default_path = "/var/archive_data"` gives
/// `var/archive_data/<uuid>/<file>` (the original produced keys starting with `/`), and an empty
/// prefix gives `<uuid>/<file>`.
pub fn object_key(prefix: &str, stream_id: Uuid, file_name: &str) -> String {
    let prefix = prefix.trim_matches('/');
    let file_name = file_name.trim_start_matches('/');
    if prefix.is_empty() {
        format!("{stream_id}/{file_name}")
    } else {
        format!("{prefix}/{stream_id}/{file_name}")
    }
}

impl S3Storage {
    /// Builds a client from `[s3]`: custom endpoint (plain HTTP or TLS by its scheme; empty means
    /// AWS), region, static credentials (falling back to `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY`), path-style addressing unless `path_style = false`.
    pub fn new(cfg: &S3Config, timeouts: &S3Timeouts) -> Result<S3Storage, S3ConfigError> {
        let endpoint = cfg.endpoint.trim();
        let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !scheme_ok {
            return Err(S3ConfigError::Endpoint(crate::redact::mask_url(endpoint)));
        }
        if cfg.bucket.trim().is_empty() {
            return Err(S3ConfigError::Bucket);
        }
        check_bucket_name(cfg.bucket.trim())?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (access_key, secret_key) = if cfg.access_key.is_empty() && cfg.secret_key.is_empty() {
            match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(a), Some(s)) => (a, s),
                _ => return Err(S3ConfigError::Credentials),
            }
        } else {
            (cfg.access_key.clone(), cfg.secret_key.clone())
        };
        let region = if cfg.region.trim().is_empty() {
            DEFAULT_REGION.to_owned()
        } else {
            cfg.region.trim().to_owned()
        };
        let timeout = TimeoutConfig::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .operation_timeout(timeouts.operation)
            .build();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "video-server [s3]",
            ))
            .force_path_style(cfg.path_style.unwrap_or(true))
            .timeout_config(timeout)
            .retry_config(RetryConfig::standard().with_max_attempts(timeouts.max_attempts.max(1)))
            // The SDK's default whole-body CRC checksums (aws-chunked trailers) are not implemented
            // by every S3-compatible server (older MinIO releases reject them); SigV4 already
            // covers integrity of what we send.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if !endpoint.is_empty() {
            builder = builder.endpoint_url(endpoint.trim_end_matches('/'));
        }
        Ok(S3Storage {
            client: Client::from_conf(builder.build()),
            bucket: cfg.bucket.trim().to_owned(),
            region,
        })
    }

    /// The bucket this handle reads and writes.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A handle on another bucket of the same store (per-stream bucket override).
    pub fn for_bucket(&self, bucket: &str) -> S3Storage {
        S3Storage {
            client: self.client.clone(),
            bucket: bucket.to_owned(),
            region: self.region.clone(),
        }
    }

    /// `bucket/key`, how errors name an object (or `bucket NAME` for bucket calls).
    fn name(&self, key: &str) -> String {
        if key.is_empty() {
            format!("bucket {}", self.bucket)
        } else {
            format!("{}/{}", self.bucket, key)
        }
    }

    fn remote<E>(&self, key: &str, err: &SdkError<E, HttpResponse>) -> StorageError
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
    {
        StorageError::Remote {
            key: self.name(key),
            message: describe(err),
        }
    }

    /// Creates the bucket unless it exists. Returns whether it was created. Sets nothing else on
    /// the bucket: no lifecycle rules, no object lock.
    pub async fn ensure_bucket(&self) -> Result<bool, StorageError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(false),
            Err(e) if http_status(&e) == Some(404) => {}
            // Credentials limited to object calls may not look at the bucket itself: assume it
            // exists, and let the uploads say otherwise.
            Err(e) if http_status(&e) == Some(403) => {
                tracing::warn!(bucket = %self.bucket,
                    "not allowed to check whether the bucket exists; assuming it does");
                return Ok(false);
            }
            Err(e) => return Err(self.remote("", &e)),
        }
        let mut req = self.client.create_bucket().bucket(&self.bucket);
        if self.region != DEFAULT_REGION {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "S3 bucket created");
                Ok(true)
            }
            // Someone (another instance, an operator) created it in between. Servers word that
            // differently (MinIO: BucketAlreadyOwnedByYou; some answer 500), so on any error look
            // again before failing.
            Err(e) => match self.client.head_bucket().bucket(&self.bucket).send().await {
                Ok(_) => Ok(false),
                Err(_) => Err(self.remote("", &e)),
            },
        }
    }

    /// Uploads a local file as `key` and returns its size. Files above
    /// [`MULTIPART_THRESHOLD_BYTES`] go in [`PART_SIZE_BYTES`] parts; the file is streamed from
    /// disk, never read whole into memory. A missing file is [`StorageError::NotFound`] naming the
    /// path; every remote failure is [`StorageError::Remote`].
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| local_io(path, e))?
            .len();
        if size > MULTIPART_THRESHOLD_BYTES {
            self.put_multipart(key, path, size).await?;
        } else {
            let body = file_part(path, 0, size).await?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(CONTENT_TYPE)
                .content_length(size as i64)
                .body(body)
                .send()
                .await
                .map_err(|e| self.remote(key, &e))?;
        }
        Ok(size)
    }

    async fn put_multipart(&self, key: &str, path: &Path, size: u64) -> Result<(), StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| self.remote(key, &e))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(StorageError::Remote {
                key: self.name(key),
                message: "CreateMultipartUpload answered without an upload id".into(),
            });
        };
        let result = self.upload_parts(key, path, size, &upload_id).await;
        if result.is_err() {
            // Best effort: an unfinished upload keeps its parts (and their storage cost) until
            // aborted. If this fails too, the store's own clean-up has to deal with it.
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                tracing::warn!(object = %self.name(key), error = %describe(&e),
                    "could not abort a failed multipart upload");
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        upload_id: &str,
    ) -> Result<(), StorageError> {
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 1i32;
        while offset < size {
            let len = PART_SIZE_BYTES.min(size - offset);
            let body = file_part(path, offset, len).await?;
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len as i64)
                .body(body)
                .send()
                .await
                .map_err(|e| self.remote(key, &e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .build(),
            );
            offset += len;
            number += 1;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.remote(key, &e))?;
        Ok(())
    }

    /// Every object whose key starts with `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.remote(prefix, &e))?;
            for o in page.contents() {
                if let Some(key) = o.key() {
                    out.push(ObjectInfo {
                        key: key.to_owned(),
                        size_bytes: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// A `[offset, offset + len)` slice of a local file as a streaming, replayable request body.
async fn file_part(path: &Path, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
    ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(len))
        .build()
        .await
        .map_err(|e| StorageError::Io {
            key: path.display().to_string(),
            source: std::io::Error::other(e),
        })
}

fn local_io(path: &Path, source: std::io::Error) -> StorageError {
    let key = path.display().to_string();
    if source.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound { key }
    } else {
        StorageError::Io { key, source }
    }
}

/// A one-line description of a failed call: the HTTP status and S3 error code when the server
/// answered, else the transport error chain (connection refused, timeout, ...). Requests are not
/// included, so neither are signatures or keys.
fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let mut text = format!(
                "HTTP {} {}",
                se.raw().status().as_u16(),
                e.code().unwrap_or("(no error code)")
            );
            if let Some(m) = e.message() {
                text.push_str(": ");
                text.push_str(m);
            }
            text
        }
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// Checks an S3 bucket name (3 to 63 characters: lower-case letters, digits, `-` and `.`, starting
/// and ending with a letter or digit), so a typo is reported as such instead of as failing uploads.
pub fn check_bucket_name(name: &str) -> Result<(), S3ConfigError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if (3..=63).contains(&name.len())
        && name.chars().all(ok_char)
        && edge(name.chars().next())
        && edge(name.chars().last())
        && !name.contains("..")
    {
        Ok(())
    } else {
        Err(S3ConfigError::BucketName(name.to_owned()))
    }
}

/// The HTTP status of a failed call, if the server answered at all.
fn http_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

#[async_trait::async_trait]
impl Storage for S3Storage {
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, StorageError> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        let want = match &range {
            Some(r) if r.end <= r.start => return Ok(Bytes::new()),
            // HTTP ranges are inclusive at both ends.
            Some(r) => {
                req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
                Some(r.end - r.start)
            }
            None => None,
        };
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if http_status(&e) == Some(404) => {
                return Err(StorageError::NotFound {
                    key: self.name(key),
                });
            }
            Err(e) => return Err(self.remote(key, &e)),
        };
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Remote {
                key: self.name(key),
                message: format!("reading the body: {e}"),
            })?
            .into_bytes();
        // Same contract as the filesystem: a range past the end is an error, not a short read.
        if let Some(want) = want
            && data.len() as u64 != want
        {
            return Err(StorageError::Remote {
                key: self.name(key),
                message: format!("asked for {want} bytes, got {}", data.len()),
            });
        }
        Ok(data)
    }

    async fn size(&self, key: &str) -> Result<u64, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0)),
            Err(e) if http_status(&e) == Some(404) => Err(StorageError::NotFound {
                key: self.name(key),
            }),
            Err(e) => Err(self.remote(key, &e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if http_status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.remote(key, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoint: &str) -> S3Config {
        S3Config {
            endpoint: endpoint.into(),
            region: String::new(),
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "hunter2-secret".into(),
            bucket: "archive".into(),
            prefix: String::new(),
            path_style: None,
            buckets: Vec::new(),
        }
    }

    #[test]
    fn object_keys_never_start_with_a_slash() {
        let id = Uuid::parse_str("566bfe72-2a8a-4d4c-9b84-2e1b9b4b1a3c").expect("uuid");
        let file = format!("{id}_1700000000.mp4");
        assert_eq!(
            object_key("/var/archive_data", id, &file),
            format!("var/archive_data/{id}/{file}")
        );
        assert_eq!(
            object_key("site-a/", id, &file),
            format!("site-a/{id}/{file}")
        );
        assert_eq!(object_key("", id, &file), format!("{id}/{file}"));
        assert_eq!(object_key("/", id, &file), format!("{id}/{file}"));
    }

    #[test]
    fn endpoint_scheme_is_checked_and_credentials_never_printed() {
        let err = S3Storage::new(&cfg("ftp://user:pw@host:21"), &S3Timeouts::default())
            .expect_err("ftp is not S3");
        let msg = err.to_string();
        assert!(msg.contains("http://"), "{msg}");
        assert!(!msg.contains("pw"), "{msg}");
        let s3 = S3Storage::new(&cfg("http://127.0.0.1:9000"), &S3Timeouts::default())
            .expect("plain http is fine");
        let dbg = format!("{s3:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("AKIDEXAMPLE"), "{dbg}");
        assert!(S3Storage::new(&cfg("https://s3.example.com"), &S3Timeouts::default()).is_ok());
    }

    #[test]
    fn bucket_names_are_checked() {
        for good in ["abc", "archive", "cams-a", "my.bucket.1", &"a".repeat(63)] {
            assert!(check_bucket_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "b",
            "ab",
            "Archive",
            "-abc",
            "abc-",
            "a..b",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_bucket_is_rejected() {
        let mut c = cfg("http://127.0.0.1:9000");
        c.bucket = " ".into();
        assert!(matches!(
            S3Storage::new(&c, &S3Timeouts::default()),
            Err(S3ConfigError::Bucket)
        ));
    }
}
