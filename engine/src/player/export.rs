//! Export: a stretch of the meeting written to an MP4 (H.264 + AAC) as fast as the machine
//! allows, or one composed grid frame (a snapshot of what the window shows).
//!
//! ```text
//! Player (realtime = false, callbacks) ──frames, audio──> bounded channels (back-pressure)
//!   ──> pacer: one tick per output frame; per track the frame on screen at that instant,
//!       or a GAP while the track shows nothing (its name tile shows through)
//!   ──> appsrc per track ─> compositor (grid.rs) ─> x264enc ─┐
//!       appsrc per audio track ─> audiomixer ─> AAC encoder ─┴─> mp4mux ─> filesink
//! ```
//!
//! The player decodes exactly as it does for playback (same subscriptions, same accurate seek), so
//! a clip is in sync exactly as playback is: the pacer stamps the frame showing at meeting
//! time `T`, and the audio of `T`, at clip time `T - from`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_audio as gst_audio;
use gstreamer_video as gst_video;

use super::elements::{make, make_any};
use super::feeder::clock_time;
use super::grid;
use super::{
    AudioChunk, Meeting, Output, Player, PlayerError, PlayerEvent, PlayerOptions, SeekMode, TrackDesc,
    TrackStats, VideoFrame,
};
use crate::manifest::TrackKind;
use crate::time::MediaTime;

/// How long a track active at the cursor may deliver nothing before it is treated as frozen.
const STALL: Duration = Duration::from_secs(20);
/// Sample rate of the clip's audio.
const AUDIO_RATE: i32 = 48_000;
/// AAC encoders start with 1024 samples of priming, and mp4mux 1.22 writes no edit list to
/// skip them: the audio goes in that much early so every player hears it on time.
const AAC_PRIMING: MediaTime = MediaTime::from_nanos(1024 * 1_000_000_000 / AUDIO_RATE as i64);

/// What the clip shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportLayout {
    /// Every video track in the window's grid (1280x720).
    Grid,
    /// One video track at its own size.
    Track(String),
}

/// A stretch of a meeting to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub from: MediaTime,
    pub to: MediaTime,
    pub layout: ExportLayout,
    /// Frames per second of the clip.
    pub fps: u32,
}

impl ExportOptions {
    pub fn new(from: MediaTime, to: MediaTime, layout: ExportLayout) -> ExportOptions {
        ExportOptions { from, to, layout, fps: 30 }
    }
}

/// How far an export has come, in clip time.
#[derive(Debug, Clone, Copy)]
pub struct ExportProgress {
    pub done: MediaTime,
    pub total: MediaTime,
}

/// A composed frame as packed RGB.
#[derive(Debug, Clone)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// Writes `options.from..options.to` of `meeting` to `path` as an MP4: H.264 video (the grid
/// or one track) and the meeting's audio mixed into AAC. `progress` is called once per frame.
pub fn export_mp4(
    meeting: Meeting,
    options: &ExportOptions,
    path: &Path,
    progress: &mut dyn FnMut(ExportProgress),
) -> Result<(), PlayerError> {
    let mut session = Session::open(meeting, options, Target::Mp4(path))?;
    session.run(progress)?;
    session.finish()
}

/// The grid at meeting time `at`, composed as the window shows it.
pub fn compose_grid(meeting: Meeting, at: MediaTime) -> Result<RgbImage, PlayerError> {
    let mut options = ExportOptions::new(at, at, ExportLayout::Grid);
    options.to = at.saturating_add(MediaTime::from_nanos(1_000_000_000 / i64::from(options.fps)));
    let mut session = Session::open(meeting, &options, Target::Image)?;
    session.run(&mut |_| {})?;
    session.finish()?;
    let sink = session.image.take().ok_or_else(|| PlayerError::Gst("no image sink".into()))?;
    let sample = sink
        .try_pull_sample(gst::ClockTime::from_seconds(30))
        .ok_or_else(|| PlayerError::Gst("the grid produced no frame".into()))?;
    let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
        return Err(PlayerError::Gst("a grid frame without data".into()));
    };
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| PlayerError::Gst(e.to_string()))?;
    let map = buffer.map_readable().map_err(|e| PlayerError::Gst(e.to_string()))?;
    let (w, h) = (info.width() as usize, info.height() as usize);
    let stride = info.stride()[0] as usize;
    let mut rgb = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        rgb.extend_from_slice(map.get(row * stride..row * stride + w * 3).unwrap_or(&[]));
    }
    Ok(RgbImage { width: info.width(), height: info.height(), rgb })
}

