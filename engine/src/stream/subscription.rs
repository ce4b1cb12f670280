//! One subscribed track: a handle over its fetch worker and the bounded channel it fills.
//! Dropping the handle ends the track at once: the read in flight is cancelled, the worker
//! stops, and its buffer is freed.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use futures::task::AtomicWaker;

use super::block_cache::BlockCache;
use super::fetch::{Fetcher, Start, StartMode};
use super::figures::TrackFigures;
use super::item::{Item, SeekTicket, TrackItem};
use super::meeting::TrackDesc;
use super::timeline::Place;
use super::{Shared, StreamError};
use crate::index::{Codec, ParseError, TrackIndex, TrackInfo};
use crate::source::{Cancel, CountingSource, RangeSource};
use crate::time::MediaTime;

/// Restarts a subscription's worker; held by the stream to reach every track on a seek.
#[derive(Clone)]
pub(crate) struct Control {
    commands: Sender<Start>,
    cancel: Arc<Cancel>,
    alive: Arc<AtomicBool>,
    /// Wakes a worker waiting for room when the consumer took something.
    nudge: Sender<()>,
    /// See [`Subscription::set_catch_up`].
    catch_up: Arc<AtomicBool>,
    /// An audio track's figures: video refills wait while its lead is short (see
    /// [`Shared::sound_runs_short`]).
    sound: Option<Arc<TrackFigures>>,
}

impl Control {
    pub(crate) fn restart(&self, ticket: SeekTicket, target: MediaTime, mode: StartMode) {
        // The command first, then the cancel: the worker that sees its read cancelled finds
        // the command waiting.
        match self.commands.try_send(Start { ticket, target, mode }) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => tracing::warn!("a track's command queue is full; seek dropped"),
        }
        self.cancel.cancel();
    }

    /// The cursor moved: a worker waiting for room looks again now rather than at its next
    /// poll.
    pub(crate) fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// This audio track has less than `lead` fetched ahead of `cursor` (and more to fetch).
    pub(crate) fn sound_below(&self, cursor: MediaTime, lead: MediaTime) -> bool {
        self.is_alive()
            && self.sound.as_ref().is_some_and(|f| {
                let until = f.buffered_until();
                until != MediaTime::MAX && until.saturating_sub(cursor) < lead
            })
    }
}

/// One of a track's files as the stream reads it: its own source and its own index.
#[derive(Clone)]
pub(crate) struct TrackFile {
    /// `None` for bytes without an index: the track streams as chunks.
    pub(crate) index: Option<Arc<TrackIndex>>,
    /// Where the index reads (cached: index walks re-read overlapping windows).
    pub(crate) source: Arc<BlockCache>,
    /// Where media data is read, once.
    pub(crate) data_source: Arc<dyn RangeSource>,
}

