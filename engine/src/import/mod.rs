//! Recordings other systems wrote, turned into a meeting folder that `play`, `snapshot`,
//! `export`, `tracks` and `serve` take as it is.
//!
//! ```text
//!  <dir> ──detect──> BigBlueButton raw (events.xml)   ──bbb::plan──┐
//!                    LiveKit track egress (*.json)    ──livekit::plan──> Plan: participants,
//!                                                                  tracks (segments naming
//!                                                                  files), skipped + why
//!  Plan ──write──> <meeting>/ (must not exist): meeting.json and the media, hard-linked where
//!                  the filesystem allows, copied otherwise; built beside it and renamed into
//!                  place, so a failure leaves nothing half-written
//! ```
//!
//! | module    | reads                                                                  |
//! |-----------|------------------------------------------------------------------------|
//! | `bbb`     | a BigBlueButton raw recording (`/var/bigbluebutton/recording/raw/<id>/`) |
//! | `livekit` | LiveKit track egress files, their `<egress_id>.json` manifests, and kept `egress_ended` webhook bodies |
//!
//! Tracks are named `<participant>_camera`, `<participant>_screen`, `<participant>_mic`,
//! `mixed_audio` (`[A-Za-z0-9_.-]`, other characters of a name become `_`), with `_2`, `_3`
//! after a clash. Files of one participant's camera that follow each other (a camera stopped
//! and started again) are one track in several files; overlapping ones are separate tracks.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::manifest::{
    is_safe_name, GapPolicy, Manifest, ManifestError, ManifestTrack, Role, Segment, TrackKind,
};

pub mod bbb;
pub mod livekit;

/// The recording systems the importer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A BigBlueButton raw recording folder (`events.xml`, `video/`, `deskshare/`, `audio/`).
    BigBlueButton,
    /// LiveKit track egress output: one file per track and its egress manifest JSON, with or
    /// without the `egress_ended` webhook's EgressInfo.
    LiveKitEgress,
    /// Files of any other recorder, placed by hand ([`manual`]).
    Manual,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::BigBlueButton => "BigBlueButton raw recording",
            Layout::LiveKitEgress => "LiveKit track egress",
            Layout::Manual => "files placed by hand",
        })
    }
}

/// A stretch of one source file placed on the meeting timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The file as found in the imported folder.
    pub source: PathBuf,
    pub start_ms: u64,
    pub media_start_ms: u64,
    pub end_ms: Option<u64>,
}

/// One media file of a participant (or of the meeting), before files become tracks.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) participant: Option<String>,
    pub(crate) kind: TrackKind,
    pub(crate) role: Role,
    /// The file's stretches on the timeline, in order (several when a recording pause cut it).
    pub(crate) stretches: Vec<Placed>,
}

/// A track of the meeting to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTrack {
    pub name: String,
    pub kind: TrackKind,
    pub role: Role,
    pub participant: Option<String>,
    pub segments: Vec<Placed>,
}

/// Something the importer found and left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub what: String,
    pub why: String,
}

/// Someone talking from `start_ms` to `end_ms` of the meeting timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Talk {
    pub participant: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// What an import found: written by [`write`].
#[derive(Debug, Clone)]
pub struct Plan {
    pub layout: Layout,
    /// Display names, in order of appearance.
    pub participants: Vec<String>,
    pub tracks: Vec<PlannedTrack>,
    pub skipped: Vec<Skipped>,
    /// How things were placed when the input allowed less than the best (a LiveKit file
    /// placed by its request time, say).
    pub notes: Vec<String>,
    /// Who talked when (BigBlueButton's `ParticipantTalkingEvent`): written as a captions
    /// track of role `speakers` when there is any.
    pub talking: Vec<Talk>,
    pub duration_ms: Option<u64>,
}

