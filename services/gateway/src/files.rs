//! The ClearML-compatible files server (served on the files port): a thin
//! HTTP layer over the artifacts service's `BlobsService`, reached through a
//! gRPC channel in embedded and distributed mode alike.
//!
//! * `GET /` answers the SDK's ping with `OK`.
//! * `POST /` takes `multipart/form-data`; each part is stored at the path
//!   its field name gives (a leading `/` is dropped), and the answer is the
//!   JSON list of stored paths, as ClearML's files server does.
//! * `GET /<path>` streams the blob back (`?download` adds
//!   `Content-Disposition: attachment`); `DELETE /<path>` removes it.
//!
//! Bytes stream in both directions: a part is forwarded to `UploadBlob` as
//! it arrives (no body limit, no buffering of whole files), and a download
//! is forwarded chunk by chunk. A part's upload stream ends with the
//! explicit commit message only after the part's last byte; a part whose
//! request breaks off never sends it, so the blob service stores nothing.
//!
//! Paths are percent-decoded once (URL paths only; multipart field names are
//! taken as sent, as ClearML does) and must then satisfy the blob path
//! rules: `..`, `.`, absolute paths, empty segments, backslashes and control
//! characters are refused with `400`, before and again inside the blob
//! service.
//!
//! Authentication: when a [`TokenValidator`] is given, every request but
//! the ping needs `Authorization: Bearer <token>` that it accepts (the SDK
//! sends its API token); without one the server is open, ClearML's default.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::artifacts::v1::blobs_service_client::BlobsServiceClient;
use tasklab_proto::artifacts::v1::upload_blob_request::Part;
use tasklab_proto::artifacts::v1::{
    DeleteBlobsRequest, DownloadBlobRequest, UploadBlobCommit, UploadBlobHeader, UploadBlobRequest,
};
use tonic::transport::Channel;

/// Decides whether a bearer token may use the files server.
pub type TokenValidator =
    Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

/// Size of the pieces an upload is forwarded in (the blob service accepts
/// up to 2 MiB per message).
const UPLOAD_PIECE: usize = 1024 * 1024;
/// Size of the chunks a download is asked for.
const DOWNLOAD_CHUNK: u32 = 1024 * 1024;
/// Largest gRPC message exchanged with the blob service.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// The files server router before it is given a blob service: the ping
/// only; everything else answers `501`, never a fake success. Replaced by
/// [`blob_files_router`] once the process wires the blob client.
pub fn files_router() -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { "OK" }))
        .fallback(|| async {
            (
                StatusCode::NOT_IMPLEMENTED,
                "file storage is not wired to this server",
            )
        })
}

#[derive(Clone)]
struct Files {
    blobs: BlobsServiceClient<Channel>,
    auth: Option<TokenValidator>,
}

/// The files server over `blobs`; with `auth`, requests other than the
/// ping need a bearer token it accepts.
pub fn blob_files_router(
    blobs: BlobsServiceClient<Channel>,
    auth: Option<TokenValidator>,
) -> axum::Router {
    let blobs = blobs
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let state = Files { blobs, auth };
    axum::Router::new()
        .route("/", get(|| async { "OK" }).post(upload))
        .fallback(by_path)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// `GET` and `DELETE` of `/<path>`.
async fn by_path(State(files): State<Files>, request: Request) -> Response {
    if let Some(response) = authorize(&files, request.headers()).await {
        return response;
    }
    let path = match blob_path(request.uri().path()) {
        Ok(path) => path,
        Err(err) => return error(&err),
    };
    let attachment = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "download" || p.starts_with("download="))
    });
    match *request.method() {
        http::Method::GET | http::Method::HEAD => {
            let head = request.method() == http::Method::HEAD;
            download(files, path, attachment, head).await
        }
        http::Method::DELETE => delete(files, path).await,
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

async fn upload(
    State(files): State<Files>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    if let Some(response) = authorize(&files, &headers).await {
        return response;
    }
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(rejection) => return (StatusCode::BAD_REQUEST, rejection.body_text()).into_response(),
    };
    let mut stored = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(err) => return (StatusCode::BAD_REQUEST, err.body_text()).into_response(),
        };
        let Some(name) = field.name().map(str::to_owned).filter(|n| !n.is_empty()) else {
            continue;
        };
        let path = name.trim_start_matches('/').to_owned();
        let content_type = field.content_type().unwrap_or_default().to_owned();
        if let Some(response) = upload_part(&files, &path, content_type, field).await {
            return response;
        }
        stored.push(path);
    }
    tracing::debug!(count = stored.len(), "files uploaded");
    axum::Json(stored).into_response()
}

