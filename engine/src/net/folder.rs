//! A ready-made provider: serves a root folder of meetings (one sub-folder per meeting, each
//! with a `meeting.json`) through a [`Server`](super::server::Server).
//!
//! A stream name is a meeting folder's name. Names must be plain (`[A-Za-z0-9_.-]`, not `.` or
//! `..`): anything else is `bad_request`. A meeting folder or track file whose real path (after
//! following symlinks) lies outside the root is treated as absent (`unknown_stream` /
//! `unknown_track`), so a link cannot expose the rest of the disk. Reads are positioned reads on
//! a blocking thread.
//!
//! Per request the provider stats `meeting.json` and reuses the manifest it parsed last time
//! when the file's modification time and length are unchanged (a replaced manifest is read
//! again); paths are still resolved (and checked against the root) and track files opened on
//! every request, so files replaced on disk are served as they are now.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;

use super::protocol::{ErrorCode, NetError, ReadWindow, StreamInfo, TrackEntry};
use super::server::{Loader, Resolver, Server, ServerBuilder};
use crate::manifest::{is_safe_name, Manifest, ManifestTrack};
use crate::source::{FileSource, RangeSource, SourceError};

/// Serves `<root>/<meeting>/meeting.json` and the files it names.
#[derive(Debug, Clone)]
pub struct FolderProvider {
    /// Canonical root: every served path must start with it.
    root: Arc<PathBuf>,
    /// Parsed manifests by meeting folder, with the modification time and length they were
    /// parsed at: a read's resolver and loader calls parse `meeting.json` once, not twice.
    manifests: Arc<Mutex<HashMap<PathBuf, CachedManifest>>>,
}

/// Meetings whose parsed manifests are kept; past this the cache starts afresh.
const MAX_CACHED_MANIFESTS: usize = 256;

#[derive(Debug)]
struct CachedManifest {
    modified: SystemTime,
    len: u64,
    manifest: Arc<Manifest>,
    /// How many times manifests were parsed (tests count them).
    #[cfg(test)]
    parses: u64,
}

