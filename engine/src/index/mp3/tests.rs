//! Hand-built MP3 streams: frame headers, Xing and LAME fields, ID3v2, garbage between frames,
//! and CBR seeks checked against the walk.

use super::cbr::VERIFY_WINDOW;
use super::vbr::XING;
use super::*;

use std::sync::Arc;

use bytes::Bytes;

use crate::index::TrackIndex;

/// A 128 kbps 44.1 kHz MPEG-1 stereo frame header (417 bytes, 418 padded).
fn header(padding: bool) -> [u8; 4] {
    [0xFF, 0xFB, 0x90 | if padding { 2 } else { 0 }, 0x00]
}

fn frame(padding: bool) -> Vec<u8> {
    let mut f = header(padding).to_vec();
    f.resize(if padding { 418 } else { 417 }, 0x55);
    f
}

fn xing_frame(frames: u32) -> Vec<u8> {
    let mut f = frame(false);
    f[36..40].copy_from_slice(b"Xing");
    f[40..44].copy_from_slice(&7u32.to_be_bytes());
    f[44..48].copy_from_slice(&frames.to_be_bytes());
    f[48..52].copy_from_slice(&1000u32.to_be_bytes());
    for i in 0..100 {
        f[52 + i] = (i * 2) as u8;
    }
    f
}

fn id3(size: u32) -> Vec<u8> {
    let mut t = b"ID3\x04\x00\x00".to_vec();
    t.extend([
        (size >> 21) as u8 & 0x7F,
        (size >> 14) as u8 & 0x7F,
        (size >> 7) as u8 & 0x7F,
        size as u8 & 0x7F,
    ]);
    t.resize(10 + size as usize, 0);
    t
}

/// A source whose reads past `gate_at` wait until the gate opens.
struct Gated {
    data: Bytes,
    gate_at: u64,
    open: Mutex<bool>,
    opened: std::sync::Condvar,
    waiting: std::sync::atomic::AtomicBool,
}

impl Gated {
    fn release(&self) {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.opened.notify_all();
    }
}

impl RangeSource for Gated {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, crate::source::SourceError> {
        if start.saturating_add(len) > self.gate_at {
            self.waiting.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            while !*open {
                open = self.opened.wait(open).unwrap_or_else(PoisonError::into_inner);
            }
        }
        self.data.read_range(start, len)
    }
}

#[test]
fn a_seek_into_walked_frames_does_not_wait_behind_another_walk() {
    // A VBR (Xing) stream of 6000 frames, 2.5 MB: no constant-bitrate shortcut, so seeks
    // use the frame table.
    let mut data = xing_frame(6000);
    for i in 0..6000 {
        data.extend(frame(i % 3 == 0));
    }
    let src = Arc::new(Gated {
        data: Bytes::from(data),
        gate_at: 2 * FRAME_WINDOW,
        open: Mutex::new(false),
        opened: std::sync::Condvar::new(),
        waiting: std::sync::atomic::AtomicBool::new(false),
    });
    let index = Arc::new(TrackIndex::open("t", &*src).expect("opens"));
    // One thread walks the whole stream and stalls on a read past the first window.
    let walker = {
        let (index, src) = (index.clone(), src.clone());
        std::thread::spawn(move || index.keyframes(&*src).map(|k| k.len()))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !src.waiting.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "the walk never reached the gate");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Meanwhile a seek to 1 s (frame 38, inside the first window) must not wait for it.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (index, src) = (index.clone(), src.clone());
        std::thread::spawn(move || {
            let _ = tx.send(index.seek(&*src, MediaTime::from_secs(1)).map(|k| k.pos.sample));
        });
    }
    let seek = rx.recv_timeout(std::time::Duration::from_secs(5));
    src.release();
    let frames = walker.join().expect("walker").expect("keyframes");
    assert_eq!(frames, 6000);
    let sample = seek.expect("the seek waited behind the walk's stalled read").expect("seek");
    assert_eq!(sample, 38);
}

