//! When a meeting that was just opened shows its first frames: shared by the `open` and `link`
//! benches, which time opens the same way.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use tandem::MediaTime;

use crate::gst_play::Rendered;
use crate::tracks::MeetingInfo;

/// When every track showing something at zero first handed over a buffer, after `start`.
pub fn first_frames(log: &Mutex<Vec<Rendered>>, info: &MeetingInfo, start: Instant) -> Option<Duration> {
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = start;
    for track in info.tracks.iter().filter(|t| t.active(MediaTime::ZERO)) {
        // Video: the first frame, prerolled or played; audio: the first buffer played.
        let first = log
            .iter()
            .find(|r| r.track == track.name && if r.video { r.stamp.is_some() } else { !r.preroll })?;
        last = last.max(first.at);
    }
    Some(last.duration_since(start))
}

/// [`first_frames`], waited for at most `timeout`.
pub fn wait_first(
    log: &Mutex<Vec<Rendered>>,
    info: &MeetingInfo,
    start: Instant,
    timeout: Duration,
) -> Result<Duration> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(d) = first_frames(log, info, start) {
            return Ok(d);
        }
        anyhow::ensure!(Instant::now() < deadline, "no first frame on every track within {timeout:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
