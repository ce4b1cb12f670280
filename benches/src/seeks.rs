//! Seeks timed from what a player renders, shared by the `seek` and `link` benches.
//!
//! A seek is timed from just before `seek()` is called until every video track active at the
//! target has handed over the frame whose stamp (read from the pixels) is the one on screen at
//! the target, and the audio has played its first buffer reaching past the target; preview
//! (key-unit for GStreamer): until every such track has shown a frame at or before the target,
//! from its keyframe on. Players play during the seeks; a seek starts 150 ms after the last
//! one landed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use gstreamer as gst;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tandem::manifest::TrackKind;
use tandem::player::{Meeting, Player, PlayerOptions, SeekMode};
use tandem::MediaTime;

use crate::gst_play::{GstMeeting, GstOptions, Rendered};
use crate::nginx::Nginx;
use crate::tracks::{MeetingInfo, Track};
use crate::{ms, ours, quantile, summary};

pub const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Accurate,
    Preview,
}

/// One configuration's seeks.
#[derive(Debug, Default)]
pub struct Runs {
    pub times: Vec<Duration>,
    pub bytes: Vec<u64>,
    /// Seeks that did not land within the timeout.
    pub timeouts: usize,
    /// Accurate seeks whose first frame on some track was not the target's.
    pub wrong_first: usize,
    /// Seeks some track's demuxer refused (GStreamer).
    pub refused: usize,
    /// Per seek: how much later than the target the first audio played starts (ms).
    pub audio_late: Vec<f64>,
}

impl Runs {
    pub fn line(&self, label: &str) -> String {
        let (p50, p95, max) = summary(&self.times);
        let mut bytes = self.bytes.clone();
        bytes.sort();
        let bytes_p50 = bytes.get(bytes.len() / 2).copied().unwrap_or(0);
        format!(
            "{label:<34} n={:>4} p50 {p50:>7.1} ms  p95 {p95:>7.1} ms  max {max:>7.1} ms  bytes p50 {:>8.1} KiB  timeouts {}  wrong first frame {}  refused {}  audio late {} (max {:.1} ms)",
            self.times.len(),
            bytes_p50 as f64 / 1024.0,
            self.timeouts,
            self.wrong_first,
            self.refused,
            self.late_count(),
            self.audio_late.iter().copied().fold(0.0, f64::max)
        )
    }

    pub fn json(&self) -> serde_json::Value {
        let (p50, p95, max) = summary(&self.times);
        let mut bytes = self.bytes.clone();
        bytes.sort();
        json!({"n": self.times.len(), "p50_ms": p50, "p95_ms": p95, "max_ms": max,
               "bytes_p50": bytes.get(bytes.len() / 2), "timeouts": self.timeouts, "wrong_first_frame": self.wrong_first, "refused": self.refused,
               "audio_started_late": self.late_count(), "audio_late_max_ms": self.audio_late.iter().copied().fold(0.0, f64::max)})
    }

    /// Seeks whose audio started more than 2 ms after the target.
    pub fn late_count(&self) -> usize {
        self.audio_late.iter().filter(|&&l| l > 2.0).count()
    }

    pub fn p50(&self) -> f64 {
        ms(quantile(&self.times, 0.5))
    }
    pub fn p95(&self) -> f64 {
        ms(quantile(&self.times, 0.95))
    }
    pub fn bytes_p50(&self) -> f64 {
        let mut bytes = self.bytes.clone();
        bytes.sort();
        bytes.get(bytes.len() / 2).copied().unwrap_or(0) as f64
    }
}

/// What a seek's renders say, judged from the log alone.
#[derive(Debug, Default)]
pub struct Landing {
    /// When every track showed the target (None: not yet).
    pub at: Option<Instant>,
    /// Some track's first frame was not the target's (accurate mode).
    pub wrong: bool,
    /// How much later than the target the first audio played starts (ms; 0 when it covers it).
    pub audio_late_ms: f64,
}

