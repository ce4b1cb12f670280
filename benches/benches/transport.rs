//! Transport benchmark: `stream.read_range` on loopback against a raw QUIC stream on an iroh
//! connection carrying the same bytes, and against local positioned reads.
//!
//! ```text
//! ours: Client --(tandem/stream/1: JSON header, raw bytes)--> Server -> FolderProvider -> pread
//! raw:  endpoint --(bench/raw: 12-byte request, raw bytes)--> endpoint -> bytes in memory
//! file: FileSource::read_range (pread, page cache)
//! ```
//!
//! Per `stream.read_range` the server (through `FolderProvider`) resolves the stream: one
//! `stat` of `meeting.json` (parsed again only when its modification time or length changed),
//! a `canonicalize` of the meeting folder and of each track file, a `stat` of each track file;
//! then loads: the same folder and manifest checks, a `canonicalize` and `open` of the track
//! file and one `pread` of the range on a blocking thread. Nothing else is cached, so a file
//! replaced on disk is served as it is now.
//!
//! For each chunk size: throughput (MB/s) with one request in flight and with 4 in flight,
//! request latency p50/p99, and ours/raw ratios; then connection set-up time (bind + dial +
//! first `stream.get`). Loops are bounded by count and by time, so the whole run takes about a
//! minute: `cargo bench -p tandem-benches --bench transport`. Prints a table and one JSON line.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use iroh::endpoint::Connection;
use iroh::{Endpoint, RelayMode};
use rand::{Rng, SeedableRng};
use tandem::net::{Client, FolderProvider, PeerAddr};
use tandem::{FileSource, RangeSource};
use tandem_benches::report::{smoke, write_part, Figure};

const FILE_SIZE: usize = 64 * 1024 * 1024;
const CHUNKS: &[u64] = &[32 * 1024, 128 * 1024, 512 * 1024, 1024 * 1024, 4 * 1024 * 1024];
const RAW_ALPN: &[u8] = b"bench/raw";
/// Per measurement; a smoke run (`TANDEM_BENCH_SMOKE=1`) only checks the code runs.
fn time_bound() -> Duration {
    if smoke() {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(2)
    }
}
const IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    mbps: f64,
    mbps_parallel: f64,
    p50_us: f64,
    p99_us: f64,
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn iterations(chunk: u64) -> usize {
    ((256 * 1024 * 1024 / chunk) as usize).clamp(30, 2000)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn offsets(chunk: u64, n: usize, seed: u64) -> Vec<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(0..=(FILE_SIZE as u64 - chunk))).collect()
}

