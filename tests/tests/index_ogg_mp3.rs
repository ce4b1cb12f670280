//! Ogg (Vorbis, Opus) and MP3 indexes against ffprobe, on files made at run time by ffmpeg and
//! by GStreamer's muxers.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use tandem::index::{Codec, TrackIndex};
use tandem::source::CountingSource;
use tandem::{FileSource, MediaTime, RangeSource};
use tandem_tests::{check_against_ffprobe, ffmpeg, ffprobe_packets, gst_launch};

fn ffprobe_duration(path: &Path) -> Result<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .context("ffprobe is required")?;
    ensure!(out.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().context("ffprobe duration")
}

fn lavfi_sine(seconds: u32) -> String {
    format!("sine=frequency=440:duration={seconds}")
}

/// Everything the brief asks of one file; returns the opened index for codec-specific checks.
fn check_file(path: &Path, codec: Codec, seek_reads_max: u64) -> Result<TrackIndex> {
    let name = path.display().to_string();
    let report = check_against_ffprobe(path).with_context(|| format!("oracle on {name}"))?;
    ensure!(
        report.open_reads <= 3 && report.open_bytes <= 4096 + 64 * 1024 + 8 * 1024,
        "{name}: opening cost {} reads, {} bytes",
        report.open_reads,
        report.open_bytes
    );
    let src = FileSource::open(path)?;
    let index = TrackIndex::open("t", &src)?;
    ensure!(index.info().codec == codec, "{name}: codec {:?}", index.info().codec);
    let ours = index.info().duration.context("duration")?.as_secs_f64();
    let theirs = ffprobe_duration(path)?;
    ensure!((ours - theirs).abs() <= 0.030, "{name}: duration {ours} vs ffprobe {theirs}");

    // A fresh index's first seek pays for whatever walking it needs (MP3: the frame table).
    {
        let fresh = TrackIndex::open("fresh", &src)?;
        let counted = CountingSource::new(&src);
        let t = index.info().duration.context("duration")?;
        fresh.seek(&counted, MediaTime::from_nanos(t.as_nanos() / 2))?;
        let cost = counted.cost();
        ensure!(cost.reads <= seek_reads_max, "{name}: first seek took {} reads", cost.reads);
    }
    let keyframes = index.keyframes(&src)?;
    let last = keyframes.last().context("keyframes")?.pts;
    let mut targets: Vec<MediaTime> =
        (0..=20).map(|i| MediaTime::from_nanos(last.as_nanos() / 20 * i)).collect();
    targets.push(MediaTime::from_millis(-50));
    targets.push(last.saturating_add(MediaTime::from_secs(5)));
    targets.push(MediaTime::from_nanos(last.as_nanos() / 3 + 1));
    for t in targets {
        let counted = CountingSource::new(&src);
        let k = index.seek(&counted, t)?;
        let expected = keyframes.iter().rev().find(|k| k.pts <= t).unwrap_or(&keyframes[0]);
        ensure!(&k == expected, "{name}: seek({t}) gave {k:?}, expected {expected:?}");
        let cost = counted.cost();
        ensure!(cost.reads <= seek_reads_max, "{name}: seek({t}) took {} reads", cost.reads);
        // Samples from the seek point start at the keyframe's time.
        let batch = index.samples(&src, k.pos, 4)?;
        let first = batch.samples.first().context("samples after seek")?;
        ensure!(first.pts == k.pts, "{name}: first sample at {} vs keyframe {}", first.pts, k.pts);
    }
    Ok(index)
}

