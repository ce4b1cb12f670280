//! [`S3Provider`]: the public face of the provider (listing, stream info, reads widened to
//! chunks, the server's resolver and loader callbacks) and its [`S3Stats`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::future::FutureExt;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::time::Instant;

use super::bucket::{Counters, Inner, Meeting, MeetingFlight, TrackObject, MAX_MEETINGS};
use super::chunks::{ChunkCache, ChunkKey, Got};
use super::{ByteRange, S3Config, S3Error, S3Location};
use crate::manifest::is_safe_name;
use crate::net::protocol::{NetError, StreamInfo};
use crate::net::server::{Loader, Resolver, Server, ServerBuilder};

/// Chunk GETs one read keeps in flight at once (a read of the 8 MiB window is 32 chunks).
const READ_CONCURRENCY: usize = 8;

/// What the provider has asked of the bucket and what it served from memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct S3Stats {
    /// `meeting.json` GETs.
    pub manifest_gets: u64,
    /// HEADs of track objects.
    pub heads: u64,
    /// Range GETs of chunks.
    pub chunk_gets: u64,
    /// Bytes those GETs brought.
    pub chunk_bytes: u64,
    /// Chunks served from the LRU.
    pub chunk_hits: u64,
    /// Chunks served by waiting on a GET another read started.
    pub chunk_joins: u64,
    /// Bytes of chunks held in memory now.
    pub cached_bytes: u64,
}

/// Serves `s3://bucket/prefix/<meeting>/meeting.json` and the objects it names. Cheap to
/// clone (one shared state).
#[derive(Clone)]
pub struct S3Provider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for S3Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Provider")
            .field("location", &self.inner.location)
            .field("endpoint", &self.inner.endpoint)
            .field("chunks", &self.inner.chunks)
            .finish_non_exhaustive()
    }
}

impl S3Provider {
    /// A provider for `config`; nothing is asked of the bucket until [`Self::meetings`] or a
    /// client's request.
    pub fn new(config: S3Config) -> Result<S3Provider, S3Error> {
        let store = config.build_store()?;
        Ok(S3Provider::with_store(store, &config))
    }

    /// A provider over any object store (an in-memory one, another cloud's), with `config`'s
    /// location, sizes and deadline; its endpoint and credentials are not used.
    pub fn with_store(store: Arc<dyn ObjectStore>, config: &S3Config) -> S3Provider {
        let prefix = Path::parse(&config.location.prefix).unwrap_or_default();
        S3Provider {
            inner: Arc::new(Inner {
                store,
                location: config.location.clone(),
                prefix,
                endpoint: config.endpoint_label(),
                deadline: config.deadline,
                chunk_size: config.chunk_size,
                manifest_ttl: config.manifest_ttl,
                chunks: ChunkCache::new(config.cache_bytes),
                meetings: Mutex::default(),
                counters: Counters::default(),
            }),
        }
    }

    pub fn location(&self) -> &S3Location {
        &self.inner.location
    }