/// Why an import failed. Every variant names the file, and the line, event or field.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{}: neither a BigBlueButton raw recording (events.xml) nor LiveKit track egress (<egress_id>.json manifests or egress_ended EgressInfo)", dir.display())]
    UnknownLayout { dir: PathBuf },
    #[error("{}:{line}: {message}", file.display())]
    Xml { file: PathBuf, line: usize, message: String },
    #[error("{}:{line}: {event}: {message}", file.display())]
    Event { file: PathBuf, line: usize, event: String, message: String },
    #[error("{}:{line}: {event} refers to {}, which is not in the recording", file.display(), missing.display())]
    MissingFile { file: PathBuf, line: usize, event: String, missing: PathBuf },
    #[error("{}: field {field}: {message}", file.display())]
    Field { file: PathBuf, field: String, message: String },
    #[error("{}: not valid JSON: {message}", file.display())]
    Json { file: PathBuf, message: String },
    #[error("{}: already exists; import writes a new meeting folder", path.display())]
    OutputExists { path: PathBuf },
    #[error("{}: the meeting's name (the folder's name) must be 1-128 of [A-Za-z0-9_.-]", path.display())]
    BadName { path: PathBuf },
    #[error("nothing to import in {}: {why}", dir.display())]
    Empty { dir: PathBuf, why: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |e| ImportError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// Which system wrote `dir`.
pub fn detect(dir: &Path) -> Result<Layout, ImportError> {
    if !dir.is_dir() {
        return Err(ImportError::Io { path: dir.to_path_buf(), message: "not a folder".into() });
    }
    if dir.join(bbb::EVENTS_XML).is_file() {
        return Ok(Layout::BigBlueButton);
    }
    if livekit::looks_like(dir)? {
        return Ok(Layout::LiveKitEgress);
    }
    Err(ImportError::UnknownLayout { dir: dir.to_path_buf() })
}

/// Reads `dir` (whichever layout it is) into a plan.
pub fn plan(dir: &Path) -> Result<Plan, ImportError> {
    match detect(dir)? {
        Layout::BigBlueButton => bbb::plan(dir),
        Layout::LiveKitEgress => livekit::plan(dir),
        // `detect` never answers it: files placed by hand come through `manual`.
        Layout::Manual => Err(ImportError::UnknownLayout { dir: dir.to_path_buf() }),
    }
}

/// Reads `dir` and writes the meeting folder `out` (which must not exist; its name is the
/// meeting's name). Returns the plan and the manifest written.
pub fn import(dir: &Path, out: &Path) -> Result<(Plan, Manifest), ImportError> {
    check_output(out)?;
    let plan = plan(dir)?;
    let manifest = write(&plan, out)?;
    Ok((plan, manifest))
}

fn check_output(out: &Path) -> Result<String, ImportError> {
    if out.symlink_metadata().is_ok() {
        return Err(ImportError::OutputExists { path: out.to_path_buf() });
    }
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !is_safe_name(name) {
        return Err(ImportError::BadName { path: out.to_path_buf() });
    }
    Ok(name.to_string())
}

/// `--track NAME=FILE@OFFSET`: a file of any other recorder, placed by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manual {
    pub name: String,
    pub file: PathBuf,
    /// Where the file's media time 0 lands on the meeting timeline.
    pub offset_ms: u64,
    pub participant: Option<String>,
}

/// A plan from files placed by hand: the kind from each file's own index (video, audio or
/// captions), the role from the kind.
pub fn manual(tracks: &[Manual]) -> Result<Plan, ImportError> {
    let mut planned = Vec::new();
    let mut participants: Vec<String> = Vec::new();
    for t in tracks {
        let source = crate::source::FileSource::open(&t.file).map_err(io_error(&t.file))?;
        let index = crate::index::TrackIndex::open(&t.name, &source).map_err(|e| ImportError::Field {
            file: t.file.clone(),
            field: format!("--track {}", t.name),
            message: e.to_string(),
        })?;
        let codec = &index.info().codec;
        let (kind, role) = if codec.is_video() {
            (TrackKind::Video, Role::Camera)
        } else if matches!(codec, crate::index::Codec::WebVtt | crate::index::Codec::Srt) {
            (TrackKind::Captions, Role::Captions)
        } else {
            (TrackKind::Audio, Role::Microphone)
        };
        if let Some(p) = &t.participant {
            if !participants.contains(p) {
                participants.push(p.clone());
            }
        }
        planned.push(PlannedTrack {
            name: t.name.clone(),
            kind,
            role,
            participant: t.participant.clone(),
            segments: vec![Placed {
                source: t.file.clone(),
                start_ms: t.offset_ms,
                media_start_ms: 0,
                end_ms: None,
            }],
        });
    }
    Ok(Plan {
        layout: Layout::Manual,
        participants,
        tracks: planned,
        skipped: Vec::new(),
        notes: Vec::new(),
        talking: Vec::new(),
        duration_ms: None,
    })
}

