//! The shaped link (`tandem_tests::link`) checked against oracles that do not trust it:
//! `ping` for the round trip, a plain TCP bulk transfer for the rate, UDP datagrams counted at
//! the receiver for the loss; then tandem's own server and client through it. Every test makes
//! its own namespaces and fails (never skips) when it cannot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tandem_tests::link::{meeting_bitrate, Direction, Namespace, ServedPeer, Shape, ShapedLink};

/// `ping -c count` from a to b: every reply's round trip in ms, sorted.
fn ping(link: &ShapedLink, count: u32) -> Result<Vec<f64>> {
    let out = link
        .a()
        .command("ping")
        .args(["-n", "-c", &count.to_string(), "-i", "0.2", "-W", "3"])
        .arg(link.b().addr().to_string())
        .output()
        .context("running ping (iputils-ping, from scripts/install-deps.sh)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "ping failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    // 64 bytes from 10.99.0.2: icmp_seq=1 ttl=64 time=80.4 ms
    let mut times: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split_once("time=").and_then(|(_, t)| t.trim_end_matches(" ms").parse().ok()))
        .collect();
    ensure!(times.len() == count as usize, "{} replies of {count}: {text}", times.len());
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Checks every reply is at least `low` ms and all but one at most `high` (one late reply is
/// a thread of the forwarder or of ping descheduled on a busy 2-core machine, not the link).
fn check_round_trips(link: &str, times: &[f64], low: f64, high: f64) -> Result<()> {
    let median = times[times.len() / 2];
    println!(
        "{link} ([{low}, {high}] ms configured): ping min {:.2} median {median:.2} max {:.2} ms",
        times[0],
        times[times.len() - 1]
    );
    ensure!(times[0] >= low, "{link}: a round trip of {} ms, under {low}: {times:?}", times[0]);
    let late = times.iter().filter(|&&t| t > high).count();
    ensure!(late <= 1, "{link}: {late} round trips over {high} ms: {times:?}");
    Ok(())
}

#[test]
fn ping_sees_the_configured_round_trip() -> Result<()> {
    let far = ShapedLink::new(Shape::far())?;
    check_round_trips("far", &ping(&far, 8)?, 79.5, 85.0)?;

    let loopback = ShapedLink::new(Shape::loopback())?;
    check_round_trips("loopback", &ping(&loopback, 8)?, 0.0, 5.0)?;

    // 20 ms each way plus up to 15 ms of jitter each way: every round trip in [40, 70].
    let jittery = Direction {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(15),
        ..Direction::UNSHAPED
    };
    let link = ShapedLink::new(Shape { a_to_b: jittery, b_to_a: jittery, seed: 7 })?;
    let times = ping(&link, 12)?;
    check_round_trips("jittery", &times, 39.5, 75.0)?;
    let spread = times[times.len() - 2] - times[1];
    ensure!(spread >= 5.0, "jittery link: the round trips vary by {spread:.1} ms only: {times:?}");
    Ok(())
}

/// Sends `total` bytes over TCP from a to b; the receiver's goodput (bits/s) after the first
/// `warmup` bytes (slow start excluded), and over the whole transfer from the connection on.
fn tcp_goodput(link: &ShapedLink, total: usize, warmup: usize) -> Result<(f64, f64)> {
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let b_addr = link.b().addr();
    let receiver = link.b().spawn(move || -> Result<(f64, f64)> {
        let listener = TcpListener::bind((b_addr, 0))?;
        port_tx.send(listener.local_addr()?.port())?;
        let (mut conn, _) = listener.accept()?;
        let accepted = Instant::now();
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let (mut got, mut buf, mut warm_at) = (0usize, vec![0u8; 65_536], None);
        while got < total {
            let n = conn.read(&mut buf)?;
            ensure!(n > 0, "the sender closed after {got} bytes");
            got += n;
            if got >= warmup && warm_at.is_none() {
                warm_at = Some((Instant::now(), got));
            }
        }
        let (at, from) = warm_at.context("no warm-up")?;
        let whole = got as f64 * 8.0 / accepted.elapsed().as_secs_f64();
        Ok(((got - from) as f64 * 8.0 / at.elapsed().as_secs_f64(), whole))
    })?;
    let port = port_rx.recv_timeout(Duration::from_secs(5))?;
    let sender = link.a().spawn(move || -> Result<()> {
        let mut conn = TcpStream::connect_timeout(&SocketAddr::from((b_addr, port)), Duration::from_secs(5))?;
        let chunk = vec![7u8; 65_536];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            conn.write_all(&chunk[..n])?;
            sent += n;
        }
        Ok(())
    })?;
    sender.join().map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    receiver.join().map_err(|_| anyhow::anyhow!("the receiver panicked"))?
}

/// Checks a TCP transfer against the link's rate: the whole transfer never beats it, and
/// after slow start it fills at least 85 % of it.
fn check_goodput(link: &str, rate: f64, (warm, whole): (f64, f64)) -> Result<()> {
    // TCP's payload per 1500-byte packet is 1448 bytes (IP 20, TCP 20, timestamps 12).
    let limit = rate * 1448.0 / 1500.0;
    println!(
        "{link}: TCP goodput after slow start {:.3} Mbit/s, whole transfer {:.3} Mbit/s; rate {:.3} Mbit/s (goodput limit {:.3})",
        warm / 1e6,
        whole / 1e6,
        rate / 1e6,
        limit / 1e6
    );
    // 1 % for the clocks: the receiver's starts at its accept, a little after the sender's.
    ensure!(
        whole <= 1.01 * limit,
        "{link}: {whole:.0} bit/s over the whole transfer, above the link's {limit:.0}"
    );
    // The goodput after slow start may read a little over the limit: a measure that starts
    // while a retransmission is missing gets the bytes queued behind it at once.
    ensure!(
        (0.85 * limit..=1.05 * limit).contains(&warm),
        "{link}: {warm:.0} bit/s after slow start, the link carries {limit:.0}"
    );
    Ok(())
}

#[test]
fn tcp_bulk_transfer_runs_at_the_configured_rate() -> Result<()> {
    let far = ShapedLink::new(Shape::far())?;
    let rate = far.shape().a_to_b.rate_bps.context("far has a rate")? as f64;
    check_goodput("far", rate, tcp_goodput(&far, 8 << 20, 1 << 20)?)?;

    let meeting = tandem_tests::fixture_meeting("meeting");
    let short = ShapedLink::new(Shape::short(meeting_bitrate(&meeting)?))?;
    let rate = short.shape().a_to_b.rate_bps.context("short has a rate")? as f64;
    check_goodput("short", rate, tcp_goodput(&short, 200_000, 40_000)?)?;
    let (a_to_b, b_to_a) = short.stats();
    println!("short: a->b {a_to_b:?}, b->a {b_to_a:?}");
    Ok(())
}

#[test]
fn udp_datagrams_are_lost_at_the_configured_rate() -> Result<()> {
    let link = ShapedLink::new(Shape::lossy())?;
    let (sent, b_addr) = (3000u32, link.b().addr());
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let receiver = link.b().spawn(move || -> Result<u32> {
        let socket = UdpSocket::bind((b_addr, 0))?;
        port_tx.send(socket.local_addr()?.port())?;
        socket.set_read_timeout(Some(Duration::from_millis(1500)))?;
        let (mut received, mut buf) = (0u32, [0u8; 2048]);
        // Ends 1.5 s after the last datagram (the link holds them 100 ms).
        while socket.recv(&mut buf).is_ok() {
            received += 1;
        }
        Ok(received)
    })?;
    let port = port_rx.recv_timeout(Duration::from_secs(5))?;
    link.a().run(move || -> Result<()> {
        let socket = UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?;
        let start = Instant::now();
        // 100-byte datagrams every 1.5 ms: 0.68 Mbit/s on the wire, a third of the rate,
        // so the queue never drops.
        for i in 0..sent {
            socket.send_to(&[1u8; 100], (b_addr, port))?;
            let next = start + Duration::from_micros(1500) * (i + 1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        Ok(())
    })??;
    let received = receiver.join().map_err(|_| anyhow::anyhow!("the receiver panicked"))??;
    let lost = f64::from(sent - received) / f64::from(sent);
    let (a_to_b, _) = link.stats();
    println!(
        "lossy: {received} of {sent} datagrams arrived: {:.2} % lost (configured 1 %); link {a_to_b:?}",
        lost * 100.0
    );
    // 1 % of 3000 is 30, binomial sd 5.4: 3 sd either side.
    ensure!((0.0045..=0.0155).contains(&lost), "lossy: {:.2} % lost, configured 1 %", lost * 100.0);
    ensure!(
        a_to_b.queue_dropped == 0,
        "the queue dropped {} packets at a third of the rate",
        a_to_b.queue_dropped
    );
    ensure!(
        a_to_b.lost.abs_diff(u64::from(sent - received)) <= 3,
        "the link counted {} lost, the receiver missed {}",
        a_to_b.lost,
        sent - received
    );
    Ok(())
}

/// A tokio runtime (current-thread or multi-thread) built on a thread inside `ns`: can its
/// tasks, workers and blocking threads bind the namespace's address (which exists nowhere else)?
fn runtime_binds_inside(ns: &Namespace, multi_thread: bool) -> Result<Vec<String>> {
    let addr = ns.addr();
    ns.run(move || -> Result<Vec<String>> {
        let runtime = if multi_thread {
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?
        } else {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?
        };
        runtime.block_on(async move {
            let mut bound = Vec::new();
            for _ in 0..4 {
                let task = tokio::spawn(async move {
                    let s = tokio::net::UdpSocket::bind((addr, 0)).await?;
                    anyhow::Ok(format!("task on {:?}: {}", std::thread::current().name(), s.local_addr()?))
                });
                bound.push(task.await??);
            }
            let blocking = tokio::task::spawn_blocking(move || {
                let s = std::net::UdpSocket::bind((addr, 0))?;
                anyhow::Ok(format!("blocking: {}", s.local_addr()?))
            });
            bound.push(blocking.await??);
            Ok(bound)
        })
    })?
}

#[test]
fn threads_and_runtimes_started_inside_a_namespace_stay_inside() -> Result<()> {
    let link = ShapedLink::new(Shape::loopback())?;
    // The oracle: the address exists only in namespace a.
    ensure!(
        UdpSocket::bind((link.a().addr(), 0)).is_err(),
        "{} is bound outside the namespace",
        link.a().addr()
    );
    for multi_thread in [false, true] {
        let bound = runtime_binds_inside(link.a(), multi_thread)?;
        println!("multi_thread {multi_thread}: {bound:?}");
    }
    // An iroh endpoint (tandem's client) bound from a runtime inside a.
    let addr = link.a().addr();
    let id52 = link.a().run(move || -> Result<String> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(async move {
            let client = tandem::net::Client::builder().bind(SocketAddr::from((addr, 0))).spawn().await?;
            let id = client.id52().to_string();
            client.close().await;
            anyhow::Ok(id)
        })
    })??;
    ensure!(!id52.is_empty());
    Ok(())
}

/// Connects a fresh client in a to the peer in b, `stream.get`s the committed meeting and reads
/// the server's smallest read (4 KiB) of a track; the time it took and the bytes.
fn fetch_first_read(link: &ShapedLink, peer: &ServedPeer) -> Result<(Duration, bytes::Bytes)> {
    let (peer, addr) = (peer.peer(), link.a().addr());
    link.a().run(move || -> Result<(Duration, bytes::Bytes)> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(async move {
            let client = tandem::net::Client::builder().bind(SocketAddr::from((addr, 0))).spawn().await?;
            let start = Instant::now();
            let stream = client.get(&peer, "meeting").await?;
            ensure!(stream.tracks.iter().any(|t| t.name == "alice_video"), "no alice_video in {stream:?}");
            let bytes = client.read_range(&peer, "meeting", "alice_video", 0, 4096).await?;
            let took = start.elapsed();
            client.close().await;
            Ok((took, bytes))
        })
    })?
}

#[test]
fn tandem_fetches_through_the_link_in_round_trips() -> Result<()> {
    let root = tandem_tests::workspace_root().join("fixtures");
    let file = std::fs::read(root.join("meeting/alice_video.mp4"))?;
    let expected = &file[..4096];
    let link = ShapedLink::new(Shape::loopback())?;
    let peer = ServedPeer::start(link.b(), &root)?;
    let (on_loopback, bytes) = fetch_first_read(&link, &peer)?;
    ensure!(bytes == expected, "the first 4 KiB read differ from the file's");
    link.set_shape(Shape::far());
    let rtt = Shape::far().round_trip();
    let (on_far, bytes) = fetch_first_read(&link, &peer)?;
    ensure!(bytes == expected, "the first 4 KiB read through the far link differ from the file's");
    let round_trips = (on_far.as_secs_f64() - on_loopback.as_secs_f64()) / rtt.as_secs_f64();
    println!(
        "connect + stream.get + 4 KiB read: loopback {:.1} ms, far {:.1} ms: {round_trips:.1} round trips of {} ms",
        on_loopback.as_secs_f64() * 1e3,
        on_far.as_secs_f64() * 1e3,
        rtt.as_millis()
    );
    // A handshake, a request and a read: no protocol does it in fewer than 3 round trips.
    if on_far < rtt * 3 {
        bail!("the far link carried connect, get and read in {on_far:?}, under 3 round trips of {rtt:?}");
    }
    Ok(())
}
