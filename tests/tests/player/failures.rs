//! Damaged tracks: a corrupt file, lost bytes, a file that cannot be opened; the track
//! fails or skips alone and the others play on.

use std::time::Duration;

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use tandem::player::{Meeting, SeekMode};
use tandem::MediaTime;
use tandem_tests::fixture_meeting;
use tandem_tests::player::{video_oracle, Recorder};

use crate::common::{check_sync, copy_of_meeting, first_track_error, longest_pause, open_recorded};

#[test]
fn a_track_whose_file_is_corrupt_mid_way_fails_alone() -> Result<()> {
    let dir = copy_of_meeting("meeting")?;
    // Bit rot in bob's frames from media 20 s on (the container stays readable): the payloads
    // of those blocks become noise after their 3-byte VP8 frame tag.
    let bob = dir.path().join("bob_video.webm");
    let mut bytes = std::fs::read(&bob)?;
    let source = bytes::Bytes::from(bytes.clone());
    let index = tandem::index::TrackIndex::open("bob_video", &source)?;
    let from = index.seek(&source, MediaTime::from_secs(20))?;
    let batch = index.samples(&source, from.pos, 150)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for sample in batch.samples.iter().filter(|s| s.pts >= MediaTime::from_secs(20)) {
        for b in &mut bytes[sample.offset as usize + 3..sample.end() as usize] {
            *b = rng.gen();
        }
    }
    std::fs::write(&bob, bytes)?;
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(dir.path())?, &recorder)?;
    let events = player.events();
    player.seek(MediaTime::from_secs(21), SeekMode::Accurate)?;
    player.play()?;
    let mark = recorder.mark().0;
    std::thread::sleep(Duration::from_secs(8));
    let error = first_track_error(&events);
    let Some((track, message)) = error else { anyhow::bail!("no error reported for the corrupt track") };
    ensure!(&*track == "bob_video", "the error names {track}: {message}");
    eprintln!("bob_video failed: {message}");
    let frames = recorder.frames_since(mark);
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(150), "alice paused {pause:?} around bob's failure");
    let end = player.position();
    let last_alice =
        frames.iter().rev().find(|f| &*f.track == "alice_video").and_then(|f| f.stamp).unwrap_or(0);
    ensure!(end > MediaTime::from_secs(27), "the cursor only reached {end}");
    ensure!(
        i64::from(last_alice) >= end.as_millis() - 150,
        "alice stopped playing after bob failed (last frame {last_alice}, cursor {end})"
    );
    let mut problems = Vec::new();
    check_sync(&recorder, mark, "corrupt bob", &mut problems);
    // Bob's damaged frames before the decoder gave up carry no readable stamp.
    problems.retain(|p| !p.contains("bob_video"));
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn a_track_that_lost_bytes_reports_it_skips_to_its_next_keyframe_and_plays_on() -> Result<()> {
    let dir = copy_of_meeting("meeting")?;
    let oracle = video_oracle(&fixture_meeting("meeting"))?;
    // Destroy the SimpleBlock header of one of bob's delta frames near media 17 s: the index
    // loses the rest of that cluster and marks the next block it finds.
    let bob = dir.path().join("bob_video.webm");
    let mut bytes = std::fs::read(&bob)?;
    let source = bytes::Bytes::from(bytes.clone());
    let index = tandem::index::TrackIndex::open("bob_video", &source)?;
    let from = index.seek(&source, MediaTime::from_secs(17))?;
    let batch = index.samples(&source, from.pos, 40)?;
    let victim = batch.samples.iter().filter(|s| !s.keyframe).nth(4).copied();
    let Some(victim) = victim else { anyhow::bail!("no delta frame after bob's keyframe at {}", from.pts) };
    // The element: ID 0xA3, a size vint of `len` bytes, then the track, timecode and flags.
    let p = victim.offset as usize - 4;
    let header = (1..=8usize).find(|&len| {
        let size = &bytes[p - len..p];
        let value =
            size[1..].iter().fold(u64::from(size[0]) & (0xFF >> len), |acc, &b| (acc << 8) | u64::from(b));
        bytes[p - len - 1] == 0xA3 && size[0].leading_zeros() as usize + 1 == len && value == victim.size + 4
    });
    let Some(len) = header else { anyhow::bail!("no SimpleBlock header before byte {}", victim.offset) };
    bytes[p - len - 1] = 0x00;
    std::fs::write(&bob, bytes)?;
    // Bob's media starts at meeting time 5 s.
    let victim_at = victim.pts.saturating_add(MediaTime::from_secs(5));
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(dir.path())?, &recorder)?;
    let events = player.events();
    player.seek(victim_at.saturating_sub(MediaTime::from_secs(2)), SeekMode::Accurate)?;
    let mark = recorder.mark().0;
    player.play()?;
    std::thread::sleep(Duration::from_secs(9));
    let events: Vec<_> = events.try_iter().collect();
    let reports: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            tandem::player::PlayerEvent::Damaged { track, at, message, .. } => {
                Some((track.clone(), *at, message.clone()))
            }
            _ => None,
        })
        .collect();
    let failures: Vec<_> =
        events.iter().filter(|e| matches!(e, tandem::player::PlayerEvent::TrackError { .. })).collect();
    ensure!(failures.is_empty(), "a track failed: {failures:?}");
    let Some((track, at, message)) = reports.first() else { anyhow::bail!("no damage reported") };
    eprintln!("{track}: {message}");
    ensure!(&**track == "bob_video", "the damage names {track}");
    ensure!(*at > victim_at && *at < victim_at.saturating_add(MediaTime::from_secs(6)), "reported at {at}");
    // Bob plays on past the damage, and shows only what GStreamer's decode of the intact file
    // shows at each frame's time.
    let frames = recorder.frames_since(mark);
    let bob_frames: Vec<_> = frames.iter().filter(|f| &*f.track == "bob_video" && !f.preroll).collect();
    let last = bob_frames.iter().filter_map(|f| f.stamp).max().unwrap_or(0);
    ensure!(i64::from(last) > at.as_millis() + 1000, "bob stopped at {last} ms (damage at {at})");
    for f in &bob_frames {
        let Some(stamp) = f.stamp else { continue };
        let shown = oracle["bob_video"].frames.iter().any(|(_, s)| *s == stamp);
        ensure!(shown, "bob showed a frame stamped {stamp} that the file does not hold");
    }
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(150), "alice paused {pause:?} around bob's damage");
    Ok(())
}

#[test]
fn a_track_that_cannot_be_opened_is_reported_and_the_others_play() -> Result<()> {
    let dir = copy_of_meeting("meeting")?;
    std::fs::write(dir.path().join("screen_share.mkv"), vec![0u8; 4096])?;
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(dir.path())?, &recorder)?;
    let error = first_track_error(&player.events());
    let Some((track, message)) = error else { anyhow::bail!("no error for the unreadable screen share") };
    ensure!(&*track == "screen_share", "the error names {track}: {message}");
    ensure!(
        !player.subscribed().iter().any(|t| &**t == "screen_share"),
        "the broken track is still subscribed"
    );
    player.seek(MediaTime::from_secs(15), SeekMode::Accurate)?;
    ensure!(player.wait_seek(Duration::from_secs(10)), "the other tracks did not seek");
    let shown =
        recorder.frames.lock().map(|f| f.iter().filter(|f| &*f.track == "alice_video").count()).unwrap_or(0);
    ensure!(shown > 0, "alice showed nothing");
    Ok(())
}
