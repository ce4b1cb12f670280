//! The provider's shared state ([`Inner`]: resolved meetings, counters) and its calls to the
//! bucket: deadlines, error mapping, range GETs, resolving a meeting (manifest GET, HEADs).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::time::Instant;

use super::chunks::ChunkCache;
use super::{ByteRange, S3Error, S3Location, MAX_MANIFEST_BYTES};
use crate::manifest::Manifest;
use crate::net::protocol::{ReadWindow, StreamInfo, TrackEntry};

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) manifest_gets: AtomicU64,
    pub(super) heads: AtomicU64,
    pub(super) chunk_gets: AtomicU64,
    pub(super) chunk_bytes: AtomicU64,
    pub(super) chunk_hits: AtomicU64,
    pub(super) chunk_joins: AtomicU64,
}

/// One resolved meeting: what clients are told, and where each track's bytes are.
#[derive(Debug)]
pub(super) struct Meeting {
    pub(super) info: StreamInfo,
    /// Each track's objects, numbered as [`crate::manifest::ManifestTrack::files`] lists them.
    pub(super) objects: HashMap<String, Vec<TrackObject>>,
}

#[derive(Debug)]
pub(super) struct TrackObject {
    pub(super) key: Path,
    /// `s3://bucket/key`, shared by the chunk keys.
    pub(super) object: Arc<str>,
    pub(super) size: u64,
    pub(super) version: Arc<str>,
}

pub(super) type MeetingFlight = Shared<BoxFuture<'static, Result<Option<Arc<Meeting>>, S3Error>>>;

#[derive(Default)]
pub(super) struct Meetings {
    /// Resolved meetings and when they were resolved; absent meetings are not kept.
    pub(super) fresh: HashMap<String, (Instant, Arc<Meeting>)>,
    /// Resolves under way.
    pub(super) flights: HashMap<String, MeetingFlight>,
}

/// Meetings kept resolved; past this the table starts afresh.
pub(super) const MAX_MEETINGS: usize = 256;

pub(super) struct Inner {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) location: S3Location,
    /// The prefix as a store path (empty for the bucket's top).
    pub(super) prefix: Path,
    pub(super) endpoint: String,
    pub(super) deadline: Duration,
    pub(super) chunk_size: u64,
    pub(super) manifest_ttl: Duration,
    pub(super) chunks: ChunkCache,
    pub(super) meetings: Mutex<Meetings>,
    pub(super) counters: Counters,
}

impl Inner {
    pub(super) fn lock_meetings(&self) -> MutexGuard<'_, Meetings> {
        self.meetings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn meeting_dir(&self, meeting: &str) -> Path {
        self.prefix.clone().join(meeting)
    }

    /// `work` bounded by the deadline, retries included. A failure that is a timeout (the
    /// deadline, or object_store's own per-attempt and retry timeouts) is an
    /// [`S3Error::Timeout`]; other failures are left to the caller.
    pub(super) async fn deadline<T>(
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
    pub(super) fn store_error(
        &self,
        key: &Path,
        range: Option<&Range<u64>>,
        e: object_store::Error,
    ) -> S3Error {
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

    pub(super) async fn get_range(&self, key: &Path, range: Range<u64>) -> Result<Bytes, S3Error> {
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
    pub(super) async fn resolve(&self, meeting: &str) -> Result<Option<Arc<Meeting>>, S3Error> {
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
