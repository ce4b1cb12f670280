//! `meeting-replay snapshot` and `play` as a person runs them: the PNG's stamp is read back
//! from its pixels and compared with GStreamer's own decode of the same file.

mod common;

use std::process::Command;

use anyhow::{ensure, Context, Result};
use tandem::MediaTime;
use tandem_tests::fixture_meeting;
use tandem_tests::player::video_oracle;

fn meeting_replay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meeting-replay"))
}

#[test]
fn snapshot_writes_the_frame_on_screen_at_the_time_at_the_tracks_size() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let oracle = video_oracle(&dir)?;
    let out = tempfile::tempdir()?;
    for (track, at_ms, size) in [
        ("alice_video", 12_345, (640, 360)),
        ("screen_share", 33_500, (1280, 720)),
        ("bob_video", 41_010, (640, 360)),
    ] {
        let png = out.path().join(format!("{track}.png"));
        let status = meeting_replay()
            .args(["snapshot", &dir.to_string_lossy(), "--at", &format!("{at_ms}ms"), "--track", track, "-o"])
            .arg(&png)
            .status()
            .context("running meeting-replay")?;
        ensure!(status.success(), "snapshot of {track} failed: {status}");
        let (w, h, stamp) = common::png_stamp(&png)?;
        ensure!((w, h) == size, "{track}: {w}x{h}, expected {size:?}");
        let expected = oracle[track].on_screen_at(MediaTime::from_millis(at_ms));
        ensure!(stamp == expected, "{track} at {at_ms} ms: stamp {stamp:?}, expected {expected:?}");
    }
    // A time where the track shows nothing is a clear error, not a black picture.
    let output = meeting_replay()
        .args(["snapshot", &dir.to_string_lossy(), "--at", "28", "--track", "screen_share", "-o"])
        .arg(out.path().join("none.png"))
        .output()?;
    ensure!(!output.status.success(), "a snapshot between spans succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.contains("shows nothing"), "unclear error: {stderr}");
    Ok(())
}

#[test]
fn play_runs_headless_without_a_display_and_prints_captions_and_progress() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let output = meeting_replay()
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .args(["play", &dir.to_string_lossy(), "--at", "9", "--for", "3"])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "play failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    ensure!(stdout.contains("headless (no display (DISPLAY is not set))"), "{stdout}");
    ensure!(stdout.contains("at 0:09.000 in"), "{stdout}");
    ensure!(stdout.contains("seek benchmark"), "the caption current at 9.6 s was not printed:\n{stdout}");
    ensure!(stdout.contains("stopped at 0:12"), "{stdout}");
    Ok(())
}

/// Plays `meeting` headless from `at` to its end.
fn play_to_the_end(meeting: &str, at: &str) -> Result<()> {
    let dir = fixture_meeting(meeting);
    let output = meeting_replay()
        .env_remove("DISPLAY")
        .args(["play", &dir.to_string_lossy(), "--headless", "--at", at])
        .stdin(std::process::Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "play failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    ensure!(stdout.contains("headless (--headless)"), "{stdout}");
    ensure!(stdout.contains("end of meeting at"), "{stdout}");
    Ok(())
}

#[test]
fn headless_play_of_the_bundled_meeting_ends_by_itself_at_its_end() -> Result<()> {
    play_to_the_end("meeting", "45")
}

#[test]
fn headless_play_of_the_webrtc_meeting_ends_by_itself_at_its_end() -> Result<()> {
    play_to_the_end("meeting-webrtc", "0")
}

#[test]
fn q_on_stdin_ends_headless_play() -> Result<()> {
    use std::io::{BufRead, Write};
    let dir = fixture_meeting("meeting");
    let mut child = meeting_replay()
        .args(["play", &dir.to_string_lossy(), "--headless"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    // Wait for the first status line, then type q.
    for line in lines.by_ref() {
        if line?.contains("buffered:") {
            break;
        }
    }
    let typed = std::time::Instant::now();
    writeln!(stdin, "q")?;
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait()?;
    ensure!(status.success(), "play exited {status}");
    ensure!(typed.elapsed() < std::time::Duration::from_secs(5), "q took {:?}", typed.elapsed());
    ensure!(rest.iter().any(|l| l.starts_with("stopped at 0:0")), "{rest:?}");
    Ok(())
}
