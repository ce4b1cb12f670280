//! What a subscription hands out, in the order a decoder needs it.

use bytes::Bytes;

use crate::time::MediaTime;

/// Names one seek: every item carries the ticket of the seek (or subscription) that produced
/// it, so a consumer knows which items belong to the seek it made and which are stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct SeekTicket(pub u64);

/// One coded frame (video) or packet (audio), in decode order, with its times on the meeting
/// timeline. `data` is a slice of the fetched range: no copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Presentation time. Audio before the meeting's zero (Opus pre-skip) may be negative.
    pub pts: MediaTime,
    /// Decode time, where the container gives one apart from the pts.
    pub dts: Option<MediaTime>,
    /// Until the next frame's presentation (video), or the packet's length (audio).
    pub duration: MediaTime,
    pub data: Bytes,
    pub keyframe: bool,
    /// Needed to decode later packets but not to be shown: before the seek target, or past
    /// the end of its span.
    pub decode_only: bool,
    /// Not continuous with the packet before it (the first after a seek, a gap, a span's
    /// start, or damage): decoders start afresh.
    pub discont: bool,
    /// Which of the track's spans ([`super::Timeline::spans`]) this packet plays in.
    pub span: usize,
}

impl Packet {
    pub fn end(&self) -> MediaTime {
        self.pts.saturating_add(self.duration)
    }
}

/// A caption cue on the meeting timeline, its text as the file has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cue {
    pub start: MediaTime,
    pub end: MediaTime,
    pub text: String,
}

/// What a subscribed track says next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Packet(Packet),
    /// Nothing to show from `start` for `duration` (outside the track's spans, or after its
    /// media ran out before the span did). Sent as the cursor nears, at most a second each.
    Gap {
        start: MediaTime,
        duration: MediaTime,
    },
    /// A caption track's cue (all of a caption track comes at once, from the start time on).
    Cue(Cue),
    /// A track without an index (opaque data): its bytes in order.
    Chunk {
        offset: u64,
        data: Bytes,
    },
    /// The track's file is damaged at `at` (byte `offset`): what could not be decoded was
    /// skipped, and the track goes on.
    Damaged {
        at: MediaTime,
        offset: u64,
        message: String,
    },
    /// The track cannot go on (a read failed, the index is damaged); a later seek retries.
    Failed {
        message: String,
    },
    /// Nothing more until the next seek.
    End,
}

/// An item and the seek it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackItem {
    pub ticket: SeekTicket,
    pub item: Item,
}
