//! The Matroska/WebM index against ffprobe on files made by ffmpeg and GStreamer at test time:
//! WebM with Cues, Matroska H.264, Matroska without Cues (written to a pipe), Opus and Vorbis
//! WebM, and a live-style WebM (unknown sizes, no Cues) from GStreamer's webmmux.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use tandem::index::{Codec, Container, Keyframe, TrackIndex};
use tandem::source::CountingSource;
use tandem::{FileSource, MediaTime};
use tandem_tests::{check_against_ffprobe, ffmpeg, gst_launch};

const HEAD: u64 = 4096;

fn make(dir: &Path, name: &str, args: &[&str]) -> Result<PathBuf> {
    let out = dir.join(name);
    let mut all: Vec<&str> = args.to_vec();
    let out_str = out.to_str().context("utf-8 path")?;
    all.push(out_str);
    ffmpeg(&all)?;
    Ok(out)
}

fn vp8_webm(dir: &Path) -> Result<PathBuf> {
    make(
        dir,
        "vp8.webm",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=24:duration=12",
            "-c:v",
            "libvpx",
            "-g",
            "50",
            "-keyint_min",
            "50",
        ],
    )
}

/// The size of the Cues element, found by its ID (the test's own scan, not the index's).
fn cues_size(path: &Path) -> Result<u64> {
    let data = std::fs::read(path)?;
    let at = data.windows(4).rposition(|w| w == [0x1C, 0x53, 0xBB, 0x6B]).context("no Cues ID in file")?;
    let size = data.get(at + 4..at + 12).context("short")?;
    let len = size[0].leading_zeros() as usize + 1;
    let mut value = u64::from(size[0]) & ((1u64 << (8 - len)) - 1);
    for &b in &size[1..len] {
        value = (value << 8) | u64::from(b);
    }
    Ok(4 + len as u64 + value)
}

fn assert_cheap_open(path: &Path) -> Result<()> {
    let report = check_against_ffprobe(path)?;
    let file_len = std::fs::metadata(path)?.len();
    let cues = cues_size(path)?;
    eprintln!("{}: {report:?}, Cues {cues} bytes, file {file_len} bytes", path.display());
    ensure!(report.open_reads <= 3, "{}: {} reads to open", path.display(), report.open_reads);
    ensure!(
        report.open_bytes <= HEAD + cues + 600,
        "{}: open read {} bytes; head {HEAD} + Cues {cues} (file {file_len})",
        path.display(),
        report.open_bytes
    );
    ensure!(report.open_bytes < file_len / 2, "{}: open read half the file", path.display());
    Ok(())
}

#[test]
fn vp8_webm_with_cues_matches_ffprobe_and_opens_cheaply() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = vp8_webm(dir.path())?;
    assert_cheap_open(&path)?;
    let src = FileSource::open(&path)?;
    let index = TrackIndex::open("vp8", &src)?;
    let info = index.info();
    assert_eq!(info.container, Container::WebM);
    assert_eq!(info.codec, Codec::Vp8);
    assert_eq!(info.timescale, 1000);
    assert_eq!(info.video.map(|v| (v.width, v.height)), Some((320, 240)));
    let duration = info.duration.context("ffmpeg writes Duration")?;
    assert!((duration.as_millis() - 12_000).abs() <= 50, "duration {duration}");
    Ok(())
}

#[test]
fn h264_matroska_matches_ffprobe() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = make(
        dir.path(),
        "h264.mkv",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25:duration=10",
            "-c:v",
            "libx264",
            "-g",
            "48",
            "-bf",
            "2",
        ],
    )?;
    assert_cheap_open(&path)?;
    let src = FileSource::open(&path)?;
    let index = TrackIndex::open("h264", &src)?;
    assert_eq!(index.info().container, Container::Matroska);
    assert_eq!(index.info().codec, Codec::H264);
    let avcc = index.info().codec_config.clone().context("avcC")?;
    assert_eq!(avcc.first(), Some(&1), "avcC starts with configurationVersion 1");
    check_seek(&index, &src, false)?;
    Ok(())
}

