//! A meeting to play: its tracks (kind, role, participant, spans) and where their bytes come
//! from. A local folder and a stream on a peer give the same [`Meeting`]; everything after
//! opening reads through [`RangeSource`]s, so the stream cannot tell them apart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::timeline::{Span, Timeline};
use super::StreamError;
use crate::manifest::{GapPolicy, Manifest, Role, TrackKind};
use crate::source::{FileSource, RangeSource};
use crate::time::MediaTime;

/// The order a peer sends tracks' bytes in when the link cannot carry them all: the sound and
/// the captions (small) first, then the frames a picture awaits (up to a seek's target), then
/// the pictures' refills; so a short link costs video, not the meeting, and a seek's pictures
/// do not wait behind refills.
#[cfg(feature = "net")]
fn send_priority(kind: TrackKind) -> crate::net::SendPriority {
    use crate::net::SendPriority;
    match kind {
        TrackKind::Audio | TrackKind::Captions => SendPriority { urgent: 6, routine: 4 },
        TrackKind::Video => SendPriority { urgent: 2, routine: 0 },
    }
}

/// A track of an opened meeting: its manifest entry resolved for playing (its segments
/// placed on one [`Timeline`], its gap policy chosen). The stream, the player and embedders all
/// use this one; [`ManifestTrack`](crate::manifest::ManifestTrack) is the entry as
/// `meeting.json` writes it, and stays on the manifest's side.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackDesc {
    pub name: Arc<str>,
    pub kind: TrackKind,
    pub role: Role,
    pub participant: Option<String>,
    /// Where the track has something to show.
    pub timeline: Timeline,
    pub gap_policy: GapPolicy,
}

/// Opens file `n` of a track (see [`Span::file`]).
type Opener = dyn Fn(&TrackDesc, u32) -> Result<Arc<dyn RangeSource>, StreamError> + Send + Sync;
type Wrapper = dyn Fn(&TrackDesc, Arc<dyn RangeSource>) -> Arc<dyn RangeSource> + Send + Sync;

/// A meeting's tracks and a way to read each one.
#[derive(Clone)]
pub struct Meeting {
    name: String,
    duration: Option<MediaTime>,
    tracks: Vec<TrackDesc>,
    opener: Arc<Opener>,
    wrapper: Option<Arc<Wrapper>>,
}

impl fmt::Debug for Meeting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meeting")
            .field("name", &self.name)
            .field("duration", &self.duration)
            .field("tracks", &self.tracks)
            .finish()
    }
}

impl Meeting {
    /// A meeting folder: `meeting.json` and the files it names.
    pub fn from_folder(folder: impl AsRef<Path>) -> Result<Meeting, StreamError> {
        let folder: PathBuf = folder.as_ref().to_path_buf();
        let manifest = Manifest::load(&folder)?;
        let files: Vec<(Arc<str>, Vec<PathBuf>)> = manifest
            .tracks
            .iter()
            .map(|t| (Arc::from(t.name.as_str()), t.files().iter().map(|f| folder.join(f)).collect()))
            .collect();
        let tracks = manifest
            .tracks
            .iter()
            .map(|t| TrackDesc {
                name: Arc::from(t.name.as_str()),
                kind: t.kind,
                role: t.role.clone(),
                participant: t.participant.clone(),
                timeline: Timeline::new(t.segments.iter().map(|s| Span::from_segment(t, s)).collect()),
                gap_policy: t.gap_policy.unwrap_or_default(),
            })
            .collect();
        let opener = move |desc: &TrackDesc, file: u32| -> Result<Arc<dyn RangeSource>, StreamError> {
            let paths = files
                .iter()
                .find(|(name, _)| *name == desc.name)
                .map(|(_, paths)| paths)
                .ok_or_else(|| StreamError::UnknownTrack(desc.name.to_string()))?;
            let path = paths.get(file as usize).ok_or_else(|| StreamError::Open {
                track: desc.name.to_string(),
                message: format!("it has {} file(s), no file {file}", paths.len()),
            })?;
            let source = FileSource::open(path).map_err(|e| StreamError::Open {
                track: desc.name.to_string(),
                message: format!("{}: {e}", path.display()),
            })?;
            Ok(Arc::new(source))
        };
        Ok(Meeting {
            name: manifest.name.clone(),
            duration: manifest.duration_ms.map(|ms| MediaTime::from_millis(ms as i64)),
            tracks,
            opener: Arc::new(opener),
            wrapper: None,
        })
    }

