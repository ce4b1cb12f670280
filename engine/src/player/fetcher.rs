//! The fetcher: one thread per subscribed track that turns the meeting cursor into byte-range
//! reads and samples for the feeder.
//!
//! For a start command (a seek, the first play, a join) it asks the index for the keyframe at
//! or before the target, fetches the range that shows the target first (what the first frame
//! needs), then walks samples in decode order, coalescing them into one read per request. It
//! reads only while the media fetched ahead of the cursor is below the buffer target, sizes its
//! requests from measured throughput and round-trip time ([`RequestSizer`]), and hands samples
//! (zero-copy `Bytes` slices of the fetched range) to the feeder through a bounded channel, the
//! one seam between this thread and GStreamer. Every item carries its command's generation, so
//! the feeder drops what an older seek produced.
//!
//! Outside its spans a track sends gaps (and end-of-stream after its last span), so no sink
//! waits for it. Audio the engine decodes ([`super::audio`]) leaves here as PCM, clipped to the
//! target and to the span.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError};

use super::audio::AudioDecoder;
use super::events::{EventSink, PlayerEvent};
use crate::index::{Codec, ReadPos, Sample, TrackIndex};
use crate::source::{RangeSource, SourceError};
use crate::stream::TrackDesc;
use crate::stream::{Place, RequestSizer, Span};
use crate::time::MediaTime;

/// How often the fetcher wakes to re-check its buffer and commands while it waits.
const POLL: Duration = Duration::from_millis(20);
/// Samples asked of the index at once.
const INDEX_BATCH: usize = 128;
/// Samples looked ahead (decode order) to find the next presentation time: covers B-frame
/// reordering.
const REORDER_LOOKAHEAD: usize = 16;
/// Opus decoders need this much audio before a seek point to converge (RFC 7845 section 4.6).
const OPUS_PREROLL: MediaTime = MediaTime::from_millis(80);
/// Frames a reordering decoder may hold back (see `Fetcher::advance`).
const REORDER_HELD: i64 = 3;
/// Keyframe copies that drain a reordering decoder (see `Fetcher::drain_decoder`).
const DRAIN_COPIES: i64 = 3;
/// How often buffer figures are published.
const STATS_EVERY: Duration = Duration::from_millis(250);

/// What a fetcher is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    pub(crate) generation: u64,
    /// Meeting time the new segment starts at.
    pub(crate) target: MediaTime,
    pub(crate) mode: StartMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartMode {
    /// From the keyframe at or before the target, every sample.
    Accurate,
    /// Only the keyframe at or before the target, shown at the target, then a gap.
    Preview,
}

/// One coded (or, for engine-decoded audio, PCM) buffer with its meeting times.
#[derive(Debug, Clone)]
pub(crate) struct Packet {
    pub(crate) pts: MediaTime,
    pub(crate) dts: Option<MediaTime>,
    pub(crate) duration: MediaTime,
    pub(crate) data: Bytes,
    pub(crate) keyframe: bool,
    pub(crate) discont: bool,
    /// Needed to decode later frames but not to be shown.
    pub(crate) decode_only: bool,
    /// Samples to clip from the start of the decoded output (audio that starts before zero).
    pub(crate) clip_start: u64,
}

#[derive(Debug, Clone)]
pub(crate) enum Item {
    Buffer(Packet),
    Gap { start: MediaTime, duration: MediaTime },
    Eos,
}

/// An item and the generation (seek) it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Tagged {
    pub(crate) generation: u64,
    pub(crate) item: Item,
}

/// Figures about one track that outlive its subscription, readable at any time.
#[derive(Debug)]
pub struct TrackStats {
    fetched_bytes: AtomicU64,
    fetches: AtomicU64,
    frames: AtomicU64,
    /// Meeting time (ns) up to which media was handed to the feeder; `i64::MAX` once the
    /// track has nothing more to send.
    pub(crate) buffered_until: AtomicI64,
    /// The sink has rendered the end of the stream since the last seek.
    ended: AtomicBool,
}

