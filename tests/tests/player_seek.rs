//! Accurate seeks, judged from decoded output alone: after each seek the first frame every
//! video track shows carries the stamp of the frame on screen at the target (per GStreamer's
//! own decode of the same file), and the first audio click after the target lands within 5 ms
//! of its whole second.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use tandem::player::{Meeting, Player, PlayerOptions, SeekMode};
use tandem::MediaTime;
use tandem_tests::fixture_meeting;
use tandem_tests::player::{click_times, video_oracle, Recorder};

fn accurate_seeks(name: &str, seed: u64) -> Result<()> {
    let dir = fixture_meeting(name);
    let oracle = video_oracle(&dir)?;
    let meeting = Meeting::from_folder(&dir)?;
    let duration = meeting.duration().unwrap_or(MediaTime::from_secs(20));
    let recorder = Recorder::default();
    let player =
        Player::open(meeting, PlayerOptions { output: recorder.output(), ..PlayerOptions::default() })?;
    player.play()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut problems = Vec::new();
    let mut checked_frames = 0;
    let mut checked_clicks = 0;
    for _ in 0..20 {
        let target = MediaTime::from_millis(rng.gen_range(0..duration.as_millis() - 1500));
        let (frames_mark, audio_mark) = recorder.mark();
        let started = Instant::now();
        player.seek(target, SeekMode::Accurate)?;
        let seek = player.seek_count();
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek to {target} did not complete");
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
            let next_second = MediaTime::from_secs((target.as_millis() + 999) / 1000);
            let Some(click) = clicks.iter().find(|c| **c >= target.saturating_sub(MediaTime::from_millis(5)))
            else {
                problems.push(format!("seek to {target}: no click on {track} (expected near {next_second})"));
                continue;
            };
            checked_clicks += 1;
            let error = (click.as_nanos() - next_second.as_nanos()).abs();
            if error > 5_000_000 {
                problems
                    .push(format!("seek to {target}: {track} clicked at {click}, expected {next_second}"));
            }
        }
    }
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    ensure!(checked_frames >= 20, "only {checked_frames} frames checked");
    ensure!(checked_clicks >= 20, "only {checked_clicks} clicks checked");
    eprintln!("{name}: {checked_frames} first frames and {checked_clicks} clicks exact");
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