/// Streams one multipart part to `UploadBlob`, answering the rejection
/// when it fails. The blob service commits the blob only on the explicit
/// commit message, which is sent after the part's last byte and nowhere
/// else. If the part breaks off or the handler is dropped (the client went
/// away), the sender is dropped without it: the request stream ends (or is
/// cancelled) uncommitted, and the blob service aborts the upload.
async fn upload_part(
    files: &Files,
    path: &str,
    content_type: String,
    mut field: axum::extract::multipart::Field<'_>,
) -> Option<Response> {
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadBlobRequest>(4);
    let body = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut client = files.blobs.clone();
    let call = tokio::spawn(async move { client.upload_blob(body).await });
    let header = UploadBlobRequest {
        part: Some(Part::Header(UploadBlobHeader {
            path: path.to_owned(),
            content_type: if content_type == "application/octet-stream" {
                String::new()
            } else {
                content_type
            },
            ..UploadBlobHeader::default()
        })),
    };
    let chunk = |data: Bytes| UploadBlobRequest {
        part: Some(Part::Chunk(data.to_vec())),
    };
    let mut pending = BytesMut::new();
    // A closed channel means the call already failed; its error is read
    // below.
    let mut open = tx.send(header).await.is_ok();
    while open {
        match field.chunk().await {
            Ok(Some(bytes)) => {
                pending.extend_from_slice(&bytes);
                while open && pending.len() >= UPLOAD_PIECE {
                    let piece = pending.split_to(UPLOAD_PIECE).freeze();
                    open = tx.send(chunk(piece)).await.is_ok();
                }
            }
            Ok(None) => break,
            Err(err) => {
                // Dropping `tx` ends the stream without the commit, so the
                // upload is aborted; the call ends by itself.
                return Some((StatusCode::BAD_REQUEST, err.body_text()).into_response());
            }
        }
    }
    if open && !pending.is_empty() {
        open = tx.send(chunk(pending.freeze())).await.is_ok();
    }
    if open {
        // The only place the commit is sent: every byte of the part is out.
        let _ = tx
            .send(UploadBlobRequest {
                part: Some(Part::Commit(UploadBlobCommit {})),
            })
            .await;
    }
    drop(tx);
    match call.await {
        Ok(Ok(_)) => None,
        Ok(Err(status)) => Some(error(&Error::from_status(&status))),
        Err(join) => Some(error(&Error::internal(join))),
    }
}

