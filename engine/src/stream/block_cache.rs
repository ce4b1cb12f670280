//! A small cache of aligned blocks in front of a track's source, for the index's own reads.
//!
//! Index walks re-read overlapping windows (an Ogg walk starts a seek window before the page it
//! resumes at; Matroska without Cues bisects; MP3 walks frame headers): over a slow or far link
//! each repeat costs a round trip and its bytes again. Reads are served from the last
//! [`CAPACITY`] blocks of [`BLOCK`] bytes; what is missing is fetched in one read per
//! contiguous run. Media is fetched once: the fetch worker takes from here what an index walk
//! already fetched (Ogg pages, MP3 frames, Matroska clusters) and reads the rest itself.
//!
//! A walk that goes on block after block (a Matroska cluster walked in small windows, Ogg
//! pages, MP3 frames) would cost a round trip per block on a far link: a miss right after the
//! previous one fetches more blocks than asked, twice as many each time, up to [`AHEAD_MOST`],
//! as an operating system's page cache reads ahead of a file read in order; and no more than
//! the link carried in [`AHEAD_TIME`] at the last fetch's pace, so a slow link does not spend
//! seconds on blocks the walk may never reach.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use crate::source::{check_range, Cancel, RangeSource, ReadOptions, SourceError};

/// Block size: small enough that a cold small read stays cheap.
const BLOCK: u64 = 32 * 1024;
/// Blocks kept (2 MiB): a Matroska cluster of up to 1 MiB, walked whole, stays for the media
/// read that follows.
const CAPACITY: usize = 64;
/// Most blocks a sequential miss fetches beyond what it asked (256 KiB).
const AHEAD_MOST: u64 = 8;
/// A read ahead holds at most what the last fetch's pace carries in this long.
const AHEAD_TIME: f64 = 0.25;

pub(crate) struct BlockCache {
    inner: Arc<dyn RangeSource>,
    /// Most recently used last.
    blocks: Mutex<VecDeque<(u64, Bytes)>>,
    /// The block after the last one fetched, and how many blocks the next sequential miss
    /// fetches beyond what it asks.
    ahead: Mutex<(u64, u64)>,
    /// Bytes per second of the last fetch, round trip included; `f64` bits.
    pace: AtomicU64,
    /// Reads go out urgent (see [`ReadOptions`]): the index opens, or a start waits on its
    /// walk. True at first, for the index's open.
    awaited: AtomicBool,
}

/// Index reads are not cancelled: they are short, and the walk needs them.
static NEVER: Cancel = Cancel::new();

impl BlockCache {
    /// The longest read whose blocks are kept.
    pub(crate) const MOST_KEPT: u64 = BLOCK * CAPACITY as u64 / 2;

    pub(crate) fn new(inner: Arc<dyn RangeSource>) -> BlockCache {
        BlockCache {
            inner,
            blocks: Mutex::new(VecDeque::with_capacity(CAPACITY)),
            ahead: Mutex::new((u64::MAX, 0)),
            pace: AtomicU64::new(f64::INFINITY.to_bits()),
            awaited: AtomicBool::new(true),
        }
    }

    /// Whether playback waits on this file's index reads now.
    pub(crate) fn set_awaited(&self, awaited: bool) {
        self.awaited.store(awaited, Ordering::Relaxed);
    }

    /// A read of the inner source, urgent while awaited; its pace is noted.
    fn read_inner(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        let urgent = if self.awaited.load(Ordering::Relaxed) { len } else { 0 };
        let started = std::time::Instant::now();
        let data = self.inner.read_range_with(start, len, ReadOptions::urgent(&NEVER, urgent))?;
        self.note_pace(len, started.elapsed());
        Ok(data)
    }

    fn note_pace(&self, bytes: u64, took: std::time::Duration) {
        let pace = bytes as f64 / took.as_secs_f64().max(1e-6);
        self.pace.store(pace.to_bits(), Ordering::Relaxed);
    }

    fn cached(&self, block: u64) -> Option<Bytes> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let i = blocks.iter().position(|(b, _)| *b == block)?;
        let entry = blocks.remove(i)?;
        let data = entry.1.clone();
        blocks.push_back(entry);
        Some(data)
    }

    fn contains(&self, block: u64) -> bool {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|(b, _)| *b == block)
    }

    fn insert(&self, block: u64, data: Bytes) {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if blocks.len() == CAPACITY {
            blocks.pop_front();
        }
        blocks.push_back((block, data));
    }
}

