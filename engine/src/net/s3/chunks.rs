//! Chunks of objects in memory: an LRU bounded in bytes, and one fetch per chunk however many
//! readers want it at once.
//!
//! ```text
//! get(key, fetch)
//!   |- in the LRU            -> the chunk (Hit)
//!   |- a fetch in flight     -> wait for that fetch (Joined)
//!   '- neither               -> spawn fetch as a task, register it in flight, wait (Fetched);
//!                               the task puts its chunk in the LRU and leaves the in-flight
//!                               table under one lock, so a reader always finds one or the other
//! ```
//!
//! The fetch runs as a task of its own: a reader that gives up (its client cancelled the
//! read) does not cancel the GET the others are waiting on. Failures are not cached: the
//! next reader fetches again. The store-agnostic part of the S3 provider; tested here with
//! counting fetchers, and at a real S3 server in `tests/tests/s3.rs`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use super::error::S3Error;

/// One chunk of one version of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ChunkKey {
    /// `s3://bucket/key`.
    pub object: Arc<str>,
    /// The object's ETag and size when its meeting was resolved: a replaced object's chunks
    /// are never mixed with the old one's.
    pub version: Arc<str>,
    /// Chunk number: bytes `index * chunk_size ..`.
    pub index: u64,
}

/// How a chunk was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Got {
    Hit,
    Joined,
    Fetched,
}

type Flight = Shared<BoxFuture<'static, Result<Bytes, S3Error>>>;

#[derive(Clone)]
pub(crate) struct ChunkCache {
    state: Arc<Mutex<State>>,
    /// The LRU's bound: the bytes of the chunks it keeps.
    max_bytes: u64,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("ChunkCache")
            .field("max_bytes", &self.max_bytes)
            .field("bytes", &state.bytes)
            .field("chunks", &state.entries.len())
            .field("in_flight", &state.flights.len())
            .finish()
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<ChunkKey, Entry>,
    /// Entries by last use: the first is evicted first.
    order: BTreeMap<u64, ChunkKey>,
    /// Use counter (the keys of `order`).
    tick: u64,
    /// Sum of the entries' lengths.
    bytes: u64,
    /// Fetches under way, by chunk.
    flights: HashMap<ChunkKey, Flight>,
}

struct Entry {
    data: Bytes,
    tick: u64,
}

impl State {
    fn touch(&mut self, key: &ChunkKey) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(key)?;
        self.order.remove(&entry.tick);
        entry.tick = tick;
        self.order.insert(tick, key.clone());
        Some(entry.data.clone())
    }

    fn insert(&mut self, key: ChunkKey, data: Bytes, max_bytes: u64) {
        let len = data.len() as u64;
        if len > max_bytes {
            return;
        }
        if let Some(old) = self.entries.remove(&key) {
            self.order.remove(&old.tick);
            self.bytes -= old.data.len() as u64;
        }
        while self.bytes + len > max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            if let Some(evicted) = self.entries.remove(&oldest) {
                self.bytes -= evicted.data.len() as u64;
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, Entry { data, tick: self.tick });
        self.bytes += len;
    }
}

