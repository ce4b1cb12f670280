//! Hand-built Ogg streams: pages with correct CRCs, Opus and Vorbis headers, then opening,
//! walking, seeking and damaged inputs.

use super::codec::opus_packet_samples;
use super::pages::{crc_update, page_crc};
use super::*;

use crate::index::{TrackIndex, HEAD_READ};

/// Builds one page with a correct CRC from packet parts: (bytes, completes here).
fn page(header_type: u8, granule: i64, serial: u32, seq: u32, parts: &[(&[u8], bool)]) -> Vec<u8> {
    let mut lacing = Vec::new();
    let mut body = Vec::new();
    for (bytes, complete) in parts {
        let mut n = bytes.len();
        while n >= 255 {
            lacing.push(255);
            n -= 255;
        }
        if *complete {
            lacing.push(n as u8);
        } else {
            assert_eq!(n, 0, "incomplete parts must be multiples of 255");
        }
        body.extend_from_slice(bytes);
    }
    let mut p = b"OggS".to_vec();
    p.push(0);
    p.push(header_type);
    p.extend_from_slice(&granule.to_le_bytes());
    p.extend_from_slice(&serial.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(lacing.len() as u8);
    p.extend_from_slice(&lacing);
    p.extend_from_slice(&body);
    let crc = page_crc(&p);
    p[22..26].copy_from_slice(&crc.to_le_bytes());
    p
}

fn opus_head(pre_skip: u16) -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.extend_from_slice(&[1, 2]);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&[0, 0, 0]);
    h
}

/// An Opus file: 20 ms packets (TOC 0xF8: CELT 20 ms, one frame), `per_page` per page.
fn opus_file(pages: usize, per_page: usize, pre_skip: u16) -> Vec<u8> {
    let mut f = page(2, 0, 7, 0, &[(&opus_head(pre_skip), true)]);
    f.extend(page(0, 0, 7, 1, &[(b"OpusTags\0\0\0\0\0\0\0\0", true)]));
    let packet = [0xF8u8, 1, 2, 3, 4, 5, 6, 7, 8, 9];
    let mut granule = 0i64;
    for i in 0..pages {
        let parts: Vec<(&[u8], bool)> = (0..per_page).map(|_| (&packet[..], true)).collect();
        granule += 960 * per_page as i64;
        let flags = if i + 1 == pages { 4 } else { 0 };
        f.extend(page(flags, granule, 7, 2 + i as u32, &parts));
    }
    f
}

fn open(bytes: Vec<u8>) -> (Bytes, Result<TrackIndex, crate::index::IndexError>) {
    let src = Bytes::from(bytes);
    let index = TrackIndex::open("t", &src);
    (src, index)
}

#[test]
fn crc_matches_a_published_check_value_and_pages_written_by_gstreamer() {
    // Ogg's CRC is CRC-32/CKSUM without the final inversion (polynomial 0x04c11db7,
    // MSB first, zero init): the reveng catalogue's check value for CKSUM over
    // "123456789" is 0x765e7680, so ours is its complement.
    assert_eq!(crc_update(0, b"123456789"), !0x765e_7680);
    // Every page of the committed fixture, muxed by GStreamer's oggmux (libogg's
    // framing), carries a CRC our function reproduces; a changed byte breaks it.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/meeting/mixed_audio.ogg");
    let file = Bytes::from(std::fs::read(path).expect("fixture"));
    let mut at = 0usize;
    let mut pages = 0;
    while at + HEADER_LEN <= file.len() {
        let nsegs = file[at + 26] as usize;
        let body: usize = file[at + HEADER_LEN..at + HEADER_LEN + nsegs].iter().map(|&l| l as usize).sum();
        let page = &file[at..at + HEADER_LEN + nsegs + body];
        assert_eq!(
            u32::from_le_bytes([page[22], page[23], page[24], page[25]]),
            page_crc(page),
            "page at {at}"
        );
        pages += 1;
        at += page.len();
    }
    assert_eq!(at, file.len());
    assert!(pages > 10, "{pages} pages");
    let mut damaged = file[..HEADER_LEN + file[26] as usize].to_vec();
    damaged[HEADER_LEN] ^= 1;
    assert_ne!(u32::from_le_bytes([damaged[22], damaged[23], damaged[24], damaged[25]]), page_crc(&damaged));
}

