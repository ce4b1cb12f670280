//! Test meetings written to a scratch folder from the committed fixtures: a `meeting.json`
//! placing files (or cuts of them) by their segments, for tests of segment edges.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::{ffmpeg, fixture_meeting};

/// Writes `<dir>/meeting.json` naming the meeting `name` (60 s long) with `tracks`.
fn write_manifest(dir: &Path, name: &str, tracks: Vec<Value>) -> Result<()> {
    let manifest = json!({"name": name, "duration_ms": 60000, "tracks": tracks});
    std::fs::write(dir.join("meeting.json"), serde_json::to_string_pretty(&manifest)?)?;
    Ok(())
}

/// `<root>/paused`: the fixture meeting's `tracks` (in that order; of `alice_video`,
/// `bob_video`, `mixed_audio` and `voice`), each camera with a recording pause cut out of its
/// file: two adjacent segments of one file, the second from a media time between keyframes
/// (bob's VP8 in WebM, alice's H.264 with B-frames in MP4, with an edit list), so the frames it
/// decodes from its keyframe fall in the first one's time. `mixed_audio` is one segment;
/// `voice` (the WebRTC fixture's Opus) has a pause cut out at 5.998 s: its first segment ends
/// 2 ms before the click of media 6 s (inside the packet that ends it), and its second starts
/// from media 9.05 s, so the audio an Opus decoder warms up on before it (80 ms) holds the click
/// of media 9 s; both clicks were recorded during the pause.
pub fn paused_meeting(root: &Path, tracks: &[&str]) -> Result<PathBuf> {
    let src = fixture_meeting("meeting");
    let dir = root.join("paused");
    std::fs::create_dir_all(&dir)?;
    let mut entries = Vec::with_capacity(tracks.len());
    for &track in tracks {
        let (file, entry) = match track {
            "alice_video" => (
                "alice_video.mp4",
                json!({"name": "alice_video", "kind": "video", "role": "camera", "participant": "alice", "segments": [
                    {"file": "alice_video.mp4", "start_ms": 0, "end_ms": 6000},
                    {"file": "alice_video.mp4", "start_ms": 6000, "media_start_ms": 9000}]}),
            ),
            "bob_video" => (
                "bob_video.webm",
                json!({"name": "bob_video", "kind": "video", "role": "camera", "participant": "bob", "segments": [
                    {"file": "bob_video.webm", "start_ms": 5000, "end_ms": 8000},
                    {"file": "bob_video.webm", "start_ms": 8000, "media_start_ms": 10000}]}),
            ),
            "mixed_audio" => (
                "mixed_audio.ogg",
                json!({"name": "mixed_audio", "kind": "audio", "role": "mixed_audio", "segments": [
                    {"file": "mixed_audio.ogg", "start_ms": 0}]}),
            ),
            "voice" => (
                "voice.opus",
                json!({"name": "voice", "kind": "audio", "role": "mixed_audio", "segments": [
                    {"file": "voice.opus", "start_ms": 0, "end_ms": 5998},
                    {"file": "voice.opus", "start_ms": 5998, "media_start_ms": 9050}]}),
            ),
            other => bail!("the paused meeting has no track {other:?}"),
        };
        let from = match track {
            "voice" => fixture_meeting("meeting-webrtc").join("mixed_audio.opus"),
            _ => src.join(file),
        };
        std::fs::copy(from, dir.join(file))?;
        entries.push(entry);
    }
    write_manifest(&dir, "paused", entries)?;
    Ok(dir)
}

/// `<root>/split`: a meeting whose camera is in two files (a camera stopped and started
/// again) and whose mixed audio is in two files (a recording pause), cut from the committed
/// fixtures with ffmpeg: `meeting.json` places each file by its own segment.
pub fn split_meeting(root: &Path) -> Result<PathBuf> {
    let src = fixture_meeting("meeting");
    let dir = root.join("split");
    std::fs::create_dir_all(&dir)?;
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let bob = s(&src.join("bob_video.webm"));
    ffmpeg(&["-i", &bob, "-t", "20", "-c", "copy", &s(&dir.join("bob_1.webm"))])?;
    ffmpeg(&["-ss", "24", "-i", &bob, "-c", "copy", &s(&dir.join("bob_2.webm"))])?;
    let audio = s(&fixture_meeting("meeting-webrtc").join("mixed_audio.opus"));
    ffmpeg(&["-i", &audio, "-t", "9", "-c", "copy", "-f", "ogg", &s(&dir.join("voice_1.opus"))])?;
    ffmpeg(&["-ss", "11", "-i", &audio, "-c", "copy", "-f", "ogg", &s(&dir.join("voice_2.opus"))])?;
    let tracks = vec![
        json!({"name": "bob_video", "kind": "video", "role": "camera", "participant": "bob", "segments": [
            {"file": "bob_1.webm", "start_ms": 5000, "end_ms": 19000},
            {"file": "bob_2.webm", "start_ms": 27000, "end_ms": 45000}]}),
        json!({"name": "mixed_audio", "kind": "audio", "role": "mixed_audio", "segments": [
            {"file": "voice_1.opus", "start_ms": 0, "end_ms": 8500},
            {"file": "voice_2.opus", "start_ms": 33000}]}),
    ];
    write_manifest(&dir, "split", tracks)?;
    Ok(dir)
}