#[test]
fn matroska_without_cues_walks_clusters() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nocues.mkv");
    // A pipe is not seekable, so ffmpeg writes neither Cues nor Duration nor sizes it would
    // have to go back for.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=24:duration=8"])
        .args(["-c:v", "libvpx", "-g", "30", "-f", "matroska", "pipe:1"])
        .output()
        .context("ffmpeg is required")?;
    ensure!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&path, &out.stdout)?;
    ensure!(cues_size(&path).is_err(), "piped Matroska should have no Cues");
    let report = check_against_ffprobe(&path)?;
    assert_eq!(report.ours, 7);
    let src = FileSource::open(&path)?;
    let index = TrackIndex::open("nocues", &src)?;
    assert!(index.open_cost().reads <= 2, "head and tail: {:?}", index.open_cost());
    check_duration(&index, &path)?;
    check_seek(&index, &src, true)?;
    check_bisection_equals_walk(&index, &src)?;
    Ok(())
}

#[test]
fn opus_and_vorbis_webm_match_ffprobe() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sine = ["-f", "lavfi", "-i", "sine=frequency=440:duration=6"];
    for (name, encoder, codec) in
        [("opus.webm", "libopus", Codec::Opus), ("vorbis.webm", "libvorbis", Codec::Vorbis)]
    {
        let mut args = sine.to_vec();
        args.extend(["-c:a", encoder]);
        let path = make(dir.path(), name, &args)?;
        let report = check_against_ffprobe(&path)?;
        ensure!(report.ours >= 1, "{name}: {report:?}");
        let src = FileSource::open(&path)?;
        let index = TrackIndex::open(name, &src)?;
        let info = index.info();
        assert_eq!(info.codec, codec);
        assert_eq!(info.audio.map(|a| a.channels), Some(1));
        let config = info.codec_config.clone().context("codec private")?;
        if codec == Codec::Opus {
            assert!(config.starts_with(b"OpusHead"), "{name}");
        } else {
            assert_eq!(config.first(), Some(&2), "{name}: Xiph lacing of 3 headers");
        }
        // Every audio packet ffprobe sees, we see, at the same time and bytes.
        let packets = tandem_tests::ffprobe_packets(&path)?;
        let first = index.keyframes(&src)?.first().copied().context("keyframe")?;
        let batch = index.samples(&src, first.pos, 100_000)?;
        assert_eq!(batch.samples.len(), packets.len(), "{name}");
        for (ours, theirs) in batch.samples.iter().zip(&packets) {
            let ms = ours.pts.as_nanos() as f64 / 1e6;
            let want = theirs.pts_ms.context("pts")?;
            ensure!((ms - want).abs() <= 1.0, "{name}: sample at {ms} ms, ffprobe {want} ms");
            assert_eq!(ours.size, theirs.size, "{name}");
            // ffprobe's pos is the block's start (track number, timestamp, flags: 4 bytes here).
            assert_eq!(theirs.pos.map(|p| p + 4), Some(ours.offset), "{name}");
        }
        assert_eq!(batch.next, None);
    }
    Ok(())
}

#[test]
fn live_webm_from_gstreamer_unknown_sizes_no_cues() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("live.webm");
    gst_launch(
        "videotestsrc num-buffers=240 ! vp8enc keyframe-max-dist=60 ! webmmux streamable=true",
        &path,
    )?;
    let report = check_against_ffprobe(&path)?;
    assert_eq!(report.ours, 4);
    let src = FileSource::open(&path)?;
    let index = TrackIndex::open("live", &src)?;
    // The last cluster starts more than 64 KiB before the end: a second tail read.
    assert_eq!(index.open_cost().reads, 3, "head and tail");
    check_duration(&index, &path)?;
    check_seek(&index, &src, true)?;
    check_bisection_equals_walk(&index, &src)?;
    // All 240 frames, in chunks that resume mid-cluster.
    let mut pos = Some(index.keyframes(&src)?[0].pos);
    let mut total = 0;
    let mut last = None;
    while let Some(at) = pos {
        let batch = index.samples(&src, at, 7)?;
        if batch.samples.is_empty() {
            break;
        }
        for s in &batch.samples {
            if let Some(prev) = last {
                assert!(s.pts > prev, "decode order of a stream without B-frames");
            }
            last = Some(s.pts);
        }
        total += batch.samples.len();
        pos = batch.next;
    }
    assert_eq!(total, 240);
    Ok(())
}