impl Default for TrackStats {
    fn default() -> Self {
        TrackStats {
            fetched_bytes: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            buffered_until: AtomicI64::new(0),
            ended: AtomicBool::new(false),
        }
    }
}

impl TrackStats {
    /// Bytes read from the track's source by the player (index reads included).
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched_bytes.load(Ordering::Relaxed)
    }
    /// Range reads issued.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }
    /// Buffers rendered by the track's sink.
    pub fn rendered(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
    pub(crate) fn count_rendered(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
    }
    /// The track's sink has handed over its last buffer (the end of its last span) since the
    /// last seek: no more frames or samples come until the next seek.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }
    pub(crate) fn set_ended(&self, ended: bool) {
        self.ended.store(ended, Ordering::Relaxed);
    }
    pub(crate) fn buffered_until(&self) -> MediaTime {
        MediaTime::from_nanos(self.buffered_until.load(Ordering::Relaxed))
    }
}

/// A source that counts what the player reads into the track's [`TrackStats`].
pub(crate) struct StatsSource {
    pub(crate) inner: Arc<dyn RangeSource>,
    pub(crate) stats: Arc<TrackStats>,
}

impl RangeSource for StatsSource {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        let data = self.inner.read_range(start, len)?;
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        self.stats.fetched_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }
}

/// A fetched range served from memory; anything outside it goes to the track's source (an
/// Ogg packet that continues past the range, say).
struct Chunk<'a> {
    base: &'a dyn RangeSource,
    start: u64,
    data: Bytes,
}

impl RangeSource for Chunk<'_> {
    fn len(&self) -> u64 {
        self.base.len()
    }
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        let end = self.start + self.data.len() as u64;
        match start.checked_add(len) {
            Some(stop) if start >= self.start && stop <= end => {
                let from = (start - self.start) as usize;
                Ok(self.data.slice(from..from + len as usize))
            }
            _ => self.base.read_range(start, len),
        }
    }
}

/// Why a generation's run stopped early.
enum Flow {
    /// A newer command arrived.
    Command(Start),
    /// The subscription ended.
    Stop,
    /// The track cannot go on (damaged file, lost peer).
    Failed(String),
}

/// Where the meeting cursor is, as the pipeline reports it.
pub(crate) type Position = Arc<dyn Fn() -> Option<MediaTime> + Send + Sync>;

/// Everything one fetcher thread owns.
pub(crate) struct Fetcher {
    pub(crate) desc: TrackDesc,
    pub(crate) index: Arc<TrackIndex>,
    /// Where the index reads (cached: index walks re-read overlapping windows).
    pub(crate) source: Arc<dyn RangeSource>,
    /// Where media data is read, once.
    pub(crate) data_source: Arc<dyn RangeSource>,
    pub(crate) decoder: Option<AudioDecoder>,
    /// Media fetched ahead of the cursor before the fetcher pauses.
    pub(crate) buffer_target: MediaTime,
    pub(crate) out: Sender<Tagged>,
    pub(crate) commands: Receiver<Start>,
    pub(crate) stats: Arc<TrackStats>,
    pub(crate) position: Position,
    pub(crate) events: EventSink,
    pub(crate) sizer: RequestSizer,
}

/// State of one generation's walk.
struct Run {
    generation: u64,
    target: MediaTime,
    /// End (meeting time) of what was sent so far.
    sent_until: MediaTime,
    /// (end, bytes) of buffers sent, for the bytes-buffered figure.
    in_flight: VecDeque<(MediaTime, u64)>,
    discont: bool,
    last_duration: MediaTime,
    /// End (media time) of the last sample seen in the current span.
    media_end: MediaTime,
    /// Presentation times of the samples just sent: with B-frames, the next presentation
    /// time may belong to a sample decoded earlier.
    recent_pts: VecDeque<MediaTime>,
    /// The pipeline's position has been seen near the target: it reflects this generation.
    position_seen: bool,
    /// Damaged bytes were met in this span: delta frames are dropped until the next keyframe.
    skipping: bool,
    /// The file ends inside a sample of this span (a cut recording): nothing more comes.
    truncated: bool,
    last_stats: Instant,
}

