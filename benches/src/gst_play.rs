//! GStreamer's own playback of a meeting folder: the baselines.
//!
//! ```text
//!  one gst::Pipeline, one clock; per audio or video file:
//!    uridecodebin uri=file://… | http://… (nginx)
//!      ├─ video ─> queue ! videoconvert ! appsink (I420, sync=true)  ─┐ stamp read from the
//!      └─ audio ─> queue ! audioconvert ! audioresample ! appsink     ─┴ pixels, clicks from
//!                  (F32 interleaved, sync=true)                          the samples
//!            (with `GstOptions::scaletempo`: ... audioresample ! scaletempo ! audioconvert
//!             ! appsink, pitch kept at other rates as playbin's `audio-filter` would)
//! ```
//!
//! The files have their own time; the meeting timeline is mapped onto each the way tandem's
//! player does: a seek to meeting time `t` sends each branch its own flushing seek to the media
//! time shown at `t` (stop at the span's end), and a branch whose next span starts later gets
//! the wait as a pad offset on its sink (running time). The pipeline is paused, every branch
//! seeked, prerolled, and played again: one clock and one base time for all. A branch with
//! nothing left to show is seeked to its end.
//!
//! [`GstMeeting`] with every file is "GStreamer's single pipeline"; one [`GstMeeting`] per file,
//! operated one after the other, is the naive per-file player (its position is the audio
//! pipeline's).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use tandem::manifest::TrackKind;
use tandem::player::Span;
use tandem::MediaTime;
use tandem_fixtures::{audio, stamp};

use crate::tracks::Track;

/// A buffer an appsink handed over.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub track: Arc<str>,
    pub video: bool,
    /// The seek it belongs to: the player's seek count when shown; for GStreamer the
    /// pipeline's seek count when its branch last flushed.
    pub gen: u64,
    pub preroll: bool,
    /// The stamp read from the pixels (video).
    pub stamp: Option<u32>,
    /// Meeting time of the buffer's start and end, through the branch's current span.
    pub pts: Option<MediaTime>,
    pub end: Option<MediaTime>,
    /// The meeting time of the position clock when it was handed over (while playing).
    pub position: Option<MediaTime>,
    pub at: Instant,
    /// Audio, when recorded: mono samples and their rate.
    pub mono: Vec<f32>,
    pub rate: u32,
}

/// Meeting time of a pipeline's clock: the last seek's target plus running time times rate.
#[derive(Debug)]
pub struct Timing {
    pipeline: gst::Pipeline,
    target: Mutex<(MediaTime, f64)>,
}

impl Timing {
    pub fn position(&self) -> Option<MediaTime> {
        if self.pipeline.current_state() != gst::State::Playing {
            return None;
        }
        let now = self.pipeline.clock()?.time();
        let running = now.checked_sub(self.pipeline.base_time().unwrap_or(gst::ClockTime::ZERO))?;
        let (target, rate) = *self.target.lock().unwrap_or_else(|e| e.into_inner());
        Some(target.saturating_add(MediaTime::from_nanos((running.nseconds() as f64 * rate) as i64)))
    }
}

/// Where a branch goes for a meeting time.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Shows `span` from media `start` now (`offset` zero) or after `offset` of running time.
    Show { span: Span, start: MediaTime, offset: MediaTime },
    /// Nothing left to show: seek to the media end.
    Done { end: MediaTime },
}

fn plan(track: &Track, t: MediaTime, duration: MediaTime, rate: f64) -> Plan {
    if let Some(span) = track.span_at(t) {
        return Plan::Show { span: *span, start: span.to_media(t), offset: MediaTime::ZERO };
    }
    if let Some(span) = track.spans.iter().filter(|s| s.start > t).min_by_key(|s| s.start) {
        let wait = span.start.saturating_sub(t);
        let offset = MediaTime::from_nanos((wait.as_nanos() as f64 / rate) as i64);
        return Plan::Show { span: *span, start: span.media_start, offset };
    }
    let end =
        track.spans.iter().map(|s| s.to_media(s.end.unwrap_or(duration))).max().unwrap_or(MediaTime::ZERO);
    Plan::Done { end }
}

fn clock_time(t: MediaTime) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(t.as_nanos().max(0) as u64)
}

