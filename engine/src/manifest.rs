//! `meeting.json`: the manifest a recording folder carries (DESIGN.md section 4).
//!
//! ```json
//! { "name": "standup", "duration_ms": 60000,
//!   "tracks": [ { "name": "bob_video", "kind": "video", "role": "camera", "participant": "bob",
//!                 "segments": [ { "file": "bob_video.webm", "start_ms": 5000, "end_ms": 50000 } ],
//!                 "gap_policy": "hide" } ] }
//! ```
//!
//! A track is placed on the meeting timeline by its segments, each naming the file that holds
//! its stretch of media. A recorder that pauses (a screen share stopped and started again) may
//! write one file whose media time runs on, each segment saying where a stretch of it lands; or
//! one file per stretch (a BigBlueButton camera that stops and starts, a voice recording cut by
//! a recording pause), each segment naming its own. Segments naming the same file share it (one
//! byte stream, one index); the track's files are numbered in the order its segments first name
//! them ([`ManifestTrack::files`]), which is how the wire and the stream layer refer to them.
//! The files of one track carry the same codec.

use std::collections::HashSet;
use std::path::Path;

use crate::time::MediaTime;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub name: String,
    /// Length of the meeting timeline; derived from the tracks when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub tracks: Vec<ManifestTrack>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Video,
    Audio,
    Captions,
}

impl TrackKind {
    /// As the manifest and the wire write it.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Video => "video",
            TrackKind::Audio => "audio",
            TrackKind::Captions => "captions",
        }
    }
}

impl std::fmt::Display for TrackKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What to show while a track has nothing on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapPolicy {
    #[default]
    Hide,
    Black,
    Freeze,
    Silence,
}

/// What a track carries, for apps to lay out by. The manifest documents it as free text: the
/// roles tandem knows are named, any other is kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Role {
    Camera,
    Screen,
    MixedAudio,
    /// One participant's own microphone.
    Microphone,
    /// A participant who dialed in by phone.
    Dialin,
    Captions,
    /// Written as the empty string, or absent.
    #[default]
    Unspecified,
    Other(String),
}

impl Role {
    pub fn as_str(&self) -> &str {
        match self {
            Role::Camera => "camera",
            Role::Screen => "screen",
            Role::MixedAudio => "mixed_audio",
            Role::Microphone => "microphone",
            Role::Dialin => "dialin",
            Role::Captions => "captions",
            Role::Unspecified => "",
            Role::Other(other) => other,
        }
    }
}

impl From<String> for Role {
    fn from(text: String) -> Role {
        match text.as_str() {
            "camera" => Role::Camera,
            "screen" => Role::Screen,
            "mixed_audio" => Role::MixedAudio,
            "microphone" => Role::Microphone,
            "dialin" => Role::Dialin,
            "captions" => Role::Captions,
            "" => Role::Unspecified,
            _ => Role::Other(text),
        }
    }
}

impl From<&str> for Role {
    fn from(text: &str) -> Role {
        Role::from(text.to_string())
    }
}

