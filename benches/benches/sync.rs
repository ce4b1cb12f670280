//! Sync: how far what is rendered is from where the player says it is.
//!
//! At every video frame handed over by a clock-synced sink: skew = the meeting time of the
//! player's position clock at that moment minus the frame's stamp (read from the pixels); the
//! same between tracks (each frame against the other tracks' latest frames); and for the audio,
//! each click (one at every whole second of meeting time) against the position when it plays.
//! Scenarios on the committed 4-track meeting: steady play, after seeks, through pause/resume
//! cycles, after subscribing tracks while playing, at 1.5x. Drift: the median skew at 5 %, 50 %
//! and 95 % of a long meeting (`TANDEM_BENCH_MINUTES`, default 60), max minus min.
//!
//! Audio at each rate from 0.5x to 2x (`sync_audio_click_p95_at_<rate>x`): the clicks of the
//! audio track alone after the rate changes while playing and after a seek at that rate,
//! against GStreamer's single pipeline with `scaletempo` before its sink (the fair baseline: the
//! single pipeline below changes rate without keeping the pitch). The goal: p95 within 10 ms
//! and no worse than that baseline (`goal_ratio` = min(10 ms / baseline, 1)).
//!
//! Baselines in the same run: the naive player (one GStreamer pipeline per file, operated one
//! after the other; its position is the audio pipeline's) and GStreamer's single pipeline
//! (`gst_play`). The single pipeline has no subscribe-while-playing (uridecodebin branches are
//! fixed); the naive player subscribes by opening a pipeline and seeking it to its position.
//!
//! `cargo bench -p tandem-benches --bench sync`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use gstreamer as gst;
use serde_json::json;
use tandem::player::{Meeting, Player, PlayerOptions, SeekMode};
use tandem::MediaTime;
use tandem_benches::gst_play::{GstMeeting, GstOptions, Rendered, Timing};
use tandem_benches::report::{smoke, write_part, Figure};
use tandem_benches::tracks::{MeetingInfo, Track};
use tandem_benches::{bench_minutes, fixture_meeting, long_meeting, meetings_dir, ours, quantile_f};
use tandem_fixtures::{audio, Variant};

/// What the scenarios drive.
trait Playback {
    fn play(&mut self) -> Result<()>;
    fn pause(&mut self) -> Result<()>;
    /// An accurate seek, returning once it has landed.
    fn seek(&mut self, t: MediaTime) -> Result<()>;
    fn set_rate(&mut self, rate: f64) -> Result<()>;
    /// Adds a track while playing; false when this player cannot.
    fn subscribe(&mut self, track: &str) -> Result<bool>;
    fn log(&self) -> Arc<Mutex<Vec<Rendered>>>;
}

struct Ours {
    player: Player,
    log: Arc<Mutex<Vec<Rendered>>>,
}

impl Playback for Ours {
    fn play(&mut self) -> Result<()> {
        Ok(self.player.play()?)
    }
    fn pause(&mut self) -> Result<()> {
        Ok(self.player.pause()?)
    }
    fn seek(&mut self, t: MediaTime) -> Result<()> {
        self.player.seek(t, SeekMode::Accurate)?;
        anyhow::ensure!(self.player.wait_seek(Duration::from_secs(15)), "ours: seek to {t} did not land");
        Ok(())
    }
    fn set_rate(&mut self, rate: f64) -> Result<()> {
        self.player.set_rate(rate)?;
        anyhow::ensure!(self.player.wait_seek(Duration::from_secs(15)), "ours: rate change did not land");
        Ok(())
    }
    fn subscribe(&mut self, track: &str) -> Result<bool> {
        self.player.subscribe(track)?;
        Ok(true)
    }
    fn log(&self) -> Arc<Mutex<Vec<Rendered>>> {
        self.log.clone()
    }
}

fn open_ours(dir: &Path, subscribe: Option<Vec<String>>) -> Result<Ours> {
    let log: Arc<Mutex<Vec<Rendered>>> = Arc::default();
    let options =
        PlayerOptions { output: ours::output(log.clone(), true), subscribe, ..PlayerOptions::default() };
    Ok(Ours { player: Player::open(Meeting::from_folder(dir)?, options)?, log })
}