struct Branch {
    track: Track,
    sink: Mutex<Option<gst_app::AppSink>>,
    /// The span the branch is playing (None: nothing to show).
    span: Mutex<Option<Span>>,
    /// Running-time offset to apply to the sink pad.
    offset: Mutex<MediaTime>,
    /// The pipeline's seek count when the branch last flushed: what its buffers are tagged
    /// with (a buffer prerolled by the pause before a seek still belongs to the seek before).
    flushed_gen: AtomicU64,
}

impl std::fmt::Debug for Branch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Branch").field("track", &self.track.name).finish()
    }
}

/// One GStreamer pipeline playing some files of a meeting on its timeline.
#[derive(Debug)]
pub struct GstMeeting {
    pipeline: gst::Pipeline,
    branches: Vec<Arc<Branch>>,
    timing: Arc<Timing>,
    duration: MediaTime,
    gen: Arc<AtomicU64>,
    playing: AtomicBool,
    pub log: Arc<Mutex<Vec<Rendered>>>,
}

/// How a [`GstMeeting`] is opened.
#[derive(Clone)]
pub struct GstOptions {
    /// The URI of each track's file.
    pub uri: Arc<dyn Fn(&Track) -> String + Send + Sync>,
    /// Where frames' positions come from (the naive player's audio pipeline); this pipeline's
    /// own clock when `None`.
    pub position_from: Option<Arc<Timing>>,
    /// Keep audio samples (for clicks).
    pub audio_samples: bool,
    /// Time-stretch the audio with `scaletempo` (default properties), keeping its pitch at
    /// other rates as tandem's player does.
    pub scaletempo: bool,
    /// Where rendered buffers are logged (shared by the naive player's pipelines).
    pub log: Arc<Mutex<Vec<Rendered>>>,
}

impl std::fmt::Debug for GstOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GstOptions")
            .field("audio_samples", &self.audio_samples)
            .field("scaletempo", &self.scaletempo)
            .finish()
    }
}

impl GstOptions {
    pub fn local() -> GstOptions {
        GstOptions {
            uri: Arc::new(|t: &Track| {
                let path = t.file.canonicalize().unwrap_or_else(|_| t.file.clone());
                format!("file://{}", path.display())
            }),
            position_from: None,
            audio_samples: false,
            scaletempo: false,
            log: Arc::default(),
        }
    }
}

impl GstMeeting {
    /// Builds the pipeline for `tracks` and prerolls it at meeting time zero.
    pub fn open(tracks: &[Track], duration: MediaTime, options: GstOptions) -> Result<GstMeeting> {
        gst::init()?;
        let pipeline = gst::Pipeline::new();
        let timing =
            Arc::new(Timing { pipeline: pipeline.clone(), target: Mutex::new((MediaTime::ZERO, 1.0)) });
        let position_from = options.position_from.clone().unwrap_or_else(|| timing.clone());
        let gen = Arc::new(AtomicU64::new(0));
        let mut branches = Vec::new();
        for track in tracks {
            let (span, offset) = match plan(track, MediaTime::ZERO, duration, 1.0) {
                Plan::Show { span, offset, .. } => (Some(span), offset),
                Plan::Done { .. } => (None, MediaTime::ZERO),
            };
            let branch = Arc::new(Branch {
                track: track.clone(),
                sink: Mutex::new(None),
                span: Mutex::new(span),
                offset: Mutex::new(offset),
                flushed_gen: AtomicU64::new(0),
            });
            let decode =
                gst::ElementFactory::make("uridecodebin").property("uri", (options.uri)(track)).build()?;
            pipeline.add(&decode)?;
            let ctx = Ctx {
                pipeline: pipeline.downgrade(),
                branch: branch.clone(),
                position: position_from.clone(),
                gen: gen.clone(),
                log: options.log.clone(),
                audio_samples: options.audio_samples,
                scaletempo: options.scaletempo,
            };
            decode.connect_pad_added(move |_, pad| {
                if let Err(e) = ctx.link(pad) {
                    eprintln!("baseline: linking {}: {e:#}", ctx.branch.track.name);
                }
            });
            branches.push(branch);
        }
        let meeting = GstMeeting {
            pipeline,
            branches,
            timing,
            duration,
            gen,
            playing: AtomicBool::new(false),
            log: options.log,
        };
        meeting.pipeline.set_state(gst::State::Paused)?;
        meeting.wait_preroll()?;
        Ok(meeting)
    }

    pub fn timing(&self) -> Arc<Timing> {
        self.timing.clone()
    }

    pub fn seek_count(&self) -> u64 {
        self.gen.load(Ordering::SeqCst)
    }