impl ChunkCache {
    pub fn new(max_bytes: u64) -> ChunkCache {
        ChunkCache { state: Arc::default(), max_bytes }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The chunk `key`: from memory, from a fetch already under way, or from `fetch()`.
    /// Must be called on a tokio runtime.
    pub async fn get<F, Fut>(&self, key: ChunkKey, fetch: F) -> (Result<Bytes, S3Error>, Got)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, S3Error>> + Send + 'static,
    {
        let (flight, got) = {
            let mut state = self.lock();
            if let Some(data) = state.touch(&key) {
                return (Ok(data), Got::Hit);
            }
            if let Some(flight) = state.flights.get(&key) {
                (flight.clone(), Got::Joined)
            } else {
                let work = fetch();
                let (shared, max_bytes, done_key) = (self.state.clone(), self.max_bytes, key.clone());
                // Registered below before this lock is released, so the task's removal (which
                // needs the lock) always comes after the registration.
                let task = tokio::spawn(async move {
                    let result = work.await;
                    let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Ok(data) = &result {
                        state.insert(done_key.clone(), data.clone(), max_bytes);
                    }
                    state.flights.remove(&done_key);
                    result
                });
                let object = key.object.clone();
                let flight: Flight = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(S3Error::Worker { object: object.to_string(), message: e.to_string() })
                    })
                }
                .boxed()
                .shared();
                state.flights.insert(key, flight.clone());
                (flight, Got::Fetched)
            }
        };
        (flight.await, got)
    }

    /// Bytes and chunks held now (tests, stats).
    pub fn held(&self) -> (u64, usize) {
        let state = self.lock();
        (state.bytes, state.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn key(index: u64) -> ChunkKey {
        ChunkKey { object: "s3://b/k".into(), version: "v".into(), index }
    }

    /// A fetch that counts itself and answers after `delay` with `len` bytes of `index`.
    fn fetcher(
        calls: &Arc<AtomicUsize>,
        index: u64,
        len: usize,
        delay: Duration,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<Bytes, S3Error>> {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(delay).await;
                Ok(Bytes::from(vec![index as u8; len]))
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn concurrent_readers_of_one_chunk_share_one_fetch_and_later_ones_hit() {
        let cache = ChunkCache::new(1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        let mut readers = Vec::new();
        for _ in 0..50 {
            let (cache, calls) = (cache.clone(), calls.clone());
            readers.push(tokio::spawn(async move {
                cache.get(key(7), fetcher(&calls, 7, 1000, Duration::from_millis(50))).await
            }));
        }
        let mut fetched = 0;
        for reader in readers {
            let (data, got) = reader.await.expect("reader");
            assert_eq!(data.expect("data"), Bytes::from(vec![7u8; 1000]));
            fetched += usize::from(got == Got::Fetched);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(fetched, 1);
        let (_, got) = cache.get(key(7), fetcher(&calls, 7, 1000, Duration::ZERO)).await;
        assert_eq!(got, Got::Hit);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_lru_stays_within_its_bytes_and_evicts_the_least_recently_used() {
        let cache = ChunkCache::new(3000);
        let calls = Arc::new(AtomicUsize::new(0));
        for index in 0..3 {
            cache.get(key(index), fetcher(&calls, index, 1000, Duration::ZERO)).await.0.expect("get");
        }
        // Use 0 again, so 1 is the least recently used when 3 comes in.
        assert_eq!(cache.get(key(0), fetcher(&calls, 0, 1000, Duration::ZERO)).await.1, Got::Hit);
        cache.get(key(3), fetcher(&calls, 3, 1000, Duration::ZERO)).await.0.expect("get");
        assert_eq!(cache.held(), (3000, 3));
        assert_eq!(cache.get(key(0), fetcher(&calls, 0, 1000, Duration::ZERO)).await.1, Got::Hit);
        assert_eq!(cache.get(key(1), fetcher(&calls, 1, 1000, Duration::ZERO)).await.1, Got::Fetched);
        // A chunk larger than the whole bound is served but not kept.
        let (data, _) = cache.get(key(9), fetcher(&calls, 9, 5000, Duration::ZERO)).await;
        assert_eq!(data.expect("big").len(), 5000);
        assert!(cache.held().0 <= 3000);
    }

    #[tokio::test]
    async fn a_failed_fetch_reaches_every_waiter_and_is_not_cached() {
        let cache = ChunkCache::new(1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = |calls: Arc<AtomicUsize>| {
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Err(S3Error::Store { object: "s3://b/k".into(), range: None, message: "refused".into() })
                }
                .boxed()
            }
        };
        let (a, b) = tokio::join!(
            cache.get(key(1), failing(calls.clone())),
            cache.get(key(1), failing(calls.clone()))
        );
        assert!(a.0.is_err() && b.0.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (data, got) = cache.get(key(1), fetcher(&calls, 1, 10, Duration::ZERO)).await;
        assert_eq!((data.expect("retry").len(), got), (10, Got::Fetched));
    }

    #[tokio::test]
    async fn a_reader_that_gives_up_does_not_cancel_the_fetch_others_wait_on() {
        let cache = ChunkCache::new(1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        let first = cache.get(key(2), fetcher(&calls, 2, 10, Duration::from_millis(100)));
        assert!(tokio::time::timeout(Duration::from_millis(20), first).await.is_err());
        let (data, got) = cache.get(key(2), fetcher(&calls, 2, 10, Duration::ZERO)).await;
        assert_eq!(data.expect("data").len(), 10);
        assert_eq!(got, Got::Joined);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
