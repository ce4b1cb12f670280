//! The fetch worker: one thread per subscribed track that turns the cursor into byte-range
//! reads and packets.
//!
//! For a start (a seek, a subscription) it asks the index for the keyframe at or before the
//! target, fetches the range that shows the target first (what the first frame needs), then
//! walks samples in decode order, coalescing them into one read per request. It reads only
//! while the media handed out ahead of the cursor is below the buffer target, in time and in
//! bytes, sizes its requests from measured throughput and round-trip time
//! ([`RequestSizer`]), and hands out packets (zero-copy `Bytes` slices of the fetched range)
//! through the subscription's bounded channel: a consumer that stops taking them stops the
//! reads. Every item carries its start's ticket. Outside its spans a track sends gaps (and
//! the end after its last span). A caption track sends its cues; a track without an index
//! its bytes in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError};
use futures::task::AtomicWaker;

use super::block_cache::BlockCache;
use super::figures::TrackFigures;
use super::item::{Cue, Item, Packet, SeekTicket, TrackItem};
use super::meeting::TrackDesc;
use super::read_ahead::ReadAhead;
use super::sizer::RecentWaits;
use super::subscription::TrackFile;
use super::timeline::{Place, Span};
use super::{RequestSizer, Shared};
use crate::index::{Codec, Container, Keyframe, ReadPos, Sample, TrackIndex};
use crate::manifest::TrackKind;
use crate::source::{Cancel, RangeSource, ReadOptions, SourceError};
use crate::time::MediaTime;

/// How often the worker wakes to re-check its buffer and commands while it waits.
const POLL: Duration = Duration::from_millis(20);
/// Samples asked of the index at once.
const INDEX_BATCH: usize = 128;
/// Samples looked ahead (decode order) to find the next presentation time: covers B-frame
/// reordering.
const REORDER_LOOKAHEAD: usize = 16;
/// Opus decoders need this much audio before a seek point to converge (RFC 7845 section 4.6).
const OPUS_PREROLL: MediaTime = MediaTime::from_millis(80);
/// Frames a reordering decoder may hold back: not yet playable when handed out.
const REORDER_HELD: i64 = 3;
/// An index walk that waits this long on the link fetches media: read ahead of it.
const WALK_WAITS: Duration = Duration::from_millis(20);
/// The least a read ahead asks for.
const READ_AHEAD_LEAST: u64 = 64 * 1024;
/// A video frame this far behind the cursor is late: with catch-up on, it is not fetched.
const LATE: MediaTime = MediaTime::from_millis(100);
/// Past a start's target, the frames a reordering decoder holds before showing the target.
const REORDER_MARGIN: MediaTime = MediaTime::from_millis(100);
/// Video refills wait while a subscribed audio track has less than this ahead...
const SOUND_FIRST_LEAD: MediaTime = MediaTime::from_secs(2);
/// ...if the video track has this much of its own...
const SOUND_FIRST_OWN: MediaTime = MediaTime::from_secs(1);
/// ...for this long at most at a time.
const SOUND_FIRST_MOST: Duration = Duration::from_secs(2);
/// A prefetch asks this much more than the mean byte rate says (keyframes are large)...
const PREFETCH_MARGIN: f64 = 1.5;
/// ...and at least this much.
const PREFETCH_LEAST: u64 = 64 * 1024;
/// Bytes per chunk of a track without an index.
const CHUNK: u64 = 256 * 1024;

/// Whether the index finds samples by reading the media itself (Matroska clusters, Ogg
/// pages, MP3 frames, fragments) rather than from a table it holds (MP4's `moov`, cues).
fn walks_media(index: &TrackIndex) -> bool {
    !matches!(index.info().container, Container::Mp4 | Container::WebVtt | Container::Srt)
}