impl Fetcher {
    pub(crate) fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        let name = format!("fetch-{}", self.desc.name);
        std::thread::Builder::new().name(name).spawn(move || self.main_loop())
    }

    fn main_loop(mut self) {
        let mut next: Option<Start> = None;
        loop {
            let mut start = match next.take() {
                Some(s) => s,
                None => match self.commands.recv() {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            // Only the newest of several queued seeks matters.
            while let Ok(newer) = self.commands.try_recv() {
                start = newer;
            }
            match self.run(start) {
                Ok(()) => {}
                Err(Flow::Command(s)) => next = Some(s),
                Err(Flow::Stop) => return,
                Err(Flow::Failed(message)) => match self.commands.try_recv() {
                    // A read cut short because the track was left (the player dropped, the
                    // runtime behind a peer gone) is no failure.
                    Err(TryRecvError::Disconnected) => return,
                    // A newer seek reads again anyway: it reports if that fails too.
                    Ok(newer) => next = Some(newer),
                    Err(TryRecvError::Empty) => self.fail(start.generation, message),
                },
            }
        }
    }

    /// Reports the track failed and ends its branch cleanly, so no sink waits for it; a later
    /// seek retries.
    fn fail(&mut self, generation: u64, message: String) {
        tracing::warn!(track = %self.desc.name, %message, "track failed");
        self.events.send(PlayerEvent::TrackError { track: self.desc.name.clone(), message });
        self.stats.buffered_until.store(i64::MAX, Ordering::Relaxed);
        let _ = self.out.send_timeout(Tagged { generation, item: Item::Eos }, Duration::from_secs(1));
    }

    fn run(&mut self, start: Start) -> Result<(), Flow> {
        let mut run = Run {
            generation: start.generation,
            target: start.target,
            sent_until: start.target,
            in_flight: VecDeque::new(),
            discont: true,
            last_duration: MediaTime::from_millis(20),
            media_end: MediaTime::ZERO,
            recent_pts: VecDeque::with_capacity(REORDER_LOOKAHEAD),
            skipping: false,
            truncated: false,
            position_seen: false,
            last_stats: Instant::now(),
        };
        self.stats.buffered_until.store(start.target.as_nanos(), Ordering::Relaxed);
        if let Some(decoder) = &mut self.decoder {
            decoder.reset();
        }
        let mut t = start.target;
        loop {
            let span = match self.desc.timeline.place(t) {
                Place::Done => return self.finish(&mut run),
                Place::Idle { next } => {
                    let Some(span) = self.desc.timeline.span(next).copied() else {
                        return self.finish(&mut run);
                    };
                    self.gap(&mut run, t, span.start)?;
                    t = span.start;
                    continue;
                }
                Place::Active { span, .. } => match self.desc.timeline.span(span).copied() {
                    Some(span) => span,
                    None => return self.finish(&mut run),
                },
            };
            if start.mode == StartMode::Preview {
                return self.preview(&mut run, span.to_media(t));
            }
            let ran_out = self.play_span(&mut run, &span, span.to_media(t))?;
            match span.end {
                // The media ended before the span did: nothing to show until the span ends.
                Some(end) => {
                    if ran_out < end {
                        self.gap(&mut run, ran_out.max(t), end)?;
                    }
                    t = end.max(t.saturating_add(MediaTime::from_nanos(1)));
                }
                None => return self.finish(&mut run),
            }
        }
    }

    /// The track has nothing more: end-of-stream, and an infinite buffer for the monitor.
    fn finish(&mut self, run: &mut Run) -> Result<(), Flow> {
        self.send(run, Item::Eos)?;
        self.stats.buffered_until.store(i64::MAX, Ordering::Relaxed);
        self.publish(run, true);
        Ok(())
    }

    /// Nothing to show from `from` to `until`: gaps no longer than a second each, sent as the
    /// cursor gets near, so a sink never waits far ahead and a seek never waits behind one.
    fn gap(&mut self, run: &mut Run, from: MediaTime, until: MediaTime) -> Result<(), Flow> {
        let mut at = from;
        while at < until {
            self.wait_for_room(run)?;
            let step = until.saturating_sub(at).min(MediaTime::from_secs(1));
            self.send(run, Item::Gap { start: at, duration: step })?;
            at = at.saturating_add(step);
            self.advance(run, at, 0);
        }
        run.discont = true;
        Ok(())
    }

    /// Preview: the keyframe at or before the target, shown at the target, then a short gap
    /// that makes the decoder output it at once.
    fn preview(&mut self, run: &mut Run, media: MediaTime) -> Result<(), Flow> {
        let target = run.target;
        if self.desc.kind != crate::manifest::TrackKind::Video {
            return self.send(run, Item::Gap { start: target, duration: MediaTime::from_millis(40) });
        }
        let failed = |e: crate::index::IndexError| Flow::Failed(e.to_string());
        let source = self.source.clone();
        let src = source.as_ref();
        let keyframe = self.index.seek(src, media).map_err(failed)?;
        let batch = self.index.samples(src, keyframe.pos, 1).map_err(failed)?;
        let Some(sample) = batch.samples.first() else { return Ok(()) };
        let data = self.index.sample_data(src, sample).map_err(failed)?;
        let duration = MediaTime::from_millis(40);
        let packet = Packet {
            pts: target,
            dts: Some(target),
            duration,
            data,
            keyframe: true,
            discont: true,
            decode_only: false,
            clip_start: 0,
        };
        let keyframe_data = packet.data.clone();
        self.send(run, Item::Buffer(packet))?;
        self.drain_decoder(run, keyframe_data, target.saturating_add(duration))?;
        self.send(
            run,
            Item::Gap { start: target.saturating_add(duration), duration: MediaTime::from_secs(1) },
        )
    }

    /// Makes a reordering video decoder (H.264/H.265 hold frames back for B-frames) output
    /// what it holds, when no more data follows for a while (a span's end, a preview):
    /// decoders drain on GAP only in key-unit trick mode, so push a copy of a keyframe, which
    /// flushes their reorder buffer. The copy is decode-only and stamped at `at`.
    fn drain_decoder(&self, run: &mut Run, keyframe: Bytes, at: MediaTime) -> Result<(), Flow> {
        if !matches!(self.index.info().codec, Codec::H264 | Codec::H265) {
            return Ok(());
        }
        // Each copy moves the reorder buffer on by one picture; H.264 holds at most a few.
        for i in 0..DRAIN_COPIES {
            let pts = at.saturating_add(MediaTime::from_millis(i));
            let packet = Packet {
                pts,
                dts: Some(pts),
                duration: MediaTime::from_millis(1),
                data: keyframe.clone(),
                keyframe: true,
                discont: false,
                decode_only: true,
                clip_start: 0,
            };
            self.send(run, Item::Buffer(packet))?;
        }
        Ok(())
    }

    /// Plays `span` from media time `media` until the span ends or the media runs out;
    /// returns the meeting time where what was sent ends.
    fn play_span(&mut self, run: &mut Run, span: &Span, media: MediaTime) -> Result<MediaTime, Flow> {
        let failed = |e: crate::index::IndexError| Flow::Failed(e.to_string());
        let source = self.source.clone();
        let index = self.index.clone();
        let src: &dyn RangeSource = source.as_ref();
        let preroll = if index.info().codec == Codec::Opus { OPUS_PREROLL } else { MediaTime::ZERO };
        let keyframe = index.seek(src, media.saturating_sub(preroll).max(MediaTime::ZERO)).map_err(failed)?;
        let end_media = span.end.map(|e| span.to_media(e));
        // Media before this is decoded but not shown: before the target or the span's start.
        let show_from = span.to_media(run.target.max(span.start));
        let past_end = |s: &Sample| end_media.is_some_and(|end| s.dts >= end && s.pts >= end);
        let mut pending: VecDeque<Sample> = VecDeque::new();
        let mut next_pos: Option<ReadPos> = Some(keyframe.pos);
        let mut first = true;
        run.skipping = false;
        run.truncated = false;
        // A keyframe of this span, to drain the decoder with when the span ends.
        let mut span_keyframe: Option<Bytes> = None;
        run.media_end = media;
        loop {
            // Keep enough samples indexed to find presentation order and fill a request.
            while pending.len() < INDEX_BATCH / 2 {
                let Some(pos) = next_pos else { break };
                let batch = index.samples(src, pos, INDEX_BATCH).map_err(failed)?;
                if batch.samples.is_empty() {
                    next_pos = None;
                    break;
                }
                for sample in batch.samples {
                    if let Some(sample) = self.admit(run, span, sample) {
                        pending.push_back(sample);
                    }
                }
                next_pos = batch.next;
            }
            let Some(head) = pending.front().copied() else {
                // The samples ran out: fine at the end of the media, or after damage already
                // reported; damage anywhere else.
                if let (Some(duration), false) = (index.info().duration, run.skipping || run.truncated) {
                    if run.media_end.saturating_add(MediaTime::from_secs(1)) < duration
                        && end_media.is_none_or(|end| run.media_end < end)
                    {
                        return Err(Flow::Failed(format!(
                            "the samples end at {} but the track lasts {duration}: the file is damaged",
                            run.media_end
                        )));
                    }
                }
                return Ok(span.to_meeting(run.media_end));
            };
            if past_end(&head) {
                let end = span.end.unwrap_or(span.to_meeting(run.media_end));
                if let Some(keyframe) = span_keyframe.take() {
                    self.drain_decoder(run, keyframe, end)?;
                }
                return Ok(end);
            }
            if first {
                self.poll_commands()?;
            } else {
                self.wait_for_room(run)?;
            }
            // The first request covers what the target needs; later ones what the buffer
            // target needs, within the request size.
            let horizon = if first {
                media
            } else {
                span.to_media(self.cursor(&mut *run).saturating_add(self.buffer_target))
            };
            let budget = self.sizer.request_bytes();
            let mut count = 0;
            let mut range_end = head.end();
            for s in pending.iter() {
                if count > 0
                    && (s.offset < head.offset
                        || s.end().saturating_sub(head.offset) > budget
                        || (s.dts > horizon && s.pts > horizon)
                        || past_end(s))
                {
                    break;
                }
                range_end = range_end.max(s.end());
                count += 1;
            }
            let started = Instant::now();
            let data = self
                .data_source
                .read_range(head.offset, range_end - head.offset)
                .map_err(|e| Flow::Failed(format!("reading bytes {}..{range_end}: {e}", head.offset)))?;
            self.sizer.record(data.len() as u64, started.elapsed());
            let chunk = Chunk { base: src, start: head.offset, data };
            first = false;
            for i in 0..count {
                let sample = pending[i];
                let around = run
                    .recent_pts
                    .iter()
                    .copied()
                    .chain(pending.iter().skip(i + 1).take(REORDER_LOOKAHEAD).map(|s| s.pts));
                let duration = presentation_duration(&sample, around).unwrap_or(run.last_duration);
                if run.recent_pts.len() == REORDER_LOOKAHEAD {
                    run.recent_pts.pop_front();
                }
                run.recent_pts.push_back(sample.pts);
                run.last_duration = duration;
                let data = index.sample_data(&chunk, &sample).map_err(failed)?;
                if sample.keyframe && span_keyframe.is_none() {
                    span_keyframe = Some(data.clone());
                }
                let hidden = sample.pts.saturating_add(duration) <= show_from
                    || end_media.is_some_and(|end| sample.pts >= end);
                run.media_end = run.media_end.max(sample.pts.saturating_add(duration));
                self.emit(run, span, &sample, duration, data, hidden)?;
            }
            pending.drain(..count);
            self.publish(run, false);
        }
    }

    /// Whether a sample the index listed is sent. After bytes the index skipped (damage) a
    /// video track's delta frames have lost their references: they are dropped up to the next
    /// keyframe, so the picture holds the last good frame, and the damage is reported. A long
    /// pause between frames is not damage. A sample the file ends inside ends the span.
    fn admit(&mut self, run: &mut Run, span: &Span, mut sample: Sample) -> Option<Sample> {
        if run.truncated {
            return None;
        }
        let is_video = self.desc.kind == crate::manifest::TrackKind::Video;
        let len = self.data_source.len();
        if sample.end() > len {
            run.truncated = true;
            self.report_damage(
                span.to_meeting(sample.pts),
                sample.offset,
                format!("the file ends at byte {len}, inside this sample: the track ends here"),
            );
            return None;
        }
        if sample.follows_damage {
            let skip = is_video && !sample.keyframe;
            self.report_damage(
                span.to_meeting(sample.pts),
                sample.offset,
                if skip {
                    "bytes before this frame are damaged or missing: frames up to the next keyframe are skipped"
                } else {
                    "bytes before this sample are damaged or missing"
                }
                .to_string(),
            );
            run.skipping |= skip;
        }
        if sample.keyframe {
            // The first frame after a skip starts the decoder afresh.
            sample.follows_damage |= std::mem::take(&mut run.skipping);
            return Some(sample);
        }
        (!run.skipping).then_some(sample)
    }

    fn report_damage(&self, at: MediaTime, offset: u64, what: String) {
        let message = format!("t {at} (byte {offset}): {what}");
        tracing::warn!(track = %self.desc.name, %message, "damaged media");
        self.events.send(PlayerEvent::Damaged { track: self.desc.name.clone(), at, offset, message });
    }

    /// Sends one sample as the feeder wants it: coded, or decoded to PCM for engine audio.
    fn emit(
        &mut self,
        run: &mut Run,
        span: &Span,
        sample: &Sample,
        duration: MediaTime,
        data: Bytes,
        hidden: bool,
    ) -> Result<(), Flow> {
        let pts = span.to_meeting(sample.pts);
        let size = data.len() as u64;
        if sample.follows_damage {
            run.discont = true;
        }
        if let Some(decoder) = &mut self.decoder {
            let pcm = match decoder.decode(&data) {
                Ok(pcm) => pcm,
                Err(message) => {
                    tracing::debug!(track = %self.desc.name, %message, "skipping an undecodable packet");
                    run.discont = true;
                    return Ok(());
                }
            };
            let rate = decoder.rate as i64;
            let channels = decoder.channels as usize;
            let frame_time =
                |frames: u64| MediaTime::from_ticks(frames as i64, rate as u64).unwrap_or_default();
            // Output aligns with the end of the packet's span; the priming delay shifts it.
            let decoded = frame_time(pcm.frames);
            let end = pts.saturating_add(duration.max(decoded)).saturating_sub(frame_time(decoder.priming()));
            let start = end.saturating_sub(decoded);
            let keep_from = run.target.max(span.start);
            let keep_to = span.end.unwrap_or(MediaTime::MAX);
            let skip = frames_between(start, keep_from, rate);
            let keep_end = frames_between(start, keep_to, rate);
            let (from, to) = (skip.min(pcm.frames), keep_end.min(pcm.frames));
            if from >= to {
                return Ok(());
            }
            let samples = &pcm.data[from as usize * channels..to as usize * channels];
            let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
            let packet = Packet {
                pts: start.saturating_add(frame_time(from)),
                dts: None,
                duration: frame_time(to - from),
                data: Bytes::from(bytes),
                keyframe: true,
                discont: std::mem::take(&mut run.discont),
                decode_only: false,
                clip_start: 0,
            };
            let end = packet.pts.saturating_add(packet.duration);
            self.send(run, Item::Buffer(packet))?;
            self.advance(run, end, size);
            return Ok(());
        }
        let is_video = self.desc.kind == crate::manifest::TrackKind::Video;
        let dts = span.to_meeting(sample.dts);
        let mut packet = Packet {
            pts: pts.max(MediaTime::ZERO),
            // Decoders order frames by PTS. CMAF files with negative composition offsets put
            // a B-frame's PTS before its DTS, which made decoders retime frames by one: video
            // goes without DTS (audio keeps it where it is valid).
            dts: (!is_video && dts >= MediaTime::ZERO && dts <= pts).then_some(dts),
            duration,
            data,
            keyframe: sample.keyframe,
            discont: std::mem::take(&mut run.discont),
            decode_only: is_video && (hidden || pts < MediaTime::ZERO),
            clip_start: 0,
        };
        if !is_video && pts < MediaTime::ZERO {
            // Audio before zero (Opus pre-skip): starts at zero with its head clipped.
            let rate = self.index.info().audio.map(|a| a.sample_rate).unwrap_or(48_000) as i64;
            packet.clip_start = frames_between(pts, MediaTime::ZERO, rate);
        }
        let end = pts.saturating_add(duration);
        tracing::trace!(
            track = %self.desc.name, generation = run.generation, pts = %packet.pts, dts = ?packet.dts,
            duration = %packet.duration, keyframe = packet.keyframe, hidden, "sample"
        );
        self.send(run, Item::Buffer(packet))?;
        self.advance(run, end, size);
        Ok(())
    }

    /// Records that media up to `end` was handed on.
    fn advance(&mut self, run: &mut Run, end: MediaTime, bytes: u64) {
        if end > run.sent_until {
            run.sent_until = end;
            // A reordering decoder (B-frames) outputs a frame only once later ones arrived:
            // the last few frames handed on are not playable yet.
            let held = if bytes > 0 && matches!(self.index.info().codec, Codec::H264 | Codec::H265) {
                MediaTime::from_nanos(run.last_duration.as_nanos().saturating_mul(REORDER_HELD))
            } else {
                MediaTime::ZERO
            };
            self.stats.buffered_until.store(end.saturating_sub(held).as_nanos(), Ordering::Relaxed);
        }
        if bytes > 0 {
            run.in_flight.push_back((end, bytes));
        }
    }

    /// Where the cursor is for this generation: the pipeline's position once it has been seen
    /// near the target (right after a seek the pipeline may still report where it was), the
    /// target until then.
    fn cursor(&self, run: &mut Run) -> MediaTime {
        let Some(position) = (self.position)() else { return run.target };
        if !run.position_seen {
            let slack = MediaTime::from_secs(1);
            run.position_seen =
                position >= run.target.saturating_sub(slack) && position <= run.target.saturating_add(slack);
        }
        if run.position_seen {
            position.max(run.target)
        } else {
            run.target
        }
    }

    /// Waits while the media fetched ahead of the cursor reaches the buffer target.
    fn wait_for_room(&mut self, run: &mut Run) -> Result<(), Flow> {
        loop {
            let cursor = self.cursor(run);
            if run.sent_until.saturating_sub(cursor) < self.buffer_target {
                return Ok(());
            }
            self.publish(run, false);
            match self.commands.recv_timeout(POLL) {
                Ok(start) => return Err(Flow::Command(start)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(Flow::Stop),
            }
        }
    }

    fn poll_commands(&self) -> Result<(), Flow> {
        match self.commands.try_recv() {
            Ok(start) => Err(Flow::Command(start)),
            Err(TryRecvError::Empty) => Ok(()),
            Err(TryRecvError::Disconnected) => Err(Flow::Stop),
        }
    }

    /// Hands an item to the feeder, waiting while the channel is full but giving way to a new
    /// command or the end of the subscription.
    fn send(&self, run: &Run, item: Item) -> Result<(), Flow> {
        let mut tagged = Tagged { generation: run.generation, item };
        loop {
            match self.out.send_timeout(tagged, POLL) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(back)) => {
                    tagged = back;
                    self.poll_commands()?;
                }
                Err(SendTimeoutError::Disconnected(_)) => return Err(Flow::Stop),
            }
        }
    }

    /// Publishes buffer and fetch figures, at most every [`STATS_EVERY`] unless `now`.
    fn publish(&self, run: &mut Run, now: bool) {
        if !now && run.last_stats.elapsed() < STATS_EVERY {
            return;
        }
        run.last_stats = Instant::now();
        let cursor = self.cursor(run);
        while run.in_flight.front().is_some_and(|(end, _)| *end <= cursor) {
            run.in_flight.pop_front();
        }
        self.events.send(PlayerEvent::Buffer {
            track: self.desc.name.clone(),
            buffered: run.sent_until.saturating_sub(cursor).max(MediaTime::ZERO),
            bytes: run.in_flight.iter().map(|(_, b)| b).sum(),
            throughput: self.sizer.throughput(),
            rtt: self.sizer.rtt(),
        });
    }
}