#[test]
fn parses_headers() {
    let h = FrameHeader::parse(&header(true)).expect("valid");
    assert_eq!((h.version, h.bitrate_kbps, h.sample_rate, h.len, h.samples), (1, 128, 44_100, 418, 1152));
    // MPEG-2 layer III 64 kbps 22.05 kHz.
    let h = FrameHeader::parse(&[0xFF, 0xF3, 0x80, 0xC0]).expect("valid");
    assert_eq!((h.version, h.bitrate_kbps, h.sample_rate, h.samples, h.mono), (2, 64, 22_050, 576, true));
    assert_eq!(h.len, 72 * 64_000 / 22_050);
    assert!(FrameHeader::parse(&[0xFF, 0xFB, 0xF0, 0]).is_none(), "bitrate 15");
    assert!(FrameHeader::parse(&[0xFF, 0xFB, 0x0C, 0]).is_none(), "free format / bad rate");
    assert!(FrameHeader::parse(&[0xFF, 0xFD, 0x90, 0]).is_none(), "layer II");
    assert!(FrameHeader::parse(&[0xFF]).is_none());
}

#[test]
fn detects() {
    let mut two = frame(false);
    two.extend(frame(true));
    assert!(is_mp3(&two));
    assert!(is_mp3(b"ID3\x04"));
    let mut bad = frame(false);
    bad.extend([0u8; 8]);
    assert!(!is_mp3(&bad));
    assert!(!is_mp3(b"hello"));
}

#[test]
fn xing_file_times_and_seek() {
    let mut f = id3(100);
    f.extend(xing_frame(20));
    let audio_start = f.len() as u64;
    for i in 0..20 {
        f.extend(frame(i % 3 == 1));
    }
    f.extend(b"TAG");
    f.resize(f.len() + 125, 0);
    let src = Bytes::from(f);
    let index = TrackIndex::open("t", &src).expect("opens");
    assert_eq!(index.info().duration, MediaTime::from_ticks(20 * 1152, 44_100));
    assert_eq!(index.open_cost().reads, 1, "the head holds the first frame");
    let keyframes = index.keyframes(&src).expect("walks");
    assert_eq!(keyframes.len(), 20);
    assert_eq!(keyframes[0].offset, audio_start);
    assert_eq!(keyframes[3].pts, MediaTime::from_ticks(3 * 1152, 44_100).expect("fits"));
    let k = index.seek(&src, MediaTime::from_millis(100)).expect("seek");
    assert_eq!(k, keyframes[3]);
    let k = index.seek(&src, MediaTime::from_secs(99)).expect("seek");
    assert_eq!(k, keyframes[19]);
    let batch = index.samples(&src, keyframes[18].pos, 5).expect("samples");
    assert_eq!(batch.samples.len(), 2);
    assert_eq!(batch.next, None);
    assert_eq!(batch.samples[1].size, keyframes[19].size);
}

#[test]
fn vbr_header_fields_and_garbage_between_frames() {
    let x = xing_frame(5);
    let h = FrameHeader::parse(&x).expect("valid");
    let vbr = parse_vbr_header(&h, &x, 0).expect("parses").expect("xing");
    assert_eq!(vbr.frames, Some(5));
    assert_eq!(vbr.bytes, Some(1000));
    assert!(vbr.toc.is_some());
    // Cut right after the flags: typed error.
    let err = parse_vbr_header(&h, &x[..46], 7).expect_err("short");
    assert!(matches!(err, ParseError::Malformed { element: XING, offset: 7, .. }));

    let mut f = Vec::new();
    for _ in 0..4 {
        f.extend(frame(false));
    }
    f.extend([0xFFu8, 0xFB, 0x00, 0x12, 0x34]);
    for _ in 0..4 {
        f.extend(frame(false));
    }
    let src = Bytes::from(f);
    let index = TrackIndex::open("t", &src).expect("opens");
    let keyframes = index.keyframes(&src).expect("walks");
    assert_eq!(keyframes.len(), 8);
    assert_eq!(keyframes[4].offset, 4 * 417 + 5);
    // The frame found after the garbage is marked, and only that one.
    let batch = index.samples(&src, keyframes[0].pos, 20).expect("samples");
    let marked: Vec<usize> =
        batch.samples.iter().enumerate().filter(|(_, s)| s.follows_damage).map(|(i, _)| i).collect();
    assert_eq!(marked, vec![4]);
    // Without Xing: CBR estimate.
    let d = index.info().duration.expect("estimate").as_millis();
    assert!((d - (8 * 417 + 5) * 8 / 128).abs() <= 1, "{d}");
}

