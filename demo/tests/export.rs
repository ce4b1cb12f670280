//! `meeting-replay export` and the grid `snapshot`, read back by ffmpeg: every clip frame's
//! stamp (in its pixels) against GStreamer's own decode of the source files, the clicks in the
//! clip's audio against whole seconds of meeting time, and the clip's duration.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use common::{meeting_replay, stamp_at};
use tandem::MediaTime;
use tandem_tests::fixture_meeting;
use tandem_tests::meetings::paused_meeting;
use tandem_tests::player::{video_oracle, TrackFrames};

const FPS: u64 = 30;

/// A tile of the clip: the track it shows, its origin and the stamp's block size there.
struct Tile {
    track: &'static str,
    x: usize,
    y: usize,
    block: usize,
}

fn ffprobe(path: &Path, entries: &str) -> Result<String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", entries, "-of", "default=nw=1:nk=1"])
        .arg(path)
        .output()
        .context("running ffprobe (run scripts/install-deps.sh)")?;
    ensure!(out.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn ffmpeg_out(path: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(path).args(args).arg("-").output()?;
    ensure!(out.status.success(), "ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

fn export(meeting: &str, extra: &[&str], out: &Path) -> Result<String> {
    let output = meeting_replay().args(["export", meeting]).args(extra).arg("-o").arg(out).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(output.status.success(), "export failed: {stderr}");
    ensure!(stderr.contains("exporting: 100%"), "no progress shown: {stderr}");
    // Every track's frames came as they were needed: none waited out the stall limit.
    ensure!(!stderr.contains("WARN"), "the export warned: {stderr}");
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The stamps of the frame on screen at `t` and its neighbours: "within one frame".
fn within_one_frame(track: &TrackFrames, t: MediaTime) -> Vec<u32> {
    let Some(on_screen) = track.on_screen_at(t) else { return Vec::new() };
    let i = track.frames.iter().position(|(_, s)| *s == on_screen).unwrap_or(0);
    track.frames[i.saturating_sub(1)..(i + 2).min(track.frames.len())].iter().map(|(_, s)| *s).collect()
}

/// Checks a clip of `from_ms..to_ms`: size, duration, every frame of every tile, the clicks.
fn check_clip(
    clip: &Path,
    oracle: &HashMap<String, TrackFrames>,
    (from_ms, to_ms): (i64, i64),
    size: (usize, usize),
    tiles: &[Tile],
) -> Result<()> {
    let (w, h) = size;
    ensure!(ffprobe(clip, "stream=width")? == w.to_string(), "clip width");
    ensure!(ffprobe(clip, "stream=height")? == h.to_string(), "clip height");
    let duration: f64 = ffprobe(clip, "format=duration")?.parse()?;
    let wanted = (to_ms - from_ms) as f64 / 1000.0;
    ensure!((duration - wanted).abs() <= 1.0 / FPS as f64, "clip lasts {duration} s, not {wanted} s");

    let gray = ffmpeg_out(clip, &["-f", "rawvideo", "-pix_fmt", "gray"])?;
    let frames: Vec<&[u8]> = gray.chunks_exact(w * h).collect();
    let expected_frames = ((to_ms - from_ms) as u64 * FPS).div_ceil(1000) as usize;
    ensure!(frames.len() == expected_frames, "{} frames, expected {expected_frames}", frames.len());
    let mut shown = HashMap::new();
    for (k, frame) in frames.iter().enumerate() {
        // Frame k is at clip time k / FPS: meeting time from + k / FPS.
        let t = MediaTime::from_nanos(from_ms * 1_000_000 + (k as u64 * 1_000_000_000 / FPS) as i64);
        for tile in tiles {
            let got = stamp_at(|x, y| frame.get(y * w + x).copied().unwrap_or(0), tile.x, tile.y, tile.block);
            let allowed = within_one_frame(&oracle[tile.track], t);
            match got {
                // (Stamp 0, the first frame of a recording, reads as no stamp.)
                None => ensure!(
                    allowed.is_empty() || allowed.contains(&0),
                    "{} shows no stamp at {t}, expected {allowed:?}",
                    tile.track
                ),
                Some(s) => {
                    ensure!(
                        allowed.contains(&s),
                        "{} shows {s} at {t} (clip frame {k}), expected {allowed:?}",
                        tile.track
                    )
                }
            }
            *shown.entry(tile.track).or_insert(0) += got.is_some() as usize;
        }
    }
    eprintln!("{}: frames with a stamp per tile {shown:?}", clip.display());

    // Clicks: one at every whole second of meeting time (the first 25 ms of a clip are the AAC
    // encoder's priming; a click lasts 5 ms).
    let seconds: Vec<i64> = ((from_ms + 25 + 999) / 1000..=(to_ms - 10) / 1000).collect();
    check_clicks(clip, from_ms, &seconds.iter().map(|s| s * 1000).collect::<Vec<_>>())
}

/// The clicks heard in a clip that starts at meeting time `from_ms` are at `expected_ms`
/// (within 10 ms), and there are no others.
fn check_clicks(clip: &Path, from_ms: i64, expected_ms: &[i64]) -> Result<()> {
    let pcm = ffmpeg_out(clip, &["-f", "f32le", "-ac", "1", "-ar", "48000"])?;
    let samples: Vec<f32> =
        pcm.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let mut clicks: Vec<f64> = Vec::new();
    for i in tandem_fixtures::audio::find_clicks(&samples, 48_000) {
        let ms = from_ms as f64 + i as f64 / 48.0;
        if clicks.last().is_none_or(|l| ms - l > 400.0) {
            clicks.push(ms);
        }
    }
    ensure!(
        clicks.len() == expected_ms.len(),
        "clicks at {clicks:?} ms, expected one at each of {expected_ms:?} ms"
    );
    for (click, want) in clicks.iter().zip(expected_ms) {
        ensure!((click - *want as f64).abs() <= 10.0, "click at {click:.1} ms, expected {want} ms");
    }
    Ok(())
}

fn grid_tiles() -> Vec<Tile> {
    // Three video tracks: a 2x2 grid of 640x360 tiles; the screen share (1280x720) at half size.
    vec![
        Tile { track: "alice_video", x: 0, y: 0, block: 16 },
        Tile { track: "bob_video", x: 640, y: 0, block: 16 },
        Tile { track: "screen_share", x: 0, y: 360, block: 8 },
    ]
}

#[test]
fn the_grid_clip_shows_every_track_at_its_meeting_time_with_the_audio_in_sync() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let oracle = video_oracle(&dir)?;
    let out = tempfile::tempdir()?;
    let clip = out.path().join("grid.mp4");
    // 23.5 to 34: the screen share ends at 25 and comes back at 32, bob plays throughout.
    let said = export(&dir.to_string_lossy(), &["--from", "23.5", "--to", "34"], &clip)?;
    ensure!(said.contains("0:23.500 to 0:34.000"), "{said}");
    check_clip(&clip, &oracle, (23_500, 34_000), (1280, 720), &grid_tiles())
}

#[test]
fn one_track_is_exported_at_its_own_size() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let oracle = video_oracle(&dir)?;
    let out = tempfile::tempdir()?;
    let clip = out.path().join("screen.mp4");
    export(&dir.to_string_lossy(), &["--from", "30", "--to", "35", "--track", "screen_share"], &clip)?;
    let tiles = [Tile { track: "screen_share", x: 0, y: 0, block: 16 }];
    check_clip(&clip, &oracle, (30_000, 35_000), (1280, 720), &tiles)
}

#[test]
fn a_clip_exported_from_a_peer_over_loopback_is_in_sync() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let oracle = video_oracle(&dir)?;
    let out = tempfile::tempdir()?;
    let root = dir.parent().context("fixtures folder")?;
    let served = common::serve(root, out.path())?;
    let clip = out.path().join("remote.mp4");
    let target = format!("{}/meeting", served.id52);
    export(&target, &["--addr", &served.addr, "--from", "8", "--to", "12"], &clip)?;
    check_clip(&clip, &oracle, (8_000, 12_000), (1280, 720), &grid_tiles())
}

#[test]
fn a_clip_across_a_pause_cut_out_of_one_file_shows_each_frame_where_its_segment_puts_it() -> Result<()> {
    let out = tempfile::tempdir()?;
    let dir = paused_meeting(out.path(), &["alice_video", "bob_video", "mixed_audio"])?;
    let oracle = video_oracle(&dir)?;
    // alice, H.264 with B-frames in MP4: media 9 s at 6 s, decoded from its keyframe at 8 s;
    // bob, VP8 in WebM: media 10 s at 8 s, decoded from its keyframe at 8.417 s.
    for (track, from_ms, to_ms) in [("alice_video", 4_000, 8_000), ("bob_video", 6_000, 10_000)] {
        let clip = out.path().join(format!("{track}.mp4"));
        let (from, to) = ((from_ms / 1000).to_string(), (to_ms / 1000).to_string());
        export(&dir.to_string_lossy(), &["--from", &from, "--to", &to, "--track", track], &clip)?;
        let tiles = [Tile { track, x: 0, y: 0, block: 16 }];
        check_clip(&clip, &oracle, (from_ms, to_ms), (640, 360), &tiles)?;
    }
    Ok(())
}

/// Opus (decoded by GStreamer) with a recording pause cut out of its one file: neither the
/// rest of the packet that ends the first stretch (the click of media 6 s) nor the 80 ms the
/// decoder warms up on before the second (the click of media 9 s) is heard, both recorded
/// during the pause, and every click lands where its segment puts it.
#[test]
fn opus_across_a_pause_cut_out_of_one_file_plays_each_click_where_its_segment_puts_it() -> Result<()> {
    let out = tempfile::tempdir()?;
    let dir = paused_meeting(out.path(), &["alice_video", "voice"])?;
    let clip = out.path().join("voice.mp4");
    // One video track at its own size, with the meeting's audio: the voice.
    export(&dir.to_string_lossy(), &["--from", "4", "--to", "9", "--track", "alice_video"], &clip)?;
    // Media 0-5.998 s at 0-5.998 s: the click of media 5 s at 5 s. Media 9.05 s on from
    // 5.998 s: the clicks of media 10, 11 and 12 s at 6.948, 7.948 and 8.948 s.
    check_clicks(&clip, 4000, &[5000, 6948, 7948, 8948])
}

#[test]
fn a_grid_snapshot_shows_what_the_window_shows() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let oracle = video_oracle(&dir)?;
    let out = tempfile::tempdir()?;
    let png_path = out.path().join("grid.png");
    let status = meeting_replay()
        .args(["snapshot", &dir.to_string_lossy(), "--at", "28", "-o"])
        .arg(&png_path)
        .status()?;
    ensure!(status.success(), "snapshot failed");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path)?));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let (w, h) = (info.width as usize, info.height as usize);
    ensure!((w, h) == (1280, 720), "the grid is {w}x{h}");
    let luma = |x: usize, y: usize| {
        let o = (y * w + x) * 3;
        common::luma_of([buf[o], buf[o + 1], buf[o + 2]])
    };
    let at = MediaTime::from_secs(28);
    for tile in grid_tiles() {
        let got = stamp_at(luma, tile.x, tile.y, tile.block);
        let expected = oracle[tile.track].on_screen_at(at);
        ensure!(got == expected, "{} shows {got:?} at 28 s, expected {expected:?}", tile.track);
    }
    // Between its spans the screen share's tile is dark with the participant's name in light
    // letters, not black.
    let tile: Vec<u8> =
        (360..720).flat_map(|y| (0..640).map(move |x| (x, y))).map(|(x, y)| luma(x, y)).collect();
    let dark = tile.iter().filter(|&&l| (25..70).contains(&l)).count();
    let light = tile.iter().filter(|&&l| l > 180).count();
    ensure!(dark > tile.len() / 2 && light > 500, "the name tile: {dark} dark, {light} light pixels");
    Ok(())
}

#[test]
fn the_whole_webrtc_meeting_exports_to_its_end() -> Result<()> {
    // Tracks end inside the clip (the screen share at 15 s, bob at 17 s, everything at 20 s),
    // and two audio tracks (Opus and MP3) are mixed.
    let dir = fixture_meeting("meeting-webrtc");
    let oracle = video_oracle(&dir)?;
    let out = tempfile::tempdir()?;
    let clip = out.path().join("webrtc.mp4");
    export(&dir.to_string_lossy(), &["--from", "0", "--to", "20"], &clip)?;
    check_clip(&clip, &oracle, (0, 20_000), (1280, 720), &grid_tiles())
}