impl BlockCache {
    /// `start..start+len` if every block of it is cached, without reading: an index walk that
    /// already fetched a stretch (Ogg pages, MP3 frames, Matroska clusters without Cues) then
    /// costs the media read nothing.
    pub(crate) fn read_cached(&self, start: u64, len: u64) -> Option<Bytes> {
        if len == 0 || check_range(start, len, self.inner.len()).is_err() {
            return None;
        }
        let (first, last) = (start / BLOCK, (start + len - 1) / BLOCK);
        if last - first >= CAPACITY as u64 {
            return None;
        }
        let parts: Vec<Bytes> = (first..=last).map(|b| self.cached(b)).collect::<Option<_>>()?;
        Some(join(parts, start - first * BLOCK, len))
    }
}

impl BlockCache {
    /// Fetches the blocks of `start..start+len` in one read, unless all are here: what a walk
    /// about to start will read, so it finds memory rather than a round trip per window.
    /// Reads with `options` (cancellable; what is urgent).
    pub(crate) fn prefetch(&self, start: u64, len: u64, options: ReadOptions<'_>) -> Result<(), SourceError> {
        let size = self.inner.len();
        let len = len.min(size.saturating_sub(start)).min(Self::MOST_KEPT);
        if len == 0 || self.read_cached(start, len).is_some() {
            return Ok(());
        }
        let (first, last) = (start / BLOCK, (start + len - 1) / BLOCK);
        let from = first * BLOCK;
        let to = ((last + 1) * BLOCK).min(size);
        let started = std::time::Instant::now();
        // The blocks' head before `start` goes with the urgent bytes, if any are urgent.
        let urgent = if options.urgent == 0 { 0 } else { start + options.urgent - from };
        let data = self.inner.read_range_with(from, to - from, ReadOptions { urgent, ..options })?;
        tracing::debug!(start = from, len = to - from, took = ?started.elapsed(), "prefetch");
        self.note_pace(to - from, started.elapsed());
        if data.len() as u64 != to - from {
            return Err(SourceError::Io { start: from, len: to - from, message: "short read".into() });
        }
        for block in first..=last {
            let at = ((block - first) * BLOCK) as usize;
            self.insert(block, data.slice(at..(at + BLOCK as usize).min(data.len())));
        }
        *self.ahead.lock().unwrap_or_else(|e| e.into_inner()) = (last + 1, 1);
        Ok(())
    }
}

/// `len` bytes from `skip` into consecutive blocks: a slice when one block holds them.
fn join(mut parts: Vec<Bytes>, skip: u64, len: u64) -> Bytes {
    let skip = skip as usize;
    if parts.len() == 1 {
        let block = parts.pop().unwrap_or_default();
        return block.slice(skip..(skip + len as usize).min(block.len()));
    }
    let mut out = BytesMut::with_capacity(len as usize);
    let mut left = len as usize;
    for (i, part) in parts.into_iter().enumerate() {
        let from = if i == 0 { skip } else { 0 };
        let take = (part.len().saturating_sub(from)).min(left);
        out.extend_from_slice(&part[from..from + take]);
        left -= take;
    }
    out.freeze()
}

impl BlockCache {
    /// Where a fetch of the missing blocks `run_start..run_end` stops: further when it follows
    /// the previous fetch (see the module doc).
    fn fetch_end(&self, run_start: u64, run_end: u64, size: u64) -> u64 {
        let blocks_in_file = size.div_ceil(BLOCK);
        let mut ahead = self.ahead.lock().unwrap_or_else(|e| e.into_inner());
        let (next, extra) = *ahead;
        let paced = f64::from_bits(self.pace.load(Ordering::Relaxed)) * AHEAD_TIME / BLOCK as f64;
        let most_extra = (paced as u64).clamp(1, AHEAD_MOST);
        let extra = if run_start == next { (extra * 2).clamp(1, most_extra) } else { 0 };
        let most = (run_end + extra).min(blocks_in_file);
        // Up to the first block already here (a read ahead may have fetched it).
        let mut end = run_end;
        while end < most && !self.contains(end) {
            end += 1;
        }
        *ahead = (end, extra);
        end
    }
}

