//! Hostile peers, both ways: servers that advertise absurd windows, stall mid-response or send
//! more than they announced; clients that open hundreds of idle connections, never finish a
//! request header, or are not on the allow-list; crowds of fresh identities that idle, stall
//! mid-header or stall mid-handshake at the connection cap. Here rather than in the workspace tests
//! because they need raw iroh endpoints.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh::endpoint::{Connection, ConnectionError};
use iroh::Endpoint;

use super::client::{Client, PeerAddr, MAX_READS_IN_FLIGHT};
use super::identity;
use super::protocol::{
    encode_frame, read_frame, ErrorCode, NetError, ReadRangeOk, ReadWindow, Request, ResponseHeader,
    StreamInfo, TrackEntry, ALPN, CLOSE_BUSY, CLOSE_EVICTED, CLOSE_IDLE, CLOSE_UNAUTHORIZED,
    MAX_REQUEST_HEADER,
};
use super::server::{endpoint_builder, Server, ServerBuilder, ServerHandle};
use super::strangers::{Stall, Strangers};
use crate::RangeSource;

const TRACK_SIZE: u64 = 1 << 20;

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn info(window: ReadWindow) -> StreamInfo {
    StreamInfo {
        name: "s".into(),
        duration_ms: None,
        tracks: vec![TrackEntry {
            name: "t".into(),
            kind: crate::manifest::TrackKind::Video,
            role: crate::manifest::Role::Camera,
            participant: Some("p".into()),
            sizes: vec![TRACK_SIZE],
            segments: Vec::new(),
            gap_policy: None,
        }],
        read_window: window,
    }
}

/// Byte `i` of the served track.
fn byte(i: u64) -> u8 {
    (i.wrapping_mul(31) >> 3) as u8
}

/// A real server over an in-memory track whose loader counts the loads in flight (and the
/// most at once) and takes `delay` for each.
fn memory_server(
    window: ReadWindow,
    delay: Duration,
    in_flight: Arc<(AtomicUsize, AtomicUsize)>,
) -> ServerBuilder<impl super::server::Resolver, impl super::server::Loader> {
    let resolver = move |_stream: String| async move { Ok(Some(info(window))) };
    let loader = move |_s: String, _t: String, _file: u32, start: u64, len: u64| {
        let in_flight = in_flight.clone();
        async move {
            let now = in_flight.0.fetch_add(1, Ordering::SeqCst) + 1;
            in_flight.1.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            in_flight.0.fetch_sub(1, Ordering::SeqCst);
            Ok::<Bytes, NetError>((start..start + len).map(byte).collect())
        }
    };
    Server::builder(resolver, loader).read_window(window).bind(loopback())
}

fn peer_of(server: &ServerHandle) -> PeerAddr {
    let addr = server.bound_addrs().into_iter().find(SocketAddr::is_ipv4).expect("an IPv4 socket");
    PeerAddr::new(server.id52(), Some(SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))))
}

async fn client(key: Option<fastn_id52::SecretKey>, request_timeout: Duration) -> Client {
    let mut builder = Client::builder().bind(loopback()).request_timeout(request_timeout);
    if let Some(key) = key {
        builder = builder.secret_key(key);
    }
    builder.spawn().await.expect("client")
}