/// Constant-bitrate MP3: a seek near the end on a fresh index reads one small window where the
/// layout puts the frame (not the whole file), and gives exactly what the full walk gives.
fn check_cheap_late_seek(path: &Path) -> Result<()> {
    let name = path.display().to_string();
    let src = FileSource::open(path)?;
    let walked = TrackIndex::open("walk", &src)?;
    let walk_cost = CountingSource::new(&src);
    let keyframes = walked.keyframes(&walk_cost)?;
    let last = keyframes.last().context("keyframes")?.pts;
    ensure!(last > MediaTime::from_secs(590), "{name}: only {last} long");
    for t in
        [last.saturating_sub(MediaTime::from_secs(5)), MediaTime::from_nanos(last.as_nanos() / 7 * 6 + 1)]
    {
        let fresh = TrackIndex::open("fresh", &src)?;
        let counted = CountingSource::new(&src);
        let k = fresh.seek(&counted, t)?;
        let cost = counted.cost();
        eprintln!("{name}: seek({t}) cost {cost:?}; the full walk cost {:?}", walk_cost.cost());
        ensure!(cost.reads <= 3 && cost.bytes < 64 * 1024, "{name}: seek({t}) cost {cost:?}");
        let expected = keyframes.iter().rev().find(|k| k.pts <= t).context("keyframe before t")?;
        ensure!(&k == expected, "{name}: seek({t}) gave {k:?}, the walk {expected:?}");
        // Samples from there need no walk either, and agree with the walk.
        let batch = fresh.samples(&counted, k.pos, 64)?;
        let at = keyframes.iter().position(|x| x == expected).context("position")?;
        let want: Vec<_> = keyframes[at..].iter().take(64).map(|x| (x.pts, x.offset, x.size)).collect();
        let got: Vec<_> = batch.samples.iter().map(|s| (s.pts, s.offset, s.size)).collect();
        ensure!(got == want, "{name}: samples after seek({t}) differ from the walk");
        ensure!(batch.next == keyframes.get(at + 64).map(|k| k.pos), "{name}: next batch position");
        let cost = counted.cost();
        ensure!(cost.bytes < 128 * 1024, "{name}: seek and one batch cost {cost:?}");
    }
    Ok(())
}

fn tmp() -> Result<tempfile::TempDir> {
    Ok(tempfile::tempdir()?)
}