async fn download(files: Files, path: String, attachment: bool, head: bool) -> Response {
    let mut client = files.blobs;
    let stream = client
        .download_blob(DownloadBlobRequest {
            path: path.clone(),
            chunk_size: DOWNLOAD_CHUNK,
            ..DownloadBlobRequest::default()
        })
        .await;
    let mut stream = match stream {
        Ok(response) => response.into_inner(),
        Err(status) => return error(&Error::from_status(&status)),
    };
    let first = match stream.next().await {
        Some(Ok(first)) => first,
        Some(Err(status)) => return error(&Error::from_status(&status)),
        None => {
            return error(&Error::internal(
                "a download stream ended before its metadata",
            ));
        }
    };
    let info = first.info.unwrap_or_default();
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, info.size);
    if let Ok(value) = HeaderValue::from_str(&info.content_type) {
        response = response.header(header::CONTENT_TYPE, value);
    }
    if attachment {
        let name = path.rsplit('/').next().unwrap_or_default();
        let ascii: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '"' && c != '\\' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let value = format!("attachment; filename=\"{ascii}\"");
        if let Ok(value) = HeaderValue::from_str(&value) {
            response = response.header(header::CONTENT_DISPOSITION, value);
        }
    }
    if head {
        return response
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let body = futures::stream::once(async move { Ok(Bytes::from(first.data)) }).chain(stream.map(
        |chunk| {
            chunk
                .map(|c| Bytes::from(c.data))
                .map_err(|status| std::io::Error::other(status.message().to_owned()))
        },
    ));
    response
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn delete(files: Files, path: String) -> Response {
    let mut client = files.blobs;
    let result = client
        .delete_blobs(DeleteBlobsRequest {
            paths: vec![path.clone()],
            ..DeleteBlobsRequest::default()
        })
        .await;
    match result {
        Ok(response) => {
            let done = response.into_inner();
            if done.deleted.contains(&path) {
                axum::Json(serde_json::json!({ "deleted": path })).into_response()
            } else if done.not_found.contains(&path) {
                error(&Error::new(
                    ErrorCode::BlobNotFound,
                    format!("no blob at {path}"),
                ))
            } else {
                error(&Error::new(
                    ErrorCode::Unavailable,
                    "blob storage is unavailable; retry",
                ))
            }
        }
        Err(status) => error(&Error::from_status(&status)),
    }
}

/// The rejection of a request without a valid bearer token, if auth is on.
async fn authorize(files: &Files, headers: &HeaderMap) -> Option<Response> {
    let validate = files.auth.as_ref()?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match token {
        Some(token) if !token.is_empty() && validate(token.to_owned()).await => None,
        Some(_) => Some(error(&Error::new(
            ErrorCode::InvalidToken,
            "the bearer token is not valid",
        ))),
        None => Some(error(&Error::new(
            ErrorCode::MissingCredentials,
            "a bearer token is required",
        ))),
    }
}

/// The blob path of a request path: the leading `/` dropped, then
/// percent-decoded once. The blob path rules themselves are enforced by
/// the blob service; this refuses what cannot even be decoded, and the
/// obvious escapes early.
fn blob_path(raw: &str) -> Result<String, Error> {
    let invalid =
        |why: &str| Error::new(ErrorCode::InvalidPath, format!("invalid blob path: {why}"));
    let encoded = raw.strip_prefix('/').unwrap_or(raw);
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid("a malformed percent escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let path = String::from_utf8(out).map_err(|_| invalid("the path is not UTF-8"))?;
    let escapes = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.chars().any(char::is_control)
        || path
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..");
    if escapes {
        return Err(invalid(
            "absolute paths, empty, '.' and '..' segments, backslashes and control \
             characters are not allowed",
        ));
    }
    Ok(path)
}

fn error(err: &Error) -> Response {
    let status =
        StatusCode::from_u16(err.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::warn!(code = %err.code(), error = %err, "files request failed");
    }
    (status, err.message().to_owned()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_decode_once_and_refuse_escapes() {
        assert_eq!(blob_path("/a/b%20c.json").unwrap(), "a/b c.json");
        assert_eq!(blob_path("/a/%2525").unwrap(), "a/%25");
        for bad in [
            "/",
            "//etc/passwd",
            "/%2Fetc/passwd",
            "/../x",
            "/a/%2e%2e/b",
            "/a/%2E%2E",
            "/a/./b",
            "/a//b",
            "/a%5c..%5cb",
            "/a%00b",
            "/a%0ab",
            "/a%zz",
            "/a%e9",
        ] {
            assert_eq!(
                blob_path(bad).unwrap_err().code(),
                ErrorCode::InvalidPath,
                "{bad}"
            );
        }
    }
}