enum Target<'a> {
    Mp4(&'a Path),
    Image,
}

/// One video track's frames on their way to the compositor.
struct VideoLane {
    desc: TrackDesc,
    stats: Arc<TrackStats>,
    frames: Receiver<VideoFrame>,
    current: Option<VideoFrame>,
    next: Option<VideoFrame>,
    appsrc: gst_app::AppSrc,
    size: (u32, u32),
    /// Delivered nothing for [`STALL`]: later ticks do not wait for it.
    dry: bool,
}

/// One audio track's samples on their way to the mixer.
struct AudioLane {
    desc: TrackDesc,
    stats: Arc<TrackStats>,
    chunks: Receiver<AudioChunk>,
    pending: Option<AudioChunk>,
    appsrc: gst_app::AppSrc,
    /// Sample rate and channels of the appsrc's caps.
    format: (u32, u32),
    /// The meeting time at clip time zero of the encoder's input.
    origin: MediaTime,
    /// Meeting time up to which the appsrc has samples or a gap.
    until: MediaTime,
    dry: bool,
}

struct Session {
    // Lanes go first: their receivers must be gone before the player stops its sinks.
    video: Vec<VideoLane>,
    audio: Vec<AudioLane>,
    pipeline: gst::Pipeline,
    image: Option<gst_app::AppSink>,
    player: Player,
    from: MediaTime,
    to: MediaTime,
    fps: u32,
}

use super::gst_err;