/// Whether the seek numbered `gen` to `t` landed.
pub fn landed(
    log: &[Rendered],
    gen: u64,
    t: MediaTime,
    videos: &[&Track],
    mode: Mode,
    audio: bool,
) -> Landing {
    let mut last = None::<Instant>;
    let mut wrong = false;
    let mut audio_late_ms = 0.0;
    for video in videos {
        let (Some(expected), Some(key)) = (video.expected_stamp(t), video.keyframe_stamp(t)) else {
            continue;
        };
        let mut frames = log.iter().filter(|r| r.gen == gen && r.video && r.track == video.name);
        let hit = match mode {
            Mode::Accurate => {
                let mut first = true;
                frames.find(|r| {
                    let ok = r.stamp.is_some_and(|s| (i64::from(s) - expected).abs() <= 1);
                    if first && !ok && std::env::var_os("TANDEM_BENCH_VERBOSE").is_some() {
                        eprintln!(
                            "{} at {t}: first frame {:?} (preroll {}), expected {expected}",
                            video.name, r.stamp, r.preroll
                        );
                    }
                    wrong |= first && !ok;
                    first = false;
                    ok
                })
            }
            Mode::Preview => {
                frames.find(|r| r.stamp.is_some_and(|s| (key - 1..=expected + 1).contains(&i64::from(s))))
            }
        };
        match hit {
            Some(r) => last = Some(last.map_or(r.at, |l| l.max(r.at))),
            None => return Landing { at: None, wrong, audio_late_ms },
        }
    }
    if mode == Mode::Accurate && audio {
        // The first audio played after the seek that reaches past the target (ours hands
        // audio over only when played; a prerolled buffer is not heard). It should cover the
        // target; how much later it starts is kept beside the time.
        let audio =
            log.iter().find(|r| r.gen == gen && !r.video && !r.preroll && r.end.is_some_and(|e| e > t));
        match audio {
            Some(r) => {
                last = Some(last.map_or(r.at, |l| l.max(r.at)));
                let start = r.pts.unwrap_or(t);
                audio_late_ms = (start.as_nanos() - t.as_nanos()).max(0) as f64 / 1e6;
            }
            None => return Landing { at: None, wrong, audio_late_ms },
        }
    }
    Landing { at: last, wrong, audio_late_ms }
}

/// What each track showed after a seek that did not land (`TANDEM_BENCH_VERBOSE`).
pub fn explain(log: &[Rendered], gen: u64, t: MediaTime, videos: &[&Track]) {
    for video in videos {
        let shown: Vec<_> = log
            .iter()
            .filter(|r| r.gen == gen && r.video && r.track == video.name)
            .take(4)
            .map(|r| (r.stamp, r.pts.map(|p| p.as_millis()), r.preroll))
            .collect();
        eprintln!(
            "  {}: expected {:?} (keyframe {:?}), shown {shown:?}",
            video.name,
            video.expected_stamp(t),
            video.keyframe_stamp(t)
        );
    }
    let audio: Vec<_> = log
        .iter()
        .filter(|r| r.gen == gen && !r.video)
        .take(3)
        .map(|r| (r.pts.map(|p| p.as_nanos()), r.end.map(|p| p.as_nanos()), r.preroll))
        .collect();
    eprintln!("  audio: {audio:?}");
}