/// A participant's name as it may appear in a track name.
pub fn name_part(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') { c } else { '_' };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    let out = out.trim_matches(|c| c == '_' || c == '.').to_string();
    let out: String = out.chars().take(100).collect();
    if out.is_empty() {
        "participant".into()
    } else {
        out
    }
}

fn suffix(role: &Role) -> &str {
    match role {
        Role::Camera => "camera",
        Role::Screen => "screen",
        Role::Microphone => "mic",
        Role::MixedAudio => "mixed_audio",
        other => other.as_str(),
    }
}

/// Files become tracks: one participant's files of one role that follow each other share a
/// track; names follow the module's rules.
pub(crate) fn assemble(mut found: Vec<Found>) -> Vec<PlannedTrack> {
    found.retain(|f| !f.stretches.is_empty());
    found.sort_by_key(|f| f.stretches[0].start_ms);
    let mut tracks: Vec<PlannedTrack> = Vec::new();
    for file in found {
        let start = file.stretches[0].start_ms;
        let fits = tracks.iter_mut().find(|t| {
            t.participant == file.participant
                && t.role == file.role
                && t.kind == file.kind
                && t.segments.last().is_some_and(|s| s.end_ms.is_some_and(|end| end <= start))
        });
        match fits {
            Some(track) => track.segments.extend(file.stretches),
            None => tracks.push(PlannedTrack {
                name: String::new(),
                kind: file.kind,
                role: file.role,
                participant: file.participant,
                segments: file.stretches,
            }),
        }
    }
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for track in &mut tracks {
        let base = match (&track.participant, &track.role) {
            (_, Role::MixedAudio) | (None, _) => suffix(&track.role).to_string(),
            (Some(p), role) => format!("{}_{}", name_part(p), suffix(role)),
        };
        let mut name = base.clone();
        let mut n = 2;
        while taken.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        taken.insert(name.clone());
        track.name = name;
    }
    tracks
}

