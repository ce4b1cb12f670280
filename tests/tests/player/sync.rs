//! Sync: video tracks against the clock and each other through play, pauses, seeks and rate
//! changes, and audio clicks against the clock at other rates.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tandem::player::{Meeting, Player, PlayerOptions, SeekMode};
use tandem::MediaTime;
use tandem_tests::fixture_meeting;
use tandem_tests::player::{click_skews, Recorder};

use crate::common::{check_sync, no_problems, open_recorded};

#[test]
fn tracks_stay_in_sync_through_play_pauses_seeks_and_rate_changes() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(&dir)?, &recorder)?;
    let mut problems = Vec::new();

    player.seek(MediaTime::from_secs(8), SeekMode::Accurate)?;
    ensure!(player.wait_seek(Duration::from_secs(10)), "first seek");
    let mark = recorder.mark().0;
    player.play()?;
    std::thread::sleep(Duration::from_secs(6));
    let steady = check_sync(&recorder, mark, "steady play", &mut problems);
    ensure!(steady > 150, "only {steady} frames rendered in 6 s of play");

    let mark = recorder.mark().0;
    for _ in 0..10 {
        player.pause()?;
        std::thread::sleep(Duration::from_millis(120));
        player.play()?;
        std::thread::sleep(Duration::from_millis(300));
    }
    check_sync(&recorder, mark, "pause/resume", &mut problems);

    let mark = recorder.mark().0;
    for t in [33_700, 12_345, 47_000] {
        player.seek(MediaTime::from_millis(t), SeekMode::Accurate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek to {t}");
        std::thread::sleep(Duration::from_millis(1000));
    }
    check_sync(&recorder, mark, "after seeks", &mut problems);

    player.set_rate(1.5)?;
    ensure!(player.wait_seek(Duration::from_secs(10)), "rate change");
    let (mark, from, started) = (recorder.mark().0, player.position(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let advanced =
        player.position().saturating_sub(from).as_millis() as f64 / started.elapsed().as_millis() as f64;
    check_sync(&recorder, mark, "at 1.5x", &mut problems);
    ensure!((1.35..=1.6).contains(&advanced), "at 1.5x the cursor moved {advanced:.2}x wall time");
    no_problems(&problems)?;
    Ok(())
}

/// Plays `meeting`'s `mixed_audio` at each rate, changed while playing from `times[0]` and then
/// after a seek to `times[1]` at that rate; returns the signed skews of the clicks heard (ms) per
/// rate and stretch.
fn click_skews_at_rates(
    meeting: &str,
    times: [i64; 2],
    rates: &[f64],
    play: Duration,
) -> Result<Vec<(f64, &'static str, Vec<f64>)>> {
    let recorder = Recorder::default();
    let options = PlayerOptions {
        output: recorder.output(),
        subscribe: Some(vec!["mixed_audio".into()]),
        ..PlayerOptions::default()
    };
    let player = Player::open(Meeting::from_folder(fixture_meeting(meeting))?, options)?;
    let mut out = Vec::new();
    for &rate in rates {
        player.seek(MediaTime::from_millis(times[0]), SeekMode::Accurate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek before {rate}x");
        player.play()?;
        std::thread::sleep(Duration::from_millis(600));
        let mark = recorder.mark().1;
        player.set_rate(rate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "rate change to {rate}x");
        std::thread::sleep(play);
        out.push((rate, "rate changed while playing", click_skews(&recorder.audio_since(mark), rate)));
        let mark = recorder.mark().1;
        player.seek(MediaTime::from_millis(times[1]), SeekMode::Accurate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek at {rate}x");
        std::thread::sleep(play);
        out.push((rate, "after a seek at that rate", click_skews(&recorder.audio_since(mark), rate)));
        player.pause()?;
        player.set_rate(1.0)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "back to 1x");
    }
    Ok(out)
}

/// At 0.75x and 1.5x the audio keeps to the meeting clock: the clicks found in the samples the
/// player renders (one at every whole second of meeting time) play within 10 ms of their second
/// (p95 of all of them, and a median within 6 ms at each rate), after the rate changes while
/// playing and after a seek at that rate; Vorbis decoded in the engine (standard meeting) and
/// Opus decoded by GStreamer (WebRTC meeting). scaletempo (WSOLA) moves a sound by up to its
/// search window and a fraction of its stride, so a few ms either way is expected; 1.22.0's own
/// stamps put them 20-29 ms early. (The p95 is over about 40 clicks: a click handed over late by
/// a starved CPU, which happens on a loaded 2-core machine, is not the player's doing.)
#[test]
fn audio_clicks_keep_to_the_clock_at_other_rates() -> Result<()> {
    let mut problems = Vec::new();
    let mut all: Vec<f64> = Vec::new();
    let mut per_rate: Vec<(f64, Vec<f64>)> = vec![(0.75, Vec::new()), (1.5, Vec::new())];
    for (meeting, times) in [("meeting", [13_700, 31_300]), ("meeting-webrtc", [3_700, 11_300])] {
        for (rate, what, skews) in click_skews_at_rates(meeting, times, &[0.75, 1.5], Duration::from_secs(5))?
        {
            eprintln!("{meeting} {rate}x {what}: click skews (ms, + late) {skews:.1?}");
            if skews.len() < 3 {
                problems.push(format!("{meeting} {rate}x {what}: {} clicks heard", skews.len()));
            }
            let abs = skews.iter().map(|s| s.abs());
            all.extend(abs.clone());
            if let Some((_, heard)) = per_rate.iter_mut().find(|(r, _)| *r == rate) {
                heard.extend(abs);
            }
        }
    }
    let quantile = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0)
    };
    for (rate, heard) in &mut per_rate {
        let median = quantile(heard, 0.5);
        if median > 6.0 {
            problems.push(format!("{rate}x: clicks' median {median:.1} ms from their second ({heard:.1?})"));
        }
    }
    let p95 = quantile(&mut all, 0.95);
    if p95 > 10.0 {
        problems.push(format!("clicks p95 {p95:.1} ms from their second (|skews| {all:.1?})"));
    }
    no_problems(&problems)
}

#[test]
fn the_webrtc_meeting_plays_and_seeks_in_sync() -> Result<()> {
    // Fragmented MP4, WebM without Cues, Opus and MP3 (both audio tracks play).
    let dir = fixture_meeting("meeting-webrtc");
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(&dir)?, &recorder)?;
    let mut problems = Vec::new();
    let mark = recorder.mark();
    player.play()?;
    std::thread::sleep(Duration::from_secs(4));
    check_sync(&recorder, mark.0, "webrtc from the start", &mut problems);
    for (t, pauses) in [(12_500i64, 0), (2_750, 3)] {
        player.seek(MediaTime::from_millis(t), SeekMode::Accurate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek to {t}");
        let mark = recorder.mark().0;
        if pauses > 0 {
            // Pausing within the first moments after a seek's preroll is a known race (see the
            // player's module doc); pause/resume is checked once playback runs.
            std::thread::sleep(Duration::from_secs(1));
        }
        for _ in 0..pauses {
            player.pause()?;
            std::thread::sleep(Duration::from_millis(150));
            player.play()?;
            std::thread::sleep(Duration::from_millis(400));
        }
        std::thread::sleep(Duration::from_secs(2));
        check_sync(&recorder, mark, &format!("webrtc after seeking to {t}"), &mut problems);
    }
    let audio = recorder.audio_since(mark.1);
    for track in ["mixed_audio", "dialin_audio"] {
        let heard = audio.iter().filter(|a| &*a.track == track).count();
        ensure!(heard > 50, "{track}: only {heard} audio buffers");
    }
    no_problems(&problems)?;
    Ok(())
}
