//! Serving meetings from an S3 bucket (`tandem::net::s3`), against a real S3 server: s3s-fs
//! in-process on loopback (`tandem_tests::s3`), which counts the requests it receives.
//!
//! Oracles: the committed fixture files' own bytes, and the S3 server's request log (never the
//! provider's own counters alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem::net::{Client, PeerAddr, S3Config, S3Error, S3Location, S3Provider, ServerHandle};
use tandem_tests::fixture_meeting;
use tandem_tests::s3::{stalled_endpoint, S3Server, ACCESS_KEY, REGION, SECRET_KEY};

const BUCKET: &str = "meetings";
const PREFIX: &str = "recordings/2026";
const CHUNK: u64 = 256 * 1024;

/// The fixture meeting uploaded as `s3://meetings/recordings/2026/meeting/...`.
fn bucket_with_the_fixture() -> S3Server {
    let server = S3Server::start().expect("s3 server");
    server.create_bucket(BUCKET).expect("bucket");
    let uploaded = server
        .upload_folder(BUCKET, &format!("{PREFIX}/meeting"), &fixture_meeting("meeting"))
        .expect("upload");
    assert_eq!(uploaded, 6);
    server.clear();
    server
}

fn config(endpoint: &str, location: &str) -> S3Config {
    S3Config::new(S3Location::parse(location).expect("location"))
        .endpoint(endpoint)
        .credentials(ACCESS_KEY, SECRET_KEY)
        .region(REGION)
        .allow_http(true)
}

async fn serve(provider: &S3Provider) -> ServerHandle {
    provider.server_builder().bind(([127, 0, 0, 1], 0).into()).spawn().await.expect("tandem server")
}

async fn new_client() -> Client {
    Client::builder()
        .bind(([127, 0, 0, 1], 0).into())
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(20))
        .spawn()
        .await
        .expect("client")
}

fn peer_of(server: &ServerHandle) -> PeerAddr {
    let addr = server.direct_addrs().into_iter().find(|a| a.is_ipv4()).expect("an IPv4 address");
    PeerAddr::new(server.id52(), Some(addr))
}

/// A whole track through the peer, in reads of `step` bytes.
async fn fetch_all(client: &Client, peer: &PeerAddr, track: &str, size: u64, step: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    let mut at = 0;
    while at < size {
        let len = step.min(size - at);
        let bytes = client.read_range(peer, "meeting", track, at, len).await.expect("read_range");
        out.extend_from_slice(&bytes);
        at += len;
    }
    out
}

fn local(track_file: &str) -> Vec<u8> {
    std::fs::read(fixture_meeting("meeting").join(track_file)).expect("fixture file")
}