/// Writes `plan` as the meeting folder `out` (which must not exist): built in a sibling
/// folder and renamed into place.
pub fn write(plan: &Plan, out: &Path) -> Result<Manifest, ImportError> {
    let name = check_output(out)?;
    if plan.tracks.is_empty() {
        return Err(ImportError::Empty {
            dir: out.to_path_buf(),
            why: "no media file could be placed".into(),
        });
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = parent.join(format!(".{name}.importing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_error(&staging))?;
    let written = write_into(plan, &name, &staging).and_then(|manifest| {
        std::fs::rename(&staging, out).map_err(io_error(out))?;
        Ok(manifest)
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written
}

fn write_into(plan: &Plan, name: &str, staging: &Path) -> Result<Manifest, ImportError> {
    let mut tracks = Vec::new();
    for track in &plan.tracks {
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        let mut segments = Vec::new();
        for placed in &track.segments {
            let file = match files.iter().find(|(source, _)| *source == placed.source) {
                Some((_, file)) => file.clone(),
                None => {
                    let ext = placed.source.extension().and_then(|e| e.to_str()).unwrap_or("bin");
                    let ext: String = ext.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
                    let file = match files.len() {
                        0 => format!("{}.{ext}", track.name),
                        n => format!("{}-{}.{ext}", track.name, n + 1),
                    };
                    link_or_copy(&placed.source, &staging.join(&file))?;
                    files.push((placed.source.clone(), file.clone()));
                    file
                }
            };
            segments.push(Segment {
                file,
                start_ms: placed.start_ms,
                media_start_ms: placed.media_start_ms,
                end_ms: placed.end_ms,
            });
        }
        tracks.push(ManifestTrack {
            name: track.name.clone(),
            kind: track.kind,
            role: track.role.clone(),
            participant: track.participant.clone(),
            segments,
            gap_policy: Some(match track.kind {
                TrackKind::Audio => GapPolicy::Silence,
                _ => GapPolicy::Hide,
            }),
        });
    }
    if !plan.talking.is_empty() {
        let file = "speakers.vtt".to_string();
        std::fs::write(staging.join(&file), speakers_vtt(&plan.talking)).map_err(io_error(staging))?;
        let mut name = "speakers".to_string();
        while tracks.iter().any(|t| t.name == name) {
            name.push('_');
        }
        tracks.push(ManifestTrack {
            name,
            kind: TrackKind::Captions,
            role: Role::Other("speakers".into()),
            participant: None,
            segments: vec![Segment { file, start_ms: 0, media_start_ms: 0, end_ms: None }],
            gap_policy: None,
        });
    }
    let manifest = Manifest { name: name.to_string(), duration_ms: plan.duration_ms, tracks };
    manifest.validate()?;
    let path = staging.join(Manifest::FILE_NAME);
    std::fs::write(&path, manifest.to_json_pretty()).map_err(io_error(&path))?;
    Ok(manifest)
}

/// A hard link where the filesystem allows, a copy otherwise.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), ImportError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map_err(io_error(from))?;
    Ok(())
}

/// Who talks when, as WebVTT cues.
fn speakers_vtt(talking: &[Talk]) -> String {
    let stamp = |ms: u64| {
        format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
    };
    let mut talking = talking.to_vec();
    talking.sort_by_key(|t| t.start_ms);
    let mut out = String::from("WEBVTT\n\n");
    for talk in talking.iter().filter(|t| t.end_ms > t.start_ms) {
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            stamp(talk.start_ms),
            stamp(talk.end_ms),
            talk.participant
        ));
    }
    out
}

/// The recording's media files, numbered as a person reads them: `0:05.000-0:20.000`.
pub fn span_text(placed: &Placed) -> String {
    let t = |ms: u64| format!("{}:{:02}.{:03}", ms / 60_000, ms / 1000 % 60, ms % 1000);
    match placed.end_ms {
        Some(end) => format!("{}-{}", t(placed.start_ms), t(end)),
        None => format!("{}-", t(placed.start_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(p: &str, role: Role, spans: &[(u64, u64)]) -> Found {
        Found {
            participant: Some(p.into()),
            kind: TrackKind::Video,
            role,
            stretches: spans
                .iter()
                .map(|&(s, e)| Placed {
                    source: PathBuf::from(format!("{p}-{s}.webm")),
                    start_ms: s,
                    media_start_ms: 0,
                    end_ms: Some(e),
                })
                .collect(),
        }
    }

    #[test]
    fn files_that_follow_share_a_track_and_overlaps_and_clashes_get_numbers() {
        let tracks = assemble(vec![
            found("Ann Lee", Role::Camera, &[(0, 10)]),
            found("Ann Lee", Role::Camera, &[(20, 30)]),
            found("Ann Lee", Role::Camera, &[(25, 40)]),
            found("Ann/Lee", Role::Camera, &[(50, 60)]),
            found("Bob", Role::Screen, &[(5, 15)]),
        ]);
        let names: Vec<(&str, usize)> = tracks.iter().map(|t| (t.name.as_str(), t.segments.len())).collect();
        assert_eq!(
            names,
            vec![("Ann_Lee_camera", 2), ("Bob_screen", 1), ("Ann_Lee_camera_2", 1), ("Ann_Lee_camera_3", 1)]
        );
        assert_eq!(name_part("  ?? "), "participant");
        assert_eq!(name_part("José María"), "Jos_Mar_a");
    }
}
