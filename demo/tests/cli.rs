//! `meeting-replay snapshot` and `play` as a person runs them: the PNG's stamp is read back
//! from its pixels and compared with GStreamer's own decode of the same file.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use tandem::MediaTime;
use tandem_tests::fixture_meeting;
use tandem_tests::player::video_oracle;

fn meeting_replay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meeting-replay"))
}

/// The stamp in a PNG written by `snapshot` (luma from RGB, BT.601).
fn png_stamp(path: &Path) -> Result<(u32, u32, Option<u32>)> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    ensure!(info.color_type == png::ColorType::Rgb, "not RGB: {:?}", info.color_type);
    let (w, h) = (info.width as usize, info.height as usize);
    let luma: Vec<u8> = buf[..w * h * 3]
        .chunks_exact(3)
        .map(|p| (0.257 * p[0] as f32 + 0.504 * p[1] as f32 + 0.098 * p[2] as f32 + 16.0) as u8)
        .collect();
    Ok((info.width, info.height, tandem_fixtures::stamp::read_stamp(&luma, w, w, h)))
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
        let (w, h, stamp) = png_stamp(&png)?;
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
    ensure!(stdout.contains("playing headless at 0:09.000"), "{stdout}");
    ensure!(stdout.contains("seek benchmark"), "the caption current at 9.6 s was not printed:\n{stdout}");
    ensure!(stdout.contains("stopped at 0:12"), "{stdout}");
    Ok(())
}

/// An X screenshot (`xwd -root`) as RGB rows.
struct Screenshot {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Screenshot {
    fn take(display: &str) -> Result<Screenshot> {
        let out = Command::new("xwd")
            .args(["-root", "-silent", "-display", display])
            .output()
            .context("running xwd")?;
        ensure!(out.status.success(), "xwd failed: {}", String::from_utf8_lossy(&out.stderr));
        let d = out.stdout;
        let be = |at: usize| -> Result<usize> {
            let b = d.get(at..at + 4).context("short XWD header")?;
            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let (header, width, height) = (be(0)?, be(16)?, be(20)?);
        let (byte_order, bpp, line, ncolors) = (be(28)?, be(44)?, be(48)?, be(76)?);
        let (red, green, blue) = (be(56)? as u32, be(60)? as u32, be(64)? as u32);
        ensure!(bpp == 32, "XWD with {bpp} bits per pixel");
        let data = d.get(header + ncolors * 12..).context("XWD without pixels")?;
        let shift = |mask: u32| mask.trailing_zeros();
        let mut rgb = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                let at = y * line + x * 4;
                let p = data.get(at..at + 4).context("short XWD pixels")?;
                let v = if byte_order == 0 {
                    u32::from_le_bytes([p[0], p[1], p[2], p[3]])
                } else {
                    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
                };
                rgb.push([
                    ((v & red) >> shift(red)) as u8,
                    ((v & green) >> shift(green)) as u8,
                    ((v & blue) >> shift(blue)) as u8,
                ]);
            }
        }
        Ok(Screenshot { width, height, rgb })
    }

    fn luma(&self, x: usize, y: usize) -> u8 {
        let p = self.rgb.get(y * self.width + x).copied().unwrap_or([0, 0, 0]);
        (0.257 * p[0] as f32 + 0.504 * p[1] as f32 + 0.098 * p[2] as f32 + 16.0) as u8
    }

    /// The stamp drawn at (x, y) with blocks of `block` pixels (16 at full size).
    fn stamp_at(&self, x: usize, y: usize, block: usize) -> Option<u32> {
        let bit = |i: usize| self.luma(x + i * block + block / 2, y + block / 2) >= 128;
        let (mut value, mut parity) = (0u32, false);
        for i in 0..24 {
            let b = bit(i);
            value = value << 1 | b as u32;
            parity ^= b;
        }
        (bit(24) == parity && value > 0).then_some(value)
    }

    fn save_png(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path)?;
        let mut encoder =
            png::Encoder::new(std::io::BufWriter::new(file), self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let flat: Vec<u8> = self.rgb.iter().flatten().copied().collect();
        encoder.write_header()?.write_image_data(&flat)?;
        Ok(())
    }
}

/// Kills the child when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn play_shows_the_video_tracks_in_a_grid_window_in_sync() -> Result<()> {
    // Xvfb picks a free display and writes its number to the pipe once it accepts clients.
    let mut xvfb = Command::new("Xvfb")
        .args(["-displayfd", "1", "-screen", "0", "1600x900x24", "-nolisten", "tcp"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting Xvfb (run scripts/install-deps.sh)")?;
    let stdout = xvfb.stdout.take().context("Xvfb without stdout")?;
    let _xvfb = Child(xvfb);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let number: u32 = line.trim().parse().with_context(|| format!("Xvfb said {line:?}"))?;
    let display = format!(":{number}");
    let display = display.as_str();
    let dir = fixture_meeting("meeting");
    let _player = Child(
        meeting_replay()
            .env("DISPLAY", display)
            .args(["play", &dir.to_string_lossy(), "--at", "12", "--for", "8"])
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let shot = Screenshot::take(display)?;
    let saved = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grid-window.png");
    shot.save_png(&saved)?;
    // The grid: alice (640x360) at the window's origin, bob to her right, the screen share
    // (1280x720 shown at half size) below her. Find the window by alice's stamp.
    let origin = (0..200)
        .flat_map(|y| (0..200).map(move |x| (x, y)))
        .find(|&(x, y)| shot.stamp_at(x, y, 16).is_some_and(|s| (12_000..20_000).contains(&s)));
    let Some((x, y)) = origin else { anyhow::bail!("no alice tile in the screenshot ({})", saved.display()) };
    let alice = shot.stamp_at(x, y, 16);
    let bob = shot.stamp_at(x + 640, y, 16);
    let screen = shot.stamp_at(x, y + 360, 8);
    eprintln!("window at {x},{y}: alice {alice:?}, bob {bob:?}, screen {screen:?} ({})", saved.display());
    let (Some(alice), Some(bob), Some(screen)) = (alice, bob, screen) else {
        anyhow::bail!("a tile without a readable stamp: {:?}", (alice, bob, screen));
    };
    // One screenshot shows one instant: each tile is within a frame of the others.
    ensure!(alice.abs_diff(bob) <= 80, "alice {alice} and bob {bob} disagree");
    ensure!(alice.abs_diff(screen) <= 250, "alice {alice} and the screen share {screen} disagree");
    Ok(())
}
