//! Unit tests of the provider over an in-memory store: locations, reads across chunks,
//! refused manifests.

use std::sync::Arc;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::{S3Config, S3Error, S3Location, S3Provider};

#[test]
fn locations_parse_and_refuse_what_is_not_a_bucket_and_prefix() {
    let at = S3Location::parse("s3://meetings").expect("bucket");
    assert_eq!((at.bucket.as_str(), at.prefix.as_str()), ("meetings", ""));
    let at = S3Location::parse("s3://meetings/2026/q4/").expect("prefix");
    assert_eq!((at.bucket.as_str(), at.prefix.as_str()), ("meetings", "2026/q4"));
    assert_eq!(at.to_string(), "s3://meetings/2026/q4");
    for bad in ["meetings", "s3://", "s3:///x", "s3://b/../x", "s3://b/a//c", "http://b"] {
        assert!(S3Location::parse(bad).is_err(), "{bad} was taken");
    }
}

fn manifest(file: &str) -> String {
    serde_json::json!({
        "name": "m", "duration_ms": 1000,
        "tracks": [{"name": "t", "kind": "video", "role": "camera", "segments": [{"file": file, "start_ms": 0}]}],
    })
    .to_string()
}

async fn put(store: &InMemory, key: &str, data: impl Into<Bytes>) {
    store.put(&Path::from(key), PutPayload::from_bytes(data.into())).await.expect("put");
}

/// Reads across chunk boundaries, against the bytes put (the in-memory store: the
/// provider's own arithmetic; the S3 wire is tested in `tests/tests/s3.rs`).
#[tokio::test]
async fn reads_of_any_alignment_equal_the_object_and_refuse_past_its_end() {
    let store = Arc::new(InMemory::new());
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    put(&store, "p/m/meeting.json", manifest("v.bin")).await;
    put(&store, "p/m/v.bin", data.clone()).await;
    let config = S3Config::new(S3Location::parse("s3://b/p").expect("location")).chunk_size(4096);
    let provider = S3Provider::with_store(store, &config);
    let info = provider.stream_info("m").await.expect("info").expect("meeting");
    assert_eq!(info.tracks[0].sizes, vec![50_000]);
    for (start, len) in [(0, 1), (0, 4096), (4095, 2), (1000, 20_000), (45_000, 5_000), (0, 50_000)] {
        let got = provider.read("m", "t", 0, start, len).await.expect("read");
        assert_eq!(&got[..], &data[start as usize..(start + len) as usize], "{start}+{len}");
    }
    let err = provider.read("m", "t", 0, 49_999, 2).await.expect_err("past the end");
    assert!(err.to_string().contains("s3://b/p/m/v.bin: bytes 49999-50000"), "{err}");
    assert!(matches!(provider.read("m", "x", 0, 0, 1).await, Err(S3Error::UnknownTrack { .. })));
    let err = provider.read("nope", "t", 0, 0, 1).await.expect_err("no meeting");
    assert_eq!(err.to_string(), "s3://b/p: no meeting \"nope\"");
    assert_eq!(provider.stream_info("nope").await.expect("absent"), None);
    assert!(matches!(provider.stream_info("..").await, Err(S3Error::BadName { .. })));
    // `m` once for all its reads; `nope` twice (an absent meeting is not remembered).
    assert_eq!(provider.stats().manifest_gets, 3, "the meeting was resolved more than once");
}

#[tokio::test]
async fn a_manifest_naming_a_missing_object_or_a_file_outside_the_meeting_is_refused_by_name() {
    let store = Arc::new(InMemory::new());
    put(&store, "m/meeting.json", manifest("gone.webm")).await;
    put(&store, "n/meeting.json", manifest("../m/meeting.json")).await;
    let provider = S3Provider::with_store(store, &S3Config::new(S3Location::parse("s3://b").expect("b")));
    let err = provider.stream_info("m").await.expect_err("missing object");
    assert!(err.to_string().starts_with("s3://b/m/gone.webm: no such object"), "{err}");
    let err = provider.stream_info("n").await.expect_err("escape");
    assert!(err.to_string().contains("s3://b/n/meeting.json"), "{err}");
}