#[test]
fn seek_in_vp8_webm_with_cues() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = vp8_webm(dir.path())?;
    let src = FileSource::open(&path)?;
    let index = TrackIndex::open("vp8", &src)?;
    check_seek(&index, &src, true)
}

/// Seeks to several times: the answer is the greatest keyframe at or before t, samples from it
/// start with that keyframe, and (for VP8) its bytes start with a VP8 keyframe start code.
fn check_seek(index: &TrackIndex, src: &FileSource, vp8: bool) -> Result<()> {
    let keyframes = index.keyframes(src)?;
    ensure!(!keyframes.is_empty());
    for ms in [0i64, 1, 1000, 2083, 2500, 4200, 6000, 7999, 11_000, 60_000] {
        let t = MediaTime::from_millis(ms);
        let k = index.seek(src, t)?;
        let want = keyframes.iter().rev().find(|k| k.pts <= t).unwrap_or(&keyframes[0]);
        assert_eq!(k.pts, want.pts, "seek({t})");
        assert!(k.pts <= t || k.pts == keyframes[0].pts);
        let batch = index.samples(src, k.pos, 8)?;
        let first = batch.samples.first().context("samples after a keyframe")?;
        assert!(first.keyframe, "seek({t}): first sample is a keyframe");
        assert_eq!(first.pts, k.pts, "seek({t})");
        assert!(
            k.offset <= first.offset && first.end() <= k.offset + k.size,
            "seek({t}): sample inside keyframe range"
        );
        if vp8 {
            let data = index.sample_data(src, first)?;
            assert_eq!(data.get(3..6), Some(&[0x9d, 0x01, 0x2a][..]), "seek({t}): VP8 keyframe start code");
        }
        let (kf, range) = index.range_to_show(src, t)?;
        assert_eq!(kf, k);
        assert!(range.start <= first.offset && range.end >= first.end());
    }
    Ok(())
}

#[test]
fn gstreamer_webm_with_cues_matches_ffprobe() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gst.webm");
    gst_launch(
        "videotestsrc num-buffers=240 ! video/x-raw,framerate=30/1 ! vp8enc keyframe-max-dist=30 ! webmmux",
        &path,
    )?;
    assert_cheap_open(&path)?;
    let src = FileSource::open(&path)?;
    let index = TrackIndex::open("gst", &src)?;
    assert_eq!(index.keyframes(&src)?.len(), 8);
    check_seek(&index, &src, true)
}

#[test]
fn ffmpeg_video_with_audio_and_cues_in_front() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let inputs = [
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=24:duration=10",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=10",
        "-c:v",
        "libvpx",
        "-g",
        "40",
        "-c:a",
        "libopus",
    ];
    let back = make(dir.path(), "av.webm", &inputs)?;
    assert_cheap_open(&back)?;
    let mut front_args = inputs.to_vec();
    front_args.extend(["-cues_to_front", "1"]);
    let front = make(dir.path(), "av-front.webm", &front_args)?;
    let report = check_against_ffprobe(&front)?;
    assert!(report.open_reads <= 2, "{report:?}");
    for path in [back, front] {
        let src = FileSource::open(&path)?;
        let index = TrackIndex::open("av", &src)?;
        assert_eq!(index.info().codec, Codec::Vp8, "video is chosen over audio");
        check_seek(&index, &src, true)?;
    }
    Ok(())
}

