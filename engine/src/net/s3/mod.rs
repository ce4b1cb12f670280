//! A provider serving meetings from an S3 bucket (feature `s3`): `serve s3://BUCKET[/PREFIX]`.
//!
//! ```text
//! resolver(meeting)                          loader(meeting, track, start, len)
//!   '- meetings cache (fresh for the TTL,      |- the meeting as resolved (cached)
//!      one resolve in flight per meeting)      |- chunks covering start..start+len
//!        |- GET <prefix>/<meeting>/meeting.json|    (aligned to the chunk size)
//!        '- HEAD each track's object           |- per chunk: LRU | join a GET in flight |
//!           (size, ETag)                       |    range GET (one per chunk at a time)
//!                                              '- the bytes: a slice of one chunk, or the
//!                                                 chunks joined
//! ```
//!
//! Layout in the bucket: `<prefix>/<meeting>/meeting.json` and the files its segments name,
//! relative to `<prefix>/<meeting>/` (a manifest naming `..`, an absolute path or an empty
//! component is refused, so no key outside the meeting is ever read). Nothing is written to
//! local disk; data stays in [`Bytes`] from the HTTP body to the QUIC stream.
//!
//! **Why chunks and merging**: the server calls the resolver for every read and the loader
//! for every range a client asks; 100 viewers of one meeting ask the same ranges at about the
//! same time. Reads are widened to whole chunks ([`S3Config::chunk_size`], 256 KiB), kept in
//! an LRU bounded in bytes ([`S3Config::cache_bytes`]), and a chunk wanted while its GET is
//! under way waits for that GET (see [`chunks`]): each chunk costs the bucket one GET however
//! many viewers read it, until it is evicted. Resolved meetings are kept for
//! [`S3Config::manifest_ttl`] (a replaced `meeting.json` or object is seen after that; chunks
//! are keyed by the object's ETag and size, so old and new bytes never mix).
//!
//! **Timeouts for a player**: object_store's defaults retry for up to three minutes; a player
//! waiting on a chunk wants an error in seconds so it can tell the person (or, later, ask
//! another peer). Each HTTP attempt is bounded by [`S3Config::request_timeout`], connects by
//! [`S3Config::connect_timeout`], and every store operation, retries included, by
//! [`S3Config::deadline`] (5 s by default).
//!
//! Configuration comes from the standard environment ([`S3Config::from_env`]:
//! `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ALLOW_HTTP`) or from the builder methods. Errors are [`S3Error`]s naming
//! the bucket, the object and the byte range; the server's callbacks log them whole and tell
//! the client only names ([`S3Error::to_net`]).

mod chunks;
mod error;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::time::Instant;

pub use error::{ByteRange, S3Error};

use self::chunks::{ChunkCache, ChunkKey, Got};
use super::protocol::{NetError, ReadWindow, StreamInfo, TrackEntry};
use super::server::{Loader, Resolver, Server, ServerBuilder};
use crate::manifest::{is_safe_name, Manifest};

/// A `meeting.json` larger than this is refused unread (a manifest is a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Chunk GETs one read keeps in flight at once (a read of the 8 MiB window is 32 chunks).
const READ_CONCURRENCY: usize = 8;

/// `s3://BUCKET[/PREFIX]`: where the meetings are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's top.
    pub prefix: String,
}

