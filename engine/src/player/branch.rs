//! One track's branch of the pipeline, and how it is built, joined and removed.
//!
//! ```text
//! video:  appsrc (coded, exact PTS/DTS) ! decoder ! videoconvert ! sink
//! audio:  appsrc (PCM from symphonia | Opus) [! opusdec] ! audioconvert ! audioresample
//!           ! scaletempo (pitch kept at other rates; restamped, tempo.rs) ! audioconvert
//!           ! audioresample ! sink
//! ```
//!
//! Every branch ends in its own clock-synced sink (an `appsink`; audio for a window goes to an
//! `autoaudiosink`, the speakers), so no aggregator ever waits for a
//! track that has nothing to show and a track can join or leave without touching the others.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_audio as gst_audio;
use gstreamer_video as gst_video;

use super::elements::{make, make_any};
use super::feeder::{clock_time, meeting_time, Gate};
use super::output::{AudioChunk, Output, SinkContext, VideoFrame};
use super::PlayerError;
use crate::index::{Codec, TrackInfo};
use crate::manifest::TrackKind;
use crate::stream::{Span, Timeline};
use crate::time::MediaTime;

/// Consecutive frames a video decoder may fail on before the track fails.
const MAX_DECODE_ERRORS: i32 = 5;

/// The elements of one branch, in order from the appsrc to the sink.
#[derive(Debug)]
pub(crate) struct Branch {
    pub(crate) appsrc: gst_app::AppSrc,
    pub(crate) elements: Vec<gst::Element>,
}

impl Branch {
    /// A degraded track's sink (see `degrade`) neither holds the pipeline's preroll (on every
    /// pause and resume GStreamer waits for each sink to have a buffer, and this one may have
    /// nothing for seconds) nor shows a frame whose time has passed (it drops it: a late
    /// picture is a wrong picture). Back to normal when it keeps up again.
    pub(crate) fn set_degraded(&self, degraded: bool) {
        let Some(sink) = self.elements.last() else { return };
        if sink.has_property("async") {
            sink.set_property("async", !degraded);
        }
        if sink.has_property("max-lateness") {
            let lateness: i64 = if degraded { LATE_FRAME.nseconds() as i64 } else { -1 };
            sink.set_property("max-lateness", lateness);
        }
    }
}

/// How late a degraded track's frame may be and still be shown.
const LATE_FRAME: gst::ClockTime = gst::ClockTime::from_mseconds(20);

/// Caps of what the appsrc pushes, and whether the engine decodes the audio itself.
fn source_caps(info: &TrackInfo, engine_audio: bool) -> Result<gst::Caps, String> {
    let config = || info.codec_config.as_ref().map(|c| gst::Buffer::from_slice(c.clone()));
    let sized = |builder: gst::caps::Builder<gst::caps::NoFeature>| match info.video {
        Some(v) => builder.field("width", v.width as i32).field("height", v.height as i32),
        None => builder,
    };
    if engine_audio {
        let audio = info.audio.ok_or("no audio format in the index")?;
        return Ok(gst_audio::AudioCapsBuilder::new_interleaved()
            .format(gst_audio::AUDIO_FORMAT_F32)
            .rate(audio.sample_rate as i32)
            .channels(audio.channels as i32)
            .build());
    }
    let caps = match &info.codec {
        // Access units with the parameter sets out of band, as MP4 and Matroska store them.
        Codec::H264 | Codec::H265 => {
            let (media, format, missing) = if info.codec == Codec::H264 {
                ("video/x-h264", "avc", "H.264 without avcC")
            } else {
                ("video/x-h265", "hvc1", "H.265 without hvcC")
            };
            sized(gst::Caps::builder(media))
                .field("stream-format", format)
                .field("alignment", "au")
                .field("codec_data", config().ok_or(missing)?)
                .build()
        }
        Codec::Vp8 => sized(gst::Caps::builder("video/x-vp8")).build(),
        Codec::Vp9 => sized(gst::Caps::builder("video/x-vp9")).build(),
        Codec::Av1 => {
            let mut b = sized(gst::Caps::builder("video/x-av1"))
                .field("stream-format", "obu-stream")
                .field("alignment", "tu");
            if let Some(config) = config() {
                b = b.field("codec_data", config);
            }
            b.build()
        }
        Codec::Opus => {
            let head = config().ok_or("Opus without OpusHead")?;
            gstreamer_pbutils::functions::codec_utils_opus_create_caps_from_header(&head, None)
                .map_err(|e| format!("OpusHead: {e}"))?
        }
        other => return Err(format!("{other:?} cannot be played yet")),
    };
    Ok(caps)
}

