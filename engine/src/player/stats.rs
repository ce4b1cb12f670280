//! A track's figures as the player reports them: what the stream fetched for it, and what its
//! sink rendered. They outlive subscriptions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::stream::TrackFigures;
use crate::time::MediaTime;

/// Fetch and render figures of one track, readable at any time.
#[derive(Debug)]
pub struct TrackStats {
    fetch: Arc<TrackFigures>,
    frames: AtomicU64,
    /// The sink has rendered the end of the stream since the last seek.
    ended: AtomicBool,
}

impl Default for TrackStats {
    fn default() -> Self {
        TrackStats::new(Arc::default())
    }
}

impl TrackStats {
    pub(crate) fn new(fetch: Arc<TrackFigures>) -> TrackStats {
        TrackStats { fetch, frames: AtomicU64::new(0), ended: AtomicBool::new(false) }
    }
    /// Bytes read from the track's source by the player (index reads included).
    pub fn fetched_bytes(&self) -> u64 {
        self.fetch.fetched().bytes
    }
    /// Range reads issued.
    pub fn fetches(&self) -> u64 {
        self.fetch.fetched().reads
    }
    /// The stream's figures: buffer, throughput, round trip.
    pub fn figures(&self) -> &TrackFigures {
        &self.fetch
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
        self.fetch.buffered_until()
    }
}