    /// The endpoint as configured (`AWS S3` when none was given).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    pub fn stats(&self) -> S3Stats {
        let c = &self.inner.counters;
        S3Stats {
            manifest_gets: c.manifest_gets.load(Ordering::Relaxed),
            heads: c.heads.load(Ordering::Relaxed),
            chunk_gets: c.chunk_gets.load(Ordering::Relaxed),
            chunk_bytes: c.chunk_bytes.load(Ordering::Relaxed),
            chunk_hits: c.chunk_hits.load(Ordering::Relaxed),
            chunk_joins: c.chunk_joins.load(Ordering::Relaxed),
            cached_bytes: self.inner.chunks.held().0,
        }
    }

    /// The meetings under the prefix (folders holding a `meeting.json` are not checked: one
    /// LIST). Also the check that the bucket is there and answers: `serve` calls it first.
    pub async fn meetings(&self) -> Result<Vec<String>, S3Error> {
        let inner = &self.inner;
        let prefix = (!inner.prefix.as_ref().is_empty()).then_some(&inner.prefix);
        let listed = inner
            .deadline(&inner.prefix, None, inner.store.list_with_delimiter(prefix))
            .await?
            .map_err(|e| inner.store_error(&inner.prefix, None, e))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|name| is_safe_name(name))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The meeting's description (`None` when the bucket has no such meeting).
    pub async fn stream_info(&self, meeting: &str) -> Result<Option<StreamInfo>, S3Error> {
        Ok(self.meeting(meeting).await?.map(|m| m.info.clone()))
    }

    /// Exactly `len` bytes at `start` of object `file` of a track.
    pub async fn read(
        &self,
        meeting: &str,
        track: &str,
        file: u32,
        start: u64,
        len: u64,
    ) -> Result<Bytes, S3Error> {
        let resolved = self.meeting(meeting).await?.ok_or_else(|| S3Error::UnknownMeeting {
            location: self.inner.location.to_string(),
            meeting: meeting.to_string(),
        })?;
        let object = resolved
            .objects
            .get(track)
            .and_then(|files| usize::try_from(file).ok().and_then(|n| files.get(n)))
            .ok_or_else(|| S3Error::UnknownTrack {
                meeting: meeting.to_string(),
                track: track.to_string(),
            })?;
        let end = start.checked_add(len).filter(|&end| end <= object.size && len > 0).ok_or_else(|| {
            S3Error::OutOfRange {
                object: object.object.to_string(),
                range: ByteRange { start, end: start.saturating_add(len) },
                size: object.size,
            }
        })?;
        let size = self.inner.chunk_size;
        let (first, last) = (start / size, (end - 1) / size);
        let chunks: Vec<Bytes> = futures::stream::iter(first..=last)
            .map(|index| self.chunk(object, index))
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let offset = (start - first * size) as usize;
        if let [only] = chunks.as_slice() {
            // The common case: a slice of the cached chunk, no copy.
            return Ok(only.slice(offset..offset + len as usize));
        }
        // Spanning chunks: one copy into the answer.
        let mut out = BytesMut::with_capacity(len as usize);
        let mut skip = offset;
        for chunk in &chunks {
            let take = (chunk.len() - skip).min(len as usize - out.len());
            out.extend_from_slice(&chunk[skip..skip + take]);
            skip = 0;
        }
        Ok(out.freeze())
    }

    /// The resolver callback for [`Server::builder`].
    pub fn resolver(&self) -> impl Resolver {
        let this = self.clone();
        move |stream: String| {
            let this = this.clone();
            async move {
                this.stream_info(&stream).await.map_err(|e| {
                    tracing::warn!("resolving {stream:?}: {e}");
                    e.to_net(&stream, None)
                })
            }
        }
    }

    /// The loader callback for [`Server::builder`].
    pub fn loader(&self) -> impl Loader {
        let this = self.clone();
        move |stream: String, track: String, file: u32, start: u64, len: u64| {
            let this = this.clone();
            async move {
                this.read(&stream, &track, file, start, len).await.map_err(|e| -> NetError {
                    tracing::warn!("reading {stream:?}/{track:?}: {e}");
                    e.to_net(&stream, Some(&track))
                })
            }
        }
    }

    /// A server builder serving this bucket.
    pub fn server_builder(&self) -> ServerBuilder<impl Resolver, impl Loader> {
        Server::builder(self.resolver(), self.loader())
    }

    /// The chunk `index` of `object`: from memory, from a GET under way, or a range GET.
    async fn chunk(&self, object: &TrackObject, index: u64) -> Result<Bytes, S3Error> {
        let size = self.inner.chunk_size;
        let range = index * size..((index + 1) * size).min(object.size);
        let key = ChunkKey { object: object.object.clone(), version: object.version.clone(), index };
        let inner = self.inner.clone();
        let path = object.key.clone();
        let (result, got) =
            self.inner.chunks.get(key, move || async move { inner.get_range(&path, range).await }).await;
        let counter = match got {
            Got::Hit => &self.inner.counters.chunk_hits,
            Got::Joined => &self.inner.counters.chunk_joins,
            Got::Fetched => &self.inner.counters.chunk_gets,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// The meeting, resolved within the TTL or now (one resolve at a time per meeting).
    async fn meeting(&self, meeting: &str) -> Result<Option<Arc<Meeting>>, S3Error> {
        if !is_safe_name(meeting) {
            return Err(S3Error::BadName { meeting: meeting.to_string() });
        }
        let flight = {
            let mut table = self.inner.lock_meetings();
            if let Some((at, resolved)) = table.fresh.get(meeting) {
                if at.elapsed() < self.inner.manifest_ttl {
                    return Ok(Some(resolved.clone()));
                }
            }
            if let Some(flight) = table.flights.get(meeting) {
                flight.clone()
            } else {
                let (inner, name) = (self.inner.clone(), meeting.to_string());
                let task = tokio::spawn(async move {
                    let result = inner.resolve(&name).await;
                    let mut table = inner.lock_meetings();
                    if let Ok(Some(resolved)) = &result {
                        if table.fresh.len() >= MAX_MEETINGS {
                            table.fresh.clear();
                        }
                        table.fresh.insert(name.clone(), (Instant::now(), resolved.clone()));
                    }
                    table.flights.remove(&name);
                    result
                });
                let name = meeting.to_string();
                let location = self.inner.location.clone();
                let flight: MeetingFlight = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(S3Error::Worker { object: format!("{location}/{name}"), message: e.to_string() })
                    })
                }
                .boxed()
                .shared();
                table.flights.insert(meeting.to_string(), flight.clone());
                flight
            }
        };
        flight.await
    }
}
