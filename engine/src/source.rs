//! [`RangeSource`]: a byte stream of known length read by ranges. Local files, in-memory
//! buffers and remote tracks implement it, so the index parsers and the player are the same code
//! for a folder on disk and a peer across the internet.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// Why a range could not be read. `Clone` so one failure can reach every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("range {start}+{len} lies past the end of the source ({size} bytes)")]
    OutOfRange { start: u64, len: u64, size: u64 },
    #[error("reading {start}+{len}: {message}")]
    Io { start: u64, len: u64, message: String },
    #[error("remote read {start}+{len} failed: {message}")]
    Remote { start: u64, len: u64, message: String },
    /// The source answered a read with a different number of bytes than asked for (an
    /// embedder's source that stops early, or a peer that lies).
    #[error("read {start}+{len} returned {got} bytes")]
    ShortRead { start: u64, len: u64, got: u64 },
    /// The reader gave up on the read ([`Cancel`]) before it completed.
    #[error("read {start}+{len} cancelled")]
    Cancelled { start: u64, len: u64 },
}

/// Lets a reader give up on reads in flight: a stream's track that is dropped or sought away
/// cancels its read rather than waiting for it (a remote read resets its QUIC streams).
#[derive(Debug, Default)]
pub struct Cancel {
    cancelled: std::sync::atomic::AtomicBool,
    wakers: std::sync::Mutex<Vec<std::task::Waker>>,
}

impl Cancel {
    pub const fn new() -> Cancel {
        Cancel {
            cancelled: std::sync::atomic::AtomicBool::new(false),
            wakers: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Cancels every read waiting on this, now and later (until [`Cancel::reset`]).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        for waker in self.wakers.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            waker.wake();
        }
    }

    pub fn reset(&self) {
        self.cancelled.store(false, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once [`Cancel::cancel`] is called: for async readers to race against.
    pub fn cancelled(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_cancelled() {
                return std::task::Poll::Ready(());
            }
            self.wakers.lock().unwrap_or_else(|e| e.into_inner()).push(cx.waker().clone());
            if self.is_cancelled() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

/// How one read is done: given up once `cancel` is set; its first `urgent` bytes are what
/// playback waits for now (a seek's or a join's first frames), which a source sharing a link
/// with other reads sends first.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions<'a> {
    pub cancel: &'a Cancel,
    pub urgent: u64,
}

impl<'a> ReadOptions<'a> {
    /// Cancellable, nothing urgent: a refill, a read ahead.
    pub fn routine(cancel: &'a Cancel) -> ReadOptions<'a> {
        ReadOptions { cancel, urgent: 0 }
    }

    /// Cancellable, its first `urgent` bytes awaited now.
    pub fn urgent(cancel: &'a Cancel, urgent: u64) -> ReadOptions<'a> {
        ReadOptions { cancel, urgent }
    }
}

/// A byte stream of known length that can be read at any offset.
///
/// Reads are synchronous: parsers run on ordinary threads (or `spawn_blocking`), and a remote
/// implementation waits for its network reply there, never on an async worker.
pub trait RangeSource: Send + Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;

    /// Exactly `len` bytes starting at `start`; an error if any of them lies past the end.
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError>;

    /// Like [`RangeSource::read_range`], but gives up with [`SourceError::Cancelled`] once
    /// the options' `cancel` is set, and may send urgent bytes first. Sources whose reads are
    /// quick (files, memory) need not override it.
    fn read_range_with(&self, start: u64, len: u64, options: ReadOptions<'_>) -> Result<Bytes, SourceError> {
        if options.cancel.is_cancelled() {
            return Err(SourceError::Cancelled { start, len });
        }
        self.read_range(start, len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: RangeSource + ?Sized> RangeSource for &T {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        (**self).read_range(start, len)
    }
    fn read_range_with(&self, start: u64, len: u64, options: ReadOptions<'_>) -> Result<Bytes, SourceError> {
        (**self).read_range_with(start, len, options)
    }
}

impl<T: RangeSource + ?Sized> RangeSource for std::sync::Arc<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        (**self).read_range(start, len)
    }
    fn read_range_with(&self, start: u64, len: u64, options: ReadOptions<'_>) -> Result<Bytes, SourceError> {
        (**self).read_range_with(start, len, options)
    }
}

/// Checks that `start..start+len` lies within `size` bytes.
pub fn check_range(start: u64, len: u64, size: u64) -> Result<(), SourceError> {
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(SourceError::OutOfRange { start, len, size }),
    }
}

/// Holds a source to the [`RangeSource`] contract: every read returns exactly the bytes asked
/// for, or [`SourceError::ShortRead`]. The indexes read through it, so a source that returns
/// fewer (or more) bytes than asked is a typed error where reads enter the parsers, never an
/// out-of-bounds slice inside them.
#[derive(Debug, Clone, Copy)]
pub struct ExactReads<S>(pub S);

impl<S: RangeSource> RangeSource for ExactReads<S> {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        let data = self.0.read_range(start, len)?;
        if data.len() as u64 != len {
            return Err(SourceError::ShortRead { start, len, got: data.len() as u64 });
        }
        Ok(data)
    }

    fn read_range_with(&self, start: u64, len: u64, options: ReadOptions<'_>) -> Result<Bytes, SourceError> {
        let data = self.0.read_range_with(start, len, options)?;
        if data.len() as u64 != len {
            return Err(SourceError::ShortRead { start, len, got: data.len() as u64 });
        }
        Ok(data)
    }
}

/// In-memory bytes (tests, fuzzers, data already fetched). Slicing shares the buffer.
impl RangeSource for Bytes {
    fn len(&self) -> u64 {
        Bytes::len(self) as u64
    }
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        check_range(start, len, Bytes::len(self) as u64)?;
        Ok(self.slice(start as usize..(start + len) as usize))
    }
}

/// A local file read with positioned reads (`pread`), so many threads can share one handle.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    len: u64,
}

