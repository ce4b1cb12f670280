//! The stream layer: a meeting's tracks as buffered streams of coded packets on one meeting
//! timeline, for any renderer. No GStreamer here: the player is one consumer among others.
//!
//! ```text
//!  Meeting (folder | peer)
//!     '- MeetingStream: the cursor (a clock the consumer hands over, a position it sets, or
//!        the pts of the last packet taken), seek tickets, pause
//!          '- per subscribed track, a Subscription (a handle: dropping it ends the track):
//!               per file of the track (one, or one per stretch): RangeSource -> TrackIndex
//!               -> fetch worker (its own thread), each span read from its own file
//!                 ranges while buffered < target (time and bytes), sized to the link
//!               ══bounded channel══> TrackItem { ticket, Packet | Gap | Cue | Chunk | ... }
//!                                     recv() for threads, items() for async code
//! ```
//!
//! | module         | concern                                                           |
//! |----------------|-------------------------------------------------------------------|
//! | `meeting`      | tracks and their byte sources: a folder and a peer look the same   |
//! | `timeline`     | a track's spans on the meeting timeline                            |
//! | `item`         | what a subscription hands out: packets, gaps, cues, chunks, the end |
//! | `subscription` | the handle of one subscribed track                                 |
//! | `fetch`        | cursor -> byte ranges -> packets; buffer targets                  |
//! | `sizer`        | request sizes from the link's throughput and round trip            |
//! | `figures`      | a track's fetch and buffer figures                                 |
//! | `block_cache`  | a small cache in front of a source for the index's own reads       |
//! | `read_ahead`   | fetches the stretch after the one an index walk is on, meanwhile   |
//!
//! The consumer owns time: buffers are measured ahead of the cursor, so read-ahead is bounded
//! whoever consumes, and a consumer that stops taking packets stops the network reads
//! (the channel fills, the worker waits). Pausing is not asking: a paused stream fills each
//! track to its target and reads nothing more.
//!
//! # Example
//! Every packet of one track from 10 s to 12 s, without GStreamer:
//! ```
//! use tandem::stream::{Item, Meeting, MeetingStream, StreamOptions};
//! use tandem::MediaTime;
//!
//! let meeting = Meeting::from_folder(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/meeting"))?;
//! let stream = MeetingStream::open(meeting, StreamOptions::default());
//! let ticket = stream.seek(MediaTime::from_secs(10));
//! let alice = stream.subscribe("alice_video")?;
//! while let Some(item) = alice.recv() {
//!     match item.item {
//!         Item::Packet(p) if p.pts > MediaTime::from_secs(12) => break,
//!         Item::Packet(p) => assert!(item.ticket >= ticket && !p.data.is_empty()),
//!         Item::End => break,
//!         _ => {}
//!     }
//! }
//! # Ok::<(), tandem::stream::StreamError>(())
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod block_cache;
mod fetch;
mod figures;
mod item;
mod meeting;
mod read_ahead;
mod sizer;
mod subscription;
mod timeline;

pub use figures::TrackFigures;
pub use item::{Cue, Item, Packet, SeekTicket, TrackItem};
pub use meeting::{Meeting, TrackDesc};
pub use subscription::Subscription;
pub use timeline::{Place, Span, Timeline};

pub(crate) use fetch::StartMode;
pub(crate) use sizer::RequestSizer;

use crate::index::IndexError;
use crate::manifest::ManifestError;
use crate::time::MediaTime;

/// Why the stream could not do what it was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Manifest(#[from] Arc<ManifestError>),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[cfg(feature = "net")]
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("opening track {track}: {message}")]
    Open { track: String, message: String },
    #[error("no track named {0:?} in this meeting")]
    UnknownTrack(String),
    /// The files of a track in several do not carry one codec (one decoder plays them in turn).
    #[error(
        "track {track}: file {file} is {codec} but file 0 is {first}: a track's files must share a codec"
    )]
    FileCodec { track: String, file: u32, codec: String, first: String },
}

impl From<ManifestError> for StreamError {
    fn from(e: ManifestError) -> Self {
        StreamError::Manifest(Arc::new(e))
    }
}