impl S3Location {
    pub fn parse(location: &str) -> Result<S3Location, S3Error> {
        let invalid =
            |reason: &str| S3Error::InvalidLocation { location: location.to_string(), reason: reason.into() };
        let rest = location.strip_prefix("s3://").ok_or_else(|| invalid("it does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("no bucket"));
        }
        if !bucket.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
            return Err(invalid("a bucket name is letters, digits, '-', '.' and '_'"));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() && Path::parse(prefix).is_err() {
            return Err(invalid("the prefix has an empty, '.' or '..' component"));
        }
        Ok(S3Location { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }

    /// `s3://bucket/key` for messages.
    fn object(&self, key: &Path) -> String {
        format!("s3://{}/{}", self.bucket, key)
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl std::str::FromStr for S3Location {
    type Err = S3Error;
    fn from_str(s: &str) -> Result<S3Location, S3Error> {
        S3Location::parse(s)
    }
}

/// Where and how to reach the bucket, and the provider's sizes and times.
#[derive(Clone)]
pub struct S3Config {
    location: S3Location,
    /// `http(s)://host:port` of an S3-compatible server; AWS's own endpoint when absent.
    endpoint: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    region: Option<String>,
    /// Plain HTTP endpoints are refused unless this is set (`AWS_ALLOW_HTTP=true`).
    allow_http: bool,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_retries: usize,
    deadline: Duration,
    chunk_size: u64,
    cache_bytes: u64,
    manifest_ttl: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("S3Config")
            .field("location", &self.location)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("deadline", &self.deadline)
            .field("chunk_size", &self.chunk_size)
            .field("cache_bytes", &self.cache_bytes)
            .field("manifest_ttl", &self.manifest_ttl)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// Defaults and nothing from the environment: set the endpoint and credentials yourself.
    pub fn new(location: S3Location) -> S3Config {
        S3Config {
            location,
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            region: None,
            allow_http: false,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            max_retries: 2,
            deadline: Duration::from_secs(5),
            chunk_size: 256 * 1024,
            cache_bytes: 64 * 1024 * 1024,
            manifest_ttl: Duration::from_secs(10),
        }
    }

    /// Defaults, with the endpoint, credentials, region and `AWS_ALLOW_HTTP` from the standard
    /// environment variables (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or `AWS_DEFAULT_REGION`).
    pub fn from_env(location: S3Location) -> S3Config {
        let var = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()));
        let mut config = S3Config::new(location);
        config.endpoint = var(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]);
        config.access_key_id = var(&["AWS_ACCESS_KEY_ID"]);
        config.secret_access_key = var(&["AWS_SECRET_ACCESS_KEY"]);
        config.session_token = var(&["AWS_SESSION_TOKEN"]);
        config.region = var(&["AWS_REGION", "AWS_DEFAULT_REGION"]);
        config.allow_http = var(&["AWS_ALLOW_HTTP"]).is_some_and(|v| matches!(v.as_str(), "true" | "1"));
        config
    }

    pub fn location(&self) -> &S3Location {
        &self.location
    }
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret_access_key.into());
        self
    }
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }
    /// Bound on opening a TCP (and TLS) connection to the endpoint (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Bound on one HTTP attempt (default 3 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
    /// Retries of a failed attempt (default 2; object_store's own is 10 over 3 minutes).
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries;
        self
    }
    /// Bound on one store operation, retries included (default 5 s): past it the read fails
    /// with [`S3Error::Timeout`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
    /// Reads are widened to chunks of this size (default 256 KiB, at least 4 KiB).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes.max(4096);
        self
    }
    /// Bytes of chunks kept in memory (default 64 MiB; 0 keeps none, in-flight GETs are
    /// still shared).
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }
    /// How long a resolved meeting (manifest, sizes, ETags) is reused (default 10 s).
    pub fn manifest_ttl(mut self, ttl: Duration) -> Self {
        self.manifest_ttl = ttl;
        self
    }

    fn endpoint_label(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| "AWS S3".to_string())
    }

    fn build_store(&self) -> Result<Arc<dyn ObjectStore>, S3Error> {
        let bucket = &self.location.bucket;
        let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        if let Some(token) = &self.session_token {
            builder = builder.with_token(token);
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        let client = ClientOptions::new()
            .with_allow_http(self.allow_http)
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.deadline,
        };
        let store = builder
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| S3Error::Config { bucket: bucket.clone(), message: e.to_string() })?;
        Ok(Arc::new(store))
    }
}

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

#[derive(Debug, Default)]
struct Counters {
    manifest_gets: AtomicU64,
    heads: AtomicU64,
    chunk_gets: AtomicU64,
    chunk_bytes: AtomicU64,
    chunk_hits: AtomicU64,
    chunk_joins: AtomicU64,
}

/// One resolved meeting: what clients are told, and where each track's bytes are.
#[derive(Debug)]
struct Meeting {
    info: StreamInfo,
    /// Each track's objects, numbered as [`crate::manifest::ManifestTrack::files`] lists them.
    objects: HashMap<String, Vec<TrackObject>>,
}