    /// A stream already described by a peer (`Client::get`), read through `client`.
    #[cfg(feature = "net")]
    pub fn from_peer_stream(
        client: crate::net::Client,
        peer: crate::net::PeerAddr,
        info: crate::net::StreamInfo,
    ) -> Result<Meeting, StreamError> {
        let mut tracks = Vec::with_capacity(info.tracks.len());
        for t in &info.tracks {
            let spans = t
                .segments
                .iter()
                .map(|s| Span {
                    start: MediaTime::from_millis(s.start_ms as i64),
                    end: s.end_ms.map(|ms| MediaTime::from_millis(ms as i64)),
                    media_start: MediaTime::from_millis(s.media_start_ms as i64),
                    file: s.file,
                })
                .collect();
            tracks.push(TrackDesc {
                name: Arc::from(t.name.as_str()),
                kind: t.kind,
                role: t.role.clone(),
                participant: t.participant.clone(),
                timeline: Timeline::new(spans),
                gap_policy: t.gap_policy.unwrap_or_default(),
            });
        }
        let duration = info.duration_ms.map(|ms| MediaTime::from_millis(ms as i64));
        let name = info.name.clone();
        let opener = move |desc: &TrackDesc, file: u32| -> Result<Arc<dyn RangeSource>, StreamError> {
            let track = crate::net::RemoteTrack::file(client.clone(), peer.clone(), &info, &desc.name, file)
                .map_err(|e| StreamError::Open { track: desc.name.to_string(), message: e.to_string() })?;
            Ok(Arc::new(track.with_priority(send_priority(desc.kind))))
        };
        Ok(Meeting { name, duration, tracks, opener: Arc::new(opener), wrapper: None })
    }

    /// `stream` on `peer`: one `stream.get`, then range reads as the player needs them.
    #[cfg(feature = "net")]
    pub async fn from_peer(
        client: &crate::net::Client,
        peer: &crate::net::PeerAddr,
        stream: &str,
    ) -> Result<Meeting, StreamError> {
        let info = client.get(peer, stream).await?;
        Meeting::from_peer_stream(client.clone(), peer.clone(), info)
    }

    /// Passes every track's source (each file's, for a track in several) through `wrap` when
    /// it is opened: to count, throttle or cache reads.
    pub fn wrap_sources(
        mut self,
        wrap: impl Fn(&TrackDesc, Arc<dyn RangeSource>) -> Arc<dyn RangeSource> + Send + Sync + 'static,
    ) -> Meeting {
        self.wrapper = Some(Arc::new(wrap));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The meeting's length: the manifest's, else the end of the last closed span.
    pub fn duration(&self) -> Option<MediaTime> {
        self.duration.or_else(|| {
            self.tracks.iter().flat_map(|t| t.timeline.spans().iter().filter_map(|s| s.end)).max()
        })
    }

    pub fn tracks(&self) -> &[TrackDesc] {
        &self.tracks
    }

    pub fn track(&self, name: &str) -> Option<&TrackDesc> {
        self.tracks.iter().find(|t| &*t.name == name)
    }

    /// Opens the byte source of file `file` of one track (see [`Span::file`]).
    pub(crate) fn open_source(
        &self,
        desc: &TrackDesc,
        file: u32,
    ) -> Result<Arc<dyn RangeSource>, StreamError> {
        let source = (self.opener)(desc, file)?;
        Ok(match &self.wrapper {
            Some(wrap) => wrap(desc, source),
            None => source,
        })
    }
}