/// How a stream buffers.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Media fetched ahead of the cursor per track (default 3 s).
    pub buffer_target: MediaTime,
    /// Bytes held ahead of the cursor per track, whatever their duration (default 16 MiB).
    pub buffer_bytes: u64,
    /// Items a subscription's channel holds before the worker waits (default 64; four times
    /// as many for audio).
    pub channel_items: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            buffer_target: MediaTime::from_secs(3),
            buffer_bytes: 16 * 1024 * 1024,
            channel_items: 64,
        }
    }
}

/// Where playback is, as the consumer tells it.
pub type Clock = Arc<dyn Fn() -> Option<MediaTime> + Send + Sync>;

/// What the cursor follows.
#[derive(Clone)]
enum CursorSource {
    /// The end of the last packet a consumer took.
    Taken,
    /// A position the consumer sets.
    Set(MediaTime),
    /// The consumer's clock (a GStreamer pipeline's position, say).
    Clock(Clock),
}

/// State shared by the stream and its subscriptions.
pub(crate) struct Shared {
    pub(crate) meeting: Meeting,
    pub(crate) options: StreamOptions,
    cursor: Mutex<CursorSource>,
    /// Nanoseconds: the end of the newest packet taken (for [`CursorSource::Taken`]).
    taken: AtomicI64,
    /// The newest seek's ticket and target: subscriptions made later start there.
    ticket: AtomicU64,
    target: AtomicI64,
    /// Every live subscription's control, to restart them on a seek.
    tracks: Mutex<Vec<subscription::Control>>,
    /// Each track's figures, kept across its subscriptions.
    figures: Mutex<HashMap<Arc<str>, Arc<TrackFigures>>>,
}

pub(crate) use crate::lock::lock;

impl Shared {
    /// The meeting time playback is at.
    pub(crate) fn cursor(&self) -> Option<MediaTime> {
        let source = lock(&self.cursor).clone();
        match source {
            CursorSource::Taken => {
                let taken = self.taken.load(Ordering::Relaxed);
                (taken != i64::MIN).then(|| MediaTime::from_nanos(taken))
            }
            CursorSource::Set(t) => Some(t),
            CursorSource::Clock(clock) => clock(),
        }
    }

    /// Whether the cursor is a consumer's clock, which may still report where it was for a
    /// moment after a seek (a pipeline's position before its flush completes).
    pub(crate) fn cursor_may_lag(&self) -> bool {
        matches!(*lock(&self.cursor), CursorSource::Clock(_))
    }

    /// Some subscribed audio track has less than `lead` fetched ahead of `cursor`: video
    /// refills wait, so a link that cannot carry every track gives its bandwidth to the sound
    /// (the send priority orders what a peer sends; this, what the client asks).
    pub(crate) fn sound_runs_short(&self, cursor: MediaTime, lead: MediaTime) -> bool {
        lock(&self.tracks).iter().any(|c| c.sound_below(cursor, lead))
    }

    pub(crate) fn figures(&self, track: &Arc<str>) -> Arc<TrackFigures> {
        lock(&self.figures).entry(track.clone()).or_default().clone()
    }

    /// The consumer took media up to `end`: the cursor moves (when it follows what is taken),
    /// and workers waiting for room look again at once.
    pub(crate) fn took(&self, end: MediaTime) {
        let before = self.taken.fetch_max(end.as_nanos(), Ordering::Relaxed);
        if end.as_nanos() > before && matches!(*lock(&self.cursor), CursorSource::Taken) {
            for control in lock(&self.tracks).iter() {
                control.nudge();
            }
        }
    }

    fn start(&self) -> (SeekTicket, MediaTime) {
        (
            SeekTicket(self.ticket.load(Ordering::SeqCst)),
            MediaTime::from_nanos(self.target.load(Ordering::SeqCst)),
        )
    }
}

/// A meeting opened for streaming: subscribe tracks, seek, and read their packets. Cheap to
/// clone; every clone is the same stream.
#[derive(Clone)]
pub struct MeetingStream {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MeetingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeetingStream")
            .field("meeting", &self.shared.meeting.name())
            .field("cursor", &self.shared.cursor())
            .finish()
    }
}

