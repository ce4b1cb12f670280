//! Accurate seeks, judged from decoded output alone: after each seek the first frame every
//! video track shows carries the stamp of the frame on screen at the target (per GStreamer's
//! own decode of the same file), and the first audio click after the target lands within 5 ms
//! of its whole second.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use tandem::player::{Meeting, SeekMode};
use tandem::MediaTime;
use tandem_tests::fixture_meeting;
use tandem_tests::player::{click_times, video_oracle, Recorder};

use crate::common::open_recorded;
use crate::net_common;

fn accurate_seeks(name: &str, seed: u64) -> Result<()> {
    let dir = fixture_meeting(name);
    accurate_seeks_on(name, Meeting::from_folder(&dir)?, seed, 20)
}

/// `seeks` accurate seeks to random times of `meeting` (a copy of the committed meeting
/// `name`, however it is read), each checked against the oracle.
fn accurate_seeks_on(name: &str, meeting: Meeting, seed: u64, seeks: usize) -> Result<()> {
    let dir = fixture_meeting(name);
    let oracle = video_oracle(&dir)?;
    let duration = meeting.duration().unwrap_or(MediaTime::from_secs(20));
    let recorder = Recorder::default();
    let player = open_recorded(meeting, &recorder)?;
    player.play()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut problems = Vec::new();
    let mut checked_frames = 0;
    let mut checked_clicks = 0;
    let mut latencies = Vec::new();
    for _ in 0..seeks {
        let target = MediaTime::from_millis(rng.gen_range(0..duration.as_millis() - 1500));
        let (frames_mark, audio_mark) = recorder.mark();
        let started = Instant::now();
        player.seek(target, SeekMode::Accurate)?;
        let seek = player.seek_count();
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek to {target} did not complete");
        latencies.push(started.elapsed());
        // Play on past the next whole second so a click can be heard.
        std::thread::sleep(Duration::from_millis(1150));
        let frames: Vec<_> =
            recorder.frames_since(frames_mark).into_iter().filter(|f| f.seek == seek).collect();
        for (track, truth) in &oracle {
            let Some(expected) = truth.on_screen_at(target) else { continue };
            let mine: Vec<_> = frames.iter().filter(|f| &*f.track == track).collect();
            checked_frames += 1;
            match mine.first() {
                Some(f) if f.stamp == Some(expected) => {}
                _ => problems.push(format!(
                    "seek to {target}: {track} expected stamp {expected}, first showed {:?}",
                    mine.iter()
                        .take(3)
                        .map(|f| format!(
                            "{:?} pts {} preroll {} after {:?}",
                            f.stamp,
                            f.pts,
                            f.preroll,
                            f.at - started
                        ))
                        .collect::<Vec<_>>()
                )),
            }
        }
        let audio: Vec<_> = recorder.audio_since(audio_mark).into_iter().filter(|a| a.seek == seek).collect();
        let mut tracks: Vec<_> = audio.iter().map(|a| a.track.clone()).collect();
        tracks.dedup();
        tracks.sort();
        tracks.dedup();
        for track in tracks {
            let chunks: Vec<_> = audio.iter().filter(|a| a.track == track).cloned().collect();
            let clicks = click_times(&chunks);
            // The first click heard from the target on (a click just before it may still be
            // ringing): it must sit within 5 ms of a whole second at or after the target.
            let slack = MediaTime::from_millis(5);
            let Some(click) = clicks.iter().find(|c| **c >= target.saturating_sub(slack)) else {
                problems.push(format!("seek to {target}: no click on {track}"));
                continue;
            };
            checked_clicks += 1;
            let second = MediaTime::from_secs((click.as_millis() + 500) / 1000);
            let error = (click.as_nanos() - second.as_nanos()).abs();
            if error > 5_000_000 || second < target.saturating_sub(slack) {
                problems.push(format!("seek to {target}: {track} clicked at {click}, not within 5 ms of a whole second after the target"));
            }
        }
    }
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    ensure!(checked_frames >= seeks, "only {checked_frames} frames checked");
    ensure!(checked_clicks >= seeks, "only {checked_clicks} clicks checked");
    latencies.sort();
    eprintln!(
        "{name}: {checked_frames} first frames and {checked_clicks} clicks exact; seek p50 {:?} max {:?}",
        latencies[latencies.len() / 2],
        latencies.last()
    );
    Ok(())
}

#[test]
fn accurate_seeks_on_the_standard_meeting() -> Result<()> {
    accurate_seeks("meeting", 6)
}

#[test]
fn accurate_seeks_on_the_webrtc_meeting() -> Result<()> {
    accurate_seeks("meeting-webrtc", 7)
}

#[test]
fn accurate_seeks_on_the_webrtc_meeting_from_a_loopback_peer() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let root = net_common::fixture_root(&["meeting-webrtc"]);
    let (server, client) =
        rt.block_on(async { (net_common::serve(&root).await, net_common::client().await) });
    let peer = net_common::peer_of(&server);
    let meeting = rt.block_on(Meeting::from_peer(&client, &peer, "meeting-webrtc"))?;
    accurate_seeks_on("meeting-webrtc", meeting, 11, 10)?;
    rt.block_on(server.shutdown());
    Ok(())
}