/// Runs `op` sequentially (latency + throughput) and with IN_FLIGHT concurrent (throughput).
async fn measure<F, Fut>(chunk: u64, op: F) -> Result<Stats>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Bytes>> + Send,
{
    let n = iterations(chunk);
    let offs = offsets(chunk, n, chunk);
    // Warm up.
    op(offs[0]).await?;
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    let mut bytes = 0u64;
    for &o in &offs {
        let t = Instant::now();
        let got = op(o).await?;
        lat.push(t.elapsed());
        bytes += got.len() as u64;
        if start.elapsed() > time_bound() {
            break;
        }
    }
    let seq = bytes as f64 / 1e6 / start.elapsed().as_secs_f64();
    lat.sort();

    let start = Instant::now();
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..IN_FLIGHT {
        let op = op.clone();
        let offs: Vec<u64> = offs.iter().skip(w).step_by(IN_FLIGHT).copied().collect();
        let total = total.clone();
        tasks.push(tokio::spawn(async move {
            for o in offs {
                let got = op(o).await?;
                total.fetch_add(got.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if start.elapsed() > time_bound() {
                    break;
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let par = total.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6 / start.elapsed().as_secs_f64();
    Ok(Stats { mbps: seq, mbps_parallel: par, p50_us: percentile(&lat, 0.5), p99_us: percentile(&lat, 0.99) })
}

/// A raw server: each bi stream carries `offset u64, len u32` and gets the bytes back.
async fn raw_server(data: Bytes) -> Result<(Endpoint, SocketAddr)> {
    let ep = Endpoint::builder()
        .relay_mode(RelayMode::Disabled)
        .clear_discovery()
        .bind_addr_v4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .alpns(vec![RAW_ALPN.to_vec()])
        .bind()
        .await?;
    let addr = ep.bound_sockets().into_iter().find(SocketAddr::is_ipv4).context("no v4 socket")?;
    let accept = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let Ok(conn) = async { incoming.accept()?.await }.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let data = data.clone();
                    tokio::spawn(async move {
                        let mut req = [0u8; 12];
                        if recv.read_exact(&mut req).await.is_err() {
                            return;
                        }
                        let off = u64::from_be_bytes(req[..8].try_into().unwrap_or_default()) as usize;
                        let len = u32::from_be_bytes(req[8..].try_into().unwrap_or_default()) as usize;
                        let end = (off + len).min(data.len());
                        let _ = send.write_chunk(data.slice(off.min(end)..end)).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    Ok((ep, addr))
}

async fn raw_read(conn: &Connection, off: u64, len: u64) -> Result<Bytes> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut req = [0u8; 12];
    req[..8].copy_from_slice(&off.to_be_bytes());
    req[8..].copy_from_slice(&(len as u32).to_be_bytes());
    send.write_all(&req).await?;
    send.finish()?;
    let mut buf = bytes::BytesMut::zeroed(len as usize);
    recv.read_exact(&mut buf).await?;
    Ok(buf.freeze())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    if !tandem_benches::invoked_as_bench() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let meeting = dir.path().join("bench");
    std::fs::create_dir(&meeting)?;
    let mut data = vec![0u8; FILE_SIZE];
    rand::rngs::StdRng::seed_from_u64(1).fill(&mut data[..]);
    std::fs::write(meeting.join("big.bin"), &data)?;
    std::fs::write(
        meeting.join("meeting.json"),
        r#"{"name":"bench","tracks":[{"name":"big","kind":"video","segments":[{"file":"big.bin","start_ms":0}]}]}"#,
    )?;
    let data = Bytes::from(data);

    let server = FolderProvider::new(dir.path())?.server_builder().bind(loopback()).spawn().await?;
    let addr = server.bound_addrs().into_iter().find(SocketAddr::is_ipv4).context("no v4 socket")?;
    let peer = PeerAddr::new(server.id52(), Some(addr));
    let client = Client::builder().bind(loopback()).spawn().await?;
    client.get(&peer, "bench").await?;

    let (raw_ep, raw_addr) = raw_server(data.clone()).await?;
    let raw_client = Endpoint::builder()
        .relay_mode(RelayMode::Disabled)
        .clear_discovery()
        .bind_addr_v4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .bind()
        .await?;
    let raw_conn = raw_client
        .connect(iroh::NodeAddr::new(raw_ep.node_id()).with_direct_addresses([raw_addr]), RAW_ALPN)
        .await?;

    let file = Arc::new(FileSource::open(meeting.join("big.bin"))?);

    println!("transport on loopback: {} MiB file, up to {:?} per measurement", FILE_SIZE >> 20, time_bound());
    println!(
        "{:>8} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} | {:>9} | {:>6} {:>6}",
        "chunk",
        "ours MB/s",
        "ours x4",
        "p50 us",
        "p99 us",
        "raw MB/s",
        "raw x4",
        "p50 us",
        "p99 us",
        "pread MB/s",
        "ratio",
        "ratio4"
    );
    let mut rows = Vec::new();
    let mut one_mib = None;
    let chunks: &[u64] = if smoke() { &[1024 * 1024] } else { CHUNKS };
    for &chunk in chunks {
        let ours = {
            let (client, peer) = (client.clone(), peer.clone());
            measure(chunk, move |o| {
                let (client, peer) = (client.clone(), peer.clone());
                async move { Ok(client.read_range(&peer, "bench", "big", o, chunk).await?) }
            })
            .await?
        };
        let raw = {
            let conn = raw_conn.clone();
            measure(chunk, move |o| {
                let conn = conn.clone();
                async move { raw_read(&conn, o, chunk).await }
            })
            .await?
        };
        let pread = {
            let file = file.clone();
            measure(chunk, move |o| {
                let file = file.clone();
                async move { Ok(file.read_range(o, chunk)?) }
            })
            .await?
        };
        let ratio = ours.mbps / raw.mbps.max(1e-9);
        if chunk == 1024 * 1024 {
            one_mib = Some((ours.mbps, raw.mbps));
        }
        let ratio4 = ours.mbps_parallel / raw.mbps_parallel.max(1e-9);
        println!(
            "{:>7}K | {:>9.0} {:>9.0} {:>9.0} {:>9.0} | {:>9.0} {:>9.0} {:>9.0} {:>9.0} | {:>9.0} | {:>6.2} {:>6.2}",
            chunk / 1024,
            ours.mbps,
            ours.mbps_parallel,
            ours.p50_us,
            ours.p99_us,
            raw.mbps,
            raw.mbps_parallel,
            raw.p50_us,
            raw.p99_us,
            pread.mbps,
            ratio,
            ratio4
        );
        rows.push(serde_json::json!({
            "chunk": chunk,
            "ours": {"mbps": ours.mbps, "mbps_x4": ours.mbps_parallel, "p50_us": ours.p50_us, "p99_us": ours.p99_us},
            "raw": {"mbps": raw.mbps, "mbps_x4": raw.mbps_parallel, "p50_us": raw.p50_us, "p99_us": raw.p99_us},
            "pread_mbps": pread.mbps,
            "ratio": ratio,
            "ratio_x4": ratio4,
        }));
    }

    // Connection set-up: a fresh client (bind) dialing and asking stream.get.
    let mut setups = Vec::new();
    let mut dials = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let fresh = Client::builder().bind(loopback()).spawn().await?;
        let bound = t.elapsed();
        fresh.get(&peer, "bench").await?;
        setups.push(t.elapsed());
        dials.push(t.elapsed() - bound);
        fresh.close().await;
    }
    setups.sort();
    dials.sort();
    let setup_p50_ms = percentile(&setups, 0.5) / 1000.0;
    let dial_p50_ms = percentile(&dials, 0.5) / 1000.0;
    println!("connection set-up (bind + dial + first stream.get): p50 {setup_p50_ms:.2} ms; dial + get only: p50 {dial_p50_ms:.2} ms");
    let (ours_mbps, raw_mbps) = one_mib.context("no 1 MiB row")?;
    let figures = [Figure::new(
        "transport_1mib_vs_raw_quic",
        "MB/s",
        ours_mbps,
        raw_mbps,
        "raw QUIC stream on the same iroh connection",
    )
    .goal_higher(0.8)];
    write_part(
        "transport",
        &figures,
        serde_json::json!({"rows": rows, "setup_p50_ms": setup_p50_ms, "dial_get_p50_ms": dial_p50_ms}),
    )?;

    client.close().await;
    raw_client.close().await;
    raw_ep.close().await;
    server.shutdown().await;
    Ok(())
}
