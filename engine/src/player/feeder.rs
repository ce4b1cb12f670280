//! The feeder: takes a track's items from its stream subscription and pushes them into its
//! `appsrc` with exact timestamps, honouring the source's queue limits. On the way it does
//! what GStreamer needs and the stream layer knows nothing of: engine-decoded audio becomes
//! PCM clipped to the seek target and the span, video decoders are drained where a span ends
//! and told where the next one starts (see [`Feeder::enter_span`]), a preview keyframe is
//! shown at the target, and damage and failures become player events.
//!
//! The [`Gate`] is where seeks and data meet. appsrc calls `seek-data` on every flushing seek
//! (and once at start-up, and when a track joins), and only there does a track learn where
//! its new segment starts (a join's target is the one appsrc was given), so `seek-data`
//! stays the trigger: the gate bumps the track's generation there and restarts its
//! subscription on the target, the generation as the seek ticket. appsrc throws away whatever is pushed between `seek-data` and the
//! FLUSH_STOP that follows (GSTREAMER.md), so the feeder holds the new generation's data until
//! a pad probe has seen that FLUSH_STOP. Seeks without a flush (start-up, a join) empty the
//! queue too, right after `seek-data` returns: there the feeder waits for the `need-data` that
//! follows. (Pushing at once lost a keyframe in about one start in three.) Pushes are non-blocking and happen under the gate's
//! lock, so an item of an older generation can never slip in after a seek; back-pressure comes
//! from polling the appsrc queue level instead of `block=true`.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::RecvTimeoutError;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_audio as gst_audio;
use gstreamer_video as gst_video;

use super::audio::AudioDecoder;
use super::branch::span_start_event;
use super::events::{EventSink, PlayerEvent};
use crate::manifest::TrackKind;
use crate::stream::{Item, Packet, SeekTicket, StartMode, Subscription, Timeline};
use crate::time::MediaTime;

/// Most media an appsrc queues before the feeder waits.
const MAX_QUEUED_TIME: gst::ClockTime = gst::ClockTime::from_mseconds(500);
/// Most bytes an appsrc queues before the feeder waits.
const MAX_QUEUED_BYTES: u64 = 8 * 1024 * 1024;
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct GateState {
    /// Bumped by every `seek-data`.
    generation: u64,
    /// The newest generation whose flush has completed (or that needed none).
    flushed: u64,
    /// The next `seek-data` comes from a flushing seek.
    flush_expected: bool,
    /// A seek without a flush (start-up, a join) is done once appsrc asks for data.
    awaiting_need_data: bool,
    /// How the next start fetches.
    next_mode: StartMode,
    /// Where the current generation starts, and whether it is a preview.
    target: MediaTime,
    preview: bool,
    closed: bool,
}

/// Seek generations and the flush guard of one track.
#[derive(Debug)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    cond: Condvar,
    /// Dropped on close: with the feeder's, the last handle, which ends the subscription.
    subscription: Mutex<Option<Arc<Subscription>>>,
}

