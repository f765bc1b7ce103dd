//! The blob store: files addressed by a path under the storage root, kept
//! in an [`ObjectStore`] (a directory in embedded mode, an S3-compatible
//! bucket in distributed mode), with their SHA-256 and content type
//! recorded in the service's database.
//!
//! Invariants:
//!
//! * Uploads stream: each chunk is hashed and handed to a multipart upload
//!   as it arrives, so memory stays flat whatever the size (at most
//!   [`PART_SIZE`] × ([`PART_CONCURRENCY`] + 1) per upload). The upload is
//!   completed only when the chunk stream ended cleanly (for gRPC: after
//!   the explicit commit message, never on a bare end of stream) and the
//!   size and hash match the header; otherwise it is aborted and nothing
//!   becomes visible
//!   (the local backend writes a staging file and renames it; S3 completes
//!   the multipart upload only then).
//! * A download reads one version: the ranged read is conditional on the
//!   entity tag seen by the stat that produced the metadata.
//! * The recorded hash belongs to a blob version through its entity tag; a
//!   blob replaced behind the service's back reports an empty hash rather
//!   than a wrong one.
//! * Object keys are the blob path's segments, each percent-encoded by
//!   `object_store` where a character is unsafe for some backend, so every
//!   valid blob path maps to exactly one key and back.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt as _};
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{GetOptions, GetResultPayload, ObjectMeta, ObjectStore, WriteMultipart};
use sha2::{Digest as _, Sha256};
use tasklab_config::Settings;
use tasklab_error::{Error, ErrorCode, Result};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::artifacts::now;
use crate::paging::{self, Page, PageRequest, SortValue};
use crate::paths::{self, Location, UriBase};
use crate::store::{BlobRecord, Store};

/// Size of one part of a multipart upload (S3 needs at least 5 MiB).
pub(crate) const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once.
pub(crate) const PART_CONCURRENCY: usize = 2;
/// Largest upload chunk a client may send.
pub(crate) const MAX_CHUNK: usize = 2 * 1024 * 1024;
/// Default largest blob: 5 GiB.
pub(crate) const DEFAULT_MAX_BLOB_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Download chunk size when the request leaves it at 0, and its bounds.
const DEFAULT_CHUNK: usize = 256 * 1024;
const MIN_CHUNK: usize = 64 * 1024;

/// What happened to the stored file behind a removed artifact or model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlobCleanup {
    NotRequested,
    Deleted,
    KeptReferenced,
    NotFound,
    External,
    Failed,
    NoUri,
}

/// The metadata of a stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobInfo {
    pub(crate) path: String,
    pub(crate) uri: String,
    pub(crate) size: u64,
    /// Empty when unknown (a blob not written through this service).
    pub(crate) sha256: String,
    pub(crate) content_type: String,
    pub(crate) created: DateTime<Utc>,
}

/// The header of an upload.
#[derive(Debug, Clone, Default)]
pub(crate) struct UploadHeader {
    pub(crate) path: String,
    /// Empty: guessed from the extension.
    pub(crate) content_type: String,
    pub(crate) expected_sha256: Option<String>,
    pub(crate) expected_size: Option<u64>,
    pub(crate) fail_if_exists: bool,
}

/// The answer of an upload.
#[derive(Debug, Clone)]
pub(crate) struct Uploaded {
    pub(crate) info: BlobInfo,
    pub(crate) replaced: bool,
}

/// A download: the blob's metadata, then `(offset, data)` chunks.
pub(crate) struct Download {
    pub(crate) info: BlobInfo,
    /// Number of bytes the chunks carry.
    pub(crate) len: u64,
    pub(crate) chunks: BoxStream<'static, Result<(u64, Bytes)>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("info", &self.info)
            .finish()
    }
}

/// The answer of [`BlobStore::delete`].
#[derive(Debug, Clone, Default)]
pub(crate) struct DeletedBlobs {
    pub(crate) deleted: Vec<String>,
    pub(crate) not_found: Vec<String>,
    pub(crate) external_uris: Vec<String>,
    pub(crate) deleted_under_prefixes: u64,
    /// (path, message).
    pub(crate) failures: Vec<(String, String)>,
}