async fn bounded<T>(secs: u64, body: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), body).await.expect("test exceeded its time bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_advertising_a_one_byte_window_is_refused_with_a_clear_error() {
    bounded(30, async {
        let loads = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let server = memory_server(ReadWindow { min: 1, max: 1 }, Duration::ZERO, loads.clone())
            .spawn()
            .await
            .expect("server");
        let client = client(None, Duration::from_secs(5)).await;
        let err = match client.remote_track(&peer_of(&server), "s", "t").await {
            Ok(track) => panic!("a track with window {:?} was accepted", track.window()),
            Err(e) => e,
        };
        assert!(matches!(&err, NetError::Protocol(m) if m.contains("read window 1..=1")), "{err}");
        assert_eq!(loads.1.load(Ordering::SeqCst), 0, "no read was sent");
        client.close().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_read_keeps_a_bounded_number_of_requests_in_flight() {
    bounded(60, async {
        let loads = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let window = ReadWindow { min: 4096, max: 4096 };
        let server =
            memory_server(window, Duration::from_millis(5), loads.clone()).spawn().await.expect("server");
        let client = client(None, Duration::from_secs(20)).await;
        let track = client.remote_track(&peer_of(&server), "s", "t").await.expect("track");
        // 256 KiB in 4 KiB requests: 64 of them, each tied to its place in the result.
        let data = track.read(1000, 256 * 1024).await.expect("read");
        assert_eq!(data.len(), 256 * 1024);
        assert!(data.iter().zip(1000u64..).all(|(b, i)| *b == byte(i)), "bytes out of place");
        let most = loads.1.load(Ordering::SeqCst);
        assert!((1..=MAX_READS_IN_FLIGHT).contains(&most), "{most} loads in flight at once");
        client.close().await;
        server.shutdown().await;
    })
    .await;
}

/// How a raw hostile server answers `stream.read_range`.
#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    /// The header and half the bytes, then nothing, forever.
    StallMidResponse,
    /// The header, then more bytes than it announced.
    SendExtra,
}

/// A server speaking the protocol by hand, answering `stream.get` honestly (default window)
/// and every read with `how`. Returns its address and the endpoint (dropping it stops it).
async fn raw_server(how: Misbehaviour) -> (PeerAddr, Endpoint) {
    let key = fastn_id52::SecretKey::generate();
    let endpoint = endpoint_builder(loopback(), &super::reach::Reach::direct())
        .secret_key(identity::to_iroh_secret(&key))
        .alpns(vec![ALPN.to_vec()])
        .bind()
        .await
        .expect("bind");
    let port = endpoint.bound_sockets().into_iter().find(SocketAddr::is_ipv4).expect("ipv4").port();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                let Ok(connecting) = incoming.accept() else { return };
                let Ok(conn) = connecting.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let Ok(header) = read_frame(&mut recv, MAX_REQUEST_HEADER).await else { return };
                        let (response, data) = match Request::decode(&header) {
                            Ok(Request::Get(_)) => (ResponseHeader::ok(&info(ReadWindow::default())), None),
                            Ok(Request::ReadRange(r)) => {
                                let data: Vec<u8> = (r.start..r.start + r.len + 64).map(byte).collect();
                                (ResponseHeader::ok(&ReadRangeOk { len: r.len }), Some((data, r.len)))
                            }
                            Err(e) => (Ok(ResponseHeader::error(&e)), None),
                        };
                        let Ok(frame) = response.and_then(|r| encode_frame(&r)) else { return };
                        if send.write_all(&frame).await.is_err() {
                            return;
                        }
                        if let Some((data, len)) = data {
                            let len = len as usize;
                            match how {
                                Misbehaviour::StallMidResponse => {
                                    let _ = send.write_all(&data[..len / 2]).await;
                                    std::future::pending::<()>().await;
                                }
                                Misbehaviour::SendExtra => {
                                    let _ = send.write_all(&data).await;
                                }
                            }
                        }
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    (PeerAddr::new(key.id52(), Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))), endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stalls_mid_response_gives_a_timeout_within_the_request_timeout() {
    bounded(30, async {
        let (peer, endpoint) = raw_server(Misbehaviour::StallMidResponse).await;
        let client = client(None, Duration::from_secs(1)).await;
        let started = Instant::now();
        let err = client.read_range(&peer, "s", "t", 0, 8192).await.expect_err("stalled");
        assert_eq!(err, NetError::Timeout(Duration::from_secs(1)));
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        client.close().await;
        endpoint.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_sends_more_than_it_announced_is_a_protocol_error() {
    bounded(30, async {
        let (peer, endpoint) = raw_server(Misbehaviour::SendExtra).await;
        let client = client(None, Duration::from_secs(5)).await;
        let err = client.read_range(&peer, "s", "t", 0, 8192).await.expect_err("extra bytes");
        assert!(matches!(&err, NetError::Protocol(m) if m.contains("more than")), "{err}");
        client.close().await;
        endpoint.close().await;
    })
    .await;
}

/// A bare endpoint with its own identity, for opening connections by hand.
async fn raw_endpoint(key: &fastn_id52::SecretKey) -> Endpoint {
    endpoint_builder(loopback(), &super::reach::Reach::direct())
        .secret_key(identity::to_iroh_secret(key))
        .bind()
        .await
        .expect("bind")
}

/// The application close code of a connection once the server has closed it, waiting up to
/// `within`.
async fn close_code(conn: &Connection, within: Duration) -> Option<u64> {
    match tokio::time::timeout(within, conn.closed()).await {
        Ok(ConnectionError::ApplicationClosed(close)) => Some(close.error_code.into_inner()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_and_strangers_do_not_lock_out_an_allowed_peer() {
    bounded(120, async {
        let good = fastn_id52::SecretKey::generate();
        let loris = fastn_id52::SecretKey::generate();
        let loads = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let server = memory_server(ReadWindow::default(), Duration::ZERO, loads)
            .allow([good.id52(), loris.id52()])
            .header_timeout(Duration::from_millis(500))
            .spawn()
            .await
            .expect("server");
        let peer = peer_of(&server);
        let addr = peer.node_addr().expect("addr");

        // 300 connections from one allowed peer that send nothing, a few of them with a
        // request header that never completes.
        let loris_ep = raw_endpoint(&loris).await;
        let idle: Vec<Connection> =
            futures::future::join_all((0..300).map(|_| loris_ep.connect(addr.clone(), ALPN)))
                .await
                .into_iter()
                .filter_map(Result::ok)
                .collect();
        let mut slow_headers = Vec::new();
        for conn in idle.iter().take(4) {
            if let Ok((mut send, recv)) = conn.open_bi().await {
                let _ = send.write_all(&[0, 0]).await;
                slow_headers.push((send, recv));
            }
        }
        // 50 strangers.
        let stranger_ep = raw_endpoint(&fastn_id52::SecretKey::generate()).await;
        let strangers: Vec<Connection> =
            futures::future::join_all((0..50).map(|_| stranger_ep.connect(addr.clone(), ALPN)))
                .await
                .into_iter()
                .filter_map(Result::ok)
                .collect();

        // The allowed client still gets its ranges, promptly.
        let client = client(Some(good), Duration::from_secs(5)).await;
        let started = Instant::now();
        for start in [0u64, 100_000, 500_000] {
            let data = client.read_range(&peer, "s", "t", start, 8192).await.expect("allowed read");
            assert!(data.iter().zip(start..).all(|(b, i)| *b == byte(i)));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "allowed reads took {:?}", started.elapsed());

        // Strangers were closed as unauthorized, the loris kept only its share.
        for conn in &strangers {
            assert_eq!(close_code(conn, Duration::from_secs(5)).await, Some(u64::from(CLOSE_UNAUTHORIZED)));
        }
        // The server's closes of a burst of 300 can reach the client a little after the
        // server has let go: wait (bounded) for the count to settle.
        let settle = Instant::now();
        let open = loop {
            let mut open = 0;
            for conn in &idle {
                match conn.close_reason() {
                    None => open += 1,
                    // Beyond the peer's share (busy), dropped from the handshakes in progress
                    // when 300 arrive at once (evicted), or closed for asking nothing (idle).
                    Some(ConnectionError::ApplicationClosed(c)) => assert!(
                        [CLOSE_BUSY, CLOSE_EVICTED, CLOSE_IDLE]
                            .map(u64::from)
                            .contains(&c.error_code.into_inner()),
                        "loris connection closed with {c}"
                    ),
                    // Shed by the server too: on a loaded machine its close can be overtaken by
                    // a stateless reset of the connection it has already dropped, and a
                    // handshake dropped before the server could send an application close is
                    // closed by the transport.
                    Some(ConnectionError::Reset | ConnectionError::ConnectionClosed(_)) => {}
                    Some(other) => panic!("loris connection closed by {other}"),
                }
            }
            if open <= 8 || settle.elapsed() > Duration::from_secs(5) {
                break open;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(open <= 8, "{open} idle connections of one peer are still open");
        // A header that never completes is answered with bad_request once it times out.
        for (_send, mut recv) in slow_headers {
            let answer = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut recv, 1 << 20)).await;
            let header: ResponseHeader =
                serde_json::from_slice(&answer.expect("answered").expect("a frame")).expect("json");
            assert!(
                matches!(header, ResponseHeader::Error { code: ErrorCode::BadRequest, .. }),
                "{header:?}"
            );
        }
        // Strangers' requests through the client are refused as unauthorized.
        let stranger = client_for_stranger().await;
        let err = stranger.get(&peer, "s").await.expect_err("stranger");
        assert_eq!(err.code(), ErrorCode::Unauthorized, "{err}");
        stranger.close().await;
        client.close().await;
        loris_ep.close().await;
        stranger_ep.close().await;
        server.shutdown().await;
    })
    .await;
}

async fn client_for_stranger() -> Client {
    client(None, Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    bounded(30, async {
        let loads = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let server = memory_server(ReadWindow::default(), Duration::ZERO, loads)
            .idle_timeout(Duration::from_millis(300))
            .spawn()
            .await
            .expect("server");
        let peer = peer_of(&server);
        let ep = raw_endpoint(&fastn_id52::SecretKey::generate()).await;
        let conn = ep.connect(peer.node_addr().expect("addr"), ALPN).await.expect("connect");
        assert_eq!(close_code(&conn, Duration::from_secs(5)).await, Some(u64::from(CLOSE_IDLE)));
        // A client simply dials again.
        let client = client(None, Duration::from_secs(5)).await;
        let track = client.remote_track(&peer, "s", "t").await.expect("track");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let data = tokio::task::spawn_blocking(move || track.read_range(4096, 4096)).await.expect("join");
        assert_eq!(data.expect("read after the idle close").len(), 4096);
        client.close().await;
        ep.close().await;
        server.shutdown().await;
    })
    .await;
}

/// A loopback server over the in-memory track with `cap` connections, and an honest client
/// that is on its allow-list when `allowed` (an open server otherwise).
///
/// `handshakes` bounds the handshakes in progress: by default (256) more than the strangers
/// here, as in a real server facing 300; below their number it makes strangers that complete
/// their handshakes and dial again at once push an honest handshake out before it ends.
async fn capped_server(
    cap: usize,
    handshakes: Option<usize>,
    allowed: bool,
    delay: Duration,
) -> (ServerHandle, PeerAddr, Client, Arc<(AtomicUsize, AtomicUsize)>) {
    let loads = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let honest_key = fastn_id52::SecretKey::generate();
    let mut builder = memory_server(ReadWindow::default(), delay, loads.clone()).max_connections(cap);
    if let Some(n) = handshakes {
        builder = builder.max_handshakes(n);
    }
    if allowed {
        builder = builder.allow([honest_key.id52()]);
    }
    let server = builder.spawn().await.expect("server");
    let peer = peer_of(&server);
    let honest = client(Some(honest_key), Duration::from_secs(10)).await;
    (server, peer, honest, loads)
}

// Each test below shuts its server down before stopping its strangers, while they can still
// acknowledge its closes: the other way round the server's endpoint close can wait out the
// 30 s QUIC idle timeout of a connection whose peer has gone.

/// Waits (up to 20 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(20), "still waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The honest client's first attempt at each request is served (no `busy`, no timeout), with
/// the right bytes.
async fn honest_is_served(honest: &Client, peer: &PeerAddr) {
    let info = honest.get(peer, "s").await.expect("the honest client's first get is served");
    assert_eq!(info.tracks.len(), 1);
    for start in [0u64, 300_000] {
        let data = honest.read_range(peer, "s", "t", start, 8192).await.expect("the honest read is served");
        assert!(data.iter().zip(start..).all(|(b, i)| *b == byte(i)), "bytes out of place");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_strangers_at_the_cap_are_evicted_for_an_honest_client() {
    bounded(60, async {
        let (server, peer, honest, _) = capped_server(16, None, false, Duration::ZERO).await;
        let strangers = Strangers::start(peer.node_addr().expect("addr"), Stall::Idle, 24, true)
            .await
            .expect("strangers");
        // The cap is full of connections that never ask anything, and more keep arriving.
        until("the strangers to fill the cap", || strangers.counts().connected.load(Ordering::Relaxed) >= 24)
            .await;
        honest_is_served(&honest, &peer).await;
        let counts = strangers.counts();
        assert!(counts.evicted.load(Ordering::Relaxed) > 0, "no stranger was evicted: {counts:?}");
        honest.close().await;
        server.shutdown().await;
        strangers.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_stalled_mid_header_are_evicted_for_an_honest_client() {
    bounded(60, async {
        let (server, peer, honest, _) = capped_server(16, None, false, Duration::ZERO).await;
        let strangers = Strangers::start(peer.node_addr().expect("addr"), Stall::MidHeader, 24, true)
            .await
            .expect("strangers");
        until("the strangers to fill the cap", || strangers.counts().connected.load(Ordering::Relaxed) >= 24)
            .await;
        honest_is_served(&honest, &peer).await;
        let counts = strangers.counts();
        assert!(counts.evicted.load(Ordering::Relaxed) > 0, "no stranger was evicted: {counts:?}");
        honest.close().await;
        server.shutdown().await;
        strangers.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_being_answered_is_not_evicted() {
    bounded(60, async {
        // Every load takes a second: the honest read is in flight while strangers arrive.
        let (server, peer, honest, loads) = capped_server(4, None, false, Duration::from_secs(1)).await;
        let read = {
            let (honest, peer) = (honest.clone(), peer.clone());
            tokio::spawn(async move { honest.read_range(&peer, "s", "t", 4096, 8192).await })
        };
        until("the honest read to reach the loader", || loads.0.load(Ordering::SeqCst) == 1).await;
        let strangers =
            Strangers::start(peer.node_addr().expect("addr"), Stall::Idle, 8, true).await.expect("strangers");
        until("strangers to be evicted", || strangers.counts().evicted.load(Ordering::Relaxed) > 0).await;
        let data = read.await.expect("join").expect("the read in flight was answered");
        assert!(data.iter().zip(4096u64..).all(|(b, i)| *b == byte(i)), "bytes out of place");
        assert_eq!(loads.1.load(Ordering::SeqCst), 1, "the read was answered once, not retried");
        honest.close().await;
        server.shutdown().await;
        strangers.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_asks_nothing_is_closed_after_the_first_request_timeout() {
    bounded(30, async {
        let loads = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let server = memory_server(ReadWindow::default(), Duration::ZERO, loads)
            .first_request_timeout(Duration::from_millis(300))
            .spawn()
            .await
            .expect("server");
        let peer = peer_of(&server);
        let addr = peer.node_addr().expect("addr");
        let ep = raw_endpoint(&fastn_id52::SecretKey::generate()).await;
        // One connection sends nothing; one opens a stream and stalls in its header's length.
        let silent = ep.connect(addr.clone(), ALPN).await.expect("connect");
        let stalled = ep.connect(addr, ALPN).await.expect("connect");
        let (mut send, _recv) = stalled.open_bi().await.expect("stream");
        send.write_all(&[0, 0]).await.expect("half a length");
        assert_eq!(close_code(&silent, Duration::from_secs(5)).await, Some(u64::from(CLOSE_IDLE)));
        assert_eq!(close_code(&stalled, Duration::from_secs(5)).await, Some(u64::from(CLOSE_IDLE)));
        // A connection that asked stays open past that deadline.
        let client = client(None, Duration::from_secs(5)).await;
        client.get(&peer, "s").await.expect("get");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let data = client.read_range(&peer, "s", "t", 0, 4096).await.expect("read on the same connection");
        assert_eq!(data.len(), 4096);
        client.close().await;
        ep.close().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_stalled_mid_handshake_do_not_keep_an_allowed_client_out() {
    bounded(60, async {
        let (server, peer, honest, _) = capped_server(16, Some(16), true, Duration::ZERO).await;
        let strangers = Strangers::start(peer.node_addr().expect("addr"), Stall::MidHandshake, 24, true)
            .await
            .expect("strangers");
        // Every place for a handshake is taken by one that will never complete.
        until("the strangers' handshakes to start", || {
            strangers.counts().dials.load(Ordering::Relaxed) >= 24
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        honest_is_served(&honest, &peer).await;
        honest.close().await;
        server.shutdown().await;
        strangers.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_strangers_at_an_allow_listed_server_are_closed_and_the_allowed_client_is_served() {
    bounded(60, async {
        let (server, peer, honest, _) = capped_server(16, None, true, Duration::ZERO).await;
        let strangers = Strangers::start(peer.node_addr().expect("addr"), Stall::Idle, 24, true)
            .await
            .expect("strangers");
        until("strangers to be refused", || strangers.counts().unauthorized.load(Ordering::Relaxed) >= 24)
            .await;
        honest_is_served(&honest, &peer).await;
        honest.close().await;
        server.shutdown().await;
        strangers.stop().await;
    })
    .await;
}