impl MeetingStream {
    /// Opens `meeting` with its cursor at zero. Nothing is read until a track is subscribed.
    pub fn open(meeting: Meeting, options: StreamOptions) -> MeetingStream {
        MeetingStream {
            shared: Arc::new(Shared {
                meeting,
                options,
                cursor: Mutex::new(CursorSource::Taken),
                taken: AtomicI64::new(i64::MIN),
                ticket: AtomicU64::new(0),
                target: AtomicI64::new(0),
                tracks: Mutex::new(Vec::new()),
                figures: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn meeting(&self) -> &Meeting {
        &self.shared.meeting
    }

    pub fn options(&self) -> &StreamOptions {
        &self.shared.options
    }

    /// Subscribes a track: its index is opened here (the track's first reads), then a worker
    /// fetches from the current seek target, or from the cursor when the stream is already
    /// being read. Drop the handle to end it.
    pub fn subscribe(&self, track: &str) -> Result<Subscription, StreamError> {
        let (ticket, target) = self.shared.start();
        let at = if self.shared.taken.load(Ordering::Relaxed) == i64::MIN {
            target
        } else {
            self.shared.cursor().unwrap_or(target).max(target)
        };
        self.subscribe_at(track, at, ticket)
    }

    /// Subscribes a track starting at meeting time `at`, its items carrying `ticket`: for a
    /// consumer that places a joining track itself (the player starts one a little ahead of
    /// its clock).
    pub fn subscribe_at(
        &self,
        track: &str,
        at: MediaTime,
        ticket: SeekTicket,
    ) -> Result<Subscription, StreamError> {
        self.register(Subscription::open(self.shared.clone(), track, Some((at, ticket)))?)
    }

    /// Subscribes a track (its index is opened) that fetches nothing until its first
    /// [`Subscription::restart`]: for a consumer that starts each track itself.
    pub fn subscribe_idle(&self, track: &str) -> Result<Subscription, StreamError> {
        self.register(Subscription::open(self.shared.clone(), track, None)?)
    }

    fn register(&self, subscription: Subscription) -> Result<Subscription, StreamError> {
        let mut tracks = lock(&self.shared.tracks);
        tracks.retain(|c| c.is_alive());
        tracks.push(subscription.control());
        Ok(subscription)
    }

    /// A track's fetch and buffer figures, kept across its subscriptions.
    pub fn figures(&self, track: &str) -> Arc<TrackFigures> {
        self.shared.figures(&Arc::from(track))
    }

    /// Restarts every subscribed track at meeting time `t`: each from its keyframe at or
    /// before `t`, those ranges first and all tracks in parallel. Reads of the previous seek
    /// still in flight are cancelled. Items of this seek carry the returned ticket.
    pub fn seek(&self, t: MediaTime) -> SeekTicket {
        let t = t.max(MediaTime::ZERO);
        let ticket = SeekTicket(self.shared.ticket.fetch_add(1, Ordering::SeqCst) + 1);
        self.shared.target.store(t.as_nanos(), Ordering::SeqCst);
        self.shared.taken.store(i64::MIN, Ordering::Relaxed);
        let mut tracks = lock(&self.shared.tracks);
        tracks.retain(|c| c.is_alive());
        for control in tracks.iter() {
            control.restart(ticket, t, StartMode::Accurate);
        }
        ticket
    }

    /// The cursor follows `clock` (the consumer's playback clock); buffers are measured
    /// ahead of it.
    pub fn set_clock(&self, clock: Clock) {
        *lock(&self.shared.cursor) = CursorSource::Clock(clock);
    }

    /// The cursor is `t` until set again: a consumer that keeps time itself. A paused
    /// consumer leaves it where it is, and each track fills to its target and stops reading.
    pub fn set_position(&self, t: MediaTime) {
        *lock(&self.shared.cursor) = CursorSource::Set(t);
    }

    /// The cursor follows the packets taken (the default).
    pub fn follow_taken(&self) {
        *lock(&self.shared.cursor) = CursorSource::Taken;
    }

    /// Where playback is: the consumer's clock or position, else the end of the last packet
    /// taken, else the last seek's target.
    pub fn cursor(&self) -> MediaTime {
        self.shared.cursor().unwrap_or_else(|| self.shared.start().1)
    }
}
