//! Codecs and muxer options beyond the fixtures, each against ffprobe: HEVC and AV1 in MP4,
//! VP9 in WebM, AAC and Opus in MP4 and Matroska, CMAF-style fragments, negative composition
//! offsets, a big ID3v2 tag in front of an MP3, and several tracks in one file.

use std::path::{Path, PathBuf};

use tandem::index::{Codec, TrackIndex};
use tandem::{FileSource, MediaTime};
use tandem_tests::{check_against_ffprobe_shifted, ffmpeg};

fn dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("index_more_muxers");
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

const VIDEO: &[&str] = &["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=6"];
const AUDIO: &[&str] = &["-f", "lavfi", "-i", "sine=frequency=300:duration=6"];

/// Makes `name` with ffmpeg from `inputs` and `options`, then checks it against ffprobe and
/// that seeking gives the greatest keyframe at or before each time.
fn check(name: &str, inputs: &[&[&str]], options: &[&str], codec: Codec) {
    check_shifted(name, inputs, options, codec, 0.0);
}

fn check_shifted(name: &str, inputs: &[&[&str]], options: &[&str], codec: Codec, ffmpeg_shift_ms: f64) {
    let path = dir().join(name);
    let out = path.to_string_lossy().into_owned();
    let mut args: Vec<&str> = inputs.iter().flat_map(|i| i.iter().copied()).collect();
    args.extend_from_slice(options);
    args.push(&out);
    ffmpeg(&args).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    // The oracle fails on an empty index itself.
    check_against_ffprobe_shifted(&path, ffmpeg_shift_ms).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let src = FileSource::open(&path).expect("open");
    let index = TrackIndex::open(name, &src).expect("index");
    assert_eq!(index.info().codec, codec, "{name}");
    let keyframes = index.keyframes(&src).expect("keyframes");
    for ms in [0, 1_500, 3_000, 5_900] {
        let t = MediaTime::from_millis(ms);
        let k = index.seek(&src, t).expect("seek");
        let want = keyframes.iter().filter(|k| k.pts <= t).max_by_key(|k| k.pts).unwrap_or(&keyframes[0]);
        assert_eq!(k.pts, want.pts, "{name} at {ms} ms");
    }
}

#[test]
fn hevc_and_av1_in_mp4() {
    check(
        "hevc.mp4",
        &[VIDEO],
        &["-c:v", "libx265", "-x265-params", "log-level=error:keyint=50", "-tag:v", "hvc1"],
        Codec::H265,
    );
    check("av1.mp4", &[VIDEO], &["-c:v", "libsvtav1", "-g", "50", "-preset", "12"], Codec::Av1);
}

#[test]
fn vp9_webm_and_aac_opus_in_other_containers() {
    check(
        "vp9.webm",
        &[VIDEO],
        &["-c:v", "libvpx-vp9", "-g", "40", "-deadline", "realtime", "-cpu-used", "8"],
        Codec::Vp9,
    );
    check("aac.mkv", &[AUDIO], &["-c:a", "aac"], Codec::Aac);
    check("opus.mp4", &[AUDIO], &["-c:a", "libopus"], Codec::Opus);
    check("flac.mkv", &[AUDIO], &["-c:a", "flac"], Codec::Flac);
}

#[test]
fn mp4_layouts_from_other_muxer_options() {
    let h264 = ["-c:v", "libx264", "-g", "30", "-bf", "2"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        h264.iter().copied().chain(extra.iter().copied()).collect()
    };
    // CMAF: trun version 1 with negative composition offsets (down to -1 frame) and no edit
    // list. ISO (and MSE) present a sample at decode time + offset, so the first keyframe is at
    // 0; ffmpeg instead adds the largest negative offset to every PTS, one frame (40 ms) here.
    check_shifted(
        "cmaf.mp4",
        &[VIDEO],
        &with(&["-movflags", "cmaf+frag_keyframe+empty_moov+default_base_moof"]),
        Codec::H264,
        40.0,
    );
    check("negcts.mp4", &[VIDEO], &with(&["-movflags", "negative_cts_offsets"]), Codec::H264);
    check("mov.mov", &[VIDEO], &with(&[]), Codec::H264);
    check("av_interleaved.mp4", &[VIDEO, AUDIO], &with(&["-c:a", "aac"]), Codec::H264);
    check("av.mkv", &[VIDEO, AUDIO], &with(&["-c:a", "libopus"]), Codec::H264);
}

#[test]
fn mp3_behind_a_large_id3_tag() {
    // A noisy cover picture (hundreds of KiB) pushes the first frame far past the 4 KiB head.
    let art = dir().join("cover.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x480:duration=0.04",
        "-vf",
        "noise=alls=100:allf=t",
        "-frames:v",
        "1",
        &art.to_string_lossy(),
    ])
    .expect("cover art");
    assert!(std::fs::metadata(&art).expect("cover").len() > 64 * 1024, "cover art too small to matter");
    let art = art.to_string_lossy().into_owned();
    check(
        "tagged.mp3",
        &[AUDIO, &["-i", &art]],
        &[
            "-map",
            "0:a",
            "-map",
            "1:v",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "128k",
            "-c:v",
            "copy",
            "-id3v2_version",
            "3",
            "-metadata:s:v",
            "title=cover",
            "-disposition:v",
            "attached_pic",
        ],
        Codec::Mp3,
    );
}
