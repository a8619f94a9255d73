//! The content-addressed artifact store. Every blob lives at
//! `<root>/blobs/<first two hex>/<BLAKE3 hex>` in an `object_store` backend
//! chosen from the URL: a local directory (default) or `s3://bucket/prefix`
//! (endpoint and credentials from the standard `AWS_*` variables).
//!
//! Invariants: a blob's key is the digest of its bytes, so a blob is written
//! once and never changes; every read is verified against its digest; a
//! directory is stored as a manifest blob listing the digests of its files.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use weir_core::{ArtifactKind, Digest};

/// Files above this size are uploaded in parts rather than read whole.
const MULTIPART_THRESHOLD: u64 = 32 << 20;
const PART_SIZE: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("'{url}' is not a supported artifact location\n  hint: use a directory path, file:///abs/path or s3://bucket/prefix")]
    UnsupportedUrl { url: String },
    #[error("cannot open artifact store {url}: {reason}\n  hint: for s3:// set AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION")]
    Open { url: String, reason: String },
    #[error("artifact {digest} is missing from {location}\n  hint: the artifact store may have been cleaned or point elsewhere (WEIR_ARTIFACTS)")]
    Missing { digest: String, location: String },
    #[error("artifact {digest} in {location} is corrupt: its bytes hash to {actual}\n  hint: delete the blob; the step that produced it will write it again")]
    Corrupt {
        digest: String,
        actual: String,
        location: String,
    },
    #[error("manifest {digest} is invalid: {reason}")]
    BadManifest { digest: String, reason: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("artifact store {location}: {source}")]
    Backend {
        location: String,
        source: object_store::Error,
    },
    #[error("cannot reach the artifact store {location}: {source}\n  hint: requests were retried with backoff for up to {retried_for:?} (WEIR_S3_RETRY_TIMEOUT); check that the S3 endpoint is up and reachable from here, then `weir resume RUN` continues a run that failed on it")]
    Unreachable {
        location: String,
        retried_for: std::time::Duration,
        source: object_store::Error,
    },
    #[error("no space left on the artifact store {location}: {source}\n  hint: free space there (`weir gc` removes blobs nothing refers to) or point WEIR_ARTIFACTS at a larger volume, then `weir resume RUN` continues a run that failed on it")]
    NoSpace {
        location: String,
        source: object_store::Error,
    },
}

/// How long requests to an S3 store are retried (with exponential backoff)
/// before an operation fails: WEIR_S3_RETRY_TIMEOUT, default 3 minutes,
/// enough to ride out an S3 server's restart.
fn s3_retry_timeout() -> Result<std::time::Duration, String> {
    match std::env::var("WEIR_S3_RETRY_TIMEOUT") {
        Ok(text) => humantime::parse_duration(&text).map_err(|e| {
            format!("WEIR_S3_RETRY_TIMEOUT={text:?} is not a duration ({e}); use e.g. 30s or 5m")
        }),
        Err(_) => Ok(std::time::Duration::from_secs(180)),
    }
}

/// What an object_store error comes down to, read from its chain of causes:
/// a full disk or a server that could not be reached get their own errors,
/// because each tells the user something different to do.
enum Cause {
    NoSpace,
    Unreachable,
    Other,
}

fn cause_of(error: &object_store::Error) -> Cause {
    use object_store::client::HttpErrorKind;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28) {
                return Cause::NoSpace;
            }
        }
        if let Some(http) = e.downcast_ref::<object_store::client::HttpError>() {
            if matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            ) {
                return Cause::Unreachable;
            }
        }
        next = e.source();
    }
    Cause::Other
}

pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// What a put returns: enough to record the artifact in metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub digest: Digest,
    pub size: u64,
    pub kind: ArtifactKind,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    weir_manifest: u32,
    files: Vec<ManifestEntry>,
}

#[derive(Serialize, Deserialize)]
struct ManifestEntry {
    path: String,
    digest: Digest,
    size: u64,
}

#[derive(Clone, Debug)]
pub struct ArtifactStore {
    backend: Arc<dyn ObjectStore>,
    root: ObjectPath,
    location: String,
    /// Set for a local directory, whose files are fsynced after each write.
    local_dir: Option<PathBuf>,
    /// Bytes moved to and from the backend by this handle and its clones,
    /// which is what a step is charged for.
    traffic: Arc<Traffic>,
    /// How long a remote request is retried before it fails.
    retry_timeout: std::time::Duration,
}