fn decoder(codec: &Codec, name: String) -> Result<gst::Element, PlayerError> {
    match codec {
        Codec::H264 => {
            let dec = make("avdec_h264", name)?;
            // Frame threading deadlocks on flush in 1.22.0 (GSTREAMER.md); slices decode as fast
            // here with one slice per frame.
            dec.set_property_from_str("thread-type", "slice");
            Ok(dec)
        }
        Codec::H265 => make("avdec_h265", name),
        Codec::Vp8 => make_any(&["vp8dec", "avdec_vp8"], name),
        Codec::Vp9 => make_any(&["vp9dec", "avdec_vp9"], name),
        Codec::Av1 => make_any(&["dav1ddec", "av1dec", "avdec_av1"], name),
        Codec::Opus => make("opusdec", name),
        other => Err(PlayerError::Gst(format!("no decoder for {other:?}"))),
    }
}

/// What a branch is built for.
#[derive(Debug)]
pub(crate) struct BranchSpec<'a> {
    pub(crate) track: &'a str,
    pub(crate) kind: TrackKind,
    pub(crate) timeline: &'a Timeline,
    pub(crate) info: &'a TrackInfo,
    /// The appsrc carries PCM decoded by the engine.
    pub(crate) engine_audio: bool,
    pub(crate) output: &'a Output,
    /// Added to a playing pipeline: its sink must not make the pipeline preroll again.
    pub(crate) joining: bool,
}

/// Builds a track's branch (not yet in the pipeline).
pub(crate) fn build(
    spec: &BranchSpec<'_>,
    gate: Arc<Gate>,
    context: Arc<SinkContext>,
) -> Result<Branch, PlayerError> {
    let BranchSpec { track, kind, timeline, info, engine_audio, output, joining } = *spec;
    let caps = source_caps(info, engine_audio)
        .map_err(|what| PlayerError::Unsupported { track: track.to_string(), what })?;
    let appsrc = gst_app::AppSrc::builder()
        .name(format!("{track}-src"))
        .caps(&caps)
        .format(gst::Format::Time)
        .stream_type(gst_app::AppStreamType::Seekable)
        .is_live(false)
        .do_timestamp(false)
        .block(false)
        .max_bytes(0)
        .build();
    {
        let gate = gate.clone();
        let need = gate.clone();
        appsrc.set_callbacks(
            gst_app::AppSrcCallbacks::builder()
                .need_data(move |_, _| need.on_need_data())
                .seek_data(move |_, target| {
                    gate.on_seek_data(MediaTime::from_nanos(target.min(i64::MAX as u64) as i64));
                    true
                })
                .build(),
        );
    }
    {
        let gate = gate.clone();
        on_flush_stop(appsrc.upcast_ref(), "src", move || gate.on_flush_stop());
    }
    let mut elements: Vec<gst::Element> = vec![appsrc.clone().upcast()];
    match kind {
        TrackKind::Video => {
            let dec = decoder(&info.codec, format!("{track}-dec"))?;
            // A few undecodable frames are tolerated (and reported as warnings); a run of them
            // means the data is damaged: the decoder errors and the track stops.
            if dec.has_property("max-errors") {
                dec.set_property("max-errors", MAX_DECODE_ERRORS);
            }
            start_segments_at_span_markers(&dec);
            show_each_span_alone(&dec, timeline.clone());
            elements.push(dec);
            elements.push(make("videoconvert", format!("{track}-convert"))?);
            elements.push(video_sink(track, context, joining)?);
        }
        TrackKind::Audio => {
            if !engine_audio {
                let dec = decoder(&info.codec, format!("{track}-dec"))?;
                hide_outside_spans(&dec, timeline.clone());
                elements.push(dec);
            }
            elements.push(make("audioconvert", format!("{track}-convert"))?);
            elements.push(make("audioresample", format!("{track}-resample"))?);
            elements.push(super::tempo::scaletempo(track)?);
            elements.push(make("audioconvert", format!("{track}-convert2"))?);
            elements.push(make("audioresample", format!("{track}-resample2"))?);
            elements.push(audio_sink(track, output, context, joining)?);
        }
        TrackKind::Captions => {
            return Err(PlayerError::Unsupported {
                track: track.to_string(),
                what: "captions have no pipeline branch".into(),
            })
        }
    }
    Ok(Branch { appsrc, elements })
}