impl FolderProvider {
    pub fn new(root: impl AsRef<Path>) -> Result<FolderProvider, NetError> {
        let root = root.as_ref();
        let root = std::fs::canonicalize(root)
            .map_err(|e| NetError::status(ErrorCode::Internal, format!("serving {}: {e}", root.display())))?;
        Ok(FolderProvider { root: Arc::new(root), manifests: Arc::default() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The stream's description, `None` when there is no such meeting.
    pub async fn stream_info(&self, stream: String) -> Result<Option<StreamInfo>, NetError> {
        let this = self.clone();
        blocking(move || this.info_blocking(&stream)).await
    }

    /// Exactly `len` bytes at `start` of file `file` of a track (numbered as
    /// [`ManifestTrack::files`] lists them).
    pub async fn load(
        &self,
        stream: String,
        track: String,
        file: u32,
        start: u64,
        len: u64,
    ) -> Result<Bytes, NetError> {
        let this = self.clone();
        blocking(move || this.load_blocking(&stream, &track, file, start, len)).await
    }

    /// The resolver callback for [`Server::builder`].
    pub fn resolver(&self) -> impl Resolver {
        let this = self.clone();
        move |stream: String| {
            let this = this.clone();
            async move { this.stream_info(stream).await }
        }
    }

    /// The loader callback for [`Server::builder`].
    pub fn loader(&self) -> impl Loader {
        let this = self.clone();
        move |stream: String, track: String, file: u32, start: u64, len: u64| {
            let this = this.clone();
            async move { this.load(stream, track, file, start, len).await }
        }
    }

    /// A server builder serving this folder.
    pub fn server_builder(&self) -> ServerBuilder<impl Resolver, impl Loader> {
        Server::builder(self.resolver(), self.loader())
    }

    /// The meeting folder and its manifest; `None` when absent or outside the root.
    fn meeting(&self, stream: &str) -> Result<Option<(PathBuf, Arc<Manifest>)>, NetError> {
        if !is_safe_name(stream) {
            return Err(NetError::status(ErrorCode::BadRequest, format!("invalid stream name {stream:?}")));
        }
        let Some(dir) = self.inside_root(&self.root.join(stream))? else { return Ok(None) };
        let meta = match std::fs::metadata(dir.join(Manifest::FILE_NAME)) {
            Ok(meta) if meta.is_file() => meta,
            _ => return Ok(None),
        };
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let fresh = |c: &CachedManifest| c.modified == modified && c.len == meta.len();
        {
            let cache = self.manifests.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(cached) = cache.get(&dir).filter(|c| fresh(c)) {
                return Ok(Some((dir, cached.manifest.clone())));
            }
        }
        let manifest = Arc::new(
            Manifest::load(&dir)
                .map_err(|e| NetError::status(ErrorCode::Internal, format!("stream {stream:?}: {e}")))?,
        );
        let mut cache = self.manifests.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_MANIFESTS {
            cache.clear();
        }
        #[cfg(test)]
        let parses = cache.get(&dir).map_or(0, |c| c.parses) + 1;
        cache.insert(
            dir.clone(),
            CachedManifest {
                modified,
                len: meta.len(),
                manifest: manifest.clone(),
                #[cfg(test)]
                parses,
            },
        );
        Ok(Some((dir, manifest)))
    }

    /// The canonical form of `path` if it exists and lies inside the root.
    fn inside_root(&self, path: &Path) -> Result<Option<PathBuf>, NetError> {
        match std::fs::canonicalize(path) {
            Ok(real) if real.starts_with(&*self.root) => Ok(Some(real)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NetError::status(ErrorCode::Internal, e.to_string())),
        }
    }

    /// The path of file `file` of `track`, checked to lie inside the root.
    fn track_file(
        &self,
        stream: &str,
        dir: &Path,
        track: &ManifestTrack,
        file: u32,
    ) -> Result<PathBuf, NetError> {
        let files = track.files();
        let name = usize::try_from(file).ok().and_then(|n| files.get(n)).ok_or_else(|| {
            NetError::status(
                ErrorCode::OutOfRange,
                format!("track {:?} of {stream:?} has {} file(s), no file {file}", track.name, files.len()),
            )
        })?;
        self.inside_root(&dir.join(name))?.ok_or_else(|| {
            NetError::status(
                ErrorCode::UnknownTrack,
                format!("file {file} of track {:?} of {stream:?} is not on the server", track.name),
            )
        })
    }

    fn info_blocking(&self, stream: &str) -> Result<Option<StreamInfo>, NetError> {
        let Some((dir, manifest)) = self.meeting(stream)? else { return Ok(None) };
        let mut tracks = Vec::with_capacity(manifest.tracks.len());
        for track in &manifest.tracks {
            let mut sizes = Vec::new();
            for number in 0..track.files().len() {
                let file = self.track_file(stream, &dir, track, u32::try_from(number).unwrap_or(u32::MAX))?;
                let size = std::fs::metadata(&file)
                    .map_err(|e| {
                        NetError::status(
                            ErrorCode::Internal,
                            format!("track {:?} file {number}: {}", track.name, e.kind()),
                        )
                    })?
                    .len();
                sizes.push(size);
            }
            tracks.push(TrackEntry::from_manifest(track, sizes));
        }
        Ok(Some(StreamInfo {
            name: stream.to_string(),
            duration_ms: manifest.duration_ms,
            tracks,
            read_window: ReadWindow::default(),
        }))
    }

    fn load_blocking(
        &self,
        stream: &str,
        track: &str,
        file: u32,
        start: u64,
        len: u64,
    ) -> Result<Bytes, NetError> {
        let (dir, manifest) = self
            .meeting(stream)?
            .ok_or_else(|| NetError::status(ErrorCode::UnknownStream, format!("no stream {stream:?}")))?;
        let entry = manifest.track(track).ok_or_else(|| {
            NetError::status(ErrorCode::UnknownTrack, format!("no track {track:?} in {stream:?}"))
        })?;
        let path = self.track_file(stream, &dir, entry, file)?;
        let source = FileSource::open(&path).map_err(|e| {
            NetError::status(ErrorCode::Internal, format!("track {track:?} file {file}: {}", e.kind()))
        })?;
        source.read_range(start, len).map_err(|e| match e {
            SourceError::OutOfRange { .. } => NetError::status(ErrorCode::OutOfRange, e.to_string()),
            other => NetError::status(ErrorCode::Internal, format!("track {track:?} file {file}: {other}")),
        })
    }
}

/// The snake_case name serde gives an enum variant (`video`, `freeze`).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(NetError::status(ErrorCode::Internal, format!("worker failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parses(provider: &FolderProvider, dir: &Path) -> u64 {
        let real = std::fs::canonicalize(dir).expect("dir");
        let cache = provider.manifests.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(&real).map_or(0, |c| c.parses)
    }

    fn manifest(file: &str) -> String {
        serde_json::json!({
            "name": "m", "duration_ms": 1000,
            "tracks": [{"name": "t", "kind": "video", "role": "camera", "participant": "p", "segments": [{"file": file, "start_ms": 0}]}],
        })
        .to_string()
    }

    #[tokio::test]
    async fn a_read_parses_the_manifest_once_and_a_replaced_one_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("m");
        std::fs::create_dir(&dir).expect("dir");
        std::fs::write(dir.join("a.bin"), b"first file").expect("a");
        std::fs::write(dir.join("bb.bin"), b"second, longer file").expect("bb");
        std::fs::write(dir.join("meeting.json"), manifest("a.bin")).expect("manifest");
        let provider = FolderProvider::new(root.path()).expect("provider");
        for _ in 0..5 {
            // What the server does per read: resolve, then load.
            let info = provider.stream_info("m".into()).await.expect("info").expect("meeting");
            assert_eq!(info.tracks[0].sizes, vec![10]);
            let bytes = provider.load("m".into(), "t".into(), 0, 0, 5).await.expect("load");
            assert_eq!(&bytes[..], b"first");
        }
        assert_eq!(parses(&provider, &dir), 1, "meeting.json parsed more than once");
        // A replaced manifest (another length) is read again; a replaced track file is served
        // as it is now.
        std::fs::write(dir.join("meeting.json"), manifest("bb.bin")).expect("manifest 2");
        let info = provider.stream_info("m".into()).await.expect("info").expect("meeting");
        assert_eq!(info.tracks[0].sizes, vec![19]);
        std::fs::write(dir.join("bb.bin"), b"SECOND, longer file").expect("bb 2");
        let bytes = provider.load("m".into(), "t".into(), 0, 0, 6).await.expect("load");
        assert_eq!(&bytes[..], b"SECOND");
        assert_eq!(parses(&provider, &dir), 2);
    }

