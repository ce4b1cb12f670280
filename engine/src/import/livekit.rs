//! LiveKit track egress: one file per published track, an egress manifest beside each, and
//! the `egress_ended` webhook bodies an app kept.
//!
//! Taken from LiveKit's sources:
//! - livekit/egress `pkg/types/types.go` (`TrackOutputTypes`): Opus (and PCMU/PCMA) -> OGG,
//!   H.264 -> MP4, VP8 and VP9 -> WebM.
//! - livekit/egress `pkg/config/output_file.go` (`getFilenameInfo`, `updateFilepath`) and
//!   `pkg/pipeline/source/track_worker.go`: files named by the request's `filepath` template
//!   (`{track_id}`, `{track_type}`, `{track_source}`, `{publisher_identity}`, `{time}`, ...)
//!   or `<identifier>-<time>.<ext>` by default.
//! - livekit/egress `pkg/config/manifest.go` (`Manifest`) and `pkg/pipeline/controller.go`
//!   (`uploadManifest`): `<egress_id>.json` with snake_case fields `egress_id`, `room_id`,
//!   `room_name`, `started_at` / `ended_at` (the EgressInfo's, Unix ns: `started_at` is when
//!   the request started, before the media), `publisher_identity`, `track_id`, `track_kind`
//!   (`audio` | `video`), `track_source` (`camera`, `microphone`, `screen_share`,
//!   `screen_share_audio`: lower-cased protocol enum), `files[] { filename, location }`.
//! - livekit/protocol `livekit_egress.proto` (`EgressInfo`, `FileInfo`, `TrackEgressRequest`)
//!   and `livekit_webhook.proto` (`WebhookEvent`): the webhook body
//!   `{"event": "egress_ended", "egressInfo": {...}}`; EgressInfo `egressId`, `roomName`,
//!   `track { trackId, roomName }`, `fileResults[] { filename, startedAt, endedAt, duration,
//!   size, location }`, times in Unix ns. protojson writes 64-bit integers as strings and
//!   camelCase names; both spellings (and plain numbers) are accepted.
//!   `controller.go` (`updateStartTime`) sets a file's `startedAt` when its media starts:
//!   files are placed by it. Without an EgressInfo a file is placed by its manifest's
//!   `started_at`, and the plan's notes say so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{assemble, Found, ImportError, Layout, Placed, Plan};
use crate::manifest::{Role, TrackKind};

/// Largest JSON file read.
const MAX_JSON: u64 = 16 * 1024 * 1024;

/// A field of `object` under either spelling.
fn get<'a>(object: &'a Value, snake: &str, camel: &str) -> Option<&'a Value> {
    object.get(snake).or_else(|| object.get(camel)).filter(|v| !v.is_null())
}

fn text(object: &Value, snake: &str, camel: &str) -> Option<String> {
    get(object, snake, camel).and_then(Value::as_str).map(str::to_string).filter(|s| !s.is_empty())
}

