//! Seek latency: random accurate and preview seeks on the committed 4-track meeting and on a
//! generated long meeting (`TANDEM_BENCH_MINUTES`, default 60), from a local folder and from a
//! peer over loopback, beside GStreamer's own playback of the same files (local `file://` and
//! HTTP ranges from nginx on loopback) and the decode-only limit, all in one run.
//!
//! A seek is timed from just before `seek()` is called until every video track active at the
//! target has handed over the frame whose stamp (read from the pixels) is the one on screen at
//! the target, and the audio has played its first buffer reaching past the target (which should
//! cover it: how much later it starts is counted, "audio late"); preview (key-unit for GStreamer):
//! until every such track has shown a frame at or before the target, from its keyframe on. The
//! players play during the seeks (scrubbing while playing); a seek starts 150 ms after the last
//! one landed. Bytes are what the player read from its sources meanwhile (nginx's access log
//! for GStreamer over HTTP).
//!
//! The decode-only limit of a seek: the coded frames from each active video track's keyframe to
//! the target, already in memory, decoded by the player's decoders on one thread per track at
//! once (`appsrc ! decoder ! appsink sync=false`).
//!
//! `cargo bench -p tandem-benches --bench seek` (`TANDEM_BENCH_SEEKS`, default 200 per mode).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gstreamer as gst;
use serde_json::json;
use tandem::player::Meeting;
use tandem_benches::gst_play::GstOptions;
use tandem_benches::nginx::Nginx;
use tandem_benches::peer::Loopback;
use tandem_benches::report::{smoke, write_part, Figure};
use tandem_benches::seeks::{http_name, run_gst, run_ours, targets, Mode, Runs};
use tandem_benches::tracks::{decode_limit, InMemoryTrack, MeetingInfo, Track};
use tandem_benches::{bench_minutes, fixture_meeting, long_meeting, meetings_dir, summary};
use tandem_fixtures::Variant;