/// GStreamer's single pipeline.
struct Single {
    gst: GstMeeting,
    rate: f64,
}

impl Single {
    fn position(&self) -> MediaTime {
        self.gst.timing().position().unwrap_or(MediaTime::ZERO)
    }
}

impl Playback for Single {
    fn play(&mut self) -> Result<()> {
        self.gst.play()
    }
    fn pause(&mut self) -> Result<()> {
        self.gst.pause()
    }
    fn seek(&mut self, t: MediaTime) -> Result<()> {
        self.gst.seek(t, gst::SeekFlags::ACCURATE, self.rate).map(|_| ())
    }
    fn set_rate(&mut self, rate: f64) -> Result<()> {
        self.rate = rate;
        let at = self.position();
        self.seek(at)
    }
    fn subscribe(&mut self, _track: &str) -> Result<bool> {
        Ok(false)
    }
    fn log(&self) -> Arc<Mutex<Vec<Rendered>>> {
        self.gst.log.clone()
    }
}

/// One pipeline per file, operated one after the other; the audio pipeline is the position.
struct Naive {
    info: MeetingInfo,
    master: Arc<Timing>,
    pipelines: Vec<GstMeeting>,
    log: Arc<Mutex<Vec<Rendered>>>,
    rate: f64,
    playing: bool,
}

impl Naive {
    fn open(info: &MeetingInfo, tracks: &[&str]) -> Result<Naive> {
        let log: Arc<Mutex<Vec<Rendered>>> = Arc::default();
        let audio =
            info.tracks.iter().find(|t| t.kind == tandem::manifest::TrackKind::Audio).context("no audio")?;
        let options = GstOptions { audio_samples: true, log: log.clone(), ..GstOptions::local() };
        let first = GstMeeting::open(std::slice::from_ref(audio), info.duration, options)?;
        let master = first.timing();
        let mut naive =
            Naive { info: info.clone(), master, pipelines: vec![first], log, rate: 1.0, playing: false };
        for name in tracks.iter().filter(|n| **n != &*audio.name) {
            naive.add(name)?;
        }
        Ok(naive)
    }

    fn add(&mut self, name: &str) -> Result<&GstMeeting> {
        let track: Track =
            self.info.tracks.iter().find(|t| &*t.name == name).context("no such track")?.clone();
        let options = GstOptions {
            audio_samples: true,
            log: self.log.clone(),
            position_from: Some(self.master.clone()),
            ..GstOptions::local()
        };
        self.pipelines.push(GstMeeting::open(&[track], self.info.duration, options)?);
        self.pipelines.last().context("just pushed")
    }

    fn position(&self) -> MediaTime {
        self.master.position().unwrap_or(MediaTime::ZERO)
    }
}

impl Playback for Naive {
    fn play(&mut self) -> Result<()> {
        self.playing = true;
        self.pipelines.iter().try_for_each(GstMeeting::play)
    }
    fn pause(&mut self) -> Result<()> {
        self.playing = false;
        self.pipelines.iter().try_for_each(GstMeeting::pause)
    }
    fn seek(&mut self, t: MediaTime) -> Result<()> {
        for p in &self.pipelines {
            p.seek_begin(t, gst::SeekFlags::ACCURATE, self.rate)?;
        }
        self.pipelines.iter().try_for_each(GstMeeting::seek_finish)
    }
    fn set_rate(&mut self, rate: f64) -> Result<()> {
        self.rate = rate;
        let at = self.position();
        self.seek(at)
    }
    fn subscribe(&mut self, track: &str) -> Result<bool> {
        let (at, rate, playing) = (self.position(), self.rate, self.playing);
        let p = self.add(track)?;
        p.seek(at, gst::SeekFlags::ACCURATE, rate)?;
        if playing {
            p.play()?;
        }
        Ok(true)
    }
    fn log(&self) -> Arc<Mutex<Vec<Rendered>>> {
        self.log.clone()
    }
}

