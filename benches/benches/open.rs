//! Open: the time from nothing to the first frame of every track showing something at the
//! start (every video track active at zero, and the audio), and the bytes and round trips it
//! took; local folder and a peer over loopback (a fresh client each time: dial, `stream.get`,
//! the index reads, the first media), on a 1-minute and a long meeting
//! (`TANDEM_BENCH_MINUTES`, default 60).
//!
//! Baselines in the same run: GStreamer's single pipeline (`gst_play`) prerolling the same
//! files, local and over HTTP from nginx on loopback (requests and body bytes from its access
//! log). Both open (preroll) and play at once: a video track's first frame is its first frame
//! handed over (the prerolled one), the audio's its first buffer played.
//!
//! `cargo bench -p tandem-benches --bench open`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gstreamer as gst;
use serde_json::json;
use tandem::manifest::TrackKind;
use tandem::player::{Meeting, Player, PlayerOptions};
use tandem::MediaTime;
use tandem_benches::gst_play::{GstMeeting, GstOptions, Rendered};
use tandem_benches::nginx::Nginx;
use tandem_benches::opens::wait_first;
use tandem_benches::peer::Loopback;
use tandem_benches::report::{smoke, write_part, Figure};
use tandem_benches::tracks::{MeetingInfo, Track};
use tandem_benches::{bench_minutes, long_meeting, meetings_dir, ms, ours, quantile};
use tandem_fixtures::Variant;

/// How long a first frame may take before the open counts as failed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// One open of ours: time, bytes read, range reads.
fn open_ours(info: &MeetingInfo, meeting: impl FnOnce() -> Result<Meeting>) -> Result<(Duration, u64, u64)> {
    let log: Arc<Mutex<Vec<Rendered>>> = Arc::default();
    let start = Instant::now();
    let meeting = meeting()?;
    let player = Player::open(
        meeting,
        PlayerOptions { output: ours::output(log.clone(), false), ..Default::default() },
    )?;
    player.play()?;
    let time = wait_first(&log, info, start, OPEN_TIMEOUT)?;
    let (mut bytes, mut reads) = (0, 0);
    for t in &info.tracks {
        if let Some(s) = player.track_stats(&t.name) {
            bytes += s.fetched_bytes();
            reads += s.fetches();
        }
    }
    Ok((time, bytes, reads))
}

fn open_gst(info: &MeetingInfo, options: GstOptions) -> Result<Duration> {
    let log = options.log.clone();
    let start = Instant::now();
    let gst = GstMeeting::open(&info.tracks, info.duration, options)?;
    gst.play()?;
    wait_first(&log, info, start, OPEN_TIMEOUT)
}

#[derive(Debug, Default)]
struct Opens {
    times: Vec<Duration>,
    bytes: u64,
    round_trips: u64,
}

impl Opens {
    fn p50(&self) -> f64 {
        ms(quantile(&self.times, 0.5))
    }
    fn line(&self, label: &str) -> String {
        format!(
            "{label:<30} p50 {:>7.1} ms  max {:>7.1} ms  {:>8.1} KiB  {:>4} round trips",
            self.p50(),
            ms(quantile(&self.times, 1.0)),
            self.bytes as f64 / 1024.0,
            self.round_trips
        )
    }
    fn json(&self) -> serde_json::Value {
        json!({"p50_ms": self.p50(), "max_ms": ms(quantile(&self.times, 1.0)), "bytes": self.bytes, "round_trips": self.round_trips})
    }
}

fn bench(label: &str, dir: &Path, peer: &Loopback, runs: usize) -> Result<(serde_json::Value, [f64; 4])> {
    let info = MeetingInfo::load(dir)?;
    let stream = dir.file_name().and_then(|n| n.to_str()).context("folder name")?.to_string();
    let (mut local, mut p2p, mut gst_local, mut gst_http) =
        (Opens::default(), Opens::default(), Opens::default(), Opens::default());
    for _ in 0..runs {
        let (t, bytes, reads) = open_ours(&info, || Ok(Meeting::from_folder(dir)?))?;
        local.times.push(t);
        (local.bytes, local.round_trips) = (bytes, reads);
        let client = peer.fresh_client()?;
        let (t, bytes, reads) = open_ours(&info, || peer.meeting(&client, &stream))?;
        p2p.times.push(t);
        // One `stream.get`, then one request per range read.
        (p2p.bytes, p2p.round_trips) = (bytes, reads + 1);
        peer.runtime.block_on(client.close());
        gst_local.times.push(open_gst(&info, GstOptions::local())?);
        let nginx = Nginx::serve(dir)?;
        let base = nginx.url("");
        let http = GstOptions {
            uri: Arc::new(move |t: &Track| format!("{base}{}", t.file_name)),
            ..GstOptions::local()
        };
        gst_http.times.push(open_gst(&info, http)?);
        (gst_http.round_trips, gst_http.bytes) = nginx.served();
    }
    let mut rows = serde_json::Map::new();
    for (name, o) in [
        ("ours local", &local),
        ("ours p2p", &p2p),
        ("gstreamer local", &gst_local),
        ("gstreamer http", &gst_http),
    ] {
        println!("{}", o.line(&format!("{label} {name}")));
        rows.insert(name.into(), o.json());
    }
    let active =
        info.tracks.iter().filter(|t| t.active(MediaTime::ZERO) && t.kind != TrackKind::Captions).count();
    rows.insert("tracks_at_start".into(), json!(active));
    Ok((serde_json::Value::Object(rows), [local.p50(), p2p.p50(), gst_local.p50(), gst_http.p50()]))
}

fn main() -> Result<()> {
    if !tandem_benches::invoked_as_bench() {
        return Ok(());
    }
    gst::init()?;
    let runs = if smoke() { 1 } else { 10 };
    let minutes = bench_minutes();
    let root = meetings_dir();
    std::fs::create_dir_all(&root)?;
    let short = long_meeting(&root, Variant::Standard, 1)?;
    let long = long_meeting(&root, Variant::Standard, minutes)?;
    let peer = Loopback::serve(&root)?;
    println!("open: time to the first frame of every track showing at zero, {runs} runs (median)");
    let (short_rows, s) = bench("1 min", &short, &peer, runs)?;
    let (long_rows, l) = bench(&format!("{minutes} min"), &long, &peer, runs)?;
    peer.shutdown();
    let local = "GStreamer uridecodebin, local files";
    let figures = vec![
        Figure::new("open_first_frame_p2p", "ms", l[1], l[2], local).goal(1.0),
        Figure::new("open_first_frame_local", "ms", l[0], l[2], local),
        Figure::new(
            "open_first_frame_p2p_vs_http",
            "ms",
            l[1],
            l[3],
            "GStreamer uridecodebin, HTTP from nginx",
        ),
        Figure::new("open_first_frame_p2p_1min", "ms", s[1], s[2], local).goal(1.0),
    ];
    let details = json!({"minutes": minutes, "runs": runs, "1min": short_rows, "long": long_rows});
    write_part("open", &figures, details)
}
