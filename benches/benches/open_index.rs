//! Opening the indexes of a generated long meeting (default 60 minutes), per track: time, bytes
//! and reads, next to the baselines measured in the same run:
//! - GStreamer prerolling the same file (`filesrc ! parsebin ! fakesink` to PAUSED), the work
//!   its demuxers do before they can seek;
//! - the whole file, what a client without an index strategy downloads.
//!
//! The same index is also opened from a peer over loopback QUIC (`RemoteTrack`): same bytes and
//! reads as locally, each read one request.
//!
//! `cargo bench -p tandem-benches --bench open_index` (set `TANDEM_BENCH_MINUTES` for shorter).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use tandem::index::TrackIndex;
use tandem::manifest::Manifest;
use tandem::net::{Client, FolderProvider, PeerAddr, RemoteTrack};
use tandem::{FileSource, RangeSource};
use tandem_benches::report::{smoke, write_part, Figure};
use tandem_benches::{bench_minutes, long_meeting, meetings_dir, ms, quantile};
use tandem_fixtures::Variant;

fn runs() -> usize {
    if smoke() {
        1
    } else {
        15
    }
}

fn gst_preroll(path: &std::path::Path) -> Result<Duration> {
    let pipeline =
        gst::parse::launch(&format!("filesrc location=\"{}\" ! parsebin ! fakesink", path.display()))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let start = Instant::now();
    pipeline.set_state(gst::State::Paused)?;
    let (result, _, _) = pipeline.state(gst::ClockTime::from_seconds(30));
    let elapsed = start.elapsed();
    pipeline.set_state(gst::State::Null)?;
    result.context("preroll")?;
    Ok(elapsed)
}

fn main() -> Result<()> {
    if !tandem_benches::invoked_as_bench() {
        return Ok(());
    }
    gst::init()?;
    let minutes = bench_minutes();
    let dir = meetings_dir();
    let folders = [Variant::Standard, Variant::Webrtc]
        .into_iter()
        .map(|variant| long_meeting(&dir, variant, minutes))
        .collect::<Result<Vec<_>>>()?;

    // A loopback peer serving the same folders.
    let runtime = tokio::runtime::Runtime::new()?;
    let (server, client) = runtime.block_on(async {
        let server = FolderProvider::new(&dir)?
            .server_builder()
            .bind((std::net::Ipv4Addr::LOCALHOST, 0).into())
            .spawn()
            .await?;
        let client = Client::builder().bind((std::net::Ipv4Addr::LOCALHOST, 0).into()).spawn().await?;
        anyhow::Ok((server, client))
    })?;
    let addr =
        server.bound_addrs().into_iter().find(std::net::SocketAddr::is_ipv4).context("an IPv4 address")?;
    let peer = PeerAddr::new(server.id52(), Some(addr));

    println!("open_index: {minutes}-minute meetings, {} runs per track, median times", runs());
    // Totals over every track: (ours ms, p2p ms, GStreamer preroll ms, bytes read, file bytes).
    let mut totals = (0.0, 0.0, 0.0, 0u64, 0u64);
    println!(
        "{:<28} {:>9} {:>9} {:>6} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "track", "file MB", "open KB", "reads", "ours ms", "p2p ms", "gst ms", "time x", "bytes x"
    );
    for folder in &folders {
        let manifest = Manifest::load(folder)?;
        let stream_name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stream = runtime.block_on(client.get(&peer, &stream_name))?;
        for track in &manifest.tracks {
            let path = folder.join(track.file());
            let src = FileSource::open(&path)?;
            let mut ours = Vec::new();
            let mut cost = None;
            for _ in 0..runs() {
                let start = Instant::now();
                let index = TrackIndex::open(&track.name, &src)?;
                ours.push(start.elapsed());
                cost = Some(index.open_cost());
            }
            let cost = cost.context("no runs")?;
            let remote = RemoteTrack::new(client.clone(), peer.clone(), &stream, &track.name)?;
            let name = track.name.clone();
            let (p2p, p2p_cost) = runtime.block_on(runtime.spawn_blocking(move || {
                let mut times = Vec::new();
                let mut cost = None;
                for _ in 0..runs().min(5) {
                    let start = Instant::now();
                    let index = TrackIndex::open(&name, &remote)?;
                    times.push(start.elapsed());
                    cost = Some(index.open_cost());
                }
                anyhow::Ok((times, cost))
            }))??;
            anyhow::ensure!(
                p2p_cost == Some(cost),
                "{}: remote open read {p2p_cost:?}, local {cost:?}",
                track.name
            );
            let mut theirs = Vec::new();
            for _ in 0..runs().min(5) {
                theirs.push(gst_preroll(&path)?);
            }
            let (ours_ms, p2p_ms, gst_ms) =
                (ms(quantile(&ours, 0.5)), ms(quantile(&p2p, 0.5)), ms(quantile(&theirs, 0.5)));
            totals.0 += ours_ms;
            totals.1 += p2p_ms;
            totals.2 += gst_ms;
            totals.3 += cost.bytes;
            totals.4 += src.len();
            let label = format!("{}/{}", stream_name, track.name);
            let bytes_ratio = cost.bytes as f64 / src.len() as f64;
            println!(
                "{:<28} {:>9.1} {:>9.1} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>8.3} {:>9.4}",
                label,
                src.len() as f64 / 1e6,
                cost.bytes as f64 / 1e3,
                cost.reads,
                ours_ms,
                p2p_ms,
                gst_ms,
                ours_ms / gst_ms,
                bytes_ratio
            );
            println!(
                "{}",
                serde_json::json!({
                    "bench": "open_index", "track": label, "file_bytes": src.len(),
                    "open_bytes": cost.bytes, "open_reads": cost.reads,
                    "ours_ms": ours_ms, "p2p_loopback_ms": p2p_ms, "gst_preroll_ms": gst_ms,
                    "time_ratio_vs_gst": ours_ms / gst_ms, "p2p_time_ratio_vs_gst": p2p_ms / gst_ms,
                    "bytes_ratio_vs_whole_file": bytes_ratio,
                })
            );
        }
    }
    runtime.block_on(server.shutdown());
    let gst = "GStreamer parsebin preroll of the same files";
    let figures = [
        Figure::new("open_index_local_vs_gst_preroll", "ms", totals.0, totals.2, gst),
        Figure::new("open_index_p2p_vs_gst_preroll", "ms", totals.1, totals.2, gst),
        Figure::new(
            "open_index_bytes_vs_whole_file",
            "MiB",
            totals.3 as f64 / 1048576.0,
            totals.4 as f64 / 1048576.0,
            "the whole files",
        ),
    ];
    write_part("open_index", &figures, serde_json::json!({"minutes": minutes, "runs": runs()}))
}