impl FileSource {
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let file = File::open(path.as_ref())?;
        let len = file.metadata()?.len();
        Ok(FileSource { file, len })
    }
}

impl RangeSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        check_range(start, len, self.len)?;
        let io_err = |e: std::io::Error| SourceError::Io { start, len, message: e.to_string() };
        let size =
            usize::try_from(len).map_err(|_| SourceError::OutOfRange { start, len, size: self.len })?;
        let mut buf = vec![0u8; size];
        self.file.read_exact_at(&mut buf, start).map_err(io_err)?;
        Ok(Bytes::from(buf))
    }
}

/// What reading has cost so far: bytes delivered and the number of reads (round trips, for a
/// remote source).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadCost {
    pub bytes: u64,
    pub reads: u64,
}

/// Reads and bytes counted by one or more [`CountingSource`]s, readable at any time.
#[derive(Debug, Default)]
pub struct ReadCounter {
    bytes: AtomicU64,
    reads: AtomicU64,
}

impl ReadCounter {
    pub fn cost(&self) -> ReadCost {
        ReadCost { bytes: self.bytes.load(Ordering::Relaxed), reads: self.reads.load(Ordering::Relaxed) }
    }

    fn count(&self, bytes: u64) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Wraps a source and counts what is read through it: how index opening proves it only touched
/// box headers and `moov`, or SeekHead and Cues, and what a stream's track has fetched.
pub struct CountingSource<S> {
    inner: S,
    counter: std::sync::Arc<ReadCounter>,
}

impl<S> CountingSource<S> {
    pub fn new(inner: S) -> Self {
        CountingSource { inner, counter: Default::default() }
    }

    /// Counts into `counter`, which outlives the source (a track's figures across
    /// subscriptions).
    pub fn sharing(inner: S, counter: std::sync::Arc<ReadCounter>) -> Self {
        CountingSource { inner, counter }
    }

    pub fn cost(&self) -> ReadCost {
        self.counter.cost()
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> fmt::Debug for CountingSource<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingSource").field("cost", &self.cost()).finish()
    }
}

impl<S: RangeSource> RangeSource for CountingSource<S> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        let data = self.inner.read_range(start, len)?;
        self.counter.count(data.len() as u64);
        Ok(data)
    }

    fn read_range_with(&self, start: u64, len: u64, options: ReadOptions<'_>) -> Result<Bytes, SourceError> {
        let data = self.inner.read_range_with(start, len, options)?;
        self.counter.count(data.len() as u64);
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_source_slices_and_refuses_past_end() {
        let src = Bytes::from_static(b"0123456789");
        assert_eq!(&src.read_range(2, 3).expect("in range")[..], b"234");
        assert_eq!(src.read_range(8, 3), Err(SourceError::OutOfRange { start: 8, len: 3, size: 10 }));
        assert!(src.read_range(u64::MAX, 2).is_err());
    }

    #[test]
    fn file_source_reads_exact_ranges_and_counts() {
        let mut tmp = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut tmp, b"hello, ranges").expect("write");
        let src = CountingSource::new(FileSource::open(tmp.path()).expect("open"));
        assert_eq!(src.len(), 13);
        assert_eq!(&src.read_range(7, 6).expect("read")[..], b"ranges");
        assert!(src.read_range(10, 4).is_err());
        assert_eq!(src.cost(), ReadCost { bytes: 6, reads: 1 });
    }

    /// Answers every read with one byte less than asked.
    struct Stingy(Bytes);

    impl RangeSource for Stingy {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
            let data = self.0.read_range(start, len)?;
            Ok(data.slice(..data.len().saturating_sub(1)))
        }
    }

    #[test]
    fn exact_reads_turns_a_short_read_into_a_typed_error() {
        let src = ExactReads(Stingy(Bytes::from_static(b"0123456789")));
        assert_eq!(src.read_range(2, 4), Err(SourceError::ShortRead { start: 2, len: 4, got: 3 }));
        let exact = ExactReads(Bytes::from_static(b"0123456789"));
        assert_eq!(&exact.read_range(2, 4).expect("exact")[..], b"2345");
    }
}