/// Skews of one stretch, in ms.
#[derive(Debug, Default, Clone)]
struct Skews {
    frames: Vec<f64>,
    between: Vec<f64>,
    clicks: Vec<f64>,
    /// Signed frame skews (for drift).
    signed: Vec<f64>,
}

impl Skews {
    fn extend(&mut self, other: &Skews) {
        self.frames.extend(&other.frames);
        self.between.extend(&other.between);
        self.clicks.extend(&other.clicks);
        self.signed.extend(&other.signed);
    }

    fn json(&self) -> serde_json::Value {
        let s = |v: &[f64]| json!({"n": v.len(), "p50": quantile_f(v, 0.5), "p95": quantile_f(v, 0.95), "max": quantile_f(v, 1.0)});
        json!({"frames": s(&self.frames), "between_tracks": s(&self.between), "audio_clicks": s(&self.clicks)})
    }

    fn line(&self) -> String {
        let s = |v: &[f64]| {
            format!("{:>5.1} {:>6.1} {:>6.1}", quantile_f(v, 0.5), quantile_f(v, 0.95), quantile_f(v, 1.0))
        };
        format!(
            "{:>5} frames {} | between {} | {:>3} clicks {}",
            self.frames.len(),
            s(&self.frames),
            s(&self.between),
            self.clicks.len(),
            s(&self.clicks)
        )
    }
}

fn skews(entries: &[Rendered]) -> Skews {
    let mut out = Skews::default();
    let mut latest: BTreeMap<Arc<str>, (std::time::Instant, f64)> = BTreeMap::new();
    let mut last_click: Option<f64> = None;
    let entries: Vec<&Rendered> = entries.iter().filter(|r| !r.preroll).collect();
    for (n, r) in entries.iter().enumerate() {
        let Some(position) = r.position else { continue };
        let pos_ms = position.as_nanos() as f64 / 1e6;
        if r.video {
            let Some(stamp) = r.stamp else { continue };
            let skew = pos_ms - f64::from(stamp);
            out.frames.push(skew.abs());
            out.signed.push(skew);
            for (track, (at, other)) in &latest {
                if *track != r.track && r.at.duration_since(*at) < Duration::from_millis(250) {
                    out.between.push((skew - other).abs());
                }
            }
            latest.insert(r.track.clone(), (r.at, skew));
        } else if r.rate > 0 && !r.mono.is_empty() {
            // Meeting ms per sample: 1/rate at 1x; at 1.5x (time-stretched audio) the next
            // contiguous buffer's start says how much meeting time these samples cover.
            let mut step = 1000.0 / f64::from(r.rate);
            let next = entries[n + 1..].iter().find(|e| !e.video && e.track == r.track && e.gen == r.gen);
            if let (Some(this), Some(next)) = (r.pts, next.and_then(|e| e.pts)) {
                let covered = (next.as_nanos() - this.as_nanos()) as f64 / 1e6;
                if covered > 0.0 && covered < 3.0 * r.mono.len() as f64 * step {
                    step = covered / r.mono.len() as f64;
                }
            }
            for i in audio::find_clicks(&r.mono, r.rate) {
                let at = pos_ms + i as f64 * step;
                // A click lasts a few ms and may straddle buffers: its start only.
                if last_click.is_some_and(|l| at - l < 400.0) {
                    continue;
                }
                last_click = Some(at);
                out.clicks.push((at - (at / 1000.0).round() * 1000.0).abs());
            }
        }
    }
    out
}

/// The scenario durations, shortened for the smoke run.
fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(if smoke() { s * 0.25 } else { s })
}

