//! A track's fetch and buffer figures, readable at any time by whoever watches the stream.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::source::{ReadCost, ReadCounter};
use crate::time::MediaTime;

/// A track's fetch and buffer figures, readable at any time; they outlive subscriptions.
#[derive(Debug)]
pub struct TrackFigures {
    /// What the track's reads cost (index reads included).
    pub(crate) reads: Arc<ReadCounter>,
    /// Meeting time (ns) up to which media was handed out, less what a reordering decoder
    /// holds back; `i64::MAX` once the track has nothing more to send.
    pub(super) buffered_until: AtomicI64,
    /// Bytes handed out ahead of the cursor.
    pub(super) buffered_bytes: AtomicU64,
    /// Recent fetch throughput (bytes per second, as f64 bits) and round trip (ns).
    pub(super) throughput: AtomicU64,
    pub(super) rtt: AtomicU64,
}

impl Default for TrackFigures {
    fn default() -> Self {
        TrackFigures {
            reads: Arc::default(),
            buffered_until: AtomicI64::new(0),
            buffered_bytes: AtomicU64::new(0),
            throughput: AtomicU64::new(0),
            rtt: AtomicU64::new(0),
        }
    }
}

impl TrackFigures {
    /// Bytes and reads fetched from the track's source so far.
    pub fn fetched(&self) -> ReadCost {
        self.reads.cost()
    }
    /// Meeting time up to which media is buffered (handed out); `MediaTime::MAX` when the
    /// track has nothing more to send.
    pub fn buffered_until(&self) -> MediaTime {
        MediaTime::from_nanos(self.buffered_until.load(Ordering::Relaxed))
    }
    /// Bytes handed out ahead of the cursor.
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered_bytes.load(Ordering::Relaxed)
    }
    /// Recent fetch throughput, bytes per second.
    pub fn throughput(&self) -> f64 {
        f64::from_bits(self.throughput.load(Ordering::Relaxed))
    }
    /// Recent request round-trip time.
    pub fn rtt(&self) -> Duration {
        Duration::from_nanos(self.rtt.load(Ordering::Relaxed))
    }
    pub(super) fn set_buffered_until(&self, t: MediaTime) {
        self.buffered_until.store(t.as_nanos(), Ordering::Relaxed);
    }
}
