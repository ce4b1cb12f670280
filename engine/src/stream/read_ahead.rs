//! Reading ahead into a track's block cache, on a thread of its own.
//!
//! Where an index walk fetches the media it walks (Matroska clusters, Ogg pages, MP3 frames),
//! the fetch worker would otherwise wait for each next stretch when it gets there: a round trip
//! and a transfer, seconds on a lossy far link, with the buffer draining meanwhile. The worker
//! names the stretch after the one it is walking; this thread fetches it into the cache while
//! the worker hands out what it has, so the link stays busy and the walk finds memory. Its
//! reads are routine (never ahead of what playback awaits) and cancelled when the worker moves
//! on (a seek): on a slow link one would otherwise hold the next start for seconds.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::block_cache::BlockCache;
use crate::source::{Cancel, RangeSource, ReadOptions};

/// The most read ahead at once: what the block cache keeps from one read.
pub(crate) const MOST: u64 = BlockCache::MOST_KEPT;

pub(crate) struct ReadAhead {
    wanted: Option<Sender<(u64, u64)>>,
    thread: Option<JoinHandle<()>>,
    cancel: Arc<Cancel>,
}

impl ReadAhead {
    /// A reader over `cache`, named after its track.
    pub(crate) fn new(track: &str, cache: Arc<BlockCache>) -> ReadAhead {
        // One stretch waiting at most: a newer one replaces nothing, the worker asks again.
        let (wanted, asked) = crossbeam_channel::bounded(1);
        let cancel = Arc::new(Cancel::new());
        let reading = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ahead-{track}"))
            .spawn(move || read_ahead(&cache, &asked, &reading))
            .ok();
        ReadAhead { wanted: Some(wanted), thread, cancel }
    }

    /// Fetches `start..start+len` into the cache unless a stretch is already waiting.
    pub(crate) fn want(&self, start: u64, len: u64) {
        if let Some(wanted) = &self.wanted {
            match wanted.try_send((start, len.min(MOST))) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }
}

fn read_ahead(cache: &BlockCache, asked: &Receiver<(u64, u64)>, cancel: &Cancel) {
    for (start, len) in asked.iter() {
        let len = len.min(cache.len().saturating_sub(start));
        if len > 0 && cache.read_cached(start, len).is_none() {
            // A failure here is the worker's to meet and report when it reads.
            let _ = cache.prefetch(start, len, ReadOptions::routine(cancel));
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        drop(self.wanted.take());
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