fn out(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

#[test]
fn ffmpeg_vorbis() -> Result<()> {
    let dir = tmp()?;
    let path = out(&dir, "v.ogg");
    ffmpeg(&["-f", "lavfi", "-i", &lavfi_sine(30), "-c:a", "libvorbis", "-q:a", "3", s(&path)])?;
    // Ogg seeks place their probes by granule (interpolation), not by halving the file.
    let index = check_file(&path, Codec::Vorbis, 3)?;
    let config = index.info().codec_config.clone().context("vorbis config")?;
    ensure!(config[0] == 2, "Xiph lacing starts with 2");
    Ok(())
}

#[test]
fn ffmpeg_opus_and_sample_data() -> Result<()> {
    let dir = tmp()?;
    let path = out(&dir, "o.opus");
    ffmpeg(&["-f", "lavfi", "-i", &lavfi_sine(600), "-c:a", "libopus", "-b:a", "48k", s(&path)])?;
    // Ten minutes: halving would take about six probes; interpolation lands in one or two.
    let index = check_file(&path, Codec::Opus, 3)?;
    let src = FileSource::open(&path)?;
    let packets = ffprobe_packets(&path)?;
    for t in [1_000i64, 123_456, 400_000] {
        let k = index.seek(&src, MediaTime::from_millis(t))?;
        let batch = index.samples(&src, k.pos, 1)?;
        let sample = batch.samples.first().context("sample")?;
        let data = index.sample_data(&src, sample)?;
        // The packet itself: libopus at 48 kb/s writes 20 ms CELT frames, TOC config 31
        // (fullband, 20 ms), one frame per packet (code 0).
        ensure!(!data.is_empty() && data[0] >> 3 == 31 && data[0] & 3 == 0, "TOC {:#04x}", data[0]);
        let ms = sample.pts.as_nanos() as f64 / 1e6;
        let probe = packets
            .iter()
            .find(|p| p.pts_ms.is_some_and(|p| (p - ms).abs() <= 1.0))
            .context("ffprobe packet at the seek time")?;
        ensure!(probe.size == data.len() as u64, "size {} vs ffprobe {}", data.len(), probe.size);
    }
    Ok(())
}

#[test]
fn gstreamer_vorbis_and_opus() -> Result<()> {
    let dir = tmp()?;
    let v = out(&dir, "g.ogg");
    gst_launch("audiotestsrc num-buffers=1500 ! audioconvert ! vorbisenc ! oggmux", &v)?;
    check_file(&v, Codec::Vorbis, 12)?;
    let o = out(&dir, "g.opus");
    gst_launch("audiotestsrc num-buffers=1500 ! audioconvert ! audioresample ! opusenc ! oggmux", &o)?;
    check_file(&o, Codec::Opus, 12)?;
    Ok(())
}

#[test]
fn ffmpeg_mp3_vbr_and_cbr() -> Result<()> {
    let dir = tmp()?;
    let vbr = out(&dir, "vbr.mp3");
    ffmpeg(&["-f", "lavfi", "-i", &lavfi_sine(600), "-c:a", "libmp3lame", "-q:a", "4", s(&vbr)])?;
    check_file(&vbr, Codec::Mp3, 30)?;
    // VBR walks (in 1 MiB windows) only as far as the target: a seek at a tenth reads about a
    // tenth of the file, rounded up to a window.
    {
        let src = FileSource::open(&vbr)?;
        let fresh = TrackIndex::open("fresh", &src)?;
        let counted = CountingSource::new(&src);
        fresh.seek(&counted, MediaTime::from_secs(60))?;
        let cost = counted.cost();
        eprintln!("VBR {} bytes: seek at 1:00 cost {cost:?}", src.len());
        ensure!(
            cost.bytes <= src.len() / 10 + 1024 * 1024 && cost.bytes < src.len() * 3 / 4,
            "VBR seek at 1 of 10 minutes read {cost:?} of {}",
            src.len()
        );
    }
    // CBR: ffmpeg writes a LAME "Info" frame.
    let cbr = out(&dir, "cbr.mp3");
    ffmpeg(&["-f", "lavfi", "-i", &lavfi_sine(600), "-c:a", "libmp3lame", "-b:a", "128k", s(&cbr)])?;
    check_file(&cbr, Codec::Mp3, 30)?;
    check_cheap_late_seek(&cbr)?;
    // CBR without any Xing/Info frame.
    let bare = out(&dir, "cbr-bare.mp3");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &lavfi_sine(600),
        "-c:a",
        "libmp3lame",
        "-b:a",
        "128k",
        "-write_xing",
        "0",
        s(&bare),
    ])?;
    check_file(&bare, Codec::Mp3, 30)?;
    check_cheap_late_seek(&bare)?;
    let mono = out(&dir, "mono22.mp3");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &lavfi_sine(20),
        "-ar",
        "22050",
        "-c:a",
        "libmp3lame",
        "-b:a",
        "32k",
        s(&mono),
    ])?;
    check_file(&mono, Codec::Mp3, 30)?;
    Ok(())
}

#[test]
fn gstreamer_mp3() -> Result<()> {
    let dir = tmp()?;
    let x = out(&dir, "g.mp3");
    gst_launch("audiotestsrc num-buffers=1500 ! audioconvert ! lamemp3enc target=quality quality=4 ! xingmux ! id3v2mux", &x)?;
    check_file(&x, Codec::Mp3, 30)?;
    let c = out(&dir, "gc.mp3");
    gst_launch(
        "audiotestsrc num-buffers=25900 ! audioconvert ! lamemp3enc target=bitrate bitrate=96 cbr=true",
        &c,
    )?;
    check_file(&c, Codec::Mp3, 30)?;
    check_cheap_late_seek(&c)?;
    Ok(())
}

#[test]
fn in_memory_sources_work_too() -> Result<()> {
    let dir = tmp()?;
    let path = out(&dir, "o.opus");
    ffmpeg(&["-f", "lavfi", "-i", &lavfi_sine(3), "-c:a", "libopus", s(&path)])?;
    let bytes = bytes::Bytes::from(std::fs::read(&path)?);
    let index = TrackIndex::open("mem", &bytes)?;
    let keyframes = index.keyframes(&bytes)?;
    let first = keyframes.first().context("keyframes")?;
    // ffprobe puts the first Opus packet at -pre_skip / 48000.
    ensure!(first.pts < MediaTime::ZERO, "first Opus packet at {}", first.pts);
    // The same index over the file on disk gives the same keyframes.
    let from_file = index.keyframes(&FileSource::open(&path)?)?;
    ensure!(from_file == keyframes, "in-memory and file sources disagree");
    Ok(())
}