    fn wait_preroll(&self) -> Result<()> {
        let (result, _, _) = self.pipeline.state(gst::ClockTime::from_seconds(30));
        if let Some(e) = self.error() {
            bail!("baseline pipeline: {e}");
        }
        result.context("baseline pipeline did not preroll")?;
        Ok(())
    }

    /// The first error on the bus, if any.
    pub fn error(&self) -> Option<String> {
        let msg = self.pipeline.bus()?.pop_filtered(&[gst::MessageType::Error])?;
        match msg.view() {
            gst::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
            _ => None,
        }
    }

    pub fn play(&self) -> Result<()> {
        self.playing.store(true, Ordering::SeqCst);
        self.pipeline.set_state(gst::State::Playing)?;
        Ok(())
    }

    pub fn pause(&self) -> Result<()> {
        self.playing.store(false, Ordering::SeqCst);
        self.pipeline.set_state(gst::State::Paused)?;
        Ok(())
    }

    /// Seeks to meeting time `t` with `flags` (FLUSH is added) at `rate`, waits for the
    /// preroll, and plays again if it was playing.
    /// Returns the tracks whose demuxer refused the seek.
    pub fn seek(&self, t: MediaTime, flags: gst::SeekFlags, rate: f64) -> Result<Vec<Arc<str>>> {
        let refused = self.seek_begin(t, flags, rate)?;
        self.seek_finish()?;
        Ok(refused)
    }

    /// Pauses and sends every branch its seek (the naive player does this for every pipeline
    /// before waiting for any). Returns the tracks whose demuxer refused the seek.
    pub fn seek_begin(&self, t: MediaTime, flags: gst::SeekFlags, rate: f64) -> Result<Vec<Arc<str>>> {
        let mut refused = Vec::new();
        self.gen.fetch_add(1, Ordering::SeqCst);
        self.pipeline.set_state(gst::State::Paused)?;
        *self.timing.target.lock().unwrap_or_else(|e| e.into_inner()) = (t, rate);
        for branch in &self.branches {
            let Some(sink) = branch.sink.lock().unwrap_or_else(|e| e.into_inner()).clone() else { continue };
            let (start, stop, span, offset) = match plan(&branch.track, t, self.duration, rate) {
                Plan::Show { span, start, offset } => {
                    (start, span.end.map(|e| span.to_media(e)), Some(span), offset)
                }
                Plan::Done { end } => (end, Some(end), None, MediaTime::ZERO),
            };
            *branch.span.lock().unwrap_or_else(|e| e.into_inner()) = span;
            *branch.offset.lock().unwrap_or_else(|e| e.into_inner()) = offset;
            if let Some(pad) = sink.static_pad("sink") {
                pad.set_offset(offset.as_nanos());
            }
            // The stop is always set (none: the end of the file); a seek without one would
            // keep the last seek's stop.
            let event = gst::event::Seek::new(
                rate,
                flags | gst::SeekFlags::FLUSH,
                gst::SeekType::Set,
                clock_time(start),
                gst::SeekType::Set,
                stop.map(clock_time),
            );
            if !sink.send_event(event) && span.is_some() {
                refused.push(branch.track.name.clone());
            }
        }
        Ok(refused)
    }

    pub fn seek_finish(&self) -> Result<()> {
        self.wait_preroll()?;
        if self.playing.load(Ordering::SeqCst) {
            self.pipeline.set_state(gst::State::Playing)?;
        }
        Ok(())
    }

    /// Log entries from `mark` on.
    pub fn since(&self, mark: usize) -> Vec<Rendered> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log[mark.min(log.len())..].to_vec()
    }

    pub fn mark(&self) -> usize {
        self.log.lock().map(|l| l.len()).unwrap_or(0)
    }
}