/// Runs the scenarios on `p`; returns skews per scenario.
fn scenarios(p: &mut dyn Playback, seeks: &[MediaTime]) -> Result<Vec<(&'static str, Skews)>> {
    let log = p.log();
    let mut out = Vec::new();
    let mut stretch = |name: &'static str, mark: usize| {
        let s = skews(&ours::since(&log, mark));
        out.push((name, s));
    };
    p.seek(MediaTime::from_secs(12))?;
    p.play()?;
    let mark = ours::mark(&log);
    std::thread::sleep(secs(6.0));
    stretch("steady play", mark);

    let mark = ours::mark(&log);
    for &t in seeks {
        p.seek(t)?;
        std::thread::sleep(secs(2.0));
    }
    stretch("after seeks", mark);

    p.seek(MediaTime::from_secs(12))?;
    let mark = ours::mark(&log);
    for _ in 0..5 {
        std::thread::sleep(secs(1.0));
        p.pause()?;
        std::thread::sleep(secs(0.3));
        p.play()?;
    }
    std::thread::sleep(secs(1.0));
    stretch("pause/resume", mark);

    p.seek(MediaTime::from_secs(14))?;
    let mark = ours::mark(&log);
    p.set_rate(1.5)?;
    std::thread::sleep(secs(4.0));
    stretch("1.5x", mark);
    p.set_rate(1.0)?;
    p.pause()?;
    Ok(out)
}

/// Rates of the sweep: the player's range, 1x aside.
fn sweep_rates() -> &'static [f64] {
    if smoke() {
        &[0.75, 1.5]
    } else {
        &[0.5, 0.75, 1.25, 1.5, 2.0]
    }
}

/// Signed skews (ms, + late) of the clicks in time-stretched audio played at `rate`: a click
/// plays when the position clock reaches its buffer (`position`, read when the sink hands it
/// over) plus its offset in the buffer, `rate` meeting seconds per second of samples (the stamps
/// are not used: scaletempo's own are what is being judged).
fn stretched_clicks(entries: &[Rendered], rate: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut last: Option<f64> = None;
    for r in entries.iter().filter(|r| !r.video && !r.preroll && r.rate > 0) {
        let Some(position) = r.position else { continue };
        for i in audio::find_clicks(&r.mono, r.rate) {
            let at = position.as_nanos() as f64 / 1e6 + i as f64 * 1000.0 * rate / f64::from(r.rate);
            // A click lasts a few ms and may straddle buffers: its start only.
            if last.is_some_and(|l| at - l < 400.0) {
                continue;
            }
            last = Some(at);
            out.push(at - (at / 1000.0).round() * 1000.0);
        }
    }
    out
}

/// Audio clicks at each rate of the sweep: the rate changed while playing, then a seek at that
/// rate, each played for about 8 clicks. Signed skews per rate.
fn rate_sweep(p: &mut dyn Playback) -> Result<Vec<(f64, Vec<f64>)>> {
    let log = p.log();
    let mut out = Vec::new();
    for &rate in sweep_rates() {
        let stretch = secs(8.0 / rate + 0.5);
        p.seek(MediaTime::from_millis(13_700))?;
        p.play()?;
        std::thread::sleep(secs(0.6));
        let mark = ours::mark(&log);
        p.set_rate(rate)?;
        std::thread::sleep(stretch);
        let mut skews = stretched_clicks(&ours::since(&log, mark), rate);
        let mark = ours::mark(&log);
        p.seek(MediaTime::from_millis(31_300))?;
        std::thread::sleep(stretch);
        skews.extend(stretched_clicks(&ours::since(&log, mark), rate));
        p.pause()?;
        p.set_rate(1.0)?;
        out.push((rate, skews));
    }
    Ok(out)
}

/// p95 of |skew|, and the json of a sweep's skews.
fn abs_p95(skews: &[f64]) -> f64 {
    quantile_f(&skews.iter().map(|s| s.abs()).collect::<Vec<_>>(), 0.95)
}

fn sweep_json(sweep: &[(f64, Vec<f64>)]) -> serde_json::Value {
    let rows: serde_json::Map<String, serde_json::Value> = sweep
        .iter()
        .map(|(rate, skews)| {
            let abs: Vec<f64> = skews.iter().map(|s| s.abs()).collect();
            let mean = skews.iter().sum::<f64>() / skews.len().max(1) as f64;
            let row = json!({"n": skews.len(), "mean_signed": mean, "p50": quantile_f(&abs, 0.5),
                "p95": quantile_f(&abs, 0.95), "max": quantile_f(&abs, 1.0)});
            (format!("{rate}x"), row)
        })
        .collect();
    serde_json::Value::Object(rows)
}

