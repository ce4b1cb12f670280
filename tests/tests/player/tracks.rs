//! Tracks joining and leaving while playing, and tracks with nothing to show, never
//! disturbing the others.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tandem::player::{Meeting, Player, PlayerOptions, SeekMode};
use tandem::MediaTime;
use tandem_tests::fixture_meeting;
use tandem_tests::player::Recorder;

use crate::common::{check_sync, longest_pause, no_problems, open_recorded};

#[test]
fn tracks_join_and_leave_while_playing_without_disturbing_the_others() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let recorder = Recorder::default();
    let options = PlayerOptions {
        output: recorder.output(),
        subscribe: Some(vec!["alice_video".into(), "bob_video".into(), "mixed_audio".into()]),
        ..PlayerOptions::default()
    };
    let player = Player::open(Meeting::from_folder(&dir)?, options)?;
    let mut problems = Vec::new();
    player.seek(MediaTime::from_secs(12), SeekMode::Accurate)?;
    ensure!(player.wait_seek(Duration::from_secs(10)), "first seek");
    player.play()?;
    std::thread::sleep(Duration::from_millis(800));

    // Join: the screen share appears in sync, alice keeps her pace.
    let mark = recorder.mark().0;
    let joined_at = Instant::now();
    player.subscribe("screen_share")?;
    std::thread::sleep(Duration::from_millis(2000));
    let frames = recorder.frames_since(mark);
    let shown: Vec<_> = frames.iter().filter(|f| &*f.track == "screen_share" && !f.preroll).collect();
    ensure!(!shown.is_empty(), "screen_share never appeared after subscribing");
    let appeared = shown[0].at - joined_at;
    ensure!(appeared < Duration::from_millis(800), "screen_share took {appeared:?} to appear");
    check_sync(&recorder, mark, "join", &mut problems);
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(120), "alice paused {pause:?} while screen_share joined");

    // Leave: bob's fetching stops at once, the others play on.
    let bob = player.track_stats("bob_video").expect("bob was subscribed");
    player.unsubscribe("bob_video")?;
    let left_at = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    let fetched = bob.fetched_bytes();
    let mark = recorder.mark().0;
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(
        bob.fetched_bytes() == fetched,
        "bob fetched {} bytes after leaving",
        bob.fetched_bytes() - fetched
    );
    let frames = recorder.frames_since(mark);
    ensure!(frames.iter().all(|f| &*f.track != "bob_video"), "bob rendered after leaving");
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(120), "alice paused {pause:?} after bob left");
    eprintln!("screen_share appeared {appeared:?} after subscribe; bob left {:?} ago", left_at.elapsed());

    // Fifty quick subscribe/unsubscribe cycles: no hang, no crash, alice undisturbed.
    let mark = recorder.mark().0;
    let cycles = Instant::now();
    for i in 0..50 {
        player.subscribe("bob_video")?;
        std::thread::sleep(Duration::from_millis(if i % 2 == 0 { 40 } else { 120 }));
        player.unsubscribe("bob_video")?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let frames = recorder.frames_since(mark);
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(150), "alice paused {pause:?} during 50 subscribe cycles");
    check_sync(&recorder, mark, "50 subscribe cycles", &mut problems);
    eprintln!("50 cycles took {:?}", cycles.elapsed());
    no_problems(&problems)?;
    Ok(())
}

#[test]
fn inactive_tracks_never_stall_the_others() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(&dir)?, &recorder)?;
    let mut problems = Vec::new();
    // Before bob joins (5 s), between the screen-share spans (25-32 s), after bob leaves (50 s).
    for (from, secs) in [(3_500u64, 3u64), (24_000, 9), (49_000, 3)] {
        player.seek(MediaTime::from_millis(from as i64), SeekMode::Accurate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek to {from}");
        let mark = recorder.mark().0;
        let started = Instant::now();
        player.play()?;
        std::thread::sleep(Duration::from_secs(secs));
        player.pause()?;
        let played = started.elapsed();
        let frames = recorder.frames_since(mark);
        let pause = longest_pause(&frames, "alice_video");
        if pause > Duration::from_millis(120) {
            problems.push(format!("from {from} ms: alice paused {pause:?}"));
        }
        let alice = frames.iter().filter(|f| &*f.track == "alice_video" && !f.preroll).count();
        let expected = played.as_secs_f64() * 30.0;
        if (alice as f64) < expected * 0.9 {
            problems.push(format!("from {from} ms: alice rendered {alice} frames in {played:?}"));
        }
        for f in frames.iter().filter(|f| !f.preroll) {
            let Some(stamp) = f.stamp else { continue };
            let inactive = match &*f.track {
                "bob_video" => !(5_000..50_000).contains(&stamp),
                "screen_share" => !((10_000..25_000).contains(&stamp) || (32_000..45_000).contains(&stamp)),
                _ => false,
            };
            if inactive {
                problems.push(format!("{} showed stamp {stamp} outside its spans", f.track));
            }
        }
        check_sync(&recorder, mark, &format!("from {from} ms"), &mut problems);
    }
    no_problems(&problems)?;
    Ok(())
}
