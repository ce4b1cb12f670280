//! Hand-built MP4 files: a small box writer, plain and fragmented movies, and damaged or
//! forged inputs (sizes, counts, times above 63 bits, truncations).

use super::*;

use crate::index::TrackIndex;

/// A box: size, type, body.
fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out
}

fn full(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 0, 0];
    b.extend_from_slice(body);
    bx(kind, &b)
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// A one-track movie of `n` one-second samples of 100 bytes in one chunk at `data_at`.
fn movie(n: u32, data_at: u32, stsz_count: u32) -> Vec<u8> {
    let mdhd = full(b"mdhd", &u32s(&[0, 0, 1000, n * 1000, 0]));
    let stts = full(b"stts", &u32s(&[1, n, 1000]));
    let stss = full(b"stss", &u32s(&[1, 1]));
    let mut stsz_body = u32s(&[0, stsz_count]);
    stsz_body.extend(u32s(&vec![100; n as usize]));
    let stsz = full(b"stsz", &stsz_body);
    let stsc = full(b"stsc", &u32s(&[1, 1, n, 1]));
    let stco = full(b"stco", &u32s(&[1, data_at]));
    let stbl = bx(b"stbl", &[stts, stss, stsz, stsc, stco].concat());
    let minf = bx(b"minf", &stbl);
    let mdia = bx(b"mdia", &[mdhd, minf].concat());
    let tkhd = full(b"tkhd", &u32s(&[0, 0, 1, 0, 0]));
    let trak = bx(b"trak", &[tkhd, mdia].concat());
    let mvhd = full(b"mvhd", &u32s(&[0, 0, 1000, n * 1000]));
    bx(b"moov", &[mvhd, trak].concat())
}

fn file_with_moov_at_end(n: u32) -> Bytes {
    let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
    let mdat = bx(b"mdat", &vec![0u8; (n * 100) as usize]);
    let data_at = (ftyp.len() + 8) as u32;
    Bytes::from([ftyp, mdat, movie(n, data_at, n)].concat())
}

fn open(data: Vec<u8>) -> Result<TrackIndex, ParseError> {
    TrackIndex::open("t", &Bytes::from(data)).map_err(|e| e.source)
}

#[test]
fn a_built_movie_indexes_every_sample() {
    let src = file_with_moov_at_end(5);
    let index = TrackIndex::open("t", &src).expect("opens");
    assert_eq!(index.info().duration, Some(MediaTime::from_secs(5)));
    let keyframes = index.keyframes(&src).expect("keyframes");
    assert_eq!(keyframes.len(), 1);
    assert_eq!(keyframes[0].offset, 24);
    let batch = index.samples(&src, keyframes[0].pos, 10).expect("samples");
    assert_eq!(batch.samples.len(), 5);
    assert_eq!(batch.samples[4].offset, 24 + 400);
    assert_eq!(batch.samples[4].pts, MediaTime::from_secs(4));
    assert!(!batch.samples[1].keyframe);
}

#[test]
fn a_recording_without_moov_says_it_was_never_finalized() {
    let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
    let mdat = bx(b"mdat", &[0u8; 5000]);
    let err = open([ftyp, mdat].concat()).expect_err("no moov");
    assert!(matches!(err, ParseError::Missing { element: "moov", .. }), "{err}");
    assert!(err.to_string().contains("never finalized"));
}

#[test]
fn box_sizes_past_the_end_smaller_than_header_or_huge_are_errors() {
    let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
    // mdat claims more than the file holds.
    let mut mdat = bx(b"mdat", &[0u8; 64]);
    mdat[0..4].copy_from_slice(&1_000_000u32.to_be_bytes());
    let err = open([ftyp.clone(), mdat].concat()).expect_err("too big");
    assert!(matches!(err, ParseError::Malformed { element: "mdat", offset: 16, .. }), "{err}");
    // size 4: smaller than its header.
    let mut bad = bx(b"free", &[0u8; 8]);
    bad[0..4].copy_from_slice(&4u32.to_be_bytes());
    let err = open([ftyp.clone(), bad].concat()).expect_err("tiny");
    assert!(matches!(err, ParseError::Malformed { element: "free", offset: 16, .. }), "{err}");
    // 64-bit size of 2^64-1.
    let mut large = 1u32.to_be_bytes().to_vec();
    large.extend_from_slice(b"mdat");
    large.extend_from_slice(&u64::MAX.to_be_bytes());
    let err = open([ftyp.clone(), large].concat()).expect_err("huge");
    assert!(matches!(err, ParseError::Malformed { element: "mdat", .. }), "{err}");
    // Truncated header at the end is simply the end of the walk: no moov.
    let err = open([ftyp, vec![0, 0, 0]].concat()).expect_err("truncated");
    assert!(matches!(err, ParseError::Missing { element: "moov", .. }), "{err}");
}

