//! Opening the indexes of a generated long meeting (default 60 minutes), per track: time, bytes
//! and reads, next to the baselines measured in the same run:
//! - GStreamer prerolling the same file (`filesrc ! parsebin ! fakesink` to PAUSED), the work
//!   its demuxers do before they can seek;
//! - the whole file, what a client without an index strategy downloads.
//!
//! `cargo bench -p tandem-benches --bench open_index` (set `TANDEM_BENCH_MINUTES` for shorter).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use tandem::index::TrackIndex;
use tandem::manifest::Manifest;
use tandem::{FileSource, RangeSource};
use tandem_benches::{bench_minutes, long_meeting, ms, quantile};
use tandem_fixtures::Variant;

const RUNS: usize = 15;

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
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("meetings");
    println!("open_index: {minutes}-minute meetings, {RUNS} runs per track, median times");
    println!(
        "{:<26} {:>10} {:>9} {:>6} {:>10} {:>10} {:>9} {:>9}",
        "track", "file MB", "open KB", "reads", "ours ms", "gst ms", "time x", "bytes x"
    );
    for variant in [Variant::Standard, Variant::Webrtc] {
        let folder = long_meeting(&dir, variant, minutes)?;
        let manifest = Manifest::load(&folder)?;
        for track in &manifest.tracks {
            let path = folder.join(track.file());
            let src = FileSource::open(&path)?;
            let mut ours = Vec::new();
            let mut cost = None;
            for _ in 0..RUNS {
                let start = Instant::now();
                let index = TrackIndex::open(&track.name, &src)?;
                ours.push(start.elapsed());
                cost = Some(index.open_cost());
            }
            let cost = cost.context("no runs")?;
            let mut theirs = Vec::new();
            for _ in 0..RUNS.min(5) {
                theirs.push(gst_preroll(&path)?);
            }
            let (ours_ms, gst_ms) = (ms(quantile(&ours, 0.5)), ms(quantile(&theirs, 0.5)));
            let label = format!("{}/{}", manifest.name, track.name);
            let bytes_ratio = cost.bytes as f64 / src.len() as f64;
            println!(
                "{:<26} {:>10.1} {:>9.1} {:>6} {:>10.2} {:>10.2} {:>9.3} {:>9.4}",
                label,
                src.len() as f64 / 1e6,
                cost.bytes as f64 / 1e3,
                cost.reads,
                ours_ms,
                gst_ms,
                ours_ms / gst_ms,
                bytes_ratio
            );
            println!(
                "{}",
                serde_json::json!({
                    "bench": "open_index", "track": label, "file_bytes": src.len(),
                    "open_bytes": cost.bytes, "open_reads": cost.reads,
                    "ours_ms": ours_ms, "gst_preroll_ms": gst_ms,
                    "time_ratio_vs_gst": ours_ms / gst_ms, "bytes_ratio_vs_whole_file": bytes_ratio,
                })
            );
        }
    }
    Ok(())
}