#[test]
fn malformed_inputs() {
    // ID3 size past EOF.
    let mut f = id3(0);
    f[6..10].copy_from_slice(&[0x7F, 0x7F, 0x7F, 0x7F]);
    let src = Bytes::from(f);
    let err = TrackIndex::open("t", &src).expect_err("past EOF").source;
    assert!(matches!(err, ParseError::Truncated { element: ID3, .. }), "{err}");
    // ID3 followed by garbage.
    let mut f = id3(20);
    f.extend([0x12u8; 3000]);
    let src = Bytes::from(f);
    let err = TrackIndex::open("t", &src).expect_err("no frames").source;
    assert!(matches!(err, ParseError::Missing { element: FRAME, .. }), "{err}");
    // Non-syncsafe size.
    let mut f = id3(0);
    f[9] = 0x80;
    let err = TrackIndex::open("t", &Bytes::from(f)).expect_err("syncsafe").source;
    assert!(matches!(err, ParseError::Malformed { element: ID3, .. }), "{err}");
    // Truncated frames and random bytes never panic.
    let mut f = xing_frame(1_000_000);
    f.extend(frame(false));
    f.extend(&frame(false)[..100]);
    let src = Bytes::from(f);
    let index = TrackIndex::open("t", &src).expect("opens");
    assert_eq!(index.keyframes(&src).expect("walks").len(), 1);
    let _ = index.seek(&src, MediaTime::from_secs(1000));
    let mut seed = 12345u64;
    for _ in 0..200 {
        let mut f = vec![0xFFu8, 0xFB, 0x90, 0x00];
        for _ in 0..600 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            f.push((seed >> 56) as u8);
        }
        let src = Bytes::from(f);
        if let Ok(index) = TrackIndex::open("t", &src) {
            let _ = index.keyframes(&src);
            let _ = index.seek(&src, MediaTime::from_millis(5));
        }
    }
}

#[test]
fn lame_delay_is_read() {
    let mut x = xing_frame(5);
    // Flags 7: frames, bytes, TOC; LAME tag at 36 + 8 + 4 + 4 + 100 = 152.
    x[152..156].copy_from_slice(b"LAME");
    x[152 + 21..152 + 24].copy_from_slice(&[0x24, 0x00, 0x10]);
    let src = Bytes::from(x.clone());
    let h = FrameHeader::parse(&x).expect("valid");
    let vbr = parse_vbr_header(&h, &x, 0).expect("ok").expect("xing");
    assert_eq!(vbr.delay, Some((576, 16)));
    let index = Mp3Index::open(&Reader::new(&src, src.clone())).expect("opens");
    assert_eq!(index.info().duration, MediaTime::from_ticks(5 * 1152, 44_100));
}

/// A 128 kbps 44.1 kHz stream of `frames` frames padded as `phase` says (see
/// [`CbrLayout`]), optionally with `garbage` bytes before frame `at`, and an ID3v1 tag.
fn cbr_stream(frames: u64, phase: u64, garbage: Option<(u64, usize)>) -> Bytes {
    let off = |n: u64| (n * 144 * 128_000 + phase) / 44_100;
    let mut f = Vec::new();
    for n in 0..frames {
        if let Some((_, junk)) = garbage.filter(|g| g.0 == n) {
            f.resize(f.len() + junk, 0x11);
        }
        let len = off(n + 1) - off(n);
        let mut fr = frame(len == 418);
        fr[4..12].copy_from_slice(&n.to_be_bytes());
        assert_eq!(fr.len() as u64, len);
        f.extend(fr);
    }
    f.extend(b"TAG");
    f.resize(f.len() + 125, 0);
    Bytes::from(f)
}

/// Seeks on fresh indexes through a counting source; returns the keyframes and what each
/// seek cost.
fn seeks(src: &Bytes, targets: &[MediaTime]) -> Vec<(Keyframe, crate::source::ReadCost)> {
    targets
        .iter()
        .map(|&t| {
            let index = TrackIndex::open("t", src).expect("opens");
            let counted = crate::source::CountingSource::new(src);
            let k = index.seek(&counted, t).expect("seek");
            (k, counted.cost())
        })
        .collect()
}

