//! Helpers shared by the player tests: opening a recorded player, copies of meetings to
//! damage, sync checks of rendered frames, reporting problems.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tandem::player::{Meeting, Player, PlayerOptions};
use tandem_tests::fixture_meeting;
use tandem_tests::player::Recorder;

/// A scratch copy of a committed meeting, to damage.
pub(crate) fn copy_of_meeting(name: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(fixture_meeting(name))? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
    }
    Ok(dir)
}

/// The first `TrackError` among the events received so far.
pub(crate) fn first_track_error(
    events: &crossbeam_channel::Receiver<tandem::player::PlayerEvent>,
) -> Option<(std::sync::Arc<str>, String)> {
    events.try_iter().find_map(|e| match e {
        tandem::player::PlayerEvent::TrackError { track, message } => Some((track, message)),
        _ => None,
    })
}

/// Fails with every problem found (the first 30 of them).
pub(crate) fn no_problems(problems: &[String]) -> Result<()> {
    ensure!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

/// A player on `meeting` whose callbacks feed `recorder`, every track subscribed.
pub(crate) fn open_recorded(meeting: Meeting, recorder: &Recorder) -> Result<Player> {
    Ok(Player::open(meeting, PlayerOptions { output: recorder.output(), ..PlayerOptions::default() })?)
}

/// The longest pause between two rendered frames of `track` among `frames`.
pub(crate) fn longest_pause(frames: &[tandem_tests::player::SeenFrame], track: &str) -> Duration {
    let times: Vec<Instant> =
        frames.iter().filter(|f| &*f.track == track && !f.preroll).map(|f| f.at).collect();
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// Every frame rendered since `mark`, per track: |stamp - clock| within one frame of that
/// track, and the tracks within one frame of each other (each against the same clock).
pub(crate) fn check_sync(recorder: &Recorder, mark: usize, what: &str, problems: &mut Vec<String>) -> usize {
    check_sync_of(recorder, mark, what, problems, |_| true)
}

/// [`check_sync`] on the frames `judged` keeps.
pub(crate) fn check_sync_of(
    recorder: &Recorder,
    mark: usize,
    what: &str,
    problems: &mut Vec<String>,
    judged: impl Fn(&tandem_tests::player::SeenFrame) -> bool,
) -> usize {
    let frames: Vec<_> =
        recorder.frames_since(mark).into_iter().filter(|f| !f.preroll && judged(f)).collect();
    let mut worst: std::collections::HashMap<std::sync::Arc<str>, i64> = Default::default();
    let mut first_at: std::collections::HashMap<(std::sync::Arc<str>, u64), Instant> = Default::default();
    for f in &frames {
        // The frames a track plays in the first 150 ms after a seek come as the pipeline
        // restarts its clock; they have measured up to 45 ms off (1.4 frames) and get a second
        // frame of slack. Everything after is held to one frame.
        let started = *first_at.entry((f.track.clone(), f.seek)).or_insert(f.at);
        let restart = f.at.duration_since(started) < Duration::from_millis(150);
        let (Some(stamp), Some(clock)) = (f.stamp, f.clock) else {
            problems.push(format!(
                "{what}: {} frame without stamp or clock ({:?}, {:?})",
                f.track, f.stamp, f.clock
            ));
            continue;
        };
        let skew = clock.as_millis() - i64::from(stamp);
        let frame_ms = frame_interval_ms(&f.track) * if restart { 2 } else { 1 };
        // The frame on screen at `clock` started at most one frame before it, plus up to 10 ms
        // for a loaded 2-core machine to wake the sink and run the callback (stamps are whole
        // ms). Steady play measures 1-4 ms; the report below prints the worst per track.
        let early = if restart { -frame_ms / 2 - 10 } else { -2 };
        if !(early..=frame_ms + 10).contains(&skew) {
            problems
                .push(format!("{what}: {} stamp {stamp} shown at clock {clock} (skew {skew} ms)", f.track));
        }
        let w = worst.entry(f.track.clone()).or_default();
        *w = (*w).max(skew.abs());
    }
    eprintln!("{what}: {} frames, worst |clock - stamp| per track {worst:?}", frames.len());
    frames.len()
}

fn frame_interval_ms(track: &str) -> i64 {
    match track {
        "alice_video" => 34,
        "bob_video" => 42,
        _ => 200,
    }
}