impl From<Role> for String {
    fn from(role: Role) -> String {
        match role {
            Role::Other(text) => text,
            known => known.as_str().to_string(),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestTrack {
    pub name: String,
    pub kind: TrackKind,
    /// `camera`, `screen`, `mixed_audio`, `captions`, ...: free text for apps to lay out by.
    #[serde(default)]
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    pub segments: Vec<Segment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_policy: Option<GapPolicy>,
}

/// A stretch of a track's media placed on the meeting timeline:
/// `media_time = meeting_time - start_ms + media_start_ms`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// File name relative to the meeting folder.
    pub file: String,
    pub start_ms: u64,
    #[serde(default)]
    pub media_start_ms: u64,
    /// Where the segment ends on the timeline; open (to the end of its media) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
}

impl Segment {
    pub fn start(&self) -> MediaTime {
        MediaTime::from_millis(self.start_ms as i64)
    }
    pub fn end(&self) -> Option<MediaTime> {
        self.end_ms.map(|ms| MediaTime::from_millis(ms as i64))
    }
    /// Media time shown at meeting time `t`, if `t` lies within the segment.
    pub fn media_time(&self, t: MediaTime) -> Option<MediaTime> {
        if t < self.start() || self.end().is_some_and(|end| t >= end) {
            return None;
        }
        Some(
            t.saturating_sub(self.start()).saturating_add(MediaTime::from_millis(self.media_start_ms as i64)),
        )
    }
}

impl ManifestTrack {
    /// The first file of this track (its only one, for a track in one file).
    pub fn file(&self) -> &str {
        self.segments.first().map(|s| s.file.as_str()).unwrap_or("")
    }

    /// The track's files, each once, in the order its segments first name them: file number
    /// `n` on the wire and in [`crate::stream::Span::file`] is `files()[n]`.
    pub fn files(&self) -> Vec<&str> {
        let mut files: Vec<&str> = Vec::new();
        for segment in &self.segments {
            if !files.contains(&segment.file.as_str()) {
                files.push(&segment.file);
            }
        }
        files
    }

    /// The number of the file segment `segment` names (see [`ManifestTrack::files`]).
    pub fn file_number(&self, segment: &Segment) -> u32 {
        let position = self.files().iter().position(|f| *f == segment.file).unwrap_or(0);
        u32::try_from(position).unwrap_or(u32::MAX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("meeting.json is not valid: {0}")]
    Json(String),
    #[error("track {track:?}: {reason}")]
    Track { track: String, reason: String },
    #[error("meeting.json: {0}")]
    Invalid(String),
}

impl Manifest {
    pub const FILE_NAME: &'static str = "meeting.json";

    /// Reads and validates `<folder>/meeting.json`.
    pub fn load(folder: &Path) -> Result<Manifest, ManifestError> {
        let path = folder.join(Self::FILE_NAME);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ManifestError::Read { path: path.display().to_string(), message: e.to_string() })?;
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|e| ManifestError::Json(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn track(&self, name: &str) -> Option<&ManifestTrack> {
        self.tracks.iter().find(|t| t.name == name)
    }

    /// Checks names, files and segment order; what a server relies on before exposing a track.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if !is_safe_name(&self.name) {
            return Err(ManifestError::Invalid(format!(
                "meeting name {:?} must be 1-128 of [A-Za-z0-9_.-]",
                self.name
            )));
        }
        let mut names = HashSet::new();
        for track in &self.tracks {
            let fail = |reason: String| ManifestError::Track { track: track.name.clone(), reason };
            if !is_safe_name(&track.name) {
                return Err(fail("track names must be 1-128 of [A-Za-z0-9_.-]".into()));
            }
            if !names.insert(track.name.as_str()) {
                return Err(fail("appears twice".into()));
            }
            if track.segments.is_empty() {
                return Err(fail("has no segments".into()));
            }
            let mut previous_end: Option<u64> = None;
            for segment in &track.segments {
                if !is_relative_file(&segment.file) {
                    return Err(fail(format!(
                        "file {:?} must be a plain relative path inside the meeting folder",
                        segment.file
                    )));
                }
                if let Some(end) = segment.end_ms {
                    if end <= segment.start_ms {
                        return Err(fail(format!(
                            "segment ends ({end} ms) before it starts ({} ms)",
                            segment.start_ms
                        )));
                    }
                }
                match previous_end {
                    Some(prev) if segment.start_ms < prev => {
                        return Err(fail(format!(
                            "segment at {} ms overlaps the one before it",
                            segment.start_ms
                        )));
                    }
                    _ => {}
                }
                previous_end = Some(segment.end_ms.unwrap_or(u64::MAX));
            }
        }
        Ok(())
    }
}

/// Stream and track names: what may travel on the wire and name a folder. No separators, no
/// `..`, nothing a shell or a path join could misread.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_relative_file(file: &str) -> bool {
    let path = Path::new(file);
    !file.is_empty()
        && path.is_relative()
        && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"name":"m1","tracks":[
        {"name":"screen","kind":"video","role":"screen","segments":[
            {"file":"s.mkv","start_ms":10000,"end_ms":25000},
            {"file":"s.mkv","start_ms":32000,"media_start_ms":15000,"end_ms":45000}]}]}"#;

    #[test]
    fn maps_meeting_time_to_media_time_per_segment() {
        let m = Manifest::from_json(GOOD).expect("valid");
        let segs = &m.tracks[0].segments;
        assert_eq!(segs[0].media_time(MediaTime::from_millis(12_000)), Some(MediaTime::from_millis(2_000)));
        assert_eq!(segs[0].media_time(MediaTime::from_millis(25_000)), None);
        assert_eq!(segs[1].media_time(MediaTime::from_millis(33_000)), Some(MediaTime::from_millis(16_000)));
        assert_eq!(segs[1].media_time(MediaTime::from_millis(31_999)), None);
    }

    #[test]
    fn refuses_escaping_files_duplicates_and_overlaps() {
        for bad in [
            GOOD.replace("s.mkv", "../s.mkv"),
            GOOD.replace("s.mkv", "/etc/passwd"),
            GOOD.replace("\"name\":\"screen\"", "\"name\":\"a/b\""),
            GOOD.replace("32000", "20000"),
            GOOD.replace("\"end_ms\":25000", "\"end_ms\":5000"),
        ] {
            assert!(Manifest::from_json(&bad).is_err(), "accepted {bad}");
        }
        assert!(matches!(Manifest::from_json("{"), Err(ManifestError::Json(_))));
    }

    #[test]
    fn a_track_may_span_several_files_numbered_by_first_use() {
        let text = GOOD.replacen(
            "\"file\":\"s.mkv\",\"start_ms\":32000",
            "\"file\":\"s2.mkv\",\"start_ms\":32000",
            1,
        );
        let m = Manifest::from_json(&text).expect("several files");
        let track = &m.tracks[0];
        assert_eq!(track.files(), vec!["s.mkv", "s2.mkv"]);
        assert_eq!(track.file_number(&track.segments[0]), 0);
        assert_eq!(track.file_number(&track.segments[1]), 1);
        assert!(Manifest::from_json(&text.replace("s2.mkv", "../s2.mkv")).is_err());
    }
}