/// Sample frames at `rate` from `from` to `to` (zero when `to` is not after `from`).
fn frames_between(from: MediaTime, to: MediaTime, rate: i64) -> u64 {
    if to <= from {
        return 0;
    }
    let nanos = to.as_nanos().saturating_sub(from.as_nanos()) as i128;
    ((nanos * rate as i128 + 500_000_000) / 1_000_000_000) as u64
}

/// Next presentation time minus this one, among the samples decoded around it (B-frames put
/// the next presentation time before or after it in decode order): exact even where the
/// container rounds durations (Matroska's whole milliseconds).
fn presentation_duration(sample: &Sample, around: impl Iterator<Item = MediaTime>) -> Option<MediaTime> {
    around
        .filter(|pts| *pts > sample.pts)
        .map(|pts| pts.saturating_sub(sample.pts))
        .min()
        .or((sample.duration > MediaTime::ZERO).then_some(sample.duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pts_ms: i64, dts_ms: i64) -> Sample {
        Sample {
            pts: MediaTime::from_millis(pts_ms),
            dts: MediaTime::from_millis(dts_ms),
            duration: MediaTime::ZERO,
            offset: 0,
            size: 1,
            keyframe: false,
            follows_damage: false,
        }
    }

    #[test]
    fn durations_follow_presentation_order_across_b_frames() {
        // Decode order I0 P120 B40 B80 P240: the B-frame at 80 ends where P120, decoded before
        // it, starts.
        let samples = [sample(0, -40), sample(120, 0), sample(40, 40), sample(80, 80), sample(240, 120)];
        let d = |i: usize| presentation_duration(&samples[i], samples.iter().map(|s| s.pts));
        assert_eq!(d(0), Some(MediaTime::from_millis(40)));
        assert_eq!(d(2), Some(MediaTime::from_millis(40)));
        assert_eq!(d(3), Some(MediaTime::from_millis(40)));
        assert_eq!(d(1), Some(MediaTime::from_millis(120)));
        assert_eq!(presentation_duration(&samples[4], samples[..4].iter().map(|s| s.pts)), None);
    }

    #[test]
    fn frames_between_rounds_to_the_nearest_frame() {
        assert_eq!(frames_between(MediaTime::ZERO, MediaTime::from_millis(10), 48_000), 480);
        assert_eq!(frames_between(MediaTime::from_millis(10), MediaTime::ZERO, 48_000), 0);
    }
}