/// A Unix-ns time as protojson (a string) or Go's encoding/json (a number) writes it; `None`
/// when absent or zero.
fn nanos(file: &Path, object: &Value, snake: &str, camel: &str) -> Result<Option<i128>, ImportError> {
    let Some(value) = get(object, snake, camel) else { return Ok(None) };
    let parsed = match value {
        Value::Number(n) => n.as_i64().map(i128::from),
        Value::String(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    };
    match parsed {
        Some(0) => Ok(None),
        Some(ns) => Ok(Some(ns)),
        None => Err(ImportError::Field {
            file: file.to_path_buf(),
            field: camel.to_string(),
            message: format!("{value} is not a time in Unix nanoseconds"),
        }),
    }
}

/// An egress manifest (`<egress_id>.json`).
#[derive(Debug, Clone)]
struct EgressManifest {
    path: PathBuf,
    egress_id: String,
    started_at: Option<i128>,
    ended_at: Option<i128>,
    identity: Option<String>,
    track_id: Option<String>,
    kind: Option<String>,
    source: Option<String>,
    files: Vec<String>,
}

/// One `fileResults` entry of an EgressInfo.
#[derive(Debug, Clone)]
struct FileResult {
    filename: String,
    started_at: Option<i128>,
    ended_at: Option<i128>,
}

#[derive(Debug, Clone)]
struct EgressInfo {
    path: PathBuf,
    track_id: Option<String>,
    files: Vec<FileResult>,
}

enum Document {
    Manifest(EgressManifest),
    Info(String, EgressInfo),
    Other,
}

fn read_json(path: &Path) -> Result<Value, ImportError> {
    let size = std::fs::metadata(path).map_err(super::io_error(path))?.len();
    if size > MAX_JSON {
        return Err(ImportError::Io {
            path: path.to_path_buf(),
            message: format!("{size} bytes: too large"),
        });
    }
    let bytes = std::fs::read(path).map_err(super::io_error(path))?;
    serde_json::from_slice(&bytes).map_err(|e| ImportError::Json {
        file: path.to_path_buf(),
        message: format!("line {} column {}: {e}", e.line(), e.column()),
    })
}

fn classify(path: &Path, value: &Value) -> Result<Document, ImportError> {
    // A webhook body wraps the EgressInfo.
    let info = get(value, "egress_info", "egressInfo").unwrap_or(value);
    if let Some(results) = get(info, "file_results", "fileResults").and_then(Value::as_array) {
        let egress_id = text(info, "egress_id", "egressId").ok_or_else(|| ImportError::Field {
            file: path.to_path_buf(),
            field: "egressId".into(),
            message: "missing".into(),
        })?;
        let track = get(info, "track", "track");
        let mut files = Vec::new();
        for result in results {
            files.push(FileResult {
                filename: text(result, "filename", "filename").unwrap_or_default(),
                started_at: nanos(path, result, "started_at", "startedAt")?,
                ended_at: nanos(path, result, "ended_at", "endedAt")?,
            });
        }
        let track_id = track.and_then(|t| text(t, "track_id", "trackId"));
        return Ok(Document::Info(egress_id, EgressInfo { path: path.to_path_buf(), track_id, files }));
    }
    if let (Some(egress_id), Some(files)) =
        (text(value, "egress_id", "egressId"), get(value, "files", "files").and_then(Value::as_array))
    {
        return Ok(Document::Manifest(EgressManifest {
            path: path.to_path_buf(),
            egress_id,
            started_at: nanos(path, value, "started_at", "startedAt")?,
            ended_at: nanos(path, value, "ended_at", "endedAt")?,
            identity: text(value, "publisher_identity", "publisherIdentity"),
            track_id: text(value, "track_id", "trackId"),
            kind: text(value, "track_kind", "trackKind"),
            source: text(value, "track_source", "trackSource"),
            files: files.iter().filter_map(|f| text(f, "filename", "filename")).collect(),
        }));
    }
    Ok(Document::Other)
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(super::io_error(dir))? {
        let path = entry.map_err(super::io_error(dir))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `dir` holds egress manifests or EgressInfo JSON.
pub fn looks_like(dir: &Path) -> Result<bool, ImportError> {
    for path in json_files(dir)? {
        if let Ok(value) = read_json(&path) {
            if !matches!(classify(&path, &value), Ok(Document::Other)) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn base(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// What a file holds, from the manifest's kind and source, else its extension.
fn kind_and_role(manifest: Option<&EgressManifest>, file: &Path) -> Option<(TrackKind, Role)> {
    let kind = match manifest.and_then(|m| m.kind.as_deref()).map(str::to_ascii_lowercase).as_deref() {
        Some("audio") => TrackKind::Audio,
        Some("video") => TrackKind::Video,
        _ => match file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("ogg" | "opus" | "mp3") => TrackKind::Audio,
            Some("mp4" | "webm" | "mkv") => TrackKind::Video,
            _ => return None,
        },
    };
    let role = match manifest.and_then(|m| m.source.as_deref()).map(str::to_ascii_lowercase).as_deref() {
        Some("screen_share") => Role::Screen,
        Some("screen_share_audio") => Role::Other("screen_audio".into()),
        Some("microphone") => Role::Microphone,
        Some("camera") => Role::Camera,
        _ if kind == TrackKind::Audio => Role::Microphone,
        _ => Role::Camera,
    };
    Some((kind, role))
}

/// Reads an egress bucket (a folder of track files and their JSON) into a plan.
pub fn plan(dir: &Path) -> Result<Plan, ImportError> {
    let mut manifests = Vec::new();
    let mut infos: HashMap<String, EgressInfo> = HashMap::new();
    for path in json_files(dir)? {
        match classify(&path, &read_json(&path)?)? {
            Document::Manifest(m) => manifests.push(m),
            Document::Info(id, info) => {
                infos.insert(id, info);
            }
            Document::Other => {}
        }
    }
    let mut skipped = Vec::new();
    let mut notes = Vec::new();
    // (manifest, info, file result, local file)
    struct Entry {
        manifest: Option<EgressManifest>,
        started_at: i128,
        ended_at: Option<i128>,
        file: PathBuf,
        track_id: Option<String>,
    }
    let mut entries = Vec::new();
    let local = |name: &str| dir.join(base(name));
    for manifest in &manifests {
        let info = infos.remove(&manifest.egress_id);
        for name in &manifest.files {
            let file = local(name);
            if !file.is_file() {
                return Err(ImportError::Field {
                    file: manifest.path.clone(),
                    field: "files[].filename".into(),
                    message: format!("{name:?}: no such file {}", file.display()),
                });
            }
            let result = info
                .as_ref()
                .and_then(|i| i.files.iter().find(|r| base(&r.filename) == base(name)).or(i.files.first()));
            let (started_at, ended_at) = match result.and_then(|r| r.started_at.map(|s| (s, r.ended_at))) {
                Some(times) => times,
                None => {
                    let Some(started) = manifest.started_at else {
                        return Err(ImportError::Field {
                            file: manifest.path.clone(),
                            field: "started_at".into(),
                            message: "the manifest has no start time and no EgressInfo (egress_ended webhook body) with the file's startedAt is beside it".into(),
                        });
                    };
                    notes.push(format!(
                        "{}: placed by the manifest's started_at (the request's time, up to a second before the media); keep the egress_ended webhook's EgressInfo beside it to place it by the file's startedAt",
                        base(name)
                    ));
                    (started, manifest.ended_at)
                }
            };
            entries.push(Entry {
                manifest: Some(manifest.clone()),
                started_at,
                ended_at,
                file,
                track_id: manifest.track_id.clone(),
            });
        }
    }
    // EgressInfos without a manifest (disable_manifest): their files, named by track id.
    let mut rest: Vec<(String, EgressInfo)> = infos.into_iter().collect();
    rest.sort_by(|a, b| a.1.path.cmp(&b.1.path));
    for (_, info) in rest {
        for result in &info.files {
            let file = local(&result.filename);
            if result.filename.is_empty() || !file.is_file() {
                skipped.push(super::Skipped {
                    what: format!("{} file {:?}", info.path.display(), result.filename),
                    why: "not in the folder".into(),
                });
                continue;
            }
            let Some(started_at) = result.started_at else {
                return Err(ImportError::Field {
                    file: info.path.clone(),
                    field: "fileResults[].startedAt".into(),
                    message: format!("{:?} has no start time", result.filename),
                });
            };
            entries.push(Entry {
                manifest: None,
                started_at,
                ended_at: result.ended_at,
                file,
                track_id: info.track_id.clone(),
            });
        }
    }
    let Some(zero) = entries.iter().map(|e| e.started_at).min() else {
        return Err(ImportError::Empty {
            dir: dir.to_path_buf(),
            why: "no egress file is described by a manifest or an EgressInfo".into(),
        });
    };
    let ms = |ns: i128| u64::try_from((ns - zero) / 1_000_000).unwrap_or(0);
    let mut found = Vec::new();
    let mut participants: Vec<String> = Vec::new();
    for entry in entries {
        let Some((kind, role)) = kind_and_role(entry.manifest.as_ref(), &entry.file) else {
            skipped.push(super::Skipped {
                what: entry.file.display().to_string(),
                why: "neither audio nor video".into(),
            });
            continue;
        };
        let participant = entry.manifest.as_ref().and_then(|m| m.identity.clone()).or(entry.track_id.clone());
        if let Some(p) = &participant {
            if !participants.contains(p) {
                participants.push(p.clone());
            }
        }
        let start_ms = ms(entry.started_at);
        let end_ms = entry.ended_at.map(ms).filter(|&end| end > start_ms);
        found.push(Found {
            participant,
            kind,
            role,
            stretches: vec![Placed { source: entry.file, start_ms, media_start_ms: 0, end_ms }],
        });
    }
    let duration_ms = found.iter().filter_map(|f| f.stretches.last().and_then(|s| s.end_ms)).max();
    Ok(Plan {
        layout: Layout::LiveKitEgress,
        participants,
        tracks: assemble(found),
        skipped,
        notes,
        talking: Vec::new(),
        duration_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_strings_or_numbers_in_either_spelling() {
        let p = Path::new("x.json");
        let v: Value =
            serde_json::json!({"startedAt": "1700000000123456789", "ended_at": 1700000001000000000i64});
        assert_eq!(nanos(p, &v, "started_at", "startedAt").expect("ok"), Some(1_700_000_000_123_456_789));
        assert_eq!(nanos(p, &v, "ended_at", "endedAt").expect("ok"), Some(1_700_000_001_000_000_000));
        let bad: Value = serde_json::json!({"startedAt": "soon"});
        let err = nanos(p, &bad, "started_at", "startedAt").expect_err("bad");
        assert!(err.to_string().contains("startedAt"), "{err}");
    }
}
