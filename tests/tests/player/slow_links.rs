//! Playing through a throttled link (latency and bandwidth shared by every track): at 3x
//! the bitrate without stalls; below it, video gives way or playback waits then resumes.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tandem::player::{Meeting, SeekMode};
use tandem::MediaTime;
use tandem_tests::fixture_meeting;
use tandem_tests::player::Recorder;

use crate::common::{check_sync, check_sync_of, longest_pause, open_recorded};

/// A link shared by every track: a fixed latency per request and a bandwidth cap.
struct Link {
    latency: Duration,
    bytes_per_sec: f64,
    free_at: std::sync::Mutex<Instant>,
}

struct Throttled {
    inner: std::sync::Arc<dyn tandem::RangeSource>,
    link: std::sync::Arc<Link>,
}

impl tandem::RangeSource for Throttled {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_range(&self, start: u64, len: u64) -> Result<bytes::Bytes, tandem::SourceError> {
        std::thread::sleep(self.link.latency);
        let done = {
            let mut free = self.link.free_at.lock().unwrap_or_else(|e| e.into_inner());
            let begin = (*free).max(Instant::now());
            *free = begin + Duration::from_secs_f64(len as f64 / self.link.bytes_per_sec);
            *free
        };
        std::thread::sleep(done.saturating_duration_since(Instant::now()));
        self.inner.read_range(start, len)
    }
}

/// The standard meeting through a link of `times` its average bitrate with 40 ms latency.
fn throttled_meeting(times: f64) -> Result<Meeting> {
    let dir = fixture_meeting("meeting");
    let meeting = Meeting::from_folder(&dir)?;
    let bytes: u64 =
        std::fs::read_dir(&dir)?.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    let seconds = meeting.duration().unwrap_or(MediaTime::from_secs(60)).as_secs_f64();
    let link = std::sync::Arc::new(Link {
        latency: Duration::from_millis(40),
        bytes_per_sec: bytes as f64 / seconds * times,
        free_at: std::sync::Mutex::new(Instant::now()),
    });
    Ok(meeting.wrap_sources(move |_, inner| std::sync::Arc::new(Throttled { inner, link: link.clone() })))
}

#[test]
fn a_slow_link_at_three_times_the_bitrate_plays_without_stalls() -> Result<()> {
    let recorder = Recorder::default();
    let player = open_recorded(throttled_meeting(3.0)?, &recorder)?;
    let events = player.events();
    let started = Instant::now();
    player.seek(MediaTime::from_secs(20), SeekMode::Accurate)?;
    ensure!(player.wait_seek(Duration::from_secs(20)), "seek over the slow link");
    let seek_time = started.elapsed();
    let _ = events.try_iter().count();
    let mark = recorder.mark().0;
    player.play()?;
    std::thread::sleep(Duration::from_secs(8));
    let stalls: Vec<_> = events
        .try_iter()
        .filter(|e| matches!(e, tandem::player::PlayerEvent::Buffering { percent, .. } if *percent < 100))
        .collect();
    ensure!(stalls.is_empty(), "playback waited for data: {stalls:?}");
    let frames = recorder.frames_since(mark);
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(150), "alice paused {pause:?}");
    let mut problems = Vec::new();
    check_sync(&recorder, mark, "3x link", &mut problems);
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!("3x link with 40 ms latency: seek took {seek_time:?}, longest alice pause {pause:?}");
    Ok(())
}

#[test]
fn a_link_slower_than_the_bitrate_gives_way_or_buffers_then_plays_on_by_itself() -> Result<()> {
    let recorder = Recorder::default();
    let player = open_recorded(throttled_meeting(0.6)?, &recorder)?;
    let events = player.events();
    player.seek(MediaTime::from_secs(20), SeekMode::Accurate)?;
    ensure!(player.wait_seek(Duration::from_secs(30)), "seek over the slow link");
    let from = player.position();
    player.play()?;
    std::thread::sleep(Duration::from_secs(12));
    let events: Vec<tandem::player::PlayerEvent> = events.try_iter().collect();
    let buffering: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            tandem::player::PlayerEvent::Buffering { percent, .. } => Some(*percent),
            _ => None,
        })
        .collect();
    // A video track the link cannot carry may give way (shows keyframes as they come, out of
    // step by design) rather than stall the meeting: from then on its frames are not judged
    // for sync, the others' are.
    let degraded: Vec<(std::sync::Arc<str>, MediaTime)> = events
        .iter()
        .filter_map(|e| match e {
            tandem::player::PlayerEvent::Degraded { track, degraded: true, at } => Some((track.clone(), *at)),
            _ => None,
        })
        .collect();
    // The link must show: video gives way (before or after a stall), or playback waits.
    // A wait must end by itself.
    let waited = buffering.iter().position(|p| *p < 100);
    ensure!(
        waited.is_some() || !degraded.is_empty(),
        "neither a buffering event nor a degraded track on a link below the bitrate"
    );
    if let Some(waited) = waited {
        ensure!(buffering.iter().skip(waited).any(|p| *p == 100), "playback never resumed: {buffering:?}");
    }
    let advanced = player.position().saturating_sub(from);
    ensure!(advanced > MediaTime::from_secs(3), "the cursor only advanced {advanced} in 12 s");
    let mut problems = Vec::new();
    check_sync_of(&recorder, 0, "0.6x link", &mut problems, |f| {
        !degraded.iter().any(|(track, at)| *track == f.track && f.pts >= *at)
    });
    ensure!(problems.is_empty(), "{}", problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
    eprintln!(
        "0.6x link: {} buffering events, cursor advanced {advanced} in 12 s, degraded {degraded:?}",
        buffering.len()
    );
    Ok(())
}