#[derive(Debug, Default)]
struct Traffic {
    read: std::sync::atomic::AtomicU64,
    written: std::sync::atomic::AtomicU64,
}

impl Traffic {
    fn read(&self, n: u64) {
        self.read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn wrote(&self, n: u64) {
        self.written
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError {
    let path = path.to_path_buf();
    move |source| ArtifactError::Io {
        action,
        path,
        source,
    }
}

impl ArtifactStore {
    /// Opens the store at `url`: a plain path, `file:///abs/path`, or `s3://bucket/prefix`.
    pub fn open(url: &str) -> Result<ArtifactStore> {
        let open_err = |e: &dyn std::fmt::Display| ArtifactError::Open {
            url: url.to_string(),
            reason: e.to_string(),
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ArtifactError::UnsupportedUrl { url: url.into() });
            }
            let retry_timeout = s3_retry_timeout().map_err(|e| open_err(&e))?;
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(object_store::RetryConfig {
                    retry_timeout,
                    // The timeout, not a count, ends the wait: a refused
                    // connection fails at once, and object_store's jittered
                    // backoff would spend ten tries in a couple of seconds.
                    max_retries: usize::MAX,
                    ..Default::default()
                });
            let endpoint = std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok();
            if let Some(endpoint) = endpoint {
                // A custom endpoint is an S3-compatible server: address buckets by
                // path, and allow plain HTTP only when the endpoint itself is http.
                builder = builder
                    .with_endpoint(&endpoint)
                    .with_virtual_hosted_style_request(false)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err()
            {
                builder = builder.with_region("us-east-1");
            }
            let backend = builder.build().map_err(|e| open_err(&e))?;
            return Ok(ArtifactStore {
                backend: Arc::new(backend),
                root: ObjectPath::from(prefix.trim_matches('/')),
                location: url.to_string(),
                local_dir: None,
                traffic: Arc::default(),
                retry_timeout,
            });
        }
        let path = if let Some(p) = url.strip_prefix("file://") {
            PathBuf::from(p)
        } else if url.contains("://") {
            return Err(ArtifactError::UnsupportedUrl { url: url.into() });
        } else {
            PathBuf::from(url)
        };
        std::fs::create_dir_all(&path).map_err(|e| open_err(&e))?;
        let path = path.canonicalize().map_err(|e| open_err(&e))?;
        let backend = LocalFileSystem::new_with_prefix(&path).map_err(|e| open_err(&e))?;
        Ok(ArtifactStore {
            backend: Arc::new(backend),
            root: ObjectPath::from(""),
            location: path.display().to_string(),
            local_dir: Some(path),
            traffic: Arc::default(),
            retry_timeout: std::time::Duration::ZERO,
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether the store is an object store (s3://), whose reads cost egress.
    pub fn is_remote(&self) -> bool {
        self.local_dir.is_none()
    }

    /// Bytes (read, written) through this store since it was opened.
    pub fn traffic(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.traffic.read.load(Relaxed),
            self.traffic.written.load(Relaxed),
        )
    }

    fn key(&self, digest: &Digest) -> ObjectPath {
        let hex = digest.hex();
        self.named_key(&format!("blobs/{}/{hex}", &hex[..2]))
    }

    fn backend_err(&self) -> impl FnOnce(object_store::Error) -> ArtifactError + '_ {
        move |source| {
            let location = self.location.clone();
            match cause_of(&source) {
                Cause::NoSpace => ArtifactError::NoSpace { location, source },
                Cause::Unreachable => ArtifactError::Unreachable {
                    location,
                    retried_for: self.retry_timeout,
                    source,
                },
                Cause::Other => ArtifactError::Backend { location, source },
            }
        }
    }

    pub async fn contains(&self, digest: &Digest) -> Result<bool> {
        match self.backend.head(&self.key(digest)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.backend_err()(e)),
        }
    }

    /// Whether an artifact can be fetched whole: its blob and, for a
    /// directory, every file its manifest lists.
    pub async fn is_complete(&self, digest: &Digest, kind: ArtifactKind) -> Result<bool> {
        match kind {
            ArtifactKind::File => self.contains(digest).await,
            ArtifactKind::Dir => {
                let manifest = match self.manifest(digest).await {
                    Ok(m) => m,
                    Err(
                        ArtifactError::Missing { .. }
                        | ArtifactError::Corrupt { .. }
                        | ArtifactError::BadManifest { .. },
                    ) => return Ok(false),
                    Err(e) => return Err(e),
                };
                for entry in &manifest.files {
                    if !self.contains(&entry.digest).await? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }

    pub async fn put_bytes(&self, bytes: Bytes) -> Result<Stored> {
        let digest = Digest::of_bytes(&bytes);
        let size = bytes.len() as u64;
        if !self.contains(&digest).await? {
            let key = self.key(&digest);
            self.backend
                .put(&key, PutPayload::from_bytes(bytes))
                .await
                .map_err(self.backend_err())?;
            self.sync_local(&key).await?;
            self.traffic.wrote(size);
        }
        Ok(Stored {
            digest,
            size,
            kind: ArtifactKind::File,
        })
    }

    /// Stores a file or, for a directory, each file and a manifest.
    pub async fn put_path(&self, path: &Path) -> Result<Stored> {
        let meta = std::fs::metadata(path).map_err(io("cannot read", path))?;
        if meta.is_dir() {
            self.put_dir(path).await
        } else {
            self.put_file(path).await
        }
    }

    pub async fn put_file(&self, path: &Path) -> Result<Stored> {
        let digest = Digest::of_file(path).map_err(io("cannot read", path))?;
        let size = std::fs::metadata(path)
            .map_err(io("cannot read", path))?
            .len();
        let stored = Stored {
            digest,
            size,
            kind: ArtifactKind::File,
        };
        if self.contains(&digest).await? {
            return Ok(stored);
        }
        let key = self.key(&digest);
        if size <= MULTIPART_THRESHOLD {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(io("cannot read", path))?;
            // The file may have changed since it was hashed; never store bytes
            // under a digest they do not have.
            if Digest::of_bytes(&bytes) != digest {
                return Err(ArtifactError::Io {
                    action: "file changed while being stored:",
                    path: path.to_path_buf(),
                    source: std::io::Error::other("content differs from its digest"),
                });
            }
            self.backend
                .put(&key, PutPayload::from(bytes))
                .await
                .map_err(self.backend_err())?;
        } else {
            self.put_multipart(&key, path).await?;
        }
        self.sync_local(&key).await?;
        self.traffic.wrote(size);
        Ok(stored)
    }

    async fn put_multipart(&self, key: &ObjectPath, path: &Path) -> Result<()> {
        use tokio::io::AsyncReadExt;
        let upload = self
            .backend
            .put_multipart(key)
            .await
            .map_err(self.backend_err())?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(io("cannot read", path))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io("cannot read", path)(e));
                }
            };
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(4)
                .await
                .map_err(self.backend_err())?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(self.backend_err())?;
        Ok(())
    }

    pub async fn put_dir(&self, dir: &Path) -> Result<Stored> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)?;
        files.sort();
        let mut entries = Vec::with_capacity(files.len());
        for rel in files {
            let stored = self.put_file(&dir.join(&rel)).await?;
            entries.push(ManifestEntry {
                path: rel.to_string_lossy().replace('\\', "/"),
                digest: stored.digest,
                size: stored.size,
            });
        }
        self.put_manifest(entries).await
    }

    /// A directory made of artifacts already stored: a file artifact becomes
    /// the entry `name`, a directory artifact the entries `name/...`. Only the
    /// new manifest is written.
    pub async fn compose_dir(&self, parts: &[(String, Digest, ArtifactKind)]) -> Result<Stored> {
        let mut entries = Vec::new();
        for (name, digest, kind) in parts {
            match kind {
                ArtifactKind::File => {
                    let size = match self.backend.head(&self.key(digest)).await {
                        Ok(meta) => meta.size,
                        Err(object_store::Error::NotFound { .. }) => {
                            return Err(ArtifactError::Missing {
                                digest: digest.hex(),
                                location: self.location.clone(),
                            })
                        }
                        Err(e) => return Err(self.backend_err()(e)),
                    };
                    entries.push(ManifestEntry {
                        path: name.clone(),
                        digest: *digest,
                        size,
                    });
                }
                ArtifactKind::Dir => {
                    for e in self.manifest(digest).await?.files {
                        entries.push(ManifestEntry {
                            path: format!("{name}/{}", e.path),
                            ..e
                        });
                    }
                }
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        self.put_manifest(entries).await
    }

    /// Reads and parses a directory artifact's manifest.
    async fn manifest(&self, digest: &Digest) -> Result<Manifest> {
        let bytes = self.get(digest).await?;
        serde_json::from_slice(&bytes).map_err(|e| ArtifactError::BadManifest {
            digest: digest.hex(),
            reason: e.to_string(),
        })
    }

    /// Stores the manifest of a directory whose files are already stored.
    async fn put_manifest(&self, files: Vec<ManifestEntry>) -> Result<Stored> {
        let size = files.iter().map(|e| e.size).sum();
        let manifest = serde_json::to_vec(&Manifest {
            weir_manifest: 1,
            files,
        })
        .expect("a manifest always serializes");
        let stored = self.put_bytes(Bytes::from(manifest)).await?;
        Ok(Stored {
            digest: stored.digest,
            size,
            kind: ArtifactKind::Dir,
        })
    }

    /// Reads a blob and checks it against its digest.
    pub async fn get(&self, digest: &Digest) -> Result<Bytes> {
        let bytes = match self.backend.get(&self.key(digest)).await {
            Ok(result) => result.bytes().await.map_err(self.backend_err())?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ArtifactError::Missing {
                    digest: digest.hex(),
                    location: self.location.clone(),
                })
            }
            Err(e) => return Err(self.backend_err()(e)),
        };
        self.traffic.read(bytes.len() as u64);
        let actual = Digest::of_bytes(&bytes);
        if actual != *digest {
            return Err(ArtifactError::Corrupt {
                digest: digest.hex(),
                actual: actual.hex(),
                location: self.location.clone(),
            });
        }
        Ok(bytes)
    }

    /// A blob's bytes as a stream, for sending on without holding them in
    /// memory. They are hashed as they pass: a blob that does not match its
    /// digest ends the stream with [`ArtifactError::Corrupt`] instead of its
    /// last chunk, so a reader never takes a corrupt blob for a whole one.
    pub async fn get_stream(
        &self,
        digest: &Digest,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        let result = match self.backend.get(&self.key(digest)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ArtifactError::Missing {
                    digest: digest.hex(),
                    location: self.location.clone(),
                })
            }
            Err(e) => return Err(self.backend_err()(e)),
        };
        self.traffic.read(result.meta.size);
        let location = self.location.clone();
        let expected = *digest;
        let inner = result.into_stream();
        let state = (inner, Digest::hasher(), false);
        let stream = futures::stream::unfold(state, move |(mut inner, mut hasher, done)| {
            let location = location.clone();
            async move {
                if done {
                    return None;
                }
                match inner.next().await {
                    Some(Ok(chunk)) => {
                        hasher.update(&chunk);
                        Some((Ok(chunk), (inner, hasher, false)))
                    }
                    Some(Err(e)) => Some((
                        Err(ArtifactError::Open {
                            url: location,
                            reason: e.to_string(),
                        }),
                        (inner, hasher, true),
                    )),
                    None => {
                        let actual = hasher.finish();
                        if actual == expected {
                            None
                        } else {
                            Some((
                                Err(ArtifactError::Corrupt {
                                    digest: expected.hex(),
                                    actual: actual.hex(),
                                    location,
                                }),
                                (inner, hasher, true),
                            ))
                        }
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    /// Writes an artifact to `dest`: a file, or a directory rebuilt from its manifest.
    pub async fn fetch(&self, digest: &Digest, kind: ArtifactKind, dest: &Path) -> Result<()> {
        match kind {
            ArtifactKind::File => self.fetch_file(digest, dest).await,
            ArtifactKind::Dir => {
                let manifest = self.manifest(digest).await?;
                std::fs::create_dir_all(dest).map_err(io("cannot create", dest))?;
                for entry in manifest.files {
                    let rel =
                        safe_relative(&entry.path).ok_or_else(|| ArtifactError::BadManifest {
                            digest: digest.hex(),
                            reason: format!("entry '{}' escapes the directory", entry.path),
                        })?;
                    self.fetch_file(&entry.digest, &dest.join(rel)).await?;
                }
                Ok(())
            }
        }
    }

    async fn fetch_file(&self, digest: &Digest, dest: &Path) -> Result<()> {
        let bytes = self.get(digest).await?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        tokio::fs::write(dest, &bytes)
            .await
            .map_err(io("cannot write", dest))
    }

    /// Deletes a blob (used by tests and, later, garbage collection).
    pub async fn delete(&self, digest: &Digest) -> Result<()> {
        match self.backend.delete(&self.key(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.backend_err()(e)),
        }
    }

    /// LocalFileSystem renames a finished temp file into place but does not
    /// fsync; do it here so "stored" means durable before metadata records it.
    /// On a blocking thread, so stores running side by side wait for their
    /// disk flushes together.
    async fn sync_local(&self, key: &ObjectPath) -> Result<()> {
        if let Some(dir) = &self.local_dir {
            let path = dir.join(key.as_ref());
            let synced = path.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::File::open(&synced).and_then(|f| f.sync_all())
            })
            .await
            .map_err(|e| ArtifactError::Io {
                action: "cannot sync",
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(io("cannot sync", &path))?;
        }
        Ok(())
    }

    /// Reads a whole blob, hashing it as it streams, and returns its size:
    /// [`ArtifactError::Missing`] or [`ArtifactError::Corrupt`] otherwise.
    pub async fn verify(&self, digest: &Digest) -> Result<u64> {
        let mut stream = self.get_stream(digest).await?;
        let mut size = 0;
        while let Some(chunk) = stream.next().await {
            size += chunk?.len() as u64;
        }
        Ok(size)
    }

    /// The files a directory artifact's manifest lists: (path, digest).
    pub async fn children(&self, digest: &Digest) -> Result<Vec<(String, Digest)>> {
        Ok(self
            .manifest(digest)
            .await?
            .files
            .into_iter()
            .map(|f| (f.path, f.digest))
            .collect())
    }

    /// Whether a blob's bytes are a directory manifest (for a digest
    /// recorded without its kind).
    pub fn is_manifest(bytes: &[u8]) -> bool {
        serde_json::from_slice::<Manifest>(bytes).is_ok_and(|m| m.weir_manifest >= 1)
    }

    /// Moves a blob out of `blobs/` into `quarantine/` (same name), so
    /// nothing reads it any more and a run that needs it makes it again,
    /// while its bytes stay for a person to look at.
    pub async fn quarantine(&self, digest: &Digest) -> Result<()> {
        let to = self.named_key(&format!("quarantine/{}", digest.hex()));
        self.backend
            .copy(&self.key(digest), &to)
            .await
            .map_err(self.backend_err())?;
        self.delete(digest).await
    }

    fn trash_key(&self, digest: &Digest) -> ObjectPath {
        self.named_key(&format!("trash/{}", digest.hex()))
    }

    /// Moves a blob to `trash/` (garbage collection's first step): nothing
    /// finds it there, but [`ArtifactStore::rescue`] brings it back until
    /// the trash is emptied. Its time there starts now.
    pub async fn trash(&self, digest: &Digest) -> Result<()> {
        let to = self.trash_key(digest);
        match self.backend.rename(&self.key(digest), &to).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(self.backend_err()(e)),
        }
        // A local rename keeps the file's time; the trash's clock is the move.
        if let Some(dir) = &self.local_dir {
            let path = dir.join(to.as_ref());
            let _ = std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        }
        Ok(())
    }

    /// Moves a blob back from `trash/`; false if it is not there. Whoever
    /// is about to name a blob again rescues it first (see `weir gc`).
    pub async fn rescue(&self, digest: &Digest) -> Result<bool> {
        match self
            .backend
            .rename(&self.trash_key(digest), &self.key(digest))
            .await
        {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.backend_err()(e)),
        }
    }

    /// [`ArtifactStore::is_complete`], rescuing from the trash what it
    /// needs: what a cache hit checks before it names old outputs again.
    pub async fn ensure_complete(&self, digest: &Digest, kind: ArtifactKind) -> Result<bool> {
        if self.is_complete(digest, kind).await? {
            return Ok(true);
        }
        if !self.contains(digest).await? && !self.rescue(digest).await? {
            return Ok(false);
        }
        if kind == ArtifactKind::Dir {
            let Ok(manifest) = self.manifest(digest).await else {
                return Ok(false);
            };
            for entry in &manifest.files {
                if !self.contains(&entry.digest).await? && !self.rescue(&entry.digest).await? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    pub async fn in_trash(&self, digest: &Digest) -> Result<bool> {
        match self.backend.head(&self.trash_key(digest)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.backend_err()(e)),
        }
    }

    /// What the trash holds: (digest, size, when it was moved there).
    pub async fn list_trash(&self) -> Result<Vec<(Digest, u64, i64)>> {
        self.list_digests("trash").await
    }

    /// Deletes a blob from the trash for good.
    pub async fn purge(&self, digest: &Digest) -> Result<()> {
        match self.backend.delete(&self.trash_key(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.backend_err()(e)),
        }
    }

    /// Every blob with its size and when it was written (milliseconds).
    pub async fn list_blobs(&self) -> Result<Vec<(Digest, u64, i64)>> {
        self.list_digests("blobs").await
    }

    /// Every object under `prefix/`.
    async fn list_under(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>> {
        self.backend
            .list(Some(&self.named_key(prefix)))
            .try_collect()
            .await
            .map_err(self.backend_err())
    }

    /// The objects under `prefix/` named by a digest, with size and time.
    async fn list_digests(&self, prefix: &str) -> Result<Vec<(Digest, u64, i64)>> {
        Ok(self
            .list_under(prefix)
            .await?
            .iter()
            .filter_map(|m| {
                let digest = m.location.filename()?.parse().ok()?;
                Some((digest, m.size, m.last_modified.timestamp_millis()))
            })
            .collect())
    }

    fn named_key(&self, name: &str) -> ObjectPath {
        match self.root.as_ref().is_empty() {
            true => ObjectPath::from(name),
            false => ObjectPath::from(format!("{}/{name}", self.root)),
        }
    }

    /// Stores a named object beside the blobs (a backup's metadata and
    /// manifest): not content-addressed, so a name is written once by
    /// whoever picks it.
    pub async fn put_named(&self, name: &str, bytes: Bytes) -> Result<()> {
        let n = bytes.len() as u64;
        let key = self.named_key(name);
        self.backend
            .put(&key, PutPayload::from_bytes(bytes))
            .await
            .map_err(self.backend_err())?;
        self.traffic.wrote(n);
        self.sync_local(&key).await
    }

    pub async fn get_named(&self, name: &str) -> Result<Bytes> {
        match self.backend.get(&self.named_key(name)).await {
            Ok(result) => {
                let bytes = result.bytes().await.map_err(self.backend_err())?;
                self.traffic.read(bytes.len() as u64);
                Ok(bytes)
            }
            Err(object_store::Error::NotFound { .. }) => Err(ArtifactError::Missing {
                digest: name.to_string(),
                location: self.location.clone(),
            }),
            Err(e) => Err(self.backend_err()(e)),
        }
    }

    /// Names of the objects under `prefix/` (relative to the store's root).
    pub async fn list_named(&self, prefix: &str) -> Result<Vec<String>> {
        let metas = self.list_under(prefix).await?;
        let root = self.root.as_ref();
        Ok(metas
            .iter()
            .map(|m| {
                let full = m.location.as_ref();
                match root.is_empty() {
                    true => full.to_string(),
                    false => full
                        .strip_prefix(root)
                        .unwrap_or(full)
                        .trim_start_matches('/')
                        .to_string(),
                }
            })
            .collect())
    }

    /// Copies a blob from `other`, verified on the way; false when this
    /// store had it already (what makes backups incremental).
    pub async fn copy_from(&self, other: &ArtifactStore, digest: &Digest) -> Result<bool> {
        if self.contains(digest).await? {
            return Ok(false);
        }
        let bytes = other.get(digest).await?;
        self.put_bytes(bytes).await?;
        Ok(true)
    }

    /// Lists every blob digest (for tests and garbage collection).
    pub async fn list(&self) -> Result<Vec<Digest>> {
        Ok(self
            .list_blobs()
            .await?
            .into_iter()
            .map(|(d, _, _)| d)
            .collect())
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io("cannot read", dir))? {
        let entry = entry.map_err(io("cannot read", dir))?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            out.push(
                path.strip_prefix(root)
                    .expect("walked under root")
                    .to_path_buf(),
            );
        }
    }
    Ok(())
}

fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| p.to_path_buf())
}