/// Subscribing the two other cameras while playing, on a player opened with alice and audio.
fn subscribe(p: &mut dyn Playback) -> Result<Option<Skews>> {
    let log = p.log();
    p.seek(MediaTime::from_secs(12))?;
    p.play()?;
    std::thread::sleep(secs(1.0));
    let mark = ours::mark(&log);
    for track in ["bob_video", "screen_share"] {
        if !p.subscribe(track)? {
            return Ok(None);
        }
    }
    std::thread::sleep(secs(3.0));
    p.pause()?;
    Ok(Some(skews(&ours::since(&log, mark))))
}

/// The median signed skew at 5 %, 50 % and 95 % of the meeting; max minus min.
fn drift(p: &mut dyn Playback, duration: MediaTime) -> Result<(f64, Vec<f64>)> {
    let log = p.log();
    let mut medians = Vec::new();
    for pct in [5, 50, 95] {
        p.seek(MediaTime::from_nanos(duration.as_nanos() / 100 * pct))?;
        p.play()?;
        let mark = ours::mark(&log);
        std::thread::sleep(secs(4.0));
        p.pause()?;
        medians.push(quantile_f(&skews(&ours::since(&log, mark)).signed, 0.5));
    }
    let max = medians.iter().copied().fold(f64::MIN, f64::max);
    let min = medians.iter().copied().fold(f64::MAX, f64::min);
    Ok((max - min, medians))
}