/// The fixture's tracks: name, file.
fn tracks() -> Vec<(String, String)> {
    let manifest = tandem::manifest::Manifest::load(&fixture_meeting("meeting")).expect("manifest");
    manifest.tracks.iter().map(|t| (t.name.clone(), t.file().to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_track_through_a_peer_on_the_bucket_equals_the_local_file_byte_for_byte() {
    let s3 = bucket_with_the_fixture();
    let provider =
        S3Provider::new(config(&s3.endpoint(), &format!("s3://{BUCKET}/{PREFIX}"))).expect("provider");
    assert_eq!(provider.meetings().await.expect("list"), vec!["meeting".to_string()]);
    let server = serve(&provider).await;
    let (client, peer) = (new_client().await, peer_of(&server));
    let info = client.get(&peer, "meeting").await.expect("stream.get");
    for (name, file) in tracks() {
        let expected = local(&file);
        let entry = info.track(&name).expect("track in stream.get");
        assert_eq!(entry.sizes, vec![expected.len() as u64], "{name}: size");
        // Reads that do not line up with the provider's chunks (100 000 bytes).
        let got = fetch_all(&client, &peer, &name, entry.sizes[0], 100_000).await;
        assert!(got == expected, "{name}: the bytes through the peer differ from {file}");
    }
    // Every byte of every object crossed the S3 server once, in aligned chunks.
    let gets = s3.range_gets();
    let total: u64 = tracks().iter().map(|(_, f)| local(f).len() as u64).sum();
    let chunks: u64 = tracks().iter().map(|(_, f)| (local(f).len() as u64).div_ceil(CHUNK)).sum();
    assert_eq!(gets.len() as u64, chunks, "distinct chunk GETs: {gets:?}");
    assert!(gets.values().all(|&n| n == 1), "a chunk was fetched twice: {gets:?}");
    for (path, range) in gets.keys() {
        let start: u64 = range
            .trim_start_matches("bytes=")
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("range start");
        assert_eq!(start % CHUNK, 0, "unaligned GET {path} {range}");
    }
    println!("{total} bytes in {chunks} chunk GETs");
    server.shutdown().await;
}

/// N clients, each with its own connection, read the same track at the same time: the S3
/// server sees one GET per chunk. The same with the LRU off and a slow bucket: merging alone
/// keeps it at one; and the LRU off with the clients one after the other: one GET per chunk
/// per client (the counting is not blind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_viewers_of_one_meeting_make_one_get_per_chunk() {
    const VIEWERS: usize = 20;
    let s3 = bucket_with_the_fixture();
    let location = format!("s3://{BUCKET}/{PREFIX}");
    let track = "bob_video";
    let file = tracks().into_iter().find(|(n, _)| n == track).expect("bob").1;
    let expected = Arc::new(local(&file));
    let size = expected.len() as u64;
    let chunks = size.div_ceil(CHUNK) as usize;

    // `provider` serving, VIEWERS clients reading the whole track concurrently in 64 KiB reads.
    async fn viewers(provider: &S3Provider, size: u64, expected: &Arc<Vec<u8>>, concurrent: bool) {
        let server = serve(provider).await;
        let peer = peer_of(&server);
        let mut clients = Vec::new();
        for _ in 0..VIEWERS {
            clients.push(new_client().await);
        }
        if concurrent {
            let mut tasks = Vec::new();
            for client in clients {
                let (peer, expected) = (peer.clone(), expected.clone());
                tasks.push(tokio::spawn(async move {
                    let got = fetch_all(&client, &peer, "bob_video", size, 64 * 1024).await;
                    assert!(got == *expected, "a viewer got other bytes");
                }));
            }
            for task in tasks {
                task.await.expect("viewer");
            }
        } else {
            for client in clients {
                let got = fetch_all(&client, &peer, "bob_video", size, 64 * 1024).await;
                assert!(got == **expected, "a viewer got other bytes");
            }
        }
        server.shutdown().await;
    }
    let gets_of = |s3: &S3Server| -> usize {
        s3.range_gets().iter().filter(|((path, _), _)| path.ends_with(&file)).map(|(_, n)| n).sum()
    };

    // LRU and merging.
    let provider = S3Provider::new(config(&s3.endpoint(), &location)).expect("provider");
    viewers(&provider, size, &expected, true).await;
    let with_cache = gets_of(&s3);
    assert_eq!(with_cache, chunks, "{VIEWERS} concurrent viewers: {:?}", s3.range_gets());
    let stats = provider.stats();
    println!("{VIEWERS} concurrent viewers, LRU on: {with_cache} GETs for {chunks} chunks; provider stats {stats:?}");

    // No LRU, a slow bucket (200 ms per GET): every viewer asks while the GET is in flight.
    s3.clear();
    s3.set_get_delay(Duration::from_millis(200));
    let provider = S3Provider::new(config(&s3.endpoint(), &location).cache_bytes(0)).expect("provider");
    viewers(&provider, size, &expected, true).await;
    let merged_only = gets_of(&s3);
    let stats = provider.stats();
    println!(
        "{VIEWERS} concurrent viewers, LRU off, 200 ms GETs: {merged_only} GETs; provider stats {stats:?}"
    );
    assert!(stats.chunk_joins > 0, "no read joined a GET in flight: {stats:?}");
    // The 64 KiB reads of one viewer come one after another; with 20 viewers in step most
    // chunk reads find the GET in flight. Far below one GET per viewer per read.
    let reads_per_viewer = size.div_ceil(64 * 1024) as usize;
    assert!(
        merged_only < VIEWERS * reads_per_viewer / 4,
        "merging left {merged_only} GETs for {VIEWERS} x {reads_per_viewer} reads"
    );

    // No LRU, viewers one after another: nothing to merge, every chunk read is a GET.
    s3.clear();
    s3.set_get_delay(Duration::ZERO);
    let provider = S3Provider::new(config(&s3.endpoint(), &location).cache_bytes(0)).expect("provider");
    viewers(&provider, size, &expected, false).await;
    let neither = gets_of(&s3);
    println!("{VIEWERS} viewers one after another, LRU off: {neither} GETs");
    assert!(neither >= VIEWERS * chunks, "{neither} GETs for {VIEWERS} x {chunks} chunks without a cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_meeting_or_object_is_named() {
    let s3 = bucket_with_the_fixture();
    // No such bucket: the check `serve` makes first names it.
    let provider = S3Provider::new(config(&s3.endpoint(), "s3://no-such-bucket")).expect("provider");
    let err = provider.meetings().await.expect_err("missing bucket");
    assert!(matches!(err, S3Error::NoSuchBucket { .. }), "{err:?}");
    assert!(
        err.to_string().contains("\"no-such-bucket\"") && err.to_string().contains("no such bucket"),
        "{err}"
    );

    // No such meeting: the client is told the name it asked for.
    let provider =
        S3Provider::new(config(&s3.endpoint(), &format!("s3://{BUCKET}/{PREFIX}"))).expect("provider");
    assert_eq!(provider.stream_info("retro").await.expect("absent"), None);
    let server = serve(&provider).await;
    let (client, peer) = (new_client().await, peer_of(&server));
    let err = client.get(&peer, "retro").await.expect_err("no meeting");
    assert!(err.to_string().contains("no stream \"retro\""), "{err}");
    server.shutdown().await;

    // A manifest naming an object that is not there: the provider names the object, the
    // client the track.
    s3.upload_folder(BUCKET, &format!("{PREFIX}/broken"), &fixture_meeting("meeting")).expect("upload");
    std::fs::remove_file(s3.root.path().join(BUCKET).join(PREFIX).join("broken/bob_video.webm")).expect("rm");
    let provider =
        S3Provider::new(config(&s3.endpoint(), &format!("s3://{BUCKET}/{PREFIX}"))).expect("provider");
    let err = provider.stream_info("broken").await.expect_err("missing object");
    assert!(
        err.to_string().starts_with(&format!("s3://{BUCKET}/{PREFIX}/broken/bob_video.webm: no such object")),
        "{err}"
    );
    let server = serve(&provider).await;
    let (client, peer) = (new_client().await, peer_of(&server));
    let err = client.get(&peer, "broken").await.expect_err("missing object");
    assert!(err.to_string().contains("track \"bob_video\" of \"broken\" has no file on the server"), "{err}");
    assert!(!err.to_string().contains(BUCKET), "the client was told the bucket: {err}");
    server.shutdown().await;
}

/// A store that accepts connections and never answers fails a read within the deadline (1 s
/// here, 5 s by default), naming the object, the endpoint and the range; not after
/// object_store's minutes of retries. A closed port fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_unreachable_endpoint_fails_within_the_deadline() {
    let stalled = stalled_endpoint().expect("stalled endpoint");
    let endpoint = format!("http://{}", stalled.addr);
    let deadline = Duration::from_secs(1);
    let cfg = config(&endpoint, &format!("s3://{BUCKET}"))
        .deadline(deadline)
        .request_timeout(Duration::from_millis(400));
    let provider = S3Provider::new(cfg).expect("provider");
    let started = Instant::now();
    let err = provider.stream_info("meeting").await.expect_err("stalled");
    let took = started.elapsed();
    assert!(matches!(err, S3Error::Timeout { .. }), "{err:?}");
    assert!(took < deadline + Duration::from_millis(800), "failed after {took:?}");
    let text = err.to_string();
    assert!(text.contains("s3://meetings/meeting/meeting.json") && text.contains(&endpoint), "{text}");
    println!("stalled endpoint: {text} (after {took:?})");

    // Through a peer: the client gets an error, not a hang.
    let server = serve(&provider).await;
    let (client, peer) = (new_client().await, peer_of(&server));
    let started = Instant::now();
    let err = client.get(&peer, "meeting").await.expect_err("stalled");
    assert!(
        started.elapsed() < deadline + Duration::from_secs(2),
        "the client waited {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("did not answer within"), "{err}");
    server.shutdown().await;

    // The default deadline is a player's few seconds.
    let defaults = format!("{:?}", S3Config::new(S3Location::parse("s3://b").expect("b")));
    assert!(defaults.contains("deadline: 5s"), "{defaults}");

    // Nothing listening: refused at once, named.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let endpoint = format!("http://{addr}");
    let provider =
        S3Provider::new(config(&endpoint, "s3://meetings").deadline(Duration::from_secs(3))).expect("p");
    let started = Instant::now();
    let err = provider.meetings().await.expect_err("refused");
    assert!(started.elapsed() < Duration::from_secs(3), "refused after {:?}", started.elapsed());
    assert!(err.to_string().contains(&endpoint), "{err}");
    println!("unreachable endpoint: {err} (after {:?})", started.elapsed());
}