#[test]
fn forged_counts_do_not_size_allocations() {
    // stsz claims 2^31 samples in a 20-byte body.
    let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
    let moov = movie(1, 0, 0x8000_0000);
    let err = open([ftyp.clone(), moov].concat()).expect_err("forged count");
    assert!(
        matches!(&err, ParseError::Malformed { element: "stsz", reason, .. } if reason.contains("exceed the limit")),
        "{err}"
    );
    // stsz lists more samples than stts gives times to.
    let moov = movie(3, 0, 3);
    let at = moov.windows(4).position(|w| w == b"stts").expect("stts") + 4 + 4 + 4;
    let mut moov = moov;
    moov[at..at + 4].copy_from_slice(&2u32.to_be_bytes());
    let err = open([ftyp, moov].concat()).expect_err("untimed samples");
    assert!(matches!(err, ParseError::Malformed { element: "stsz", .. }), "{err}");
}

#[test]
fn durations_and_edit_times_above_63_bits_are_typed_errors_not_negative_times() {
    let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
    // mdhd version 1 with a duration of 2^63 + 5: wraps to a negative time with `as i64`.
    let mut v1 = vec![1, 0, 0, 0];
    v1.extend_from_slice(&[0; 16]);
    v1.extend_from_slice(&1000u32.to_be_bytes());
    v1.extend_from_slice(&(u64::MAX / 2 + 6).to_be_bytes());
    v1.extend_from_slice(&[0; 4]);
    let moov = movie(1, 0, 1);
    let at = moov.windows(4).position(|w| w == b"mdhd").expect("mdhd") - 4;
    let old_len = u32::from_be_bytes([moov[at], moov[at + 1], moov[at + 2], moov[at + 3]]) as usize;
    let new_mdhd = bx(b"mdhd", &v1);
    let grow = (new_mdhd.len() - old_len) as u32;
    let mut moov2 = [&moov[..at], &new_mdhd[..], &moov[at + old_len..]].concat();
    // moov, trak and mdia sizes grow with it.
    for kind in [b"moov", b"trak", b"mdia"] {
        let k = moov2.windows(4).position(|w| w == kind).expect("box") - 4;
        let size = u32::from_be_bytes([moov2[k], moov2[k + 1], moov2[k + 2], moov2[k + 3]]) + grow;
        moov2[k..k + 4].copy_from_slice(&size.to_be_bytes());
    }
    let err = open([ftyp.clone(), moov2].concat()).expect_err("huge duration");
    assert!(matches!(err, ParseError::Malformed { element: "mdhd", .. }), "{err}");

    // mvhd version 0 is 32-bit: fine. An elst of version 1 whose empty edits add past
    // i64::MAX movie ticks.
    let mut elst = vec![1, 0, 0, 0];
    elst.extend_from_slice(&2u32.to_be_bytes());
    for _ in 0..2 {
        elst.extend_from_slice(&(u64::MAX / 2 + 1).to_be_bytes()); // duration
        elst.extend_from_slice(&(-1i64).to_be_bytes()); // empty edit
        elst.extend_from_slice(&[0, 1, 0, 0]);
    }
    let edts = bx(b"edts", &bx(b"elst", &elst));
    let moov = movie(1, 0, 1);
    let at = moov.windows(4).position(|w| w == b"mdia").expect("mdia") - 4;
    let mut moov3: Vec<u8> = [&moov[..at], &edts[..], &moov[at..]].concat();
    for kind in [b"moov", b"trak"] {
        let k = moov3.windows(4).position(|w| w == kind).expect("box") - 4;
        let size =
            u32::from_be_bytes([moov3[k], moov3[k + 1], moov3[k + 2], moov3[k + 3]]) + edts.len() as u32;
        moov3[k..k + 4].copy_from_slice(&size.to_be_bytes());
    }
    let err = open([ftyp, moov3].concat()).expect_err("empty edits past 63 bits");
    assert!(matches!(err, ParseError::Malformed { element: "elst", .. }), "{err}");
}

/// A fragmented file: an empty moov table with `trex` defaults (1 s, 100 bytes, sync), then
/// `fragments` moof+mdat pairs of `per` samples each, no sidx, no mfra.
fn fragmented(fragments: u32, per: u32) -> Bytes {
    let ftyp = bx(b"ftyp", b"iso6\0\0\0\0");
    let plain = movie(0, 0, 0);
    let trex = full(b"trex", &u32s(&[1, 1, 1000, 100, 0]));
    let mvex = bx(b"mvex", &trex);
    let moov = bx(b"moov", &[&plain[8..], &mvex[..]].concat());
    let mut out = [ftyp, moov].concat();
    for f in 0..fragments {
        let mfhd = full(b"mfhd", &u32s(&[f + 1]));
        let tfhd = bx(b"tfhd", &[&[0u8, 2, 0, 0][..], &u32s(&[1])].concat());
        let mut tfdt_body = vec![1, 0, 0, 0];
        tfdt_body.extend_from_slice(&(u64::from(f * per) * 1000).to_be_bytes());
        let tfdt = bx(b"tfdt", &tfdt_body);
        // trun: data offset present; patched once the moof size is known.
        let trun = bx(b"trun", &[&[0u8, 0, 0, 1][..], &u32s(&[per, 0])].concat());
        let traf = bx(b"traf", &[tfhd, tfdt, trun].concat());
        let mut moof = bx(b"moof", &[mfhd, traf].concat());
        let data_offset = moof.len() as u32 + 8;
        let n = moof.len();
        moof[n - 4..].copy_from_slice(&data_offset.to_be_bytes());
        out.extend_from_slice(&moof);
        out.extend_from_slice(&bx(b"mdat", &vec![0u8; (per * 100) as usize]));
    }
    Bytes::from(out)
}

