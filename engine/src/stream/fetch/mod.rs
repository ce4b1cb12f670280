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
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use futures::task::AtomicWaker;

use super::block_cache::BlockCache;
use super::figures::TrackFigures;
use super::item::{Item, SeekTicket, TrackItem};
use super::meeting::TrackDesc;
use super::sizer::RecentWaits;
use super::subscription::TrackFile;
use super::timeline::Place;
use super::{RequestSizer, Shared};
use crate::index::TrackIndex;
use crate::manifest::TrackKind;
use crate::source::{Cancel, RangeSource};
use crate::time::MediaTime;

mod pace;
mod span;
mod whole;

/// How often the worker wakes to re-check its buffer and commands while it waits.
const POLL: Duration = Duration::from_millis(20);
/// Samples looked ahead (decode order) to find the next presentation time: covers B-frame
/// reordering.
const REORDER_LOOKAHEAD: usize = 16;

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
}