fn main() -> Result<()> {
    if !tandem_benches::invoked_as_bench() {
        return Ok(());
    }
    gst::init()?;
    let minutes = bench_minutes();
    let long = long_meeting(&meetings_dir(), Variant::Standard, minutes)?;
    let dir = fixture_meeting();
    let info = MeetingInfo::load(&dir)?;
    let seeks: Vec<MediaTime> = [31_300, 7_900, 42_100, 18_600, 26_400]
        .iter()
        .take(if smoke() { 2 } else { 5 })
        .map(|&ms| MediaTime::from_millis(ms))
        .collect();
    let all: Vec<&str> = info.tracks.iter().map(|t| &*t.name).collect();

    let mut results: BTreeMap<&str, Vec<(&'static str, Skews)>> = BTreeMap::new();
    println!("sync: |position - stamp| in ms, p50 p95 max: video frames | between tracks | audio clicks");
    let mut run = |name: &'static str, p: &mut dyn Playback| -> Result<()> {
        let rows = scenarios(p, &seeks)?;
        for (scenario, s) in &rows {
            println!("{name:<10} {scenario:<14} {}", s.line());
        }
        results.insert(name, rows);
        Ok(())
    };
    run("ours", &mut open_ours(&dir, None)?)?;
    run("naive", &mut Naive::open(&info, &all)?)?;
    let single = GstOptions { audio_samples: true, ..GstOptions::local() };
    run("gstreamer", &mut Single { gst: GstMeeting::open(&info.tracks, info.duration, single)?, rate: 1.0 })?;

    let sub_ours = subscribe(&mut open_ours(&dir, Some(vec!["alice_video".into(), "mixed_audio".into()]))?)?;
    let sub_naive = subscribe(&mut Naive::open(&info, &["alice_video", "mixed_audio"])?)?;
    for (name, s) in [("ours", &sub_ours), ("naive", &sub_naive)] {
        if let Some(s) = s {
            println!("{name:<10} {:<14} {}", "subscribe", s.line());
            results.entry(name).or_default().push(("subscribe", s.clone()));
        }
    }

    println!("audio clicks at each rate, |position - second| in ms (n p50 p95 max, mean signed):");
    let sweep_ours = rate_sweep(&mut open_ours(&dir, Some(vec!["mixed_audio".into()]))?)?;
    let stretched = GstOptions { audio_samples: true, scaletempo: true, ..GstOptions::local() };
    let audio_only: Vec<Track> = info.tracks.iter().filter(|t| &*t.name == "mixed_audio").cloned().collect();
    let sweep_gst =
        rate_sweep(&mut Single { gst: GstMeeting::open(&audio_only, info.duration, stretched)?, rate: 1.0 })?;
    for (name, sweep) in [("ours", &sweep_ours), ("gst+tempo", &sweep_gst)] {
        for (rate, skews) in sweep {
            let abs: Vec<f64> = skews.iter().map(|s| s.abs()).collect();
            let mean = skews.iter().sum::<f64>() / skews.len().max(1) as f64;
            println!(
                "{name:<10} {:<14} {:>3} clicks {:>5.1} {:>6.1} {:>6.1} mean {mean:>+5.1}",
                format!("{rate}x"),
                abs.len(),
                quantile_f(&abs, 0.5),
                quantile_f(&abs, 0.95),
                quantile_f(&abs, 1.0)
            );
        }
    }

    let long_info = MeetingInfo::load(&long)?;
    let (ours_drift, ours_medians) = drift(&mut open_ours(&long, None)?, long_info.duration)?;
    let single = GstOptions { audio_samples: true, ..GstOptions::local() };
    let mut gst_long =
        Single { gst: GstMeeting::open(&long_info.tracks, long_info.duration, single)?, rate: 1.0 };
    let (gst_drift, gst_medians) = drift(&mut gst_long, long_info.duration)?;
    println!("drift over {minutes} min (median skew at 5/50/95 %): ours {ours_medians:.1?} -> {ours_drift:.1} ms; gstreamer {gst_medians:.1?} -> {gst_drift:.1} ms");

    let pooled = |name: &str| {
        let mut all = Skews::default();
        for (_, s) in results.get(name).into_iter().flatten() {
            all.extend(s);
        }
        all
    };
    let (o, n, g) = (pooled("ours"), pooled("naive"), pooled("gstreamer"));
    for (name, s) in [("ours", &o), ("naive", &n), ("gstreamer", &g)] {
        anyhow::ensure!(!s.frames.is_empty(), "{name}: no frames with a stamp and a position");
        println!("{name:<10} {:<14} {}", "all", s.line());
    }
    let p95 = |v: &[f64]| quantile_f(v, 0.95);
    let figures = vec![
        Figure::new(
            "sync_skew_p95",
            "ms",
            p95(&o.frames),
            p95(&n.frames),
            "naive player: one GStreamer pipeline per file",
        )
        .goal_absolute(5.0),
        Figure::new(
            "sync_skew_p95_vs_gst_single",
            "ms",
            p95(&o.frames),
            p95(&g.frames),
            "GStreamer single pipeline (no subscribe)",
        ),
        Figure::new(
            "sync_between_tracks_p95",
            "ms",
            p95(&o.between),
            p95(&n.between),
            "naive player: one GStreamer pipeline per file",
        ),
        Figure::new(
            "sync_audio_click_p95",
            "ms",
            p95(&o.clicks),
            p95(&n.clicks),
            "naive player: one GStreamer pipeline per file",
        ),
        Figure::new("sync_drift_long", "ms", ours_drift, gst_drift, "GStreamer single pipeline"),
    ];
    // The goal at each rate: p95 within 10 ms and no worse than GStreamer with scaletempo.
    let mut figures = figures;
    for ((rate, o), (_, g)) in sweep_ours.iter().zip(&sweep_gst) {
        let baseline = abs_p95(g);
        figures.push(
            Figure::new(
                &format!("sync_audio_click_p95_at_{rate}x"),
                "ms",
                abs_p95(o),
                baseline,
                "GStreamer single pipeline with scaletempo",
            )
            .goal((10.0 / baseline).min(1.0)),
        );
    }
    let mut details = serde_json::Map::new();
    for (name, rows) in &results {
        let rows: serde_json::Map<String, serde_json::Value> =
            rows.iter().map(|(s, k)| (s.to_string(), k.json())).collect();
        details.insert(name.to_string(), serde_json::Value::Object(rows));
    }
    details.insert(
        "rates".into(),
        json!({"ours": sweep_json(&sweep_ours), "gst_scaletempo": sweep_json(&sweep_gst)}),
    );
    details.insert(
        "drift".into(),
        json!({"minutes": minutes, "ours_medians": ours_medians, "gst_medians": gst_medians}),
    );
    write_part("sync", &figures, serde_json::Value::Object(details))
}
