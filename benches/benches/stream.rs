//! The stream layer without GStreamer: how fast packets come through it, and how soon after a
//! seek, beside the raw reads underneath.
//!
//! ```text
//! ours: MeetingStream -> Subscription per track -> packets (index, request sizing, buffering)
//! raw:  RemoteTrack / FileSource read_range of the same files, 1 MiB at a time
//! ```
//!
//! - Throughput: every packet of the 4-track fixture meeting, all tracks at once, taken as fast
//!   as they come (the cursor follows what is taken): packets/s and MB/s of packet data, beside
//!   reading the same files whole with `read_range` over the same loopback link.
//! - Seek: time from `seek(t)` until every video track active at `t` has handed over its first
//!   packet of that seek, local and from a loopback peer.
//!
//! `cargo bench -p tandem-benches --bench stream`; a smoke run (`TANDEM_BENCH_SMOKE=1`) does a few
//! seeks only.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde_json::json;
use tandem::net::{Client, FolderProvider, PeerAddr, RemoteTrack};
use tandem::stream::{Item, Meeting, MeetingStream, StreamOptions, Subscription};
use tandem::{MediaTime, RangeSource};
use tandem_benches::report::{smoke, write_part, Figure};
use tandem_benches::{fixture_meeting, summary};

const TRACKS: &[&str] = &["alice_video", "bob_video", "screen_share", "mixed_audio"];
const VIDEO: &[&str] = &["alice_video", "bob_video", "screen_share"];

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Every packet of every track from zero: (packets, bytes, elapsed).
fn drain_all(meeting: Meeting) -> Result<(u64, u64, Duration)> {
    let stream = MeetingStream::open(meeting, StreamOptions::default());
    let started = Instant::now();
    let mut open: Vec<Subscription> = TRACKS.iter().map(|t| stream.subscribe(t)).collect::<Result<_, _>>()?;
    let (mut packets, mut bytes) = (0u64, 0u64);
    let deadline = started + Duration::from_secs(120);
    while !open.is_empty() {
        if Instant::now() > deadline {
            bail!("the meeting did not stream within 120 s");
        }
        let mut done = Vec::new();
        for (i, s) in open.iter().enumerate() {
            while let Ok(item) = s.try_recv() {
                match item.item {
                    Item::Packet(p) => {
                        packets += 1;
                        bytes += p.data.len() as u64;
                    }
                    Item::End => done.push(i),
                    Item::Failed { message } => bail!("{}: {message}", s.track().name),
                    _ => {}
                }
            }
        }
        for i in done.into_iter().rev() {
            open.remove(i);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok((packets, bytes, started.elapsed()))
}

/// Times from `seek(t)` to the first packet of that seek on every video track active at `t`.
fn seek_times(meeting: Meeting, seeks: usize) -> Result<Vec<Duration>> {
    let duration = meeting.duration().unwrap_or(MediaTime::from_secs(60));
    let stream = MeetingStream::open(meeting.clone(), StreamOptions::default());
    let subscriptions: Vec<Subscription> =
        VIDEO.iter().map(|t| stream.subscribe(t)).collect::<Result<_, _>>()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut times = Vec::new();
    for _ in 0..seeks {
        let t = MediaTime::from_millis(rng.gen_range(0..duration.as_millis() - 1000));
        let started = Instant::now();
        let ticket = stream.seek(t);
        for s in &subscriptions {
            if !s.track().timeline.is_active(t) {
                continue;
            }
            loop {
                let item = s
                    .recv_timeout(Duration::from_secs(10))
                    .with_context(|| format!("{} at {t}", s.track().name))?;
                if item.ticket >= ticket && matches!(item.item, Item::Packet(_)) {
                    break;
                }
            }
        }
        times.push(started.elapsed());
        // Let the tracks fill before the next seek, as a viewer would.
        std::thread::sleep(Duration::from_millis(if smoke() { 10 } else { 100 }));
        for s in &subscriptions {
            while s.try_recv().is_ok() {}
        }
    }
    Ok(times)
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = fixture_meeting();
    let root = dir.parent().context("fixtures root")?.to_path_buf();
    let name = dir.file_name().context("meeting name")?.to_string_lossy().into_owned();
    let (server, client) = rt.block_on(async {
        let server = FolderProvider::new(&root)?.server_builder().bind(loopback()).spawn().await?;
        let client = Client::builder().bind(loopback()).spawn().await?;
        anyhow::Ok((server, client))
    })?;
    let addr = server.bound_addrs().into_iter().find(SocketAddr::is_ipv4).context("an IPv4 socket")?;
    let peer = PeerAddr::new(server.id52(), Some(addr));
    let remote = || rt.block_on(Meeting::from_peer(&client, &peer, &name)).map_err(anyhow::Error::from);

    // Throughput through the stream, then the raw reads of the same files.
    let (packets, bytes, elapsed) = drain_all(remote()?)?;
    let info = rt.block_on(client.get(&peer, &name))?;
    let raw_started = Instant::now();
    let mut raw_bytes = 0u64;
    for track in TRACKS {
        let source = RemoteTrack::new(client.clone(), peer.clone(), &info, track)?;
        let mut at = 0;
        while at < source.len() {
            let len = (1 << 20).min(source.len() - at);
            raw_bytes += source.read_range(at, len)?.len() as u64;
            at += len;
        }
    }
    let raw_elapsed = raw_started.elapsed();
    let mbps = bytes as f64 / elapsed.as_secs_f64() / 1e6;
    let raw_mbps = raw_bytes as f64 / raw_elapsed.as_secs_f64() / 1e6;
    let packets_per_s = packets as f64 / elapsed.as_secs_f64();

    let seeks = if smoke() { 3 } else { 100 };
    let local = seek_times(Meeting::from_folder(&dir)?, seeks)?;
    let peer_seeks = seek_times(remote()?, seeks)?;
    let (local_p50, local_p95, _) = summary(&local);
    let (peer_p50, peer_p95, _) = summary(&peer_seeks);
    rt.block_on(server.shutdown());

    println!("stream from a loopback peer: {packets} packets, {bytes} bytes in {elapsed:?}: {packets_per_s:.0} packets/s, {mbps:.1} MB/s (raw read_range of the whole files: {raw_mbps:.1} MB/s)");
    println!("first packet after a seek: local p50 {local_p50:.2} ms p95 {local_p95:.2} ms; peer p50 {peer_p50:.2} ms p95 {peer_p95:.2} ms");
    let figures = vec![
        Figure::new(
            "stream_mbps_p2p_vs_raw_read_range",
            "MB/s",
            mbps,
            raw_mbps,
            "raw read_range of the same files, 1 MiB at a time, same loopback peer",
        ),
        Figure::new(
            "stream_seek_first_packet_p50_p2p",
            "ms",
            peer_p50,
            local_p50,
            "the same seeks from the local folder",
        ),
    ];
    write_part(
        "stream",
        &figures,
        json!({"packets": packets, "bytes": bytes, "packets_per_s": packets_per_s, "seeks": seeks,
               "local_ms": {"p50": local_p50, "p95": local_p95}, "p2p_ms": {"p50": peer_p50, "p95": peer_p95}}),
    )
}