impl TrackFile {
    /// Opens file `file` of the track and its index.
    fn open(
        shared: &Shared,
        desc: &TrackDesc,
        file: u32,
        figures: &TrackFigures,
    ) -> Result<TrackFile, StreamError> {
        let raw = shared.meeting.open_source(desc, file)?;
        let counted: Arc<dyn RangeSource> = Arc::new(CountingSource::sharing(raw, figures.reads.clone()));
        let source = Arc::new(BlockCache::new(counted.clone()));
        // Errors name the file when the track has several.
        let name = match file {
            0 => desc.name.to_string(),
            n => format!("{} (file {n})", desc.name),
        };
        let index = match TrackIndex::open(&name, source.as_ref()) {
            Ok(index) => Some(Arc::new(index)),
            // No index for these bytes: the track streams as ordered chunks.
            Err(e) if matches!(e.source, ParseError::UnknownFormat { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(TrackFile { index, source, data_source: counted })
    }
}

/// Files of one track opened at once: a camera a recorder cut into many files opens in a few
/// round trips on a far link, not one index's worth per file in turn.
const FILES_AT_ONCE: usize = 8;

/// Opens every file of a track, [`FILES_AT_ONCE`] in parallel; they must all have an index of
/// the same codec when there are several (one decoder plays them in turn).
fn open_files(
    shared: &Shared,
    desc: &TrackDesc,
    figures: &TrackFigures,
) -> Result<Vec<TrackFile>, StreamError> {
    let count = u32::try_from(desc.timeline.files()).unwrap_or(u32::MAX);
    let mut files = Vec::with_capacity(count as usize);
    let numbers: Vec<u32> = (0..count).collect();
    for batch in numbers.chunks(FILES_AT_ONCE) {
        if let [only] = batch {
            files.push(TrackFile::open(shared, desc, *only, figures)?);
            continue;
        }
        let opened: Vec<Result<TrackFile, StreamError>> = std::thread::scope(|scope| {
            let opening: Vec<_> = batch
                .iter()
                .map(|&n| scope.spawn(move || TrackFile::open(shared, desc, n, figures)))
                .collect();
            opening
                .into_iter()
                .map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        for file in opened {
            files.push(file?);
        }
    }
    if files.len() > 1 {
        // Codecs configured out of band (avcC, Vorbis headers, AudioSpecificConfig) need the
        // same configuration too: one decoder is set up from the first file's.
        let describe = |file: &TrackFile| {
            file.index.as_ref().map(|i| {
                let info = i.info();
                let out_of_band =
                    matches!(info.codec, Codec::H264 | Codec::H265 | Codec::Vorbis | Codec::Aac);
                (info.codec.clone(), info.codec_config.clone().filter(|_| out_of_band))
            })
        };
        let first = describe(&files[0]);
        for (n, file) in files.iter().enumerate() {
            let this = describe(file);
            if this.is_none() || this != first {
                let name = |d: Option<(Codec, Option<bytes::Bytes>)>| match d {
                    None => "no known container".to_string(),
                    Some((codec, Some(_))) if n > 0 && first.as_ref().is_some_and(|f| f.0 == codec) => {
                        format!("{codec:?} configured differently")
                    }
                    Some((codec, _)) => format!("{codec:?}"),
                };
                return Err(StreamError::FileCodec {
                    track: desc.name.to_string(),
                    file: n as u32,
                    codec: name(this),
                    first: first.clone().map_or("no known container".into(), |(c, _)| format!("{c:?}")),
                });
            }
        }
    }
    Ok(files)
}

/// A subscribed track. Read its items with [`Subscription::recv`] (threads) or
/// [`Subscription::items`] (async code); drop it to end the track.
pub struct Subscription {
    shared: Arc<Shared>,
    desc: TrackDesc,
    /// The track's files (one for most tracks), for questions asked besides the worker's
    /// reads.
    files: Vec<TrackFile>,
    info: Option<TrackInfo>,
    encoder_delay: Option<u64>,
    items: Receiver<TrackItem>,
    control: Control,
    figures: Arc<TrackFigures>,
    waker: Arc<AtomicWaker>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("track", &self.desc.name).field("info", &self.info).finish()
    }
}

impl Subscription {
    pub(crate) fn open(
        shared: Arc<Shared>,
        track: &str,
        start: Option<(MediaTime, SeekTicket)>,
    ) -> Result<Subscription, StreamError> {
        let desc =
            shared.meeting.track(track).cloned().ok_or_else(|| StreamError::UnknownTrack(track.into()))?;
        let figures = shared.figures(&desc.name);
        let files = open_files(&shared, &desc, &figures)?;
        let first = files.first().cloned().ok_or_else(|| StreamError::UnknownTrack(track.into()))?;
        let index = first.index.clone();
        let info = index.as_ref().map(|i| i.info().clone());
        let encoder_delay = index.as_ref().and_then(|i| i.encoder_delay());
        let (command_tx, command_rx) = crossbeam_channel::bounded(16);
        // Audio packets are small and many (Vorbis short blocks last 2.7 ms): room for four
        // times as many, so the channel holds seconds of audio as it does of video.
        let per_kind = if desc.kind == crate::manifest::TrackKind::Audio { 4 } else { 1 };
        let (item_tx, item_rx) = crossbeam_channel::bounded(shared.options.channel_items.max(1) * per_kind);
        let cancel = Arc::new(Cancel::new());
        let alive = Arc::new(AtomicBool::new(true));
        let waker = Arc::new(AtomicWaker::new());
        let (nudge_tx, nudge_rx) = crossbeam_channel::bounded(1);
        let catch_up = Arc::new(AtomicBool::new(false));
        let control = Control {
            commands: command_tx,
            cancel: cancel.clone(),
            alive: alive.clone(),
            nudge: nudge_tx,
            catch_up: catch_up.clone(),
            sound: (desc.kind == crate::manifest::TrackKind::Audio).then(|| figures.clone()),
        };
        let fetcher = Fetcher {
            desc: desc.clone(),
            index: first.index,
            source: first.source,
            data_source: first.data_source,
            files: files.clone(),
            file: 0,
            buffer_target: shared.options.buffer_target,
            buffer_bytes: shared.options.buffer_bytes,
            out: item_tx,
            waker: waker.clone(),
            commands: command_rx,
            nudges: nudge_rx,
            figures: figures.clone(),
            shared: Arc::downgrade(&shared),
            cancel,
            alive,
            catch_up,
            sizer: super::RequestSizer::new(),
            waits: Default::default(),
        };
        if let Some((at, ticket)) = start {
            control.restart(ticket, at, StartMode::Accurate);
        }
        let worker = fetcher.spawn().map_err(|e| StreamError::Open {
            track: track.into(),
            message: format!("starting its fetch thread: {e}"),
        })?;
        Ok(Subscription {
            shared,
            desc,
            files,
            info,
            encoder_delay,
            items: item_rx,
            control,
            figures,
            waker,
            worker: Some(worker),
        })
    }

    pub(crate) fn control(&self) -> Control {
        self.control.clone()
    }

    /// The track: name, kind, role, participant, spans.
    pub fn track(&self) -> &TrackDesc {
        &self.desc
    }

    /// Codec and what a decoder needs to start (avcC/hvcC, CodecPrivate, Opus/Vorbis
    /// headers), from the index; `None` for a track without one (chunks).
    pub fn info(&self) -> Option<&TrackInfo> {
        self.info.as_ref()
    }

    /// Samples of encoder delay a decoder should drop at the start (MP3's LAME tag).
    pub fn encoder_delay(&self) -> Option<u64> {
        self.encoder_delay
    }

    /// Fetch and buffer figures of this track (shared by every subscription of it).
    pub fn figures(&self) -> Arc<TrackFigures> {
        self.figures.clone()
    }

    /// Restarts this track alone at `t` (the others keep going): for a consumer that seeks
    /// per track, as GStreamer's appsrc asks.
    pub fn restart(&self, t: MediaTime, ticket: SeekTicket) {
        self.control.restart(ticket, t.max(MediaTime::ZERO), StartMode::Accurate);
    }

    /// Restarts this track with only the keyframe at or before `t` (a preview).
    pub fn restart_keyframe(&self, t: MediaTime, ticket: SeekTicket) {
        self.control.restart(ticket, t.max(MediaTime::ZERO), StartMode::Keyframe);
    }

    /// Whether a video track that falls behind the cursor drops its late frames and picks up
    /// again at the next keyframe, fetching nothing in between: for a real-time consumer whose
    /// link cannot carry every track, a frozen picture that catches up rather than a clock
    /// that waits. Off by default (an export wants every frame).
    pub fn set_catch_up(&self, on: bool) {
        self.control.catch_up.store(on, Ordering::Relaxed);
    }

    /// The meeting time of the keyframe at or before `t` in the span showing `t` (never
    /// before the span's start); `None` when the track shows nothing at `t`.
    pub fn keyframe_before(&self, t: MediaTime) -> Option<MediaTime> {
        let Place::Active { span, media } = self.desc.timeline.place(t) else { return None };
        let span = self.desc.timeline.span(span)?;
        let file = self.files.get(span.file as usize)?;
        let keyframe = file.index.as_ref()?.seek(file.source.as_ref(), media).ok()?;
        Some(span.to_meeting(keyframe.pts).max(span.start).min(t))
    }

    /// The next item, waiting for it; `None` once the worker has stopped.
    pub fn recv(&self) -> Option<TrackItem> {
        let item = self.items.recv().ok()?;
        self.taken(&item);
        Some(item)
    }

    /// The next item, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<TrackItem, RecvTimeoutError> {
        let item = self.items.recv_timeout(timeout)?;
        self.taken(&item);
        Ok(item)
    }

    /// The next item if one is ready.
    pub fn try_recv(&self) -> Result<TrackItem, TryRecvError> {
        let item = self.items.try_recv()?;
        self.taken(&item);
        Ok(item)
    }

    /// The items as an async stream (for tokio and other executors).
    pub fn items(&self) -> Items<'_> {
        Items { subscription: self }
    }

    /// What was taken moves the cursor (when it follows what is taken): a packet to its end,
    /// a gap too, since nothing is shown there.
    fn taken(&self, item: &TrackItem) {
        match &item.item {
            Item::Packet(p) => self.shared.took(p.end()),
            Item::Gap { start, duration } => self.shared.took(start.saturating_add(*duration)),
            _ => {}
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.control.alive.store(false, Ordering::Relaxed);
        self.control.cancel.cancel();
        super::lock(&self.shared.tracks).retain(|c| c.is_alive());
        // The worker sees `alive` cleared within a poll.
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// [`Subscription::items`]: an async stream of the track's items, ending when the worker
/// stops.
#[derive(Debug)]
pub struct Items<'a> {
    subscription: &'a Subscription,
}

impl futures::Stream for Items<'_> {
    type Item = TrackItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TrackItem>> {
        let subscription = self.subscription;
        let poll = || match subscription.try_recv() {
            Ok(item) => Some(Poll::Ready(Some(item))),
            Err(TryRecvError::Disconnected) => Some(Poll::Ready(None)),
            Err(TryRecvError::Empty) => None,
        };
        if let Some(ready) = poll() {
            return ready;
        }
        subscription.waker.register(cx.waker());
        // An item sent between the first look and the registration woke nobody: look again.
        poll().unwrap_or(Poll::Pending)
    }
}
