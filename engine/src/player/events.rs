//! What the player tells its embedder, as it happens: buffering and fetch figures, tracks
//! entering and leaving their spans, caption cues, seeks done, the end, and per-track errors.
//!
//! Events travel on a bounded channel: a slow reader loses events (counted in
//! [`EventSink::dropped`]) rather than making the player grow without bound or stall.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::SeekMode;
use crate::time::MediaTime;

/// How many events wait for the reader before new ones are dropped.
const EVENT_CAPACITY: usize = 4096;

/// Something the embedder may want to show or log.
#[derive(Debug, Clone, PartialEq)]
pub enum PlayerEvent {
    /// A track's buffer and fetch figures (about four times a second while fetching).
    Buffer {
        track: Arc<str>,
        /// Media fetched ahead of the cursor.
        buffered: MediaTime,
        /// Bytes of that media.
        bytes: u64,
        /// Recent fetch throughput, bytes per second.
        throughput: f64,
        /// Recent request round-trip time.
        rtt: Duration,
    },
    /// Playback waits for a track that has too little buffered (`percent` of the resume
    /// level); it resumes by itself at 100.
    Buffering { track: Arc<str>, percent: u32 },
    /// A track entered (`active: true`) or left its span at meeting time `at`.
    Active { track: Arc<str>, active: bool, at: MediaTime },
    /// A caption cue became current.
    Caption { track: Arc<str>, start: MediaTime, end: MediaTime, text: String },
    /// Every subscribed track shows the seek's target; `tracks` holds the time each took.
    SeekDone { target: MediaTime, mode: SeekMode, tracks: Vec<(Arc<str>, Duration)> },
    /// Every subscribed track has played to its end.
    EndOfMeeting,
    /// A track's file is damaged at meeting time `at` (byte `offset`): what cannot be decoded
    /// is skipped and the track plays on.
    Damaged { track: Arc<str>, at: MediaTime, offset: u64, message: String },
    /// The link cannot carry every track: this video track no longer holds the meeting clock
    /// (`degraded: true`) and shows keyframes as they arrive, or it keeps up again
    /// (`degraded: false`). At meeting time `at`.
    Degraded { track: Arc<str>, degraded: bool, at: MediaTime },
    /// A track failed and stopped; the others play on.
    TrackError { track: Arc<str>, message: String },
}

/// The sending side, shared by every part of the player.
#[derive(Debug, Clone)]
pub(crate) struct EventSink {
    tx: Sender<PlayerEvent>,
    dropped: Arc<AtomicU64>,
}

impl EventSink {
    pub(crate) fn new() -> (EventSink, Receiver<PlayerEvent>) {
        let (tx, rx) = crossbeam_channel::bounded(EVENT_CAPACITY);
        (EventSink { tx, dropped: Arc::new(AtomicU64::new(0)) }, rx)
    }

    pub(crate) fn send(&self, event: PlayerEvent) {
        match self.tx.try_send(event) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events lost because the reader fell behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