/// The structure name of the marker the feeder sends ahead of a span's first video packet.
const SPAN_START: &str = "tandem-span-start";

/// The marker the feeder sends ahead of the first video packet of a span that starts after
/// the segment in force (`Feeder::enter_span`); `start` is where the span starts.
pub(crate) fn span_start_event(start: MediaTime) -> gst::Event {
    let marker = gst::Structure::builder(SPAN_START).field("start", clock_time(start).nseconds()).build();
    gst::event::CustomDownstream::new(marker)
}

/// Turns the feeder's span marker, as it reaches the video decoder, into a segment: the one
/// in force there (after any pad offset), its position moved to where the span starts. Same
/// start, base and time, so running and stream time go on unchanged; as a new segment it
/// resets the decoder's last output time, so frames decoded ahead of the span (whose times
/// lie before frames already out) keep their own times instead of the last one
/// (`gst_video_decoder_push_event` on SEGMENT in 1.22). Made here, in the streaming thread:
/// in the feeder's thread the segment of a seek just made may not be in place yet (basesrc
/// sends FLUSH_STOP before it stores the seek's segment), and an equal segment sent through
/// appsrc is dropped there.
fn start_segments_at_span_markers(decoder: &gst::Element) {
    let Some(pad) = decoder.static_pad("sink") else { return };
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, |pad, probe| {
        let Some(gst::PadProbeData::Event(event)) = &probe.data else { return gst::PadProbeReturn::Ok };
        let Some(start) = span_start_of(event) else { return gst::PadProbeReturn::Ok };
        let Some(in_force) = pad.sticky_event::<gst::event::Segment>(0) else {
            return gst::PadProbeReturn::Drop;
        };
        let Some(mut segment) = in_force.segment().downcast_ref::<gst::ClockTime>().cloned() else {
            return gst::PadProbeReturn::Drop;
        };
        segment.set_position(clock_time(start));
        let mut event = gst::event::Segment::new(&segment);
        event.make_mut().set_running_time_offset(in_force.running_time_offset());
        probe.data = Some(gst::PadProbeData::Event(event));
        gst::PadProbeReturn::Ok
    });
}

/// The start a span marker carries; `None` for any other event.
fn span_start_of(event: &gst::EventRef) -> Option<MediaTime> {
    if event.type_() != gst::EventType::CustomDownstream {
        return None;
    }
    let marker = event.structure().filter(|s| s.name() == SPAN_START)?;
    let start = marker.get::<u64>("start").ok()?;
    Some(meeting_time(gst::ClockTime::from_nseconds(start)))
}