impl RangeSource for BlockCache {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        let size = self.inner.len();
        check_range(start, len, size)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let (first, last) = (start / BLOCK, (start + len - 1) / BLOCK);
        // Too big to keep: straight through.
        if last - first + 1 > CAPACITY as u64 / 2 {
            tracing::debug!(start, len, "index read, not kept");
            return self.read_inner(start, len);
        }
        let mut parts: Vec<Option<Bytes>> = (first..=last).map(|b| self.cached(b)).collect();
        let mut b = first;
        while b <= last {
            if parts[(b - first) as usize].is_some() {
                b += 1;
                continue;
            }
            let run_start = b;
            while b <= last && parts[(b - first) as usize].is_none() {
                b += 1;
            }
            let fetch_end = self.fetch_end(run_start, b, size);
            let from = run_start * BLOCK;
            let to = (fetch_end * BLOCK).min(size);
            let started = std::time::Instant::now();
            let data = self.read_inner(from, to - from)?;
            tracing::debug!(start = from, len = to - from, took = ?started.elapsed(), "index read");
            if data.len() as u64 != to - from {
                return Err(SourceError::Io { start: from, len: to - from, message: "short read".into() });
            }
            for block in run_start..fetch_end {
                if block > last {
                    let at = ((block - run_start) * BLOCK) as usize;
                    self.insert(block, data.slice(at..(at + BLOCK as usize).min(data.len())));
                    continue;
                }
                let at = ((block - run_start) * BLOCK) as usize;
                let end = (at + BLOCK as usize).min(data.len());
                let piece = data.slice(at..end);
                self.insert(block, piece.clone());
                parts[(block - first) as usize] = Some(piece);
            }
        }
        Ok(join(parts.into_iter().map(Option::unwrap_or_default).collect(), start - first * BLOCK, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::CountingSource;

    #[test]
    fn a_walk_block_after_block_fetches_ahead_in_growing_reads() {
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let counted = Arc::new(CountingSource::new(Bytes::from(data.clone())));
        let cache = BlockCache::new(counted.clone());
        // A walk in 4 KiB steps over 1.5 MB: one read per block would be 46.
        let mut at = 100_000u64;
        while at < 1_600_000 {
            assert_eq!(
                &cache.read_range(at, 4096).expect("read")[..],
                &data[at as usize..at as usize + 4096]
            );
            at += 4096;
        }
        let reads = counted.cost().reads;
        assert!(reads <= 10, "{reads} reads for a sequential walk");
        // A jump elsewhere fetches what it asks, no more.
        let before = counted.cost();
        cache.read_range(1_900_000, 10).expect("jump");
        assert_eq!(counted.cost().bytes - before.bytes, BLOCK);
    }

    /// A source whose every read takes `delay`: a slow link.
    struct Slow(Arc<CountingSource<Bytes>>, std::time::Duration);

    impl RangeSource for Slow {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
            std::thread::sleep(self.1);
            self.0.read_range(start, len)
        }
    }

    #[test]
    fn a_walk_over_a_slow_link_reads_ahead_no_more_than_the_link_carries_in_a_moment() {
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let counted = Arc::new(CountingSource::new(Bytes::from(data.clone())));
        // 32 KiB in 300 ms: about 110 kB/s, so a quarter of a second holds less than a block.
        let cache = BlockCache::new(Arc::new(Slow(counted.clone(), std::time::Duration::from_millis(300))));
        let (from, to) = (100_000u64, 300_000u64);
        let mut at = from;
        while at < to {
            assert_eq!(
                &cache.read_range(at, 4096).expect("read")[..],
                &data[at as usize..at as usize + 4096]
            );
            at += 4096;
        }
        // Each fetch takes the block asked for and one more at most.
        let fetched = counted.cost().bytes;
        assert!(fetched <= (to - from) + 3 * BLOCK, "{fetched} bytes fetched for a {} byte walk", to - from);
    }

    #[test]
    fn serves_overlapping_reads_from_blocks_and_fetches_only_what_is_missing() {
        let data: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
        let counted = Arc::new(CountingSource::new(Bytes::from(data.clone())));
        let cache = BlockCache::new(counted.clone());
        let a = cache.read_range(40_000, 100_000).expect("read");
        assert_eq!(&a[..], &data[40_000..140_000]);
        let before = counted.cost();
        let b = cache.read_range(50_000, 60_000).expect("cached read");
        assert_eq!(&b[..], &data[50_000..110_000]);
        assert_eq!(counted.cost(), before, "a read inside cached blocks costs nothing");
        let c = cache.read_range(120_000, 60_000).expect("partly cached");
        assert_eq!(&c[..], &data[120_000..180_000]);
        assert_eq!(counted.cost().reads, before.reads + 1);
        assert_eq!(&cache.read_range(499_990, 10).expect("tail")[..], &data[499_990..]);
        assert!(cache.read_range(499_990, 11).is_err());
        let cost = counted.cost();
        assert_eq!(&cache.read_cached(45_000, 100_000).expect("all cached")[..], &data[45_000..145_000]);
        assert!(cache.read_cached(300_000, 10).is_none(), "never read");
        assert_eq!(counted.cost(), cost, "read_cached never reads");
    }
}