#[test]
fn preview_seeks_show_a_keyframe_on_every_track_before_the_accurate_frame() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let oracle = video_oracle(&dir)?;
    let manifest = tandem::manifest::Manifest::load(&dir)?;
    // Keyframe stamps per track, from ffprobe's keyframe flags mapped through the segments.
    let mut keyframes = std::collections::HashMap::new();
    for track in manifest.tracks.iter().filter(|t| t.kind == tandem::manifest::TrackKind::Video) {
        let packets = tandem_tests::ffprobe_packets(&dir.join(track.file()))?;
        let frames = &oracle[&track.name].frames;
        let mut stamps = Vec::new();
        for p in packets.iter().filter(|p| p.keyframe) {
            let Some(pts) = p.pts_ms else { continue };
            // The oracle frame decoded at that media time carries the keyframe's stamp.
            for seg in &track.segments {
                let meeting = pts - seg.media_start_ms as f64 + seg.start_ms as f64;
                if let Some((_, stamp)) =
                    frames.iter().find(|(t, _)| (t.as_nanos() as f64 / 1e6 - meeting).abs() < 1.0)
                {
                    stamps.push(*stamp);
                }
            }
        }
        keyframes.insert(track.name.clone(), stamps);
    }
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(&dir)?, &recorder)?;
    let mut problems = Vec::new();
    let mut preview_times = Vec::new();
    for (i, t) in [13_377i64, 38_911, 21_003, 44_444, 7_250].into_iter().enumerate() {
        let target = MediaTime::from_millis(t);
        if i == 3 {
            player.play()?;
        }
        let mark = recorder.mark().0;
        let started = Instant::now();
        player.seek(target, SeekMode::Preview)?;
        let preview = player.seek_count();
        // The accurate phase follows by itself.
        let deadline = Instant::now() + Duration::from_secs(10);
        while player.seek_count() == preview && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        ensure!(player.wait_seek(Duration::from_secs(10)), "accurate phase of {target}");
        std::thread::sleep(Duration::from_millis(200));
        let frames = recorder.frames_since(mark);
        for (track, truth) in &oracle {
            let Some(expected) = truth.on_screen_at(target) else { continue };
            let mine: Vec<_> = frames.iter().filter(|f| &*f.track == track).collect();
            let first_preview = mine.iter().find(|f| f.seek == preview);
            let first_accurate = mine.iter().position(|f| f.seek == preview + 1);
            match (first_preview, first_accurate) {
                (Some(p), Some(a)) => {
                    // A keyframe at or before the target and on screen in the same span. (Our
                    // Matroska index trusts Cues, which may list fewer keyframes than the blocks
                    // flag: then the preview is an earlier keyframe of the same span.)
                    let span_start = manifest.tracks.iter().find(|m| &m.name == track).and_then(|m| {
                        m.segments.iter().find(|s| s.media_time(target).is_some()).map(|s| s.start_ms as u32)
                    });
                    let ok = p.stamp.is_some_and(|s| {
                        keyframes[track].contains(&s)
                            && i64::from(s) <= t
                            && span_start.is_none_or(|start| s >= start)
                    });
                    if !ok {
                        let key = keyframes[track].iter().copied().filter(|k| i64::from(*k) <= t).max();
                        problems.push(format!(
                            "{target}: {track} previewed {:?}, keyframe at or before is {key:?}",
                            p.stamp
                        ));
                    }
                    if mine[a].stamp != Some(expected) {
                        problems.push(format!(
                            "{target}: {track} then showed {:?}, expected {expected}",
                            mine[a].stamp
                        ));
                    }
                    preview_times.push(p.at - started);
                }
                other => problems.push(format!(
                    "{target}: {track} preview/accurate frames missing: {:?}",
                    (other.0.is_some(), other.1.is_some())
                )),
            }
        }
    }
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    preview_times.sort();
    eprintln!(
        "preview frame after p50 {:?}, max {:?}",
        preview_times[preview_times.len() / 2],
        preview_times.last()
    );
    Ok(())
}

#[test]
fn fast_seeks_snap_the_cursor_to_a_keyframe() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let oracle = video_oracle(&dir)?;
    // alice's keyframes (the first video track) per ffprobe, in meeting time.
    let keyframes: Vec<i64> = tandem_tests::ffprobe_packets(&dir.join("alice_video.mp4"))?
        .iter()
        .filter(|p| p.keyframe)
        .filter_map(|p| p.pts_ms)
        .map(|ms| ms.round() as i64)
        .collect();
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(&dir)?, &recorder)?;
    for t in [7_777i64, 31_234, 52_100] {
        let mark = recorder.mark().0;
        let landed = player.seek(MediaTime::from_millis(t), SeekMode::Fast)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "fast seek to {t}");
        let expected = keyframes.iter().copied().filter(|k| *k <= t).max().unwrap_or(0);
        ensure!(
            (landed.as_millis() - expected).abs() <= 1,
            "fast seek to {t} landed at {landed}, keyframe {expected}"
        );
        std::thread::sleep(Duration::from_millis(100));
        let frames = recorder.frames_since(mark);
        for (track, truth) in &oracle {
            let Some(want) = truth.on_screen_at(landed) else { continue };
            let first = frames.iter().find(|f| &*f.track == track).and_then(|f| f.stamp);
            ensure!(
                first == Some(want),
                "fast seek to {t} ({landed}): {track} showed {first:?}, expected {want}"
            );
        }
    }
    Ok(())
}