/// Shows each decoded video frame only within the span it was sent for, clipped to it. The
/// span is the one in force where the furthest segment since the last flush puts its
/// position: a seek's target, or a span's start (see [`start_segments_at_span_markers`]);
/// every segment comes out of the decoder ahead of the frames sent after it. So the frames decoded from a keyframe up to
/// where a span starts are hidden even where they fall inside the span before it (GStreamer
/// 1.22's decoders ignore `DECODE_ONLY` on input), and so are frames past a span's end that
/// only serve to decode the frames before it. The feeder's drain events end here too.
fn show_each_span_alone(decoder: &gst::Element, timeline: Timeline) {
    let Some(pad) = decoder.static_pad("src") else { return };
    let segment_at = AtomicI64::new(0);
    let events = gst::PadProbeType::EVENT_DOWNSTREAM | gst::PadProbeType::EVENT_FLUSH;
    pad.add_probe(gst::PadProbeType::BUFFER | events, move |_, probe| {
        match &mut probe.data {
            Some(gst::PadProbeData::Event(event)) => {
                match event.view() {
                    gst::EventView::CustomDownstream(_)
                        if gst_video::StillFrameEvent::parse(event).is_ok() =>
                    {
                        return gst::PadProbeReturn::Drop;
                    }
                    // A seek's segment comes again right before its first buffer, which may
                    // be after a span's: within one flush, the latest position holds.
                    gst::EventView::Segment(s) => {
                        if let Some(segment) = s.segment().downcast_ref::<gst::ClockTime>() {
                            let at =
                                segment.start().max(segment.position()).map_or(MediaTime::ZERO, meeting_time);
                            segment_at.fetch_max(at.as_nanos(), Ordering::Relaxed);
                        }
                    }
                    gst::EventView::FlushStop(_) => segment_at.store(0, Ordering::Relaxed),
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            }
            Some(gst::PadProbeData::Buffer(buffer)) => {
                let Some(pts) = buffer.pts() else { return gst::PadProbeReturn::Ok };
                let at = MediaTime::from_nanos(segment_at.load(Ordering::Relaxed));
                // The span showing at the segment's position, or the next one after it.
                let Some(span) = timeline.spans().iter().find(|s| s.end.is_none_or(|e| e > at)) else {
                    return gst::PadProbeReturn::Drop;
                };
                let start = meeting_time(pts);
                let end = start.saturating_add(buffer.duration().map_or(MediaTime::ZERO, meeting_time));
                let Some((from, to)) = clip_to(span, start, end) else { return gst::PadProbeReturn::Drop };
                if (from, to) != (start, end) {
                    let buffer = buffer.make_mut();
                    buffer.set_pts(clock_time(from));
                    buffer.set_duration(clock_time(to.saturating_sub(from)));
                }
                gst::PadProbeReturn::Ok
            }
            _ => gst::PadProbeReturn::Ok,
        }
    });
}

/// The part of a frame from `start` to `end` that `span` shows; `None` when it shows none. A
/// frame without a duration shows where it starts.
fn clip_to(span: &Span, start: MediaTime, end: MediaTime) -> Option<(MediaTime, MediaTime)> {
    if end == start {
        return span.contains(start).then_some((start, end));
    }
    let from = start.max(span.start);
    let to = span.end.map_or(end, |e| end.min(e));
    (from < to).then_some((from, to))
}

/// Drops decoded audio that lies wholly outside the track's spans: what a decoder decodes
/// from before a span starts.
fn hide_outside_spans(decoder: &gst::Element, timeline: Timeline) {
    let Some(pad) = decoder.static_pad("src") else { return };
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, probe| {
        let Some(gst::PadProbeData::Buffer(buffer)) = &probe.data else { return gst::PadProbeReturn::Ok };
        let Some(pts) = buffer.pts() else { return gst::PadProbeReturn::Ok };
        let start = meeting_time(pts);
        let end = start.saturating_add(buffer.duration().map_or(MediaTime::ZERO, meeting_time));
        let visible = timeline.spans().iter().any(|s| end > s.start && s.end.is_none_or(|e| start < e))
            || (end == start && timeline.is_active(start));
        if visible {
            gst::PadProbeReturn::Ok
        } else {
            gst::PadProbeReturn::Drop
        }
    });
}

impl Branch {
    /// Adds the branch to `pipeline` and links it.
    pub(crate) fn attach(&self, pipeline: &gst::Pipeline) -> Result<(), PlayerError> {
        pipeline.add_many(&self.elements).map_err(|e| PlayerError::Gst(e.to_string()))?;
        if let Err(e) = gst::Element::link_many(&self.elements) {
            // An unlinked branch left in the pipeline would keep it from prerolling.
            let _ = pipeline.remove_many(&self.elements);
            return Err(PlayerError::Gst(format!("linking: {e}")));
        }
        Ok(())
    }

    /// Stops the branch and takes it out of `pipeline` (from an application thread).
    pub(crate) fn detach(&self, pipeline: &gst::Pipeline) {
        for element in self.elements.iter().rev() {
            let _ = element.set_state(gst::State::Null);
        }
        let _ = pipeline.remove_many(&self.elements);
    }

    pub(crate) fn sync_state(&self) -> Result<(), PlayerError> {
        for element in self.elements.iter().rev() {
            element
                .sync_state_with_parent()
                .map_err(|e| PlayerError::Gst(format!("starting {}: {e}", element.name())))?;
        }
        Ok(())
    }
}

fn appsink(name: String, caps: gst::Caps, joining: bool, context: &Arc<SinkContext>) -> gst_app::AppSink {
    let sink = gst_app::AppSink::builder()
        .name(name)
        .caps(&caps)
        .sync(context.realtime)
        .max_buffers(2)
        .drop(false)
        .enable_last_sample(false)
        .async_(!joining)
        .build();
    let flushed = context.clone();
    on_flush_stop(sink.upcast_ref(), "sink", move || flushed.flushed());
    sink
}

/// Callbacks for an appsink: `preroll` and `sample`, and the end of stream noted in the stats.
fn sink_callbacks(
    context: &Arc<SinkContext>,
    preroll: impl Fn(&gst_app::AppSink) -> Result<gst::FlowSuccess, gst::FlowError> + Send + Sync + 'static,
    sample: impl Fn(&gst_app::AppSink) -> Result<gst::FlowSuccess, gst::FlowError> + Send + Sync + 'static,
) -> gst_app::AppSinkCallbacks {
    let ended = context.clone();
    gst_app::AppSinkCallbacks::builder()
        .new_preroll(preroll)
        .new_sample(sample)
        .eos(move |_| ended.stats.set_ended(true))
        .build()
}