impl Session {
    fn open(meeting: Meeting, options: &ExportOptions, target: Target<'_>) -> Result<Session, PlayerError> {
        if options.to <= options.from {
            return Err(PlayerError::Gst(format!(
                "nothing to export from {} to {}",
                options.from, options.to
            )));
        }
        let videos: Vec<TrackDesc> = match &options.layout {
            ExportLayout::Grid => {
                meeting.tracks().iter().filter(|t| t.kind == TrackKind::Video).cloned().collect()
            }
            ExportLayout::Track(name) => {
                let desc = meeting.track(name).ok_or_else(|| PlayerError::unknown_track(name.clone()))?;
                if desc.kind != TrackKind::Video {
                    return Err(PlayerError::Unsupported {
                        track: name.clone(),
                        what: "not a video track".into(),
                    });
                }
                vec![desc.clone()]
            }
        };
        let audios: Vec<TrackDesc> = match target {
            Target::Mp4(_) => {
                meeting.tracks().iter().filter(|t| t.kind == TrackKind::Audio).cloned().collect()
            }
            Target::Image => Vec::new(),
        };
        // Frames and audio of the export's own seek only (not the preroll at zero before it).
        let wanted = Arc::new(AtomicU64::new(u64::MAX));
        let (video_tx, video_rx) = channels::<VideoFrame>(&videos, 8);
        let (audio_tx, audio_rx) = channels::<AudioChunk>(&audios, 64);
        let (seek_v, seek_a) = (wanted.clone(), wanted.clone());
        let output = Output::Callbacks {
            video: Some(Arc::new(move |f: &VideoFrame| {
                if f.seek == seek_v.load(Ordering::Relaxed) && !f.preroll {
                    if let Some(tx) = video_tx.get(&f.track) {
                        let _ = tx.send(f.clone());
                    }
                }
            })),
            audio: Some(Arc::new(move |c: &AudioChunk| {
                if c.seek == seek_a.load(Ordering::Relaxed) {
                    if let Some(tx) = audio_tx.get(&c.track) {
                        let _ = tx.send(c.clone());
                    }
                }
            })),
        };
        let subscribe = videos.iter().chain(&audios).map(|t| t.name.to_string()).collect();
        let player = Player::open(
            meeting,
            PlayerOptions { output, subscribe: Some(subscribe), realtime: false, ..PlayerOptions::default() },
        )?;
        let fps = options.fps.max(1);
        let frames = tick_count(options.to.saturating_sub(options.from), fps);
        let pipeline = gst::Pipeline::with_name("tandem-export");
        let compositor = grid::compositor()?;
        pipeline.add(&compositor).map_err(gst_err)?;
        let (size, places) = match &options.layout {
            ExportLayout::Grid => (grid::GRID_SIZE, grid::layout(videos.len())),
            ExportLayout::Track(name) => {
                let video = player.track_info(name).and_then(|i| i.video).ok_or_else(|| {
                    PlayerError::Unsupported {
                        track: name.clone(),
                        what: "no picture size in its index".into(),
                    }
                })?;
                let (w, h) = (video.width as i32 & !1, video.height as i32 & !1);
                ((w, h), vec![(0, 0, w, h)])
            }
        };
        let mut video = Vec::new();
        for ((desc, frames_rx), place) in videos.into_iter().zip(video_rx).zip(places) {
            let Some(info) = player.track_info(&desc.name).and_then(|i| i.video) else { continue };
            let size = (info.width, info.height);
            let appsrc = gst_app::AppSrc::builder()
                .caps(&i420_caps(size))
                .format(gst::Format::Time)
                .is_live(false)
                .block(true)
                .max_buffers(4)
                .build();
            let pads = grid::add_tile(
                &pipeline,
                &compositor,
                appsrc.upcast_ref(),
                &super::tile_label(&desc),
                false,
                fps as i32,
                Some(frames),
            )?;
            pads.place(Some(place));
            let stats = player.track_stats(&desc.name).unwrap_or_default();
            video.push(VideoLane {
                desc,
                stats,
                frames: frames_rx,
                current: None,
                next: None,
                appsrc,
                size,
                dry: false,
            });
        }
        let filter = make("capsfilter", String::new())?;
        filter.set_property(
            "caps",
            gst_video::VideoCapsBuilder::new()
                .format(gst_video::VideoFormat::I420)
                .width(size.0)
                .height(size.1)
                .pixel_aspect_ratio(gst::Fraction::new(1, 1))
                .framerate(gst::Fraction::new(fps as i32, 1))
                .build(),
        );
        let convert = make("videoconvert", String::new())?;
        pipeline.add_many([&filter, &convert]).map_err(gst_err)?;
        gst::Element::link_many([&compositor, &filter, &convert]).map_err(gst_err)?;
        let mut image = None;
        let mut audio = Vec::new();
        match target {
            Target::Image => {
                let sink = gst_app::AppSink::builder()
                    .caps(&gst_video::VideoCapsBuilder::new().format(gst_video::VideoFormat::Rgb).build())
                    .sync(false)
                    .max_buffers(1)
                    // The frame is pulled after the end: the end must not wait for that.
                    .wait_on_eos(false)
                    .build();
                pipeline.add(&sink).map_err(gst_err)?;
                convert.link(&sink).map_err(gst_err)?;
                image = Some(sink);
            }
            Target::Mp4(path) => {
                let encoder = make("x264enc", String::new())?;
                encoder.set_property_from_str("speed-preset", "veryfast");
                encoder.set_property("key-int-max", fps * 2);
                let mux = make("mp4mux", String::new())?;
                let sink = make("filesink", String::new())?;
                sink.set_property("location", path.to_string_lossy().to_string());
                encoder.set_property("trellis", false);
                // 8-bit 4:2:0, what every player plays (x264 would otherwise pick 10-bit).
                let format = make("capsfilter", String::new())?;
                format.set_property(
                    "caps",
                    gst_video::VideoCapsBuilder::new().format(gst_video::VideoFormat::I420).build(),
                );
                // Composing and encoding each get a thread.
                let queue = make("queue", String::new())?;
                pipeline.add_many([&format, &queue, &encoder, &mux, &sink]).map_err(gst_err)?;
                gst::Element::link_many([&convert, &format, &queue, &encoder, &mux, &sink])
                    .map_err(gst_err)?;
                if !audios.is_empty() {
                    let mixer = make("audiomixer", String::new())?;
                    let format = make("capsfilter", String::new())?;
                    format.set_property(
                        "caps",
                        gst_audio::AudioCapsBuilder::new().rate(AUDIO_RATE).channels(2).build(),
                    );
                    let mixed = make("audioconvert", String::new())?;
                    let aac = make_any(&["avenc_aac", "voaacenc"], String::new())?;
                    pipeline.add_many([&mixer, &format, &mixed, &aac]).map_err(gst_err)?;
                    gst::Element::link_many([&mixer, &format, &mixed, &aac, &mux]).map_err(gst_err)?;
                    for (desc, chunks) in audios.into_iter().zip(audio_rx) {
                        let format = player.track_info(&desc.name).and_then(|i| i.audio);
                        let (rate, channels) = format.map_or((48_000, 2), |a| (a.sample_rate, a.channels));
                        let appsrc = gst_app::AppSrc::builder()
                            .caps(&pcm_caps(rate, channels))
                            .format(gst::Format::Time)
                            .is_live(false)
                            .block(true)
                            .max_bytes(u64::from(rate) * u64::from(channels) * 4)
                            .build();
                        let convert = make("audioconvert", String::new())?;
                        let resample = make("audioresample", String::new())?;
                        let chain = [appsrc.upcast_ref::<gst::Element>(), &convert, &resample];
                        pipeline.add_many(chain).map_err(gst_err)?;
                        gst::Element::link_many(chain).map_err(gst_err)?;
                        resample.link(&mixer).map_err(gst_err)?;
                        let stats = player.track_stats(&desc.name).unwrap_or_default();
                        audio.push(AudioLane {
                            desc,
                            stats,
                            chunks,
                            pending: None,
                            appsrc,
                            format: (rate, channels),
                            origin: options.from.saturating_add(AAC_PRIMING),
                            until: options.from.saturating_add(AAC_PRIMING),
                            dry: false,
                        });
                    }
                }
            }
        }
        wanted.store(player.seek_count() + 1, Ordering::Relaxed);
        player.seek(options.from, SeekMode::Accurate)?;
        player.play()?;
        pipeline.set_state(gst::State::Playing).map_err(|e| gst_err(format!("starting the export: {e}")))?;
        Ok(Session { video, audio, pipeline, image, player, from: options.from, to: options.to, fps })
    }