/// Opens the configured object store: `<data_dir>/blobs` on the local file
/// system by default, or an S3-compatible bucket.
pub(crate) fn open_object_store(settings: &Settings) -> Result<Arc<dyn ObjectStore>> {
    let blobs = &settings.blobs;
    match blobs.backend.as_deref() {
        None | Some("") | Some("local") => {
            let root = settings.data_dir.join("blobs");
            std::fs::create_dir_all(&root)
                .map_err(|err| Error::unavailable("blob directory", err))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .map_err(|err| Error::unavailable("blob directory", err))?
                .with_automatic_cleanup(true);
            Ok(Arc::new(fs))
        }
        Some("s3") => {
            let bucket = blobs
                .s3_bucket
                .as_deref()
                .ok_or_else(|| Error::invalid("blobs.s3_bucket is required for the s3 backend"))?;
            let mut builder = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(blobs.s3_region.as_deref().unwrap_or("us-east-1"));
            if let Some(endpoint) = &blobs.s3_endpoint {
                // Custom endpoints (MinIO, Ceph, a loopback test server) take
                // path-style requests and may be plain HTTP.
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            if let Some(key) = &blobs.s3_access_key_id {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = &blobs.s3_secret_access_key {
                builder = builder.with_secret_access_key(secret);
            }
            let s3 = builder
                .build()
                .map_err(|err| Error::unavailable("blob storage", err))?;
            Ok(Arc::new(s3))
        }
        Some(other) => Err(Error::invalid(format!(
            "unknown blobs.backend {other:?}; use local or s3"
        ))),
    }
}

/// The blob store.
#[derive(Debug, Clone)]
pub(crate) struct BlobStore {
    objects: Arc<dyn ObjectStore>,
    records: Arc<dyn Store>,
    base: UriBase,
    max_size: u64,
}

impl BlobStore {
    pub(crate) fn new(
        objects: Arc<dyn ObjectStore>,
        records: Arc<dyn Store>,
        base: UriBase,
    ) -> Self {
        BlobStore {
            objects,
            records,
            base,
            max_size: DEFAULT_MAX_BLOB_SIZE,
        }
    }

    /// Uploads `chunks` to `header.path`, committing only a complete and
    /// verified upload.
    pub(crate) async fn upload<S>(&self, header: UploadHeader, mut chunks: S) -> Result<Uploaded>
    where
        S: futures::Stream<Item = Result<Bytes>> + Unpin + Send,
    {
        paths::check_path(&header.path)?;
        let expected_sha256 = header
            .expected_sha256
            .as_deref()
            .map(|h| {
                if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(h.to_ascii_lowercase())
                } else {
                    Err(
                        Error::invalid("expected_sha256 is not 64 hexadecimal characters")
                            .with_field("field", "expected_sha256"),
                    )
                }
            })
            .transpose()?;
        if let Some(size) = header.expected_size
            && size > self.max_size
        {
            return Err(self.too_large());
        }
        let location = object_path(&header.path);
        let existing = self.head(&location).await?;
        if header.fail_if_exists && existing.is_some() {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("a blob exists at {}", header.path),
            )
            .with_field("path", &header.path)
            .with_field("reason", "blob_exists"));
        }

        let upload = self
            .objects
            .put_multipart(&location)
            .await
            .map_err(storage)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let received: Result<String> = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                if chunk.len() > MAX_CHUNK {
                    return Err(Error::invalid("an upload chunk is larger than 2 MiB")
                        .with_field("field", "chunk"));
                }
                size += chunk.len() as u64;
                if size > self.max_size {
                    return Err(self.too_large());
                }
                if let Some(expected) = header.expected_size
                    && size > expected
                {
                    return Err(size_mismatch(expected, size));
                }
                hasher.update(&chunk);
                writer
                    .wait_for_capacity(PART_CONCURRENCY)
                    .await
                    .map_err(storage)?;
                writer.put(chunk);
            }
            if let Some(expected) = header.expected_size
                && size != expected
            {
                return Err(size_mismatch(expected, size));
            }
            let sha256 = hex::encode(hasher.finalize());
            if let Some(expected) = expected_sha256
                && expected != sha256
            {
                return Err(Error::new(
                    ErrorCode::HashMismatch,
                    "the uploaded bytes do not have the expected sha256; nothing was stored",
                )
                .with_field("expected_sha256", expected)
                .with_field("actual_sha256", sha256)
                .with_field("reason", "blob_hash_mismatch"));
            }
            Ok(sha256)
        }
        .await;
        let sha256 = match received {
            Ok(sha256) => sha256,
            Err(err) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(path = %header.path, error = %abort, "aborting an upload failed");
                }
                return Err(err);
            }
        };
        let put = writer.finish().await.map_err(storage)?;
        let e_tag = match put.e_tag {
            Some(tag) => tag,
            None => self
                .head(&location)
                .await?
                .and_then(|m| m.e_tag)
                .unwrap_or_default(),
        };
        let content_type = if header.content_type.is_empty() {
            paths::guess_content_type(&header.path).to_owned()
        } else {
            header.content_type
        };
        let record = BlobRecord {
            path: header.path.clone(),
            size,
            sha256,
            content_type,
            e_tag,
            created: now(),
        };
        self.records.put_blob(&record).await?;
        tracing::info!(path = %record.path, size, "blob stored");
        Ok(Uploaded {
            info: self.info_of(record),
            replaced: existing.is_some(),
        })
    }

    /// The metadata of the blob at `path`.
    pub(crate) async fn stat(&self, path: &str) -> Result<BlobInfo> {
        paths::check_path(path)?;
        let meta = self
            .head(&object_path(path))
            .await?
            .ok_or_else(|| blob_not_found(path))?;
        let record = self.records.get_blobs(&[path.to_owned()]).await?.pop();
        Ok(self.info(path, &meta, record))
    }

    /// Streams the blob at `path` from `offset` for at most `length` bytes.
    pub(crate) async fn download(
        &self,
        path: &str,
        offset: Option<u64>,
        length: Option<u64>,
        chunk_size: u32,
    ) -> Result<Download> {
        paths::check_path(path)?;
        let chunk = match chunk_size as usize {
            0 => DEFAULT_CHUNK,
            n => n.clamp(MIN_CHUNK, MAX_CHUNK),
        };
        let location = object_path(path);
        // A blob replaced between the stat and the read fails the read's
        // precondition; start over on the new version.
        for _ in 0..3 {
            let meta = self
                .head(&location)
                .await?
                .ok_or_else(|| blob_not_found(path))?;
            let start = offset.unwrap_or(0);
            if start > meta.size {
                return Err(Error::invalid(format!(
                    "offset {start} is beyond the end of the blob ({} bytes)",
                    meta.size
                ))
                .with_field("field", "offset")
                .with_field("reason", "invalid_range"));
            }
            let end = length.map_or(meta.size, |len| meta.size.min(start.saturating_add(len)));
            let record = self.records.get_blobs(&[path.to_owned()]).await?.pop();
            let info = self.info(path, &meta, record);
            if start == end {
                return Ok(Download {
                    info,
                    len: 0,
                    chunks: futures::stream::empty().boxed(),
                });
            }
            let options = GetOptions {
                range: Some((start..end).into()),
                if_match: meta.e_tag.clone(),
                ..GetOptions::default()
            };
            let result = match self.objects.get_opts(&location, options).await {
                Ok(result) => result,
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::NotModified { .. }) => continue,
                Err(object_store::Error::NotFound { .. }) => return Err(blob_not_found(path)),
                Err(err) => return Err(storage(err)),
            };
            let chunks = match result.payload {
                GetResultPayload::File(file, _) => file_chunks(file, start, end, chunk),
                GetResultPayload::Stream(stream) => rechunk(stream, start, chunk),
            };
            return Ok(Download {
                info,
                len: end - start,
                chunks,
            });
        }
        Err(Error::new(
            ErrorCode::Unavailable,
            "the blob kept changing during the download; retry",
        ))
    }

    /// One page of the blobs (and, when `delimited`, the common prefixes)
    /// under `prefix`, in byte order of their paths.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        delimited: bool,
        page: &PageRequest,
    ) -> Result<(Vec<BlobInfo>, Vec<String>, Page<()>)> {
        if !prefix.is_empty() {
            paths::check_prefix(prefix)?;
        }
        // Object stores list whole directories; list the directory holding
        // the prefix and keep what starts with it.
        let dir = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let base = (!dir.is_empty()).then(|| object_path(dir));
        let mut entries: Vec<(String, Option<ObjectMeta>)> = Vec::new();
        if delimited {
            let listing = self
                .objects
                .list_with_delimiter(base.as_ref())
                .await
                .map_err(storage)?;
            for p in listing.common_prefixes {
                if let Some(path) = decode_object_path(&p) {
                    let path = format!("{path}/");
                    if path.starts_with(prefix) {
                        entries.push((path, None));
                    }
                }
            }
            for meta in listing.objects {
                if let Some(path) = decode_object_path(&meta.location)
                    && path.starts_with(prefix)
                {
                    entries.push((path, Some(meta)));
                }
            }
        } else {
            let mut stream = self.objects.list(base.as_ref());
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(storage)?;
                if let Some(path) = decode_object_path(&meta.location)
                    && path.starts_with(prefix)
                {
                    entries.push((path, Some(meta)));
                }
            }
        }
        let request = format!("blobs|{prefix}|{delimited}");
        let page = paging::paginate(
            entries,
            |(path, _)| vec![SortValue::Text(path.clone())],
            &[false],
            &request,
            page,
        )?;
        let blob_paths: Vec<String> = page
            .items
            .iter()
            .filter(|(_, meta)| meta.is_some())
            .map(|(path, _)| path.clone())
            .collect();
        let mut records: HashMap<String, BlobRecord> = self
            .records
            .get_blobs(&blob_paths)
            .await?
            .into_iter()
            .map(|r| (r.path.clone(), r))
            .collect();
        let mut blobs = Vec::new();
        let mut prefixes = Vec::new();
        for (path, meta) in page.items {
            match meta {
                Some(meta) => {
                    let record = records.remove(&path);
                    blobs.push(self.info(&path, &meta, record));
                }
                None => prefixes.push(path),
            }
        }
        Ok((
            blobs,
            prefixes,
            Page {
                items: Vec::new(),
                next_page_token: page.next_page_token,
                total_size: page.total_size,
            },
        ))
    }

    /// Deletes blobs by path, by URI and under prefixes; no reference check.
    pub(crate) async fn delete(
        &self,
        paths_in: &[String],
        uris: &[String],
        prefixes: &[String],
    ) -> Result<DeletedBlobs> {
        for (field, len, max) in [
            ("paths", paths_in.len(), 1000),
            ("uris", uris.len(), 1000),
            ("prefixes", prefixes.len(), 100),
        ] {
            if len > max {
                return Err(Error::new(
                    ErrorCode::TooLarge,
                    format!("{field} has more than {max} items"),
                )
                .with_field("field", field)
                .with_field("reason", "batch_too_large"));
            }
        }
        for path in paths_in {
            paths::check_path(path)?;
        }
        for prefix in prefixes {
            paths::check_prefix(prefix)?;
            if !prefix.ends_with('/') {
                return Err(Error::new(
                    ErrorCode::InvalidPath,
                    format!("invalid blob prefix {prefix:?}: a delete prefix must end with '/'"),
                )
                .with_field("path", prefix));
            }
        }
        let mut out = DeletedBlobs::default();
        let mut targets: BTreeSet<String> = paths_in.iter().cloned().collect();
        for uri in uris {
            match self.base.locate(uri) {
                Location::Stored(path) => {
                    targets.insert(path);
                }
                _ => out.external_uris.push(uri.clone()),
            }
        }
        for path in targets {
            match self.delete_one(&path).await {
                BlobCleanup::Deleted => out.deleted.push(path),
                BlobCleanup::NotFound => out.not_found.push(path),
                _ => out
                    .failures
                    .push((path, "the storage backend failed".to_owned())),
            }
        }
        for prefix in prefixes {
            let dir = object_path(prefix.trim_end_matches('/'));
            let mut listing = self.objects.list(Some(&dir));
            let mut found = Vec::new();
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(storage)?;
                if let Some(path) = decode_object_path(&meta.location) {
                    found.push(path);
                }
            }
            for path in found {
                match self.delete_one(&path).await {
                    BlobCleanup::Deleted => out.deleted_under_prefixes += 1,
                    BlobCleanup::NotFound => {}
                    _ => out
                        .failures
                        .push((path, "the storage backend failed".to_owned())),
                }
            }
        }
        Ok(out)
    }

    /// Deletes the blob at `path` unless an artifact or model refers to it.
    pub(crate) async fn delete_unreferenced(&self, path: &str) -> BlobCleanup {
        match self.records.count_references(path).await {
            Ok(0) => self.delete_one(path).await,
            Ok(_) => BlobCleanup::KeptReferenced,
            Err(err) => {
                tracing::warn!(path, error = %err, "cannot check blob references");
                BlobCleanup::Failed
            }
        }
    }

    /// Deletes one blob and its record; never raises.
    async fn delete_one(&self, path: &str) -> BlobCleanup {
        let location = object_path(path);
        let outcome = match self.head(&location).await {
            Ok(None) => BlobCleanup::NotFound,
            Ok(Some(_)) => match self.objects.delete(&location).await {
                Ok(()) => BlobCleanup::Deleted,
                Err(object_store::Error::NotFound { .. }) => BlobCleanup::NotFound,
                Err(err) => {
                    tracing::warn!(path, error = %err, "deleting a blob failed");
                    BlobCleanup::Failed
                }
            },
            Err(err) => {
                tracing::warn!(path, error = %err, "deleting a blob failed");
                BlobCleanup::Failed
            }
        };
        if outcome != BlobCleanup::Failed
            && let Err(err) = self.records.delete_blobs(&[path.to_owned()]).await
        {
            tracing::warn!(path, error = %err, "forgetting a blob record failed");
        }
        if outcome == BlobCleanup::Deleted {
            tracing::info!(path, "blob deleted");
        }
        outcome
    }

    async fn head(&self, location: &ObjectPath) -> Result<Option<ObjectMeta>> {
        match self.objects.head(location).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(storage(err)),
        }
    }

    fn info(&self, path: &str, meta: &ObjectMeta, record: Option<BlobRecord>) -> BlobInfo {
        match record {
            Some(r) if meta.e_tag.as_deref() == Some(r.e_tag.as_str()) && r.size == meta.size => {
                self.info_of(r)
            }
            _ => BlobInfo {
                path: path.to_owned(),
                uri: self.base.uri(path),
                size: meta.size,
                sha256: String::new(),
                content_type: paths::guess_content_type(path).to_owned(),
                created: meta.last_modified,
            },
        }
    }

    fn info_of(&self, r: BlobRecord) -> BlobInfo {
        BlobInfo {
            uri: self.base.uri(&r.path),
            path: r.path,
            size: r.size,
            sha256: r.sha256,
            content_type: r.content_type,
            created: r.created,
        }
    }

    fn too_large(&self) -> Error {
        Error::new(
            ErrorCode::TooLarge,
            format!("the blob is larger than {} bytes", self.max_size),
        )
        .with_field("reason", "blob_too_large")
    }
}