/// What a worker is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    pub(crate) ticket: SeekTicket,
    /// Meeting time to start at.
    pub(crate) target: MediaTime,
    pub(crate) mode: StartMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartMode {
    /// From the keyframe at or before the target, every sample.
    Accurate,
    /// Only the keyframe at or before the target (a preview), then nothing.
    Keyframe,
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

/// Why a start's run stopped early.
enum Flow {
    /// A newer start arrived.
    Command(Start),
    /// The subscription ended.
    Stop,
    /// The track cannot go on (damaged file, lost peer).
    Failed(String),
}

/// Everything one worker thread owns.
pub(crate) struct Fetcher {
    pub(crate) desc: TrackDesc,
    /// `None` for a track without an index: it streams as chunks.
    pub(crate) index: Option<Arc<TrackIndex>>,
    /// Where the index reads (cached: index walks re-read overlapping windows).
    pub(crate) source: Arc<BlockCache>,
    /// Where media data is read, once.
    pub(crate) data_source: Arc<dyn RangeSource>,
    /// Every file of the track (one for most): `index`, `source` and `data_source` are those
    /// of file number `file`, the one the span being played shows.
    pub(crate) files: Vec<TrackFile>,
    pub(crate) file: u32,
    /// Media handed out ahead of the cursor before the worker waits.
    pub(crate) buffer_target: MediaTime,
    pub(crate) buffer_bytes: u64,
    pub(crate) out: Sender<TrackItem>,
    /// Wakes an async consumer after each item.
    pub(crate) waker: Arc<AtomicWaker>,
    pub(crate) commands: Receiver<Start>,
    /// The consumer took something (see `Control::nudge`).
    pub(crate) nudges: Receiver<()>,
    pub(crate) figures: Arc<TrackFigures>,
    /// The stream, for its cursor; gone when the stream is.
    pub(crate) shared: Weak<Shared>,
    /// Set when the subscription is dropped or a newer start arrives: the read in flight
    /// gives up.
    pub(crate) cancel: Arc<Cancel>,
    /// Cleared when the subscription is dropped.
    pub(crate) alive: Arc<AtomicBool>,
    /// Late video frames are dropped up to the next keyframe (`Subscription::set_catch_up`).
    pub(crate) catch_up: Arc<AtomicBool>,
    pub(crate) sizer: RequestSizer,
    pub(crate) waits: RecentWaits,
}

/// State of one start's walk.
struct Run {
    ticket: SeekTicket,
    target: MediaTime,
    /// End (meeting time) of what was handed out so far.
    sent_until: MediaTime,
    /// End (meeting time) of the media handed out so far, gaps left out: what the track has
    /// of its own to play.
    media_until: MediaTime,
    /// (end, bytes) of packets handed out, for the bytes ahead of the cursor.
    in_flight: VecDeque<(MediaTime, u64)>,
    discont: bool,
    last_duration: MediaTime,
    /// End (media time) of the last sample seen in the current span.
    media_end: MediaTime,
    /// Presentation times of the samples just sent: with B-frames, the next presentation
    /// time may belong to a sample decoded earlier.
    recent_pts: VecDeque<MediaTime>,
    /// The cursor has been seen near the target: it reflects this start.
    cursor_seen: bool,
    /// Damaged bytes were met in this span: delta frames are dropped until the next keyframe.
    skipping: bool,
    /// The file ends inside a sample of this span (a cut recording): nothing more comes.
    truncated: bool,
    /// Nothing read yet for this start: playback waits on its first reads, which go out
    /// urgent (see [`ReadOptions`]).
    awaited: bool,
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
                None => match self.wait_command() {
                    Some(s) => s,
                    None => return,
                },
            };
            // Only the newest of several queued starts matters.
            while let Ok(newer) = self.commands.try_recv() {
                start = newer;
            }
            self.cancel.reset();
            match self.run(start) {
                Ok(()) => {}
                Err(Flow::Command(s)) => next = Some(s),
                Err(Flow::Stop) => return,
                Err(Flow::Failed(message)) => match self.commands.try_recv() {
                    // A read cut short because the track was left (the runtime behind a
                    // peer gone) is no failure.
                    _ if !self.alive.load(Ordering::Relaxed) => return,
                    Err(TryRecvError::Disconnected) => return,
                    // A newer start reads again anyway: it reports if that fails too.
                    Ok(newer) => next = Some(newer),
                    Err(TryRecvError::Empty) => self.fail(start.ticket, message),
                },
            }
        }
    }

    /// Waits for a start; `None` once the subscription is gone.
    fn wait_command(&self) -> Option<Start> {
        loop {
            if !self.alive.load(Ordering::Relaxed) {
                return None;
            }
            match self.commands.recv_timeout(POLL * 5) {
                Ok(s) => return Some(s),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Reports the track failed, so no consumer waits for it; a later start retries.
    fn fail(&mut self, ticket: SeekTicket, message: String) {
        tracing::warn!(track = %self.desc.name, %message, "track failed");
        self.figures.set_buffered_until(MediaTime::MAX);
        let item = TrackItem { ticket, item: Item::Failed { message } };
        if self.out.send_timeout(item, Duration::from_secs(1)).is_ok() {
            self.waker.wake();
        }
    }

    fn run(&mut self, start: Start) -> Result<(), Flow> {
        let mut run = Run {
            ticket: start.ticket,
            target: start.target,
            sent_until: start.target,
            media_until: start.target,
            in_flight: VecDeque::new(),
            discont: true,
            last_duration: MediaTime::from_millis(20),
            media_end: MediaTime::ZERO,
            recent_pts: VecDeque::with_capacity(REORDER_LOOKAHEAD),
            cursor_seen: false,
            skipping: false,
            truncated: false,
            awaited: true,
        };
        self.figures.set_buffered_until(start.target);
        self.figures.buffered_bytes.store(0, Ordering::Relaxed);
        if self.index.is_none() {
            return self.chunks(&mut run);
        }
        if self.desc.kind == TrackKind::Captions {
            return self.cues(&mut run);
        }
        self.source.set_awaited(true);
        let mut t = start.target;
        loop {
            let (span_index, span) = match self.desc.timeline.place(t) {
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
                    Some(s) => (span, s),
                    None => return self.finish(&mut run),
                },
            };
            let index = self.use_file(&mut run, span.file)?;
            if start.mode == StartMode::Keyframe {
                return self.keyframe(&mut run, &index, span_index, &span, span.to_media(t));
            }
            let ran_out = self.play_span(&mut run, &index, span_index, &span, span.to_media(t))?;
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

    /// Reads from file `file` of the track from now on: its index, its sources. Coming from
    /// another file the decoder starts afresh, and that file's truncation or damage no longer
    /// holds.
    fn use_file(&mut self, run: &mut Run, file: u32) -> Result<Arc<TrackIndex>, Flow> {
        if file != self.file {
            let next = self
                .files
                .get(file as usize)
                .cloned()
                .ok_or_else(|| Flow::Failed(format!("the track has no file {file}")))?;
            (self.index, self.source, self.data_source) = (next.index, next.source, next.data_source);
            self.file = file;
            self.source.set_awaited(run.awaited);
            run.discont = true;
            run.truncated = false;
            run.skipping = false;
        }
        self.index.clone().ok_or_else(|| Flow::Failed(format!("file {file} of the track has no index")))
    }

    /// The track has nothing more: the end, and an infinite buffer for whoever watches.
    fn finish(&mut self, run: &mut Run) -> Result<(), Flow> {
        self.send(run, Item::End)?;
        self.figures.set_buffered_until(MediaTime::MAX);
        Ok(())
    }

    /// Nothing to show from `from` to `until`: gaps no longer than a second each, sent as the
    /// cursor gets near, so a consumer never waits far ahead and a seek never waits behind one.
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

    /// A preview: the keyframe at or before the target, alone; other tracks have nothing to
    /// preview and say so with a short gap.
    fn keyframe(
        &mut self,
        run: &mut Run,
        index: &TrackIndex,
        span_index: usize,
        span: &Span,
        media: MediaTime,
    ) -> Result<(), Flow> {
        if self.desc.kind != TrackKind::Video {
            let gap = Item::Gap { start: run.target, duration: MediaTime::from_millis(40) };
            return self.send(run, gap);
        }
        let failed = |e: crate::index::IndexError| Flow::Failed(e.to_string());
        let source = self.source.clone();
        let src = source.as_ref();
        let keyframe = index.seek(src, media).map_err(failed)?;
        let batch = index.samples(src, keyframe.pos, 1).map_err(failed)?;
        let Some(sample) = batch.samples.first() else { return Ok(()) };
        let data = index.sample_data(src, sample).map_err(failed)?;
        let packet = Packet {
            pts: span.to_meeting(sample.pts),
            dts: Some(span.to_meeting(sample.dts)),
            duration: sample.duration,
            data,
            keyframe: true,
            decode_only: false,
            discont: true,
            span: span_index,
        };
        self.send(run, Item::Packet(packet))
    }

    /// Every cue of a caption track that ends after the target, in order, then the end.
    fn cues(&mut self, run: &mut Run) -> Result<(), Flow> {
        let failed = |e: crate::index::IndexError| Flow::Failed(e.to_string());
        let mut cues = Vec::new();
        for (number, file) in self.files.iter().enumerate() {
            let Some(index) = file.index.as_deref() else { continue };
            let src = file.source.as_ref();
            let spans: Vec<&Span> =
                self.desc.timeline.spans().iter().filter(|s| s.file as usize == number).collect();
            let mut pos =
                Some(index.keyframes(src).map_err(failed)?.first().map(|k| k.pos).unwrap_or_default());
            while let Some(at) = pos {
                let batch = index.samples(src, at, 1024).map_err(failed)?;
                if batch.samples.is_empty() {
                    break;
                }
                for sample in &batch.samples {
                    let data = index.sample_data(src, sample).map_err(failed)?;
                    let text = crate::index::subtitles::cue_body(&String::from_utf8_lossy(&data));
                    for span in &spans {
                        let start = span.to_meeting(sample.pts).max(span.start);
                        let end = span.to_meeting(sample.pts.saturating_add(sample.duration));
                        let end = span.end.map_or(end, |e| end.min(e));
                        if start < end && end > run.target {
                            cues.push(Cue { start, end, text: text.clone() });
                        }
                    }
                }
                pos = batch.next;
            }
        }
        cues.sort_by_key(|c| c.start);
        for cue in cues {
            self.send(run, Item::Cue(cue))?;
        }
        self.finish(run)
    }

    /// A track without an index: its bytes in order from the start, as the consumer takes
    /// them (the channel bounds how far ahead).
    fn chunks(&mut self, run: &mut Run) -> Result<(), Flow> {
        let len = self.data_source.len();
        let mut offset = 0;
        while offset < len {
            self.poll_commands()?;
            let size = CHUNK.min(len - offset);
            let data = self.read(offset, size, 0)?;
            self.send(run, Item::Chunk { offset, data })?;
            offset += size;
        }
        self.finish(run)
    }

    /// Reads a range of media data, giving up when the subscription ends or a new start comes;
    /// its first `urgent` bytes are awaited now.
    fn read(&mut self, start: u64, len: u64, urgent: u64) -> Result<Bytes, Flow> {
        if let Some(data) = self.source.read_cached(start, len) {
            return Ok(data);
        }
        loop {
            let started = Instant::now();
            match self.data_source.read_range_with(start, len, ReadOptions::urgent(&self.cancel, urgent)) {
                Ok(data) => {
                    tracing::debug!(track = %self.desc.name, start, len, took = ?started.elapsed(), "read");
                    self.sizer.record(data.len() as u64, started.elapsed());
                    self.waits.note(started.elapsed());
                    self.figures.throughput.store(self.sizer.throughput().to_bits(), Ordering::Relaxed);
                    self.figures.rtt.store(self.sizer.rtt().as_nanos() as u64, Ordering::Relaxed);
                    return Ok(data);
                }
                Err(SourceError::Cancelled { .. }) => {
                    self.poll_commands()?;
                    // The cancel belonged to the start this run already took up (it lands
                    // just after its command): read again.
                    self.cancel.reset();
                }
                Err(e) => return Err(Flow::Failed(format!("reading bytes {start}..{}: {e}", start + len))),
            }
        }
    }

    /// Plays `span` from media time `media` until the span ends or the media runs out;
    /// returns the meeting time where what was sent ends.
    fn play_span(
        &mut self,
        run: &mut Run,
        index: &TrackIndex,
        span_index: usize,
        span: &Span,
        media: MediaTime,
    ) -> Result<MediaTime, Flow> {
        let failed = |e: crate::index::IndexError| Flow::Failed(e.to_string());
        let source = self.source.clone();
        let src: &dyn RangeSource = source.as_ref();
        let preroll = if index.info().codec == Codec::Opus { OPUS_PREROLL } else { MediaTime::ZERO };
        let keyframe = index.seek(src, media.saturating_sub(preroll).max(MediaTime::ZERO)).map_err(failed)?;
        self.prefetch_walk(index, &keyframe, media, run.awaited)?;
        let end_media = span.end.map(|e| span.to_media(e));
        // Media before this is decoded but not shown: before the target or the span's start.
        let show_from = span.to_media(run.target.max(span.start));
        let past_end = |s: &Sample| end_media.is_some_and(|end| s.dts >= end && s.pts >= end);
        let mut pending: VecDeque<Sample> = VecDeque::new();
        let mut next_pos: Option<ReadPos> = Some(keyframe.pos);
        let mut first = true;
        // Started the first time the index walk waits on the link (see `read_ahead`).
        let mut read_ahead: Option<ReadAhead> = None;
        run.skipping = false;
        run.truncated = false;
        run.media_end = media;
        // A span starts from its own keyframe, not where the last span left off, even in
        // the same file (a recording pause cut out): a discontinuity for the decoder.
        run.discont = true;
        loop {
            // Keep enough samples indexed to find presentation order and fill a request; the
            // first request's whole stretch: up to the target and a refill beyond it where
            // the index lists samples without reading; where the walk reads the media, only
            // the frames a reordering decoder needs past the target, so the first frame does
            // not wait for the walk's next round trip.
            let beyond = if walks_media(index) { REORDER_MARGIN } else { self.refill() };
            let first_horizon = media.saturating_add(beyond);
            let wanted = |pending: &VecDeque<Sample>| {
                pending.len() < INDEX_BATCH / 2
                    || (first
                        && pending.back().is_some_and(|s| s.dts <= first_horizon)
                        && pending
                            .back()
                            .zip(pending.front())
                            .is_some_and(|(b, f)| b.end().saturating_sub(f.offset) < RequestSizer::MAX))
            };
            while wanted(&pending) {
                let Some(pos) = next_pos else { break };
                let asked = Instant::now();
                let batch = index.samples(src, pos, INDEX_BATCH).map_err(failed)?;
                // An index walk fetches the media it walks (Matroska clusters, Ogg pages): a
                // wait on the link like any read, and from now on worth reading ahead of.
                let waited = asked.elapsed();
                self.waits.note(waited);
                if waited >= WALK_WAITS && read_ahead.is_none() {
                    read_ahead = Some(ReadAhead::new(&self.desc.name, self.source.clone()));
                }
                if batch.samples.is_empty() {
                    next_pos = None;
                    break;
                }
                for sample in batch.samples {
                    if let Some(sample) = self.admit(run, span, sample)? {
                        pending.push_back(sample);
                    }
                }
                next_pos = batch.next;
            }
            if let (Some(ahead), Some(from), Some(to)) = (&read_ahead, pending.front(), pending.back()) {
                // The stretch after the samples walked, as long as the buffer target holds at
                // their byte rate.
                let bytes: u64 = pending.iter().map(|s| s.size).sum();
                let lasts = to.pts.saturating_sub(from.pts).as_secs_f64().max(0.5);
                let len = (bytes as f64 / lasts * self.target().as_secs_f64()) as u64;
                ahead.want(to.end(), len.max(READ_AHEAD_LEAST));
            }
            if !first && self.drop_late(run, span, &mut pending) && pending.is_empty() {
                continue;
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
                return Ok(span.end.unwrap_or(span.to_meeting(run.media_end)));
            }
            if first {
                self.poll_commands()?;
            } else {
                self.wait_for_room(run)?;
            }
            // The first request covers what the target needs, whatever its size (split, it
            // would cost a round trip per piece), and a refill beyond it, so playing on does
            // not wait for the next one; later ones what the buffer target needs and a refill
            // beyond it, within the request size: topping up only what the cursor freed would
            // cost a round trip per few packets on a far link.
            let (horizon, budget) = if first {
                (first_horizon, RequestSizer::MAX)
            } else {
                let ahead = self.target().saturating_add(self.refill());
                (span.to_media(self.cursor(&mut *run).saturating_add(ahead)), self.sizer.request_bytes())
            };
            let mut count = 0;
            let mut range_end = head.end();
            let mut urgent_end = head.end();
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
                if s.dts <= media || s.pts <= media {
                    urgent_end = urgent_end.max(s.end());
                }
                count += 1;
            }
            // A start's first read: what the target needs is awaited, the refill is not.
            let urgent = if std::mem::take(&mut run.awaited) { urgent_end - head.offset } else { 0 };
            self.source.set_awaited(false);
            let data = self.read(head.offset, range_end - head.offset, urgent)?;
            let chunk = Chunk { base: src, start: head.offset, data };
            // With catch-up on, frames fetched but already late are decoded (later frames
            // refer to them) and not shown: a late picture is a wrong picture.
            let late_cursor = (self.desc.kind == TrackKind::Video && self.catch_up.load(Ordering::Relaxed))
                .then(|| span.to_media(self.cursor(run)));
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
                let hidden = sample.pts.saturating_add(duration) <= show_from
                    || end_media.is_some_and(|end| sample.pts >= end)
                    || late_cursor.is_some_and(|cursor| {
                        sample.pts.saturating_add(duration).saturating_add(LATE) < cursor
                    });
                run.media_end = run.media_end.max(sample.pts.saturating_add(duration));
                let packet = Packet {
                    pts: span.to_meeting(sample.pts),
                    dts: (sample.dts != sample.pts).then(|| span.to_meeting(sample.dts)),
                    duration,
                    data,
                    keyframe: sample.keyframe,
                    decode_only: hidden,
                    discont: std::mem::take(&mut run.discont) || sample.follows_damage,
                    span: span_index,
                };
                let (end, size) = (packet.end(), packet.data.len() as u64);
                self.send(run, Item::Packet(packet))?;
                self.advance(run, end, size);
            }
            pending.drain(..count);
        }
    }

    /// Where the index walks the media itself (Matroska clusters, Ogg pages, MP3 frames,
    /// fragments), fetches in one read what the walk from `keyframe` to `media` and a refill
    /// beyond is likely to cover, estimated at the file's mean byte rate: on a far link the
    /// walk would otherwise pay a round trip per window. A cancelled prefetch is no failure.
    fn prefetch_walk(
        &mut self,
        index: &TrackIndex,
        keyframe: &Keyframe,
        media: MediaTime,
        awaited: bool,
    ) -> Result<(), Flow> {
        let info = index.info();
        if !walks_media(index) {
            return Ok(());
        }
        let Some(duration) = info.duration.filter(|d| *d > MediaTime::ZERO) else { return Ok(()) };
        let byte_rate = self.data_source.len() as f64 / duration.as_secs_f64();
        let estimate = |stretch: MediaTime| {
            (byte_rate * stretch.as_secs_f64() * PREFETCH_MARGIN) as u64 + PREFETCH_LEAST
        };
        let needed = media.saturating_sub(keyframe.pts);
        let len = estimate(needed.saturating_add(self.refill()));
        // Awaited: the stretch up to the target is urgent, the refill beyond it is not.
        let urgent = if awaited { estimate(needed) } else { 0 };
        match self.source.prefetch(keyframe.offset, len, ReadOptions::urgent(&self.cancel, urgent)) {
            Ok(()) => Ok(()),
            Err(SourceError::Cancelled { .. }) => {
                self.poll_commands()?;
                self.cancel.reset();
                Ok(())
            }
            // The walk reads again, and reports what fails there.
            Err(_) => Ok(()),
        }
    }

    /// With catch-up on, a video track's delta frames the cursor has passed are dropped
    /// before they are fetched, and so is every delta frame after them up to the next
    /// keyframe (they would decode against missing references); that keyframe starts the
    /// decoder afresh. True when something was dropped.
    fn drop_late(&self, run: &mut Run, span: &Span, pending: &mut VecDeque<Sample>) -> bool {
        if self.desc.kind != TrackKind::Video || !self.catch_up.load(Ordering::Relaxed) {
            return false;
        }
        let cursor = span.to_media(self.cursor(run));
        let mut dropped = false;
        while let Some(sample) = pending.front() {
            let late = sample.pts.saturating_add(LATE) < cursor;
            if sample.keyframe || !(late || run.skipping) {
                break;
            }
            pending.pop_front();
            run.skipping = true;
            dropped = true;
        }
        if pending.front().is_some_and(|s| s.keyframe) && run.skipping {
            run.skipping = false;
            run.discont = true;
        }
        dropped
    }

    /// Whether a sample the index listed is sent. After bytes the index skipped (damage) a
    /// video track's delta frames have lost their references: they are dropped up to the next
    /// keyframe, so the picture holds the last good frame, and the damage is reported. A long
    /// pause between frames is not damage. A sample the file ends inside ends the span.
    fn admit(&mut self, run: &mut Run, span: &Span, mut sample: Sample) -> Result<Option<Sample>, Flow> {
        if run.truncated {
            return Ok(None);
        }
        let is_video = self.desc.kind == TrackKind::Video;
        let len = self.data_source.len();
        if sample.end() > len {
            run.truncated = true;
            let what = format!("the file ends at byte {len}, inside this sample: the track ends here");
            self.report_damage(run, span.to_meeting(sample.pts), sample.offset, what)?;
            return Ok(None);
        }
        if sample.follows_damage {
            let skip = is_video && !sample.keyframe;
            let what = if skip {
                "bytes before this frame are damaged or missing: frames up to the next keyframe are skipped"
            } else {
                "bytes before this sample are damaged or missing"
            };
            self.report_damage(run, span.to_meeting(sample.pts), sample.offset, what.to_string())?;
            run.skipping |= skip;
        }
        if sample.keyframe {
            // The first frame after a skip starts the decoder afresh.
            sample.follows_damage |= std::mem::take(&mut run.skipping);
            return Ok(Some(sample));
        }
        Ok((!run.skipping).then_some(sample))
    }

    fn report_damage(&self, run: &Run, at: MediaTime, offset: u64, what: String) -> Result<(), Flow> {
        let message = format!("t {at} (byte {offset}): {what}");
        tracing::warn!(track = %self.desc.name, %message, "damaged media");
        self.send(run, Item::Damaged { at, offset, message })
    }

    /// Records that media up to `end` was handed out.
    fn advance(&mut self, run: &mut Run, end: MediaTime, bytes: u64) {
        if end > run.sent_until {
            run.sent_until = end;
            // A reordering decoder (B-frames) outputs a frame only once later ones arrived:
            // the last few frames handed out are not playable yet.
            let reorders =
                self.index.as_ref().is_some_and(|i| matches!(i.info().codec, Codec::H264 | Codec::H265));
            let held = if bytes > 0 && reorders {
                MediaTime::from_nanos(run.last_duration.as_nanos().saturating_mul(REORDER_HELD))
            } else {
                MediaTime::ZERO
            };
            self.figures.set_buffered_until(end.saturating_sub(held));
        }
        if bytes > 0 {
            run.in_flight.push_back((end, bytes));
            run.media_until = run.media_until.max(end);
        }
    }

    /// The media kept ahead of the cursor: the stream's target, or three times the longest
    /// recent wait on the link if that is more (a lossy far link makes a read last seconds
    /// now and then; the buffer must outlast it), at most four times the stream's target.
    /// The byte bound holds whatever this says.
    fn target(&self) -> MediaTime {
        let outlast = MediaTime::from_nanos(
            self.waits.longest().as_nanos().saturating_mul(3).min(i64::MAX as u128) as i64,
        );
        let most = MediaTime::from_nanos(self.buffer_target.as_nanos().saturating_mul(4));
        self.buffer_target.max(outlast.min(most))
    }

    /// Media a request adds beyond the buffer target: four round trips' worth, at most half
    /// the target. Nothing on a near link, where small top-ups cost nothing and keep the
    /// packets flowing evenly (bursts of a quarter second made frames late on a loaded
    /// machine).
    fn refill(&self) -> MediaTime {
        let rtts =
            MediaTime::from_nanos(self.sizer.rtt().as_nanos().saturating_mul(4).min(i64::MAX as u128) as i64);
        rtts.min(MediaTime::from_nanos(self.target().as_nanos() / 2))
    }

    /// Where the cursor is for this start: the stream's, but a consumer's clock only once it
    /// has been seen near the target (right after a seek it may still report where it was);
    /// the target until then.
    fn cursor(&self, run: &mut Run) -> MediaTime {
        let Some(shared) = self.shared.upgrade() else { return run.target };
        let Some(position) = shared.cursor() else { return run.target };
        if !shared.cursor_may_lag() {
            return position.max(run.target);
        }
        if !run.cursor_seen {
            let slack = MediaTime::from_secs(1);
            run.cursor_seen =
                position >= run.target.saturating_sub(slack) && position <= run.target.saturating_add(slack);
        }
        if run.cursor_seen {
            position.max(run.target)
        } else {
            run.target
        }
    }

    /// Waits while the media handed out ahead of the cursor reaches the buffer target, in
    /// time or in bytes.
    fn wait_for_room(&mut self, run: &mut Run) -> Result<(), Flow> {
        let asked = Instant::now();
        loop {
            let cursor = self.cursor(run);
            while run.in_flight.front().is_some_and(|(end, _)| *end <= cursor) {
                run.in_flight.pop_front();
            }
            let bytes: u64 = run.in_flight.iter().map(|(_, b)| b).sum();
            self.figures.buffered_bytes.store(bytes, Ordering::Relaxed);
            if run.sent_until.saturating_sub(cursor) < self.target()
                && bytes < self.buffer_bytes
                && !self.sound_first(cursor, run.media_until, asked)
            {
                return Ok(());
            }
            if !self.alive.load(Ordering::Relaxed) {
                return Err(Flow::Stop);
            }
            crossbeam_channel::select! {
                recv(self.commands) -> start => match start {
                    Ok(start) => return Err(Flow::Command(start)),
                    Err(_) => return Err(Flow::Stop),
                },
                recv(self.nudges) -> nudge => {
                    if nudge.is_err() {
                        return Err(Flow::Stop);
                    }
                }
                default(POLL) => {}
            }
        }
    }

    /// A video track with a lead of its own (media until `media_until`: a gap before its
    /// next span costs the link nothing and is no lead, or the span's first frames would wait)
    /// waits while the sound runs short, for [`SOUND_FIRST_MOST`] at most (a sound that fails
    /// to fill must not starve the picture).
    fn sound_first(&self, cursor: MediaTime, media_until: MediaTime, asked: Instant) -> bool {
        self.desc.kind == TrackKind::Video
            && asked.elapsed() < SOUND_FIRST_MOST
            && media_until.saturating_sub(cursor) >= SOUND_FIRST_OWN
            && self.shared.upgrade().is_some_and(|s| s.sound_runs_short(cursor, SOUND_FIRST_LEAD))
    }

    fn poll_commands(&self) -> Result<(), Flow> {
        if !self.alive.load(Ordering::Relaxed) {
            return Err(Flow::Stop);
        }
        match self.commands.try_recv() {
            Ok(start) => Err(Flow::Command(start)),
            Err(TryRecvError::Empty) => Ok(()),
            Err(TryRecvError::Disconnected) => Err(Flow::Stop),
        }
    }

    /// Hands an item out, waiting while the channel is full but giving way to a new start or
    /// the end of the subscription.
    fn send(&self, run: &Run, item: Item) -> Result<(), Flow> {
        let mut tagged = TrackItem { ticket: run.ticket, item };
        loop {
            match self.out.send_timeout(tagged, POLL) {
                Ok(()) => {
                    self.waker.wake();
                    return Ok(());
                }
                Err(SendTimeoutError::Timeout(back)) => {
                    tagged = back;
                    self.poll_commands()?;
                }
                Err(SendTimeoutError::Disconnected(_)) => return Err(Flow::Stop),
            }
        }
    }
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
}