#[test]
fn fragment_walks_and_moofs_are_read_once() {
    let src = fragmented(20, 10);
    let index = TrackIndex::open("t", &src).expect("opens");
    assert_eq!(index.info().container, Container::FragmentedMp4);
    let counted = crate::source::CountingSource::new(&src);
    let first = index.seek(&counted, MediaTime::from_secs(155)).expect("seek");
    assert_eq!(first.pts, MediaTime::from_secs(155));
    assert!(counted.cost().reads > 0);
    // A second seek reads nothing: the walk's keyframes are kept.
    let before = counted.cost();
    let again = index.seek(&counted, MediaTime::from_secs(42)).expect("seek again");
    assert_eq!(again.pts, MediaTime::from_secs(42));
    assert_eq!(counted.cost(), before, "the second seek walked the fragments again");
    // Batches of one sample through a fragment, and on into the next, read each moof once
    // (its header, then its body).
    let mut pos = Some(again.pos);
    for expected in 42..55 {
        let batch = index.samples(&counted, pos.expect("more"), 1).expect("batch");
        assert_eq!(batch.samples[0].pts, MediaTime::from_secs(expected));
        pos = batch.next;
    }
    assert_eq!(counted.cost().reads - before.reads, 4, "two moofs, header and body each");
}

#[test]
fn a_moof_of_many_small_runs_cannot_declare_unbounded_samples() {
    // 64 runs of a million default-sized samples each: 20 bytes per run.
    let src = fragmented(1, 1);
    let moof_at = src.windows(4).position(|w| w == b"moof").expect("moof") - 4;
    let mfhd = full(b"mfhd", &u32s(&[1]));
    let tfhd = bx(b"tfhd", &[&[0u8, 2, 0, 0][..], &u32s(&[1])].concat());
    let runs: Vec<u8> = (0..64).flat_map(|_| full(b"trun", &u32s(&[1_000_000]))).collect();
    let traf = bx(b"traf", &[tfhd, runs].concat());
    let moof = bx(b"moof", &[mfhd, traf].concat());
    let data = Bytes::from([&src[..moof_at], &moof[..], &bx(b"mdat", &[0u8; 100])[..]].concat());
    let index = TrackIndex::open("t", &data).expect("opens: moov is fine");
    let err = index.keyframes(&data).expect_err("too many samples").source;
    assert!(
        matches!(&err, ParseError::Malformed { element: "trun", reason, .. } if reason.contains("may hold")),
        "{err}"
    );
}

#[test]
fn a_zero_timescale_is_refused() {
    let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
    let mut moov = movie(1, 0, 1);
    let at = moov.windows(4).position(|w| w == b"mdhd").expect("mdhd") + 4 + 4 + 8;
    moov[at..at + 4].copy_from_slice(&0u32.to_be_bytes());
    let err = open([ftyp, moov].concat()).expect_err("zero timescale");
    assert!(matches!(err, ParseError::Malformed { element: "mdhd", .. }), "{err}");
}

#[test]
fn every_truncation_of_a_valid_file_fails_cleanly() {
    let full_file = file_with_moov_at_end(3);
    let moov_at = full_file.windows(4).position(|w| w == b"moov").expect("moov") as u64 - 4;
    for cut in 0..full_file.len() {
        let data = full_file.slice(..cut);
        // moov is last: every cut loses part of it (or all of it).
        let err = TrackIndex::open("t", &data).expect_err("a cut file").source;
        match err {
            ParseError::Missing { element: "moov", searched_to, .. } => {
                assert!(searched_to <= moov_at, "cut {cut}: {err}")
            }
            // A box whose size runs past the cut: ftyp, mdat or moov itself.
            ParseError::Malformed { element: "ftyp" | "mdat" | "moov", offset, .. } => {
                assert!(offset <= moov_at, "cut {cut}: {err}")
            }
            ParseError::UnknownFormat { .. } => assert!(cut < 8, "cut {cut}: {err}"),
            other => panic!("cut {cut}: {other}"),
        }
    }
}