/// The object key of a valid blob path.
fn object_path(path: &str) -> ObjectPath {
    ObjectPath::from_iter(
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(PathPart::from),
    )
}

/// The blob path of an object key; `None` for keys that no blob path maps
/// to (written by something else).
fn decode_object_path(location: &ObjectPath) -> Option<String> {
    let segments: Option<Vec<String>> = location
        .parts()
        .map(|part| paths::percent_decode(part.as_ref()))
        .collect();
    let path = segments?.join("/");
    paths::check_path(&path).ok().map(|()| path)
}

fn storage(err: object_store::Error) -> Error {
    Error::unavailable("blob storage", err).with_field("reason", "storage_unavailable")
}

fn blob_not_found(path: &str) -> Error {
    Error::new(ErrorCode::BlobNotFound, format!("no blob at {path}")).with_field("path", path)
}

fn size_mismatch(expected: u64, actual: u64) -> Error {
    Error::new(
        ErrorCode::HashMismatch,
        format!(
            "the upload has {actual} bytes or more, not the expected {expected}; nothing was stored"
        ),
    )
    .with_field("expected_size", expected.to_string())
    .with_field("reason", "blob_size_mismatch")
}

/// Reads `[start, end)` of a local file in `chunk`-sized reads.
fn file_chunks(
    file: std::fs::File,
    start: u64,
    end: u64,
    chunk: usize,
) -> BoxStream<'static, Result<(u64, Bytes)>> {
    let state = (None::<tokio::fs::File>, Some(file), start);
    futures::stream::try_unfold(state, move |(mut open, std_file, offset)| async move {
        if offset >= end {
            return Ok(None);
        }
        let mut file = match open.take() {
            Some(file) => file,
            None => {
                let mut file = tokio::fs::File::from_std(std_file.expect("opened once"));
                file.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(|e| Error::unavailable("blob storage", e))?;
                file
            }
        };
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(chunk);
        let mut buf = BytesMut::with_capacity(want);
        while buf.len() < want {
            let n = (&mut file)
                .take((want - buf.len()) as u64)
                .read_buf(&mut buf)
                .await
                .map_err(|e| Error::unavailable("blob storage", e))?;
            if n == 0 {
                return Err(Error::unavailable(
                    "blob storage",
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ));
            }
        }
        let next = offset + buf.len() as u64;
        Ok(Some(((offset, buf.freeze()), (Some(file), None, next))))
    })
    .boxed()
}

/// Regroups a byte stream into `chunk`-sized pieces with their offsets.
fn rechunk(
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    start: u64,
    chunk: usize,
) -> BoxStream<'static, Result<(u64, Bytes)>> {
    let state = (stream, BytesMut::new(), start, false);
    futures::stream::try_unfold(
        state,
        move |(mut stream, mut buf, offset, mut done)| async move {
            while !done && buf.len() < chunk {
                match stream.next().await {
                    Some(bytes) => buf.extend_from_slice(&bytes.map_err(storage)?),
                    None => done = true,
                }
            }
            if buf.is_empty() {
                return Ok(None);
            }
            let data = buf.split_to(buf.len().min(chunk)).freeze();
            let next = offset + data.len() as u64;
            Ok(Some(((offset, data), (stream, buf, next, done))))
        },
    )
    .boxed()
}