fn expected(keyframes: &[Keyframe], t: MediaTime) -> Keyframe {
    *keyframes.iter().rev().find(|k| k.pts <= t).unwrap_or(&keyframes[0])
}

#[test]
fn cbr_seek_reads_one_window_and_matches_the_walk() {
    // LAME's phase for 128 kbps at 44.1 kHz, then a plain running floor.
    for phase in [44_100 - 1 - (144 * 128_000) % 44_100, 0] {
        let src = cbr_stream(3000, phase, None);
        let keyframes = TrackIndex::open("t", &src).expect("opens").keyframes(&src).expect("walks");
        assert_eq!(keyframes.len(), 3000);
        let last = keyframes[2999].pts;
        let targets: Vec<MediaTime> = [0, 1, 25_000, 40_000, 78_000]
            .iter()
            .map(|&ms| MediaTime::from_millis(ms))
            .chain([last, last.saturating_add(MediaTime::from_secs(9)), MediaTime::MAX])
            .chain([MediaTime::from_millis(-3)])
            .collect();
        for ((k, cost), t) in seeks(&src, &targets).into_iter().zip(&targets) {
            assert_eq!(k, expected(&keyframes, *t), "phase {phase}, seek({t})");
            assert!(cost.reads <= 2 && cost.bytes <= 2 * VERIFY_WINDOW, "phase {phase} {t}: {cost:?}");
        }
        // Frame times are rounded to the nanosecond: just before one is the frame before.
        let index = TrackIndex::open("t", &src).expect("opens");
        let just_before = keyframes[500].pts.saturating_sub(MediaTime::from_nanos(1));
        assert_eq!(index.seek(&src, just_before).expect("seek"), keyframes[499]);
        // Batches from a seek point need no table either, and agree with it.
        let index = TrackIndex::open("t", &src).expect("opens");
        let counted = crate::source::CountingSource::new(&src);
        let k = index.seek(&counted, MediaTime::from_secs(60)).expect("seek");
        let mut pos = Some(k.pos);
        let mut got = Vec::new();
        while let Some(at) = pos {
            let batch = index.samples(&counted, at, 100).expect("samples");
            got.extend(batch.samples.iter().map(|s| (s.pts, s.offset, s.size)));
            pos = batch.next;
        }
        let want: Vec<_> =
            keyframes.iter().skip_while(|x| x.offset < k.offset).map(|x| (x.pts, x.offset, x.size)).collect();
        assert_eq!(got, want);
        assert!(counted.cost().bytes < src.len() as u64 / 2, "{:?}", counted.cost());
    }
}

#[test]
fn cbr_layout_that_does_not_hold_falls_back_to_the_walk() {
    let phase = 44_100 - 1 - (144 * 128_000) % 44_100;
    // Garbage mid-file shifts every later frame off the layout.
    let src = cbr_stream(2000, phase, Some((1000, 5)));
    let keyframes = TrackIndex::open("t", &src).expect("opens").keyframes(&src).expect("walks");
    assert_eq!(keyframes.len(), 2000);
    let targets = [MediaTime::from_secs(10), MediaTime::from_secs(40), MediaTime::from_secs(999)];
    for ((k, cost), t) in seeks(&src, &targets).into_iter().zip(&targets) {
        assert_eq!(k, expected(&keyframes, *t), "seek({t})");
        if *t > MediaTime::from_secs(30) {
            assert!(cost.bytes >= src.len() as u64 / 2, "walked: {cost:?}");
        }
    }
    // Samples from a position the layout does not confirm come from the table.
    let index = TrackIndex::open("t", &src).expect("opens");
    let batch = index.samples(&src, keyframes[1500].pos, 3).expect("samples");
    assert_eq!(batch.samples[0].pts, keyframes[1500].pts);
    assert_eq!(batch.next, Some(keyframes[1503].pos));
    // A position with a wrong frame number is not trusted either.
    let index = TrackIndex::open("t", &src).expect("opens");
    let lie = ReadPos { offset: keyframes[10].offset, sample: 11 };
    let batch = index.samples(&src, lie, 1).expect("samples");
    assert_eq!(batch.samples[0].pts, keyframes[10].pts);
}
