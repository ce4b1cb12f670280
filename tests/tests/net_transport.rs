//! The peer link on loopback: byte-exact ranges, typed errors for every bad request without
//! disturbing other requests, the allow-list, many clients at once, restarts.

mod net_common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use net_common::*;
use rand::{Rng, SeedableRng};
use tandem::manifest::TrackKind;
use tandem::net::protocol::{encode_frame, ReadWindow, RequestHeader, ResponseHeader};
use tandem::net::{identity, ErrorCode, FolderProvider, NetError, PeerAddr};
use tandem::RangeSource;

fn code<T: std::fmt::Debug>(result: Result<T, NetError>) -> ErrorCode {
    match result {
        Err(NetError::Status { code, .. }) => code,
        other => panic!("expected a status error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_ranges_are_byte_identical() {
    bounded(60, async {
        let root = make_root(1);
        // A small window so large reads through RemoteTrack are split and short ones padded.
        let server = FolderProvider::new(root.root())
            .expect("provider")
            .server_builder()
            .bind(loopback())
            .read_window(ReadWindow { min: 4096, max: 256 * 1024 })
            .spawn()
            .await
            .expect("server");
        let client = client().await;
        let peer = peer_of(&server);

        let info = client.get(&peer, MEETING).await.expect("get");
        assert_eq!(info.name, MEETING);
        assert_eq!(info.read_window, ReadWindow { min: 4096, max: 256 * 1024 });
        assert_eq!(info.duration_ms, Some(60_000));
        for (name, size) in TRACK_SIZES {
            let t = info.track(name).expect("track listed");
            assert_eq!(t.sizes, vec![*size as u64]);
            let kind = if *name == "captions" { TrackKind::Captions } else { TrackKind::Video };
            assert_eq!(t.kind, kind);
            assert_eq!(t.segments.len(), 1);
        }
        let json = serde_json::to_string(&info).expect("json");
        assert!(
            !json.contains(".bin") && !json.contains(&root.root().display().to_string()),
            "paths leak: {json}"
        );

        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Direct requests within the window.
        for _ in 0..100 {
            let (name, size) = TRACK_SIZES[rng.gen_range(0..TRACK_SIZES.len())];
            let size = size as u64;
            let len = rng.gen_range(4096.min(size)..=(256 * 1024).min(size));
            let start = if len < 4096 { size - len } else { rng.gen_range(0..=size - len) };
            let got = client.read_range(&peer, MEETING, name, start, len).await.expect("read_range");
            assert_eq!(&got[..], &root.bytes(name)[start as usize..(start + len) as usize]);
        }
        // Any range through RemoteTrack (blocking, on a blocking thread), including whole files.
        let tracks: Vec<_> = TRACK_SIZES
            .iter()
            .map(|(name, _)| {
                tandem::net::RemoteTrack::new(client.clone(), peer.clone(), &info, name).expect("track")
            })
            .collect();
        let expected = root.tracks.clone();
        tokio::task::spawn_blocking(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(8);
            for track in &tracks {
                let want = &expected[track.track()];
                assert_eq!(&track.read_range(0, track.len()).expect("whole")[..], &want[..]);
                assert!(track.read_range(track.len(), 1).is_err());
                assert!(track.read_range(0, 0).expect("empty").is_empty());
                for _ in 0..40 {
                    let start = rng.gen_range(0..track.len());
                    let len = rng.gen_range(1..=(track.len() - start).min(900_000));
                    let got = track.read_range(start, len).expect("read");
                    assert_eq!(
                        &got[..],
                        &want[start as usize..(start + len) as usize],
                        "{} {start}+{len}",
                        track.track()
                    );
                }
            }
        })
        .await
        .expect("blocking reads");
        client.close().await;
        server.shutdown().await;
    })
    .await;
}

fn raw_frame(json: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(json.len() as u32);
    b.put_slice(json.as_bytes());
    b.freeze()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_typed_errors_and_the_connection_keeps_serving() {
    bounded(60, async {
        let root = make_root(2);
        // A meeting outside the root, reachable through a symlink inside it.
        let outside = make_root(3);
        std::os::unix::fs::symlink(outside.root().join(MEETING), root.root().join("evil")).expect("symlink");
        let server = serve(root.root()).await;
        let client = client().await;
        let peer = peer_of(&server);
        let good = root.bytes("cam_b")[100_000..200_000].to_vec();

        let size = TRACK_SIZES[1].1 as u64;
        let cases: Vec<(&str, ErrorCode, Result<Bytes, NetError>)> = vec![
            (
                "unknown stream",
                ErrorCode::UnknownStream,
                client.read_range(&peer, "nope", "cam_b", 0, 8192).await,
            ),
            (
                "unknown track",
                ErrorCode::UnknownTrack,
                client.read_range(&peer, MEETING, "nope", 0, 8192).await,
            ),
            (
                "past the end",
                ErrorCode::OutOfRange,
                client.read_range(&peer, MEETING, "cam_b", size - 10, 8192).await,
            ),
            (
                "start past end",
                ErrorCode::OutOfRange,
                client.read_range(&peer, MEETING, "cam_b", u64::MAX, 8192).await,
            ),
            ("zero length", ErrorCode::BadLength, client.read_range(&peer, MEETING, "cam_b", 0, 0).await),
            (
                "oversized",
                ErrorCode::BadLength,
                client.read_range(&peer, MEETING, "cam_b", 0, 9 * 1024 * 1024).await,
            ),
            ("below min", ErrorCode::BadLength, client.read_range(&peer, MEETING, "cam_b", 0, 100).await),
            ("dotdot", ErrorCode::BadRequest, client.read_range(&peer, "..", "cam_b", 0, 8192).await),
            ("dotdot/x", ErrorCode::BadRequest, client.read_range(&peer, "../x", "cam_b", 0, 8192).await),
            ("absolute", ErrorCode::BadRequest, client.read_range(&peer, "/etc", "passwd", 0, 8192).await),
            (
                "symlink out",
                ErrorCode::UnknownStream,
                client.read_range(&peer, "evil", "cam_b", 0, 8192).await,
            ),
        ];
        for (what, want, got) in cases {
            assert_eq!(code(got), want, "{what}");
            // The same connection still serves a good request after each bad one.
            let ok = client.read_range(&peer, MEETING, "cam_b", 100_000, 100_000).await.expect("good read");
            assert_eq!(&ok[..], &good[..], "after {what}");
        }
        for (stream, want) in [
            ("nope", ErrorCode::UnknownStream),
            ("..", ErrorCode::BadRequest),
            ("../x", ErrorCode::BadRequest),
            ("/etc", ErrorCode::BadRequest),
            ("evil", ErrorCode::UnknownStream),
        ] {
            assert_eq!(code(client.get(&peer, stream).await), want, "get {stream}");
        }
        // The tail of a file may be shorter than the window's minimum.
        let tail = client.read_range(&peer, MEETING, "cam_b", size - 10, 10).await.expect("tail");
        assert_eq!(&tail[..], &root.bytes("cam_b")[size as usize - 10..]);

        // Requests the client API cannot make: raw frames.
        let big = 100_000u32;
        let mut oversized = BytesMut::new();
        oversized.put_u32(big);
        oversized.put_slice(&vec![b'a'; big as usize]);
        let unknown =
            encode_frame(&RequestHeader { protocol: "stream.delete".into(), body: serde_json::json!({}) })
                .expect("frame");
        let raw_cases = [
            ("malformed json", raw_frame("{\"protocol\": \"stream.get\", "), ErrorCode::BadRequest),
            (
                "wrong body",
                raw_frame(r#"{"protocol":"stream.read_range","body":{"stream":1}}"#),
                ErrorCode::BadRequest,
            ),
            ("truncated", Bytes::from_static(&[0, 0, 1]), ErrorCode::BadRequest),
            ("oversized header", oversized.freeze(), ErrorCode::HeaderTooLarge),
            ("unknown protocol", unknown, ErrorCode::UnknownProtocol),
        ];
        for (what, frame, want) in raw_cases {
            let (header, rest) = client.send_raw(&peer, frame, 1024).await.expect(what);
            match header {
                ResponseHeader::Error { code, .. } => assert_eq!(code, want, "{what}"),
                other => panic!("{what}: expected an error, got {other:?}"),
            }
            assert!(rest.is_empty(), "{what}: no bytes after an error");
            let ok = client.read_range(&peer, MEETING, "cam_b", 100_000, 100_000).await.expect("good read");
            assert_eq!(&ok[..], &good[..], "after {what}");
        }

        // Bad and good requests in flight together on one connection.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..40u64 {
            let client = client.clone();
            let peer = peer.clone();
            set.spawn(async move {
                if i % 2 == 0 {
                    client.read_range(&peer, MEETING, "cam_b", i * 1000, 50_000).await.map(|b| (i, b))
                } else {
                    client.read_range(&peer, MEETING, "nope", 0, 50_000).await.map(|b| (i, b))
                }
            });
        }
        while let Some(done) = set.join_next().await {
            match done.expect("task") {
                Ok((i, bytes)) => {
                    assert_eq!(&bytes[..], &root.bytes("cam_b")[(i * 1000) as usize..][..50_000])
                }
                Err(e) => assert_eq!(e.code(), ErrorCode::UnknownTrack),
            }
        }
        client.close().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_off_the_allow_list_learn_nothing() {
    bounded(60, async {
        let root = make_root(4);
        let allowed = client().await;
        let stranger = client().await;
        let server = FolderProvider::new(root.root())
            .expect("provider")
            .server_builder()
            .bind(loopback())
            .allow([allowed.id52().to_string()])
            .spawn()
            .await
            .expect("server");
        let peer = peer_of(&server);
        for stream in [MEETING, "nope", ".."] {
            assert_eq!(code(stranger.get(&peer, stream).await), ErrorCode::Unauthorized, "get {stream}");
            assert_eq!(
                code(stranger.read_range(&peer, stream, "cam_a", 0, 8192).await),
                ErrorCode::Unauthorized,
                "read {stream}"
            );
        }
        // The server closes a stranger's connection before reading anything it sends.
        let err = stranger.send_raw(&peer, raw_frame("{garbage"), 16).await.expect_err("refused");
        assert_eq!(err.code(), ErrorCode::Unauthorized, "{err}");
        let got = allowed.read_range(&peer, MEETING, "cam_a", 0, 8192).await.expect("allowed");
        assert_eq!(&got[..], &root.bytes("cam_a")[..8192]);
        assert_eq!(allowed.get(&peer, MEETING).await.expect("get").tracks.len(), TRACK_SIZES.len());
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_clients_read_concurrently() {
    bounded(120, async {
        let root = make_root(5);
        let server = serve(root.root()).await;
        let peer = peer_of(&server);
        let expected = std::sync::Arc::new(root.tracks.clone());
        let mut set = tokio::task::JoinSet::new();
        for c in 0..32u64 {
            let peer = peer.clone();
            let expected = expected.clone();
            set.spawn(async move {
                let client = client().await;
                let mut rng = rand::rngs::StdRng::seed_from_u64(100 + c);
                let reads = (0..8).map(|_| {
                    let (name, size) = TRACK_SIZES[rng.gen_range(0..3)];
                    let len = rng.gen_range(4096..=256 * 1024u64);
                    let start = rng.gen_range(0..=size as u64 - len);
                    (name, start, len)
                });
                let reads: Vec<_> = reads.collect();
                let results = futures::future::join_all(
                    reads
                        .iter()
                        .map(|&(name, start, len)| client.read_range(&peer, MEETING, name, start, len)),
                )
                .await;
                for ((name, start, len), got) in reads.into_iter().zip(results) {
                    let got = got.expect("read");
                    assert_eq!(&got[..], &expected[name][start as usize..(start + len) as usize]);
                }
                client.close().await;
                c
            });
        }
        let mut done = 0;
        while let Some(r) = set.join_next().await {
            r.expect("client task");
            done += 1;
        }
        assert_eq!(done, 32);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_server_keeps_its_id52_and_clients_reconnect() {
    bounded(90, async {
        let root = make_root(6);
        let keys = tempfile::tempdir().expect("tempdir");
        let key_file = keys.path().join("server.key");
        let start = |addr| {
            let key = identity::load_or_create_key(&key_file).expect("key");
            let root = root.root().to_path_buf();
            async move {
                FolderProvider::new(root)
                    .expect("provider")
                    .server_builder()
                    .secret_key(key)
                    .bind(addr)
                    .spawn()
                    .await
            }
        };
        let first = start(loopback()).await.expect("first server");
        let peer = peer_of(&first);
        // 5 s connect timeout: a re-dial on iroh's stale path would stall longer than that.
        let client = client().await;
        let want = &root.bytes("screen")[..65536];
        assert_eq!(&client.read_range(&peer, MEETING, "screen", 0, 65536).await.expect("first")[..], want);
        let id52 = first.id52().to_string();
        first.shutdown().await;
        let t = std::time::Instant::now();

        // Same key, same port: the cached connection is dead, the client dials again.
        let second = start(peer.direct.expect("addr")).await.expect("second server");
        assert_eq!(second.id52(), id52);
        assert_eq!(
            &client.read_range(&peer, MEETING, "screen", 0, 65536).await.expect("after restart")[..],
            want
        );
        eprintln!("reconnect after restart on the same port took {:?}", t.elapsed());
        second.shutdown().await;
        let t = std::time::Instant::now();

        // Same key, a new port: the client is given the new address.
        let third = start(loopback()).await.expect("third server");
        assert_eq!(third.id52(), id52);
        let moved = peer_of(&third);
        assert_eq!(moved.id52, peer.id52);
        assert_eq!(
            &client.read_range(&moved, MEETING, "screen", 0, 65536).await.expect("after move")[..],
            want
        );
        eprintln!("reconnect after moving to a new port took {:?}", t.elapsed());
        third.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_in_flight_reads_finish() {
    bounded(60, async {
        let root = make_root(7);
        let server = serve(root.root()).await;
        let peer = peer_of(&server);
        let client = client().await;
        client.get(&peer, MEETING).await.expect("warm up");
        let reads: Vec<_> = (0..8u64)
            .map(|i| {
                let client = client.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    client.read_range(&peer, MEETING, "screen", i * 262_144, 1_000_000).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        server.shutdown().await;
        let mut finished = 0;
        for (i, r) in reads.into_iter().enumerate() {
            // A request that reached the server completes; one that had not yet may fail.
            if let Ok(bytes) = r.await.expect("task") {
                let start = i * 262_144;
                assert_eq!(&bytes[..], &root.bytes("screen")[start..start + 1_000_000]);
                finished += 1;
            }
        }
        assert!(finished > 0, "no in-flight read survived a graceful shutdown");
    })
    .await;
}

#[test]
fn key_file_is_created_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("server.key");
    let key = identity::load_or_create_key(&path).expect("create");
    assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
    assert_eq!(identity::load_or_create_key(&path).expect("load").id52(), key.id52());
    assert_eq!(
        identity::node_id_to_id52(&identity::to_iroh_secret(&key).public()),
        key.id52(),
        "the ID52 names the iroh node"
    );
    let _ = PeerAddr::new(key.id52(), None).node_addr().expect("ID52 parses as a node id");
}
