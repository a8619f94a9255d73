//! One suite against every backend: a local directory, and a real
//! S3-compatible server on loopback at WEIR_TEST_S3_ENDPOINT (scripts/test.sh
//! starts one). Without that variable the S3 half is skipped loudly, unless
//! WEIR_REQUIRE_S3=1, when it fails.

use std::sync::Mutex;

use bytes::Bytes;
use futures::StreamExt;
use weir_artifacts::{ArtifactError, ArtifactStore};
use weir_core::{ArtifactKind, Digest};

static ENV_LOCK: Mutex<()> = Mutex::new(());

fn local() -> (ArtifactStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (
        ArtifactStore::open(dir.path().to_str().unwrap()).unwrap(),
        dir,
    )
}

fn s3() -> Option<ArtifactStore> {
    let Ok(endpoint) = std::env::var("WEIR_TEST_S3_ENDPOINT") else {
        if std::env::var("WEIR_REQUIRE_S3").as_deref() == Ok("1") {
            panic!("WEIR_REQUIRE_S3=1 but WEIR_TEST_S3_ENDPOINT is not set");
        }
        eprintln!(
            "WEIR_TEST_S3_ENDPOINT is not set: skipping the S3 backend (scripts/test.sh sets it)"
        );
        return None;
    };
    let bucket = std::env::var("WEIR_TEST_S3_BUCKET").unwrap_or_else(|_| "weir-test".into());
    let _guard = ENV_LOCK.lock().unwrap();
    std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
    std::env::set_var(
        "AWS_ACCESS_KEY_ID",
        std::env::var("AWS_ACCESS_KEY_ID").unwrap_or("weir".into()),
    );
    std::env::set_var(
        "AWS_SECRET_ACCESS_KEY",
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or("weir-secret".into()),
    );
    Some(ArtifactStore::open(&format!("s3://{bucket}/test-{}", weir_core::new_id())).unwrap())
}

async fn round_trips_and_dedups(store: &ArtifactStore) {
    let a = store
        .put_bytes(Bytes::from_static(b"hello weir"))
        .await
        .unwrap();
    assert_eq!(a.digest, Digest::of_bytes(b"hello weir"));
    assert_eq!(a.kind, ArtifactKind::File);
    let again = store
        .put_bytes(Bytes::from_static(b"hello weir"))
        .await
        .unwrap();
    assert_eq!(a, again);
    assert_eq!(&store.get(&a.digest).await.unwrap()[..], b"hello weir");
    assert_eq!(store.list().await.unwrap(), vec![a.digest]);
}

async fn directories_round_trip(store: &ArtifactStore) {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("sub")).unwrap();
    std::fs::write(src.path().join("a.txt"), "A").unwrap();
    std::fs::write(src.path().join("sub/b.bin"), vec![7u8; 3000]).unwrap();
    let stored = store.put_path(src.path()).await.unwrap();
    assert_eq!((stored.kind, stored.size), (ArtifactKind::Dir, 3001));
    let dest = tempfile::tempdir().unwrap();
    let out = dest.path().join("restored");
    store
        .fetch(&stored.digest, ArtifactKind::Dir, &out)
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"A");
    assert_eq!(
        std::fs::read(out.join("sub/b.bin")).unwrap(),
        vec![7u8; 3000]
    );
}

async fn large_files_use_multipart(store: &ArtifactStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let data: Vec<u8> = (0..(40u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let stored = store.put_file(&path).await.unwrap();
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(store.get(&stored.digest).await.unwrap().len(), data.len());
    // Streamed back in chunks, checked as it goes.
    let mut stream = store.get_stream(&stored.digest).await.unwrap();
    let (mut chunks, mut total) = (0, 0);
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len();
        chunks += 1;
    }
    assert_eq!(total, data.len());
    assert!(chunks > 1, "a 40 MiB blob arrives in more than one chunk");
}

async fn missing_blobs_are_reported(store: &ArtifactStore) {
    let d = Digest::of_bytes(b"never stored");
    assert!(!store.contains(&d).await.unwrap());
    let err = store.get(&d).await.unwrap_err();
    assert!(matches!(err, ArtifactError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("is missing"), "{err}");
}

#[tokio::test]
async fn local_round_trips_and_dedups() {
    round_trips_and_dedups(&local().0).await;
}
#[tokio::test]
async fn local_directories_round_trip() {
    directories_round_trip(&local().0).await;
}
#[tokio::test]
async fn local_large_files_use_multipart() {
    large_files_use_multipart(&local().0).await;
}
#[tokio::test]
async fn local_missing_blobs_are_reported() {
    missing_blobs_are_reported(&local().0).await;
}

#[tokio::test]
async fn s3_round_trips_and_dedups() {
    if let Some(s) = s3() {
        round_trips_and_dedups(&s).await;
    }
}
#[tokio::test]
async fn s3_directories_round_trip() {
    if let Some(s) = s3() {
        directories_round_trip(&s).await;
    }
}
#[tokio::test]
async fn s3_large_files_use_multipart() {
    if let Some(s) = s3() {
        large_files_use_multipart(&s).await;
    }
}
#[tokio::test]
async fn s3_missing_blobs_are_reported() {
    if let Some(s) = s3() {
        missing_blobs_are_reported(&s).await;
    }
}

#[tokio::test]
async fn corrupt_blobs_are_detected_on_read() {
    let (store, dir) = local();
    let stored = store
        .put_bytes(Bytes::from_static(b"precious"))
        .await
        .unwrap();
    let hex = stored.digest.hex();
    let blob = dir.path().join("blobs").join(&hex[..2]).join(&hex);
    std::fs::write(&blob, b"tampered").unwrap();
    let err = store.get(&stored.digest).await.unwrap_err();
    assert!(matches!(err, ArtifactError::Corrupt { .. }), "{err}");
    // A stream of it ends in the same error after the bytes.
    let items: Vec<_> = store
        .get_stream(&stored.digest)
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        matches!(items.last(), Some(Err(ArtifactError::Corrupt { .. }))),
        "{items:?}"
    );
}

#[test]
fn rejects_unknown_schemes() {
    let err = ArtifactStore::open("ftp://x/y").unwrap_err();
    assert!(
        err.to_string()
            .contains("not a supported artifact location"),
        "{err}"
    );
}
