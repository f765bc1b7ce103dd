//! The ClearML files server over real HTTP on loopback, in front of a real
//! artifacts service (local blobs, SQLite) reached through gRPC.

use std::sync::Arc;

use tasklab_gateway::{TokenValidator, blob_files_router};
use tasklab_proto::artifacts::v1::blobs_service_client::BlobsServiceClient;
use tasklab_server::Server;
use tasklab_testkit::Running;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Setup {
    files: Running,
    _artifacts: Running,
    dir: tempfile::TempDir,
    _db: tasklab_db::testing::TestDb,
}

async fn setup(auth: Option<TokenValidator>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let settings = tasklab_config::Settings {
        data_dir: dir.path().to_owned(),
        ..tasklab_config::Settings::default()
    };
    let db = tasklab_db::testing::TestDb::sqlite();
    let grpc = tasklab_testkit::test_grpc_settings();
    let artifacts = tasklab_testkit::spawn(
        tasklab_artifacts::mount(Server::new(&grpc), &settings, &db.url)
            .await
            .unwrap(),
    )
    .await;
    let client = BlobsServiceClient::new(artifacts.channel().await);
    let files =
        tasklab_testkit::spawn(Server::http_only(&grpc, blob_files_router(client, auth))).await;
    Setup {
        files,
        _artifacts: artifacts,
        dir,
        _db: db,
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one raw HTTP/1.1 request (the target is sent exactly as given,
/// with no client-side normalisation) and reads the reply.
async fn send(
    s: &Setup,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut conn = tokio::net::TcpStream::connect(s.files.addr())
        .await
        .unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: files\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16)
            .unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// A `multipart/form-data` body with one part per `(name, content type,
/// data)`, as the SDK's `MultipartEncoder` builds it.
fn multipart(parts: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "tasklab-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, content_type, data) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(s: &Setup, parts: &[(&str, &str, &[u8])], auth: Option<&str>) -> Reply {
    let (content_type, body) = multipart(parts);
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", content_type.as_str())];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    send(s, "POST", "/", &headers, &body).await
}

fn files_on_disk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_on_disk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[tokio::test]
async fn ping_upload_download_delete() {
    let s = setup(None).await;
    let ping = send(&s, "GET", "/", &[], b"").await;
    assert_eq!((ping.status, ping.body.as_slice()), (200, b"OK".as_slice()));

    let big: Vec<u8> = (0..20 * 1024 * 1024 + 7)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let reply = upload(
        &s,
        &[
            (
                "/proj/exp.t1/artifacts/my art/my art.json",
                "application/json",
                b"{\"a\": 1}",
            ),
            (
                "/proj/exp.t1/models/model.bin",
                "application/octet-stream",
                &big,
            ),
        ],
        None,
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let stored: Vec<String> = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        stored,
        [
            "proj/exp.t1/artifacts/my art/my art.json",
            "proj/exp.t1/models/model.bin"
        ]
    );

    let json = send(
        &s,
        "GET",
        "/proj/exp.t1/artifacts/my%20art/my%20art.json",
        &[],
        b"",
    )
    .await;
    assert_eq!(json.status, 200);
    assert_eq!(json.body, b"{\"a\": 1}");
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(json.header("content-disposition"), None);

    let model = send(
        &s,
        "GET",
        "/proj/exp.t1/models/model.bin?download",
        &[],
        b"",
    )
    .await;
    assert_eq!(model.status, 200);
    assert_eq!(model.body.len(), big.len());
    assert!(model.body == big);
    assert_eq!(
        model.header("content-disposition"),
        Some("attachment; filename=\"model.bin\"")
    );

    let deleted = send(&s, "DELETE", "/proj/exp.t1/models/model.bin", &[], b"").await;
    assert_eq!(deleted.status, 200);
    let gone = send(&s, "GET", "/proj/exp.t1/models/model.bin", &[], b"").await;
    assert_eq!(gone.status, 404);
    let again = send(&s, "DELETE", "/proj/exp.t1/models/model.bin", &[], b"").await;
    assert_eq!(again.status, 404);
    assert_eq!(files_on_disk(&s.dir.path().join("blobs")).len(), 1);
}

#[tokio::test]
async fn paths_cannot_escape_the_storage_root() {
    let s = setup(None).await;
    std::fs::write(s.dir.path().join("secret.txt"), b"secret").unwrap();
    std::fs::write(s.dir.path().join("artifacts.db"), b"not really").ok();
    for target in [
        "/../secret.txt",
        "/blobs/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2E%2E/etc/passwd",
        "/a/%2e%2e/%2e%2e/secret.txt",
        "/%2Fetc/passwd",
        "//etc/passwd",
        "/a%5c..%5c..%5csecret.txt",
        "/..%5csecret.txt",
        "/a%00b",
        "/%zz",
        "/a/./b",
    ] {
        for method in ["GET", "DELETE"] {
            let reply = send(&s, method, target, &[], b"").await;
            assert_eq!(reply.status, 400, "{method} {target}");
            assert!(!reply.body.windows(6).any(|w| w == b"secret"));
        }
    }
    for name in [
        "../secret.txt",
        "/../../secret.txt",
        "a/../../secret.txt",
        "a\\..\\..\\secret.txt",
        "a//b",
    ] {
        let reply = upload(&s, &[(name, "text/plain", b"overwritten")], None).await;
        assert_eq!(reply.status, 400, "upload {name}");
    }
    assert_eq!(
        std::fs::read(s.dir.path().join("secret.txt")).unwrap(),
        b"secret"
    );
    assert!(files_on_disk(&s.dir.path().join("blobs")).is_empty());
}

#[tokio::test]
async fn bearer_token_is_required_when_auth_is_on() {
    let validator: TokenValidator =
        Arc::new(|token: String| Box::pin(async move { token == "good-token" }));
    let s = setup(Some(validator)).await;
    assert_eq!(
        send(&s, "GET", "/", &[], b"").await.status,
        200,
        "ping is open"
    );
    let no_token = upload(&s, &[("a/x.txt", "text/plain", b"x")], None).await;
    assert_eq!(no_token.status, 401);
    let bad = upload(&s, &[("a/x.txt", "text/plain", b"x")], Some("bad")).await;
    assert_eq!(bad.status, 401);
    assert!(files_on_disk(&s.dir.path().join("blobs")).is_empty());
    let good = upload(&s, &[("a/x.txt", "text/plain", b"x")], Some("good-token")).await;
    assert_eq!(good.status, 200);
    assert_eq!(send(&s, "GET", "/a/x.txt", &[], b"").await.status, 401);
    let read = send(
        &s,
        "GET",
        "/a/x.txt",
        &[("Authorization", "Bearer good-token")],
        b"",
    )
    .await;
    assert_eq!((read.status, read.body.as_slice()), (200, b"x".as_slice()));
    let delete = send(
        &s,
        "DELETE",
        "/a/x.txt",
        &[("Authorization", "Bearer bad")],
        b"",
    )
    .await;
    assert_eq!(delete.status, 401);
    assert_eq!(files_on_disk(&s.dir.path().join("blobs")).len(), 1);
}

#[tokio::test]
async fn truncated_upload_stores_nothing() {
    let s = setup(None).await;
    let (content_type, body) =
        multipart(&[("a/partial.bin", "application/octet-stream", &[7; 300_000])]);
    // Announce the whole body but close the connection half way.
    let mut conn = tokio::net::TcpStream::connect(s.files.addr())
        .await
        .unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: files\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..body.len() / 2]).await.unwrap();
    drop(conn);
    let mut left = usize::MAX;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = files_on_disk(&s.dir.path().join("blobs")).len();
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0);
    assert_eq!(
        send(&s, "GET", "/a/partial.bin", &[], b"").await.status,
        404
    );
}