pub fn wait_landed(
    log: &Mutex<Vec<Rendered>>,
    mark: usize,
    gen: u64,
    t: MediaTime,
    videos: &[&Track],
    mode: Mode,
    audio: bool,
) -> Landing {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = ours::since(log, mark);
        let landing = landed(&seen, gen, t, videos, mode, audio);
        if landing.at.is_some() || Instant::now() > deadline {
            return landing;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Our player on `meeting`, playing, through `targets`.
pub fn run_ours(meeting: Meeting, info: &MeetingInfo, targets: &[MediaTime], mode: Mode) -> Result<Runs> {
    let log: Arc<Mutex<Vec<Rendered>>> = Arc::default();
    let player = Player::open(
        meeting,
        PlayerOptions { output: ours::output(log.clone(), false), ..Default::default() },
    )?;
    let names: Vec<String> = info.tracks.iter().map(|t| t.name.to_string()).collect();
    let fetched =
        || names.iter().filter_map(|n| player.track_stats(n)).map(|s| s.fetched_bytes()).sum::<u64>();
    player.play()?;
    std::thread::sleep(Duration::from_millis(500));
    let mut runs = Runs::default();
    for &t in targets {
        let videos = info.active_videos(t);
        let mark = ours::mark(&log);
        let bytes = fetched();
        let start = Instant::now();
        player.seek(t, if mode == Mode::Accurate { SeekMode::Accurate } else { SeekMode::Preview })?;
        let gen = player.seek_count();
        let Landing { at, wrong, audio_late_ms } = wait_landed(&log, mark, gen, t, &videos, mode, true);
        runs.wrong_first += usize::from(wrong);
        runs.audio_late.push(audio_late_ms);
        match at {
            Some(at) => {
                runs.times.push(at.duration_since(start));
                runs.bytes.push(fetched() - bytes);
                if std::env::var_os("TANDEM_BENCH_VERBOSE").is_some() {
                    let seen = ours::since(&log, mark);
                    let firsts: Vec<String> = seen
                        .iter()
                        .filter(|r| r.gen == gen && !r.preroll)
                        .fold(Vec::<&Rendered>::new(), |mut firsts, r| {
                            if !firsts.iter().any(|f| f.track == r.track) {
                                firsts.push(r);
                            }
                            firsts
                        })
                        .iter()
                        .map(|r| format!("{} {:?}", r.track, r.at.duration_since(start)))
                        .collect();
                    eprintln!(
                        "ours: seek to {t} ({mode:?}) landed in {:?}; first played: {}",
                        at.duration_since(start),
                        firsts.join(", ")
                    );
                }
            }
            None => {
                runs.timeouts += 1;
                eprintln!("ours: seek to {t} ({mode:?}) did not land in {TIMEOUT:?}");
                if std::env::var_os("TANDEM_BENCH_VERBOSE").is_some() {
                    explain(&ours::since(&log, mark), gen, t, &videos);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    Ok(runs)
}

/// GStreamer's single pipeline on the same files, playing, through `targets`.
pub fn run_gst(
    info: &MeetingInfo,
    options: GstOptions,
    nginx: Option<&Nginx>,
    targets: &[MediaTime],
    mode: Mode,
) -> Result<Runs> {
    let log = options.log.clone();
    let gst = GstMeeting::open(&info.tracks, info.duration, options)?;
    gst.play()?;
    std::thread::sleep(Duration::from_millis(500));
    let flags = match mode {
        Mode::Accurate => gst::SeekFlags::ACCURATE,
        Mode::Preview => gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE,
    };
    let mut runs = Runs::default();
    for &t in targets {
        let mut videos = info.active_videos(t);
        let mark = ours::mark(&log);
        let served = nginx.map(|n| n.served().1).unwrap_or(0);
        let start = Instant::now();
        let refused = gst.seek(t, flags, 1.0)?;
        if !refused.is_empty() {
            // Over HTTP, matroskademux refuses every seek in a file whose SeekHead does not
            // locate the Cues (push mode cannot look for them): those tracks stay where they
            // were, and the seek is timed on the others: less work than ours does.
            runs.refused += 1;
            if std::env::var_os("TANDEM_BENCH_VERBOSE").is_some() {
                eprintln!("gstreamer: {refused:?} refused the seek to {t} ({mode:?})");
            }
            videos.retain(|v| !refused.contains(&v.name));
        }
        let audio = info.tracks.iter().any(|a| a.kind == TrackKind::Audio && !refused.contains(&a.name));
        let Landing { at, wrong, audio_late_ms } =
            wait_landed(&log, mark, gst.seek_count(), t, &videos, mode, audio);
        runs.wrong_first += usize::from(wrong);
        runs.audio_late.push(audio_late_ms);
        match at {
            Some(at) => {
                runs.times.push(at.duration_since(start));
                runs.bytes.push(nginx.map(|n| n.served().1).unwrap_or(0).saturating_sub(served));
            }
            None => {
                runs.timeouts += 1;
                eprintln!("gstreamer: seek to {t} ({mode:?}) did not land in {TIMEOUT:?}");
            }
        }
        if let Some(e) = gst.error() {
            anyhow::bail!("gstreamer baseline: {e}");
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    Ok(runs)
}

/// The HTTP baseline's name, saying when it timed fewer tracks than ours.
pub fn http_name(runs: &Runs) -> String {
    let mut name = "GStreamer uridecodebin, HTTP ranges from nginx".to_string();
    if runs.refused > 0 {
        name.push_str(&format!(
            " (a demuxer refused {} of {} seeks: timed on the tracks that seeked)",
            runs.refused,
            runs.times.len() + runs.timeouts
        ));
    }
    name
}

pub fn targets(info: &MeetingInfo, n: usize, seed: u64) -> Vec<MediaTime> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let end = info.duration.as_millis() - 1500;
    (0..n).map(|_| MediaTime::from_millis(rng.gen_range(0..end))).collect()
}