/// Calls `f` whenever a FLUSH_STOP passes `element`'s pad `pad`.
fn on_flush_stop(element: &gst::Element, pad: &str, f: impl Fn() + Send + Sync + 'static) {
    let Some(pad) = element.static_pad(pad) else { return };
    pad.add_probe(gst::PadProbeType::EVENT_FLUSH, move |_, probe| {
        if let Some(gst::PadProbeData::Event(event)) = &probe.data {
            if event.type_() == gst::EventType::FlushStop {
                f();
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Video always ends in an appsink: callbacks get its frames, and the window (`window.rs`)
/// shows what it renders.
fn video_sink(track: &str, context: Arc<SinkContext>, joining: bool) -> Result<gst::Element, PlayerError> {
    let caps = gst_video::VideoCapsBuilder::new().format(gst_video::VideoFormat::I420).build();
    let sink = appsink(format!("{track}-sink"), caps, joining, &context);
    let preroll_context = context.clone();
    let sample_context = context.clone();
    sink.set_callbacks(sink_callbacks(
        &context,
        move |sink| {
            if let Ok(sample) = sink.pull_preroll() {
                deliver_video(&preroll_context, sink, &sample, true);
            }
            Ok(gst::FlowSuccess::Ok)
        },
        move |sink| {
            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            deliver_video(&sample_context, sink, &sample, false);
            Ok(gst::FlowSuccess::Ok)
        },
    ));
    Ok(sink.upcast())
}

fn audio_sink(
    track: &str,
    output: &Output,
    context: Arc<SinkContext>,
    joining: bool,
) -> Result<gst::Element, PlayerError> {
    if matches!(output, Output::Window) {
        let sink = speakers(format!("{track}-sink"))?;
        if joining {
            sink.set_property("async", false);
        }
        // No callbacks here: seek completion and the render count come from the sink's pad.
        if let Some(pad) = sink.static_pad("sink") {
            pad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_FLUSH, move |_, probe| {
                match &probe.data {
                    Some(gst::PadProbeData::Buffer(_)) => {
                        context.first_buffer();
                        context.stats.count_rendered();
                    }
                    Some(gst::PadProbeData::Event(e)) if e.type_() == gst::EventType::FlushStop => {
                        context.flushed()
                    }
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            });
        }
        return Ok(sink);
    }
    let caps = gst_audio::AudioCapsBuilder::new_interleaved().format(gst_audio::AUDIO_FORMAT_F32).build();
    let sink = appsink(format!("{track}-sink"), caps, joining, &context);
    let preroll_context = context.clone();
    let sample_context = context.clone();
    sink.set_callbacks(sink_callbacks(
        &context,
        move |sink| {
            // The prerolled buffer is handed over when it plays; here it only completes a seek.
            if sink.pull_preroll().is_ok() {
                preroll_context.first_buffer();
            }
            Ok(gst::FlowSuccess::Ok)
        },
        move |sink| {
            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            deliver_audio(&sample_context, sink, &sample);
            Ok(gst::FlowSuccess::Ok)
        },
    ));
    Ok(sink.upcast())
}

/// The first audio output that opens (PulseAudio, PipeWire, ALSA); without any, a clock-synced
/// fake sink so the meeting still plays in sync, silently. (`autoaudiosink` may pick a sink
/// that opens but never prerolls on a machine without sound, which stalls the pipeline.)
fn speakers(name: String) -> Result<gst::Element, PlayerError> {
    if let Some(factory) = super::sound_output() {
        return make(factory, name);
    }
    tracing::warn!("no audio output could be opened: playing audio silently");
    let sink = make("fakesink", name)?;
    sink.set_property("sync", true);
    Ok(sink)
}

/// Meeting time of the buffer, and of the sink's clock now, through the sample's segment.
fn times(
    sink: &gst_app::AppSink,
    sample: &gst::Sample,
    buffer: &gst::BufferRef,
) -> (MediaTime, Option<MediaTime>) {
    let segment = sample.segment().and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned());
    let pts = buffer.pts();
    let stream_pts = match (&segment, pts) {
        (Some(seg), Some(p)) => seg.to_stream_time(p).or(Some(p)),
        (_, p) => p,
    };
    let clock = sink.current_running_time().and_then(|rt| {
        let seg = segment.as_ref()?;
        let position = seg.position_from_running_time(rt)?;
        seg.to_stream_time(position)
    });
    (stream_pts.map(meeting_time).unwrap_or_default(), clock.map(meeting_time))
}

fn deliver_video(context: &SinkContext, sink: &gst_app::AppSink, sample: &gst::Sample, preroll: bool) {
    context.first_buffer();
    if !preroll {
        context.stats.count_rendered();
    }
    let Some(callback) = &context.on_video else { return };
    let (Some(buffer), Some(caps)) = (sample.buffer_owned(), sample.caps()) else { return };
    let Ok(info) = gst_video::VideoInfo::from_caps(caps) else { return };
    let (pts, clock) = times(sink, sample, &buffer);
    let duration = MediaTime::from_nanos(buffer.duration().map(|d| d.nseconds() as i64).unwrap_or(0));
    if !preroll {
        context.rendered_to(pts.saturating_add(duration));
    }
    let Ok(map) = buffer.into_mapped_buffer_readable() else { return };
    let frame = VideoFrame {
        track: context.track.clone(),
        pts,
        duration,
        clock,
        preroll,
        width: info.width(),
        height: info.height(),
        stride: info.stride().first().copied().unwrap_or(0).max(0) as usize,
        planes: [
            info.offset().first().copied().unwrap_or(0),
            info.offset().get(1).copied().unwrap_or(0),
            info.offset().get(2).copied().unwrap_or(0),
        ],
        chroma_stride: info.stride().get(1).copied().unwrap_or(0).max(0) as usize,
        data: bytes::Bytes::from_owner(map),
        seek: context.seek_count(),
    };
    callback(&frame);
}

fn deliver_audio(context: &SinkContext, sink: &gst_app::AppSink, sample: &gst::Sample) {
    context.first_buffer();
    context.stats.count_rendered();
    let Some(callback) = &context.on_audio else { return };
    let (Some(buffer), Some(caps)) = (sample.buffer_owned(), sample.caps()) else { return };
    let Ok(info) = gst_audio::AudioInfo::from_caps(caps) else { return };
    let (pts, clock) = times(sink, sample, &buffer);
    let frames = buffer.size() as u64 / u64::from(info.bpf().max(1));
    context.rendered_to(pts.saturating_add(MediaTime::from_nanos(
        (frames * 1_000_000_000 / u64::from(info.rate().max(1))) as i64,
    )));
    let Ok(map) = buffer.into_mapped_buffer_readable() else { return };
    let chunk = AudioChunk {
        track: context.track.clone(),
        pts,
        clock,
        rate: info.rate(),
        channels: info.channels(),
        samples: bytes::Bytes::from_owner(map),
        seek: context.seek_count(),
    };
    callback(&chunk);
}

/// A non-flushing seek stored in a READY appsrc: where a joining branch's segment starts.
pub(crate) fn pending_seek(appsrc: &gst_app::AppSrc, rate: f64, at: MediaTime) -> bool {
    let seek = gst::event::Seek::new(
        rate,
        gst::SeekFlags::ACCURATE,
        gst::SeekType::Set,
        clock_time(at),
        gst::SeekType::None,
        gst::ClockTime::NONE,
    );
    appsrc.send_event(seek)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: i64) -> MediaTime {
        MediaTime::from_millis(v)
    }

    #[test]
    fn a_frame_shows_only_within_its_span() {
        let span = Span { start: ms(12_000), end: Some(ms(20_000)), media_start: ms(7_000), file: 0 };
        // Decoded ahead of the span, inside the span before it: hidden.
        assert_eq!(clip_to(&span, ms(11_966), ms(12_000)), None);
        // Starts before the span and shows into it: from the span's start.
        assert_eq!(clip_to(&span, ms(11_990), ms(12_023)), Some((ms(12_000), ms(12_023))));
        // Shows past the span's end: up to it; starts at its end: hidden.
        assert_eq!(clip_to(&span, ms(19_990), ms(20_023)), Some((ms(19_990), ms(20_000))));
        assert_eq!(clip_to(&span, ms(20_000), ms(20_033)), None);
        // Without a duration: where it starts.
        assert_eq!(clip_to(&span, ms(12_000), ms(12_000)), Some((ms(12_000), ms(12_000))));
        assert_eq!(clip_to(&span, ms(11_000), ms(11_000)), None);
    }
}
