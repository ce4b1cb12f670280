//! The committed meetings are what they claim to be, judged from decoded output alone: every
//! video frame's stamp equals the meeting time its container PTS maps to through the manifest,
//! every frame ffprobe counts is decoded, every whole second of audio has its click, and the
//! captions sit inside the meeting.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tandem::manifest::{Manifest, ManifestTrack, TrackKind};
use tandem_fixtures::{audio, decode, stamp};
use tandem_tests::{ffprobe_packets, fixture_meeting};

fn meeting(name: &str) -> Result<(std::path::PathBuf, Manifest)> {
    let dir = fixture_meeting(name);
    let manifest = Manifest::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
    Ok((dir, manifest))
}

/// Meeting time (ms) of media time `media_ms` through the track's segments.
fn to_meeting_ms(track: &ManifestTrack, media_ms: f64) -> Option<f64> {
    track.segments.iter().find_map(|s| {
        let len = s.end_ms.map_or(f64::INFINITY, |e| (e - s.start_ms) as f64);
        let from = s.media_start_ms as f64;
        // Half a millisecond of slack: containers round PTS to their timescale.
        (media_ms >= from - 0.5 && media_ms < from + len - 0.5).then_some(media_ms - from + s.start_ms as f64)
    })
}

fn check_video(dir: &Path, track: &ManifestTrack) -> Result<usize> {
    let path = dir.join(track.file());
    let mut problems = Vec::new();
    let mut decoded = 0usize;
    decode::for_each_video_frame(&path, |frame| {
        decoded += 1;
        let pts_ms = frame.pts.nseconds() as f64 / 1e6;
        let stamp = stamp::read_stamp(&frame.luma, frame.width, frame.width, frame.height);
        let expected = to_meeting_ms(track, pts_ms);
        match (stamp, expected) {
            (Some(s), Some(e)) if (f64::from(s) - e).abs() <= 1.0 => {}
            _ if problems.len() < 10 => problems
                .push(format!("frame at pts {pts_ms:.3} ms: stamp {stamp:?}, meeting time {expected:?}")),
            _ => {}
        }
    })?;
    ensure!(problems.is_empty(), "{}: {}", track.name, problems.join("; "));
    let packets = ffprobe_packets(&path)?.len();
    ensure!(decoded == packets, "{}: decoded {decoded} frames, ffprobe counts {packets} packets", track.name);
    ensure!(decoded > 0, "{}: no frames", track.name);
    Ok(decoded)
}

fn check_audio(dir: &Path, track: &ManifestTrack, duration_ms: u64) -> Result<usize> {
    let path = dir.join(track.file());
    let decoded = decode::decode_audio(&path)?;
    ensure!(decoded.rate == 48_000, "{}: rate {}", track.name, decoded.rate);
    let mono = audio::mono(&decoded.samples, decoded.channels as usize);
    let first_ms = decoded.first_pts.nseconds() as f64 / 1e6;
    let found: Vec<f64> = audio::find_clicks(&mono, decoded.rate)
        .into_iter()
        .filter_map(|i| to_meeting_ms(track, first_ms + i as f64 * 1000.0 / f64::from(decoded.rate)))
        .collect();
    let segment = track.segments.first().context("no segment")?;
    let (start, end) = (segment.start_ms, segment.end_ms.unwrap_or(duration_ms));
    let expected: Vec<f64> = (start.div_ceil(1000)..end.div_ceil(1000)).map(|s| (s * 1000) as f64).collect();
    for want in &expected {
        if !found.iter().any(|got| (got - want).abs() <= 1.0) {
            let near: Vec<_> = found.iter().filter(|g| (*g - want).abs() < 100.0).collect();
            bail!("{}: no click within 1 ms of {want} ms (nearby: {near:?})", track.name);
        }
    }
    ensure!(
        found.len() == expected.len(),
        "{}: {} clicks for {} whole seconds: {found:?}",
        track.name,
        found.len(),
        expected.len()
    );
    Ok(found.len())
}

fn check_captions(dir: &Path, track: &ManifestTrack, duration_ms: u64) -> Result<usize> {
    let text = std::fs::read_to_string(dir.join(track.file()))?;
    let parse = |t: &str| -> Result<u64> {
        let t = t.trim().replace(',', ".");
        let (hms, ms) = t.split_once('.').context("timecode without milliseconds")?;
        let parts: Vec<u64> = hms.split(':').map(str::parse).collect::<Result<_, _>>()?;
        let seconds = parts.iter().fold(0, |acc, p| acc * 60 + p);
        Ok(seconds * 1000 + ms.parse::<u64>()?)
    };
    let mut cues = 0;
    for line in text.lines().filter(|l| l.contains("-->")) {
        let (a, b) = line.split_once("-->").context("cue line")?;
        let (start, end) = (parse(a)?, parse(b)?);
        ensure!(start < end && end <= duration_ms, "{}: cue {line:?} outside the meeting", track.name);
        cues += 1;
    }
    ensure!(cues > 0, "{}: no cues", track.name);
    Ok(cues)
}

fn check_kind(name: &str, kind: TrackKind) -> Result<()> {
    let (dir, manifest) = meeting(name)?;
    let duration = manifest.duration_ms.context("meeting.json has no duration")?;
    let tracks: Vec<_> = manifest.tracks.iter().filter(|t| t.kind == kind).collect();
    ensure!(!tracks.is_empty(), "{name}: no {kind:?} tracks");
    for track in tracks {
        let n = match kind {
            TrackKind::Video => check_video(&dir, track)?,
            TrackKind::Audio => check_audio(&dir, track, duration)?,
            TrackKind::Captions => check_captions(&dir, track, duration)?,
        };
        eprintln!("{name}/{}: {n} checked", track.name);
    }
    Ok(())
}

#[test]
fn standard_meeting_video_stamps_match_meeting_time() -> Result<()> {
    check_kind("meeting", TrackKind::Video)
}

#[test]
fn standard_meeting_audio_clicks_on_every_second() -> Result<()> {
    check_kind("meeting", TrackKind::Audio)
}

#[test]
fn standard_meeting_captions_inside_the_meeting() -> Result<()> {
    check_kind("meeting", TrackKind::Captions)
}

#[test]
fn webrtc_meeting_video_stamps_match_meeting_time() -> Result<()> {
    check_kind("meeting-webrtc", TrackKind::Video)
}

#[test]
fn webrtc_meeting_audio_clicks_on_every_second() -> Result<()> {
    check_kind("meeting-webrtc", TrackKind::Audio)
}

#[test]
fn webrtc_meeting_captions_inside_the_meeting() -> Result<()> {
    check_kind("meeting-webrtc", TrackKind::Captions)
}