    #[tokio::test]
    async fn a_track_in_two_files_has_a_size_per_file_and_reads_each() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("m");
        std::fs::create_dir(&dir).expect("dir");
        std::fs::write(dir.join("a.bin"), b"first file").expect("a");
        std::fs::write(dir.join("bb.bin"), b"second, longer file").expect("bb");
        let manifest = serde_json::json!({
            "name": "m",
            "tracks": [{"name": "t", "kind": "video", "segments": [
                {"file": "a.bin", "start_ms": 0, "end_ms": 10},
                {"file": "bb.bin", "start_ms": 20, "end_ms": 30},
                {"file": "a.bin", "start_ms": 40, "media_start_ms": 10}]}],
        });
        std::fs::write(dir.join("meeting.json"), manifest.to_string()).expect("manifest");
        let provider = FolderProvider::new(root.path()).expect("provider");
        let info = provider.stream_info("m".into()).await.expect("info").expect("meeting");
        assert_eq!(info.tracks[0].sizes, vec![10, 19]);
        let files: Vec<u32> = info.tracks[0].segments.iter().map(|s| s.file).collect();
        assert_eq!(files, vec![0, 1, 0]);
        let first = provider.load("m".into(), "t".into(), 0, 0, 5).await.expect("file 0");
        let second = provider.load("m".into(), "t".into(), 1, 0, 6).await.expect("file 1");
        assert_eq!((&first[..], &second[..]), (&b"first"[..], &b"second"[..]));
        let none = provider.load("m".into(), "t".into(), 2, 0, 1).await.expect_err("no file 2");
        assert_eq!(none.code(), ErrorCode::OutOfRange);
    }
}
