//! The blob store on an S3-compatible server (the test command starts
//! `moto_server` on loopback and sets `TASKLAB_TEST_S3_ENDPOINT`). Each test
//! creates its own bucket.

mod common;

use common::{Service, local_settings, start, suite};
use tasklab_db::testing::{TestDb, require_env};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Creates a bucket with a plain `PUT /<bucket>` (the test server does
/// not check signatures).
async fn create_bucket(endpoint: &str, bucket: &str) {
    let authority = endpoint
        .strip_prefix("http://")
        .expect("TASKLAB_TEST_S3_ENDPOINT is an http:// URL")
        .trim_end_matches('/');
    let mut conn = tokio::net::TcpStream::connect(authority).await.unwrap();
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "create bucket {bucket}: {response}"
    );
}

async fn s3(test: &str) -> Option<(Service, TestDb)> {
    let endpoint = require_env("TASKLAB_TEST_S3_ENDPOINT", "S3", test)?;
    let bucket = format!(
        "tasklab-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    create_bucket(&endpoint, &bucket).await;
    let (mut settings, dir) = local_settings();
    settings.blobs.backend = Some("s3".to_owned());
    settings.blobs.s3_endpoint = Some(endpoint);
    settings.blobs.s3_bucket = Some(bucket);
    settings.blobs.s3_region = Some("us-east-1".to_owned());
    settings.blobs.s3_access_key_id = Some("testing".to_owned());
    settings.blobs.s3_secret_access_key = Some("testing".to_owned());
    let db = TestDb::sqlite();
    let svc = start(settings, dir, &db.url).await;
    Some((svc, db))
}

#[tokio::test]
async fn s3_round_trip() {
    let Some((mut svc, _db)) = s3("s3_round_trip").await else {
        return;
    };
    suite::round_trip(&mut svc).await;
    // Nothing went to the local directory.
    assert!(!svc.data_dir.path().join("blobs").exists());
}

#[tokio::test]
async fn s3_hash_and_size_mismatches_store_nothing() {
    let Some((mut svc, _db)) = s3("s3_hash_and_size_mismatches_store_nothing").await else {
        return;
    };
    suite::mismatches_store_nothing(&mut svc).await;
}

#[tokio::test]
async fn s3_uncommitted_uploads_store_nothing() {
    let Some((mut svc, _db)) = s3("s3_uncommitted_uploads_store_nothing").await else {
        return;
    };
    suite::uncommitted_uploads_store_nothing(&mut svc).await;
}

#[tokio::test]
async fn s3_paths_are_confined() {
    let Some((mut svc, _db)) = s3("s3_paths_are_confined").await else {
        return;
    };
    suite::paths_are_confined(&mut svc).await;
}

#[tokio::test]
async fn s3_list_and_delete() {
    let Some((mut svc, _db)) = s3("s3_list_and_delete").await else {
        return;
    };
    suite::list_and_delete(&mut svc).await;
}

#[tokio::test]
async fn s3_reset_and_delete_clean_up_blobs() {
    let Some((mut svc, _db)) = s3("s3_reset_and_delete_clean_up_blobs").await else {
        return;
    };
    suite::reset_and_delete_clean_up_blobs(&mut svc).await;
}

#[tokio::test]
async fn s3_unreachable_storage_is_unavailable() {
    let Some(_) = require_env(
        "TASKLAB_TEST_S3_ENDPOINT",
        "S3",
        "s3_unreachable_storage_is_unavailable",
    ) else {
        return;
    };
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (mut settings, dir) = local_settings();
    settings.blobs.backend = Some("s3".to_owned());
    settings.blobs.s3_endpoint = Some(format!("http://127.0.0.1:{port}"));
    settings.blobs.s3_bucket = Some("nowhere".to_owned());
    settings.blobs.s3_access_key_id = Some("testing".to_owned());
    settings.blobs.s3_secret_access_key = Some("testing".to_owned());
    let db = TestDb::sqlite();
    let mut svc = start(settings, dir, &db.url).await;
    let err = svc
        .blobs
        .stat_blob(tasklab_proto::artifacts::v1::StatBlobRequest {
            path: "a/b".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(common::code(&err), tasklab_error::ErrorCode::Unavailable);
}
