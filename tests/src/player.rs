//! Helpers for player tests: an independent oracle of what each video track shows at a
//! meeting time (GStreamer's own `decodebin` decoding the file, the stamp in every frame), and
//! recorders that keep what the player's callbacks hand over.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use tandem::manifest::{Manifest, TrackKind};
use tandem::player::{AudioChunk, Output, VideoFrame};
use tandem::MediaTime;
use tandem_fixtures::{audio, decode, stamp};

/// Frames of one video track on the meeting timeline: (meeting time, stamp), sorted.
#[derive(Debug, Clone)]
pub struct TrackFrames {
    pub frames: Vec<(MediaTime, u32)>,
    /// Active spans on the meeting timeline.
    pub spans: Vec<(MediaTime, Option<MediaTime>)>,
}

impl TrackFrames {
    /// The stamp of the frame on screen at meeting time `t`, if the track shows one.
    pub fn on_screen_at(&self, t: MediaTime) -> Option<u32> {
        let active = self.spans.iter().any(|(s, e)| t >= *s && e.is_none_or(|e| t < e));
        if !active {
            return None;
        }
        self.frames.iter().take_while(|(pts, _)| *pts <= t).last().map(|(_, s)| *s)
    }
}

/// The oracle for every video track of a meeting folder, decoded once.
pub fn video_oracle(dir: &Path) -> Result<HashMap<String, TrackFrames>> {
    let manifest = Manifest::load(dir)?;
    let mut out = HashMap::new();
    for track in manifest.tracks.iter().filter(|t| t.kind == TrackKind::Video) {
        let spans: Vec<(MediaTime, Option<MediaTime>)> =
            track.segments.iter().map(|s| (s.start(), s.end())).collect();
        let mut frames = Vec::new();
        decode::for_each_video_frame(&dir.join(track.file()), |frame| {
            let media = MediaTime::from_nanos(frame.pts.nseconds() as i64);
            let Some(stamp) = stamp::read_stamp(&frame.luma, frame.width, frame.width, frame.height) else {
                return;
            };
            for segment in &track.segments {
                let media_start = MediaTime::from_millis(segment.media_start_ms as i64);
                let len = segment.end().map(|e| e.saturating_sub(segment.start()));
                let rel = media.saturating_sub(media_start);
                if media >= media_start.saturating_sub(MediaTime::from_millis(1))
                    && len.is_none_or(|l| rel < l)
                {
                    frames.push((rel.saturating_add(segment.start()), stamp));
                }
            }
        })
        .with_context(|| format!("decoding {}", track.name))?;
        frames.sort();
        out.insert(track.name.clone(), TrackFrames { frames, spans });
    }
    Ok(out)
}

/// A frame as the test saw it.
#[derive(Debug, Clone)]
pub struct SeenFrame {
    pub track: Arc<str>,
    pub stamp: Option<u32>,
    pub pts: MediaTime,
    pub clock: Option<MediaTime>,
    pub preroll: bool,
    pub seek: u64,
    pub at: Instant,
}

/// Audio as the test saw it: mono samples from `pts`.
#[derive(Debug, Clone)]
pub struct SeenAudio {
    pub track: Arc<str>,
    pub pts: MediaTime,
    /// The meeting time of the pipeline clock when the chunk was handed over (it plays then).
    pub clock: Option<MediaTime>,
    pub rate: u32,
    pub mono: Vec<f32>,
    pub seek: u64,
    pub at: Instant,
}

/// Keeps what the callbacks deliver.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    pub frames: Arc<Mutex<Vec<SeenFrame>>>,
    pub audio: Arc<Mutex<Vec<SeenAudio>>>,
}

impl Recorder {
    pub fn output(&self) -> Output {
        let frames = self.frames.clone();
        let audio_out = self.audio.clone();
        Output::Callbacks {
            video: Some(Arc::new(move |f: &VideoFrame| {
                let stamp = stamp::read_stamp(f.luma(), f.stride, f.width as usize, f.height as usize);
                let seen = SeenFrame {
                    track: f.track.clone(),
                    stamp,
                    pts: f.pts,
                    clock: f.clock,
                    preroll: f.preroll,
                    seek: f.seek,
                    at: Instant::now(),
                };
                frames.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
            })),
            audio: Some(Arc::new(move |a: &AudioChunk| {
                let mono = audio::mono(&a.to_f32(), a.channels as usize);
                let seen = SeenAudio {
                    track: a.track.clone(),
                    pts: a.pts,
                    clock: a.clock,
                    rate: a.rate,
                    mono,
                    seek: a.seek,
                    at: Instant::now(),
                };
                audio_out.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
            })),
        }
    }

    /// Frames and audio seen from now on start at these marks.
    pub fn mark(&self) -> (usize, usize) {
        (self.frames.lock().map(|f| f.len()).unwrap_or(0), self.audio.lock().map(|a| a.len()).unwrap_or(0))
    }

    pub fn frames_since(&self, mark: usize) -> Vec<SeenFrame> {
        self.frames.lock().map(|f| f[mark.min(f.len())..].to_vec()).unwrap_or_default()
    }

    pub fn audio_since(&self, mark: usize) -> Vec<SeenAudio> {
        self.audio.lock().map(|a| a[mark.min(a.len())..].to_vec()).unwrap_or_default()
    }
}

/// Meeting times of clicks in `chunks` of one track (contiguous audio assumed per chunk).
pub fn click_times(chunks: &[SeenAudio]) -> Vec<MediaTime> {
    let mut out = Vec::new();
    let mut last: Option<MediaTime> = None;
    for chunk in chunks {
        for i in audio::find_clicks(&chunk.mono, chunk.rate) {
            let t = chunk
                .pts
                .saturating_add(MediaTime::from_ticks(i as i64, chunk.rate as u64).unwrap_or_default());
            // A click spans a few ms and may straddle chunks: keep its start only.
            if last.is_none_or(|l| t.saturating_sub(l) > MediaTime::from_millis(400)) {
                out.push(t);
                last = Some(t);
            }
        }
    }
    out
}

/// How far each click in `chunks` (one track, while playing at `rate`) played from its whole
/// second, in ms, signed (positive: late). A click plays when the clock reaches its chunk (the
/// chunk's `clock`) plus its offset into the chunk, `rate` meeting seconds per second of samples:
/// nothing here trusts the chunk's timestamp.
pub fn click_skews(chunks: &[SeenAudio], rate: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut last: Option<f64> = None;
    for chunk in chunks {
        let Some(clock) = chunk.clock else { continue };
        for i in audio::find_clicks(&chunk.mono, chunk.rate) {
            let at = clock.as_nanos() as f64 / 1e6 + i as f64 * 1000.0 * rate / f64::from(chunk.rate.max(1));
            // A click spans a few ms and may straddle chunks: keep its start only.
            if last.is_some_and(|l| at - l < 400.0) {
                continue;
            }
            last = Some(at);
            out.push(at - (at / 1000.0).round() * 1000.0);
        }
    }
    out
}