#[derive(Debug)]
struct TrackObject {
    key: Path,
    /// `s3://bucket/key`, shared by the chunk keys.
    object: Arc<str>,
    size: u64,
    version: Arc<str>,
}

type MeetingFlight = Shared<BoxFuture<'static, Result<Option<Arc<Meeting>>, S3Error>>>;

#[derive(Default)]
struct Meetings {
    /// Resolved meetings and when they were resolved; absent meetings are not kept.
    fresh: HashMap<String, (Instant, Arc<Meeting>)>,
    /// Resolves under way.
    flights: HashMap<String, MeetingFlight>,
}

/// Meetings kept resolved; past this the table starts afresh.
const MAX_MEETINGS: usize = 256;

/// Serves `s3://bucket/prefix/<meeting>/meeting.json` and the objects it names. Cheap to
/// clone (one shared state).
#[derive(Clone)]
pub struct S3Provider {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    location: S3Location,
    /// The prefix as a store path (empty for the bucket's top).
    prefix: Path,
    endpoint: String,
    deadline: Duration,
    chunk_size: u64,
    manifest_ttl: Duration,
    chunks: ChunkCache,
    meetings: Mutex<Meetings>,
    counters: Counters,
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

impl Inner {
    fn lock_meetings(&self) -> MutexGuard<'_, Meetings> {
        self.meetings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn meeting_dir(&self, meeting: &str) -> Path {
        self.prefix.clone().join(meeting)
    }

