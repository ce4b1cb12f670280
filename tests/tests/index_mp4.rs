//! MP4 indexes against ffprobe, on files muxed by ffmpeg and GStreamer at test time: moov at the
//! start and at the end, fragmented with and without sidx, audio only.

use std::path::{Path, PathBuf};

use tandem::index::{Container, TrackIndex};
use tandem::{FileSource, MediaTime, RangeSource};
use tandem_tests::{check_against_ffprobe, ffmpeg, gst_launch};

struct Files {
    root: PathBuf,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// Made once per test run, shared by the tests below.
fn make_files() -> &'static Files {
    static FILES: std::sync::OnceLock<Files> = std::sync::OnceLock::new();
    FILES.get_or_init(create_files)
}

fn create_files() -> Files {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("index_mp4");
    std::fs::create_dir_all(&root).expect("temp dir");
    let p = |n: &str| root.join(n).to_string_lossy().into_owned();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=30:duration=12",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=12",
        "-c:v",
        "libx264",
        "-g",
        "60",
        "-bf",
        "2",
        "-c:a",
        "aac",
        "-shortest",
        &p("end.mp4"),
    ])
    .expect("ffmpeg mp4");
    ffmpeg(&["-i", &p("end.mp4"), "-c", "copy", "-movflags", "faststart", &p("faststart.mp4")])
        .expect("faststart");
    ffmpeg(&["-i", &p("end.mp4"), "-c", "copy", "-movflags", "frag_keyframe+empty_moov", &p("frag.mp4")])
        .expect("fragmented");
    ffmpeg(&[
        "-i",
        &p("end.mp4"),
        "-c",
        "copy",
        "-movflags",
        "frag_keyframe+empty_moov+global_sidx",
        &p("sidx.mp4"),
    ])
    .expect("fragmented with sidx");
    ffmpeg(&["-i", &p("end.mp4"), "-vn", "-c", "copy", &p("audio.m4a")]).expect("audio only");
    gst_launch("videotestsrc num-buffers=300 ! video/x-raw,framerate=30/1,width=320,height=240 ! x264enc key-int-max=45 bframes=2 ! mp4mux", &root.join("gst.mp4")).expect("gst-launch");
    gst_launch("videotestsrc num-buffers=300 ! video/x-raw,framerate=30/1,width=320,height=240 ! x264enc key-int-max=45 bframes=2 ! mp4mux fragment-duration=1000", &root.join("gstfrag.mp4")).expect("gst-launch");
    Files { root }
}