/// The end of the last packet of stream 0 by ffprobe (`format=duration` is N/A for files
/// written without Duration), in milliseconds, and that packet's duration.
fn ffprobe_end_ms(path: &Path) -> Result<(f64, f64)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .context("ffprobe is required")?;
    ensure!(out.status.success(), "ffprobe: {}", String::from_utf8_lossy(&out.stderr));
    let format = String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().ok();
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "0", "-show_entries", "packet=pts_time,duration_time"])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .context("ffprobe is required")?;
    ensure!(out.status.success(), "ffprobe: {}", String::from_utf8_lossy(&out.stderr));
    let mut end: Option<(f64, f64)> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut fields = line.split(',').map(|f| f.trim().parse::<f64>().ok());
        if let (Some(Some(pts)), Some(Some(duration))) = (fields.next(), fields.next()) {
            let e = (pts + duration) * 1000.0;
            if end.is_none_or(|(best, _)| e > best) {
                end = Some((e, duration * 1000.0));
            }
        }
    }
    let (last, frame) = end.context("ffprobe lists no packets")?;
    Ok((format.map_or(last, |f| f * 1000.0), frame))
}

/// The duration learned from the tail is ffprobe's within one frame (or 50 ms).
fn check_duration(index: &TrackIndex, path: &Path) -> Result<()> {
    let (want, frame) = ffprobe_end_ms(path)?;
    let got = index.info().duration.context("duration from the tail")?;
    let got = got.as_nanos() as f64 / 1e6;
    ensure!((got - want).abs() <= frame.max(50.0), "duration {got} ms, ffprobe {want} ms");
    Ok(())
}

/// Seeking (by bisection, without Cues) answers exactly what the forward walk lists, at many
/// times from before the start to past the end.
fn check_bisection_equals_walk(index: &TrackIndex, src: &FileSource) -> Result<()> {
    let keyframes = index.keyframes(src)?;
    let end = index.info().duration.map_or(10_000, |d| d.as_millis()) + 1000;
    for ms in (-500..end).step_by(97).chain([0, end * 10]) {
        let t = MediaTime::from_millis(ms);
        let want: Keyframe = *keyframes.iter().rev().find(|k| k.pts <= t).unwrap_or(&keyframes[0]);
        assert_eq!(index.seek(src, t)?, want, "seek({t})");
    }
    Ok(())
}

/// A two-minute live-style WebM: bisection seeks read a fraction of what walking forward does.
#[test]
fn long_live_webm_seeks_by_bisection() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("long.webm");
    // videotestsrc -> vp8enc (keyframe every 5 s, 256 kbps) -> webmmux streamable (no Cues, no
    // Duration, unknown sizes) -> file
    gst_launch("videotestsrc num-buffers=3000 ! video/x-raw,width=320,height=240,framerate=25/1 ! vp8enc keyframe-max-dist=125 target-bitrate=256000 deadline=1 ! webmmux streamable=true", &path)?;
    let file_len = std::fs::metadata(&path)?.len();
    let src = FileSource::open(&path)?;
    let index = TrackIndex::open("long", &src)?;
    // GStreamer's clusters are whole groups of pictures (~160 KB here): the tail takes two
    // reads, at most 256 KiB in all.
    let open = index.open_cost();
    eprintln!("open: {open:?}");
    ensure!(open.reads <= 3 && open.bytes <= 4096 + 256 * 1024, "head and tail: {open:?}");
    check_duration(&index, &path)?;
    let duration = index.info().duration.context("duration")?;
    assert!((duration.as_millis() - 120_000).abs() <= 50, "{duration}");

    let walk = CountingSource::new(FileSource::open(&path)?);
    let keyframes = index.keyframes(&walk)?;
    let walk = walk.cost();
    ensure!(keyframes.len() == 24, "{} keyframes", keyframes.len());
    for ms in [119_900i64, 115_000, 60_000, 30_500] {
        let t = MediaTime::from_millis(ms);
        let counted = CountingSource::new(FileSource::open(&path)?);
        let k = index.seek(&counted, t)?;
        let cost = counted.cost();
        let want = *keyframes.iter().rev().find(|k| k.pts <= t).context("keyframe")?;
        assert_eq!(k, want, "seek({t})");
        eprintln!("seek({t}): {cost:?}; forward walk (keyframes) {walk:?}; file {file_len} bytes");
        ensure!(cost.bytes * 3 < walk.bytes, "seek({t}) read {cost:?}, the forward walk {walk:?}");
        ensure!(cost.reads * 3 < walk.reads, "seek({t}) read {cost:?}, the forward walk {walk:?}");
    }
    check_bisection_equals_walk(&index, &src)
}