    /// Feeds every tick's frame and audio, then the end of each stream.
    fn run(&mut self, progress: &mut dyn FnMut(ExportProgress)) -> Result<(), PlayerError> {
        let total = self.to.saturating_sub(self.from);
        let events = self.player.events();
        for k in 0..tick_count(total, self.fps) {
            let clip = tick_time(k, self.fps);
            let next = tick_time(k + 1, self.fps).min(total);
            let at = self.from.saturating_add(clip);
            for event in events.try_iter() {
                if let PlayerEvent::TrackError { track, message } = event {
                    let message =
                        message.strip_prefix(&format!("track {track}: ")).unwrap_or(&message).to_string();
                    return Err(PlayerError::open(track.to_string(), message));
                }
            }
            self.check_bus()?;
            for lane in &mut self.video {
                lane.push_tick(at, clip, next.saturating_sub(clip));
            }
            let end = self.from.saturating_add(next);
            for lane in &mut self.audio {
                lane.push_until(at, end, self.to);
            }
            progress(ExportProgress { done: next, total });
        }
        for lane in &self.video {
            let _ = lane.appsrc.end_of_stream();
        }
        for lane in &self.audio {
            let _ = lane.appsrc.end_of_stream();
        }
        Ok(())
    }

    /// Waits for the file (or image) to be complete.
    fn finish(&mut self) -> Result<(), PlayerError> {
        let bus = self.pipeline.bus().ok_or_else(|| gst_err("the export pipeline has no bus"))?;
        let message = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(120),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        let result = match message.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => Ok(()),
            Some(gst::MessageView::Error(e)) => Err(gst_err(format!("writing the clip: {}", e.error()))),
            _ => Err(gst_err("the clip was not finished within 2 minutes")),
        };
        if self.image.is_none() {
            let _ = self.pipeline.set_state(gst::State::Null);
        }
        result
    }

    fn check_bus(&self) -> Result<(), PlayerError> {
        let Some(bus) = self.pipeline.bus() else { return Ok(()) };
        if let Some(message) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = message.view() {
                let source = message.src().map(|s| s.name().to_string()).unwrap_or_default();
                return Err(gst_err(format!("writing the clip ({source}): {}", e.error())));
            }
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Unblock the player's sinks before it stops them.
        self.video.clear();
        self.audio.clear();
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

impl VideoLane {
    /// Pushes the frame on screen at meeting time `at` as the clip frame at `clip`, or a gap.
    fn push_tick(&mut self, at: MediaTime, clip: MediaTime, duration: MediaTime) {
        if !self.desc.timeline.is_active(at) {
            self.gap(clip, duration);
            return;
        }
        // The newest frame that starts at or before `at`. A frame that lasts past `at` is it
        // unless a newer one is already here; otherwise wait for the next frame, unless the
        // track has ended (its media stops before its span does: the last frame stays).
        loop {
            if self.next.as_ref().is_some_and(|f| f.pts <= at) {
                self.current = self.next.take();
                continue;
            }
            if self.next.is_some() {
                break;
            }
            let covered = self.current.as_ref().is_some_and(|f| f.pts.saturating_add(f.duration) > at);
            let wait = if covered || self.dry || self.stats.ended() { Duration::ZERO } else { STALL };
            match self.frames.recv_timeout(wait) {
                Ok(frame) => {
                    self.next = Some(frame);
                    self.dry = false;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !covered && !self.dry && !self.stats.ended() {
                        tracing::warn!(track = %self.desc.name, %at, "no frame for {STALL:?}: the track is frozen");
                        self.dry = true;
                    }
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let Some(frame) = &self.current else {
            self.gap(clip, duration);
            return;
        };
        if (frame.width, frame.height) != self.size {
            self.size = (frame.width, frame.height);
            self.appsrc.set_caps(Some(&i420_caps(self.size)));
        }
        let mut buffer = frame.to_buffer();
        if let Some(b) = buffer.get_mut() {
            b.set_pts(clock_time(clip));
            b.set_duration(clock_time(duration));
        }
        let _ = self.appsrc.push_buffer(buffer);
    }

    fn gap(&self, clip: MediaTime, duration: MediaTime) {
        self.appsrc
            .send_event(gst::event::Gap::builder(clock_time(clip)).duration(clock_time(duration)).build());
    }
}

impl AudioLane {
    /// Pushes the track's samples (or a gap) from where it is up to meeting time `end`.
    fn push_until(&mut self, at: MediaTime, end: MediaTime, to: MediaTime) {
        let end = end.min(to);
        if self.desc.timeline.is_active(at) {
            while self.until < end {
                let chunk = match self.pending.take() {
                    Some(chunk) => chunk,
                    None => {
                        let wait = if self.dry || self.stats.ended() { Duration::ZERO } else { STALL };
                        match self.chunks.recv_timeout(wait) {
                            Ok(chunk) => {
                                self.dry = false;
                                chunk
                            }
                            Err(_) => {
                                self.dry = true;
                                break;
                            }
                        }
                    }
                };
                self.push_chunk(chunk, to);
            }
        }
        if self.until < end {
            self.gap(self.until, end);
            self.until = end;
        }
    }

    /// Pushes the part of `chunk` after what was pushed and before `to`.
    fn push_chunk(&mut self, chunk: AudioChunk, to: MediaTime) {
        let rate = i64::from(chunk.rate.max(1));
        let frame_bytes = 4 * chunk.channels.max(1) as usize;
        let frames = (chunk.samples.len() / frame_bytes) as i64;
        let time_of =
            |frame: i64| chunk.pts.saturating_add(MediaTime::from_nanos(frame * 1_000_000_000 / rate));
        let frame_at = |t: MediaTime| {
            let nanos = (t.saturating_sub(chunk.pts).as_nanos().max(0) as u128) * rate as u128;
            nanos.div_ceil(1_000_000_000) as i64
        };
        let first = frame_at(self.until).min(frames);
        let last = frame_at(to).min(frames);
        if time_of(first) > self.until {
            // A hole before this chunk: silence until it starts.
            self.gap(self.until, time_of(first));
        }
        if first >= last {
            self.until = self.until.max(time_of(last.max(first)));
            return;
        }
        let data = chunk.samples.slice(first as usize * frame_bytes..last as usize * frame_bytes);
        let mut buffer = gst::Buffer::from_slice(data);
        if let Some(b) = buffer.get_mut() {
            b.set_pts(clock_time(time_of(first).saturating_sub(self.origin)));
            b.set_duration(clock_time(time_of(last).saturating_sub(time_of(first))));
        }
        if (chunk.rate, chunk.channels) != self.format {
            self.format = (chunk.rate, chunk.channels);
            self.appsrc.set_caps(Some(&pcm_caps(chunk.rate, chunk.channels)));
        }
        let _ = self.appsrc.push_buffer(buffer);
        self.until = time_of(last);
    }

    fn gap(&self, start: MediaTime, end: MediaTime) {
        if end <= start {
            return;
        }
        let gap = gst::event::Gap::builder(clock_time(start.saturating_sub(self.origin)))
            .duration(clock_time(end.saturating_sub(start)))
            .build();
        self.appsrc.send_event(gap);
    }
}

/// A bounded channel per track: the senders by track name (for the player's callbacks) and
/// the receivers in the tracks' order (for the pacer).
type Senders<T> = HashMap<Arc<str>, Sender<T>>;

fn channels<T>(tracks: &[TrackDesc], capacity: usize) -> (Senders<T>, Vec<Receiver<T>>) {
    tracks
        .iter()
        .map(|desc| {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            ((desc.name.clone(), tx), rx)
        })
        .unzip()
}

fn i420_caps((width, height): (u32, u32)) -> gst::Caps {
    gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::I420)
        .width(width as i32)
        .height(height as i32)
        .framerate(gst::Fraction::new(0, 1))
        .build()
}

fn pcm_caps(rate: u32, channels: u32) -> gst::Caps {
    gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AUDIO_FORMAT_F32)
        .rate(rate as i32)
        .channels(channels as i32)
        .build()
}

/// Clip time of frame `k` at `fps` (as GStreamer's own video sources count it).
fn tick_time(k: u64, fps: u32) -> MediaTime {
    MediaTime::from_nanos((u128::from(k) * 1_000_000_000 / u128::from(fps)) as i64)
}

/// Frames in a clip of `total`.
fn tick_count(total: MediaTime, fps: u32) -> u64 {
    (total.as_nanos().max(0) as u128 * u128::from(fps)).div_ceil(1_000_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cover_the_clip_and_match_gstreamer_frame_times() {
        assert_eq!(tick_count(MediaTime::from_secs(2), 30), 60);
        assert_eq!(tick_count(MediaTime::from_millis(2010), 30), 61);
        assert_eq!(tick_time(1, 30), MediaTime::from_nanos(33_333_333));
        assert_eq!(tick_time(30, 30), MediaTime::from_secs(1));
    }
}