#[test]
fn keyframes_match_ffprobe_for_every_muxer_layout() {
    let files = make_files();
    // (ffmpeg 5.1's own demuxer misreads its global_sidx output, so sidx.mp4 is checked
    // against GStreamer's qtdemux below instead.)
    for name in ["end.mp4", "faststart.mp4", "frag.mp4", "audio.m4a", "gst.mp4", "gstfrag.mp4"] {
        // The oracle fails on an empty index itself.
        check_against_ffprobe(&files.path(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
}

fn open(path: &Path) -> (FileSource, TrackIndex) {
    let src = FileSource::open(path).expect("open file");
    let index = TrackIndex::open("t", &src).expect("index");
    (src, index)
}

#[test]
fn opening_reads_only_box_headers_and_moov() {
    let files = make_files();
    for name in ["end.mp4", "faststart.mp4", "gst.mp4"] {
        let (src, index) = open(&files.path(name));
        assert_eq!(index.info().container, Container::Mp4);
        let cost = index.open_cost();
        // head (4 KiB) + at most one header read + the moov itself.
        assert!(cost.reads <= 3, "{name}: {cost:?}");
        let moov = moov_size(&files.path(name));
        assert!(cost.bytes <= 4096 + 16 + moov, "{name}: {cost:?} with a moov of {moov} bytes");
        assert!(cost.bytes < src.len() / 4, "{name}: read {} of {} bytes", cost.bytes, src.len());
    }
    for name in ["frag.mp4", "sidx.mp4", "gstfrag.mp4"] {
        let (_, index) = open(&files.path(name));
        assert_eq!(index.info().container, Container::FragmentedMp4, "{name}");
        assert!(index.open_cost().reads <= 4, "{name}: {:?}", index.open_cost());
    }
}

/// The `moov` size, found by walking top-level boxes.
fn moov_size(path: &Path) -> u64 {
    let data = std::fs::read(path).expect("read");
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let size = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        if &data[at + 4..at + 8] == b"moov" {
            return size as u64;
        }
        assert!(size >= 8, "walked into a bad box");
        at += size;
    }
    panic!("no moov in {}", path.display());
}

#[test]
fn seek_returns_the_latest_keyframe_and_samples_start_there() {
    let files = make_files();
    for name in ["end.mp4", "frag.mp4", "sidx.mp4", "gstfrag.mp4", "gst.mp4"] {
        let (src, index) = open(&files.path(name));
        let keyframes = index.keyframes(&src).expect("keyframes");
        for ms in [0, 1, 1999, 2000, 2001, 4500, 7777, 11_900, 60_000] {
            let t = MediaTime::from_millis(ms);
            let k = index.seek(&src, t).expect("seek");
            let expected =
                keyframes.iter().filter(|k| k.pts <= t).max_by_key(|k| k.pts).unwrap_or(&keyframes[0]);
            assert_eq!(k.pts, expected.pts, "{name} at {ms} ms");
            let batch = index.samples(&src, k.pos, 40).expect("samples");
            let first = batch.samples.first().expect("a sample");
            assert!(first.keyframe, "{name}: first sample after seek is not a keyframe");
            assert_eq!(first.pts, k.pts, "{name}");
            assert_eq!(first.offset, k.offset, "{name}");
            // H.264 in MP4 is length-prefixed: the first NAL length fits the sample.
            let data = index.sample_data(&src, first).expect("data");
            let nal = u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as u64;
            assert!(nal + 4 <= first.size, "{name}: NAL length {nal} in a {}-byte sample", first.size);
        }
    }
}

#[test]
fn samples_cover_the_whole_track_in_decode_order() {
    let files = make_files();
    for name in ["end.mp4", "frag.mp4", "gstfrag.mp4", "sidx.mp4"] {
        let (src, index) = open(&files.path(name));
        let first = index.seek(&src, MediaTime::ZERO).expect("seek");
        let mut pos = Some(first.pos);
        let mut all = Vec::new();
        while let Some(at) = pos {
            let batch = index.samples(&src, at, 97).expect("batch");
            assert!(!batch.samples.is_empty() || batch.next.is_none());
            all.extend(batch.samples);
            pos = batch.next;
        }
        assert!(all.len() >= 300, "{name}: at least 10 s at 30 fps, got {}", all.len());
        assert!(all.windows(2).all(|w| w[0].dts < w[1].dts), "{name}: decode order");
        let oracle = if name == "sidx.mp4" { "frag.mp4" } else { name };
        let probe = tandem_tests::ffprobe_packets(&files.path(oracle)).expect("ffprobe");
        assert_eq!(probe.len(), all.len(), "{name}");
        if name == "sidx.mp4" {
            // Same samples as frag.mp4, moved by the sidx box in front of them.
            let shift = all[0].offset - probe[0].pos.expect("pos");
            assert!(all.iter().zip(&probe).all(|(o, t)| Some(o.offset - shift) == t.pos && o.size == t.size));
            continue;
        }
        for (ours, theirs) in all.iter().zip(&probe) {
            assert_eq!(Some(ours.offset), theirs.pos, "{name}");
            assert_eq!(ours.size, theirs.size, "{name}");
        }
    }
}

#[test]
fn range_to_show_covers_keyframe_through_target_frame() {
    let files = make_files();
    let (src, index) = open(&files.path("end.mp4"));
    let (k, range) = index.range_to_show(&src, MediaTime::from_millis(3_000)).expect("range");
    assert_eq!(k.pts, MediaTime::from_secs(2));
    assert!(range.start <= k.offset && range.end > k.offset + k.size);
}

/// Keyframe presentation times (ms) of the first video stream as GStreamer's qtdemux sees them:
/// buffers without the delta-unit flag, read from `identity`'s messages.
fn qtdemux_keyframes(path: &Path) -> Vec<f64> {
    let location = format!("location={}", path.display());
    let out = std::process::Command::new("gst-launch-1.0")
        .args(["-v", "filesrc", &location, "!", "qtdemux", "name=d", "d.video_0", "!"])
        .args(["identity", "silent=false", "!", "fakesink"])
        .output()
        .expect("gst-launch-1.0 is required for this test: run scripts/install-deps.sh");
    assert!(out.status.success(), "gst-launch failed: {}", String::from_utf8_lossy(&out.stderr));
    let ms = |t: &str| -> Option<f64> {
        let mut parts = t.trim().split(':');
        let (h, m, s) =
            (parts.next()?.parse::<f64>().ok()?, parts.next()?.parse::<f64>().ok()?, parts.next()?);
        Some((h * 3600.0 + m * 60.0 + s.parse::<f64>().ok()?) * 1000.0)
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("last-message = chain") && !l.contains("delta-unit"))
        .filter_map(|l| l.split("pts: ").nth(1)?.split(',').next().and_then(ms))
        .collect()
}

#[test]
fn sidx_keyframes_match_gstreamer_qtdemux() {
    let files = make_files();
    let path = files.path("sidx.mp4");
    let theirs = qtdemux_keyframes(&path);
    let src = FileSource::open(&path).expect("open");
    let index = TrackIndex::open("sidx", &src).expect("index");
    assert_eq!(index.info().container, Container::FragmentedMp4);
    let ours: Vec<f64> =
        index.keyframes(&src).expect("keyframes").iter().map(|k| k.pts.as_nanos() as f64 / 1e6).collect();
    // 12 s at 30 fps with a keyframe every 60 frames.
    assert_eq!(ours.len(), 6, "{ours:?}");
    assert_eq!(ours.len(), theirs.len(), "ours {ours:?}, qtdemux {theirs:?}");
    // Any edit-list shift qtdemux leaves in buffer times (rather than in its segment) must be
    // the same for every keyframe; for this file it is zero.
    let shift = theirs[0] - ours[0];
    assert!((-1.0..200.0).contains(&shift), "shift {shift} ms");
    for (o, t) in ours.iter().zip(&theirs) {
        assert!((t - o - shift).abs() <= 1.0, "ours {o} ms, qtdemux {t} ms, shift {shift} ms");
    }
}
