//! Recordings whose timestamps jump: a recorder that stopped writing frames for seconds (a
//! hidden browser tab, a paused encoder) inside one GOP, with no keyframe after the jump. The
//! frames still reference each other, so every one of them must show. `snapshot` is checked
//! every 250 ms across each jump against ffprobe's decode of the same file: the frame on
//! screen is the one with the greatest pts at or before the time, read back by its stamp.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use tandem_fixtures::{generate, MeetingSpec, Variant};
use tandem_tests::{ffprobe_frame_times, ffprobe_packets};

mod common;
use common::meeting_replay;

/// A gap between frames this long counts as a jump for the test (the fixture's are 1.3-7.4 s).
const JUMP_MS: f64 = 1000.0;
/// Times this close to a frame's pts are left out: WebM rounds times to whole milliseconds.
const NEAR_MS: f64 = 2.0;

/// The stamp in a PNG written by `snapshot`.
fn png_stamp(path: &Path) -> Result<Option<u32>> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    ensure!(info.color_type == png::ColorType::Rgb, "not RGB: {:?}", info.color_type);
    let w = info.width as usize;
    Ok(common::stamp_at(
        |x, y| common::luma_of([buf[(y * w + x) * 3], buf[(y * w + x) * 3 + 1], buf[(y * w + x) * 3 + 2]]),
        0,
        0,
        16,
    ))
}

#[test]
fn snapshots_across_timestamp_jumps_show_the_frame_before_the_next_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let meeting = dir.path().join("hidden-tab");
    generate(&MeetingSpec::new(Variant::Jumps, 24), &meeting, |_| {})?;
    let mut checked = 0;
    for (track, file) in [("chrome_cam", "chrome_cam.webm"), ("obs_cam", "obs_cam.mp4")] {
        let path = meeting.join(file);
        // The fixture has the property under test, as ffprobe sees it: one keyframe, and
        // jumps of seconds between frames.
        let keyframes = ffprobe_packets(&path)?.iter().filter(|p| p.keyframe).count();
        ensure!(keyframes == 1, "{file}: {keyframes} keyframes, the fixture wants one");
        let mut frames = ffprobe_frame_times(&path)?;
        frames.sort_by(f64::total_cmp);
        let jumps: Vec<(f64, f64)> =
            frames.windows(2).filter(|w| w[1] - w[0] > JUMP_MS).map(|w| (w[0], w[1])).collect();
        ensure!(jumps.len() >= 3, "{file}: jumps {jumps:?}");
        for (from, to) in jumps {
            let mut t = from.round() as i64;
            while (t as f64) <= to + 250.0 {
                let at = t as f64;
                t += 250;
                if frames.iter().any(|f| (f - at).abs() < NEAR_MS) {
                    continue;
                }
                let expected = frames.iter().copied().filter(|f| *f <= at).fold(f64::MIN, f64::max);
                let png = dir.path().join(format!("{track}-{at:.0}.png"));
                let output = meeting_replay()
                    .args([
                        "snapshot",
                        &meeting.to_string_lossy(),
                        "--at",
                        &format!("{at}ms"),
                        "--track",
                        track,
                    ])
                    .arg("-o")
                    .arg(&png)
                    .output()
                    .context("running meeting-replay")?;
                ensure!(
                    output.status.success(),
                    "{track} at {at:.3} ms (jump {from:.0} -> {to:.0}): {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let stderr = String::from_utf8_lossy(&output.stderr);
                ensure!(
                    !stderr.contains("damaged"),
                    "{track} at {at:.3} ms: a jump taken for damage: {stderr}"
                );
                let stamp = png_stamp(&png)?;
                ensure!(
                    stamp.is_some_and(|s| (f64::from(s) - expected).abs() <= 1.0),
                    "{track} at {at:.3} ms (jump {from:.0} -> {to:.0}): stamp {stamp:?}, ffprobe's frame {expected:.1}"
                );
                checked += 1;
            }
        }
    }
    eprintln!("{checked} snapshots across the jumps show ffprobe's frame");
    Ok(())
}