impl Gate {
    pub(crate) fn new(subscription: Arc<Subscription>) -> Gate {
        Gate {
            state: Mutex::new(GateState {
                generation: 0,
                flushed: 0,
                flush_expected: false,
                awaiting_need_data: false,
                next_mode: StartMode::Accurate,
                target: MediaTime::ZERO,
                preview: false,
                closed: false,
            }),
            cond: Condvar::new(),
            subscription: Mutex::new(Some(subscription)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called before the player issues a flushing seek.
    pub(crate) fn expect_flush(&self, mode: StartMode) {
        let mut state = self.lock();
        state.flush_expected = true;
        state.next_mode = mode;
    }

    /// appsrc's `seek-data`: a new generation starts at `target`.
    pub(crate) fn on_seek_data(&self, target: MediaTime) {
        let mut state = self.lock();
        state.generation += 1;
        // appsrc empties its queue after this callback returns, with or without a flush: what
        // is pushed before then is lost. A flushing seek is over at its FLUSH_STOP; one
        // without (start-up, a join) when the streaming thread, back on an empty queue, asks
        // for data.
        state.awaiting_need_data = !std::mem::take(&mut state.flush_expected);
        let mode = std::mem::replace(&mut state.next_mode, StartMode::Accurate);
        state.target = target;
        state.preview = mode == StartMode::Keyframe;
        let ticket = SeekTicket(state.generation);
        drop(state);
        self.cond.notify_all();
        let subscription = self.subscription.lock().unwrap_or_else(|e| e.into_inner());
        match (subscription.as_ref(), mode) {
            (Some(s), StartMode::Accurate) => s.restart(target, ticket),
            (Some(s), StartMode::Keyframe) => s.restart_keyframe(target, ticket),
            (None, _) => {}
        }
    }

    /// appsrc's `need-data`: after a seek without a flush, the current generation may push.
    pub(crate) fn on_need_data(&self) {
        let mut state = self.lock();
        if std::mem::take(&mut state.awaiting_need_data) {
            state.flushed = state.generation;
            drop(state);
            self.cond.notify_all();
        }
    }

    /// The probe saw FLUSH_STOP: the current generation may push.
    pub(crate) fn on_flush_stop(&self) {
        let mut state = self.lock();
        state.flushed = state.generation;
        drop(state);
        self.cond.notify_all();
    }

    /// Ends the feeder, and with it the subscription.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.subscription.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.cond.notify_all();
    }

    /// Where `generation` starts and whether it is a preview; `None` when it is stale.
    fn start_of(&self, generation: u64) -> Option<(MediaTime, bool)> {
        let state = self.lock();
        (!state.closed && state.generation == generation).then_some((state.target, state.preview))
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Locks the gate once `generation` may push; `None` when it is stale or the gate closed.
    fn ready(&self, generation: u64) -> Option<MutexGuard<'_, GateState>> {
        let mut state = self.lock();
        loop {
            if state.closed || state.generation != generation {
                return None;
            }
            if state.flushed >= generation {
                return Some(state);
            }
            state = self.cond.wait_timeout(state, POLL).map(|(s, _)| s).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn is_current(&self, generation: u64) -> bool {
        let state = self.lock();
        !state.closed && state.generation == generation
    }
}

/// Frames a preview keyframe is shown for before the gap that follows it.
const PREVIEW_FRAME: MediaTime = MediaTime::from_millis(40);

/// What one track's feeder thread owns.
pub(crate) struct Feeder {
    pub(crate) track: Arc<str>,
    pub(crate) kind: TrackKind,
    pub(crate) timeline: Timeline,
    /// The track's sample rate, to clip audio that starts before zero.
    pub(crate) sample_rate: u32,
    pub(crate) subscription: Arc<Subscription>,
    pub(crate) appsrc: gst_app::AppSrc,
    pub(crate) gate: Arc<Gate>,
    /// Vorbis, MP3, AAC and FLAC are decoded here; the rest by GStreamer.
    pub(crate) decoder: Option<AudioDecoder>,
    pub(crate) events: EventSink,
}

/// What the feeder remembers of the generation it is feeding.
#[derive(Default)]
struct Generation {
    number: u64,
    target: MediaTime,
    preview: bool,
    discont: bool,
    /// Video packets were pushed since the decoder was last drained.
    fed: bool,
    /// The span whose video packets the decoder is given, once one came.
    span: Option<usize>,
}

impl Feeder {
    pub(crate) fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name(format!("feed-{}", self.track)).spawn(move || self.run())
    }

    fn run(mut self) {
        let mut current = Generation::default();
        // Leaving drops the feeder's handle, the subscription's last: its reads stop at once.
        while !self.gate.is_closed() {
            let tagged = match self.subscription.recv_timeout(POLL) {
                Ok(tagged) => tagged,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let number = tagged.ticket.0;
            if number != current.number {
                let Some((target, preview)) = self.gate.start_of(number) else { continue };
                current = Generation { number, target, preview, discont: true, ..Generation::default() };
                if let Some(decoder) = &mut self.decoder {
                    decoder.reset();
                }
            }
            match tagged.item {
                Item::Packet(packet) if current.preview => self.preview(&current, packet),
                Item::Packet(packet) => self.packet(&mut current, packet),
                Item::Gap { start, duration } => {
                    if std::mem::take(&mut current.fed) {
                        self.drain(&current);
                    }
                    let gap =
                        gst::event::Gap::builder(clock_time(start)).duration(clock_time(duration)).build();
                    self.push(current.number, Out::Event(gap));
                    current.discont = true;
                }
                Item::Damaged { at, offset, message } => {
                    self.events.send(PlayerEvent::Damaged { track: self.track.clone(), at, offset, message });
                }
                Item::Failed { message } => {
                    self.events.send(PlayerEvent::TrackError { track: self.track.clone(), message });
                    self.push(current.number, Out::Eos);
                }
                Item::End => self.push(current.number, Out::Eos),
                Item::Cue(_) | Item::Chunk { .. } => {}
            }
        }
    }

    /// One coded packet, as its decoder wants it: PCM for engine audio.
    fn packet(&mut self, current: &mut Generation, packet: Packet) {
        if packet.discont {
            current.discont = true;
        }
        if self.decoder.is_some() {
            return self.pcm(current, &packet);
        }
        let is_video = self.kind == TrackKind::Video;
        if is_video && current.span != Some(packet.span) {
            self.enter_span(current, packet.span);
        }
        current.fed |= is_video;
        let mut clip_start = 0;
        let rate = i64::from(self.sample_rate);
        if !is_video && packet.decode_only {
            // Audio a decoder converges on (Opus's 80 ms before a seek's target or a span's
            // start) is decoded, not heard: all of it clipped. Before a target the segment
            // would drop it; before a span that follows another at once it lies in the last
            // one's time, and was recorded in the pause cut out between them.
            clip_start = frames_between(packet.pts, packet.end(), rate);
        } else if !is_video && packet.pts < MediaTime::ZERO {
            // Audio before zero (Opus pre-skip): starts at zero with its head clipped.
            clip_start = frames_between(packet.pts, MediaTime::ZERO, rate);
        }
        // A packet that runs past its span's end (a recording pause cut out there): the rest
        // was recorded in the pause, and is not heard.
        let span_end = self.timeline.span(packet.span).and_then(|span| span.end);
        let clip_end = match span_end {
            Some(end) if !is_video => frames_between(end.max(packet.pts), packet.end(), rate),
            _ => 0,
        };
        let dts = packet.dts.unwrap_or(packet.pts);
        let buffer = Buffer {
            pts: packet.pts.max(MediaTime::ZERO),
            // Decoders order frames by PTS. CMAF files with negative composition offsets put
            // a B-frame's PTS before its DTS, which made decoders retime frames by one: video
            // goes without DTS (audio keeps it where it is valid).
            dts: (!is_video && dts >= MediaTime::ZERO && dts <= packet.pts).then_some(dts),
            duration: packet.duration,
            data: packet.data,
            keyframe: packet.keyframe,
            discont: std::mem::take(&mut current.discont),
            decode_only: is_video && (packet.decode_only || packet.pts < MediaTime::ZERO),
            clip_start,
            clip_end,
        };
        self.push(current.number, Out::Buffer(buffer));
    }

    /// Decodes an audio packet and pushes what plays from the target, within its span.
    fn pcm(&mut self, current: &mut Generation, packet: &Packet) {
        let Some(decoder) = &mut self.decoder else { return };
        let pcm = match decoder.decode(&packet.data) {
            Ok(pcm) => pcm,
            Err(message) => {
                tracing::debug!(track = %self.track, %message, "skipping an undecodable packet");
                current.discont = true;
                return;
            }
        };
        let rate = i64::from(decoder.rate);
        let channels = decoder.channels as usize;
        let frame_time = |frames: u64| MediaTime::from_ticks(frames as i64, rate as u64).unwrap_or_default();
        // Output aligns with the end of the packet's span; the priming delay shifts it.
        let decoded = frame_time(pcm.frames);
        let end = packet
            .pts
            .saturating_add(packet.duration.max(decoded))
            .saturating_sub(frame_time(decoder.priming()));
        let start = end.saturating_sub(decoded);
        let span = self.timeline.span(packet.span).copied();
        let keep_from = span.map_or(current.target, |s| current.target.max(s.start));
        let keep_to = span.and_then(|s| s.end).unwrap_or(MediaTime::MAX);
        let skip = frames_between(start, keep_from, rate);
        let keep_end = frames_between(start, keep_to, rate);
        let (from, to) = (skip.min(pcm.frames), keep_end.min(pcm.frames));
        if from >= to {
            return;
        }
        let samples = &pcm.data[from as usize * channels..to as usize * channels];
        let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
        let buffer = Buffer {
            pts: start.saturating_add(frame_time(from)),
            dts: None,
            duration: frame_time(to - from),
            data: Bytes::from(bytes),
            keyframe: true,
            discont: std::mem::take(&mut current.discont),
            decode_only: false,
            clip_start: 0,
            clip_end: 0,
        };
        self.push(current.number, Out::Buffer(buffer));
    }

    /// A preview: the keyframe shown at the target, drained out of the decoder at once, then a
    /// gap.
    fn preview(&mut self, current: &Generation, packet: Packet) {
        let target = current.target;
        let buffer = Buffer {
            pts: target,
            dts: Some(target),
            duration: PREVIEW_FRAME,
            data: packet.data,
            keyframe: true,
            discont: true,
            decode_only: false,
            clip_start: 0,
            clip_end: 0,
        };
        self.push(current.number, Out::Buffer(buffer));
        self.drain(current);
        let after = target.saturating_add(PREVIEW_FRAME);
        let gap =
            gst::event::Gap::builder(clock_time(after)).duration(clock_time(MediaTime::from_secs(1))).build();
        self.push(current.number, Out::Event(gap));
    }

    /// Makes the video decoder output every frame it holds (H.264/H.265 hold frames back for
    /// B-frames, dav1d for its threads) when no more data follows for a while or the next data
    /// is no continuation (a span's end, a preview). Decoders drain on GAP only in key-unit
    /// trick mode; on a still-frame event (`GstVideoDecoder`'s `drain_out`) always. The event
    /// goes no further than the decoder (`branch.rs`).
    fn drain(&self, current: &Generation) {
        if self.kind != TrackKind::Video {
            return;
        }
        self.push(current.number, Out::Event(gst_video::StillFrameEvent::builder(true).build()));
    }

    /// The decoder is given packets of span `span` from now on. Where that span starts after
    /// the generation's own segment does (after a gap, or right after the last span, where a
    /// recording pause was cut out of one file), the frames it decodes from its keyframe up
    /// to its start have times inside or before the last span's, earlier than frames already
    /// out. GStreamer 1.22's video decoder then warns of a decreasing timestamp, restamps
    /// them with the last frame's time and keeps rewriting times until it stops
    /// (`gst_video_decoder_prepare_finish_frame`); it ignores `DECODE_ONLY` on input buffers.
    /// So what the decoder holds of the last span is drained out, and a marker tells the
    /// decoder's probes to start a segment there: that resets the decoder's last output
    /// time, and shows each span's frames within that span alone (`branch.rs`).
    fn enter_span(&self, current: &mut Generation, span: usize) {
        current.span = Some(span);
        let Some(start) = self.timeline.span(span).map(|s| s.start) else { return };
        if start <= current.target {
            return;
        }
        if std::mem::take(&mut current.fed) {
            self.drain(current);
        }
        self.push(current.number, Out::Event(span_start_event(start)));
    }

    /// Pushes into appsrc once there is room and the generation may push.
    fn push(&self, generation: u64, out: Out) {
        // Wait for room in appsrc's queue (its limits close the back-pressure loop).
        while self.appsrc.current_level_time() > MAX_QUEUED_TIME
            || self.appsrc.current_level_bytes() > MAX_QUEUED_BYTES
        {
            if !self.gate.is_current(generation) {
                return;
            }
            std::thread::sleep(POLL);
        }
        let Some(_guard) = self.gate.ready(generation) else { return };
        match out {
            // Flushing or EOS mean a seek or a state change is under way: drop it.
            Out::Buffer(buffer) => {
                let _ = self.appsrc.push_buffer(buffer.into_gst());
            }
            Out::Event(event) => {
                self.appsrc.send_event(event);
            }
            Out::Eos => {
                let _ = self.appsrc.end_of_stream();
            }
        }
    }
}

/// What goes into appsrc.
enum Out {
    Buffer(Buffer),
    Event(gst::Event),
    Eos,
}

/// One buffer for appsrc: coded data or PCM, with its times and flags.
struct Buffer {
    pts: MediaTime,
    dts: Option<MediaTime>,
    duration: MediaTime,
    data: Bytes,
    keyframe: bool,
    discont: bool,
    /// Needed to decode later frames but not to be shown.
    decode_only: bool,
    /// Samples to clip from the start of the decoded output (audio before zero, or all of a
    /// decoder's warm-up packet).
    clip_start: u64,
    /// Samples to clip from the end (audio past its span's end).
    clip_end: u64,
}

/// Sample frames at `rate` from `from` to `to` (zero when `to` is not after `from`).
fn frames_between(from: MediaTime, to: MediaTime, rate: i64) -> u64 {
    if to <= from {
        return 0;
    }
    let nanos = to.as_nanos().saturating_sub(from.as_nanos()) as i128;
    ((nanos * rate as i128 + 500_000_000) / 1_000_000_000) as u64
}

/// GStreamer's unsigned nanoseconds as meeting time (saturating past `i64::MAX`).
pub(crate) fn meeting_time(t: gst::ClockTime) -> MediaTime {
    MediaTime::from_nanos(t.nseconds().min(i64::MAX as u64) as i64)
}

pub(crate) fn clock_time(t: MediaTime) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(t.as_nanos().max(0) as u64)
}

impl Buffer {
    /// A GStreamer buffer around the bytes (no copy), with its times and flags.
    fn into_gst(self) -> gst::Buffer {
        let packet = self;
        let mut buffer = gst::Buffer::from_slice(packet.data);
        {
            let b = buffer.make_mut();
            b.set_pts(clock_time(packet.pts));
            b.set_dts(packet.dts.map(clock_time));
            b.set_duration(clock_time(packet.duration));
            let mut flags = gst::BufferFlags::empty();
            if !packet.keyframe {
                flags |= gst::BufferFlags::DELTA_UNIT;
            }
            if packet.discont {
                flags |= gst::BufferFlags::DISCONT;
            }
            if packet.decode_only {
                flags |= gst::BufferFlags::DECODE_ONLY;
            }
            b.set_flags(flags);
            if packet.clip_start > 0 || packet.clip_end > 0 {
                // Samples (at the stream's rate) the decoder drops from the start and the end
                // of its output.
                gst_audio::AudioClippingMeta::add(
                    b,
                    gst::format::Default::from_u64(packet.clip_start),
                    gst::format::Default::from_u64(packet.clip_end),
                );
            }
        }
        buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_between_rounds_to_the_nearest_frame() {
        assert_eq!(frames_between(MediaTime::ZERO, MediaTime::from_millis(10), 48_000), 480);
        assert_eq!(frames_between(MediaTime::from_millis(10), MediaTime::ZERO, 48_000), 0);
    }
}