    /// `work` bounded by the deadline, retries included. A failure that is a timeout (the
    /// deadline, or object_store's own per-attempt and retry timeouts) is an
    /// [`S3Error::Timeout`]; other failures are left to the caller.
    async fn deadline<T>(
        &self,
        key: &Path,
        range: Option<&Range<u64>>,
        work: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<object_store::Result<T>, S3Error> {
        let started = Instant::now();
        let timeout = |after: Duration| S3Error::Timeout {
            object: self.location.object(key),
            endpoint: self.endpoint.clone(),
            range: range.map(|r| ByteRange { start: r.start, end: r.end }),
            after,
        };
        match tokio::time::timeout(self.deadline, work).await {
            Err(_) => Err(timeout(self.deadline)),
            Ok(Err(e)) if timed_out(&e) => Err(timeout(started.elapsed())),
            Ok(result) => Ok(result),
        }
    }

    /// An object_store error as ours: a missing bucket named as such, a missing object as
    /// `NotFound` (the callers decide what that means).
    fn store_error(&self, key: &Path, range: Option<&Range<u64>>, e: object_store::Error) -> S3Error {
        let message = e.to_string();
        if no_such_bucket(&e) {
            return S3Error::NoSuchBucket {
                bucket: self.location.bucket.clone(),
                endpoint: self.endpoint.clone(),
            };
        }
        S3Error::Store {
            object: self.location.object(key),
            range: range.map(|r| ByteRange { start: r.start, end: r.end }),
            message: format!("{message} (endpoint {})", self.endpoint),
        }
    }

    async fn get_range(&self, key: &Path, range: Range<u64>) -> Result<Bytes, S3Error> {
        let expected = range.end - range.start;
        let data = self
            .deadline(key, Some(&range), self.store.get_range(key, range.clone()))
            .await?
            .map_err(|e| self.store_error(key, Some(&range), e))?;
        if data.len() as u64 != expected {
            return Err(S3Error::Changed {
                object: self.location.object(key),
                range: Some(ByteRange { start: range.start, end: range.end }),
                got: data.len() as u64,
                expected,
            });
        }
        self.counters.chunk_bytes.fetch_add(expected, Ordering::Relaxed);
        Ok(data)
    }

    /// GET `meeting.json`, then HEAD every track's object at once.
    async fn resolve(&self, meeting: &str) -> Result<Option<Arc<Meeting>>, S3Error> {
        let dir = self.meeting_dir(meeting);
        let key = dir.clone().join(Manifest::FILE_NAME);
        let object = self.location.object(&key);
        self.counters.manifest_gets.fetch_add(1, Ordering::Relaxed);
        let text = self
            .deadline(&key, None, async {
                let got = self.store.get(&key).await?;
                if got.meta.size > MAX_MANIFEST_BYTES {
                    return Ok(None);
                }
                got.bytes().await.map(Some)
            })
            .await?;
        let text = match text {
            Ok(Some(text)) => text,
            Ok(None) => {
                return Err(S3Error::Manifest {
                    object,
                    message: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
                })
            }
            Err(e @ object_store::Error::NotFound { .. }) if !no_such_bucket(&e) => return Ok(None),
            Err(e) => return Err(self.store_error(&key, None, e)),
        };
        let text = std::str::from_utf8(&text)
            .map_err(|e| S3Error::Manifest { object: object.clone(), message: format!("not UTF-8: {e}") })?;
        let manifest = Manifest::from_json(text)
            .map_err(|e| S3Error::Manifest { object: object.clone(), message: e.to_string() })?;
        // (track, its file number, key) for every file of every track.
        let mut keys = Vec::with_capacity(manifest.tracks.len());
        for (track, number, file) in manifest
            .tracks
            .iter()
            .flat_map(|t| t.files().into_iter().enumerate().map(move |(n, f)| (t, n, f)))
        {
            // The manifest's own check refuses `..` and absolute paths; this one refuses
            // anything object_store would not take as a plain key below the meeting.
            let relative = Path::parse(file).ok().filter(|p| {
                !file.starts_with('/') && !file.contains('\\') && p.parts().all(|part| part.as_ref() != "..")
            });
            let Some(relative) = relative else {
                return Err(S3Error::BadFile {
                    object: object.clone(),
                    track: track.name.clone(),
                    file: file.to_string(),
                });
            };
            keys.push((track, number, Path::from_iter(dir.parts().chain(relative.parts()))));
        }
        let heads = futures::future::join_all(keys.iter().map(|(_, _, key)| async move {
            self.counters.heads.fetch_add(1, Ordering::Relaxed);
            self.deadline(key, None, self.store.head(key)).await
        }))
        .await;
        let mut objects: HashMap<String, Vec<TrackObject>> = HashMap::with_capacity(manifest.tracks.len());
        for ((track, number, key), head) in keys.into_iter().zip(heads) {
            let meta = match head? {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(S3Error::MissingObject {
                        object: self.location.object(&key),
                        meeting: meeting.to_string(),
                        track: track.name.clone(),
                    })
                }
                Err(e) => return Err(self.store_error(&key, None, e)),
            };
            let version = format!("{}:{}", meta.e_tag.as_deref().unwrap_or(""), meta.size);
            let files = objects.entry(track.name.clone()).or_default();
            debug_assert_eq!(files.len(), number);
            files.push(TrackObject {
                object: self.location.object(&key).into(),
                key,
                size: meta.size,
                version: version.into(),
            });
        }
        let tracks = manifest
            .tracks
            .iter()
            .map(|track| {
                let sizes = objects.get(&track.name).map(|files| files.iter().map(|o| o.size).collect());
                TrackEntry::from_manifest(track, sizes.unwrap_or_default())
            })
            .collect();
        let info = StreamInfo {
            name: meeting.to_string(),
            duration_ms: manifest.duration_ms,
            tracks,
            read_window: ReadWindow::default(),
        };
        Ok(Some(Arc::new(Meeting { info, objects })))
    }
}

/// Whether an HTTP attempt of `e` timed out (reqwest's and hyper's messages, in its chain).
fn timed_out(e: &object_store::Error) -> bool {
    let mut current: Option<&dyn std::error::Error> = Some(e);
    while let Some(error) = current {
        let text = error.to_string();
        if text.contains("timed out") || text.contains("deadline has elapsed") {
            return true;
        }
        current = error.source();
    }
    false
}

/// Whether the store said the bucket does not exist: S3's `NoSuchBucket` code, somewhere in
/// the error's chain (object_store keeps the response body in a source).
fn no_such_bucket(e: &object_store::Error) -> bool {
    let mut current: Option<&dyn std::error::Error> = Some(e);
    while let Some(error) = current {
        if error.to_string().contains("NoSuchBucket") {
            return true;
        }
        current = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    use super::*;

    #[test]
    fn locations_parse_and_refuse_what_is_not_a_bucket_and_prefix() {
        let at = S3Location::parse("s3://meetings").expect("bucket");
        assert_eq!((at.bucket.as_str(), at.prefix.as_str()), ("meetings", ""));
        let at = S3Location::parse("s3://meetings/2026/q4/").expect("prefix");
        assert_eq!((at.bucket.as_str(), at.prefix.as_str()), ("meetings", "2026/q4"));
        assert_eq!(at.to_string(), "s3://meetings/2026/q4");
        for bad in ["meetings", "s3://", "s3:///x", "s3://b/../x", "s3://b/a//c", "http://b"] {
            assert!(S3Location::parse(bad).is_err(), "{bad} was taken");
        }
    }

    fn manifest(file: &str) -> String {
        serde_json::json!({
            "name": "m", "duration_ms": 1000,
            "tracks": [{"name": "t", "kind": "video", "role": "camera", "segments": [{"file": file, "start_ms": 0}]}],
        })
        .to_string()
    }

    async fn put(store: &InMemory, key: &str, data: impl Into<Bytes>) {
        store.put(&Path::from(key), PutPayload::from_bytes(data.into())).await.expect("put");
    }

    /// Reads across chunk boundaries, against the bytes put (the in-memory store: the
    /// provider's own arithmetic; the S3 wire is tested in `tests/tests/s3.rs`).
    #[tokio::test]
    async fn reads_of_any_alignment_equal_the_object_and_refuse_past_its_end() {
        let store = Arc::new(InMemory::new());
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        put(&store, "p/m/meeting.json", manifest("v.bin")).await;
        put(&store, "p/m/v.bin", data.clone()).await;
        let config = S3Config::new(S3Location::parse("s3://b/p").expect("location")).chunk_size(4096);
        let provider = S3Provider::with_store(store, &config);
        let info = provider.stream_info("m").await.expect("info").expect("meeting");
        assert_eq!(info.tracks[0].sizes, vec![50_000]);
        for (start, len) in [(0, 1), (0, 4096), (4095, 2), (1000, 20_000), (45_000, 5_000), (0, 50_000)] {
            let got = provider.read("m", "t", 0, start, len).await.expect("read");
            assert_eq!(&got[..], &data[start as usize..(start + len) as usize], "{start}+{len}");
        }
        let err = provider.read("m", "t", 0, 49_999, 2).await.expect_err("past the end");
        assert!(err.to_string().contains("s3://b/p/m/v.bin: bytes 49999-50000"), "{err}");
        assert!(matches!(provider.read("m", "x", 0, 0, 1).await, Err(S3Error::UnknownTrack { .. })));
        let err = provider.read("nope", "t", 0, 0, 1).await.expect_err("no meeting");
        assert_eq!(err.to_string(), "s3://b/p: no meeting \"nope\"");
        assert_eq!(provider.stream_info("nope").await.expect("absent"), None);
        assert!(matches!(provider.stream_info("..").await, Err(S3Error::BadName { .. })));
        // `m` once for all its reads; `nope` twice (an absent meeting is not remembered).
        assert_eq!(provider.stats().manifest_gets, 3, "the meeting was resolved more than once");
    }

    #[tokio::test]
    async fn a_manifest_naming_a_missing_object_or_a_file_outside_the_meeting_is_refused_by_name() {
        let store = Arc::new(InMemory::new());
        put(&store, "m/meeting.json", manifest("gone.webm")).await;
        put(&store, "n/meeting.json", manifest("../m/meeting.json")).await;
        let provider = S3Provider::with_store(store, &S3Config::new(S3Location::parse("s3://b").expect("b")));
        let err = provider.stream_info("m").await.expect_err("missing object");
        assert!(err.to_string().starts_with("s3://b/m/gone.webm: no such object"), "{err}");
        let err = provider.stream_info("n").await.expect_err("escape");
        assert!(err.to_string().contains("s3://b/n/meeting.json"), "{err}");
    }
}