#[test]
fn opus_times_keyframes_seek_and_samples() {
    let (src, index) = open(opus_file(50, 5, 312));
    let index = index.expect("opens");
    let info = index.info();
    assert_eq!(info.codec, Codec::Opus);
    assert_eq!(info.timescale, 48_000);
    assert_eq!(info.codec_config.as_deref(), Some(&opus_head(312)[..]));
    // 250 packets of 960 samples minus 312 pre-skip.
    assert_eq!(info.duration, MediaTime::from_ticks(250 * 960 - 312, 48_000));
    let keyframes = index.keyframes(&src).expect("walks");
    assert_eq!(keyframes.len(), 50);
    assert_eq!(keyframes[0].pts, MediaTime::from_ticks(-312, 48_000).expect("fits"));
    assert_eq!(keyframes[1].pts, MediaTime::from_ticks(5 * 960 - 312, 48_000).expect("fits"));
    for t in [0i64, 100, 1234, 4000, 99_000] {
        let t = MediaTime::from_millis(t);
        let k = index.seek(&src, t).expect("seeks");
        let expected = keyframes.iter().rev().find(|k| k.pts <= t).unwrap_or(&keyframes[0]);
        assert_eq!(&k, expected, "seek to {t}");
    }
    let batch = index.samples(&src, keyframes[3].pos, 7).expect("samples");
    assert_eq!(batch.samples.len(), 7);
    assert_eq!(batch.samples[0].pts, keyframes[3].pts);
    assert_eq!(batch.samples[1].pts.as_nanos() - batch.samples[0].pts.as_nanos(), 20_000_000);
    let data = index.sample_data(&src, &batch.samples[0]).expect("data");
    assert_eq!(&data[..], &[0xF8u8, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // Resuming mid-page continues where the batch stopped.
    let next = index.samples(&src, batch.next.expect("more"), 1).expect("samples");
    assert_eq!(next.samples[0].pts.as_nanos() - batch.samples[6].pts.as_nanos(), 20_000_000);
}

#[test]
fn duration_from_a_last_page_larger_than_the_first_tail_read() {
    // Many small pages, then a last page of ~25 KiB: the 16 KiB tail read holds no whole
    // page of ours, so the second, page-sized read finds it.
    let mut f = opus_file(20, 5, 0);
    let big = vec![0xF8u8; 255 * 100 - 1];
    f.extend(page(4, 100 * 960 + 960, 7, 22, &[(&big, true)]));
    let (_, index) = open(f);
    let index = index.expect("opens");
    assert_eq!(index.info().duration, MediaTime::from_ticks(101 * 960, 48_000));
    assert_eq!(index.open_cost().reads, 3, "head, small tail, page-sized tail");
}

#[test]
fn packet_spanning_pages_is_reassembled() {
    let mut f = page(2, 0, 7, 0, &[(&opus_head(0), true)]);
    f.extend(page(0, 0, 7, 1, &[(b"OpusTags", true)]));
    let mut big = vec![0xF8u8];
    big.extend((0..509).map(|i| i as u8));
    big.extend(std::iter::repeat_n(9u8, 40));
    f.extend(page(0, -1, 7, 2, &[(&big[..510], false)]));
    f.extend(page(1, 1920, 7, 3, &[(&big[510..], true), (&[0xF8, 1], true)]));
    let (src, index) = open(f);
    let index = index.expect("opens");
    let batch = index.samples(&src, ReadPos { offset: 0, sample: 0 }, 10).expect("samples");
    assert_eq!(batch.samples.len(), 2);
    assert_eq!(batch.samples[0].pts, MediaTime::ZERO);
    assert_eq!(batch.samples[1].pts, MediaTime::from_millis(20));
    let data = index.sample_data(&src, &batch.samples[0]).expect("reassembles");
    assert_eq!(&data[..], &big[..]);
    let keyframes = index.keyframes(&src).expect("walks");
    let times: Vec<_> = keyframes.iter().map(|k| k.pts).collect();
    assert_eq!(times, vec![MediaTime::ZERO, MediaTime::from_millis(20)]);
}

#[test]
fn bad_crc_at_open_is_typed_and_skipped_when_walking() {
    let mut f = opus_file(4, 2, 0);
    f[30] ^= 0xFF;
    let (_, index) = open(f);
    let err = index.expect_err("bad CRC").source;
    assert!(matches!(err, ParseError::Malformed { element: PAGE, offset: 0, .. }), "{err}");

    let mut f = opus_file(4, 2, 0);
    let third_page = f.windows(4).enumerate().filter(|(_, w)| w == b"OggS").nth(3).map(|(i, _)| i);
    let third_page = third_page.expect("page");
    f[third_page + 30] ^= 0xFF;
    let (src, index) = open(f);
    let keyframes = index.expect("opens").keyframes(&src).expect("walks past the bad page");
    assert_eq!(keyframes.len(), 3);
}

#[test]
fn packets_after_skipped_or_missing_pages_are_marked() {
    let marks = |f: Vec<u8>| -> Vec<bool> {
        let (src, index) = open(f);
        let index = index.expect("opens");
        let first = index.keyframes(&src).expect("walks")[0].pos;
        let batch = index.samples(&src, first, 100).expect("samples");
        batch.samples.iter().map(|s| s.follows_damage).collect()
    };
    let pages = |f: &[u8]| -> Vec<usize> {
        f.windows(4).enumerate().filter(|(_, w)| w == b"OggS").map(|(i, _)| i).collect()
    };
    // Intact: nothing marked.
    assert_eq!(marks(opus_file(4, 2, 0)), vec![false; 8]);
    // A damaged page (bad CRC) is skipped: the first packet after it is marked.
    let mut f = opus_file(4, 2, 0);
    let third = pages(&f)[3];
    f[third + 30] ^= 0xFF;
    assert_eq!(marks(f), vec![false, false, true, false, false, false]);
    // A page cut out whole: its successor's sequence number jumps.
    let f = opus_file(4, 2, 0);
    let at = pages(&f);
    let mut cut = f[..at[3]].to_vec();
    cut.extend_from_slice(&f[at[4]..]);
    assert_eq!(marks(cut), vec![false, false, true, false, false, false]);
}

#[test]
fn malformed_inputs_are_errors_not_panics() {
    let good = opus_file(3, 2, 0);
    for cut in [0usize, 4, 27, 30, 60, 80, 100] {
        let (src, index) = open(good[..cut.min(good.len())].to_vec());
        if let Ok(index) = index {
            let _ = index.keyframes(&src);
            let _ = index.seek(&src, MediaTime::from_secs(1));
        }
    }
    // Absurd segment count with no body.
    let mut f = b"OggS\0\x02".to_vec();
    f.extend_from_slice(&[0; 20]);
    f.push(255);
    let (_, index) = open(f);
    assert!(matches!(index.expect_err("truncated").source, ParseError::Truncated { element: PAGE, .. }));
    // Not Opus or Vorbis.
    let (_, index) = open(page(2, 0, 1, 0, &[(b"\x80theora", true)]));
    assert!(matches!(index.expect_err("unsupported").source, ParseError::Unsupported { .. }));
    // Short OpusHead.
    let mut f = page(2, 0, 1, 0, &[(b"OpusHead\x01", true)]);
    f.extend(page(0, 0, 1, 1, &[(b"OpusTags", true)]));
    let (_, index) = open(f);
    assert!(matches!(index.expect_err("short").source, ParseError::Malformed { element: OPUS_HEAD, .. }));
    // Granules going backwards and -1 granules: seek still ends.
    let mut f = page(2, 0, 7, 0, &[(&opus_head(0), true)]);
    f.extend(page(0, 0, 7, 1, &[(b"OpusTags", true)]));
    let packet = [0xF8u8; 300];
    for i in 0..2000i64 {
        let g = if i % 3 == 0 { -1 } else { (5000 - i) * 960 };
        f.extend(page(0, g, 7, i as u32 + 2, &[(&packet, true)]));
    }
    let (src, index) = open(f);
    let index = index.expect("opens");
    for t in [0i64, 5, 50, 5000] {
        let _ = index.seek(&src, MediaTime::from_secs(t));
    }
    assert!(RangeSource::len(&src) > HEAD_READ);
}

#[test]
fn opus_toc_durations() {
    assert_eq!(opus_packet_samples(&[0xF8]), Some(960));
    assert_eq!(opus_packet_samples(&[0x00]), Some(480));
    assert_eq!(opus_packet_samples(&[(3 << 3) | 3, 2]), Some(5760));
    assert_eq!(opus_packet_samples(&[(3 << 3) | 3, 3]), None);
    assert_eq!(opus_packet_samples(&[0x80 | 1]), Some(240));
    assert_eq!(opus_packet_samples(&[0x03]), None);
    assert_eq!(opus_packet_samples(&[]), None);
}

#[test]
fn vorbis_mode_list_read_backwards() {
    // A synthetic setup header whose last bits are: mode count 2 (6 bits = 1), two modes
    // (blockflag 0, then 1), framing bit; packed LSB first as Vorbis does.
    let mut bits: Vec<u8> = Vec::new();
    let push = |v: u32, n: usize, bits: &mut Vec<u8>| (0..n).for_each(|i| bits.push(((v >> i) & 1) as u8));
    // padding that cannot look like modes
    for _ in 0..16 {
        push(0xFF, 8, &mut bits);
    }
    push(1, 6, &mut bits); // mode count - 1
    for flag in [0u32, 1] {
        push(flag, 1, &mut bits);
        push(0, 16, &mut bits);
        push(0, 16, &mut bits);
        push(flag, 8, &mut bits); // mapping
    }
    push(1, 1, &mut bits); // framing
    let mut setup = b"\x05vorbis".to_vec();
    for chunk in bits.chunks(8) {
        setup.push(chunk.iter().enumerate().fold(0u8, |a, (i, b)| a | (b << i)));
    }
    let modes = parse_vorbis_modes(&setup, [256, 2048], 0).expect("modes");
    assert_eq!(modes.long, vec![false, true]);
    assert_eq!(modes.mode_mask, 0b10);
    assert_eq!(modes.prev_mask, 0b100);
    let mut prev = 256;
    assert_eq!(modes.duration(Some(0b000), &mut prev), 128); // short after short
    assert_eq!(modes.duration(Some(0b010), &mut prev), (256 + 2048) / 4); // long, prev short
    assert_eq!(modes.duration(Some(0b110), &mut prev), 1024); // long, prev long
    assert_eq!(modes.duration(Some(0b000), &mut prev), (2048 + 256) / 4); // short after long
    assert!(parse_vorbis_modes(b"\x05vorbis\0\0", [256, 2048], 9).is_err());
    assert!(parse_vorbis_modes(b"", [256, 2048], 9).is_err());
}