/// Every configuration on one meeting folder (`stream` is its name under the peer's root).
fn bench_meeting(
    label: &str,
    dir: &Path,
    peer: &Loopback,
    stream: &str,
    seeks: usize,
) -> Result<(serde_json::Value, Vec<Figure>)> {
    let info = MeetingInfo::load(dir)?;
    let accurate = targets(&info, seeks, 9);
    let preview = targets(&info, seeks, 10);
    let nginx = Nginx::serve(dir)?;
    let http = {
        let base = nginx.url("");
        GstOptions { uri: Arc::new(move |t: &Track| format!("{base}{}", t.file_name)), ..GstOptions::local() }
    };
    let mut rows = serde_json::Map::new();
    let mut say = |key: &str, runs: &Runs| {
        println!("{}", runs.line(&format!("{label} {key}")));
        rows.insert(key.to_string(), runs.json());
    };
    let ours_local = run_ours(Meeting::from_folder(dir)?, &info, &accurate, Mode::Accurate)?;
    say("ours local accurate", &ours_local);
    let ours_preview = run_ours(Meeting::from_folder(dir)?, &info, &preview, Mode::Preview)?;
    say("ours local preview", &ours_preview);
    let ours_p2p = run_ours(peer.meeting(&peer.client, stream)?, &info, &accurate, Mode::Accurate)?;
    say("ours p2p accurate", &ours_p2p);
    let ours_p2p_preview = run_ours(peer.meeting(&peer.client, stream)?, &info, &preview, Mode::Preview)?;
    say("ours p2p preview", &ours_p2p_preview);
    let gst_local = run_gst(&info, GstOptions::local(), None, &accurate, Mode::Accurate)?;
    say("gstreamer local accurate", &gst_local);
    let gst_key = run_gst(&info, GstOptions::local(), None, &preview, Mode::Preview)?;
    say("gstreamer local key-unit", &gst_key);
    let gst_http = run_gst(&info, http.clone(), Some(&nginx), &accurate, Mode::Accurate)?;
    say("gstreamer http accurate", &gst_http);
    let gst_http_key = run_gst(&info, http, Some(&nginx), &preview, Mode::Preview)?;
    say("gstreamer http key-unit", &gst_http_key);

    let memory: Vec<InMemoryTrack> = info.videos().map(InMemoryTrack::load).collect::<Result<_>>()?;
    let mut limit = Vec::new();
    let mut per_track: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    for &t in &accurate {
        let (all, each) = decode_limit(&memory, t)?;
        limit.push(all);
        let names = memory.iter().filter(|m| m.track.active(t)).map(|m| m.track.name.to_string());
        for (name, d) in names.zip(each) {
            per_track.entry(name).or_default().push(d);
        }
    }
    let (p50, p95, max) = summary(&limit);
    println!("{label} decode-only limit (tracks in parallel)  p50 {p50:>7.1} ms  p95 {p95:>7.1} ms  max {max:>7.1} ms");
    let mut limit_tracks = serde_json::Map::new();
    for (name, times) in &per_track {
        let (p50, p95, max) = summary(times);
        println!(
            "{label} decode-only limit {name:<20} p50 {p50:>7.1} ms  p95 {p95:>7.1} ms  max {max:>7.1} ms"
        );
        limit_tracks.insert(name.clone(), json!({"p50_ms": p50, "p95_ms": p95, "max_ms": max}));
    }
    rows.insert(
        "decode_limit".into(),
        json!({"p50_ms": p50, "p95_ms": p95, "max_ms": max, "per_track": limit_tracks}),
    );
    let mut figures = vec![
        Figure::new(
            "seek_accurate_p50_local",
            "ms",
            ours_local.p50(),
            gst_local.p50(),
            "GStreamer uridecodebin, local files",
        )
        .goal(0.5),
        Figure::new(
            "seek_accurate_p95_local",
            "ms",
            ours_local.p95(),
            gst_local.p95(),
            "GStreamer uridecodebin, local files",
        )
        .goal(0.5),
        Figure::new("seek_accurate_p50_p2p", "ms", ours_p2p.p50(), gst_http.p50(), &http_name(&gst_http))
            .goal(0.5),
        Figure::new(
            "seek_accurate_p50_vs_decode_limit",
            "ms",
            ours_local.p50(),
            p50,
            "decode-only limit (in memory, tracks in parallel)",
        )
        .goal(1.5),
        Figure::new(
            "seek_preview_p50",
            "ms",
            ours_preview.p50(),
            gst_key.p50(),
            "GStreamer key-unit seek, local files",
        )
        .goal_absolute(50.0),
        Figure::new("seek_accurate_p95_p2p", "ms", ours_p2p.p95(), gst_http.p95(), &http_name(&gst_http)),
        Figure::new(
            "seek_preview_p95",
            "ms",
            ours_preview.p95(),
            gst_key.p95(),
            "GStreamer key-unit seek, local files",
        ),
        Figure::new(
            "seek_preview_p50_p2p",
            "ms",
            ours_p2p_preview.p50(),
            gst_http_key.p50(),
            &http_name(&gst_http_key),
        ),
        Figure::new(
            "seek_accurate_p50_p2p_vs_gst_local",
            "ms",
            ours_p2p.p50(),
            gst_local.p50(),
            "GStreamer uridecodebin, local files",
        ),
        Figure::new(
            "seek_accurate_bytes_p50_p2p",
            "KiB",
            ours_p2p.bytes_p50() / 1024.0,
            gst_http.bytes_p50() / 1024.0,
            "GStreamer over HTTP (nginx body bytes)",
        ),
    ];
    for f in &mut figures {
        f.name = format!("{}{label}", f.name);
    }
    rows.insert(
        "figures".into(),
        json!(figures.iter().map(|f| (f.name.clone(), f.ours, f.baseline)).collect::<Vec<_>>()),
    );
    Ok((serde_json::Value::Object(rows), figures))
}

fn main() -> Result<()> {
    if !tandem_benches::invoked_as_bench() {
        return Ok(());
    }
    gst::init()?;
    let seeks = if smoke() {
        2
    } else {
        std::env::var("TANDEM_BENCH_SEEKS").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
    };
    let minutes = bench_minutes();
    let root = meetings_dir();
    std::fs::create_dir_all(&root)?;
    let long = long_meeting(&root, Variant::Standard, minutes)?;
    let fixture = fixture_meeting();
    let fixtures_root = fixture.parent().context("fixtures folder")?.to_path_buf();
    println!("seek: {seeks} seeks per mode; the 4-track fixture meeting and a {minutes}-minute meeting");
    let mut details = serde_json::Map::new();
    // The names are the long meeting's figures; the fixture's carry a suffix.
    let mut figures = Vec::new();
    {
        let peer = Loopback::serve(&root)?;
        let stream = long.file_name().and_then(|n| n.to_str()).context("meeting folder name")?.to_string();
        let (rows, figs) = bench_meeting("", &long, &peer, &stream, seeks)?;
        details.insert(format!("{minutes}min"), rows);
        figures.extend(figs);
        peer.shutdown();
    }
    {
        let peer = Loopback::serve(&fixtures_root)?;
        let (rows, figs) = bench_meeting("_fixture", &fixture, &peer, "meeting", seeks)?;
        details.insert("fixture".into(), rows);
        figures.extend(figs);
        peer.shutdown();
    }
    details.insert("seeks".into(), json!(seeks));
    details.insert("minutes".into(), json!(minutes));
    write_part("seek", &figures, serde_json::Value::Object(details))
}