impl Drop for GstMeeting {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// What a branch's pad-added and sink callbacks need.
#[derive(Clone)]
struct Ctx {
    pipeline: gst::glib::WeakRef<gst::Pipeline>,
    branch: Arc<Branch>,
    position: Arc<Timing>,
    gen: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<Rendered>>>,
    audio_samples: bool,
    scaletempo: bool,
}

impl Ctx {
    fn link(&self, pad: &gst::Pad) -> Result<()> {
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let name = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
        let video = self.branch.track.kind == TrackKind::Video;
        if !name.starts_with(if video { "video/" } else { "audio/" }) {
            return Ok(());
        }
        if self.branch.sink.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            return Ok(());
        }
        let pipeline = self.pipeline.upgrade().context("pipeline gone")?;
        let mut elements = vec![gst::ElementFactory::make("queue").build()?];
        let sink_caps = if video {
            elements.push(gst::ElementFactory::make("videoconvert").build()?);
            gst::Caps::builder("video/x-raw").field("format", "I420").build()
        } else {
            elements.push(gst::ElementFactory::make("audioconvert").build()?);
            elements.push(gst::ElementFactory::make("audioresample").build()?);
            if self.scaletempo {
                elements.push(gst::ElementFactory::make("scaletempo").build()?);
                elements.push(gst::ElementFactory::make("audioconvert").build()?);
            }
            gst::Caps::builder("audio/x-raw").field("format", "F32LE").field("layout", "interleaved").build()
        };
        let sink = gst_app::AppSink::builder().caps(&sink_caps).sync(true).max_buffers(2).build();
        let on_sample = self.clone();
        let on_preroll = self.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    if let Ok(sample) = s.pull_sample() {
                        on_sample.record(&sample, false);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .new_preroll(move |s| {
                    if let Ok(sample) = s.pull_preroll() {
                        on_preroll.record(&sample, true);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        if let Some(sink_pad) = sink.static_pad("sink") {
            sink_pad.set_offset(self.branch.offset.lock().unwrap_or_else(|e| e.into_inner()).as_nanos());
            let (branch, gen) = (self.branch.clone(), self.gen.clone());
            sink_pad.add_probe(gst::PadProbeType::EVENT_FLUSH, move |_, info| {
                if let Some(gst::PadProbeData::Event(e)) = &info.data {
                    if e.type_() == gst::EventType::FlushStop {
                        branch.flushed_gen.store(gen.load(Ordering::SeqCst), Ordering::SeqCst);
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
        elements.push(sink.clone().upcast());
        pipeline.add_many(&elements)?;
        gst::Element::link_many(&elements)?;
        for e in &elements {
            e.sync_state_with_parent()?;
        }
        let queue_pad = elements[0].static_pad("sink").context("queue sink pad")?;
        pad.link(&queue_pad)?;
        *self.branch.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        Ok(())
    }

    fn record(&self, sample: &gst::Sample, preroll: bool) {
        let at = Instant::now();
        let position = if preroll { None } else { self.position.position() };
        let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else { return };
        let span = *self.branch.span.lock().unwrap_or_else(|e| e.into_inner());
        // After scaletempo the segment runs at rate 1 with the rate applied: its stream time is
        // the media time. Elsewhere the stamps are media time already.
        let segment = sample.segment().and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned());
        let stretched = segment.as_ref().filter(|s| (s.applied_rate() - 1.0).abs() > 1e-9);
        let media = |t: Option<gst::ClockTime>| match stretched {
            Some(seg) => seg.to_stream_time(t?),
            None => t,
        };
        let to_meeting = |t: Option<gst::ClockTime>| {
            Some(span?.to_meeting(MediaTime::from_nanos(media(t)?.nseconds() as i64)))
        };
        let pts = to_meeting(buffer.pts());
        let end = to_meeting(buffer.pts().zip(buffer.duration()).map(|(p, d)| p + d));
        let video = self.branch.track.kind == TrackKind::Video;
        let (mut stamp, mut mono, mut rate) = (None, Vec::new(), 0);
        if video {
            if let Ok(info) = gst_video::VideoInfo::from_caps(caps) {
                if let Ok(frame) = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info) {
                    if let Ok(luma) = frame.plane_data(0) {
                        let stride = info.stride()[0] as usize;
                        stamp =
                            stamp::read_stamp(luma, stride, info.width() as usize, info.height() as usize);
                    }
                }
            }
        } else if let Some(s) = caps.structure(0) {
            rate = s.get::<i32>("rate").unwrap_or(0) as u32;
            if self.audio_samples {
                let channels = s.get::<i32>("channels").unwrap_or(1).max(1) as usize;
                if let Ok(map) = buffer.map_readable() {
                    let samples: Vec<f32> =
                        map.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                    mono = audio::mono(&samples, channels);
                }
            }
        }
        let rendered = Rendered {
            track: self.branch.track.name.clone(),
            video,
            gen: self.branch.flushed_gen.load(Ordering::SeqCst),
            preroll,
            stamp,
            pts,
            end,
            position,
            at,
            mono,
            rate,
        };
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(rendered);
    }
}

/// Waits up to `timeout` for `done` to hold over the log, polling.
pub fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
